//! The pid file of `serve --pid-file PATH`, and what `mailhop reload` reads.
//!
//! Written atomically (a temporary file beside it, then a rename), so a
//! reader never sees half a number. A file naming a running mailhop stops a
//! second one from starting; a stale one (its process gone, or not a
//! mailhop) is replaced. Removed on a clean exit, unless another process has
//! replaced it meanwhile.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What a process ID from a pid file is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Process {
    /// No such process (or a zombie: exited, not yet reaped).
    Gone,
    /// A running mailhop: its command name is `mailhop`, or its argv\[0]
    /// ends in `/mailhop`.
    Mailhop,
    /// A running process that is something else; its command name.
    Other(String),
    /// Running, but `/proc` does not say what it is (hidden or unmounted).
    Unknown,
}

/// Looks at process `pid`: `kill(pid, 0)`, then `/proc/<pid>`.
pub fn process(pid: u32) -> Process {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return Process::Gone;
    };
    if raw <= 0 {
        return Process::Gone;
    }
    // SAFETY: kill(2) with signal 0 sends nothing; it only checks.
    if unsafe { libc::kill(raw, 0) } != 0
        && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
        return Process::Gone;
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) {
        // `pid (comm) S ...`: the state follows the last `)`.
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        if state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X')) {
            return Process::Gone;
        }
    }
    let comm = fs::read_to_string(proc_dir.join("comm")).ok();
    let comm = comm.as_deref().map(|c| c.trim_end_matches('\n'));
    let cmdline = fs::read(proc_dir.join("cmdline")).ok();
    let argv0 = cmdline
        .as_deref()
        .and_then(|c| c.split(|&b| b == 0).next())
        .map(|a| String::from_utf8_lossy(a).into_owned());
    match (comm, argv0) {
        (None, None) => Process::Unknown,
        (comm, argv0) => {
            let argv0_is = argv0
                .as_deref()
                .is_some_and(|a| a.rsplit('/').next() == Some("mailhop"));
            if comm == Some("mailhop") || argv0_is {
                Process::Mailhop
            } else {
                Process::Other(comm.map_or_else(|| argv0.unwrap_or_default(), str::to_string))
            }
        }
    }
}

/// The process ID in a pid file. `InvalidData` when it holds no such
/// number.
pub fn read(path: &Path) -> io::Result<u32> {
    let text = fs::read_to_string(path)?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|&pid| pid > 0 && libc::pid_t::try_from(pid).is_ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{:?} is not a process ID", text.trim()),
            )
        })
}

/// Why the pid file could not be made.
#[derive(Debug)]
pub enum Error {
    /// The file names a mailhop that is running.
    Running {
        path: PathBuf,
        pid: u32,
    },
    Io {
        path: PathBuf,
        error: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Running { path, pid } => write!(
                f,
                "pid file {}: mailhop is already running as pid {pid}; stop it first, or give this one another --pid-file",
                path.display()
            ),
            Error::Io { path, error } => write!(f, "pid file {}: {error}", path.display()),
        }
    }
}

impl std::error::Error for Error {}

/// This process's pid file; removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Writes this process's ID to `path`, unless it names a running
    /// mailhop.
    pub fn create(path: &Path) -> Result<PidFile, Error> {
        let own = std::process::id();
        let io_error = |error| Error::Io {
            path: path.to_path_buf(),
            error,
        };
        match read(path) {
            Ok(pid) if pid == own => {}
            Ok(pid) => match process(pid) {
                Process::Mailhop => {
                    return Err(Error::Running {
                        path: path.to_path_buf(),
                        pid,
                    })
                }
                Process::Gone => log::info!(
                    "pid file {}: replacing it, pid {pid} is gone",
                    path.display()
                ),
                Process::Other(name) => log::info!(
                    "pid file {}: replacing it, pid {pid} is not mailhop but {name}",
                    path.display()
                ),
                Process::Unknown => log::warn!(
                    "pid file {}: replacing it, cannot tell what pid {pid} is",
                    path.display()
                ),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                log::warn!("pid file {}: replacing it, {e}", path.display())
            }
            Err(e) => return Err(io_error(e)),
        }
        write_atomically(path, &format!("{own}\n")).map_err(io_error)?;
        Ok(PidFile {
            path: path.to_path_buf(),
            pid: own,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Someone else's by now (a newer mailhop replaced a file it found
        // stale): theirs to remove.
        if read(&self.path).ok() != Some(self.pid) {
            return;
        }
        if let Err(e) = fs::remove_file(&self.path) {
            log::warn!("pid file {}: cannot remove it: {e}", self.path.display());
        }
    }
}

/// A temporary file in the same folder, renamed over `path`. No fsync: a
/// pid file means nothing after a crash of the machine (and lives in
/// `/run`, a tmpfs, as a rule).
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut temporary = std::ffi::OsString::from(".");
    temporary.push(name);
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = path.with_file_name(temporary);
    fs::write(&temporary, text)?;
    fs::rename(&temporary, path).inspect_err(|_| {
        let _ = fs::remove_file(&temporary);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_writes_the_pid_and_drop_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailhop.pid");
        let file = PidFile::create(&path).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(read(&path).unwrap(), std::process::id());
        drop(file);
        assert!(!path.exists());
        // Nothing left beside it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn stale_and_garbled_files_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailhop.pid");
        // A process that has exited and been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        // This test process: alive, but not a mailhop.
        let other = std::process::id();
        for text in [format!("{gone}\n"), "garbage".to_string(), String::new()] {
            fs::write(&path, text).unwrap();
            let file = PidFile::create(&path).unwrap();
            assert_eq!(read(&path).unwrap(), other);
            drop(file);
        }
    }

    #[test]
    fn drop_leaves_a_file_another_process_has_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailhop.pid");
        let file = PidFile::create(&path).unwrap();
        fs::write(&path, "1\n").unwrap();
        drop(file);
        assert_eq!(fs::read_to_string(&path).unwrap(), "1\n");
    }

    #[test]
    fn read_wants_one_positive_process_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        for (text, ok) in [
            ("42\n", Some(42)),
            (" 42 ", Some(42)),
            ("0\n", None),
            ("-1\n", None),
            ("4294967295\n", None),
            ("42 43\n", None),
            ("", None),
        ] {
            fs::write(&path, text).unwrap();
            assert_eq!(read(&path).ok(), ok, "{text:?}");
        }
        let missing = read(&dir.path().join("none")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn process_tells_gone_from_other() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(process(pid), Process::Gone);
        assert_eq!(process(0), Process::Gone);
        assert!(matches!(process(std::process::id()), Process::Other(_)));
    }

    #[test]
    fn a_zombie_counts_as_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited but not reaped until `wait`.
        let start = std::time::Instant::now();
        while process(pid) != Process::Gone {
            assert!(start.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
    }
}
