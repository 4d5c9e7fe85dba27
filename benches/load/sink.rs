//! An SMTP sink: accepts every command and every message, counts them
//! (and their bytes), stores nothing: in the data it keeps only the last
//! read and four bytes, so a 10 MB message costs no more than a small one. One thread, one mio loop; replies to pipelined commands
//! are batched into one write.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memchr::{memchr, memmem};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);
/// A command line longer than this closes the session.
const MAX_LINE: usize = 64 * 1024;
const READ_CHUNK: usize = 64 * 1024;

const EHLO_REPLY: &[u8] = b"250-sink.example\r\n250-PIPELINING\r\n250-SIZE 1073741824\r\n\
250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 OK\r\n";

/// Counters shared with whoever watches the sink.
#[derive(Debug)]
pub struct SinkStats {
    pub messages: AtomicU64,
    /// Recipients of the messages counted.
    pub rcpts: AtomicU64,
    /// Bytes of the messages counted, as received (dot-stuffed, with the
    /// last line's CRLF, without the final dot).
    pub bytes: AtomicU64,
    /// Messages from the null sender (bounces, delay warnings a relay
    /// under test made): not load that came through, so not counted above.
    pub reports: AtomicU64,
    pub sessions: AtomicU64,
    pub open: AtomicU64,
    /// When the last message ended, in ns after `base`.
    last_ns: AtomicU64,
    base: Instant,
}

impl SinkStats {
    pub fn new(base: Instant) -> SinkStats {
        SinkStats {
            messages: AtomicU64::new(0),
            rcpts: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            reports: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            open: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            base,
        }
    }

    /// When the last message ended.
    pub fn last_message(&self) -> Option<Instant> {
        match self.last_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(self.base + Duration::from_nanos(ns)),
        }
    }

    fn message(&self, rcpts: u64, bytes: u64) {
        self.rcpts.fetch_add(rcpts, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let ns = (self.base.elapsed().as_nanos() as u64).max(1);
        self.last_ns.store(ns, Ordering::Release);
        self.messages.fetch_add(1, Ordering::AcqRel);
    }
}

struct Session {
    sock: TcpStream,
    input: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    /// In the data: where to look for the end (CRLF . CRLF) next.
    data_from: Option<usize>,
    /// Where the data starts in `input`, and its bytes already dropped.
    data_start: usize,
    data_bytes: u64,
    rcpts: u64,
    /// The transaction's MAIL FROM is `<>`.
    null_sender: bool,
    quit: bool,
}

/// Runs until `stop` is set or `deadline` passes; with `report`, prints
/// the count every second (and once at the end) to stdout.
pub fn run(
    listener: std::net::TcpListener,
    stats: Arc<SinkStats>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
    report: bool,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut sessions: Slab<Session> = Slab::new();
    let start = Instant::now();
    let mut next_report = start + Duration::from_secs(1);
    let mut last_count = 0;
    let mut scratch = vec![0; READ_CHUNK];

    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if report && now >= next_report {
            let count = stats.messages.load(Ordering::Relaxed);
            say(format_args!(
                "sink: {:>7.1} s  {count} messages  (+{}/s)  {} sessions open",
                start.elapsed().as_secs_f64(),
                count - last_count,
                stats.open.load(Ordering::Relaxed)
            ));
            last_count = count;
            next_report += Duration::from_secs(1);
        }
        // The report's second only when reporting: without `report` it
        // never moves on, and a wake-up time in the past spins the loop.
        let wake = if report {
            deadline.min(next_report)
        } else {
            deadline
        };
        let timeout = wake
            .saturating_duration_since(now)
            .min(Duration::from_millis(100));
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                accept(&poll, &mut listener, &mut sessions, &stats);
                continue;
            }
            let key = event.token().0;
            let Some(session) = sessions.get_mut(key) else {
                continue;
            };
            if !session.drive(&stats, &mut scratch) {
                let mut session = sessions.remove(key);
                let _ = poll.registry().deregister(&mut session.sock);
                stats.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
    if report {
        say(format_args!(
            "sink: stopped after {:.1} s: {} messages, {} recipients, {} from <> (not counted), {} sessions",
            start.elapsed().as_secs_f64(),
            stats.messages.load(Ordering::Relaxed),
            stats.rcpts.load(Ordering::Relaxed),
            stats.reports.load(Ordering::Relaxed),
            stats.sessions.load(Ordering::Relaxed)
        ));
    }
    Ok(())
}

/// A line on stdout; a closed stdout (`| head`) does not stop the sink.
fn say(line: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(line).and_then(|()| out.write_all(b"\n"));
    let _ = out.flush();
}

