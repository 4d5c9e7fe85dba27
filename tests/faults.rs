//! Faults: `kill -9` under load, a queue locked by another process, a full
//! disk, and next hops that stall, hang up, talk garbage or answer early.
//! Nothing acknowledged is lost; failures answer 451 or defer, never 250
//! for something not stored, and everything recovers.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sink::Sink;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The queue ID in our `Received:` line of a relayed message.
fn mailhop_id(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let at = text.find("(mailhop) with ESMTP id ")? + "(mailhop) with ESMTP id ".len();
    Some(text[at..].chars().take(16).collect())
}

fn serve_args(dir: &std::path::Path) -> Vec<String> {
    vec![
        "serve".into(),
        "--config".into(),
        dir.join("mailhop.toml").to_str().unwrap().into(),
    ]
}

fn restart(dir: &std::path::Path) -> Mailhop {
    let args = serve_args(dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn(dir, &args)
}

/// (a) `kill -9` at random moments of a load, 20 rounds, relaying to a sink
/// all the while: after each restart every acknowledged message is stored.
#[test]
fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    let sink = Sink::start();
    let dir = tempdir();
    let config = format!(
        "hostname = \"alpha.test\"\n[routes]\n\"example.org\" = \"{}\"\n[retry]\nschedule = [\"1s\"]\n",
        sink.addr
    );
    let mut mailhop = start_in(dir.path(), &config);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let started = Instant::now();
    for round in 0..20 {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = mailhop.addr;
        let workers: Vec<_> = (0..4)
            .map(|n| {
                let (acked, stop) = (acked.clone(), stop.clone());
                std::thread::spawn(move || {
                    let Ok(stream) = TcpStream::connect(addr) else {
                        return;
                    };
                    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    let mut reply = || {
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return None;
                            }
                            if line.as_bytes().get(3) != Some(&b'-') {
                                return Some(line.trim_end().to_string());
                            }
                        }
                    };
                    if reply().is_none() || stream.write_all(b"EHLO load.test\r\n").is_err() || reply().is_none() {
                        return;
                    }
                    // A bounded burst per round, so the last life has a
                    // backlog it can deliver within the wait.
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) && i < 150 {
                        i += 1;
                        let txn = format!("MAIL FROM:<r{round}w{n}@sender.test>\r\nRCPT TO:<u{n}@example.org>\r\nDATA\r\nSubject: round {round} worker {n} message {i}\r\n\r\n{}\r\n.\r\n", "x".repeat(200));
                        if stream.write_all(txn.as_bytes()).is_err() {
                            return;
                        }
                        for _ in 0..3 {
                            if reply().is_none() {
                                return;
                            }
                        }
                        match reply() {
                            Some(r) if r.starts_with("250 2.0.0 Ok: queued as ") => {
                                acked.lock().unwrap().push(queued_id(&r));
                            }
                            _ => return,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50 + xorshift(&mut seed) % 450));
        mailhop.child.kill().unwrap(); // SIGKILL
        mailhop.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        mailhop = restart(dir.path());
        let db = open_queue(&mailhop.queue_path());
        let stored: HashSet<String> =
            rows(&db, "SELECT id FROM queue UNION SELECT id FROM deliveries")
                .into_iter()
                .collect();
        let acked = acked.lock().unwrap();
        let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} acknowledged messages lost: {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)]
        );
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200, "only {} acknowledged", acked.len());
    // Let the last life deliver everything; count what the sink saw twice.
    let deadline = Instant::now() + WAIT;
    let wanted: HashSet<&String> = acked.iter().collect();
    let (seen, delivered) = loop {
        let got = sink.received.lock().unwrap().clone();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for t in &got {
            if let Some(id) = mailhop_id(&t.data) {
                *seen.entry(id).or_default() += 1;
            }
        }
        let delivered = wanted
            .iter()
            .filter(|id| seen.contains_key(id.as_str()))
            .count();
        if delivered == wanted.len() || Instant::now() > deadline {
            break (seen, delivered);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let duplicates: usize = seen.values().map(|&n| n - 1).sum();
    eprintln!(
        "MEASURED kill -9 x20 in {:?}: {} acknowledged, 0 lost, {delivered} delivered to the sink, {} distinct at the sink, {duplicates} duplicate deliveries",
        started.elapsed(),
        acked.len(),
        seen.len()
    );
    if delivered != wanted.len() {
        let db = open_queue(&mailhop.queue_path());
        let stuck = rows(&db, "SELECT status, count(*), min(next_attempt), max(next_attempt), max(attempts) FROM queue GROUP BY status");
        let log = mailhop.log();
        let tail: Vec<&str> = log.lines().filter(|l| !l.contains("status=sent")).collect();
        panic!(
            "acknowledged mail never delivered: {} of {}; still queued: {stuck:?}\n{}",
            wanted.len() - delivered,
            wanted.len(),
            tail[tail.len().saturating_sub(30)..].join("\n")
        );
    }
}

/// (b) Another process holds the queue's write lock: 451 after a bounded
/// wait, a second client still gets its greeting, and all is well after.
#[test]
fn a_locked_queue_gives_451_in_bounded_time_and_recovers() {
    let dir = tempdir();
    let mailhop = start_in(
        dir.path(),
        "hostname = \"beta.test\"\nlocal_domains = [\"beta.test\"]\nlocal_users = [\"jones\"]\nmaildir = \"/dev/null/mail\"\n",
    );
    let mut c = mailhop.connect();
    expect(&c.reply(), "220");
    expect(&c.cmd("EHLO client.test"), "250");
    let locker = rusqlite::Connection::open(mailhop.queue_path()).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    expect(&c.cmd("MAIL FROM:<s@a.test>"), "250");
    expect(&c.cmd("RCPT TO:<jones@beta.test>"), "250");
    expect(&c.cmd("DATA"), "354");
    let start = Instant::now();
    c.send(b"Subject: locked\r\n\r\nhi\r\n.\r\n");
    let addr = mailhop.addr;
    let other = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        let mut c2 = Client::connect(addr);
        let greeting = c2.reply();
        (greeting, start.elapsed())
    });
    let reply = c.reply();
    let took = start.elapsed();
    let (greeting, greeting_took) = other.join().unwrap();
    eprintln!("MEASURED locked queue: {reply:?} after {took:?}; a second client's greeting after {greeting_took:?}");
    expect(&reply, "451 4.3.0");
    assert!(took < Duration::from_secs(6), "451 took {took:?}");
    expect(&greeting, "220");
    assert!(
        greeting_took < Duration::from_secs(6),
        "greeting took {greeting_took:?}"
    );
    // Still locked: another try, another 451, the session goes on.
    expect(&c.cmd("MAIL FROM:<s@a.test>"), "250");
    expect(&c.cmd("RCPT TO:<jones@beta.test>"), "250");
    expect(&c.cmd("DATA"), "354");
    c.send(b"Subject: locked again\r\n\r\nhi\r\n.\r\n");
    expect(&c.reply(), "451 4.3.0");
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    expect(&c.cmd("MAIL FROM:<s@a.test>"), "250");
    expect(&c.cmd("RCPT TO:<jones@beta.test>"), "250");
    expect(&c.cmd("DATA"), "354");
    let start = Instant::now();
    c.send(b"Subject: unlocked\r\n\r\nhi\r\n.\r\n");
    let id = queued_id(&c.reply());
    assert!(start.elapsed() < Duration::from_secs(3));
    let db = open_queue(&mailhop.queue_path());
    assert_eq!(
        rows(
            &db,
            "SELECT id FROM queue UNION ALL SELECT id FROM deliveries"
        ),
        [id]
    );
}

