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
