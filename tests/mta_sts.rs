//! MTA-STS (RFC 8461) end to end on loopback: a real `dnsmasq` serves the
//! `_mta-sts` TXT records, the MX records and the addresses; an in-test
//! HTTPS server (rustls, a test CA that mailhop trusts through `[tls]
//! ca_file`) serves the policies on port 443; MX hosts are in-test SMTP
//! servers on port 25, with STARTTLS (a certificate from the same CA) or
//! without. Port 25 and 443 need root (as in CI), dnsmasq needs to be
//! installed: otherwise each test says SKIPPED and why, and passes.

mod common;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sink::Sink;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

const WAIT: Duration = Duration::from_secs(20);

/// A test CA; its certificate goes into mailhop's `ca_file`.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca() -> Ca {
    ca_named("mailhop MTA-STS test CA")
}

/// A CA of its own name: one nobody trusts, for certificates that fail.
fn ca_named(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A server config with a certificate for `names` from `ca`.
fn tls_server(ca: &Ca, names: &[&str]) -> Arc<ServerConfig> {
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.der().to_vec())], der)
        .unwrap();
    Arc::new(config)
}

/// The whole HTTP response the policy server gives each `Host`.
type Pages = Arc<Mutex<HashMap<String, String>>>;

fn policy_page(policy: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{policy}",
        policy.len()
    )
}

fn enforce(mx: &str) -> String {
    format!("version: STSv1\r\nmode: enforce\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

/// An HTTPS server on `addr` (port 443) answering from `pages` by Host;
/// counts the requests.
fn https_server(
    addr: &str,
    config: Arc<ServerConfig>,
    pages: Pages,
) -> io::Result<Arc<AtomicUsize>> {
    let listener = TcpListener::bind(addr)?;
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (config, pages, counted) = (config.clone(), pages.clone(), counted.clone());
            std::thread::spawn(move || {
                let _ = serve_page(stream, config, &pages, &counted);
            });
        }
    });
    Ok(requests)
}

fn serve_page(
    stream: TcpStream,
    config: Arc<ServerConfig>,
    pages: &Pages,
    counted: &AtomicUsize,
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, stream);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        if tls.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    counted.fetch_add(1, Ordering::SeqCst);
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let host = head
        .lines()
        .find_map(|l| l.strip_prefix("host:"))
        .unwrap_or("")
        .trim()
        .to_string();
    let page = pages
        .lock()
        .unwrap()
        .get(&host)
        .cloned()
        .unwrap_or_else(|| "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into());
    tls.write_all(page.as_bytes())?;
    tls.conn.send_close_notify();
    tls.flush()
}

/// What an MX host got: each recipient, and whether it came over TLS.
type Received = Arc<Mutex<Vec<(bool, String)>>>;

/// An MX host on `addr` (port 25) that offers STARTTLS with `config`.
fn tls_mx(addr: &str, config: Arc<ServerConfig>) -> io::Result<Received> {
    let listener = TcpListener::bind(addr)?;
    let received = Arc::new(Mutex::new(Vec::new()));
    let got = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (config, got) = (config.clone(), got.clone());
            std::thread::spawn(move || {
                let _ = smtp_session(stream, config, &got);
            });
        }
    });
    Ok(received)
}

fn line<S: Read>(s: &mut S) -> io::Result<String> {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\n") {
        if s.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        out.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&out).trim_end().to_string())
}

