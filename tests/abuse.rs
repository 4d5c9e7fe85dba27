//! Hostile clients over real sockets against a real `mailhop serve`: many
//! sessions at once, slowloris, clients that never read, endless lines,
//! garbage, early talkers and connection floods. After each, a normal
//! client is served promptly and the server's memory stayed bounded.
//!
//! The tests of this file run one at a time (they measure time and memory).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const CONFIG: &str = r#"
hostname = "beta.test"
local_domains = ["beta.test"]
local_users = ["jones"]
relay_networks = []
# No local delivery: accepted mail just stays queued.
maildir = "/dev/null/mail"
"#;

/// How long a normal client may take for a whole transaction while or
/// after the server is abused (a debug build, two CPUs, other tests).
const PROMPT: Duration = Duration::from_secs(3);

/// A normal client gets its 250 promptly, and the server is still running.
#[track_caller]
fn normal_client_served(mailhop: &mut Mailhop, after: &str) {
    assert!(
        mailhop.child.try_wait().unwrap().is_none(),
        "mailhop died after {after}:\n{}",
        mailhop.log()
    );
    let (reply, took) = one_transaction(mailhop.addr, "jones@beta.test");
    queued_id(&reply);
    assert!(
        took < PROMPT,
        "after {after}: a normal transaction took {took:?}"
    );
}

fn kb(mailhop: &Mailhop, field: &str) -> u64 {
    proc_status_kb(mailhop.child.id(), field)
}

