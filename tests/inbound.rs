//! The inbound side over real sockets against a real `mailhop serve`:
//! SPEC section 3's reply table, the queue it commits to, and shutdown.

mod common;

use std::time::Duration;

use common::*;

const BETA: &str = r#"
hostname = "Beta.ARPA"
local_domains = ["Beta.ARPA"]
local_users = ["jones", "brown"]
relay_domains = ["example.org"]
relay_networks = []
# Local delivery cannot happen here, so accepted mail stays in the queue
# (deferred) with its body, for these tests of the inbound side to read.
maildir = "/dev/null/mail"
"#;

fn greeted(mailhop: &Mailhop) -> Client {
    let mut c = mailhop.connect();
    expect(&c.reply(), "220 Beta.ARPA ESMTP mailhop");
    expect(&c.cmd("EHLO alpha.arpa"), "250-Beta.ARPA");
    c
}

#[test]
fn rfc821_example_1_plays_as_written_and_lands_in_the_queue_view() {
    let dir = tempdir();
    let mailhop = start_in(dir.path(), BETA);
    let mut c = mailhop.connect();
    expect(&c.reply(), "220 ");
    expect(&c.cmd("HELO Alpha.ARPA"), "250 2.0.0 ");
    expect(&c.cmd("MAIL FROM:<Smith@Alpha.ARPA>"), "250 ");
    expect(&c.cmd("RCPT TO:<Jones@Beta.ARPA>"), "250 ");
    assert_eq!(
        c.cmd("RCPT TO:<Green@Beta.ARPA>"),
        "550 5.1.1 No such user here"
    );
    expect(&c.cmd("RCPT TO:<Brown@Beta.ARPA>"), "250 ");
    expect(&c.cmd("DATA"), "354");
    c.send(b"Blah blah blah...\r\n...etc. etc. etc.\r\n.\r\n");
    let id = queued_id(&c.reply());
    expect(&c.cmd("QUIT"), "221 2.0.0");
    assert!(c.closed());

    // Local mail may already be delivered: then it is in `deliveries`.
    let db = open_queue(&mailhop.queue_path());
    let rows = rows(
        &db,
        "SELECT id, sender, recipient, next_hop FROM queue
         UNION ALL SELECT id, sender, recipient, next_hop FROM deliveries ORDER BY recipient",
    );
    assert_eq!(
        rows,
        [
            format!("{id}|Smith@Alpha.ARPA|Brown@Beta.ARPA|local"),
            format!("{id}|Smith@Alpha.ARPA|Jones@Beta.ARPA|local"),
        ]
    );
    // The body is stored unstuffed, after our Received: line.
    let body: Vec<u8> = db
        .query_row("SELECT body FROM messages WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    let body = String::from_utf8(body).unwrap();
    assert!(body.starts_with(
        "Received: from Alpha.ARPA ([127.0.0.1]) by Beta.ARPA (mailhop) with SMTP id "
    ));
    assert!(body.contains(&id));
    assert!(
        body.ends_with("\r\nBlah blah blah...\r\n..etc. etc. etc.\r\n"),
        "{body:?}"
    );
    let size: i64 = db
        .query_row("SELECT size FROM messages WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(size as usize, body.len());
}

#[test]
fn ehlo_advertises_the_extensions() {
    let dir = tempdir();
    let mailhop = start_in(dir.path(), "max_message_size = 12345\n");
    let mut c = mailhop.connect();
    c.reply();
    let ehlo = c.cmd("EHLO client.test");
    for ext in [
        "PIPELINING",
        "SIZE 12345",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
    ] {
        assert!(
            ehlo.lines().any(|l| l[4..] == *ext),
            "{ext} missing in {ehlo:?}"
        );
    }
}

#[test]
fn the_reply_table() {
    let dir = tempdir();
    let mailhop = start_in(
        dir.path(),
        &format!("{BETA}max_recipients = 2\nmax_message_size = 1000\n"),
    );
    let mut c = mailhop.connect();
    c.reply();
    // Before HELO/EHLO.
    for cmd in [
        "MAIL FROM:<a@b.example>",
        "RCPT TO:<jones@Beta.ARPA>",
        "DATA",
    ] {
        expect(&c.cmd(cmd), "503 5.5.1");
    }
    expect(&c.cmd("EHLO client.test"), "250-");
    expect(&c.cmd("RCPT TO:<jones@Beta.ARPA>"), "503 5.5.1");
    expect(&c.cmd("DATA"), "503 5.5.1");
    expect(&c.cmd("MAIL FROM:<a@b.example> SIZE=1001"), "552 5.3.4");
    expect(&c.cmd("MAIL FROM:<a@b.example> FOO=BAR"), "555 5.5.4");
    expect(&c.cmd("MAIL FROM:<>"), "250 2.1.0");
    expect(&c.cmd("MAIL FROM:<a@b.example>"), "503 5.5.1");
    expect(&c.cmd("DATA"), "503 5.5.1");
    assert_eq!(
        c.cmd("RCPT TO:<x@elsewhere.example>"),
        "554 5.7.1 Relay access denied"
    );
    expect(&c.cmd("RCPT TO:<jones@Beta.ARPA>"), "250 2.1.5");
    expect(&c.cmd("RCPT TO:<user@example.org>"), "250 2.1.5");
    expect(&c.cmd("RCPT TO:<brown@Beta.ARPA>"), "452 4.5.3");
    expect(&c.cmd("RSET"), "250 2.0.0");
    expect(&c.cmd("NOOP"), "250 2.0.0");
    expect(&c.cmd("VRFY jones"), "252 2.5.0");
    // Nine errors so far; a new session for the rest.
    let mut c = mailhop.connect();
    c.reply();
    for cmd in [
        "EXPN staff",
        "TURN",
        "SEND FROM:<a@b>",
        "SOML FROM:<a@b>",
        "SAML FROM:<a@b>",
    ] {
        expect(&c.cmd(cmd), "502 5.5.1");
    }
    expect(&c.cmd("EHLO client.test"), "250-");
    expect(&c.cmd("FROBNICATE"), "500 5.5.2");
    expect(&c.cmd("MAIL FROM:a@b.example"), "501 5.5.4");
    expect(&c.cmd(&format!("NOOP {}", "x".repeat(600))), "500 5.5.6");
    // The session goes on after an over-long line, and MAIL may be longer.
    expect(
        &c.cmd(&format!("MAIL FROM:<{}@b.example>", "x".repeat(60))),
        "250 2.1.0",
    );
    expect(
        &c.cmd(&format!("RCPT TO:<jones@Beta.ARPA>{}", " ".repeat(900))),
        "250 2.1.5",
    );
    expect(&c.cmd("QUIT"), "221 2.0.0");
    assert!(c.closed());
}

#[test]
fn end_of_data_rejections_queue_nothing_and_the_session_goes_on() {
    let dir = tempdir();
    let mailhop = start_in(
        dir.path(),
        &format!("{BETA}max_message_size = 2000\nmax_hops = 3\n"),
    );
    let mut c = greeted(&mailhop);
    let cases: [(Vec<u8>, &str); 4] = [
        (
            format!("{}\r\n.\r\n", "x".repeat(2100)).into_bytes(),
            "552 5.3.4",
        ),
        (
            format!("{}\r\n.\r\n", "y".repeat(999)).into_bytes(),
            "552 5.3.4",
        ),
        (b"Subject: bare\nline\r\n.\r\n".to_vec(), "550 5.6.0"),
        (
            b"Received: a\r\nReceived: b\r\nReceived: c\r\nReceived: d\r\n\r\nhi\r\n.\r\n".to_vec(),
            "554 5.4.6",
        ),
    ];
    for (data, code) in cases {
        expect(&c.cmd("MAIL FROM:<s@a.example>"), "250");
        expect(&c.cmd("RCPT TO:<jones@Beta.ARPA>"), "250");
        expect(&c.cmd("DATA"), "354");
        c.send(&data);
        expect(&c.reply(), code);
    }
    // Still in sync, and a good message still goes through.
    expect(&c.cmd("MAIL FROM:<s@a.example>"), "250");
    expect(&c.cmd("RCPT TO:<jones@Beta.ARPA>"), "250");
    expect(&c.cmd("DATA"), "354");
    c.send(format!("{}\r\n.\r\n", "z".repeat(998)).as_bytes());
    let id = queued_id(&c.reply());
    let db = open_queue(&mailhop.queue_path());
    assert_eq!(
        rows(
            &db,
            "SELECT id FROM queue UNION ALL SELECT id FROM deliveries"
        ),
        [id]
    );
}

#[test]
fn smuggled_end_of_data_variants_never_make_two_messages() {
    let dir = tempdir();
    let mailhop = start_in(dir.path(), &format!("{BETA}bare_lf = \"normalize\"\n"));
    for variant in ["\n.\r\n", "\r\n.\n", "\n.\n", "\r.\r", "\r\n.\r", "\r.\r\n"] {
        let mut c = greeted(&mailhop);
        let smuggled = format!(
            "MAIL FROM:<s@a.example>\r\nRCPT TO:<jones@Beta.ARPA>\r\nDATA\r\nhello{variant}MAIL FROM:<evil@a.example>\r\nRCPT TO:<brown@Beta.ARPA>\r\nDATA\r\nsmuggled\r\n.\r\n"
        );
        c.send(smuggled.as_bytes());
        expect(&c.reply(), "250 2.1.0");
        expect(&c.reply(), "250 2.1.5");
        expect(&c.reply(), "354");
        queued_id(&c.reply());
        expect(&c.cmd("QUIT"), "221");
    }
    let db = open_queue(&mailhop.queue_path());
    let recipients = rows(
        &db,
        "SELECT recipient FROM queue UNION SELECT recipient FROM deliveries",
    );
    assert_eq!(
        recipients,
        ["jones@Beta.ARPA"],
        "a smuggled second message got in"
    );
    assert_eq!(rows(&db, "SELECT count(*) FROM messages"), ["6"]);
}

#[test]
fn a_whole_pipelined_transaction_in_two_writes_gets_every_reply_in_order() {
    let dir = tempdir();
    let mailhop = start_in(dir.path(), BETA);
    let mut c = mailhop.connect();
    c.send(b"EHLO client.test\r\nMAIL FROM:<s@a.example>\r\nRCPT TO:<jones@Beta.ARPA>\r\nRCPT TO:<green@Beta.ARPA>\r\nRCPT TO:<brown@Beta.ARPA>\r\nDATA\r\nSubject: pipelined\r\n");
    c.send(b"\r\n.leading dot\r\n.\r\nMAIL FROM:<t@a.example>\r\nRCPT TO:<jones@Beta.ARPA>\r\nDATA\r\nsecond\r\n.\r\nQUIT\r\n");
    let expected = [
        "220",
        "250-",
        "250 2.1.0",
        "250 2.1.5",
        "550 5.1.1",
        "250 2.1.5",
        "354",
        "250 2.0.0",
        "250 2.1.0",
        "250 2.1.5",
        "354",
        "250 2.0.0",
        "221",
    ];
    for code in expected {
        expect(&c.reply(), code);
    }
    assert!(c.closed());
    let db = open_queue(&mailhop.queue_path());
    assert_eq!(
        rows(
            &db,
            "SELECT (SELECT count(*) FROM queue) + (SELECT count(*) FROM deliveries)"
        ),
        ["3"]
    );
}

#[test]
fn ten_errors_close_the_session() {
    let dir = tempdir();
    let mailhop = start_in(dir.path(), BETA);
    let mut c = greeted(&mailhop);
    for _ in 0..9 {
        expect(&c.cmd("BOGUS"), "500 5.5.2");
    }
    c.send(b"BOGUS\r\n");
    assert_eq!(c.reply(), "500 5.5.2 Error: command not recognized");
    expect(&c.reply(), "421 4.7.0");
    assert!(c.closed());
}

#[test]
fn idle_clients_are_timed_out() {
    let dir = tempdir();
    let mailhop = start_in(
        dir.path(),
        &format!("{BETA}[timeouts]\nserver_idle = \"1s\"\n"),
    );
    let mut c = greeted(&mailhop);
    let start = std::time::Instant::now();
    expect(&c.reply(), "421 4.4.2");
    assert!(c.closed());
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn connection_limits_answer_421() {
    let dir = tempdir();
    let mailhop = start_in(
        dir.path(),
        &format!("{BETA}max_connections = 3\nmax_connections_per_ip = 2\n"),
    );
    let mut first = mailhop.connect();
    expect(&first.reply(), "220");
    let mut second = mailhop.connect();
    expect(&second.reply(), "220");
    let mut third = mailhop.connect();
    expect(&third.reply(), "421 4.7.0");
    assert!(third.closed());
    // Another loopback address is another client IP, under the total limit.
    let mut other = match connect_from("127.0.0.2", mailhop.addr) {
        Ok(client) => client,
        Err(e) => {
            return skip(
                "connection_limits_answer_421 (total limit)",
                &format!("no 127.0.0.2: {e}"),
            )
        }
    };
    expect(&other.reply(), "220");
    let mut fourth = mailhop.connect();
    expect(&fourth.reply(), "421 4.7.0");
    drop(first);
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = mailhop.connect();
    expect(&fifth.reply(), "220");
}

#[test]
fn a_failed_commit_answers_451_and_the_session_goes_on() {
    let dir = tempdir();
    let mailhop = start_in(dir.path(), BETA);
    let mut c = greeted(&mailhop);
    // Another process holds the write lock past the relay's busy timeout.
    let locker = rusqlite::Connection::open(mailhop.queue_path()).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    expect(&c.cmd("MAIL FROM:<s@a.example>"), "250");
    expect(&c.cmd("RCPT TO:<jones@Beta.ARPA>"), "250");
    expect(&c.cmd("DATA"), "354");
    c.send(b"first\r\n.\r\n");
    expect(&c.reply(), "451 4.3.0");
    locker.execute_batch("ROLLBACK").unwrap();
    expect(&c.cmd("MAIL FROM:<s@a.example>"), "250");
    expect(&c.cmd("RCPT TO:<jones@Beta.ARPA>"), "250");
    expect(&c.cmd("DATA"), "354");
    c.send(b"second\r\n.\r\n");
    let id = queued_id(&c.reply());
    let db = open_queue(&mailhop.queue_path());
    assert_eq!(
        rows(
            &db,
            "SELECT id FROM queue UNION ALL SELECT id FROM deliveries"
        ),
        [id]
    );
}

#[test]
fn sigterm_says_421_to_idle_sessions_lets_data_finish_and_exits_0() {
    let dir = tempdir();
    let mut mailhop = start_in(dir.path(), BETA);
    let mut idle = greeted(&mailhop);
    let mut busy = greeted(&mailhop);
    expect(&busy.cmd("MAIL FROM:<s@a.example>"), "250");
    expect(&busy.cmd("RCPT TO:<jones@Beta.ARPA>"), "250");
    expect(&busy.cmd("DATA"), "354");
    busy.send(b"Subject: in flight\r\n\r\n");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(mailhop.child.id() as i32, libc::SIGTERM) };
    expect(&idle.reply(), "421 4.3.2");
    assert!(idle.closed());
    busy.send(b"body\r\n.\r\n");
    let id = queued_id(&busy.reply());
    expect(&busy.reply(), "421 4.3.2");
    let status = mailhop.wait(Duration::from_secs(20)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", mailhop.log());
    let db = open_queue(&mailhop.queue_path());
    assert_eq!(
        rows(
            &db,
            "SELECT id FROM queue UNION ALL SELECT id FROM deliveries"
        ),
        [id]
    );
}

#[test]
fn a_client_that_never_reads_does_not_stop_the_others() {
    let dir = tempdir();
    let mailhop = start_in(dir.path(), BETA);
    let mut flooder = mailhop.connect();
    flooder
        .stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let noops = "NOOP\r\n".repeat(10_000);
    let mut sent = 0;
    for _ in 0..200 {
        use std::io::Write;
        match flooder.stream.write(noops.as_bytes()) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    // The relay stopped reading long before 12 MB of replies piled up.
    assert!(sent < 12_000_000, "mailhop kept reading: {sent} bytes");
    let mut c = greeted(&mailhop);
    expect(&c.cmd("NOOP"), "250 2.0.0");
    let status = std::fs::read_to_string(format!("/proc/{}/status", mailhop.child.id())).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert!(rss_kb < 64 * 1024, "RSS {rss_kb} kB");
}
