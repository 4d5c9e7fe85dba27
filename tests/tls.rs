//! STARTTLS, implicit TLS and AUTH over real sockets, with a certificate
//! made in the test (rcgen) and a rustls client; then real clients (swaks,
//! curl, openssl) when installed.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::sink::Sink;
use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A line-at-a-time SMTP client over any stream, so it can change from
/// TCP to TLS mid-session without losing buffered bytes (it buffers none).
struct Smtp {
    stream: Box<dyn Stream>,
}

impl Smtp {
    fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while line.last() != Some(&b'\n') {
                match self.stream.read(&mut byte) {
                    Ok(1) => line.push(byte[0]),
                    _ => return lines.join("\n"),
                }
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            let last = text.as_bytes().get(3) != Some(&b'-');
            lines.push(text);
            if last {
                return lines.join("\n");
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.reply()
    }
}

fn client_config(cert: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn tls_over(tcp: TcpStream, cert: &CertificateDer<'static>) -> Box<dyn Stream> {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(client_config(cert), name).unwrap();
    Box::new(StreamOwned::new(conn, tcp))
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp
}

const USER: &str = "alice";
const PASSWORD: &str = "correct horse";

/// A relay with a certificate, an implicit-TLS listener, and one account;
/// loopback is NOT trusted, so relaying needs AUTH.
fn secure_relay(dir: &Path) -> (Mailhop, CertificateDer<'static>, SocketAddr) {
    let cert = certificate(dir);
    let line = passwd(USER, PASSWORD);
    assert!(line.starts_with("alice:$argon2id$"), "{line}");
    std::fs::write(dir.join("users"), line).unwrap();
    let mailhop = start_in(
        dir,
        "hostname = \"beta.test\"\nrelay_networks = []\nlocal_domains = [\"beta.test\"]\nlocal_users = [\"jones\"]\nmaildir = \"/dev/null/mail\"\n\
         [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nimplicit_listen = [\"127.0.0.1:0\"]\n[auth]\nusers_file = \"users\"\n",
    );
    // The second listener is the implicit-TLS one; port 0 picks it.
    let implicit = mailhop.listening(2)[1];
    (mailhop, cert, implicit)
}

#[test]
fn starttls_then_auth_then_relay_and_received_says_esmtpsa() {
    let dir = tempdir();
    let (mailhop, cert, _) = secure_relay(dir.path());
    let raw = tcp(mailhop.addr);
    let mut smtp = Smtp {
        stream: Box::new(raw.try_clone().unwrap()),
    };
    expect(&smtp.reply(), "220");
    let ehlo = smtp.cmd("EHLO client.test");
    assert!(ehlo.lines().any(|l| l.ends_with("STARTTLS")), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "AUTH offered in clear: {ehlo}");
    // Refused in clear, and relaying is refused without it.
    expect(
        &smtp.cmd("AUTH PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U="),
        "538 5.7.11",
    );
    expect(&smtp.cmd("MAIL FROM:<a@client.test>"), "250");
    expect(&smtp.cmd("RCPT TO:<u@elsewhere.example>"), "554 5.7.1");
    expect(&smtp.cmd("RSET"), "250");
    expect(&smtp.cmd("STARTTLS"), "220 2.0.0");
    let mut smtp = Smtp {
        stream: tls_over(raw, &cert),
    };
    // A new EHLO is required, and now AUTH is offered, STARTTLS is not.
    expect(&smtp.cmd("MAIL FROM:<a@client.test>"), "503 5.5.1");
    let ehlo = smtp.cmd("EHLO client.test");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let wrong = auth_plain(USER, "wrong");
    expect(&smtp.cmd(&format!("AUTH PLAIN {wrong}")), "535 5.7.8");
    // LOGIN, step by step.
    expect(&smtp.cmd("AUTH LOGIN"), "334 VXNlcm5hbWU6");
    expect(&smtp.cmd(&b64(USER)), "334 UGFzc3dvcmQ6");
    expect(&smtp.cmd(&b64(PASSWORD)), "235 2.7.0");
    expect(&smtp.cmd("MAIL FROM:<a@client.test>"), "250");
    expect(&smtp.cmd("RCPT TO:<u@elsewhere.example>"), "250");
    expect(&smtp.cmd("DATA"), "354");
    smtp.stream
        .write_all(b"Subject: over tls\r\n\r\nhi\r\n.\r\n")
        .unwrap();
    let id = queued_id(&smtp.reply());
    let db = open_queue(&mailhop.queue_path());
    let body: Vec<u8> = db
        .query_row("SELECT body FROM messages WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("(mailhop) with ESMTPSA id"), "{body}");
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn auth_plain(user: &str, password: &str) -> String {
    b64(&format!("\0{user}\0{password}"))
}

#[test]
fn plaintext_pipelined_after_starttls_is_never_executed() {
    let dir = tempdir();
    let (mailhop, cert, _) = secure_relay(dir.path());
    let raw = tcp(mailhop.addr);
    let mut smtp = Smtp {
        stream: Box::new(raw.try_clone().unwrap()),
    };
    expect(&smtp.reply(), "220");
    smtp.cmd("EHLO client.test");
    // The injection: a command in clear right behind STARTTLS, one write.
    smtp.stream
        .write_all(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
        .unwrap();
    expect(&smtp.reply(), "220 2.0.0");
    let mut smtp = Smtp {
        stream: tls_over(raw, &cert),
    };
    // Answered in clear, the injected MAIL would have broken the handshake;
    // answered over TLS, its reply would come ahead of one of these.
    let ehlo = smtp.cmd("EHLO client.test");
    assert!(ehlo.starts_with("250-beta.test"), "EHLO over TLS: {ehlo:?}");
    assert_eq!(smtp.cmd("NOOP"), "250 2.0.0 Ok");
    // And no transaction was opened by it.
    expect(&smtp.cmd("RCPT TO:<jones@beta.test>"), "503 5.5.1");
    assert!(!mailhop.log().contains("injected@evil.example"));
}

#[test]
fn implicit_tls_listener_greets_over_tls() {
    let dir = tempdir();
    let (mailhop, cert, implicit) = secure_relay(dir.path());
    let mut smtp = Smtp {
        stream: tls_over(tcp(implicit), &cert),
    };
    expect(&smtp.reply(), "220 beta.test ESMTP mailhop");
    let ehlo = smtp.cmd("EHLO client.test");
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    expect(
        &smtp.cmd(&format!("AUTH PLAIN {}", auth_plain(USER, PASSWORD))),
        "235 2.7.0",
    );
    drop(mailhop);
}

#[test]
fn repeated_auth_failures_are_locked_out() {
    let dir = tempdir();
    let (mailhop, cert, implicit) = secure_relay(dir.path());
    let mut smtp = Smtp {
        stream: tls_over(tcp(implicit), &cert),
    };
    smtp.reply();
    smtp.cmd("EHLO client.test");
    for _ in 0..5 {
        expect(
            &smtp.cmd(&format!("AUTH PLAIN {}", auth_plain(USER, "guess"))),
            "535 5.7.8",
        );
    }
    // Even the right password waits now.
    expect(
        &smtp.cmd(&format!("AUTH PLAIN {}", auth_plain(USER, PASSWORD))),
        "454 4.7.0",
    );
    drop(mailhop);
}

#[test]
fn two_relays_talk_tls_and_required_tls_defers_a_clear_hop() {
    let dir_b = tempdir();
    certificate(dir_b.path());
    let beta = start_in(
        dir_b.path(),
        "hostname = \"beta.test\"\nrelay_domains = [\"final.test\"]\nmaildir = \"/dev/null/mail\"\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[routes]\n\"final.test\" = \"127.0.0.1:9\"\n",
    );
    let sink = Sink::start();
    let dir_a = tempdir();
    let alpha = start_in(
        dir_a.path(),
        &format!(
            "hostname = \"alpha.test\"\n[routes]\n\"final.test\" = \"{}\"\n\"clear.test\" = \"{}\"\n[tls]\noutbound = \"required\"\n[retry]\nschedule = [\"1h\"]\n",
            beta.addr, sink.addr
        ),
    );
    let mut c = alpha.connect();
    c.reply();
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<>");
    c.cmd("RCPT TO:<u@final.test>");
    c.cmd("RCPT TO:<u@clear.test>");
    c.cmd("DATA");
    c.send(b"Subject: hop by hop\r\n\r\nhi\r\n.\r\n");
    queued_id(&c.reply());
    // Beta got it over TLS: its Received line says ESMTPS.
    let db = open_queue(&beta.queue_path());
    let start = std::time::Instant::now();
    let mut bodies = Vec::new();
    while bodies.is_empty() && start.elapsed() < Duration::from_secs(30) {
        bodies = rows(&db, "SELECT body FROM messages");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(bodies.len(), 1, "{}", alpha.log());
    assert!(
        bodies[0].contains("by beta.test (mailhop) with ESMTPS id"),
        "{}",
        bodies[0]
    );
    // The sink offers no STARTTLS: with outbound = required, nothing goes.
    let db = open_queue(&alpha.queue_path());
    let start = std::time::Instant::now();
    let mut waiting = Vec::new();
    while waiting.is_empty() && start.elapsed() < Duration::from_secs(30) {
        waiting = rows(&db, "SELECT status, substr(last_reply, 1, 10) FROM queue WHERE recipient = 'u@clear.test' AND attempts > 0");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(waiting, ["deferred|451 4.7.10"], "{}", alpha.log());
    assert_eq!(sink.count(), 0);
}

#[test]
fn real_clients_swaks_curl_openssl() {
    let dir = tempdir();
    let (mailhop, _cert, implicit) = secure_relay(dir.path());
    let port = mailhop.addr.port();
    if have("swaks") {
        let out = Command::new("swaks")
            .args([
                "--server",
                &format!("127.0.0.1:{port}"),
                "--tls",
                "--auth",
                "PLAIN",
            ])
            .args(["--auth-user", USER, "--auth-password", PASSWORD])
            .args([
                "--from",
                "a@client.test",
                "--to",
                "u@elsewhere.example",
                "--timeout",
                "20",
            ])
            .output()
            .unwrap();
        let transcript = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{transcript}");
        assert!(
            transcript.contains("250 2.0.0 Ok: queued as"),
            "{transcript}"
        );
    } else {
        skip("real_clients (swaks)", "swaks is not installed");
    }
    if have("curl") {
        let mail = dir.path().join("mail.txt");
        std::fs::write(&mail, "Subject: curl over tls\r\n\r\nhi\r\n").unwrap();
        let user = format!("{USER}:{PASSWORD}");
        let (from, rcpt) = ("a@client.test", "u@elsewhere.example");
        let url = format!("smtp://127.0.0.1:{port}/client.test");
        succeed(curl_mail(&url, from, rcpt, &mail).args(["--ssl-reqd", "-k", "--user", &user]));
        let url = format!("smtps://127.0.0.1:{}/client.test", implicit.port());
        let out = curl_mail(&url, from, rcpt, &mail)
            .args(["-k", "--user", &user])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "implicit TLS: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        skip("real_clients (curl)", "curl is not installed");
    }
    if have("openssl") {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-starttls",
                "smtp",
                "-connect",
                &format!("127.0.0.1:{port}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"EHLO openssl.test\r\nQUIT\r\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("250-AUTH PLAIN LOGIN") && text.contains("221 2.0.0"),
            "{text}"
        );
    } else {
        skip("real_clients (openssl)", "openssl is not installed");
    }
    let db = open_queue(&mailhop.queue_path());
    // Relayed for authenticated clients (wherever DNS then sends it).
    let n = rows(
        &db,
        "SELECT count(*) FROM (SELECT id FROM queue WHERE recipient = 'u@elsewhere.example'
         UNION ALL SELECT id FROM deliveries WHERE recipient = 'u@elsewhere.example')",
    );
    let expected = [have("swaks"), have("curl"), have("curl")]
        .iter()
        .filter(|&&x| x)
        .count();
    assert_eq!(n, [expected.to_string()]);
}
