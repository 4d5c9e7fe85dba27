//! Traffic shaping per next hop over real sockets: `[shaping]` limits as an
//! in-test next hop (`common::sink`) sees them, the back-off after a
//! "slow down" reply, and the `hosts` view that says why.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sink::{Sink, Stage};
use common::*;

const WAIT: Duration = Duration::from_secs(60);

/// `hops`: (domain, next hop address) routes; `shaping`: TOML tables.
fn config(hops: &[(&str, std::net::SocketAddr)], shaping: &str) -> String {
    let mut text = String::from("hostname = \"alpha.test\"\n[routes]\n");
    for (domain, addr) in hops {
        text.push_str(&format!("\"{domain}\" = \"{addr}\"\n"));
    }
    text.push_str("[retry]\nschedule = [\"1s\"]\n");
    text.push_str(shaping);
    text
}

/// Sends `n` messages to `rcpt`, one session, one transaction each.
fn send_many(mailhop: &Mailhop, rcpt: &str, n: usize) {
    let mut c = mailhop.connect();
    expect(&c.reply(), "220");
    expect(&c.cmd("EHLO client.test"), "250");
    for i in 0..n {
        expect(&c.cmd("MAIL FROM:<s@sender.test>"), "250");
        expect(&c.cmd(&format!("RCPT TO:<{rcpt}>")), "250");
        expect(&c.cmd("DATA"), "354");
        c.send(format!("Subject: {i}\r\n\r\nhi\r\n.\r\n").as_bytes());
        expect(&c.reply(), "250");
    }
    c.cmd("QUIT");
}

fn arrivals(sink: &Sink) -> Vec<Instant> {
    let mut t: Vec<Instant> = sink
        .received
        .lock()
        .unwrap()
        .iter()
        .filter_map(|t| t.arrived)
        .collect();
    t.sort();
    t
}

#[test]
fn a_shaped_hop_is_paced_while_an_unshaped_one_gets_its_mail_at_once() {
    let shaped = Sink::start();
    let free = Sink::start();
    let dir = tempdir();
    let text = config(
        &[("shaped.test", shaped.addr), ("free.test", free.addr)],
        &format!(
            "[shaping.\"{}\"]\nmax_messages_per_minute = 120\n",
            shaped.addr
        ),
    );
    let alpha = start_in(dir.path(), &text);
    const N: usize = 30;
    let started = Instant::now();
    send_many(&alpha, "u@shaped.test", N);
    send_many(&alpha, "u@free.test", N);
    let got = free.wait_for(N, WAIT);
    assert_eq!(got.len(), N);
    let free_done = started.elapsed();
    assert!(free_done < Duration::from_secs(5), "{free_done:?}");
    let got = shaped.wait_for(N, WAIT);
    assert_eq!(got.len(), N);
    let t = arrivals(&shaped);
    let span = t[N - 1] - t[0];
    let rate = (N - 1) as f64 / span.as_secs_f64();
    assert!((1.8..=2.2).contains(&rate), "{rate} a second over {span:?}");
    // Paced, not in bursts: no second sees more than the burst and a token.
    for w in t.windows(4) {
        assert!(w[3] - w[0] >= Duration::from_millis(900), "{t:?}");
    }
    let db = open_queue(&alpha.queue_path());
    let hop = shaped.addr.to_string();
    assert_eq!(
        rows(
            &db,
            &format!(
                "SELECT rate_limit, connection_limit, shaped_reason FROM hosts WHERE next_hop = '{hop}'"
            )
        ),
        ["120||config"]
    );
    assert_eq!(
        rows(
            &db,
            &format!(
                "SELECT rate_limit, connection_limit, shaped_reason FROM hosts WHERE next_hop = '{}'",
                free.addr
            )
        ),
        ["||"]
    );
}

