//! An in-test SMTP server that accepts (or refuses, as scripted) and
//! records every transaction exactly as it arrived: the next hop of the
//! relay tests.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One transaction as the sink saw it.
#[derive(Debug, Clone, Default)]
pub struct Transaction {
    pub helo: String,
    /// The MAIL FROM argument, as sent (`<a@b> SIZE=12`).
    pub mail_from: String,
    /// Each RCPT TO argument that was accepted.
    pub rcpt_to: Vec<String>,
    /// The data as sent on the wire (dot-stuffed), without the final `.` line.
    pub raw: Vec<u8>,
    /// The data unstuffed: what the message is.
    pub data: Vec<u8>,
    /// Which connection (0, 1, ...) carried it.
    pub connection: usize,
    /// Its MAIL was already here when the previous end of data was read:
    /// the client pipelined it behind the dot.
    pub behind_the_dot: bool,
    /// BDAT chunks it came in (0: it came after DATA).
    pub bdat_chunks: usize,
    /// When its end of data was read.
    pub arrived: Option<Instant>,
}

/// Decides the reply to RCPT (by its argument) and to the end of data (by
/// how many transactions came before); `None` means the usual 250.
pub type Script = Arc<dyn Fn(Stage, &str, usize) -> Option<String> + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Rcpt,
    EndOfData,
}

