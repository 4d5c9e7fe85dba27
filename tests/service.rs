//! Running under a service manager: the unit file, readiness (sd_notify),
//! the pid file, and `mailhop reload`.

mod common;

use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const UNIT: &str = include_str!("../contrib/mailhop.service");

/// The unit with ExecStart on the built binary (verify wants it to exist).
fn unit_here(dir: &Path) -> PathBuf {
    let path = dir.join("mailhop.service");
    std::fs::write(&path, UNIT.replace("/usr/local/bin/mailhop", BIN)).unwrap();
    path
}

fn systemd_analyze(args: &[&str]) -> Option<(bool, String)> {
    let out = Command::new("systemd-analyze")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), text))
}

#[test]
fn the_unit_file_verifies_and_its_exposure_stays_low() {
    if !have("systemd-analyze") {
        skip("the_unit_file_verifies", "systemd-analyze not installed");
        return;
    }
    let dir = tempdir();
    let unit = unit_here(dir.path());
    let unit = unit.to_str().unwrap();
    let (ok, text) =
        systemd_analyze(&["verify", "--man=no", "--generators=no", unit]).expect("run it");
    assert!(ok, "systemd-analyze verify: {text}");
    assert!(text.trim().is_empty(), "warnings: {text}");
    let Some((ok, text)) = systemd_analyze(&["security", "--offline=yes", "--no-pager", unit])
    else {
        return;
    };
    if !ok && text.contains("offline") {
        skip("unit exposure", "systemd-analyze security has no --offline");
        return;
    }
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for mailhop.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {text}"));
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("systemd-analyze security: exposure {score}\n").as_bytes(),
    );
    assert!(score <= 2.0, "exposure {score} (README says 1.4):\n{text}");
}