#[test]
fn max_connections_is_never_exceeded() {
    // Slow answers make the relay want many connections.
    let sink = Sink::start_with(
        "127.0.0.1:0",
        Arc::new(|stage, _, _| {
            if stage == Stage::EndOfData {
                std::thread::sleep(Duration::from_millis(30));
            }
            None
        }),
    );
    let unshaped = Sink::start_with(
        "127.0.0.1:0",
        Arc::new(|stage, _, _| {
            if stage == Stage::EndOfData {
                std::thread::sleep(Duration::from_millis(30));
            }
            None
        }),
    );
    let dir = tempdir();
    let text = config(
        &[("a.test", sink.addr), ("b.test", unshaped.addr)],
        &format!("[shaping.\"{}\"]\nmax_connections = 2\n", sink.addr),
    );
    let alpha = start_in(dir.path(), &text);
    send_many(&alpha, "u@a.test", 40);
    send_many(&alpha, "u@b.test", 40);
    assert_eq!(sink.wait_for(40, WAIT).len(), 40);
    assert_eq!(unshaped.wait_for(40, WAIT).len(), 40);
    assert_eq!(sink.max_open.load(Ordering::SeqCst), 2);
    // The same load without the limit takes more.
    assert!(unshaped.max_open.load(Ordering::SeqCst) > 2);
}

#[test]
fn max_messages_per_connection_opens_new_connections() {
    let sink = Sink::start();
    let dir = tempdir();
    let text = config(
        &[("a.test", sink.addr)],
        &format!(
            "[shaping.\"{}\"]\nmax_messages_per_connection = 5\nmax_connections = 1\n",
            sink.addr
        ),
    );
    let alpha = start_in(dir.path(), &text);
    send_many(&alpha, "u@a.test", 20);
    let got = sink.wait_for(20, WAIT);
    assert_eq!(got.len(), 20);
    let mut per_conn = std::collections::BTreeMap::new();
    for t in &got {
        *per_conn.entry(t.connection).or_insert(0) += 1;
    }
    assert!(per_conn.len() >= 4, "{per_conn:?}");
    assert!(per_conn.values().all(|&n| n <= 5), "{per_conn:?}");
}

