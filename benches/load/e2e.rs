//! End to end: a release mailhop on a temporary queue, relaying everything
//! to an in-process sink; load it, wait for the sink to hold every accepted
//! recipient, read mailhop's peak RSS, stop it. With `--starttls`/`--tls`
//! a test certificate is written into the temporary directory and named
//! in mailhop's `[tls]` (with an `implicit_listen` for `--tls`).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use super::args::Args;
use super::client::{self, Plan};
use super::message::Messages;
use super::procstat::Watch;
use super::sink::{self, SinkStats};
use super::stats::{E2eResult, LoadResult};
use super::tls;

/// How long mailhop may take to say `listening on`, and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Outcome {
    pub target: String,
    /// The certificate's key type, with TLS.
    pub cert: Option<&'static str>,
    pub load: LoadResult,
    pub e2e: E2eResult,
}

pub fn run(args: &Args) -> Result<Outcome, String> {
    let deadline = Instant::now() + args.max_time();
    let binary = find_mailhop(args.mailhop.as_deref())?;
    let dir = tempfile::Builder::new()
        .prefix("mailhop-e2e.")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;

    // The sink first: its port goes into mailhop's routes.
    let sink_listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("sink: bind 127.0.0.1:0: {e}"))?;
    let sink_addr = sink_listener
        .local_addr()
        .map_err(|e| format!("sink: {e}"))?;
    let base = Instant::now();
    let stats = Arc::new(SinkStats::new(base));
    let stop = Arc::new(AtomicBool::new(false));
    let sink_thread = {
        let (stats, stop) = (stats.clone(), stop.clone());
        // The stop flag ends it; the deadline is a safety net.
        let sink_deadline = deadline + STOP_TIMEOUT * 2;
        thread::Builder::new()
            .name("sink".into())
            .spawn(move || sink::run(sink_listener, stats, stop, sink_deadline, false))
            .map_err(|e| format!("sink thread: {e}"))?
    };
    let stop_sink = || {
        stop.store(true, Ordering::Relaxed);
    };

    let cert = match args.starttls || args.tls {
        true => Some(tls::write_test_cert(dir.path(), args.cert_type)?),
        false => None,
    };
    let config = match write_config(dir.path(), args, sink_addr, cert.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            stop_sink();
            let _ = sink_thread.join();
            return Err(e);
        }
    };
    let log_path = dir.path().join("mailhop.log");
    let listeners = if args.tls { 2 } else { 1 };
    let mut mailhop = match Mailhop::start(&binary, &config, dir.path(), &log_path, listeners) {
        Ok(m) => m,
        Err(e) => {
            stop_sink();
            let _ = sink_thread.join();
            return Err(format!("{e}\n{}", log_tail(&log_path)));
        }
    };
    // Plain listener first, then the implicit-TLS one (as mailhop binds them).
    let plain = mailhop.addrs[0];
    let target = *mailhop.addrs.last().expect("one listener at least");

    let msgs = Messages::new(&args.from, &args.recipients(), args.size);
    let plan = match Plan::new(args, target, plain, deadline) {
        Ok(p) => p,
        Err(e) => {
            mailhop.stop();
            stop_sink();
            let _ = sink_thread.join();
            return Err(e);
        }
    };
    let watch = Watch::start(&[mailhop.child.id()], &[]);
    let t0 = Instant::now();
    let load = client::run(&plan, &msgs);

    // Wait (bounded) until the sink has every recipient mailhop accepted.
    let want = load
        .as_ref()
        .map(|l| l.accepted_rcpts + l.probe.accepted_rcpts)
        .unwrap_or(0);
    while stats.rcpts.load(Ordering::Acquire) < want && Instant::now() < deadline {
        if mailhop.exited() {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let delivered = stats.messages.load(Ordering::Acquire);
    let delivered_rcpts = stats.rcpts.load(Ordering::Acquire);
    let server = watch.map(Watch::finish);

    let (peak_rss, rss) = mailhop.memory();
    let cpu_s = mailhop.cpu_seconds();
    let exit = mailhop.stop();
    stop_sink();
    let _ = sink_thread.join();

    let mut load = load.map_err(|e| format!("load: {e}"))?;
    load.server = server;
    let e2e = E2eResult {
        delivered,
        delivered_rcpts,
        delivered_bytes: stats.bytes.load(Ordering::Acquire),
        expected_rcpts: want,
        delivery_elapsed: stats
            .last_message()
            .map(|t| t.saturating_duration_since(t0))
            .unwrap_or_default(),
        complete: delivered_rcpts >= want,
        peak_rss,
        rss,
        cpu_s,
        exit,
        binary: binary.display().to_string(),
    };
    if !e2e.complete || e2e.exit != "exit status: 0" {
        eprintln!("{}", log_tail(&log_path));
    }
    if args.keep {
        let kept = dir.keep();
        eprintln!("e2e: kept {}", kept.display());
    }
    Ok(Outcome {
        target: target.to_string(),
        cert: cert.map(|_| args.cert_type.name()),
        load,
        e2e,
    })
}

/// mailhop's limit when the config says nothing (SPEC section 2).
const DEFAULT_MAX_MESSAGE_SIZE: usize = 10 << 20;

fn write_config(
    dir: &Path,
    args: &Args,
    sink: SocketAddr,
    cert: Option<&(PathBuf, PathBuf)>,
) -> Result<PathBuf, String> {
    let domain = args.to.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    let conns = (args.connections as u64).max(100);
    let mut text = format!(
        "# written by the load harness (--e2e)\n\
         hostname = \"relay.load.example\"\n\
         listen = [\"127.0.0.1:0\"]\n\
         queue = \"queue.db\"\n\
         maildir = \"mail\"\n\
         max_connections = {}\n\
         max_connections_per_ip = {}\n\
         relay_networks = [\"127.0.0.0/8\", \"::1/128\"]\n",
        (conns * 2).max(10_000),
        conns * 2,
    );
    // Room for --size 10M and up (headers included), unless set by hand.
    let set_by_hand = |key: &str| {
        args.mailhop_set
            .iter()
            .any(|l| l.trim_start().starts_with(key))
    };
    if args.size * 2 > DEFAULT_MAX_MESSAGE_SIZE && !set_by_hand("max_message_size") {
        text.push_str(&format!("max_message_size = {}\n", args.size * 2));
    }
    for line in &args.mailhop_set {
        text.push_str(line);
        text.push('\n');
    }
    if let Some((cert, key)) = cert {
        text.push_str(&format!(
            "\n[tls]\ncert = {:?}\nkey = {:?}\n",
            cert.display(),
            key.display()
        ));
        if args.tls {
            text.push_str("implicit_listen = [\"127.0.0.1:0\"]\n");
        }
    }
    text.push_str(&format!("\n[routes]\n\"*\" = \"{sink}\"\n"));
    if !domain.is_empty() && domain != "*" {
        text.push_str(&format!("{domain:?} = \"{sink}\"\n"));
    }
    let path = dir.join("mailhop.toml");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// The mailhop binary: --mailhop, or target/release/mailhop wherever the
/// target directory is, built with `cargo build --release` when missing.
fn find_mailhop(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        // Absolute: mailhop runs in a temporary folder of its own.
        return if path.is_file() {
            std::fs::canonicalize(path).map_err(|e| format!("--mailhop {}: {e}", path.display()))
        } else {
            Err(format!("--mailhop {}: no such file", path.display()))
        };
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        let dir = if dir.is_absolute() {
            dir
        } else {
            manifest.join(dir)
        };
        candidates.push(dir.join("release/mailhop"));
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/release/deps/load-HASH
        if let Some(deps) = exe.parent() {
            candidates.push(deps.join("../mailhop"));
            candidates.push(deps.join("../../release/mailhop"));
        }
    }
    candidates.push(manifest.join("target/release/mailhop"));
    let found = |c: &[PathBuf]| c.iter().find(|p| p.is_file()).cloned();
    if let Some(path) = found(&candidates) {
        let path = clean(path);
        warn_if_stale(&path);
        return Ok(path);
    }
    eprintln!("e2e: no release mailhop found; running cargo build --release --bin mailhop");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "mailhop"])
        .current_dir(manifest)
        .status()
        .map_err(|e| format!("cargo build --release: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build --release: {status}"));
    }
    found(&candidates)
        .map(clean)
        .ok_or_else(|| format!("built, but found none of {candidates:?}"))
}

