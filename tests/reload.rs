//! SIGHUP from outside: a route and the certificate change under load with
//! nothing refused or lost; a broken config is refused while service goes
//! on; listeners come and go while their sessions finish.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sink::Sink;
use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// The config as `start_in` writes it, so a reload sees the same listeners.
fn write_config(dir: &Path, listen: &str, body: &str) {
    let text = format!(
        "listen = [{listen}]\nqueue = \"queue.db\"\n{body}\n[dns]\nservers = [\"127.0.0.1:9\"]\n"
    );
    std::fs::write(dir.join("mailhop.toml"), text).unwrap();
}

/// STARTTLS trusting only `cert`: true when the handshake succeeds, so
/// the relay presents exactly that certificate.
fn presents(addr: SocketAddr, cert: &CertificateDer<'static>) -> bool {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let read_reply = |tcp: &mut TcpStream| {
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        // Whole lines until one without a dash after the code.
        loop {
            tcp.read_exact(&mut byte).unwrap();
            reply.push(byte[0]);
            if byte[0] == b'\n' {
                let text = String::from_utf8_lossy(&reply).to_string();
                let last = text.lines().last().unwrap_or("");
                if last.as_bytes().get(3) != Some(&b'-') {
                    return text;
                }
            }
        }
    };
    read_reply(&mut tcp);
    tcp.write_all(b"EHLO tls.test\r\n").unwrap();
    assert!(read_reply(&mut tcp).contains("STARTTLS"));
    tcp.write_all(b"STARTTLS\r\n").unwrap();
    assert!(read_reply(&mut tcp).starts_with("220"));
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let conn = ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
        .unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    let greeted = tls.write_all(b"NOOP\r\n").and_then(|()| {
        let mut buf = [0u8; 64];
        tls.read(&mut buf)
    });
    greeted.is_ok_and(|n| n > 0)
}

/// Sends messages until `stop`, a new session every ten; every reply to
/// the end of data.
fn load(addr: SocketAddr, stop: Arc<AtomicBool>, at_least: usize) -> Vec<String> {
    let mut replies = Vec::new();
    while !stop.load(Ordering::SeqCst) || replies.len() < at_least {
        let mut client = Client::connect(addr);
        expect(&client.reply(), "220");
        expect(&client.cmd("EHLO load.test"), "250");
        for _ in 0..10 {
            expect(&client.cmd("MAIL FROM:<load@src.test>"), "250");
            expect(&client.cmd("RCPT TO:<r@dst.test>"), "250");
            expect(&client.cmd("DATA"), "354");
            client.send(b"Subject: reload\r\n\r\nbody\r\n.\r\n");
            replies.push(client.reply());
        }
        expect(&client.cmd("QUIT"), "221");
    }
    replies
}

fn routed_to(sink: &Sink) -> String {
    format!(
        "relay_networks = [\"127.0.0.0/8\"]\n[routes]\n\"dst.test\" = \"{}\"\n",
        sink.addr
    )
}