/// (b') The queue's disk fills up: 451, never 250; space returns: 250.
#[test]
fn a_full_disk_gives_451_and_recovers_when_space_returns() {
    let dir = tempdir();
    let fs = dir.path().join("small");
    std::fs::create_dir(&fs).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&fs)
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        return skip(
            "a_full_disk_gives_451_and_recovers_when_space_returns",
            "cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN)",
        );
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(fs.clone());
    let result = std::panic::catch_unwind(|| {
        let mailhop = start_in(
            &fs,
            "hostname = \"beta.test\"\nlocal_domains = [\"beta.test\"]\nlocal_users = [\"jones\"]\nmaildir = \"/dev/null/mail\"\n",
        );
        let send = |size: usize| {
            let mut c = mailhop.connect();
            expect(&c.reply(), "220");
            expect(&c.cmd("EHLO client.test"), "250");
            expect(&c.cmd("MAIL FROM:<s@a.test>"), "250");
            expect(&c.cmd("RCPT TO:<jones@beta.test>"), "250");
            expect(&c.cmd("DATA"), "354");
            let line = format!("{}\r\n", "f".repeat(98));
            c.send(b"Subject: fill\r\n\r\n");
            c.send(line.repeat(size / 100).as_bytes());
            c.send(b".\r\n");
            let reply = c.reply();
            expect(&c.cmd("NOOP"), "250");
            reply
        };
        // One message fits; then fill the disk to leave less than a message.
        queued_id(&send(10_000));
        // SAFETY: statvfs on a valid path and struct.
        let free = unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            let path = std::ffi::CString::new(fs.to_str().unwrap()).unwrap();
            assert_eq!(libc::statvfs(path.as_ptr(), &mut st), 0);
            st.f_bavail as u64 * st.f_frsize as u64
        };
        let filler = fs.join("filler");
        std::fs::write(&filler, vec![0u8; free.saturating_sub(100 * 1024) as usize]).unwrap_or(());
        let full = send(1_000_000);
        eprintln!("MEASURED full disk: {full:?}");
        expect(&full, "451 4.3.0");
        std::fs::remove_file(&filler).unwrap();
        let id = queued_id(&send(1_000_000));
        let db = open_queue(&mailhop.queue_path());
        let ids = rows(
            &db,
            "SELECT id FROM queue UNION ALL SELECT id FROM deliveries",
        );
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(ids.contains(&id));
        drop(db);
        drop(mailhop);
    });
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// How a scripted next hop misbehaves on its first connections.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Misbehave {
    /// Takes the data, never answers the final dot.
    Stall,
    /// Hangs up in the middle of the data.
    CloseMidData,
    /// Answers the final dot with garbage.
    Garbage,
    /// Answers 250 right after 354, before the data has come.
    EarlyReply,
}

