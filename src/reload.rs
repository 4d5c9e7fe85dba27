//! `mailhop reload`: check the config first (as `nginx -t` does), then
//! send SIGHUP to the mailhop named by the pid file.

use std::fmt;
use std::io;
use std::path::Path;

use crate::config::Config;
use crate::pidfile::{self, Process};

/// Why no signal was sent.
#[derive(Debug)]
pub enum Refused {
    /// The config (or a file it names) is invalid; exit code 2.
    Config(String),
    /// No pid file was named; exit code 2.
    Usage(String),
    /// Anything else (no pid file, stale pid, no permission); exit code 1.
    Failed(String),
}

impl Refused {
    pub fn exit_code(&self) -> u8 {
        match self {
            Refused::Config(_) | Refused::Usage(_) => 2,
            Refused::Failed(_) => 1,
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Config(e) => write!(f, "reload: not sent, the config is invalid: {e}"),
            Refused::Usage(e) | Refused::Failed(e) => write!(f, "reload: {e}"),
        }
    }
}

/// Checks `config` when given, then signals the mailhop in `pid_file`
/// (else the config's `pid_file`). Returns the pid signalled.
pub fn reload(config: Option<&Path>, pid_file: Option<&Path>) -> Result<u32, Refused> {
    let configured = match config {
        Some(file) => check(file)?.pid_file,
        None => None,
    };
    let Some(path) = pid_file.map(Path::to_path_buf).or(configured) else {
        return Err(Refused::Usage(
            "which mailhop? give --pid-file PATH (as given to `serve`), set MAILHOP_PID_FILE, \
             or name a --config whose pid_file is set"
                .into(),
        ));
    };
    let shown = path.display();
    let pid = pidfile::read(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Refused::Failed(format!(
            "no pid file {shown}: is `mailhop serve --pid-file {shown}` running?"
        )),
        _ => Refused::Failed(format!("cannot read the pid file {shown}: {e}")),
    })?;
    match pidfile::process(pid) {
        Process::Mailhop => {}
        Process::Gone => {
            return Err(Refused::Failed(format!(
                "stale pid file {shown}: no process {pid} is running"
            )))
        }
        Process::Other(name) => {
            return Err(Refused::Failed(format!(
                "stale pid file {shown}: pid {pid} is {name:?}, not mailhop; not signalled"
            )))
        }
        Process::Unknown => {
            return Err(Refused::Failed(format!(
                "pid file {shown}: cannot tell whether pid {pid} is mailhop (/proc/{pid} is not readable); not signalled"
            )))
        }
    }
    // `pidfile::read` only returns IDs that fit a pid_t.
    let raw = pid as libc::pid_t;
    // SAFETY: kill(2) on a positive pid just checked to be a mailhop.
    if unsafe { libc::kill(raw, libc::SIGHUP) } != 0 {
        let e = io::Error::last_os_error();
        return Err(Refused::Failed(match e.raw_os_error() {
            Some(libc::EPERM) => format!(
                "not permitted to signal mailhop (pid {pid}): run this as its user or as root"
            ),
            Some(libc::ESRCH) => format!("mailhop (pid {pid}) exited just now"),
            _ => format!("cannot signal mailhop (pid {pid}): {e}"),
        }));
    }
    Ok(pid)
}

/// What `serve` would refuse to start with: the config, and the files it
/// names that are read at start-up (TLS certificate and key, users file).
fn check(file: &Path) -> Result<Config, Refused> {
    let config = Config::load(Some(file)).map_err(|e| Refused::Config(e.to_string()))?;
    let origin = file.display();
    crate::tls::load(&config).map_err(|e| Refused::Config(format!("{origin}: {e}")))?;
    if let Some(users) = &config.auth_users_file {
        crate::auth::Users::load(users)
            .map_err(|e| Refused::Config(format!("{origin}: auth.users_file: {e}")))?;
    }
    Ok(config)
}