pub struct Sink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Transaction>>>,
    pub connections: Arc<AtomicUsize>,
    /// Connections open now, and the most that were open at once.
    pub open: Arc<AtomicUsize>,
    pub max_open: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    pub fn start() -> Sink {
        Sink::start_with("127.0.0.1:0", Arc::new(|_, _, _| None))
    }

    pub fn start_with(addr: &str, script: Script) -> Sink {
        Sink::try_start(addr, script).expect("bind sink")
    }

    /// A sink that also offers CHUNKING (RFC 3030) and takes BDAT.
    pub fn start_chunking() -> Sink {
        Sink::bind("127.0.0.1:0", Arc::new(|_, _, _| None), true, false).expect("bind sink")
    }

    /// A sink that also offers DSN (RFC 3461): its transactions keep the
    /// parameters as sent, in `mail_from` and `rcpt_to`.
    pub fn start_dsn(script: Script) -> Sink {
        Sink::bind("127.0.0.1:0", script, false, true).expect("bind sink")
    }

    /// As `start_with`, for addresses that may be unavailable (port 25).
    pub fn try_start(addr: &str, script: Script) -> std::io::Result<Sink> {
        Sink::bind(addr, script, false, false)
    }

    fn bind(addr: &str, script: Script, chunking: bool, dsn: bool) -> std::io::Result<Sink> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let max_open = Arc::new(AtomicUsize::new(0));
        let (r, c, s) = (received.clone(), connections.clone(), stop.clone());
        let (o, m) = (open.clone(), max_open.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let n = c.fetch_add(1, Ordering::SeqCst);
                        let now_open = o.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(now_open, Ordering::SeqCst);
                        let (r, script, o) = (r.clone(), script.clone(), o.clone());
                        std::thread::spawn(move || {
                            serve(stream, n, r, script, chunking, dsn);
                            o.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Sink {
            addr,
            received,
            connections,
            open,
            max_open,
            stop,
        })
    }

    /// Waits (bounded) until `n` transactions have arrived; returns them all.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Transaction> {
        let start = Instant::now();
        loop {
            let got = self.received.lock().unwrap().clone();
            if got.len() >= n || start.elapsed() > limit {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    stream: TcpStream,
    connection: usize,
    received: Arc<Mutex<Vec<Transaction>>>,
    script: Script,
    chunking: bool,
    dsn: bool,
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut out = stream.try_clone().unwrap();
    let mut input = BufReader::new(stream);
    let mut say = |line: &str| out.write_all(format!("{line}\r\n").as_bytes());
    if say("220 sink.test ESMTP").is_err() {
        return;
    }
    let mut helo = String::new();
    let mut txn: Option<Transaction> = None;
    let mut after_dot = false;
    loop {
        let mut line = Vec::new();
        if input.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
            return;
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = text.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            helo = text[4..].trim().to_string();
            let chunking = if chunking { "250-CHUNKING\r\n" } else { "" };
            let dsn = if dsn { "250-DSN\r\n" } else { "" };
            format!("250-sink.test\r\n250-PIPELINING\r\n{chunking}{dsn}250-SIZE 100000000\r\n250-8BITMIME\r\n250 SMTPUTF8")
        } else if upper.starts_with("HELO") {
            helo = text[4..].trim().to_string();
            "250 sink.test".to_string()
        } else if upper.starts_with("MAIL FROM:") {
            txn = Some(Transaction {
                helo: helo.clone(),
                mail_from: text[10..].to_string(),
                connection,
                behind_the_dot: after_dot,
                ..Transaction::default()
            });
            "250 2.1.0 Ok".to_string()
        } else if upper.starts_with("RCPT TO:") {
            let arg = text[8..].to_string();
            match (script(Stage::Rcpt, &arg, 0), txn.as_mut()) {
                (Some(reply), _) => reply,
                (None, Some(t)) => {
                    t.rcpt_to.push(arg);
                    "250 2.1.5 Ok".to_string()
                }
                (None, None) => "503 5.5.1 need MAIL".to_string(),
            }
        } else if upper == "DATA" {
            match txn.as_mut() {
                Some(t) if !t.rcpt_to.is_empty() => {
                    if say("354 go ahead").is_err() {
                        return;
                    }
                    loop {
                        let mut l = Vec::new();
                        if input.read_until(b'\n', &mut l).unwrap_or(0) == 0 {
                            return;
                        }
                        if l == b".\r\n" {
                            after_dot = !input.buffer().is_empty();
                            break;
                        }
                        t.raw.extend_from_slice(&l);
                        t.data.extend_from_slice(l.strip_prefix(b".").unwrap_or(&l));
                    }
                    end_of_data(txn.take().unwrap(), &received, &script)
                }
                _ => "554 5.5.1 no valid recipients".to_string(),
            }
        } else if chunking && upper.starts_with("BDAT ") {
            let mut words = upper[5..].split_ascii_whitespace();
            let n: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let last = words.next() == Some("LAST");
            let mut chunk = vec![0; n];
            if std::io::Read::read_exact(&mut input, &mut chunk).is_err() {
                return;
            }
            match txn.as_mut() {
                Some(t) if !t.rcpt_to.is_empty() => {
                    t.raw.extend_from_slice(&chunk);
                    t.data.extend_from_slice(&chunk);
                    t.bdat_chunks += 1;
                    if last {
                        after_dot = !input.buffer().is_empty();
                        end_of_data(txn.take().unwrap(), &received, &script)
                    } else {
                        format!("250 2.0.0 Ok: {n} octets")
                    }
                }
                _ => "503 5.5.1 no valid recipients".to_string(),
            }
        } else if upper == "RSET" {
            txn = None;
            "250 2.0.0 Ok".to_string()
        } else if upper == "QUIT" {
            let _ = say("221 2.0.0 Bye");
            return;
        } else if upper == "NOOP" {
            "250 2.0.0 Ok".to_string()
        } else {
            "500 5.5.2 what?".to_string()
        };
        if say(&reply).is_err() {
            return;
        }
    }
}

/// The whole message is in: the script's reply, or kept and 250.
fn end_of_data(mut t: Transaction, received: &Mutex<Vec<Transaction>>, script: &Script) -> String {
    let before = received.lock().unwrap().len();
    match script(Stage::EndOfData, "", before) {
        Some(reply) => reply,
        None => {
            t.arrived = Some(Instant::now());
            received.lock().unwrap().push(t);
            "250 2.0.0 Ok: queued".to_string()
        }
    }
}
