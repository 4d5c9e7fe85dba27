//! Next hops found in DNS: an in-test DNS server on loopback answers as
//! scripted, MX hosts are sinks on 127.0.0.x port 25 (so these tests need
//! to bind port 25: root, as in CI; otherwise they say SKIPPED), and a real
//! `dnsmasq` when installed.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sink::Sink;
use common::*;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, MX, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

const WAIT: Duration = Duration::from_secs(30);

/// What the scripted server says to one question.
enum Says {
    Records(Vec<Record>),
    NxDomain,
    ServFail,
    /// No answer at all (a timeout for the resolver).
    Nothing,
    /// An empty answer with TC set: ask again over TCP.
    Truncated,
}

type Zone = Arc<dyn Fn(&str, RecordType) -> Says + Send + Sync>;

/// A DNS server on 127.0.0.1 (UDP, and TCP on the same port).
struct DnsServer {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(request: &[u8], zone: &Zone, tcp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    let query = request.queries.first()?.clone();
    let name = query.name().to_ascii().trim_end_matches('.').to_lowercase();
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.add_query(query.clone());
    match zone(&name, query.query_type()) {
        Says::Records(records) => {
            for record in records {
                response.add_answer(record);
            }
        }
        Says::NxDomain => {
            response.metadata.response_code = ResponseCode::NXDomain;
            let zone_name = Name::from_ascii("test.").unwrap();
            let soa = SOA::new(zone_name.clone(), zone_name.clone(), 1, 60, 60, 60, 30);
            response
                .authorities
                .push(Record::from_rdata(zone_name, 30, RData::SOA(soa)));
        }
        Says::ServFail => response.metadata.response_code = ResponseCode::ServFail,
        Says::Nothing => return None,
        Says::Truncated if !tcp => response.metadata.truncation = true,
        Says::Truncated => {
            // Over TCP, the real answer: the zone says what it is under `*tcp*`.
            if let Says::Records(records) = zone(&format!("tcp:{name}"), query.query_type()) {
                for record in records {
                    response.add_answer(record);
                }
            }
        }
    }
    response.to_vec().ok()
}

fn dns_server(zone: Zone) -> DnsServer {
    // The same port for UDP and TCP: the UDP one the system gave may be
    // taken for TCP by some other socket, so try again with another.
    let (udp, addr, tcp) = (0..50)
        .find_map(|_| {
            let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
            let addr = udp.local_addr().ok()?;
            let tcp = std::net::TcpListener::bind(addr).ok()?;
            Some((udp, addr, tcp))
        })
        .expect("a port free for both UDP and TCP");
    udp.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    tcp.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let udp_queries = Arc::new(AtomicUsize::new(0));
    let tcp_queries = Arc::new(AtomicUsize::new(0));
    let (s, q, z) = (stop.clone(), udp_queries.clone(), zone.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                q.fetch_add(1, Ordering::SeqCst);
                if let Some(reply) = answer(&buf[..n], &z, false) {
                    let _ = udp.send_to(&reply, from);
                }
            }
        }
    });
    let (s, q) = (stop.clone(), tcp_queries.clone());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        while !s.load(Ordering::Relaxed) {
            let Ok((mut stream, _)) = tcp.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            q.fetch_add(1, Ordering::SeqCst);
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut len = [0u8; 2];
            if stream.read_exact(&mut len).is_err() {
                continue;
            }
            let mut request = vec![0u8; u16::from_be_bytes(len) as usize];
            if stream.read_exact(&mut request).is_err() {
                continue;
            }
            if let Some(reply) = answer(&request, &zone, true) {
                let _ = stream.write_all(&(reply.len() as u16).to_be_bytes());
                let _ = stream.write_all(&reply);
            }
        }
    });
    DnsServer {
        addr,
        udp_queries,
        tcp_queries,
        stop,
    }
}

fn name(text: &str) -> Name {
    Name::from_ascii(format!("{text}.")).unwrap()
}

fn mx(owner: &str, preference: u16, host: &str) -> Record {
    Record::from_rdata(name(owner), 60, RData::MX(MX::new(preference, name(host))))
}

fn a(owner: &str, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(owner), 60, RData::A(A(ip.into())))
}

/// A sink on `ip:25`, or None (and a SKIPPED line) when that cannot be had.
fn sink_on_25(test: &str, ip: &str) -> Option<Sink> {
    match Sink::try_start(&format!("{ip}:25"), Arc::new(|_, _, _| None)) {
        Ok(sink) => Some(sink),
        Err(e) => {
            skip(
                test,
                &format!("cannot listen on {ip}:25 for an MX host: {e}"),
            );
            None
        }
    }
}