/// A next hop that misbehaves on its first `bad` connections and then
/// accepts like a sink; counts the messages it accepted.
struct Hop {
    addr: SocketAddr,
    accepted: Arc<Mutex<Vec<Vec<u8>>>>,
    connections: Arc<AtomicUsize>,
}

impl Hop {
    fn start(how: Misbehave, bad: usize) -> Hop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (acc, conns) = (accepted.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let n = conns.fetch_add(1, Ordering::SeqCst);
                let acc = acc.clone();
                let how = (n < bad).then_some(how);
                std::thread::spawn(move || {
                    let _ = hop_session(stream, how, &acc);
                });
            }
        });
        Hop {
            addr,
            accepted,
            connections,
        }
    }
}

fn hop_session(
    stream: TcpStream,
    how: Option<Misbehave>,
    accepted: &Mutex<Vec<Vec<u8>>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    out.write_all(b"220 hop.test ESMTP\r\n")?;
    loop {
        let mut line = Vec::new();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let upper = String::from_utf8_lossy(&line)
            .trim_end()
            .to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            out.write_all(b"250-hop.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")?;
        } else if upper.starts_with("MAIL")
            || upper.starts_with("RCPT")
            || upper == "RSET"
            || upper == "NOOP"
        {
            out.write_all(b"250 2.0.0 Ok\r\n")?;
        } else if upper == "QUIT" {
            out.write_all(b"221 2.0.0 Bye\r\n")?;
            return Ok(());
        } else if upper == "DATA" {
            out.write_all(b"354 go ahead\r\n")?;
            if how == Some(Misbehave::EarlyReply) {
                out.write_all(b"250 2.0.0 Ok: queued before the data\r\n")?;
                // Take the data slowly, so the sender is still writing.
                std::thread::sleep(Duration::from_millis(1500));
            }
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if input.read_until(b'\n', &mut l)? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                data.extend_from_slice(&l);
                if how == Some(Misbehave::CloseMidData) && data.len() > 1000 {
                    return Ok(()); // hang up
                }
            }
            match how {
                Some(Misbehave::Stall) => {
                    // Never answer; wait for the sender to give up.
                    let mut rest = Vec::new();
                    let _ = input.read_until(b'\n', &mut rest);
                    return Ok(());
                }
                Some(Misbehave::Garbage) => out.write_all(b"HTTP/1.1 200 OK\r\n\r\n")?,
                Some(Misbehave::EarlyReply) => {
                    out.write_all(b"250 2.0.0 Ok: and again\r\n")?;
                }
                _ => {
                    accepted.lock().unwrap().push(data);
                    out.write_all(b"250 2.0.0 Ok: queued\r\n")?;
                }
            }
        } else {
            out.write_all(b"500 5.5.2 what?\r\n")?;
        }
    }
}