#[test]
fn sighup_under_load_changes_the_route_and_the_certificate_losing_nothing() {
    let dir = tempdir();
    let (first, second) = (Sink::start(), Sink::start());
    let cert_a = certificate_as(dir.path(), "a.pem", "a-key.pem");
    let cert_b = certificate_as(dir.path(), "b.pem", "b-key.pem");
    let tls = |name: &str| format!("[tls]\ncert = \"{name}.pem\"\nkey = \"{name}-key.pem\"\n");
    let mailhop = start_in(dir.path(), &format!("{}{}", routed_to(&first), tls("a")));
    assert!(presents(mailhop.addr, &cert_a));
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            let addr = mailhop.addr;
            std::thread::spawn(move || load(addr, stop, 100))
        })
        .collect();
    // Under way: then the new route and certificate.
    first.wait_for(50, Duration::from_secs(60));
    write_config(
        dir.path(),
        "\"127.0.0.1:0\"",
        &format!("{}{}", routed_to(&second), tls("b")),
    );
    mailhop.hangup();
    mailhop.wait_log("reloaded", 1);
    second.wait_for(50, Duration::from_secs(60));
    stop.store(true, Ordering::SeqCst);
    let replies: Vec<String> = loaders
        .into_iter()
        .flat_map(|l| l.join().unwrap())
        .collect();
    let refused: Vec<&String> = replies.iter().filter(|r| !r.starts_with("250")).collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    // Every message reached one of the two next hops.
    let start = Instant::now();
    while first.count() + second.count() < replies.len() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} + {} of {}",
            first.count(),
            second.count(),
            replies.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(first.count() + second.count(), replies.len());
    assert!(presents(mailhop.addr, &cert_b), "the new certificate");
    assert!(!presents(mailhop.addr, &cert_a), "the old certificate");
    // And the queue let go of all of it.
    let start = Instant::now();
    let conn = open_queue(&mailhop.queue_path());
    while rows(&conn, "SELECT count(*) FROM queue") != ["0"] {
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_broken_config_is_refused_and_the_old_one_stays() {
    let dir = tempdir();
    let (first, second) = (Sink::start(), Sink::start());
    let mut mailhop = start_in(dir.path(), &routed_to(&first));
    for (broken, why) in [
        (
            format!("max_recipients = \"many\"\n{}", routed_to(&second)),
            "max_recipients",
        ),
        (
            format!(
                "{}[tls]\ncert = \"missing.pem\"\nkey = \"missing.pem\"\n",
                routed_to(&second)
            ),
            "missing.pem",
        ),
        (
            format!("{}queue = \"elsewhere.db\"\n", "relay_networks = []\n"),
            "queue",
        ),
    ] {
        if broken.contains("elsewhere") {
            std::fs::write(
                dir.path().join("mailhop.toml"),
                format!("listen = [\"127.0.0.1:0\"]\n{broken}"),
            )
            .unwrap();
        } else {
            write_config(dir.path(), "\"127.0.0.1:0\"", &broken);
        }
        let before = mailhop.log().matches("reload refused").count();
        mailhop.hangup();
        mailhop.wait_log("reload refused", before + 1);
        let line = mailhop
            .log()
            .lines()
            .rfind(|l| l.contains("reload refused"))
            .unwrap()
            .to_string();
        assert!(
            line.contains(why) || mailhop.log().contains(why),
            "{why}: {line}"
        );
        // Still serving, and still on the old route.
        let (reply, _) = one_transaction(mailhop.addr, "r@dst.test");
        expect(&reply, "250");
    }
    first.wait_for(3, Duration::from_secs(30));
    assert_eq!(second.count(), 0);
    // Still stops cleanly on SIGTERM.
    assert!(mailhop.signal(libc::SIGTERM).success());
}

#[test]
fn listeners_come_and_go_and_their_sessions_finish() {
    let dir = tempdir();
    let sink = Sink::start();
    let (old_port, new_port) = (free_port(), free_port());
    let mailhop = start_in(dir.path(), &routed_to(&sink));
    // Add a second listener.
    let with = |port: u16| format!("\"127.0.0.1:0\", \"127.0.0.1:{port}\"");
    write_config(dir.path(), &with(old_port), &routed_to(&sink));
    mailhop.hangup();
    mailhop.wait_log("reloaded", 1);
    let old: SocketAddr = format!("127.0.0.1:{old_port}").parse().unwrap();
    let mut session = Client::connect(old);
    expect(&session.reply(), "220");
    expect(&session.cmd("EHLO keep.test"), "250");
    expect(&session.cmd("MAIL FROM:<a@src.test>"), "250");
    // Move it: the session on the old one goes on.
    write_config(dir.path(), &with(new_port), &routed_to(&sink));
    mailhop.hangup();
    mailhop.wait_log("reloaded", 2);
    expect(&session.cmd("RCPT TO:<r@dst.test>"), "250");
    expect(&session.cmd("DATA"), "354");
    session.send(b"Subject: kept\r\n\r\nbody\r\n.\r\n");
    expect(&session.reply(), "250");
    expect(&session.cmd("QUIT"), "221");
    assert!(
        TcpStream::connect(old).is_err(),
        "the old listener is closed"
    );
    let new: SocketAddr = format!("127.0.0.1:{new_port}").parse().unwrap();
    let (reply, _) = one_transaction(new, "r@dst.test");
    expect(&reply, "250");
    let (reply, _) = one_transaction(mailhop.addr, "r@dst.test");
    expect(&reply, "250");
    sink.wait_for(3, Duration::from_secs(30));
    assert!(mailhop.log().contains(&format!("listening on {new}")));
}

#[test]
fn mailhop_reload_finds_serve_by_the_configs_pid_file() {
    let dir = tempdir();
    let (first, second) = (Sink::start(), Sink::start());
    let body = |sink: &Sink| format!("pid_file = \"mailhop.pid\"\n{}", routed_to(sink));
    let mailhop = start_in(dir.path(), &body(&first));
    let config = dir.path().join("mailhop.toml");
    let pid_file = dir.path().join("mailhop.pid");
    let start = Instant::now();
    while !pid_file.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no pid file");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        mailhop.child.id().to_string()
    );
    write_config(dir.path(), "\"127.0.0.1:0\"", &body(&second));
    let out = std::process::Command::new(BIN)
        .arg("reload")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent SIGHUP"));
    mailhop.wait_log("reloaded", 1);
    let (reply, _) = one_transaction(mailhop.addr, "r@dst.test");
    expect(&reply, "250");
    second.wait_for(1, Duration::from_secs(30));
    assert_eq!(first.count(), 0);
    // An invalid config is refused before anything is sent.
    std::fs::write(&config, "max_recipients = \"many\"\n").unwrap();
    let out = std::process::Command::new(BIN)
        .arg("reload")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_recipients"));
    assert_eq!(mailhop.log().matches("SIGHUP").count(), 1);
}

#[test]
fn sessions_keep_the_limits_they_started_with() {
    let dir = tempdir();
    let sink = Sink::start();
    let limits = |size: u32| format!("max_message_size = {size}\n{}", routed_to(&sink));
    let mailhop = start_in(dir.path(), &limits(100_000));
    let mut old = mailhop.connect();
    expect(&old.reply(), "220");
    assert!(old.cmd("EHLO old.test").contains("SIZE 100000"));
    write_config(dir.path(), "\"127.0.0.1:0\"", &limits(2_000));
    mailhop.hangup();
    mailhop.wait_log("reloaded", 1);
    let mut new = mailhop.connect();
    expect(&new.reply(), "220");
    assert!(new.cmd("EHLO new.test").contains("SIZE 2000"));
    expect(&new.cmd("MAIL FROM:<a@src.test> SIZE=5000"), "552");
    // The session from before the reload still has its old limit.
    expect(&old.cmd("MAIL FROM:<a@src.test> SIZE=5000"), "250");
    expect(&old.cmd("RCPT TO:<r@dst.test>"), "250");
    expect(&old.cmd("DATA"), "354");
    let body = format!("{}\r\n", "x".repeat(98)).repeat(50);
    old.send(format!("Subject: big\r\n\r\n{body}.\r\n").as_bytes());
    expect(&old.reply(), "250");
    sink.wait_for(1, Duration::from_secs(30));
}
