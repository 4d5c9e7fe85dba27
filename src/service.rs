//! Telling the service manager how the relay is doing: systemd's notify
//! protocol (`sd_notify(3)`), which `Type=notify` units wait on. One
//! datagram of `KEY=value` lines to the unix socket named by
//! `$NOTIFY_SOCKET`: a path, or an abstract name when it starts with `@`.
//!
//! Hand-written rather than the `sd-notify` crate: its `notify` sends with a
//! blocking socket and takes `@name` for a file name; here the send never
//! blocks the event loop and abstract names work. Everything is a no-op when
//! `NOTIFY_SOCKET` is unset (not run by a manager), and the environment is
//! left as it is.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A failed notification is logged once; the manager's own timeout tells
/// the rest.
static WARNED: AtomicBool = AtomicBool::new(false);

/// Start-up is done: every listener is bound. Also sent again once a
/// reload is done (after [`reloading`]).
pub fn ready() {
    // The loop gathers log lines per turn: the `listening on` lines go out
    // before the manager hears that the relay is up.
    crate::logbuf::flush();
    notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS=accepting mail\n",
        std::process::id()
    ));
}

/// A reload has begun; [`ready`] ends it. systemd 253 and newer want the
/// monotonic time beside `RELOADING=1` (`Type=notify-reload`); older ones
/// ignore it.
pub fn reloading() {
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration\n",
        monotonic_usec()
    ));
}

/// Shutdown has begun.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=shutting down\n");
}

fn notify(message: &str) {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    if let Err(e) = send(&socket, message.as_bytes()) {
        if !WARNED.swap(true, Ordering::Relaxed) {
            log::warn!(
                "cannot notify the service manager at {}: {e}",
                socket.to_string_lossy()
            );
        }
    }
}

/// One datagram to `socket` (`/path` or `@abstract`), without blocking: a
/// manager that does not read is its own problem, not the loop's.
fn send(socket: &OsStr, message: &[u8]) -> io::Result<()> {
    let name = socket.as_bytes();
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    let sent = match name.first() {
        Some(b'/') => sock.send_to(message, Path::new(socket))?,
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name[1..])?;
            sock.send_to_addr(message, &addr)?
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor an abstract name (@...)",
            ))
        }
    };
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the notification was cut short",
        ));
    }
    Ok(())
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares with.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes into a valid local struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::time::Duration;

    fn received(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn a_datagram_reaches_a_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), b"READY=1\n").unwrap();
        assert_eq!(received(&sock), "READY=1\n");
    }

    #[test]
    fn a_datagram_reaches_an_abstract_name() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("mailhop-test-{}-{}", std::process::id(), monotonic_usec());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        send(&OsString::from(format!("@{name}")), b"STOPPING=1\n").unwrap();
        assert_eq!(received(&sock), "STOPPING=1\n");
    }

    #[test]
    fn a_relative_name_or_nobody_listening_is_an_error_not_a_hang() {
        assert!(send(OsStr::new("notify"), b"READY=1\n").is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(send(dir.path().join("none").as_os_str(), b"READY=1\n").is_err());
    }

    #[test]
    fn a_full_receiver_does_not_block_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let _sock = UnixDatagram::bind(&path).unwrap();
        let big = vec![b'x'; 16 * 1024];
        // Nobody reads: the receive queue fills, then sends fail at once.
        let failed = (0..10_000).any(|_| send(path.as_os_str(), &big).is_err());
        assert!(failed);
    }

    #[test]
    fn the_monotonic_clock_moves_on() {
        let a = monotonic_usec();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_usec() > a);
    }
}
