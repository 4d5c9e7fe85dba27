//! The command line: exit codes, config errors, check-config, the log line
//! tests rely on.

mod common;

use std::process::Command;

use common::*;

fn run(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_config_exits_2_naming_file_key_and_problem() {
    let dir = tempdir();
    let file = dir.path().join("bad.toml");
    for (text, key) in [
        ("max_hops = 0\n", "max_hops"),
        ("[retry]\nschedule = [\"5x\"]\n", "retry.schedule"),
        ("no_such_key = 1\n", "no_such_key"),
        ("[timeouts]\nidle = \"5m\"\n", "idle"),
    ] {
        std::fs::write(&file, text).unwrap();
        for command in ["serve", "check-config"] {
            let (code, _, err) = run(dir.path(), &[command, "--config", file.to_str().unwrap()]);
            assert_eq!(code, 2, "{command} {text:?}: {err}");
            assert!(
                err.contains("bad.toml") && err.contains(key),
                "{command} {text:?}: {err}"
            );
        }
    }
    let (code, _, err) = run(dir.path(), &["serve", "--no-such-flag"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(
        dir.path(),
        &["check-config", "--config", "/nonexistent/mailhop.toml"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/mailhop.toml"));
}

#[test]
fn check_config_prints_settings_that_read_back() {
    let dir = tempdir();
    let file = dir.path().join("m.toml");
    std::fs::write(&file, "hostname = \"beta.example\"\nqueue = \"q/queue.db\"\n[routes]\n\"example.org\" = \"127.0.0.1:2526\"\n").unwrap();
    let (code, out, err) = run(
        dir.path(),
        &["check-config", "--config", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hostname = \"beta.example\""));
    assert!(
        out.contains(&format!(
            "queue = \"{}\"",
            dir.path().join("q/queue.db").display()
        )),
        "{out}"
    );
    assert!(out.contains("\"example.org\" = \"127.0.0.1:2526\""));
    std::fs::write(&file, &out).unwrap();
    let (code, again, err) = run(
        dir.path(),
        &["check-config", "--config", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        again
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
    );
}

#[test]
fn the_embedded_default_serves_with_flag_overrides() {
    let dir = tempdir();
    let mut mailhop = spawn(
        dir.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--queue",
            "q.db",
            "--hostname",
            "flag.example",
        ],
    );
    let mut c = mailhop.connect();
    assert_eq!(c.reply(), "220 flag.example ESMTP mailhop");
    // Loopback may relay anywhere by default.
    expect(&c.cmd("EHLO me.test"), "250-flag.example");
    expect(&c.cmd("MAIL FROM:<me@me.test>"), "250");
    expect(&c.cmd("RCPT TO:<you@elsewhere.example>"), "250");
    assert!(dir.path().join("q.db").exists());
    assert_eq!(mailhop.signal(libc::SIGINT).code(), Some(0));
}

#[test]
fn a_listen_address_in_use_is_fatal() {
    let dir = tempdir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run(dir.path(), &["serve", "--listen", &addr, "--queue", "q.db"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&addr) && err.to_lowercase().contains("in use"),
        "{err}"
    );
}

/// Lines of `--log-format json`: each one JSON object with the documented
/// fields; `ts` is RFC 3339 UTC with milliseconds.
#[track_caller]
fn json_log_line(line: &str) -> serde_json::Value {
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    let ts = value["ts"].as_str().unwrap_or_default();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
        "ts {ts:?} in {line}"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
        "ts {ts:?} in {line}"
    );
    assert!(
        ["error", "warn", "info", "debug", "trace"].contains(&value["level"].as_str().unwrap()),
        "{line}"
    );
    assert!(
        value["target"].as_str().unwrap().starts_with("mailhop"),
        "{line}"
    );
    assert!(value["msg"].is_string(), "{line}");
    value
}

/// A child killed (if still running) when the test ends, failed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn json_logs_are_one_object_per_line_with_the_queue_id() {
    use std::io::BufRead;
    let dir = tempdir();
    let file = dir.path().join("m.toml");
    std::fs::write(
        &file,
        "hostname = \"beta.example\"\nlisten = [\"127.0.0.1:0\"]\nqueue = \"q.db\"\n\
         local_domains = [\"beta.example\"]\nlocal_users = [\"jones\"]\nmaildir = \"mail\"\n\
         [dns]\nservers = [\"127.0.0.1:9\"]\n",
    )
    .unwrap();
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(["--log-format", "json", "serve", "--config"])
            .arg(&file)
            .env("RUST_LOG", "info")
            .env_remove("MAILHOP_LOG_FORMAT")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let next = |seen: &mut Vec<serde_json::Value>| {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no more log lines after {seen:?}"));
        let value = json_log_line(&line);
        seen.push(value.clone());
        value
    };
    let addr: std::net::SocketAddr = loop {
        let value = next(&mut seen);
        if let Some(addr) = value["msg"].as_str().unwrap().strip_prefix("listening on ") {
            assert!(value.get("queue_id").is_none());
            assert_eq!(value["level"], "info");
            break addr.parse().unwrap();
        }
    };
    let mut c = Client::connect(addr);
    expect(&c.reply(), "220");
    expect(&c.cmd("EHLO me.test"), "250");
    expect(&c.cmd("MAIL FROM:<smith@alpha.example>"), "250");
    expect(&c.cmd("RCPT TO:<jones@beta.example>"), "250");
    expect(&c.cmd("DATA"), "354");
    let id = queued_id(&c.cmd("Subject: json\r\n\r\nhello\r\n."));
    c.cmd("QUIT");
    // The commit line, then the delivery line, both with the queue ID
    // as a field of its own and the rest as msg.
    let mut found = Vec::new();
    while found.len() < 2 {
        let value = next(&mut seen);
        if value["queue_id"] == id.as_str() {
            found.push(value["msg"].as_str().unwrap().to_string());
        }
    }
    assert!(
        found[0].starts_with("from=<smith@alpha.example> size="),
        "{found:?}"
    );
    assert!(
        found[1].starts_with("to=<jones@beta.example> relay=local status=sent"),
        "{found:?}"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = wait_bounded(&mut child.0, std::time::Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{status:?}");
    // The rest of the lines, up to EOF, are JSON too.
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(5)) {
        json_log_line(&line);
    }
}

#[test]
fn the_log_format_comes_from_the_environment_too_and_text_stays_the_default() {
    let dir = tempdir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let args = ["serve", "--listen", &addr, "--queue", "q.db"];
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir.path())
        .env("MAILHOP_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let value = json_log_line(err.lines().last().unwrap());
    assert_eq!(value["level"], "error");
    assert!(value["msg"].as_str().unwrap().contains(&addr), "{err}");
    // The flag wins over the environment.
    let out = Command::new(BIN)
        .args(["--log-format", "text"])
        .args(args)
        .current_dir(dir.path())
        .env("MAILHOP_LOG_FORMAT", "json")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with('[') && err.contains(" ERROR "), "{err}");
    // Neither: text, as before.
    let (code, _, err) = run(dir.path(), &args);
    assert_eq!(code, 1);
    assert!(err.starts_with('[') && err.contains(" ERROR "), "{err}");
    let (code, _, err) = run(dir.path(), &["--log-format", "yaml", "check-config"]);
    assert_eq!(code, 2, "{err}");
}