fn smtp_session(
    mut plain: TcpStream,
    config: Arc<ServerConfig>,
    got: &Mutex<Vec<(bool, String)>>,
) -> io::Result<()> {
    plain.set_read_timeout(Some(Duration::from_secs(10)))?;
    plain.write_all(b"220 mx ESMTP\r\n")?;
    loop {
        let cmd = line(&mut plain)?.to_uppercase();
        if cmd.starts_with("EHLO") {
            plain.write_all(b"250-mx\r\n250 STARTTLS\r\n")?;
        } else if cmd == "STARTTLS" {
            plain.write_all(b"220 go ahead\r\n")?;
            break;
        } else if cmd == "QUIT" {
            return plain.write_all(b"221 bye\r\n");
        } else {
            plain.write_all(b"530 5.7.0 STARTTLS first\r\n")?;
        }
    }
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut s = StreamOwned::new(conn, plain);
    let mut rcpts = Vec::new();
    loop {
        let cmd = line(&mut s)?;
        let upper = cmd.to_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250 mx\r\n"
        } else if upper.starts_with("RCPT TO:") {
            rcpts.push(cmd[8..].trim().to_string());
            b"250 ok\r\n"
        } else if upper == "DATA" {
            s.write_all(b"354 go\r\n")?;
            while line(&mut s)? != "." {}
            got.lock()
                .unwrap()
                .extend(rcpts.drain(..).map(|r| (true, r)));
            b"250 2.0.0 taken\r\n"
        } else if upper == "QUIT" {
            s.write_all(b"221 bye\r\n")?;
            return s.flush();
        } else {
            b"250 ok\r\n"
        };
        s.write_all(reply)?;
        s.flush()?;
    }
}

/// dnsmasq on 127.0.0.1:`port` with `records` (its options), or None
/// with a SKIPPED line.
fn dnsmasq(test: &str, port: u16, records: &[String]) -> Option<Child> {
    let program = ["/usr/sbin/dnsmasq", "/sbin/dnsmasq"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_string)
        .or_else(|| have("dnsmasq").then(|| "dnsmasq".to_string()));
    let Some(program) = program else {
        skip(
            test,
            "dnsmasq is not installed (apt-get install dnsmasq-base)",
        );
        return None;
    };
    let mut args: Vec<String> = [
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--local=/sts.test/",
        "--pid-file=",
        "--user=root",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--port={port}"));
    args.extend(records.iter().cloned());
    let child = Command::new(&program)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq");
    // Until it answers: a query for a name it serves.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| {
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                s.send_to(&probe(), ("127.0.0.1", port))?;
                s.recv(&mut [0u8; 512])
            })
            .is_ok()
        {
            break;
        }
    }
    Some(child)
}

/// A DNS query for `sts.test` SOA: any answer means the server is up.
fn probe() -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(b"\x03sts\x04test\x00\x00\x06\x00\x01");
    q
}

/// A free UDP port on 127.0.0.1 for dnsmasq.
fn dns_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The records of a domain under MTA-STS: MX, its host's address, the
/// TXT record with `id`, and `mta-sts.<domain>` at `web`.
fn domain(name: &str, mx: &str, mx_ip: &str, id: &str, web: &str) -> Vec<String> {
    vec![
        format!("--mx-host={name},{mx},10"),
        format!("--host-record={mx},{mx_ip}"),
        format!("--txt-record=_mta-sts.{name},v=STSv1; id={id};"),
        format!("--host-record=mta-sts.{name},{web}"),
    ]
}

fn relay(dir: &std::path::Path, ca: &Ca, dns_port: u16) -> Mailhop {
    relay_with(dir, ca, dns_port, "")
}

/// The relay's config, with `extra` at its end.
fn relay_config(dns_port: u16, extra: &str) -> String {
    format!(
        "hostname = \"relay.sts.test\"\n[dns]\nservers = [\"127.0.0.1:{dns_port}\"]\n\
         [tls]\nca_file = \"ca.pem\"\n[retry]\nschedule = [\"1h\"]\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n{extra}"
    )
}

fn relay_with(dir: &std::path::Path, ca: &Ca, dns_port: u16, extra: &str) -> Mailhop {
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    start_in(dir, &relay_config(dns_port, extra))
}