fn clean(path: PathBuf) -> PathBuf {
    path.canonicalize().unwrap_or(path)
}

/// `cargo bench` rebuilds the library, not the binary: say so when a
/// source file is newer than the binary.
fn warn_if_stale(binary: &Path) {
    fn newest(dir: &Path) -> Option<std::time::SystemTime> {
        let mut best = None;
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            let t = if path.is_dir() {
                newest(&path)
            } else {
                entry.metadata().and_then(|m| m.modified()).ok()
            };
            best = best.max(t);
        }
        best
    }
    let bin = binary.metadata().and_then(|m| m.modified()).ok();
    let src = newest(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    if let (Some(bin), Some(src)) = (bin, src) {
        if bin < src {
            eprintln!(
                "e2e: warning: {} is older than src/; run `cargo build --release` first",
                binary.display()
            );
        }
    }
}

struct Mailhop {
    child: Child,
    /// The bound addresses, in the order mailhop logged them.
    addrs: Vec<SocketAddr>,
    stopped: bool,
}

impl Mailhop {
    /// Waits for `listeners` `listening on` lines.
    fn start(
        binary: &Path,
        config: &Path,
        dir: &Path,
        log: &Path,
        listeners: usize,
    ) -> Result<Mailhop, String> {
        let mut log_file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .current_dir(dir)
            .env(
                "RUST_LOG",
                std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        // Copy its log to a file (it must never block on a full pipe) and
        // pick up the bound address on the way.
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut tx = Some(tx);
            let mut found = 0;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log_file, "{line}");
                if let Some(at) = line.find("listening on ") {
                    let addr = line[at + 13..].split_whitespace().next().unwrap_or("");
                    if let (Ok(addr), Some(sender)) = (addr.parse::<SocketAddr>(), tx.as_ref()) {
                        let _ = sender.send(addr);
                        found += 1;
                        if found == listeners {
                            tx = None;
                        }
                    }
                }
            }
        });
        let mut mailhop = Mailhop {
            child,
            addrs: Vec::new(),
            stopped: false,
        };
        let until = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => {
                    mailhop.addrs.push(addr);
                    if mailhop.addrs.len() == listeners {
                        return Ok(mailhop);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = mailhop.stop();
                    return Err(format!("mailhop stopped before listening ({status})"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if mailhop.exited() {
                        let status = mailhop.stop();
                        return Err(format!("mailhop stopped before listening ({status})"));
                    }
                    if Instant::now() >= until {
                        mailhop.stop();
                        return Err("mailhop did not log `listening on` within 30 s".into());
                    }
                }
            }
        }
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// VmHWM and VmRSS in bytes.
    fn memory(&self) -> (Option<u64>, Option<u64>) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .map(|kb| kb * 1024)
        };
        (kb("VmHWM:"), kb("VmRSS:"))
    }

    /// utime + stime so far.
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // The fields after the command name, which is in parentheses.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Some((utime + stime) / hz)
    }

    /// SIGTERM, a bounded wait, then SIGKILL; how it ended.
    fn stop(&mut self) -> String {
        self.stopped = true;
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.to_string();
        }
        // SAFETY: signalling our own child by its PID.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let until = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.to_string();
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => format!(
                "killed after {} s without exiting: {status}",
                STOP_TIMEOUT.as_secs()
            ),
            Err(e) => format!("killed: {e}"),
        }
    }
}

impl Drop for Mailhop {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    format!("--- last lines of mailhop's log ---\n{}", tail.join("\n"))
}