/// (a) Many sessions open at once on the one thread, each then completing
/// a transaction. Driven from one mio loop here too, so the test itself
/// does not need a thread per connection.
#[test]
fn ten_thousand_concurrent_sessions_each_complete_a_transaction() {
    use mio::net::TcpStream as MioStream;
    use mio::{Events, Interest, Poll, Token};

    let _serial = serial();
    let limit = raise_nofile();
    let wanted: usize = std::env::var("MAILHOP_ABUSE_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    // Our sockets and mailhop's both count against the limit we pass on.
    let n = wanted.min((limit as usize).saturating_sub(200));
    if n < wanted {
        skip(
            "ten_thousand_concurrent_sessions (full count)",
            &format!("RLIMIT_NOFILE {limit} allows only {n} sessions"),
        );
    }
    let dir = tempdir();
    let mut mailhop = start_in(
        dir.path(),
        &format!(
            "{CONFIG}max_connections = {}\nmax_connections_per_ip = {}\n",
            n + 100,
            n + 100
        ),
    );
    let addr = mailhop.addr;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);

    struct Conn {
        stream: MioStream,
        input: Vec<u8>,
        out: Vec<u8>,
        greeted: bool,
        eof: bool,
    }
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(4096);
    let mut conns: Vec<Conn> = Vec::with_capacity(n);
    let mut greeted = 0;
    let mut finished = 0;
    let txn = b"EHLO many.test\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<jones@beta.test>\r\nDATA\r\nSubject: many\r\n\r\nhello\r\n.\r\nQUIT\r\n";
    let mut sending = false;

    // Reads what is there; writes what is owed. Edge-triggered: both until
    // WouldBlock.
    fn pump(c: &mut Conn) {
        let mut buf = [0u8; 4096];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    c.eof = true;
                    break;
                }
                Ok(k) => c.input.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.eof = true;
                    break;
                }
            }
        }
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(k) => {
                    c.out.drain(..k);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    while finished < n {
        assert!(
            Instant::now() < deadline,
            "{greeted} greeted, {finished} finished of {n} after {:?}",
            start.elapsed()
        );
        // Keep a bounded number of connections waiting for their greeting,
        // so the accept backlog never overflows.
        while conns.len() < n && conns.len() - greeted < 512 {
            let mut stream = MioStream::connect(addr).expect("connect");
            let token = Token(conns.len());
            poll.registry()
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .unwrap();
            conns.push(Conn {
                stream,
                input: Vec::new(),
                out: Vec::new(),
                greeted: false,
                eof: false,
            });
        }
        if !sending && greeted == n {
            // Every session is open at once: now each does its transaction.
            let open_rss = kb(&mailhop, "VmRSS");
            eprintln!(
                "{n} sessions open at once after {:?}, mailhop VmRSS {open_rss} kB",
                start.elapsed()
            );
            sending = true;
            for c in &mut conns {
                c.out.extend_from_slice(txn);
                c.input.clear();
                pump(c);
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for event in events.iter() {
            let c = &mut conns[event.token().0];
            let was_eof = c.eof;
            pump(c);
            if !c.greeted && c.input.windows(2).any(|w| w == b"\r\n") {
                assert!(
                    c.input.starts_with(b"220 "),
                    "greeting {:?}",
                    String::from_utf8_lossy(&c.input)
                );
                c.greeted = true;
                greeted += 1;
                c.input.clear();
            }
            if c.eof && !was_eof {
                assert!(
                    sending,
                    "closed before the transaction: {:?}",
                    String::from_utf8_lossy(&c.input)
                );
                finished += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    let mut queued = 0;
    for c in &conns {
        let text = String::from_utf8_lossy(&c.input);
        if text.contains("\r\n250 2.0.0 Ok: queued as ") && text.ends_with("221 2.0.0 Bye\r\n") {
            queued += 1;
        }
    }
    let hwm = kb(&mailhop, "VmHWM");
    eprintln!(
        "MEASURED {n} concurrent sessions, each one transaction: {queued} queued in {elapsed:?}; mailhop peak RSS (VmHWM) {hwm} kB ({:.1} kB/session)",
        hwm as f64 / n as f64
    );
    assert_eq!(queued, n, "every session completed its transaction");
    let db = open_queue(&mailhop.queue_path());
    assert_eq!(rows(&db, "SELECT count(*) FROM messages"), [n.to_string()]);
    assert!(hwm < 256 * 1024, "peak RSS {hwm} kB for {n} sessions");
    drop(conns);
    normal_client_served(&mut mailhop, "many sessions");
}

/// (b) Connections trickling one byte per 100 ms, in commands and in DATA.
#[test]
fn slowloris_does_not_stop_a_normal_client() {
    let _serial = serial();
    let dir = tempdir();
    let mut mailhop = start_in(dir.path(), CONFIG);
    let stop = Arc::new(AtomicBool::new(false));
    let addr = mailhop.addr;
    let s = stop.clone();
    let trickler = std::thread::spawn(move || {
        let mut slow: Vec<(TcpStream, Vec<u8>, usize)> = Vec::new();
        for i in 0..60 {
            let Ok(mut stream) = TcpStream::connect(addr) else {
                continue;
            };
            let script: Vec<u8> = if i % 2 == 0 {
                b"EHLO slowloris.test\r\nMAIL FROM:<slow@a.test>\r\nRCPT TO:<jones@beta.test>\r\nDATA\r\n"
                    .to_vec()
            } else {
                // Straight into DATA, then trickle the message.
                stream
                    .write_all(b"EHLO slow.test\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<jones@beta.test>\r\nDATA\r\n")
                    .unwrap();
                b"Subject: slow\r\n\r\n".repeat(100)
            };
            slow.push((stream, script, 0));
        }
        while !s.load(Ordering::Relaxed) {
            for (stream, script, at) in &mut slow {
                let _ = stream.write_all(&script[*at % script.len()..][..1]);
                *at += 1;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        slow.len()
    });
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..5 {
        let (reply, took) = one_transaction(addr, "jones@beta.test");
        queued_id(&reply);
        eprintln!("normal transaction {i} during slowloris: {took:?}");
        assert!(took < PROMPT, "a normal transaction took {took:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let slow = trickler.join().unwrap();
    assert!(slow >= 50, "only {slow} slow connections");
    normal_client_served(&mut mailhop, "slowloris");
}

/// (c) Clients that pipeline and never read: the server stops reading,
/// so their writes block, and its memory stays bounded.
#[test]
fn clients_that_never_read_are_not_read_from() {
    let _serial = serial();
    let dir = tempdir();
    let mut mailhop = start_in(dir.path(), CONFIG);
    let addr = mailhop.addr;
    let flooders: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream
                    .set_write_timeout(Some(Duration::from_secs(3)))
                    .unwrap();
                let noops = "NOOP\r\n".repeat(10_000);
                let mut sent = 0usize;
                for _ in 0..400 {
                    match stream.write(noops.as_bytes()) {
                        Ok(k) => sent += k,
                        Err(_) => return (sent, true, stream),
                    }
                }
                (sent, false, stream)
            })
        })
        .collect();
    let mut keep = Vec::new();
    for f in flooders {
        let (sent, blocked, stream) = f.join().unwrap();
        eprintln!(
            "never-reading client: {sent} bytes written before the writes blocked: {blocked}"
        );
        assert!(blocked, "the server kept reading: {sent} bytes taken");
        assert!(sent < 24_000_000, "the server took {sent} bytes");
        keep.push(stream);
    }
    let hwm = kb(&mailhop, "VmHWM");
    eprintln!("MEASURED 8 never-reading pipelining clients: mailhop VmHWM {hwm} kB");
    assert!(hwm < 128 * 1024, "peak RSS {hwm} kB");
    normal_client_served(&mut mailhop, "clients that never read");
    drop(keep);
}

/// Writes `total` bytes of `fill` then `tail` from a thread; returns its handle.
fn flood(
    stream: TcpStream,
    total: usize,
    fill: u8,
    tail: &'static [u8],
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut stream = stream;
        let chunk = vec![fill; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            match stream.write(&chunk[..chunk.len().min(total - sent)]) {
                Ok(k) => sent += k,
                Err(_) => return sent,
            }
        }
        let _ = stream.write_all(tail);
        sent
    })
}

/// (d) A 50 MB line without CRLF, as a command and inside DATA.
#[test]
fn a_50_mb_line_is_refused_with_bounded_memory() {
    let _serial = serial();
    let dir = tempdir();
    let mut mailhop = start_in(dir.path(), &format!("{CONFIG}max_message_size = 1000000\n"));
    const FIFTY_MB: usize = 50 * 1024 * 1024;

    let mut c = mailhop.connect();
    expect(&c.reply(), "220");
    let writer = flood(
        c.stream.try_clone().unwrap(),
        FIFTY_MB,
        b'a',
        b"\r\nNOOP\r\n",
    );
    let reply = c.reply();
    let sent = writer.join().unwrap();
    eprintln!("50 MB command line ({sent} bytes written): {reply:?}");
    if reply.is_empty() {
        // Closed on us: acceptable, as long as the server is fine.
    } else {
        expect(&reply, "500 5.5.6");
        assert_eq!(sent, FIFTY_MB, "the server read the whole line");
        expect(&c.reply(), "250 2.0.0");
    }

    let mut c = mailhop.connect();
    expect(&c.reply(), "220");
    expect(&c.cmd("EHLO big.test"), "250");
    expect(&c.cmd("MAIL FROM:<s@a.test>"), "250");
    expect(&c.cmd("RCPT TO:<jones@beta.test>"), "250");
    expect(&c.cmd("DATA"), "354");
    let writer = flood(
        c.stream.try_clone().unwrap(),
        FIFTY_MB,
        b'b',
        b"\r\n.\r\nNOOP\r\n",
    );
    let reply = c.reply();
    writer.join().unwrap();
    eprintln!("50 MB line in DATA: {reply:?}");
    expect(&reply, "552 5.3.4");
    expect(&c.reply(), "250 2.0.0");

    let hwm = kb(&mailhop, "VmHWM");
    eprintln!("MEASURED 50 MB lines: mailhop VmHWM {hwm} kB");
    assert!(hwm < 64 * 1024, "peak RSS {hwm} kB after 50 MB lines");
    let db = open_queue(&mailhop.queue_path());
    assert_eq!(rows(&db, "SELECT count(*) FROM messages"), ["0"]);
    normal_client_served(&mut mailhop, "50 MB lines");
}

/// A small deterministic generator, so a failure can be replayed.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// (e) Random binary garbage and NUL bytes: errors or a close, never a crash.
#[test]
fn garbage_and_nul_bytes_get_errors_and_the_server_stays_up() {
    let _serial = serial();
    let dir = tempdir();
    let mut mailhop = start_in(dir.path(), CONFIG);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..30 {
        let mut garbage = vec![0u8; 1 + (xorshift(&mut seed) % 65_536) as usize];
        for b in &mut garbage {
            let r = xorshift(&mut seed);
            *b = match r % 8 {
                0 => 0,
                1 => b'\n',
                2 => b'\r',
                _ => (r >> 8) as u8,
            };
        }
        if round % 3 == 0 {
            // Lines of NULs only.
            garbage = b"\0\0\0\0\0\0\0\0\r\n".repeat(50);
        }
        let mut stream = TcpStream::connect(mailhop.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stream.write_all(&garbage);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut replies = Vec::new();
        let _ = stream.read_to_end(&mut replies);
        // Whatever came back is SMTP replies: a greeting, then errors.
        let text = String::from_utf8_lossy(&replies);
        for line in text.split_terminator("\r\n") {
            assert!(
                line.len() >= 3 && line.as_bytes()[..3].iter().all(u8::is_ascii_digit),
                "round {round}: not a reply line: {line:?}"
            );
            assert!(
                !line.starts_with("250 2.0.0 Ok: queued"),
                "garbage got queued"
            );
        }
        assert!(
            mailhop.child.try_wait().unwrap().is_none(),
            "round {round}: mailhop died"
        );
    }
    let db = open_queue(&mailhop.queue_path());
    assert_eq!(rows(&db, "SELECT count(*) FROM messages"), ["0"]);
    normal_client_served(&mut mailhop, "garbage");
}

/// (f) Early talkers: everything sent before the greeting.
#[test]
fn early_talkers_are_served_in_order_or_refused() {
    let _serial = serial();
    let dir = tempdir();
    let mut mailhop = start_in(dir.path(), CONFIG);
    let mut served = 0;
    for _ in 0..50 {
        let mut c = mailhop.connect();
        c.send(b"EHLO early.test\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<jones@beta.test>\r\nDATA\r\nSubject: early\r\n\r\nhi\r\n.\r\nQUIT\r\n");
        let greeting = c.reply();
        if greeting.starts_with("220 ") {
            for code in [
                "250-",
                "250 2.1.0",
                "250 2.1.5",
                "354",
                "250 2.0.0 Ok: queued",
                "221",
            ] {
                expect(&c.reply(), code);
            }
            served += 1;
        } else {
            // A refusal of early talkers (greet pause) is fine too.
            assert!(
                greeting.starts_with("554") || greeting.starts_with("421"),
                "{greeting:?}"
            );
        }
        assert!(c.closed());
    }
    eprintln!("early talkers: {served} of 50 served, the rest refused");
    normal_client_served(&mut mailhop, "early talkers");
}

/// (g) Floods past `max_connections` and `max_connections_per_ip`.
#[test]
fn connection_floods_get_421_and_normal_clients_are_served_after() {
    let _serial = serial();
    let dir = tempdir();
    let mut mailhop = start_in(
        dir.path(),
        &format!("{CONFIG}max_connections = 30\nmax_connections_per_ip = 10\n"),
    );
    let addr = mailhop.addr;
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut c = mailhop.connect();
        expect(&c.reply(), "220");
        held.push(c);
    }
    // Past the per-IP limit, in a burst.
    let mut refused = 0;
    for _ in 0..200 {
        let mut c = mailhop.connect();
        expect(&c.reply(), "421 4.7.0");
        assert!(c.closed());
        refused += 1;
    }
    // Other client addresses, up to the total limit, then past it.
    let others = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let mut total_checked = false;
    match connect_from(others[0], addr) {
        Err(e) => skip(
            "connection_floods (total limit)",
            &format!("cannot bind another loopback address: {e}"),
        ),
        Ok(first) => {
            let mut first = Some(first);
            for source in others {
                for _ in 0..10 {
                    let mut c = match first.take() {
                        Some(c) => c,
                        None => connect_from(source, addr).unwrap(),
                    };
                    let greeting = c.reply();
                    if held.len() < 30 {
                        expect(&greeting, "220");
                        held.push(c);
                    } else {
                        expect(&greeting, "421 4.7.0");
                    }
                }
            }
            assert_eq!(held.len(), 30);
            for _ in 0..50 {
                let mut c = connect_from("127.0.0.5", addr).unwrap();
                expect(&c.reply(), "421 4.7.0");
                refused += 1;
            }
            total_checked = true;
        }
    }
    eprintln!("connection flood: {} held, {refused} refused with 421 4.7.0 (total limit checked: {total_checked})", held.len());
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    normal_client_served(&mut mailhop, "connection floods");
}

/// Sends one message of `size` octets of data over `c`, in writes of
/// 64 KiB; with `stall_after`, stops writing after that many octets and
/// returns without ending the data (the caller holds the connection).
fn big_transaction(c: &mut Client, size: usize, stall_after: Option<usize>) -> Option<String> {
    expect(&c.reply(), "220");
    expect(&c.cmd("EHLO big.test"), "250");
    expect(&c.cmd("MAIL FROM:<s@a.test>"), "250");
    expect(&c.cmd("RCPT TO:<jones@beta.test>"), "250");
    expect(&c.cmd("DATA"), "354");
    let line =
        b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n";
    let block: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(64 * 1024 - 64 * 1024 % line.len())
        .collect();
    let mut sent = 0;
    while sent < size {
        if stall_after.is_some_and(|at| sent >= at) {
            return None;
        }
        let n = block.len().min(size - sent);
        c.send(&block[..n]);
        sent += n;
    }
    c.send(b"\r\n.\r\n");
    Some(c.reply())
}

/// (h) Big messages stream to the queue: 100 clients each sending a
/// 10 MB message at once, then 50 clients stalled halfway through an 8 MB
/// one, keep the relay's memory at a fixed buffer per session, not a
/// message each; what the stalled ones sent vanishes with them.
#[test]
fn a_hundred_ten_megabyte_messages_at_once_in_bounded_memory() {
    let _serial = serial();
    raise_nofile();
    let dir = tempdir();
    let mut mailhop = start_in(
        dir.path(),
        &format!("{CONFIG}max_message_size = 10485760\n"),
    );
    let size = 10_000_000;
    let started = Instant::now();
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let addr = mailhop.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                big_transaction(&mut c, size, None).unwrap()
            })
        })
        .collect();
    for client in clients {
        queued_id(&client.join().unwrap());
    }
    let hwm = kb(&mailhop, "VmHWM");
    eprintln!(
        "MEASURED 100 concurrent 10 MB messages in {:?}: mailhop VmHWM {hwm} kB",
        started.elapsed()
    );
    // Whole bodies would be 1 GB; a 64 KiB piece per session is 6.4 MB.
    assert!(hwm < 96 * 1024, "peak RSS {hwm} kB for 100 x 10 MB");
    let db = open_queue(&mailhop.queue_path());
    assert_eq!(rows(&db, "SELECT count(*) FROM messages"), ["100"]);
    // Every stored body is whole: its pieces and its end add up to its size.
    assert_eq!(
        rows(
            &db,
            "SELECT count(*) FROM messages AS m
             WHERE m.size = length(m.body) + (SELECT coalesce(sum(length(data)), 0)
                                              FROM body_chunks WHERE message_id = m.id)
               AND m.size > 10000000"
        ),
        ["100"]
    );

    let stalled: Vec<Client> = (0..50)
        .map(|_| {
            let mut c = mailhop.connect();
            assert!(big_transaction(&mut c, 8 << 20, Some(4 << 20)).is_none());
            c
        })
        .collect();
    // What they sent so far is with the relay: wait until it has read it.
    let unfinished = "SELECT count(DISTINCT message_id) FROM body_chunks
                      WHERE message_id NOT IN (SELECT id FROM messages)";
    let start = Instant::now();
    while rows(&db, unfinished) != ["50"] && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        rows(&db, unfinished),
        ["50"],
        "pieces of the stalled sessions"
    );
    let rss = kb(&mailhop, "VmRSS");
    eprintln!("MEASURED 50 sessions stalled halfway through 8 MB: mailhop VmRSS {rss} kB");
    assert!(
        rss < 96 * 1024,
        "RSS {rss} kB with 50 stalled 8 MB messages"
    );
    normal_client_served(&mut mailhop, "50 stalled big messages");
    drop(stalled);
    let start = Instant::now();
    while rows(&db, unfinished) != ["0"] && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        rows(&db, unfinished),
        ["0"],
        "pieces of the closed sessions"
    );
    assert_eq!(rows(&db, "SELECT count(*) FROM messages"), ["101"]);
}