/// A child killed (if still running) when the test ends, failed or not.
struct Running(Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mailhop serve` on a free loopback port with a queue in `dir`; stderr
/// piped and left unread, for the caller.
fn serve(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Running {
    let queue = dir.join("queue.db");
    let child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--queue",
            queue.to_str().unwrap(),
        ])
        .args(extra)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mailhop");
    Running(child)
}

/// What can be read from `pipe` at once, without waiting for more.
fn available(pipe: &mut std::process::ChildStderr) -> String {
    let fd = pipe.as_raw_fd();
    // SAFETY: fcntl(2) on a pipe this process owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&text).into_owned()
}

fn stop(child: &mut Child) -> Option<std::process::ExitStatus> {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_bounded(child, Duration::from_secs(20))
}

/// READY=1 comes with MAINPID, and only once `listening on` is out.
fn readiness(socket: UnixDatagram, name: &str) {
    let dir = tempdir();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = serve(dir.path(), &[], &[("NOTIFY_SOCKET", name)]);
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification");
    // Whatever mailhop wrote before it notified is in the pipe by now.
    let log = available(child.stderr.as_mut().unwrap());
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    let lines: Vec<&str> = message.lines().collect();
    assert!(lines.contains(&"READY=1"), "{message:?}");
    assert!(
        lines.contains(&format!("MAINPID={}", child.id()).as_str()),
        "{message:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("STATUS=")),
        "{message:?}"
    );
    assert!(
        log.contains("listening on 127.0.0.1:"),
        "READY=1 before the listening line: {log:?}"
    );
    let status = stop(&mut child).expect("mailhop exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn ready_is_sent_to_a_socket_path_once_listening() {
    let dir = tempdir();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    readiness(socket, path.to_str().unwrap());
}

#[test]
fn ready_is_sent_to_an_abstract_socket_once_listening() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("mailhop-test-{}-{:?}", std::process::id(), Instant::now());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    readiness(socket, &format!("@{name}"));
}

#[test]
fn a_notify_socket_nobody_listens_on_is_a_warning_not_a_failure() {
    let dir = tempdir();
    let missing = dir.path().join("nobody.sock");
    let mut child = serve(
        dir.path(),
        &[],
        &[("NOTIFY_SOCKET", missing.to_str().unwrap())],
    );
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let mut log = String::new();
    while !log.contains("cannot notify the service manager") {
        assert!(start.elapsed() < Duration::from_secs(20), "{log}");
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            log.push_str(&line);
            log.push('\n');
        }
    }
    assert!(log.contains("listening on"), "{log}");
    // Still serving.
    let addr: std::net::SocketAddr = log
        .lines()
        .find_map(|l| l.split("listening on ").nth(1))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    expect(&Client::connect(addr).reply(), "220");
    assert!(stop(&mut child).expect("exits").success());
}

/// Waits (bounded) until `child` has written `listening on` to stderr;
/// returns what it wrote.
fn wait_listening_line(child: &mut Child) -> String {
    let mut stderr = child.stderr.take().unwrap();
    let start = Instant::now();
    let mut log = String::new();
    let mut buf = [0u8; 4096];
    while !log.contains("listening on") {
        assert!(start.elapsed() < Duration::from_secs(20), "{log}");
        match stderr.read(&mut buf) {
            Ok(0) => panic!("mailhop exited: {log}"),
            Ok(n) => log.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) => panic!("{e}"),
        }
    }
    // Keep the pipe drained so the child never blocks on its log.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    log
}

#[test]
fn the_pid_file_is_written_guarded_and_removed_on_a_clean_exit() {
    let dir = tempdir();
    let pid_file = dir.path().join("run/mailhop.pid");
    std::fs::create_dir(dir.path().join("run")).unwrap();
    let flag = ["--pid-file", pid_file.to_str().unwrap()];
    // A stale file (a process that has gone) is replaced.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(&pid_file, format!("{gone_pid}\n")).unwrap();

    let mut first = serve(dir.path(), &flag, &[]);
    wait_listening_line(&mut first);
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{}\n", first.id())
    );

    // A second one with the same pid file refuses, and leaves it alone.
    let second_dir = tempdir();
    let mut second = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--queue",
            second_dir.path().join("q.db").to_str().unwrap(),
        ])
        .args(flag)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(&mut second);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("already running as pid {}", first.id()))
            && err.contains("mailhop.pid"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{}\n", first.id())
    );

    let status = stop(&mut first).expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!pid_file.exists(), "left behind after a clean exit");
    // Nothing else left in the folder either (no temporary file).
    assert_eq!(
        std::fs::read_dir(dir.path().join("run")).unwrap().count(),
        0
    );
}

#[test]
fn an_unwritable_pid_file_is_fatal() {
    let dir = tempdir();
    let pid_file = dir.path().join("no/such/folder/mailhop.pid");
    let mut child = serve(dir.path(), &["--pid-file", pid_file.to_str().unwrap()], &[]);
    let out = wait_output(&mut child);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pid file") && err.contains("no/such/folder"),
        "{err}"
    );
}

fn wait_output(child: &mut Child) -> std::process::Output {
    let status = wait_bounded(child, Duration::from_secs(20)).expect("exits");
    let mut stderr = Vec::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_end(&mut stderr).unwrap();
    }
    let mut stdout = Vec::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_end(&mut stdout).unwrap();
    }
    std::process::Output {
        status,
        stdout,
        stderr,
    }
}

fn reload(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("reload")
        .args(args)
        .env_remove("MAILHOP_PID_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = wait_output(&mut cmd.spawn().unwrap());
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A stand-in for a running mailhop that survives SIGHUP: Python with
/// argv[0] `mailhop`, writing `hup` into `dir` at each SIGHUP. Serve
/// itself cannot be used until it handles SIGHUP (today the signal's
/// default action would end it). Waits until the handler is installed.
struct FakeMailhop {
    child: Child,
}

impl FakeMailhop {
    fn start(dir: &Path) -> Option<FakeMailhop> {
        let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
            .into_iter()
            .find(|p| Path::new(p).is_file())?;
        let script = "import signal, sys, time, pathlib\n\
            d = pathlib.Path(sys.argv[1])\n\
            signal.signal(signal.SIGHUP, lambda *_: (d / 'hup').write_text('hup'))\n\
            (d / 'up').write_text('up')\n\
            end = time.time() + 60\n\
            while time.time() < end: time.sleep(0.05)\n";
        let child = Command::new("bash")
            .args([
                "-c",
                &format!("exec -a mailhop {python} -c \"$0\" \"$1\""),
                script,
                dir.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let mut fake = FakeMailhop { child };
        let start = Instant::now();
        while !dir.join("up").exists() {
            if start.elapsed() > Duration::from_secs(20) || fake.child.try_wait().ok()?.is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(fake)
    }
}

impl Drop for FakeMailhop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(path: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn reload_checks_the_config_then_sends_sighup_to_mailhop() {
    let dir = tempdir();
    let Some(fake) = FakeMailhop::start(dir.path()) else {
        skip(
            "reload_sends_sighup",
            "no python3 at /usr/bin or /usr/local/bin",
        );
        return;
    };
    let pid = fake.child.id();
    let pid_file = dir.path().join("mailhop.pid");
    std::fs::write(&pid_file, format!("{pid}\n")).unwrap();
    let pid_arg = pid_file.to_str().unwrap();

    // An invalid config: refused with exit 2 and the config's error, and
    // nothing is sent.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "max_hops = 0\n").unwrap();
    let (code, out, err) = reload(&["--config", bad.to_str().unwrap(), "--pid-file", pid_arg]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("bad.toml") && err.contains("max_hops"),
        "{err}"
    );
    // A file the config names and serve reads at start counts too.
    let tls = dir.path().join("tls.toml");
    std::fs::write(&tls, "[tls]\ncert = \"none.pem\"\nkey = \"none.pem\"\n").unwrap();
    let (code, _, err) = reload(&["--config", tls.to_str().unwrap(), "--pid-file", pid_arg]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("none.pem"), "{err}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !dir.path().join("hup").exists(),
        "signalled despite a bad config"
    );

    // A valid one: checked, then SIGHUP.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "hostname = \"beta.example\"\n").unwrap();
    let (code, out, err) = reload(&["--config", good.to_str().unwrap(), "--pid-file", pid_arg]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("reload: sent SIGHUP to mailhop (pid {pid})\n"));
    assert!(
        wait_for(&dir.path().join("hup"), Duration::from_secs(10)),
        "no SIGHUP arrived"
    );

    // Without --config, and the pid file from the environment.
    std::fs::remove_file(dir.path().join("hup")).unwrap();
    let out = Command::new(BIN)
        .arg("reload")
        .env("MAILHOP_PID_FILE", &pid_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(wait_for(&dir.path().join("hup"), Duration::from_secs(10)));

    // Not permitted: another user may not signal it.
    if is_root() && have("setpriv") {
        let unprivileged = |args: &[&str]| {
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
                .args(args)
                .output()
                .unwrap()
        };
        // Only where user nobody can run the binary and read the pid file.
        let mode = |p: &Path, m: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        mode(dir.path(), 0o755);
        if unprivileged(&["--version"]).status.success() {
            let out = unprivileged(&["reload", "--pid-file", pid_arg]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(err.contains("not permitted to signal mailhop"), "{err}");
        } else {
            skip("reload not permitted", "user nobody cannot run the binary");
        }
    }
    assert!(fake.child.id() == pid);
}

#[test]
fn reload_refuses_a_missing_stale_or_foreign_pid_file() {
    let dir = tempdir();
    let pid_file = dir.path().join("mailhop.pid");
    let pid_arg = pid_file.to_str().unwrap();

    // No pid file named at all: a usage error.
    let (code, _, err) = reload(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--pid-file") && err.contains("MAILHOP_PID_FILE"),
        "{err}"
    );

    // The file does not exist.
    let (code, _, err) = reload(&["--pid-file", pid_arg]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no pid file") && err.contains(pid_arg),
        "{err}"
    );

    // It holds no number.
    std::fs::write(&pid_file, "mailhop\n").unwrap();
    let (code, _, err) = reload(&["--pid-file", pid_arg]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot read the pid file"), "{err}");

    // Its process is gone.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(&pid_file, format!("{gone_pid}\n")).unwrap();
    let (code, _, err) = reload(&["--pid-file", pid_arg]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("stale pid file") && err.contains(&format!("no process {gone_pid}")),
        "{err}"
    );

    // Its process is not a mailhop: not signalled (a sleep would die of it).
    let mut sleeper = Running(
        Command::new("sleep")
            .arg("30")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::fs::write(&pid_file, format!("{}\n", sleeper.id())).unwrap();
    let (code, _, err) = reload(&["--pid-file", pid_arg]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not mailhop") && err.contains("sleep"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "the sleep was signalled"
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}
