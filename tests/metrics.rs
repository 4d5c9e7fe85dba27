//! The metrics endpoint, from outside: a real scrape over HTTP after a real
//! load, checked against the queue file's own views; requests that are
//! slow, huge or not ours; and Python's Prometheus parser where installed.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sink::{Sink, Stage};
use common::*;

/// Sends `n` messages over one session, each to `rcpt(i)`; the replies to
/// the end of data.
fn send_messages(addr: SocketAddr, n: usize, rcpt: impl Fn(usize) -> String) -> Vec<String> {
    let mut client = Client::connect(addr);
    expect(&client.reply(), "220");
    expect(&client.cmd("EHLO load.test"), "250");
    let mut replies = Vec::new();
    for i in 0..n {
        expect(&client.cmd("MAIL FROM:<load@src.test>"), "250");
        expect(&client.cmd(&format!("RCPT TO:<{}>", rcpt(i))), "250");
        expect(&client.cmd("DATA"), "354");
        client.send(format!("Subject: {i}\r\n\r\nbody {i}\r\n.\r\n").as_bytes());
        replies.push(client.reply());
    }
    expect(&client.cmd("QUIT"), "221");
    replies
}

fn value(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

/// Waits until the queue has no pending recipient but the deferred ones.
fn wait_settled(queue: &std::path::Path, deferred: usize) {
    let start = Instant::now();
    loop {
        let conn = open_queue(queue);
        let pending = rows(
            &conn,
            "SELECT count(*) FROM queue WHERE status <> 'deferred'",
        );
        let waiting = rows(
            &conn,
            "SELECT count(*) FROM queue WHERE status = 'deferred'",
        );
        if pending == ["0"] && waiting == [deferred.to_string()] {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "queue did not settle: {pending:?} {waiting:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn counters_equal_the_queue_views_after_a_load() {
    let dir = tempdir();
    // The next hop refuses some recipients for good and some for now.
    let sink = Sink::start_with(
        "127.0.0.1:0",
        Arc::new(|stage, arg, _| match stage {
            Stage::Rcpt if arg.contains("bounce") => Some("550 5.1.1 no such user".into()),
            Stage::Rcpt if arg.contains("later") => Some("451 4.3.0 try later".into()),
            _ => None,
        }),
    );
    let mailhop = start_in(
        dir.path(),
        &format!(
            "relay_networks = [\"127.0.0.0/8\"]\n[routes]\n\"sink.test\" = \"{}\"\n\"dead.test\" = \"127.0.0.1:9\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            sink.addr
        ),
    );
    let metrics = metrics_addr(&mailhop);
    let (clients, per_client) = (4, 60);
    let addr = mailhop.addr;
    let senders: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                send_messages(addr, per_client, |i| match i % 20 {
                    0 => format!("bounce{c}.{i}@sink.test"),
                    1 => format!("later{c}.{i}@sink.test"),
                    2 => format!("x{c}.{i}@dead.test"),
                    _ => format!("r{c}.{i}@sink.test"),
                })
            })
        })
        .collect();
    let replies: Vec<String> = senders
        .into_iter()
        .flat_map(|s| s.join().unwrap())
        .collect();
    let total = clients * per_client;
    assert_eq!(replies.len(), total);
    assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
    // Bounces go back to load@src.test, which has no route: they defer
    // too (dead.test and later.* recipients wait for their retry).
    let deferred_rcpts = 3 * total / 20;
    let conn_path = mailhop.queue_path();
    let start = Instant::now();
    loop {
        let conn = open_queue(&conn_path);
        let active = rows(
            &conn,
            "SELECT count(*) FROM queue WHERE status = 'queued' OR status = 'active'",
        );
        if active == ["0"] {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{active:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let samples = scrape(metrics);
    let conn = open_queue(&conn_path);
    let count = |sql: &str| -> f64 { rows(&conn, sql)[0].parse().unwrap() };

    assert_eq!(
        value(&samples, "mailhop_messages_accepted_total"),
        total as f64
    );
    assert_eq!(
        value(
            &samples,
            "mailhop_smtp_replies_total{command=\"data_end\",class=\"2xx\"}"
        ),
        total as f64
    );
    assert_eq!(
        value(
            &samples,
            "mailhop_smtp_replies_total{command=\"greeting\",class=\"2xx\"}"
        ),
        clients as f64
    );
    assert_eq!(
        value(&samples, "mailhop_inbound_connections_total"),
        clients as f64
    );
    // Outcomes by next hop, against `deliveries`; attempts against `attempts`.
    for (hop, outcome, status) in [
        (sink.addr.to_string(), "delivered", "delivered"),
        (sink.addr.to_string(), "bounced", "bounced"),
    ] {
        let name = format!("mailhop_recipients_total{{next_hop=\"{hop}\",outcome=\"{outcome}\"}}");
        let rows = count(&format!(
            "SELECT count(*) FROM deliveries WHERE next_hop = '{hop}' AND status = '{status}'"
        ));
        assert_eq!(value(&samples, &name), rows, "{name}");
        assert!(rows > 0.0, "{name}");
    }
    let attempts_metric: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("mailhop_delivery_attempts_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(attempts_metric, count("SELECT count(*) FROM attempts"));
    let by_hop = format!(
        "mailhop_delivery_attempts_total{{next_hop=\"{}\"}}",
        sink.addr
    );
    assert_eq!(
        value(&samples, &by_hop),
        count(&format!(
            "SELECT count(*) FROM attempts WHERE next_hop = '{}'",
            sink.addr
        ))
    );
    // The queue depth is kept in memory; it must say what the view says.
    for status in ["queued", "deferred", "active", "held"] {
        let name = format!("mailhop_queue_recipients{{status=\"{status}\"}}");
        assert_eq!(
            value(&samples, &name),
            count(&format!(
                "SELECT count(*) FROM queue WHERE status = '{status}'"
            )),
            "{name}"
        );
    }
    assert!(
        value(&samples, "mailhop_queue_recipients{status=\"deferred\"}") >= deferred_rcpts as f64
    );
    // Mail is waiting (the dead hop's, the bounces): its age is that of
    // this run, a few seconds.
    let age = samples["mailhop_queue_oldest_pending_age_seconds"];
    assert!(age > 0.0 && age < 120.0, "oldest pending {age} s");
    assert!(value(&samples, "mailhop_commit_duration_seconds_count") > 0.0);
    assert_eq!(
        value(&samples, "mailhop_commit_batch_size_sum"),
        count("SELECT count(*) FROM messages")
    );
}

#[test]
fn an_operator_change_to_the_queue_is_recounted() {
    let dir = tempdir();
    let mailhop = start_in(
        dir.path(),
        "relay_networks = [\"127.0.0.0/8\"]\n[routes]\n\"dead.test\" = \"127.0.0.1:9\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let metrics = metrics_addr(&mailhop);
    let replies = send_messages(mailhop.addr, 3, |i| format!("r{i}@dead.test"));
    let id = queued_id(&replies[0]);
    wait_settled(&mailhop.queue_path(), 3);
    let held = Command::new(BIN)
        .args(["queue", "hold", &id, "--queue"])
        .arg(mailhop.queue_path())
        .output()
        .unwrap();
    assert!(held.status.success(), "{held:?}");
    // serve looks at the queue for outside changes every second.
    let start = Instant::now();
    loop {
        let samples = scrape(metrics);
        let held = value(&samples, "mailhop_queue_recipients{status=\"held\"}");
        let deferred = value(&samples, "mailhop_queue_recipients{status=\"deferred\"}");
        if held == 1.0 && deferred == 2.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "held {held}, deferred {deferred}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn health_and_refusals_of_what_is_not_ours() {
    let dir = tempdir();
    let mailhop = start_in(dir.path(), "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let metrics = metrics_addr(&mailhop);
    // Open SMTP sessions are counted; the scrape itself is not one.
    let mut smtp = mailhop.connect();
    expect(&smtp.reply(), "220");
    assert_eq!(value(&scrape(metrics), "mailhop_inbound_sessions"), 1.0);
    expect(&smtp.cmd("QUIT"), "221");
    let start = Instant::now();
    while value(&scrape(metrics), "mailhop_inbound_sessions") != 0.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the session stays counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ok = http_get(metrics, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nok\n"),
        "{ok}"
    );
    let post = http_get(
        metrics,
        "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(
        post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET"),
        "{post}"
    );
    let other = http_get(metrics, "GET /admin HTTP/1.1\r\n\r\n");
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    let junk = http_get(metrics, "\x16\x03\x01\x00\x05hello\r\n\r\n");
    assert!(junk.starts_with("HTTP/1.1 400"), "{junk}");
    let om = http_get(
        metrics,
        "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
    );
    assert!(
        om.contains("Content-Type: application/openmetrics-text"),
        "{om}"
    );
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
}

#[test]
fn slow_and_huge_requests_leave_smtp_alone() {
    let dir = tempdir();
    let mailhop = start_in(
        dir.path(),
        "relay_networks = [\"127.0.0.0/8\"]\n[routes]\n\"dead.test\" = \"127.0.0.1:9\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let metrics = metrics_addr(&mailhop);
    // More stalled requests than the endpoint takes at once.
    let mut stalled: Vec<TcpStream> = (0..24)
        .map(|_| {
            let mut s = TcpStream::connect(metrics).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    // A 10 MB request: refused after its first 8 KiB, never buffered.
    let mut huge = TcpStream::connect(metrics).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let header = format!("GET /metrics HTTP/1.1\r\nX-Huge: {}", "a".repeat(10 << 20));
    let _ = huge.write_all(header.as_bytes());
    let mut answer = Vec::new();
    let _ = huge.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    // SMTP is served all the while.
    let replies = send_messages(mailhop.addr, 5, |i| format!("r{i}@dead.test"));
    assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
    // The stalled ones are cut at the deadline, and scrapes work again.
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 64];
        let closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
        assert!(closed, "a stalled request was not closed");
    }
    let samples = scrape(metrics);
    assert_eq!(value(&samples, "mailhop_messages_accepted_total"), 5.0);
}

#[test]
fn pythons_prometheus_parser_reads_the_scrape() {
    let has_parser = Command::new("python3")
        .args(["-c", "import prometheus_client.parser"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_parser {
        return skip(
            "pythons_prometheus_parser_reads_the_scrape",
            "python3 with prometheus_client is not installed (pip install prometheus_client)",
        );
    }
    let dir = tempdir();
    let mailhop = start_in(
        dir.path(),
        "relay_networks = [\"127.0.0.0/8\"]\n[routes]\n\"dead.test\" = \"127.0.0.1:9\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let metrics = metrics_addr(&mailhop);
    send_messages(mailhop.addr, 7, |i| format!("r{i}@dead.test"));
    let script = format!(
        r#"
import urllib.request
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen("http://{metrics}/metrics", timeout=20).read().decode()
families = {{f.name: f for f in text_string_to_metric_families(text)}}
accepted = [s.value for s in families["mailhop_messages_accepted"].samples if s.name.endswith("_total")]
assert families["mailhop_messages_accepted"].type == "counter", families["mailhop_messages_accepted"].type
assert families["mailhop_commit_duration_seconds"].type == "histogram"
assert families["mailhop_queue_recipients"].type == "gauge"
print(int(accepted[0]))
"#
    );
    let out = succeed(Command::new("python3").args(["-c", &script]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");
}
