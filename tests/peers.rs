//! Real peers around a real `mailhop serve`, all on loopback: Postfix's
//! `smtp-source` pushes thousands of messages through mailhop into its
//! `smtp-sink`; a private Postfix instance relays into mailhop, and mailhop
//! relays into Postfix. `.ci/run` installs Postfix; without it (or without
//! root, which a private instance needs) each test prints `SKIPPED`.
//! swaks and curl sending to mailhop are in `tests/interop.rs`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sink::Sink;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// Says a figure out loud, past the harness's capture (like `skip`).
fn figure(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Polls `sql` (one row, one column) until it equals `want` or `limit`
/// passes; returns the last value.
fn wait_value(mailhop: &Mailhop, sql: &str, want: &str, limit: Duration) -> String {
    let db = open_queue(&mailhop.queue_path());
    let start = Instant::now();
    loop {
        let got = rows(&db, sql).join("\n");
        if got == want || start.elapsed() > limit {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn smtp_source_pushes_thousands_through_mailhop_into_smtp_sink() {
    const TEST: &str = "smtp_source_pushes_thousands_through_mailhop_into_smtp_sink";
    const COUNT: u64 = 3000;
    let Some(source) = find_program("smtp-source") else {
        return skip(
            TEST,
            "smtp-source is not installed (apt-get install postfix)",
        );
    };
    let sink = match SmtpSink::start() {
        Ok(sink) => sink,
        Err(why) => return skip(TEST, &why),
    };
    let dir = tempdir();
    let mailhop = start_in(
        dir.path(),
        &format!(
            "hostname = \"alpha.test\"\nmax_connections_per_ip = 1000\n[routes]\n\"*\" = \"{}\"\n[retry]\nschedule = [\"1s\"]\n",
            sink.addr
        ),
    );
    let start = Instant::now();
    let out = dir.path().join("smtp-source.out");
    let status = run_bounded(
        Command::new(source)
            .args(["-s", "20", "-m", &COUNT.to_string(), "-l", "1024", "-d"])
            .args(["-M", "client.test", "-f", "sender@example.test"])
            .args(["-t", "rcpt@example.test"])
            .arg(mailhop.addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&out).unwrap()),
        WAIT,
    );
    let accepted_in = start.elapsed();
    let errors = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(
        status.map(|s| s.success()),
        Some(true),
        "smtp-source: {errors}\nmailhop:\n{}",
        mailhop.log()
    );
    assert!(errors.trim().is_empty(), "smtp-source said: {errors}");

    let got = sink.wait_messages(COUNT, WAIT);
    let delivered_in = start.elapsed();
    assert_eq!(got, COUNT, "smtp-sink count; mailhop:\n{}", mailhop.log());
    let finals = wait_value(
        &mailhop,
        "SELECT status || ' ' || count(*) FROM deliveries GROUP BY status",
        &format!("delivered {COUNT}"),
        WAIT,
    );
    assert_eq!(finals, format!("delivered {COUNT}"));
    let db = open_queue(&mailhop.queue_path());
    assert_eq!(rows(&db, "SELECT count(*) FROM queue"), ["0"]);
    assert_eq!(
        rows(
            &db,
            "SELECT count(DISTINCT id) FROM deliveries WHERE sender = 'sender@example.test' \
             AND recipient = 'rcpt@example.test' AND reply LIKE '250%'"
        ),
        [COUNT.to_string()]
    );
    // Nothing more arrives later (no duplicates).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.messages(), COUNT);
    figure(&format!(
        "FIGURE {TEST}: {COUNT} x 1 KiB, 20 sessions reusing connections: accepted in {:.2} s ({:.0} msg/s), all at smtp-sink in {:.2} s ({:.0} msg/s end to end)",
        accepted_in.as_secs_f64(),
        COUNT as f64 / accepted_in.as_secs_f64(),
        delivered_in.as_secs_f64(),
        COUNT as f64 / delivered_in.as_secs_f64(),
    ));
}

/// The header lines named `name` (continuations joined), in order.
fn headers(message: &str, name: &str) -> Vec<String> {
    let head = message
        .split("\n\n")
        .next()
        .unwrap_or("")
        .replace("\r\n", "\n");
    let mut out: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(c) = current.as_mut() {
                c.push(' ');
                c.push_str(line.trim());
            }
            continue;
        }
        out.extend(current.take());
        if line
            .get(..name.len() + 1)
            .is_some_and(|p| p.eq_ignore_ascii_case(&format!("{name}:")))
        {
            current = Some(line.to_string());
        }
    }
    out.extend(current);
    out
}

/// The queue ID in a Postfix `Received:` line (`... with ESMTP id 4XyZ...`).
fn postfix_id(received: &str) -> Option<String> {
    let rest = received.split(" id ").nth(1)?;
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    (!id.is_empty()).then_some(id)
}

#[test]
fn postfix_relays_into_mailhop_which_delivers_to_maildir() {
    const TEST: &str = "postfix_relays_into_mailhop_which_delivers_to_maildir";
    let dir = tempdir();
    let maildir = dir.path().join("mail");
    let mailhop = start_in(
        dir.path(),
        &format!(
            "hostname = \"beta.example\"\nlocal_domains = [\"beta.example\"]\nlocal_users = [\"jones\"]\nmaildir = \"{}\"\n",
            maildir.display()
        ),
    );
    let postfix = match Postfix::start(&format!("relayhost = [127.0.0.1]:{}", mailhop.addr.port()))
    {
        Ok(p) => p,
        Err(why) => return skip(TEST, &why),
    };

    // A client hands the message to Postfix's smtpd.
    let mut c = Client::connect(postfix.addr);
    expect(&c.reply(), "220");
    expect(&c.cmd("EHLO client.test"), "250");
    expect(&c.cmd("MAIL FROM:<smith@alpha.example>"), "250");
    expect(&c.cmd("RCPT TO:<jones@beta.example>"), "250");
    expect(&c.cmd("DATA"), "354");
    c.send(
        b"From: smith@alpha.example\r\nTo: jones@beta.example\r\nSubject: via Postfix\r\n\
          Message-ID: <peers-1@alpha.example>\r\nDate: Fri, 28 Nov 2025 12:00:00 +0000\r\n\r\n\
          token-7f3a through Postfix\r\n..a line that starts with a dot\r\n.\r\n",
    );
    let reply = c.reply();
    expect(&reply, "250 2.0.0 Ok: queued as ");
    let pf_id = reply.rsplit(' ').next().unwrap().to_string();
    c.cmd("QUIT");

    // Postfix forwards it to mailhop, which files it for jones.
    let new = maildir.join("jones/new");
    let start = Instant::now();
    let file = loop {
        let found = std::fs::read_dir(&new)
            .ok()
            .and_then(|mut d| d.next())
            .map(|e| e.unwrap().path());
        if let Some(f) = found {
            break f;
        }
        assert!(
            start.elapsed() < WAIT,
            "nothing in {}\nmailhop:\n{}\npostfix:\n{}",
            new.display(),
            mailhop.log(),
            postfix.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("Return-Path: <smith@alpha.example>\nDelivered-To: jones@beta.example\n"),
        "{text}"
    );
    let received = headers(&text, "Received");
    assert_eq!(received.len(), 2, "one per MTA: {received:#?}");
    // Newest first: mailhop's, naming Postfix as the client...
    assert!(
        received[0].starts_with(&format!("Received: from {POSTFIX_HOSTNAME} ([127.0.0.1]) by beta.example (mailhop) with ESMTP id ")),
        "{received:#?}"
    );
    assert!(
        received[0].contains("for <jones@beta.example>;"),
        "{received:#?}"
    );
    // ...then Postfix's, with the queue ID it gave the client.
    assert!(
        received[1].contains(&format!(
            "by {POSTFIX_HOSTNAME} (Postfix) with ESMTP id {pf_id}"
        )),
        "{received:#?}"
    );
    assert!(
        received[1].starts_with("Received: from client.test"),
        "{received:#?}"
    );
    let body = text.split("\n\n").nth(1).unwrap();
    assert_eq!(
        body,
        "token-7f3a through Postfix\n.a line that starts with a dot\n"
    );
    assert_eq!(
        headers(&text, "Message-ID"),
        ["Message-ID: <peers-1@alpha.example>"]
    );

    // mailhop's queue says delivered locally; Postfix's log names the queue
    // ID mailhop acknowledged it with.
    // (The file is renamed into new/ before the delivery is committed.)
    let db = open_queue(&mailhop.queue_path());
    let start = Instant::now();
    let row = loop {
        let rows = rows(&db, "SELECT id, sender, next_hop, status FROM deliveries");
        if !rows.is_empty() || start.elapsed() > WAIT {
            assert_eq!(rows.len(), 1, "{rows:?}");
            break rows[0].clone();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mh_id, rest) = row.split_once('|').expect("a deliveries row");
    assert_eq!(rest, "smith@alpha.example|local|delivered");
    let needle = format!("status=sent (250 2.0.0 Ok: queued as {mh_id})");
    assert!(
        postfix.wait_log(&needle, WAIT),
        "{needle} not in the Postfix log:\n{}",
        postfix.log()
    );
    let ours = received[0].split(" id ").nth(1).unwrap();
    assert!(ours.starts_with(&format!("{mh_id} ")), "{ours} vs {mh_id}");
}

#[test]
fn mailhop_relays_into_postfix_which_relays_on() {
    const TEST: &str = "mailhop_relays_into_postfix_which_relays_on";
    // The sink behind Postfix offers DSN, so Postfix passes the parameters
    // on: what mailhop gave Postfix shows at the sink.
    let sink = Sink::start_dsn(std::sync::Arc::new(|_, _, _| None));
    let postfix = match Postfix::start(&format!("relayhost = [127.0.0.1]:{}", sink.addr.port())) {
        Ok(p) => p,
        Err(why) => return skip(TEST, &why),
    };
    let dir = tempdir();
    let mailhop = start_in(
        dir.path(),
        &format!(
            "hostname = \"alpha.test\"\n[routes]\n\"example.org\" = \"{}\"\n[retry]\nschedule = [\"1s\"]\n",
            postfix.addr
        ),
    );
    let data = "From: s@sender.test\r\nTo: u@example.org\r\nSubject: into Postfix\r\n\
                Message-ID: <peers-2@sender.test>\r\nDate: Fri, 28 Nov 2025 12:00:00 +0000\r\n\r\n\
                token-91c4 through mailhop\r\n.leading dot\r\n..two dots\r\n";
    // Postfix's smtpd offers CHUNKING and DSN: mailhop sends BDAT chunks
    // and passes RET, ENVID, NOTIFY and ORCPT on.
    let mut p = Client::connect(postfix.addr);
    expect(&p.reply(), "220");
    let ehlo = p.cmd("EHLO probe.test");
    assert!(ehlo.contains("CHUNKING") && ehlo.contains("DSN"), "{ehlo}");
    p.cmd("QUIT");
    let mut c = mailhop.connect();
    expect(&c.reply(), "220");
    expect(&c.cmd("EHLO client.test"), "250");
    expect(
        &c.cmd("MAIL FROM:<s@sender.test> RET=HDRS ENVID=peers+2B2"),
        "250",
    );
    expect(
        &c.cmd("RCPT TO:<u@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;orig@example.org"),
        "250",
    );
    expect(&c.cmd("DATA"), "354");
    c.send(data.replace("\n.", "\n..").as_bytes());
    c.send(b".\r\n");
    let mh_id = queued_id(&c.reply());
    c.cmd("QUIT");

    let got = sink.wait_for(1, WAIT);
    assert_eq!(
        got.len(),
        1,
        "mailhop:\n{}\npostfix:\n{}",
        mailhop.log(),
        postfix.log()
    );
    let t = &got[0];
    assert_eq!(t.helo, POSTFIX_HOSTNAME);
    assert_eq!(t.mail_from.split(' ').next(), Some("<s@sender.test>"));
    assert!(
        t.mail_from.contains(" RET=HDRS") && t.mail_from.contains(" ENVID=peers+2B2"),
        "{}",
        t.mail_from
    );
    let [rcpt] = t.rcpt_to.as_slice() else {
        panic!("{:?}", t.rcpt_to)
    };
    assert!(rcpt.starts_with("<u@example.org> "), "{rcpt}");
    assert!(rcpt.contains(" NOTIFY=FAILURE,DELAY"), "{rcpt}");
    assert!(rcpt.contains(" ORCPT=rfc822;orig@example.org"), "{rcpt}");
    let text = String::from_utf8(t.data.clone()).unwrap();
    let received = headers(&text, "Received");
    assert_eq!(received.len(), 2, "one per MTA: {received:#?}");
    assert!(
        received[0].starts_with("Received: from alpha.test ")
            && received[0].contains(&format!("by {POSTFIX_HOSTNAME} (Postfix) with ESMTP id ")),
        "{received:#?}"
    );
    assert!(
        received[1].starts_with(&format!(
            "Received: from client.test ([127.0.0.1]) by alpha.test (mailhop) with ESMTP id {mh_id} for <u@example.org>;"
        )),
        "{received:#?}"
    );
    // The message itself arrives as the client sent it.
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    assert_eq!(body, data.split_once("\r\n\r\n").unwrap().1);
    for line in data.split("\r\n\r\n").next().unwrap().split("\r\n") {
        assert!(
            text.contains(&format!("{line}\r\n")),
            "{line:?} lost:\n{text}"
        );
    }

    // mailhop recorded Postfix's acknowledgement, with the ID Postfix put in
    // its Received line.
    let pf_id = postfix_id(&received[0]).unwrap();
    // Postfix answers a BDAT LAST with the octets it took ("Ok: 342 bytes
    // queued as ..."), a DATA with "Ok: queued as ...": it came by BDAT.
    let want = format!(
        "{mh_id}|u@example.org|{}|delivered|1|250 2.0.0 Ok: ",
        postfix.addr
    );
    let start = Instant::now();
    let row = loop {
        let row = wait_value(
            &mailhop,
            "SELECT id, recipient, next_hop, status, attempts, reply FROM deliveries",
            "",
            Duration::ZERO,
        );
        if row.starts_with(&want) || start.elapsed() > WAIT {
            break row;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(row.starts_with(&want), "{row}");
    assert!(
        row.ends_with(&format!(" bytes queued as {pf_id}")),
        "not BDAT: {row}"
    );
}

/// Where `.ci/run` unpacks Exim 4 (`apt-get download` + `dpkg -x`: the
/// package conflicts with postfix, so it is never installed), or `EXIM`.
fn exim_binary() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("EXIM") {
        return Some(path.into());
    }
    let unpacked =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/exim/usr/sbin/exim4");
    unpacked.is_file().then_some(unpacked)
}

/// An Exim 4 relays into mailhop: it sees CHUNKING and sends BDAT (its log
/// marks such a delivery `K`), and the message lands byte-exact in the
/// Maildir.
#[test]
fn exim_relays_into_mailhop_with_chunking() {
    const TEST: &str = "exim_relays_into_mailhop_with_chunking";
    let Some(exim) = exim_binary() else {
        return skip(
            TEST,
            "no Exim unpacked in target/exim (.ci/run does it) and no EXIM=path",
        );
    };
    if !is_root() {
        return skip(TEST, "Exim's spool must belong to Debian-exim: needs root");
    }
    let owner = Command::new("id").arg("-u").arg("Debian-exim").output();
    if !owner.as_ref().is_ok_and(|o| o.status.success()) {
        return skip(TEST, "no Debian-exim user (.ci/run creates it)");
    }
    let dir = tempdir();
    let mailhop = start_in(
        dir.path(),
        "hostname = \"mailhop.test\"\nlocal_domains = [\"mailhop.test\"]\nlocal_users = [\"jones\"]\nmaildir = \"mail\"\n",
    );
    let spool = dir.path().join("exim-spool");
    std::fs::create_dir(&spool).unwrap();
    let chown = Command::new("chown")
        .args(["Debian-exim:", spool.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(chown.success());
    let config = dir.path().join("exim.conf");
    std::fs::write(
        &config,
        format!(
            "exim_path = {exim}\nexim_user = Debian-exim\nexim_group = Debian-exim\n\
             spool_directory = {spool}\nlog_file_path = {spool}/%slog\nprimary_hostname = exim.test\n\
             begin routers\nto_mailhop:\n  driver = manualroute\n  transport = remote_smtp\n\
             \x20 route_list = * 127.0.0.1::{port} byname\n  self = send\n\
             begin transports\nremote_smtp:\n  driver = smtp\n  port = {port}\n\
             \x20 hosts_try_chunking = *\n  allow_localhost\n  user = Debian-exim\n\
             begin retry\n* * F,1m,1m\n",
            exim = exim.display(),
            spool = spool.display(),
            port = mailhop.addr.port()
        ),
    )
    .unwrap();
    let body = "token-5e1f through Exim\n.leading dot\n..two dots\n.\nnot the end\n";
    let message = format!("Subject: exim into mailhop\nFrom: sender@exim.test\n\n{body}");
    let mut child = Command::new(&exim)
        .args([
            "-C",
            config.to_str().unwrap(),
            "-odf",
            "-i",
            "-f",
            "sender@exim.test",
            "jones@mailhop.test",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    let status = wait_bounded(&mut child, WAIT).is_some_and(|s| s.success());
    let log = std::fs::read_to_string(spool.join("mainlog")).unwrap_or_default();
    assert!(status, "exim did not finish:\n{log}");
    let delivered = log
        .lines()
        .find(|l| l.contains("=> jones@mailhop.test"))
        .unwrap_or_else(|| panic!("exim did not deliver:\n{log}\nmailhop:\n{}", mailhop.log()));
    assert!(
        delivered.contains(" K ") && delivered.contains("C=\"250 2.0.0 Ok: queued as"),
        "not by BDAT: {delivered}"
    );
    let new = dir.path().join("mail/jones/new");
    let file = std::fs::read_dir(&new)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let stored = std::fs::read_to_string(file).unwrap();
    let (_, text) = stored.split_once("\n\n").unwrap();
    assert_eq!(text, body, "{stored}");
    assert!(stored.contains("by mailhop.test (mailhop) with ESMTP"));
    assert!(stored.contains("(Exim 4."));
    eprintln!("{TEST}: {delivered}");
}
