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
    spawn_logging(dir, args, "info")
}

/// As `spawn`, logging at `rust_log` (`RUST_LOG`, e.g. `trace`).
pub fn spawn_logging(dir: &Path, args: &[&str], rust_log: &str) -> Mailhop {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", rust_log)
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

    /// Every address from the `listening on` lines, in order, once there
    /// are `n` of them (listeners bound to port 0 tell their port here).
    pub fn listening(&self, n: usize) -> Vec<SocketAddr> {
        let start = Instant::now();
        loop {
            let addrs: Vec<SocketAddr> = self
                .log()
                .lines()
                .filter_map(|l| l.split("listening on ").nth(1))
                .filter_map(|a| a.trim().parse().ok())
                .collect();
            if addrs.len() >= n || start.elapsed() > Duration::from_secs(20) {
                return addrs;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
        read_reply(&mut self.reader)
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

/// One SMTP reply read from `from`, all its lines joined by `\n`, without
/// CRLFs. Empty at EOF.
pub fn read_reply(from: &mut impl BufRead) -> String {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if from.read_line(&mut line).unwrap_or(0) == 0 {
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

/// Sends one message from the null sender (so no bounce traffic); its
/// queue ID.
pub fn send_from_null(mailhop: &Mailhop, rcpt: &str) -> String {
    let mut c = mailhop.connect();
    c.reply();
    c.cmd("EHLO client.test");
    expect(&c.cmd("MAIL FROM:<>"), "250");
    expect(&c.cmd(&format!("RCPT TO:<{rcpt}>")), "250");
    expect(&c.cmd("DATA"), "354");
    c.send(b"Subject: test\r\n\r\nhi\r\n.\r\n");
    queued_id(&c.reply())
}

/// Polls `sql` on the queue file `db` until it returns something, for up
/// to 30 s; what it returned last.
pub fn wait_rows(db: &Path, sql: &str) -> Vec<String> {
    let conn = open_queue(db);
    let start = Instant::now();
    loop {
        let got = rows(&conn, sql);
        if !got.is_empty() || start.elapsed() > Duration::from_secs(30) {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- Real peers: Postfix and its smtp-sink / smtp-source (tests/peers.rs) ----

/// A program on PATH or in the sbin folders (Postfix installs there), which a
/// non-login PATH may leave out.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found
}

/// A loopback port that was free a moment ago (for programs that cannot be
/// told to bind port 0 and report it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (bounded) until `addr` accepts a TCP connection.
pub fn wait_listening(addr: SocketAddr, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `cmd` to its end and returns what it printed; fails the test with
/// its stderr unless it exits 0.
pub fn succeed(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `curl` sending the file `mail` to `url` (`smtp://` or `smtps://`) for
/// one envelope, within 20 s; callers add their options (TLS, `--user`).
pub fn curl_mail(url: &str, from: &str, rcpt: &str, mail: &Path) -> Command {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "20", url])
        .args(["--mail-from", from, "--mail-rcpt", rcpt, "-T"])
        .arg(mail);
    curl
}

/// Runs `cmd` to completion, killing it after `limit`; `None` on timeout.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Option<ExitStatus> {
    let mut child = cmd.spawn().ok()?;
    wait_bounded(&mut child, limit)
}

/// Waits for `child` at most `limit`, then kills it (`None`).
pub fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam(3) with a valid C string; the fields are copied out
    // at once (tests do not call getpw* concurrently with each other's use).
    unsafe {
        let pw = libc::getpwnam(cname.as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn group_exists(name: &str) -> bool {
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: getgrnam(3) with a valid C string; only the null check is used.
    unsafe { !libc::getgrnam(cname.as_ptr()).is_null() }
}

/// Postfix's `smtp-sink` on a loopback port, counting messages (`-c`) and
/// storing nothing; killed when dropped.
pub struct SmtpSink {
    pub addr: SocketAddr,
    child: Child,
    counter: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpSink {
    /// `Err(why)` when smtp-sink is not installed or does not start (three
    /// tries, in case another process took the free port in between).
    pub fn start() -> Result<SmtpSink, String> {
        let mut why = String::new();
        for _ in 0..3 {
            match SmtpSink::start_once() {
                Ok(sink) => return Ok(sink),
                Err(e) => why = e,
            }
        }
        Err(why)
    }

    fn start_once() -> Result<SmtpSink, String> {
        let program = find_program("smtp-sink")
            .ok_or("smtp-sink is not installed (apt-get install postfix)")?;
        let dir = tempdir();
        let counter = dir.path().join("smtp-sink.out");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(program);
        if is_root() {
            // smtp-sink refuses to run as root without a user to become.
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .args(["-c", "-m", "1000"])
            .arg(addr.to_string())
            .arg("1024")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&counter).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("smtp-sink does not start: {e}"))?;
        let mut sink = SmtpSink {
            addr,
            child,
            counter,
            _dir: dir,
        };
        let listening = wait_listening(addr, Duration::from_secs(10));
        // Still running: the listener is its own, not someone else's.
        if let Ok(Some(status)) = sink.child.try_wait() {
            return Err(format!("smtp-sink exited on {addr}: {status}"));
        }
        if !listening {
            return Err(format!("smtp-sink is not listening on {addr}"));
        }
        Ok(sink)
    }

    /// Messages received so far: the last `mesg=N` smtp-sink has written.
    pub fn messages(&self) -> u64 {
        let out = std::fs::read(&self.counter).unwrap_or_default();
        let text = String::from_utf8_lossy(&out);
        text.rsplit("mesg=")
            .next()
            .filter(|_| text.contains("mesg="))
            .map(|rest| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Waits (bounded) until `n` messages have arrived; returns the count.
    pub fn wait_messages(&self, n: u64, limit: Duration) -> u64 {
        let start = Instant::now();
        loop {
            let got = self.messages();
            if got >= n || start.elapsed() > limit {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private Postfix instance: its own config, queue and data folders in a
/// temporary folder, smtpd on a free 127.0.0.1 port, no DNS, no TLS, no
/// local delivery, short queue delays. `postfix abort` and removed when
/// dropped; a watchdog does the same if the test process dies first.
pub struct Postfix {
    /// Where its smtpd listens.
    pub addr: SocketAddr,
    postfix: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    master: Option<i32>,
    watchdog: Option<Child>,
    root: tempfile::TempDir,
}

/// `myhostname` of every private instance (it appears in its Received lines).
pub const POSTFIX_HOSTNAME: &str = "postfix.peers.test";

impl Postfix {
    /// Starts an instance with `main_cf` appended to the base settings
    /// (later lines win, e.g. `relayhost = [127.0.0.1]:PORT`). `Err(why)`
    /// when it cannot run here: not installed, not root, no `postfix` user
    /// or `postdrop` group, or the start fails three times (a fresh port and
    /// folder each time; the log is in the message).
    pub fn start(main_cf: &str) -> Result<Postfix, String> {
        let mut why = String::new();
        for _ in 0..3 {
            match Postfix::start_once(main_cf) {
                Ok(instance) => return Ok(instance),
                Err(e)
                    if e.starts_with("postfix start failed")
                        || e.starts_with("postfix is not listening") =>
                {
                    why = e
                }
                Err(e) => return Err(e),
            }
        }
        Err(why)
    }

    fn start_once(main_cf: &str) -> Result<Postfix, String> {
        let postfix =
            find_program("postfix").ok_or("postfix is not installed (apt-get install postfix)")?;
        if !is_root() {
            return Err("a private Postfix instance needs root".into());
        }
        let (uid, gid) = user_ids("postfix").ok_or("no postfix user")?;
        if !group_exists("postdrop") {
            return Err("no postdrop group".into());
        }
        let root = tempfile::Builder::new()
            .prefix("mailhop-postfix-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let base = root.path().to_path_buf();
        use std::os::unix::fs::PermissionsExt;
        // Postfix's daemons run as the postfix user and must reach the queue.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (conf, spool, data) = (base.join("conf"), base.join("spool"), base.join("data"));
        for dir in [&conf, &spool, &data] {
            std::fs::create_dir(dir).unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::os::unix::fs::chown(&data, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        let log = base.join("maillog");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let base_s = base.display();
        std::fs::write(
            conf.join("main.cf"),
            format!(
                "# private instance of mailhop's tests/peers.rs
compatibility_level = 3.6
queue_directory = {base_s}/spool
data_directory = {base_s}/data
maillog_file_prefixes = {base_s}
maillog_file = {log}
mail_owner = postfix
setgid_group = postdrop
myhostname = {POSTFIX_HOSTNAME}
mydomain = peers.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:no local delivery in this instance
alias_maps =
alias_database =
biff = no
append_dot_mydomain = no
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtp_connect_timeout = 5s
in_flow_delay = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
{main_cf}
",
                log = log.display()
            ),
        )
        .unwrap();
        // No chroot anywhere (it would need /etc files copied into the queue).
        std::fs::write(
            conf.join("master.cf"),
            format!(
                "127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"
            ),
        )
        .unwrap();
        let mut instance = Postfix {
            addr,
            postfix,
            conf,
            log,
            master: None,
            watchdog: None,
            root,
        };
        // If this test process dies without running Drop, stop the instance
        // and remove its folder (bounded: 5 minutes at most).
        let script = format!(
            "for i in $(seq 1 300); do kill -0 {test} 2>/dev/null || break; sleep 1; done; \
             '{postfix}' -c '{conf}' abort; sleep 2; rm -rf '{base_s}'",
            test = std::process::id(),
            postfix = instance.postfix.display(),
            conf = instance.conf.display(),
        );
        use std::os::unix::process::CommandExt;
        instance.watchdog = Command::new("sh")
            .args(["-c", &script])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        // Output to a file, not a pipe: the master daemon may keep it open.
        let out = base.join("postfix-start.out");
        let status = run_bounded(
            Command::new(&instance.postfix)
                .arg("-c")
                .arg(&instance.conf)
                .arg("start")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::fs::File::create(base.join("postfix-start.err")).unwrap()),
            Duration::from_secs(30),
        );
        instance.master = std::fs::read_to_string(spool.join("pid/master.pid"))
            .ok()
            .and_then(|pid| pid.trim().parse().ok());
        if status.map(|s| s.success()) != Some(true) {
            return Err(format!(
                "postfix start failed ({status:?}):\n{}",
                instance.log()
            ));
        }
        if !wait_listening(addr, Duration::from_secs(10)) {
            return Err(format!(
                "postfix is not listening on {addr}:\n{}",
                instance.log()
            ));
        }
        Ok(instance)
    }

    /// Its log so far (`maillog_file`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn dir(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = run_bounded(
            Command::new(&self.postfix)
                .arg("-c")
                .arg(&self.conf)
                .arg("abort")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            Duration::from_secs(10),
        );
        if let Some(pid) = self.master {
            // The master leads its own process group: wait for it, then
            // kill what is left of that group (only processes it started).
            let alive = |pid: i32| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| {
                        !s.rsplit(')')
                            .next()
                            .unwrap_or("")
                            .trim_start()
                            .starts_with('Z')
                    })
                    .unwrap_or(false)
            };
            let start = Instant::now();
            while alive(pid) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive(pid) {
                // SAFETY: kill(2) on the group of the master this test started.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            // SAFETY: kill(2) on the watchdog's own process group.
            unsafe { libc::kill(-(watchdog.id() as i32), libc::SIGKILL) };
            let _ = watchdog.wait();
        }
    }
}

/// The metrics endpoint's address, from the `metrics on http://ADDR/metrics`
/// line of the log.
pub fn metrics_addr(mailhop: &Mailhop) -> SocketAddr {
    let start = Instant::now();
    loop {
        let found = mailhop
            .log()
            .lines()
            .filter_map(|l| l.split("metrics on http://").nth(1))
            .filter_map(|a| a.trim().trim_end_matches("/metrics").parse().ok())
            .next();
        if let Some(addr) = found {
            return addr;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no metrics line:\n{}",
            mailhop.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 request; the whole answer (the server closes after it).
pub fn http_get(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// `GET /metrics`: the samples, `name{labels}` (labels as printed) to value.
pub fn scrape(addr: SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let answer = http_get(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: mailhop\r\nConnection: close\r\n\r\n",
    );
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// A self-signed certificate for localhost and 127.0.0.1, written as
/// `cert.pem` and `key.pem` in `dir`.
pub fn certificate(dir: &Path) -> rustls::pki_types::CertificateDer<'static> {
    certificate_as(dir, "cert.pem", "key.pem")
}

/// As [`certificate`], into the files named.
pub fn certificate_as(
    dir: &Path,
    cert: &str,
    key: &str,
) -> rustls::pki_types::CertificateDer<'static> {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    std::fs::write(dir.join(cert), made.cert.pem()).unwrap();
    std::fs::write(dir.join(key), made.signing_key.serialize_pem()).unwrap();
    made.cert.der().clone()
}

/// `mailhop passwd NAME` with `password` on stdin; its output line.
pub fn passwd(name: &str, password: &str) -> String {
    let mut child = Command::new(BIN)
        .args(["passwd", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

impl Mailhop {
    /// SIGHUP: reload the config.
    pub fn hangup(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }

    /// Waits (bounded) until the log has `n` lines containing `needle`.
    pub fn wait_log(&self, needle: &str, n: usize) {
        let start = Instant::now();
        while self.log().matches(needle).count() < n {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no {needle:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
