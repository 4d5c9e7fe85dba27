//! `mailhop queue ...` as an operator uses it: real processes on a real
//! queue file, beside a running `serve` whose next hop is down (a closed
//! loopback port, one-hour retry schedule) until a `Sink` takes its port.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sink::{Sink, Stage};
use common::*;

/// Long enough for `serve`'s lease scan (every 2 s) and a delivery.
const SOON: Duration = Duration::from_secs(8);

/// `mailhop queue <args> --queue <queue>`.
fn queue_cmd(queue: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("queue")
        .args(args)
        .arg("--queue")
        .arg(queue)
        .output()
        .expect("run mailhop queue")
}

/// Runs a command that must succeed; its stdout.
#[track_caller]
fn ok(queue: &Path, args: &[&str]) -> String {
    let out = queue_cmd(queue, args);
    assert!(
        out.status.success(),
        "mailhop queue {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A loopback port nobody listens on (until a `Sink` binds it).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `serve` routing example.org to `port`, retrying only after an hour.
fn start_down(dir: &Path, port: u16) -> Mailhop {
    start_in(
        dir,
        &format!(
            "hostname = \"alpha.test\"\n[routes]\n\"example.org\" = \"127.0.0.1:{port}\"\n\
             [retry]\nschedule = [\"1h\"]\n"
        ),
    )
}

fn send(mailhop: &Mailhop, from: &str, to: &str, subject: &str) -> String {
    let mut c = mailhop.connect();
    expect(&c.reply(), "220");
    expect(&c.cmd("EHLO client.test"), "250");
    expect(&c.cmd(&format!("MAIL FROM:<{from}>")), "250");
    expect(&c.cmd(&format!("RCPT TO:<{to}>")), "250");
    expect(&c.cmd("DATA"), "354");
    c.send(format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n").as_bytes());
    let id = queued_id(&c.reply());
    c.cmd("QUIT");
    id
}

/// Polls `sql` (one value) until it reads `want`, for at most `limit`.
#[track_caller]
fn wait_for(db: &rusqlite::Connection, sql: &str, want: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let got = rows(db, sql);
        if got == [want] {
            return;
        }
        assert!(start.elapsed() < limit, "{sql}: {got:?}, not {want:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends one message to the dead hop and waits until it is deferred.
fn deferred_message(mailhop: &Mailhop, subject: &str) -> String {
    let id = send(mailhop, "s@sender.test", "u@example.org", subject);
    let db = open_queue(&mailhop.queue_path());
    wait_for(
        &db,
        &format!("SELECT status FROM queue WHERE id = '{id}'"),
        "deferred",
        SOON,
    );
    id
}

fn sink_on(port: u16) -> Sink {
    Sink::start_with(&format!("127.0.0.1:{port}"), Arc::new(|_, _, _| None))
}

fn subjects(sink: &Sink) -> Vec<String> {
    sink.received
        .lock()
        .unwrap()
        .iter()
        .map(|t| {
            let data = String::from_utf8_lossy(&t.data).into_owned();
            let at = data.find("Subject: ").expect("a subject");
            data[at + 9..].lines().next().unwrap().to_string()
        })
        .collect()
}

fn view_columns(db: &rusqlite::Connection, view: &str) -> Vec<String> {
    let stmt = db.prepare(&format!("SELECT * FROM {view}")).unwrap();
    stmt.column_names().iter().map(|c| c.to_string()).collect()
}

#[test]
fn views_and_every_read_command_show_the_deferred_message() {
    let port = closed_port();
    let dir = tempdir();
    let mailhop = start_down(dir.path(), port);
    let id = deferred_message(&mailhop, "look at me");
    let bounce_id = send(&mailhop, "", "v@example.org", "null sender");
    let q = mailhop.queue_path();
    let db = open_queue(&q);
    wait_for(&db, "SELECT count(*) FROM queue", "2", SOON);

    let spec = [
        (
            "queue",
            "id sender recipient next_hop status attempts next_attempt last_reply size received_at",
        ),
        (
            "deliveries",
            "id sender recipient next_hop status attempts reply finished_at",
        ),
        (
            "attempts",
            // The spec's columns, then TLS under MTA-STS (0007).
            "id recipient next_hop host started_at finished_at reply sts_mode tls_result",
        ),
        (
            "policies",
            "domain id mode mx max_age fetched_at expires_at expired last_attempt last_id last_error",
        ),
        (
            "hosts",
            // The spec's columns, then the limits of 0006 (traffic shaping).
            "next_hop state failures last_error next_retry queued rate_limit connection_limit shaped_reason",
        ),
    ];
    for (view, columns) in spec {
        assert_eq!(view_columns(&db, view).join(" "), columns, "{view}");
        if have("sqlite3") {
            let out = Command::new("sqlite3")
                .arg(&q)
                .arg(format!("SELECT name FROM pragma_table_info('{view}')"))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let names: Vec<&str> = text.lines().collect();
            assert_eq!(names.join(" "), columns, "sqlite3 {view}");
        }
    }
    if !have("sqlite3") {
        skip(
            "views_and_every_read_command...(sqlite3 part)",
            "no sqlite3",
        );
    }

    let list = ok(&q, &["list"]);
    let line = list.lines().find(|l| l.starts_with(&id)).expect(&list);
    assert!(line.ends_with("<s@sender.test>"), "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with(&bounce_id) && l.ends_with("<>")),
        "{list}"
    );
    let recipient = list
        .lines()
        .find(|l| l.contains("u@example.org"))
        .expect(&list);
    assert!(recipient.starts_with("    deferred"), "{recipient}");
    assert!(recipient.contains("451 4.4.1"), "{recipient}");
    assert!(list.ends_with("-- 1 Kbytes in 2 messages.\n"), "{list}");

    let json = ok(&q, &["list", "--json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("one JSON value");
    let messages = parsed.as_array().expect("an array");
    assert_eq!(messages.len(), 2);
    let m = messages.iter().find(|m| m["id"] == id.as_str()).unwrap();
    assert_eq!(m["sender"], "s@sender.test");
    assert!(m["size"].as_u64().unwrap() > 0);
    let r = &m["recipients"][0];
    assert_eq!(r["recipient"], "u@example.org");
    assert_eq!(r["next_hop"], format!("127.0.0.1:{port}"));
    assert_eq!(r["status"], "deferred");
    assert_eq!(r["attempts"], 1);
    assert!(r["next_attempt"].as_str().unwrap().ends_with('Z'));
    assert!(r["last_reply"].as_str().unwrap().starts_with("451 4.4.1"));
    if have("python3") {
        let out = Command::new("python3")
            .args([
                "-c",
                "import json,sys; a=json.load(sys.stdin); print(len(a), ','.join(sorted(a[0])))",
            ])
            .stdin(std::fs::File::open(write(dir.path(), "list.json", &json)).unwrap())
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "2 id,received_at,recipients,sender,size\n"
        );
    } else {
        skip("views_and_every_read_command...(python part)", "no python3");
    }

    let show = ok(&q, &["show", &id]);
    for want in [
        format!("Message {id}"),
        "sender:        <s@sender.test>".to_string(),
        "helo client.test".to_string(),
        "status:        deferred".to_string(),
        format!("next hop:      127.0.0.1:{port}"),
        "Attempts (1):".to_string(),
        format!("[127.0.0.1:{port}]: 451 4.4.1"),
        "Subject: look at me".to_string(),
        "Received: from client.test".to_string(),
    ] {
        assert!(show.contains(&want), "{want:?} not in\n{show}");
    }
    assert!(!show.contains("hello"), "the body is not shown:\n{show}");

    let stats = ok(&q, &["stats"]);
    let status_line = |s: &str| {
        stats
            .lines()
            .find(|l| l.trim_start().starts_with(s))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let n = |s: &str| status_line(s)[1].parse::<u32>().unwrap();
    assert!(n("deferred") >= 1, "{stats}");
    assert_eq!(n("queued") + n("deferred"), 2, "{stats}");
    assert_eq!(status_line("delivered"), ["delivered", "0"], "{stats}");
    let hop = format!("127.0.0.1:{port}");
    let hop_lines: Vec<Vec<&str>> = stats
        .lines()
        .filter(|l| l.trim_start().starts_with(&hop))
        .map(|l| l.split_whitespace().collect())
        .collect();
    // By status: total, queued, deferred, active, held (the null sender's
    // message is queued or deferred, depending on when the hop failed).
    assert_eq!(hop_lines[0][1], "2", "{stats}");
    assert_eq!(hop_lines[0][4..6], ["0", "0"], "{stats}");
    // By age: T, then the under-5-minutes column.
    assert_eq!(hop_lines[1][1..3], ["2", "2"], "{stats}");
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn hold_keeps_a_message_back_and_release_gets_it_delivered() {
    let port = closed_port();
    let dir = tempdir();
    let mailhop = start_down(dir.path(), port);
    let held = deferred_message(&mailhop, "held one");
    let other = deferred_message(&mailhop, "other one");
    let deleted = deferred_message(&mailhop, "deleted one");
    let q = mailhop.queue_path();
    assert_eq!(
        ok(&q, &["hold", &held]),
        format!("held 1 recipient(s) of {held}\n")
    );
    ok(&q, &["delete", &deleted]);
    let sink = sink_on(port);
    // The hop is up and serve is working: the other one goes; the held one
    // stays, and the deleted one is gone for good.
    let retried = ok(&q, &["retry", "--all"]);
    assert!(
        retried.starts_with("made 1 recipient(s) due now"),
        "{retried}"
    );
    sink.wait_for(1, SOON);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(subjects(&sink), ["other one"], "{}", mailhop.log());
    let db = open_queue(&q);
    assert_eq!(
        rows(
            &db,
            &format!("SELECT status FROM queue WHERE id = '{held}'")
        ),
        ["held"]
    );
    assert_eq!(
        rows(
            &db,
            &format!("SELECT status FROM deliveries WHERE id = '{other}'")
        ),
        ["delivered"]
    );

    let start = Instant::now();
    assert_eq!(
        ok(&q, &["release", &held]),
        format!("released 1 recipient(s) of {held}\n")
    );
    sink.wait_for(2, SOON);
    assert_eq!(
        subjects(&sink),
        ["other one", "held one"],
        "{}",
        mailhop.log()
    );
    assert!(start.elapsed() < SOON);
    wait_for(
        &db,
        &format!("SELECT status FROM deliveries WHERE id = '{held}'"),
        "delivered",
        SOON,
    );
}

#[test]
fn retry_gets_a_deferred_message_delivered_within_seconds() {
    let port = closed_port();
    let dir = tempdir();
    let mailhop = start_down(dir.path(), port);
    let id = deferred_message(&mailhop, "retry me");
    let q = mailhop.queue_path();
    let sink = sink_on(port);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.count(), 0, "the one-hour schedule holds it");
    let start = Instant::now();
    let out = ok(&q, &["retry", &id]);
    assert!(
        out.starts_with(&format!("made 1 recipient(s) of {id} due now")),
        "{out}"
    );
    sink.wait_for(1, SOON);
    assert_eq!(subjects(&sink), ["retry me"], "{}", mailhop.log());
    assert!(start.elapsed() < SOON);
    let db = open_queue(&q);
    wait_for(
        &db,
        &format!("SELECT status FROM deliveries WHERE id = '{id}'"),
        "delivered",
        SOON,
    );
}

#[test]
fn delete_removes_a_message_and_records_it() {
    let port = closed_port();
    let dir = tempdir();
    let mailhop = start_down(dir.path(), port);
    let gone = deferred_message(&mailhop, "delete me");
    let kept = deferred_message(&mailhop, "keep me");
    let q = mailhop.queue_path();
    assert_eq!(
        ok(&q, &["delete", &gone]),
        format!("deleted 1 recipient(s) of {gone}\n")
    );
    let db = open_queue(&q);
    assert_eq!(rows(&db, "SELECT id FROM queue"), [kept.as_str()]);
    assert_eq!(
        rows(
            &db,
            &format!("SELECT recipient, status, reply FROM deliveries WHERE id = '{gone}'")
        ),
        ["u@example.org|deleted|deleted by operator"]
    );
    let show = ok(&q, &["show", &gone]);
    assert!(show.contains("status:        deleted"), "{show}");
    assert!(show.contains("body already removed"), "{show}");
    let list = ok(&q, &["list"]);
    assert!(!list.contains(&gone) && list.contains(&kept), "{list}");
}

#[test]
fn mistakes_exit_with_a_message() {
    let port = closed_port();
    let dir = tempdir();
    let mailhop = start_down(dir.path(), port);
    let q = mailhop.queue_path();
    for args in [
        &["show", "NOSUCHID"][..],
        &["retry", "NOSUCHID"],
        &["hold", "NOSUCHID"],
        &["release", "NOSUCHID"],
        &["delete", "NOSUCHID"],
    ] {
        let out = queue_cmd(&q, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no message NOSUCHID"), "{args:?}: {err}");
    }

    let missing = dir.path().join("nope.db");
    let out = queue_cmd(&missing, &["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));
    assert!(!missing.exists(), "no empty queue is created");

    // Without --queue or --config: ./mailhop.db of the embedded default.
    let empty = tempdir();
    let out = Command::new(BIN)
        .args(["queue", "stats"])
        .current_dir(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mailhop.db: no such file"));

    // With --config: the config's queue.
    let config = dir.path().join("mailhop.toml");
    let out = Command::new(BIN)
        .args(["queue", "list", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Mail queue is empty\n"
    );

    for args in [
        &["retry"][..],
        &["retry", "X", "--all"],
        &["list", "--bogus"],
        &["show"],
    ] {
        assert_eq!(queue_cmd(&q, args).status.code(), Some(2), "{args:?}");
    }
    drop(mailhop);
}

#[test]
fn delete_during_delivery_takes_effect_when_the_attempt_ends() {
    // The next hop is up but slow, then says 451: the attempt would defer.
    let sink = Sink::start_with(
        "127.0.0.1:0",
        Arc::new(|stage, _, _| {
            (stage == Stage::EndOfData).then(|| {
                std::thread::sleep(Duration::from_secs(3));
                "451 4.3.0 try later".to_string()
            })
        }),
    );
    let dir = tempdir();
    let mailhop = start_down(dir.path(), sink.addr.port());
    let id = send(&mailhop, "s@sender.test", "u@example.org", "in flight");
    let q = mailhop.queue_path();
    let db = open_queue(&q);
    wait_for(
        &db,
        &format!("SELECT status FROM queue WHERE id = '{id}'"),
        "active",
        SOON,
    );
    let out = ok(&q, &["delete", &id]);
    assert!(
        out.starts_with(&format!(
            "deleted 0 recipient(s) of {id}\n1 recipient(s) of {id} are being delivered right now"
        )),
        "{out}"
    );
    let show = ok(&q, &["show", &id]);
    assert!(show.contains("when the attempt in flight ends"), "{show}");
    wait_for(
        &db,
        &format!("SELECT status || '|' || reply FROM deliveries WHERE id = '{id}'"),
        "deleted|deleted by operator (last attempt: 451 4.3.0 try later)",
        SOON,
    );
    assert_eq!(rows(&db, "SELECT count(*) FROM queue"), ["0"]);
    assert_eq!(rows(&db, "SELECT count(*) FROM attempts"), ["1"]);
}