/// (c) Next hops that stall, hang up mid-DATA, answer garbage or answer
/// before the end of data: the mail is deferred (a 4xx attempt) and then
/// delivered, once, when the hop behaves.
#[test]
fn misbehaving_next_hops_defer_the_mail_and_it_is_delivered_later() {
    let hows = [
        (Misbehave::Stall, "stall.test"),
        (Misbehave::CloseMidData, "close.test"),
        (Misbehave::Garbage, "garbage.test"),
        (Misbehave::EarlyReply, "early.test"),
    ];
    let hops: Vec<Hop> = hows.iter().map(|&(how, _)| Hop::start(how, 1)).collect();
    let mut routes = String::new();
    for ((_, domain), hop) in hows.iter().zip(&hops) {
        routes.push_str(&format!("\"{domain}\" = \"{}\"\n", hop.addr));
    }
    let dir = tempdir();
    let mailhop = start_in(
        dir.path(),
        &format!(
            "hostname = \"alpha.test\"\n[routes]\n{routes}[retry]\nschedule = [\"1s\"]\n[timeouts]\ncommand = \"2s\"\ndata_init = \"2s\"\ndata_block = \"2s\"\ndata_done = \"2s\"\n"
        ),
    );
    // Big enough that the early reply comes while the data is still going.
    let body = format!(
        "Subject: faulty hop\r\n\r\n{}",
        format!("{}\r\n", "y".repeat(998)).repeat(2000)
    );
    let mut ids = HashMap::new();
    for (_, domain) in &hows {
        let mut c = mailhop.connect();
        expect(&c.reply(), "220");
        expect(&c.cmd("EHLO client.test"), "250");
        expect(&c.cmd("MAIL FROM:<s@sender.test>"), "250");
        expect(&c.cmd(&format!("RCPT TO:<u@{domain}>")), "250");
        expect(&c.cmd("DATA"), "354");
        c.send(body.as_bytes());
        c.send(b".\r\n");
        ids.insert(*domain, queued_id(&c.reply()));
        c.cmd("QUIT");
    }
    let db = open_queue(&mailhop.queue_path());
    let deadline = Instant::now() + WAIT;
    loop {
        let done = rows(
            &db,
            "SELECT count(*) FROM deliveries WHERE status = 'delivered'",
        );
        if done == ["4"] || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut failures = Vec::new();
    for ((how, domain), hop) in hows.iter().zip(&hops) {
        let id = &ids[domain];
        let attempts = rows(
            &db,
            &format!(
                "SELECT reply FROM attempts WHERE id = '{id}' ORDER BY started_at, finished_at"
            ),
        );
        let status = rows(
            &db,
            &format!("SELECT status FROM deliveries WHERE id = '{id}'"),
        );
        let accepted = hop.accepted.lock().unwrap().len();
        eprintln!(
            "{how:?}: attempts {attempts:?}, final {status:?}, hop connections {}, accepted {accepted}",
            hop.connections.load(Ordering::SeqCst)
        );
        let first_deferred = attempts.first().is_some_and(|r| r.starts_with('4'));
        if !(first_deferred && status == ["delivered"] && accepted == 1 && attempts.len() >= 2) {
            failures.push(format!("{how:?}: attempts {attempts:?}, final {status:?}, accepted by the good hop {accepted}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        mailhop.log()
    );
}

/// (e) A queue write past `RLIMIT_FSIZE` is an error, not a crash
/// (SIGXFSZ is ignored): the client gets 451, the relay keeps serving.
#[test]
fn a_file_size_limit_gives_451_and_the_relay_stays_up() {
    use std::os::unix::process::CommandExt;
    let dir = tempdir();
    let port = free_port();
    std::fs::write(
        dir.path().join("mailhop.toml"),
        format!(
            "listen = [\"127.0.0.1:{port}\"]\nqueue = \"queue.db\"\nhostname = \"beta.test\"\nlocal_domains = [\"beta.test\"]\nlocal_users = [\"jones\"]\nmaildir = \"/dev/null/mail\"\n[dns]\nservers = [\"127.0.0.1:9\"]\n"
        ),
    )
    .unwrap();
    let mut command = std::process::Command::new(BIN);
    command
        .args(serve_args(dir.path()))
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only setrlimit between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 3 << 20,
                rlim_max: 3 << 20,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_listening(addr, Duration::from_secs(20)),
        "mailhop did not start"
    );
    let mut c = Client::connect(addr);
    expect(&c.reply(), "220");
    expect(&c.cmd("EHLO big.test"), "250");
    expect(&c.cmd("MAIL FROM:<s@a.test>"), "250");
    expect(&c.cmd("RCPT TO:<jones@beta.test>"), "250");
    expect(&c.cmd("DATA"), "354");
    let line = b"a line of a message far bigger than the file size limit\r\n";
    for _ in 0..(6 << 20) / line.len() {
        c.send(line);
    }
    let reply = c.cmd(".");
    expect(&reply, "451 4.3.0");
    assert!(
        child.try_wait().unwrap().is_none(),
        "mailhop died of SIGXFSZ"
    );
    // Still serving, in the same session and a new one.
    expect(&c.cmd("NOOP"), "250");
    let mut d = Client::connect(addr);
    expect(&d.reply(), "220");
    expect(&d.cmd("QUIT"), "221");
    let _ = child.kill();
    let _ = child.wait();
}