fn relay(dir: &std::path::Path, dns: SocketAddr, extra: &str) -> Mailhop {
    start_in(
        dir,
        &format!("hostname = \"relay.test\"\n{extra}\n[dns]\nservers = [\"{dns}\"]\n[retry]\nschedule = [\"1s\"]\n"),
    )
}

/// Waits for `sql` to give `want` (bounded), returns what it gave last.
fn wait_rows_to_be(mailhop: &Mailhop, sql: &str, want: &[&str]) -> Vec<String> {
    let db = open_queue(&mailhop.queue_path());
    let start = Instant::now();
    loop {
        let got = rows(&db, sql);
        if got == want || start.elapsed() > WAIT {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mail_goes_to_the_preferred_mx_and_fails_over_to_the_next() {
    const T: &str = "mail_goes_to_the_preferred_mx_and_fails_over_to_the_next";
    let Some(mx2) = sink_on_25(T, "127.0.0.3") else {
        return;
    };
    let Some(mx1) = sink_on_25(T, "127.0.0.2") else {
        return;
    };
    let dns = dns_server(Arc::new(|name, kind| match (name, kind) {
        ("up.test", RecordType::MX) => Says::Records(vec![
            mx("up.test", 10, "mx1.test"),
            mx("up.test", 20, "mx2.test"),
        ]),
        ("half.test", RecordType::MX) => Says::Records(vec![
            mx("half.test", 10, "dead.test"),
            mx("half.test", 20, "mx2.test"),
        ]),
        ("mx1.test", RecordType::A) => Says::Records(vec![a("mx1.test", [127, 0, 0, 2])]),
        ("mx2.test", RecordType::A) => Says::Records(vec![a("mx2.test", [127, 0, 0, 3])]),
        // Nothing listens on 127.0.0.9:25.
        ("dead.test", RecordType::A) => Says::Records(vec![a("dead.test", [127, 0, 0, 9])]),
        _ => Says::Records(vec![]),
    }));
    let dir = tempdir();
    let mailhop = relay(dir.path(), dns.addr, "");
    let id = send_from_null(&mailhop, "u@up.test");
    assert_eq!(mx1.wait_for(1, WAIT).len(), 1, "{}", mailhop.log());
    assert_eq!(mx2.count(), 0);
    let id2 = send_from_null(&mailhop, "u@half.test");
    assert_eq!(mx2.wait_for(1, WAIT).len(), 1, "{}", mailhop.log());
    let got = wait_rows_to_be(
        &mailhop,
        &format!("SELECT next_hop, status FROM deliveries WHERE id = '{id2}'"),
        &["half.test|delivered"],
    );
    assert_eq!(got, ["half.test|delivered"]);
    let hosts = rows(
        &open_queue(&mailhop.queue_path()),
        &format!("SELECT id, host FROM attempts WHERE id IN ('{id}', '{id2}') ORDER BY id"),
    );
    assert_eq!(
        hosts,
        [
            format!("{id}|mx1.test[127.0.0.2]:25"),
            format!("{id2}|mx2.test[127.0.0.3]:25")
        ]
    );
}

#[test]
fn null_mx_and_nxdomain_bounce_and_a_silent_server_defers() {
    let dns = dns_server(Arc::new(|name, kind| match (name, kind) {
        ("nullmx.test", RecordType::MX) => Says::Records(vec![Record::from_rdata(
            name_of("nullmx.test"),
            60,
            RData::MX(MX::new(0, Name::root())),
        )]),
        ("nx.test", _) => Says::NxDomain,
        ("broken.test", _) => Says::ServFail,
        _ => Says::Nothing,
    }));
    let dir = tempdir();
    let mailhop = relay(dir.path(), dns.addr, "");
    let null = send_from_null(&mailhop, "u@nullmx.test");
    let nx = send_from_null(&mailhop, "u@nx.test");
    let broken = send_from_null(&mailhop, "u@broken.test");
    let silent = send_from_null(&mailhop, "u@silent.test");
    let got = wait_rows_to_be(
        &mailhop,
        &format!("SELECT status, substr(reply, 1, 10) FROM deliveries WHERE id = '{null}'"),
        &["bounced|550 5.1.10"],
    );
    assert_eq!(got, ["bounced|550 5.1.10"], "{}", mailhop.log());
    let got = wait_rows_to_be(
        &mailhop,
        &format!("SELECT status, substr(reply, 1, 9) FROM deliveries WHERE id = '{nx}'"),
        &["bounced|550 5.1.2"],
    );
    assert_eq!(got, ["bounced|550 5.1.2"]);
    for id in [broken, silent] {
        let got = wait_rows_to_be(
            &mailhop,
            &format!("SELECT status, substr(last_reply, 1, 9) FROM queue WHERE id = '{id}'"),
            &["deferred|451 4.4.3"],
        );
        assert_eq!(got, ["deferred|451 4.4.3"], "{}", mailhop.log());
    }
}

fn name_of(text: &str) -> Name {
    name(text)
}

#[test]
fn a_timeout_then_an_answer_and_a_truncated_answer_still_deliver() {
    const T: &str = "a_timeout_then_an_answer_and_a_truncated_answer_still_deliver";
    let Some(sink) = sink_on_25(T, "127.0.0.4") else {
        return;
    };
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let dns = dns_server(Arc::new(move |name, kind| match (name, kind) {
        // The first question about slow.test goes unanswered.
        ("slow.test", RecordType::MX) if d.fetch_add(1, Ordering::SeqCst) == 0 => Says::Nothing,
        ("slow.test", RecordType::MX) => Says::Records(vec![mx("slow.test", 10, "mx4.test")]),
        ("big.test", RecordType::MX) => Says::Truncated,
        ("tcp:big.test", RecordType::MX) => Says::Records(vec![mx("big.test", 10, "mx4.test")]),
        ("mx4.test", RecordType::A) => Says::Records(vec![a("mx4.test", [127, 0, 0, 4])]),
        _ => Says::Records(vec![]),
    }));
    let dir = tempdir();
    let mailhop = relay(dir.path(), dns.addr, "");
    send_from_null(&mailhop, "u@slow.test");
    send_from_null(&mailhop, "u@big.test");
    assert_eq!(sink.wait_for(2, WAIT).len(), 2, "{}", mailhop.log());
    assert!(
        dropped.load(Ordering::SeqCst) >= 2,
        "the unanswered question was asked again"
    );
    assert!(
        dns.tcp_queries.load(Ordering::SeqCst) >= 1,
        "the truncated answer was asked again over TCP"
    );
    assert!(dns.udp_queries.load(Ordering::SeqCst) >= 3);
}

#[test]
fn an_mx_pointing_back_at_this_host_bounces_instead_of_looping() {
    let dns = dns_server(Arc::new(|name, kind| match (name, kind) {
        ("loop.test", RecordType::MX) => Says::Records(vec![mx("loop.test", 10, "relay.test")]),
        ("relay.test", RecordType::A) => Says::Records(vec![a("relay.test", [127, 0, 0, 1])]),
        _ => Says::Records(vec![]),
    }));
    let dir = tempdir();
    let mailhop = relay(dir.path(), dns.addr, "");
    let id = send_from_null(&mailhop, "u@loop.test");
    let got = wait_rows_to_be(
        &mailhop,
        &format!("SELECT status, substr(reply, 1, 9) FROM deliveries WHERE id = '{id}'"),
        &["bounced|554 5.4.6"],
    );
    assert_eq!(got, ["bounced|554 5.4.6"], "{}", mailhop.log());
}

#[test]
fn a_real_dnsmasq_serves_the_mx_records() {
    const T: &str = "a_real_dnsmasq_serves_the_mx_records";
    let dnsmasq = ["/usr/sbin/dnsmasq", "/sbin/dnsmasq"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(dnsmasq) = dnsmasq
        .map(str::to_string)
        .or_else(|| have("dnsmasq").then(|| "dnsmasq".to_string()))
    else {
        return skip(T, "dnsmasq is not installed (apt-get install dnsmasq-base)");
    };
    let Some(mx) = sink_on_25(T, "127.0.0.5") else {
        return;
    };
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(&dnsmasq)
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            &format!("--port={port}"),
            "--local=/dm.test/",
            "--mx-host=dm.test,mx.dm.test,10",
            "--host-record=mx.dm.test,127.0.0.5",
            "--pid-file=",
            "--user=root",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start dnsmasq");
    std::thread::sleep(Duration::from_millis(300));
    let dir = tempdir();
    let mailhop = relay(dir.path(), format!("127.0.0.1:{port}").parse().unwrap(), "");
    send_from_null(&mailhop, "u@dm.test");
    let nx = send_from_null(&mailhop, "u@nothere.dm.test");
    let delivered = mx.wait_for(1, WAIT).len();
    let bounced = wait_rows_to_be(
        &mailhop,
        &format!("SELECT status, substr(reply, 1, 9) FROM deliveries WHERE id = '{nx}'"),
        &["bounced|550 5.1.2"],
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(delivered, 1, "{}", mailhop.log());
    assert_eq!(bounced, ["bounced|550 5.1.2"], "{}", mailhop.log());
}
