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