fn accept(
    poll: &Poll,
    listener: &mut TcpListener,
    sessions: &mut Slab<Session>,
    stats: &SinkStats,
) {
    loop {
        let (mut sock, _) = match listener.accept() {
            Ok(pair) => pair,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and the like: back off until the next event.
                eprintln!("sink: accept: {e}");
                return;
            }
        };
        let _ = sock.set_nodelay(true);
        let entry = sessions.vacant_entry();
        let token = Token(entry.key());
        if poll
            .registry()
            .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            continue;
        }
        stats.sessions.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let session = entry.insert(Session {
            sock,
            input: Vec::new(),
            out: b"220 sink.example ESMTP load sink\r\n".to_vec(),
            written: 0,
            data_from: None,
            data_start: 0,
            data_bytes: 0,
            rcpts: 0,
            null_sender: false,
            quit: false,
        });
        // Edge-triggered: say hello now rather than on a writable event.
        let _ = session.flush();
    }
}

impl Session {
    /// Reads, answers and writes what it can; false when the session is over.
    fn drive(&mut self, stats: &SinkStats, scratch: &mut [u8]) -> bool {
        while !self.quit {
            match self.sock.read(scratch) {
                Ok(0) => return false,
                Ok(n) => {
                    self.input.extend_from_slice(&scratch[..n]);
                    if !self.process(stats) {
                        return false;
                    }
                    // A short read emptied the socket: the next bytes bring
                    // a new edge.
                    if n < scratch.len() {
                        break;
                    }
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => return false,
                },
            }
        }
        match self.flush() {
            Ok(done) => !(done && self.quit),
            Err(_) => false,
        }
    }

    /// Answers every complete command (and message) in the input.
    fn process(&mut self, stats: &SinkStats) -> bool {
        let mut pos = 0;
        loop {
            if let Some(from) = self.data_from {
                match memmem::find(&self.input[from..], b"\r\n.\r\n") {
                    Some(at) => {
                        pos = from + at + 5;
                        self.data_from = None;
                        let tail = (from + at + 2).saturating_sub(self.data_start);
                        let bytes = std::mem::take(&mut self.data_bytes) + tail as u64;
                        if self.null_sender {
                            stats.reports.fetch_add(1, Ordering::Relaxed);
                        } else {
                            stats.message(self.rcpts, bytes);
                        }
                        self.rcpts = 0;
                        self.out.extend_from_slice(b"250 2.0.0 Ok: counted\r\n");
                        continue;
                    }
                    None => {
                        // Keep the last four bytes: the end may straddle reads.
                        let keep = self.input.len().saturating_sub(4).max(from);
                        self.data_bytes += keep.saturating_sub(self.data_start) as u64;
                        self.data_start = self.data_start.saturating_sub(keep);
                        self.input.drain(..keep);
                        self.data_from = Some(0);
                        return true;
                    }
                }
            }
            let Some(lf) = memchr(b'\n', &self.input[pos..]) else {
                break;
            };
            let line = &self.input[pos..pos + lf];
            let next = pos + lf + 1;
            let verb = line.get(..4).unwrap_or(line).to_ascii_uppercase();
            match &verb[..] {
                b"EHLO" => self.out.extend_from_slice(EHLO_REPLY),
                b"HELO" => self.out.extend_from_slice(b"250 sink.example\r\n"),
                b"MAIL" | b"RSET" => {
                    self.rcpts = 0;
                    self.null_sender = memmem::find(line, b":<>").is_some();
                    self.out.extend_from_slice(b"250 2.1.0 Ok\r\n");
                }
                b"RCPT" => {
                    self.rcpts += 1;
                    self.out.extend_from_slice(b"250 2.1.5 Ok\r\n");
                }
                b"DATA" => {
                    self.out
                        .extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                    // The CRLF ending DATA counts as the line end before a
                    // dot on the first line.
                    self.data_from = Some(if line.ends_with(b"\r") {
                        next - 2
                    } else {
                        next
                    });
                    self.data_start = next;
                    self.data_bytes = 0;
                }
                b"QUIT" => {
                    self.out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                    self.quit = true;
                    pos = next;
                    break;
                }
                _ => self.out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
            }
            pos = next;
        }
        self.input.drain(..pos);
        self.data_from.is_some() || self.input.len() <= MAX_LINE
    }

    /// Writes pending output; true when all of it is written.
    fn flush(&mut self) -> io::Result<bool> {
        while self.written < self.out.len() {
            match self.sock.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.written = 0;
        Ok(true)
    }
}