#[test]
fn a_slow_down_reply_backs_the_hop_off_and_the_mail_arrives_after() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let sink = Sink::start_with(
        "127.0.0.1:0",
        Arc::new(move |stage, _, _| {
            (stage == Stage::EndOfData && c.fetch_add(1, Ordering::SeqCst) == 2)
                .then(|| "421 4.7.0 too many messages, slow down".to_string())
        }),
    );
    let dir = tempdir();
    let alpha = start_in(dir.path(), &config(&[("a.test", sink.addr)], ""));
    const N: usize = 10;
    let started = Instant::now();
    send_many(&alpha, "u@a.test", N);
    let db = open_queue(&alpha.queue_path());
    let hop = sink.addr.to_string();
    let query = format!(
        "SELECT state, rate_limit, connection_limit, shaped_reason FROM hosts WHERE next_hop = '{hop}'"
    );
    let mut shown = Vec::new();
    while started.elapsed() < WAIT {
        shown = rows(&db, &query);
        if shown.first().is_some_and(|r| r.contains("421")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(
        shown[0]
            .starts_with("up|300|10|421 4.7.0 too many messages, slow down (backing off until 20"),
        "{shown:?}"
    );
    // Deferred, not bounced; held back while the hop waits.
    let before = sink.count();
    assert!(before < N, "{before}");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(sink.count(), before);
    let statuses = rows(
        &db,
        "SELECT DISTINCT status FROM recipients WHERE status NOT IN ('delivered', 'deferred', 'active')",
    );
    assert!(statuses.is_empty(), "{statuses:?}");
    // After the 30 s wait it all arrives.
    let got = sink.wait_for(N, WAIT);
    assert_eq!(got.len(), N);
    assert!(
        started.elapsed() >= Duration::from_secs(29),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        rows(
            &db,
            "SELECT count(*) FROM recipients WHERE status = 'bounced'"
        ),
        ["0"]
    );
    assert!(
        alpha.log().contains("asked to slow down"),
        "{}",
        alpha.log()
    );
    // The wait is over: the view says the hop is recovering.
    let start = Instant::now();
    while start.elapsed() < WAIT {
        shown = rows(&db, &query);
        if shown.first().is_some_and(|r| r.contains("recovering")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        shown[0].contains("(recovering: limits halved 1 time(s))"),
        "{shown:?}"
    );
}

#[test]
fn check_config_prints_the_section_and_refuses_bad_limits() {
    let dir = tempdir();
    let file = dir.path().join("mailhop.toml");
    std::fs::write(
        &file,
        "[shaping.\"gmail.com\"]\nmax_connections = 5\nmax_messages_per_connection = 100\nmax_messages_per_minute = 600\n[shaping.\"*\"]\nmax_messages_per_minute = 6000\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("[shaping.\"gmail.com\"]\nmax_connections = 5\nmax_messages_per_connection = 100\nmax_messages_per_minute = 600\n\n[shaping.\"*\"]\nmax_messages_per_minute = 6000\n"),
        "{stdout}"
    );
    for (text, want) in [
        (
            "[shaping.\"gmail.com\"]\nmax_connections = 0\n",
            "shaping.\"gmail.com\".max_connections: 0 is too small",
        ),
        (
            "[shaping.\"gmail.com\"]\nmax_mesages_per_minute = 10\n",
            "unknown field `max_mesages_per_minute`",
        ),
        (
            "[shaping.\"not a hop\"]\nmax_connections = 1\n",
            "shaping.\"not a hop\": bad key",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = Command::new(BIN)
            .args(["check-config", "--config", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{text}: {stderr}");
        assert!(stderr.contains("mailhop.toml"), "{stderr}");
    }
}

#[test]
fn a_slow_hop_keeps_a_minutes_worth_in_memory_and_the_rest_waits_in_the_queue() {
    let sink = Sink::start();
    let dir = tempdir();
    let text = config(
        &[("a.test", sink.addr)],
        &format!("[shaping.\"{}\"]\nmax_messages_per_minute = 6\n", sink.addr),
    );
    let alpha = start_in(dir.path(), &text);
    send_many(&alpha, "u@a.test", 10);
    let db = open_queue(&alpha.queue_path());
    let query = "SELECT count(*) FROM recipients WHERE status = 'deferred' AND attempts = 0 \
                 AND last_reply LIKE '451 4.4.5 held back by [shaping]: % takes 6 message(s) a minute'";
    let start = Instant::now();
    // One went at once; six wait in memory (a minute's worth); three go
    // back to the queue, due in a minute.
    while rows(&db, query) != ["3"] && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        rows(&db, query),
        ["3"],
        "{:?}\n{}",
        rows(
            &db,
            "SELECT status, attempts, last_reply, next_attempt FROM recipients"
        ),
        alpha.log()
    );
    // The first comes at once, the next after 10 s: paced, not bursting.
    assert_eq!(sink.wait_for(1, WAIT).len(), 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sink.count(), 1);
}

#[test]
fn a_reload_shapes_the_next_messages() {
    let sink = Sink::start();
    let dir = tempdir();
    let alpha = start_in(dir.path(), &config(&[("a.test", sink.addr)], ""));
    send_many(&alpha, "u@a.test", 1);
    assert_eq!(sink.wait_for(1, WAIT).len(), 1);
    let file = dir.path().join("mailhop.toml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&format!(
        "\n[shaping.\"{}\"]\nmax_messages_per_minute = 60\n",
        sink.addr
    ));
    std::fs::write(&file, text).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(alpha.child.id() as i32, libc::SIGHUP) };
    let start = Instant::now();
    while !alpha.log().contains("reloaded") && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(alpha.log().contains("reloaded"), "{}", alpha.log());
    send_many(&alpha, "u@a.test", 5);
    assert_eq!(sink.wait_for(6, WAIT).len(), 6);
    // One a second (a burst of one): 5 over at least 4 s.
    let t = arrivals(&sink);
    assert!(t[5] - t[1] >= Duration::from_millis(3800), "{t:?}");
    let db = open_queue(&alpha.queue_path());
    assert_eq!(
        rows(
            &db,
            &format!(
                "SELECT rate_limit, connection_limit, shaped_reason FROM hosts WHERE next_hop = '{}'",
                sink.addr
            )
        ),
        ["60||config"]
    );
}