fn wait_until(what: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while !what() {
        if start.elapsed() > WAIT {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Binds what a test needs on port 25 and 443, or says why it cannot.
fn bound<T>(test: &str, what: &str, r: io::Result<T>) -> Option<T> {
    match r {
        Ok(t) => Some(t),
        Err(e) => {
            skip(test, &format!("cannot listen for {what}: {e} (needs root)"));
            None
        }
    }
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn enforce_delivers_to_a_matching_mx_and_defers_others_with_4_7_5() {
    const T: &str = "enforce_delivers_to_a_matching_mx_and_defers_others_with_4_7_5";
    let ca = ca();
    let pages: Pages = Arc::default();
    let web = tls_server(
        &ca,
        &[
            "mta-sts.enf.sts.test",
            "mta-sts.other.sts.test",
            "mta-sts.plain.sts.test",
            "mta-sts.bad.sts.test",
            "mta-sts.wrong.sts.test",
        ],
    );
    let Some(fetches) = bound(
        T,
        "HTTPS",
        https_server("127.8.1.9:443", web, pages.clone()),
    ) else {
        return;
    };
    let mx_tls = tls_server(&ca, &["mx.enf.sts.test"]);
    let Some(good) = bound(T, "an MX host", tls_mx("127.8.1.2:25", mx_tls)) else {
        return;
    };
    let Some(clear) = bound(
        T,
        "an MX host",
        Sink::try_start("127.8.1.3:25", Arc::new(|_, _, _| None)),
    ) else {
        return;
    };
    // bad: a certificate from a CA nobody trusts; wrong: from the trusted
    // CA, but for another name.
    let stranger = tls_server(&ca_named("a stranger"), &["mx.bad.sts.test"]);
    let Some(bad) = bound(T, "an MX host", tls_mx("127.8.1.4:25", stranger)) else {
        return;
    };
    let misnamed = tls_server(&ca, &["somebody.else.test"]);
    let Some(wrong) = bound(T, "an MX host", tls_mx("127.8.1.5:25", misnamed)) else {
        return;
    };
    {
        let mut p = pages.lock().unwrap();
        for name in ["enf", "bad", "wrong"] {
            p.insert(
                format!("mta-sts.{name}.sts.test"),
                policy_page(&enforce(&format!("mx.{name}.sts.test"))),
            );
        }
        p.insert(
            "mta-sts.other.sts.test".into(),
            policy_page(&enforce("mx.other.sts.test")),
        );
        p.insert(
            "mta-sts.plain.sts.test".into(),
            policy_page(&enforce("*.plain.sts.test")),
        );
    }
    let port = dns_port();
    let mut records = domain(
        "enf.sts.test",
        "mx.enf.sts.test",
        "127.8.1.2",
        "1",
        "127.8.1.9",
    );
    // other: its MX is a host the policy does not name.
    records.extend(domain(
        "other.sts.test",
        "mx.elsewhere.sts.test",
        "127.8.1.3",
        "1",
        "127.8.1.9",
    ));
    // plain: the MX matches, but offers no STARTTLS.
    records.extend(domain(
        "plain.sts.test",
        "mx.plain.sts.test",
        "127.8.1.3",
        "1",
        "127.8.1.9",
    ));
    for (name, ip) in [("bad", "127.8.1.4"), ("wrong", "127.8.1.5")] {
        let (domain_name, mx) = (format!("{name}.sts.test"), format!("mx.{name}.sts.test"));
        records.extend(domain(&domain_name, &mx, ip, "1", "127.8.1.9"));
    }
    let Some(dns) = dnsmasq(T, port, &records) else {
        return;
    };
    let dir = tempdir();
    let mailhop = relay(dir.path(), &ca, port);

    send_from_null(&mailhop, "a@enf.sts.test");
    assert!(
        wait_until(|| good.lock().unwrap().len() == 1),
        "{}",
        mailhop.log()
    );
    // The policy is cached: a second message fetches nothing again.
    send_from_null(&mailhop, "b@enf.sts.test");
    assert!(
        wait_until(|| good.lock().unwrap().len() == 2),
        "{}",
        mailhop.log()
    );
    assert_eq!(
        *good.lock().unwrap(),
        [
            (true, "<a@enf.sts.test>".into()),
            (true, "<b@enf.sts.test>".into())
        ]
    );
    let other = send_from_null(&mailhop, "c@other.sts.test");
    let plain = send_from_null(&mailhop, "d@plain.sts.test");
    let refused = wait_rows(
        &mailhop.queue_path(),
        &format!("SELECT sts_mode, tls_result, reply FROM attempts WHERE id = '{other}'"),
    );
    assert_eq!(refused.len(), 1, "{}", mailhop.log());
    assert!(
        refused[0].starts_with(
            "enforce|validation-failure|451 4.7.5 MTA-STS policy of other.sts.test (enforce, id 1): \
             validation-failure: no MX host matches the policy's mx mx.other.sts.test"
        ),
        "{refused:?}"
    );
    let no_tls = wait_rows(
        &mailhop.queue_path(),
        &format!("SELECT sts_mode, tls_result, reply FROM attempts WHERE id = '{plain}'"),
    );
    assert_eq!(no_tls.len(), 1, "{}", mailhop.log());
    assert!(
        no_tls[0].starts_with("enforce|starttls-not-supported|451 4.7.5 MTA-STS policy of plain.sts.test (enforce, id 1): starttls-not-supported"),
        "{no_tls:?}"
    );
    for (rcpt, result) in [
        ("e@bad.sts.test", "certificate-not-trusted"),
        ("f@wrong.sts.test", "certificate-host-mismatch"),
    ] {
        let id = send_from_null(&mailhop, rcpt);
        let got = wait_rows(
            &mailhop.queue_path(),
            &format!("SELECT tls_result, reply FROM attempts WHERE id = '{id}'"),
        );
        assert_eq!(got.len(), 1, "{}", mailhop.log());
        let domain = rcpt.split_once('@').unwrap().1;
        let want = format!(
            "{result}|451 4.7.5 MTA-STS policy of {domain} (enforce, id 1): TLS with mx.{domain}["
        );
        assert!(got[0].starts_with(&want), "{got:?}");
    }
    let refused = (bad.lock().unwrap().len(), wrong.lock().unwrap().len());
    assert_eq!(refused, (0, 0), "nothing went over a bad certificate");
    let db = open_queue(&mailhop.queue_path());
    assert_eq!(
        rows(
            &db,
            "SELECT recipient, status FROM queue ORDER BY recipient"
        ),
        [
            "c@other.sts.test|deferred",
            "d@plain.sts.test|deferred",
            "e@bad.sts.test|deferred",
            "f@wrong.sts.test|deferred"
        ]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT count(*) FROM deliveries WHERE status = 'bounced'"
        ),
        ["0"]
    );
    assert_eq!(clear.count(), 0, "nothing went to a refused MX in clear");
    assert_eq!(
        rows(
            &db,
            "SELECT sts_mode, tls_result FROM attempts WHERE recipient LIKE '%@enf.sts.test'"
        ),
        ["enforce|success", "enforce|success"]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT domain, id, mode, mx, max_age, expired, last_id, last_error IS NULL,
                    expires_at > fetched_at
             FROM policies ORDER BY domain"
        ),
        [
            "bad.sts.test|1|enforce|mx.bad.sts.test|86400|0|1|1|1",
            "enf.sts.test|1|enforce|mx.enf.sts.test|86400|0|1|1|1",
            "other.sts.test|1|enforce|mx.other.sts.test|86400|0|1|1|1",
            "plain.sts.test|1|enforce|*.plain.sts.test|86400|0|1|1|1",
            "wrong.sts.test|1|enforce|mx.wrong.sts.test|86400|0|1|1|1"
        ]
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 5, "one fetch per domain");
    let metrics = scrape(metrics_addr(&mailhop));
    let count = |labels: &str| {
        metrics
            .get(&format!("mailhop_mta_sts_results_total{{{labels}}}"))
            .copied()
            .unwrap_or(0.0)
    };
    assert!(
        count("mode=\"enforce\",result=\"success\"") >= 1.0,
        "{metrics:?}"
    );
    assert!(
        count("mode=\"enforce\",result=\"validation-failure\"") >= 1.0,
        "{metrics:?}"
    );
    assert!(
        count("mode=\"enforce\",result=\"starttls-not-supported\"") >= 1.0,
        "{metrics:?}"
    );
    for result in ["certificate-not-trusted", "certificate-host-mismatch"] {
        let labels = format!("mode=\"enforce\",result=\"{result}\"");
        assert!(count(&labels) >= 1.0, "{metrics:?}");
    }
    assert_eq!(
        metrics.get("mailhop_mta_sts_fetches_total{result=\"ok\"}"),
        Some(&5.0)
    );
    kill(dns);
}

#[test]
fn testing_mode_delivers_and_logs_what_enforce_would_refuse() {
    const T: &str = "testing_mode_delivers_and_logs_what_enforce_would_refuse";
    let ca = ca();
    let pages: Pages = Arc::default();
    let web = tls_server(
        &ca,
        &[
            "mta-sts.tst.sts.test",
            "mta-sts.tgood.sts.test",
            "mta-sts.tbad.sts.test",
        ],
    );
    let Some(_fetches) = bound(
        T,
        "HTTPS",
        https_server("127.8.2.9:443", web, pages.clone()),
    ) else {
        return;
    };
    let Some(clear) = bound(
        T,
        "an MX host",
        Sink::try_start("127.8.2.3:25", Arc::new(|_, _, _| None)),
    ) else {
        return;
    };
    // With STARTTLS: a certificate that verifies, and one nobody trusts.
    let good_tls = tls_server(&ca, &["mx.tgood.sts.test"]);
    let Some(good) = bound(T, "an MX host", tls_mx("127.8.2.4:25", good_tls)) else {
        return;
    };
    let stranger = tls_server(&ca_named("a stranger"), &["mx.tbad.sts.test"]);
    let Some(bad) = bound(T, "an MX host", tls_mx("127.8.2.5:25", stranger)) else {
        return;
    };
    for name in ["tst", "tgood", "tbad"] {
        let testing =
            format!("version: STSv1\nmode: testing\nmx: mx.{name}.sts.test\nmax_age: 600\n");
        pages
            .lock()
            .unwrap()
            .insert(format!("mta-sts.{name}.sts.test"), policy_page(&testing));
    }
    let port = dns_port();
    let mut records = domain(
        "tst.sts.test",
        "mx.tst.sts.test",
        "127.8.2.3",
        "7",
        "127.8.2.9",
    );
    for (name, ip) in [("tgood", "127.8.2.4"), ("tbad", "127.8.2.5")] {
        let (domain_name, mx) = (format!("{name}.sts.test"), format!("mx.{name}.sts.test"));
        records.extend(domain(&domain_name, &mx, ip, "7", "127.8.2.9"));
    }
    let Some(dns) = dnsmasq(T, port, &records) else {
        return;
    };
    let dir = tempdir();
    let mailhop = relay(dir.path(), &ca, port);
    let id = send_from_null(&mailhop, "u@tst.sts.test");
    assert_eq!(clear.wait_for(1, WAIT).len(), 1, "{}", mailhop.log());
    let got = wait_rows(
        &mailhop.queue_path(),
        &format!(
            "SELECT sts_mode, tls_result, substr(reply, 1, 3) FROM attempts WHERE id = '{id}'"
        ),
    );
    assert_eq!(
        got,
        ["testing|starttls-not-supported|250"],
        "{}",
        mailhop.log()
    );
    assert!(
        mailhop.log().contains(
            "tst.sts.test: MTA-STS (testing, id 7): enforce would refuse mx.tst.sts.test[127.8.2.3]:25: starttls-not-supported"
        ),
        "{}",
        mailhop.log()
    );
    // Over TLS: the certificate is checked as enforce would, and the mail
    // goes either way.
    send_from_null(&mailhop, "v@tgood.sts.test");
    send_from_null(&mailhop, "w@tbad.sts.test");
    assert!(
        wait_until(|| good.lock().unwrap().len() == 1 && bad.lock().unwrap().len() == 1),
        "{}",
        mailhop.log()
    );
    let sql = "SELECT recipient, tls_result FROM attempts
               WHERE recipient IN ('v@tgood.sts.test', 'w@tbad.sts.test') ORDER BY recipient";
    let db = open_queue(&mailhop.queue_path());
    assert!(
        wait_until(|| rows(&db, sql).len() == 2),
        "{}",
        mailhop.log()
    );
    let tls = rows(&db, sql);
    assert_eq!(
        tls,
        [
            "v@tgood.sts.test|success",
            "w@tbad.sts.test|certificate-not-trusted"
        ],
        "{}",
        mailhop.log()
    );
    let db = open_queue(&mailhop.queue_path());
    assert_eq!(
        rows(
            &db,
            "SELECT id, mode, max_age FROM policies ORDER BY domain"
        ),
        ["7|testing|600", "7|testing|600", "7|testing|600"]
    );
    kill(dns);
}

#[test]
fn a_redirect_is_refused_and_mail_goes_as_without_a_policy() {
    const T: &str = "a_redirect_is_refused_and_mail_goes_as_without_a_policy";
    let ca = ca();
    let pages: Pages = Arc::default();
    let web = tls_server(&ca, &["mta-sts.redir.sts.test", "evil.sts.test"]);
    let Some(fetches) = bound(
        T,
        "HTTPS",
        https_server("127.8.3.9:443", web, pages.clone()),
    ) else {
        return;
    };
    let Some(clear) = bound(
        T,
        "an MX host",
        Sink::try_start("127.8.3.3:25", Arc::new(|_, _, _| None)),
    ) else {
        return;
    };
    {
        let mut p = pages.lock().unwrap();
        p.insert(
            "mta-sts.redir.sts.test".into(),
            "HTTP/1.1 301 Moved\r\nLocation: https://evil.sts.test/.well-known/mta-sts.txt\r\nContent-Length: 0\r\n\r\n".into(),
        );
        // Followed, the redirect would give an enforce policy that refuses the MX.
        p.insert(
            "evil.sts.test".into(),
            policy_page(&enforce("nothing.sts.test")),
        );
    }
    let port = dns_port();
    let mut records = domain(
        "redir.sts.test",
        "mx.redir.sts.test",
        "127.8.3.3",
        "1",
        "127.8.3.9",
    );
    records.push("--host-record=evil.sts.test,127.8.3.9".into());
    let Some(dns) = dnsmasq(T, port, &records) else {
        return;
    };
    let dir = tempdir();
    let mailhop = relay(dir.path(), &ca, port);
    let id = send_from_null(&mailhop, "u@redir.sts.test");
    assert_eq!(clear.wait_for(1, WAIT).len(), 1, "{}", mailhop.log());
    let got = wait_rows(
        &mailhop.queue_path(),
        &format!("SELECT sts_mode IS NULL, substr(reply, 1, 3) FROM attempts WHERE id = '{id}'"),
    );
    assert_eq!(got, ["1|250"], "{}", mailhop.log());
    let policy = wait_rows(
        &mailhop.queue_path(),
        "SELECT id IS NULL, last_id, last_error FROM policies",
    );
    assert_eq!(policy.len(), 1);
    assert!(
        policy[0].starts_with("1|1|HTTP 301 redirect to \"https://evil.sts.test/"),
        "{policy:?}"
    );
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "the redirect was not followed"
    );
    kill(dns);
}

#[test]
fn a_failed_refetch_keeps_the_cached_policy() {
    const T: &str = "a_failed_refetch_keeps_the_cached_policy";
    let ca = ca();
    let pages: Pages = Arc::default();
    let web = tls_server(&ca, &["mta-sts.keep.sts.test"]);
    let Some(fetches) = bound(
        T,
        "HTTPS",
        https_server("127.8.4.9:443", web, pages.clone()),
    ) else {
        return;
    };
    let mx_tls = tls_server(&ca, &["mx.keep.sts.test"]);
    let Some(good) = bound(T, "an MX host", tls_mx("127.8.4.2:25", mx_tls)) else {
        return;
    };
    let Some(clear) = bound(
        T,
        "an MX host",
        Sink::try_start("127.8.4.3:25", Arc::new(|_, _, _| None)),
    ) else {
        return;
    };
    pages.lock().unwrap().insert(
        "mta-sts.keep.sts.test".into(),
        policy_page(&enforce("mx.keep.sts.test")),
    );
    let port = dns_port();
    let records = domain(
        "keep.sts.test",
        "mx.keep.sts.test",
        "127.8.4.2",
        "1",
        "127.8.4.9",
    );
    let Some(dns) = dnsmasq(T, port, &records) else {
        return;
    };
    let dir = tempdir();
    let mailhop = relay(dir.path(), &ca, port);
    send_from_null(&mailhop, "a@keep.sts.test");
    assert!(
        wait_until(|| good.lock().unwrap().len() == 1),
        "{}",
        mailhop.log()
    );
    drop(mailhop);
    kill(dns);

    // A new id, a policy server that fails, and an MX the cached policy
    // does not name: the cached policy (id 1) still applies.
    pages.lock().unwrap().insert(
        "mta-sts.keep.sts.test".into(),
        "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n".into(),
    );
    let records = domain(
        "keep.sts.test",
        "mx.elsewhere.sts.test",
        "127.8.4.3",
        "2",
        "127.8.4.9",
    );
    let Some(dns) = dnsmasq(T, port, &records) else {
        return;
    };
    let mailhop = relay(dir.path(), &ca, port);
    let id = send_from_null(&mailhop, "b@keep.sts.test");
    let got = wait_rows(
        &mailhop.queue_path(),
        &format!("SELECT tls_result, reply FROM attempts WHERE id = '{id}'"),
    );
    assert_eq!(got.len(), 1, "{}", mailhop.log());
    assert!(
        got[0].starts_with(
            "validation-failure|451 4.7.5 MTA-STS policy of keep.sts.test (enforce, id 1): "
        ),
        "{got:?}"
    );
    assert!(
        wait_until(|| fetches.load(Ordering::SeqCst) == 2),
        "no refetch: {}",
        mailhop.log()
    );
    let policy = wait_rows(
        &mailhop.queue_path(),
        "SELECT id, mode, mx, last_id, last_error FROM policies WHERE last_id = '2'",
    );
    assert_eq!(
        policy,
        ["1|enforce|mx.keep.sts.test|2|HTTP 500 (only 200 is a policy)"],
        "{}",
        mailhop.log()
    );
    assert_eq!(clear.count(), 0);
    kill(dns);
}

#[test]
fn the_off_switch_and_a_reload_that_turns_it_on() {
    const T: &str = "the_off_switch_and_a_reload_that_turns_it_on";
    let ca = ca();
    let pages: Pages = Arc::default();
    let web = tls_server(&ca, &["mta-sts.sw.sts.test"]);
    let Some(fetches) = bound(
        T,
        "HTTPS",
        https_server("127.8.5.9:443", web, pages.clone()),
    ) else {
        return;
    };
    let Some(clear) = bound(
        T,
        "an MX host",
        Sink::try_start("127.8.5.3:25", Arc::new(|_, _, _| None)),
    ) else {
        return;
    };
    pages.lock().unwrap().insert(
        "mta-sts.sw.sts.test".into(),
        policy_page(&enforce("mx.sw.sts.test")),
    );
    let port = dns_port();
    // The MX is one the policy does not name.
    let records = domain(
        "sw.sts.test",
        "mx.elsewhere.sts.test",
        "127.8.5.3",
        "1",
        "127.8.5.9",
    );
    let Some(dns) = dnsmasq(T, port, &records) else {
        return;
    };
    let dir = tempdir();
    let mailhop = relay_with(dir.path(), &ca, port, "[outbound]\nmta_sts = false\n");
    // Off: no policy is looked for, the mail goes as always.
    let id = send_from_null(&mailhop, "a@sw.sts.test");
    assert_eq!(clear.wait_for(1, WAIT).len(), 1, "{}", mailhop.log());
    let got = wait_rows(
        &mailhop.queue_path(),
        &format!("SELECT sts_mode IS NULL, substr(reply, 1, 3) FROM attempts WHERE id = '{id}'"),
    );
    assert_eq!(got, ["1|250"]);
    assert_eq!(fetches.load(Ordering::SeqCst), 0);
    // On again by a reload: the next message is under the policy.
    let config = format!(
        "listen = [\"127.0.0.1:0\"]\nqueue = \"queue.db\"\n{}",
        relay_config(port, "")
    );
    std::fs::write(dir.path().join("mailhop.toml"), config).unwrap();
    mailhop.hangup();
    mailhop.wait_log("reloaded", 1);
    let id = send_from_null(&mailhop, "b@sw.sts.test");
    let got = wait_rows(
        &mailhop.queue_path(),
        &format!("SELECT tls_result, substr(reply, 1, 9) FROM attempts WHERE id = '{id}'"),
    );
    assert_eq!(got, ["validation-failure|451 4.7.5"], "{}", mailhop.log());
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert_eq!(clear.count(), 1);
    kill(dns);
}

#[test]
fn a_policy_that_cannot_be_had_is_no_policy() {
    const T: &str = "a_policy_that_cannot_be_had_is_no_policy";
    let ca = ca();
    let pages: Pages = Arc::default();
    // Each would refuse the MX if it were taken.
    let refusing = enforce("nothing.sts.test");
    let html = policy_page(&refusing).replace("text/plain", "text/html");
    pages
        .lock()
        .unwrap()
        .insert("mta-sts.html.sts.test".into(), html);
    let web = tls_server(&ca, &["mta-sts.html.sts.test"]);
    let Some(_) = bound(
        T,
        "HTTPS",
        https_server("127.8.6.9:443", web, pages.clone()),
    ) else {
        return;
    };
    // A policy host whose certificate no trusted CA issued.
    let strangers: Pages = Arc::default();
    strangers
        .lock()
        .unwrap()
        .insert("mta-sts.untrusted.sts.test".into(), policy_page(&refusing));
    let stranger = tls_server(&ca_named("a stranger"), &["mta-sts.untrusted.sts.test"]);
    let Some(untrusted) = bound(
        T,
        "HTTPS",
        https_server("127.8.6.10:443", stranger, strangers),
    ) else {
        return;
    };
    let Some(clear) = bound(
        T,
        "an MX host",
        Sink::try_start("127.8.6.3:25", Arc::new(|_, _, _| None)),
    ) else {
        return;
    };
    let port = dns_port();
    let mut records = Vec::new();
    // down: nothing listens on 127.8.6.11:443.
    for (name, web) in [
        ("html", "127.8.6.9"),
        ("untrusted", "127.8.6.10"),
        ("down", "127.8.6.11"),
    ] {
        let (domain_name, mx) = (format!("{name}.sts.test"), format!("mx.{name}.sts.test"));
        records.extend(domain(&domain_name, &mx, "127.8.6.3", "1", web));
    }
    let Some(dns) = dnsmasq(T, port, &records) else {
        return;
    };
    let dir = tempdir();
    let mailhop = relay(dir.path(), &ca, port);
    for rcpt in ["a@html.sts.test", "b@untrusted.sts.test", "c@down.sts.test"] {
        send_from_null(&mailhop, rcpt);
    }
    assert_eq!(clear.wait_for(3, WAIT).len(), 3, "{}", mailhop.log());
    assert!(wait_until(|| rows(
        &open_queue(&mailhop.queue_path()),
        "SELECT 1 FROM policies"
    )
    .len()
        == 3));
    let db = open_queue(&mailhop.queue_path());
    let got = rows(
        &db,
        "SELECT domain, id IS NULL, last_error FROM policies ORDER BY domain",
    );
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got[0].starts_with("down.sts.test|1|"), "{got:?}");
    assert!(
        got[1].starts_with("html.sts.test|1|Content-Type \"text/html\" is not text/plain"),
        "{got:?}"
    );
    assert!(
        got[2].starts_with("untrusted.sts.test|1|TLS with mta-sts.untrusted.sts.test:")
            && got[2].contains("UnknownIssuer"),
        "{got:?}"
    );
    assert_eq!(
        untrusted.load(Ordering::SeqCst),
        0,
        "no request without trust"
    );
    assert_eq!(
        rows(
            &db,
            "SELECT count(*) FROM attempts WHERE sts_mode IS NULL AND reply LIKE '250 %'"
        ),
        ["3"]
    );
    kill(dns);
}
