//! Shared by the end-to-end tests: a real `mailhop serve` process on a
//! loopback port of its own, a temporary folder, and a line-based client.

#![allow(dead_code)]

pub mod sink;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mailhop");

/// A running `mailhop serve`, killed when dropped.
pub struct Mailhop {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub log: Arc<Mutex<String>>,
}

/// Writes `config` (TOML, without `listen`/`queue`, which are added) into
/// `dir` and starts the relay on a free loopback port.
pub fn start_in(dir: &Path, config: &str) -> Mailhop {
    let mut text = format!("listen = [\"127.0.0.1:0\"]\nqueue = \"queue.db\"\n{config}");
    if !config.contains("[dns]") {
        // Tests stay on loopback: names nobody serves fail fast here
        // instead of going to the system's resolver.
        text.push_str("\n[dns]\nservers = [\"127.0.0.1:9\"]\n");
    }
    std::fs::write(dir.join("mailhop.toml"), text).unwrap();
    spawn(
        dir,
        &[
            "serve",
            "--config",
            dir.join("mailhop.toml").to_str().unwrap(),
        ],
    )
}

/// Starts `mailhop` with `args` in `dir` and waits for `listening on`.
pub fn spawn(dir: &Path, args: &[&str]) -> Mailhop {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mailhop");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(at) = line.find("listening on ") {
                let addr = line[at + 13..].trim().to_string();
                let _ = tx.send(addr);
            }
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(addr) => addr.parse().expect("address in the log"),
        Err(_) => {
            let _ = child.kill();
            panic!("mailhop did not start:\n{}", log.lock().unwrap());
        }
    };
    Mailhop {
        child,
        addr,
        dir: dir.to_path_buf(),
        log,
    }
}

impl Mailhop {
    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn queue_path(&self) -> PathBuf {
        self.dir.join("queue.db")
    }

    /// Sends a signal and waits (bounded) for the exit.
    pub fn signal(&mut self, signal: i32) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.wait(Duration::from_secs(20)).expect("mailhop exits")
    }

    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Mailhop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking SMTP client that reads whole (multi-line) replies.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// One reply, all its lines joined by `\n`, without CRLFs. Empty at EOF.
    pub fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                break;
            }
        }
        lines.join("\n")
    }

    /// Sends one command line and returns its reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// True once the server has closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0))
    }
}

/// Asserts a reply starts with `prefix`, showing the reply otherwise.
#[track_caller]
pub fn expect(reply: &str, prefix: &str) {
    assert!(
        reply.starts_with(prefix),
        "expected {prefix:?}, got {reply:?}"
    );
}

/// The queue ID in `250 2.0.0 Ok: queued as <ID>`.
#[track_caller]
pub fn queued_id(reply: &str) -> String {
    expect(reply, "250 2.0.0 Ok: queued as ");
    reply.rsplit(' ').next().unwrap().to_string()
}

/// Opens the queue file read-only from outside, as an operator would.
pub fn open_queue(path: &Path) -> rusqlite::Connection {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open queue");
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

/// Rows of `sql` as strings, columns joined by `|` (like `sqlite3`).
pub fn rows(conn: &rusqlite::Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |row| {
        let cols: Vec<String> = (0..n)
            .map(|i| match row.get_ref(i).unwrap() {
                rusqlite::types::ValueRef::Null => String::new(),
                rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                rusqlite::types::ValueRef::Real(v) => v.to_string(),
                rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                    String::from_utf8_lossy(t).into_owned()
                }
            })
            .collect();
        Ok(cols.join("|"))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Whether a program is on PATH; interop tests print why they skip.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Says why a test did not run. Written to stderr directly, not through
/// `eprintln!`, so the test harness does not swallow it for a passing test.
pub fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Connects from a chosen loopback source address (another client IP).
pub fn connect_from(source: &str, addr: SocketAddr) -> std::io::Result<Client> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let source: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&source.into())?;
    socket.connect(&addr.into())?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let reader = BufReader::new(stream.try_clone()?);
    Ok(Client { stream, reader })
}

/// Raises this process's RLIMIT_NOFILE soft limit to its hard limit (a
/// `mailhop` spawned afterwards inherits it); returns the new soft limit.
pub fn raise_nofile() -> u64 {
    mailhop::event_loop::raise_fd_limit().unwrap_or(1024)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), 0 if unknown.
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One whole transaction as a well-behaved client, to `rcpt`; returns the
/// final reply and how long the session took from connect to QUIT.
pub fn one_transaction(addr: SocketAddr, rcpt: &str) -> (String, Duration) {
    let start = Instant::now();
    let mut c = Client::connect(addr);
    expect(&c.reply(), "220");
    expect(&c.cmd("EHLO normal.test"), "250");
    expect(&c.cmd("MAIL FROM:<normal@client.test>"), "250");
    expect(&c.cmd(&format!("RCPT TO:<{rcpt}>")), "250");
    expect(&c.cmd("DATA"), "354");
    c.send(b"Subject: normal\r\n\r\nstill served\r\n.\r\n");
    let reply = c.reply();
    c.cmd("QUIT");
    (reply, start.elapsed())
}
