//! Local delivery to Maildir (SPEC section 7): write into `tmp`, fsync,
//! rename into `new`.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use memchr::memchr;

/// Part of every file name, so two deliveries in the same microsecond
/// by this process still get different names.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Delivers one message to `<root>/<user>/new`, creating `tmp`, `new` and
/// `cur` as needed. `user` is the lowercased mailbox name (checked here to
/// be a safe single path component). The file starts with
/// `Return-Path: <reverse_path>` and `Delivered-To: <delivered_to>`, then the
/// stored message with its CRLF line ends turned into LF, as Maildir readers
/// expect. The file name is unique (`<secs>.M<micros>P<pid>Q<seq>.<hostname>`).
/// After the rename the `new` folder is fsynced too. Returns the final path.
///
/// `return_path` is the reverse-path without angle brackets (`""` for the
/// null sender; one pair of brackets is tolerated). A bare CR (not followed
/// by LF) becomes LF, like the inbound `Normalize` setting, so the file never
/// holds a CR at all. Header values with CR, LF or NUL are refused with
/// `InvalidInput` rather than written as extra header lines.
pub fn deliver(
    root: &Path,
    user: &str,
    return_path: &str,
    delivered_to: &str,
    message: &[u8],
    hostname: &str,
    now: SystemTime,
) -> io::Result<PathBuf> {
    let mut whole = Some(message);
    deliver_pieces(
        root,
        user,
        return_path,
        delivered_to,
        &mut whole,
        hostname,
        now,
    )
}

/// A message read piece by piece (from the queue), so delivering a big one
/// never holds it whole.
pub trait Pieces {
    /// Puts the next piece in `buf` (replacing what was there); false once
    /// there are no more.
    fn next_piece(&mut self, buf: &mut Vec<u8>) -> io::Result<bool>;
}

/// A message in memory: one piece.
impl Pieces for Option<&[u8]> {
    fn next_piece(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        buf.clear();
        match self.take() {
            Some(bytes) => {
                buf.extend_from_slice(bytes);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// As [`deliver`], with the message copied into the file piece by piece.
pub fn deliver_pieces(
    root: &Path,
    user: &str,
    return_path: &str,
    delivered_to: &str,
    message: &mut impl Pieces,
    hostname: &str,
    now: SystemTime,
) -> io::Result<PathBuf> {
    check_user(user)?;
    let return_path = return_path
        .strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .unwrap_or(return_path);
    for value in [return_path, delivered_to] {
        if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(invalid("header value with CR, LF or NUL"));
        }
    }

    let dir = root.join(user);
    let (tmp_dir, new_dir) = make_dirs(&dir)?;

    let name = unique_name(now, hostname);
    let tmp = tmp_dir.join(&name);
    let new = new_dir.join(&name);

    write_then_rename(&tmp, &new, return_path, delivered_to, message)?;
    // Without this the rename may not survive a crash, yet we would have
    // said delivered. If it fails, take the file back out so the retry the
    // caller schedules does not deliver it twice.
    if let Err(e) = File::open(&new_dir).and_then(|d| d.sync_all()) {
        let _ = fs::remove_file(&new);
        return Err(e);
    }
    Ok(new)
}

/// Creates `tmp` (never overwriting), writes and fsyncs it, renames it to
/// `new`; on any error the tmp file is removed.
fn write_then_rename(
    tmp: &Path,
    new: &Path,
    return_path: &str,
    delivered_to: &str,
    message: &mut impl Pieces,
) -> io::Result<()> {
    let written = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)?;
        let mut w = BufWriter::new(file);
        write!(
            w,
            "Return-Path: <{return_path}>\nDelivered-To: {delivered_to}\n"
        )?;
        let mut piece = Vec::new();
        let mut lf = LineEnds::default();
        while message.next_piece(&mut piece)? {
            lf.write(&mut w, &piece)?;
        }
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(tmp, new)
    })();
    if written.is_err() {
        let _ = fs::remove_file(tmp);
    }
    written
}

/// One path component that stays inside `root` and is not a hidden
/// (dot) folder, which Maildir++ uses for subfolders.
fn check_user(user: &str) -> io::Result<()> {
    if user.is_empty() || user.starts_with('.') || user.contains(['/', '\0']) {
        return Err(invalid("unsafe Maildir user name"));
    }
    Ok(())
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why)
}

/// Creates the three folders if `tmp` or `new` is missing, fsyncing the
/// parents of what was created so a later delivery is not lost with them.
fn make_dirs(dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let tmp = dir.join("tmp");
    let new = dir.join("new");
    if tmp.is_dir() && new.is_dir() {
        return Ok((tmp, new));
    }
    let dir_existed = dir.is_dir();
    let mut builder = DirBuilder::new();
    builder.recursive(true).mode(0o700);
    for sub in ["tmp", "new", "cur"] {
        builder.create(dir.join(sub))?;
    }
    File::open(dir)?.sync_all()?;
    if !dir_existed {
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
    }
    Ok((tmp, new))
}

/// `<secs>.M<micros>P<pid>Q<seq>.<host>` (the Maildir naming of qmail and
/// Dovecot), with `/` and `:` in the host escaped as Maildir asks.
fn unique_name(now: SystemTime, hostname: &str) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut host = String::with_capacity(hostname.len());
    for c in hostname.chars() {
        match c {
            '/' => host.push_str("\\057"),
            ':' => host.push_str("\\072"),
            '\0' => {}
            c => host.push(c),
        }
    }
    format!(
        "{}.M{}P{}Q{}.{}",
        since.as_secs(),
        since.subsec_micros(),
        std::process::id(),
        seq,
        host
    )
}

/// Copies a message with CRLF and bare CR both written as LF, in pieces
/// cut anywhere: a CR that ends a piece has been written as LF, and an LF
/// that begins the next is then its pair, not a line of its own.
#[derive(Debug, Default)]
struct LineEnds {
    after_cr: bool,
}

impl LineEnds {
    fn write(&mut self, w: &mut impl Write, mut rest: &[u8]) -> io::Result<()> {
        if std::mem::take(&mut self.after_cr) && rest.first() == Some(&b'\n') {
            rest = &rest[1..];
        }
        while let Some(i) = memchr(b'\r', rest) {
            w.write_all(&rest[..i])?;
            w.write_all(b"\n")?;
            match rest.get(i + 1) {
                Some(b'\n') => rest = &rest[i + 2..],
                Some(_) => rest = &rest[i + 1..],
                None => {
                    self.after_cr = true;
                    return Ok(());
                }
            }
        }
        w.write_all(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    const HOST: &str = "mx.example";

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456)
    }

    #[test]
    fn delivers_two_messages_readable_by_python() {
        let root = tempfile::tempdir().unwrap();
        let m1 = b"Subject: one\r\nFrom: a@b.example\r\n\r\nHello\r\nworld\r\n";
        let m2 = b"Subject: two\r\n\r\nSecond body\r\n";
        let p1 = deliver(
            root.path(),
            "jones",
            "a@b.example",
            "jones@mx.example",
            m1,
            HOST,
            t0(),
        )
        .unwrap();
        let p2 = deliver(root.path(), "jones", "", "jones@mx.example", m2, HOST, t0()).unwrap();
        assert_ne!(p1, p2);
        assert_eq!(p1.parent().unwrap(), root.path().join("jones/new"));
        for sub in ["tmp", "new", "cur"] {
            assert!(root.path().join("jones").join(sub).is_dir());
        }
        assert_eq!(
            fs::read_dir(root.path().join("jones/tmp")).unwrap().count(),
            0
        );
        assert_eq!(
            fs::read_dir(root.path().join("jones/new")).unwrap().count(),
            2
        );

        let c1 = fs::read(&p1).unwrap();
        assert!(!c1.contains(&b'\r'));
        assert_eq!(
            c1,
            b"Return-Path: <a@b.example>\nDelivered-To: jones@mx.example\n\
              Subject: one\nFrom: a@b.example\n\nHello\nworld\n"
        );
        let c2 = fs::read(&p2).unwrap();
        assert!(c2.starts_with(b"Return-Path: <>\n"));

        let script = r#"
import mailbox, sys
md = mailbox.Maildir(sys.argv[1], create=False)
msgs = sorted((m['Subject'], m) for m in md)
for subj, m in msgs:
    print(subj, '|', m['Return-Path'], '|', m['Delivered-To'], '|', repr(m.get_payload()))
"#;
        let Some(out) = python(script, &root.path().join("jones")) else {
            return;
        };
        assert_eq!(
            out,
            "one | <a@b.example> | jones@mx.example | 'Hello\\nworld\\n'\n\
             two | <> | jones@mx.example | 'Second body\\n'\n"
        );
    }

    /// Runs `python3 -c script dir`; `None` (and a note) if there is no python3.
    fn python(script: &str, dir: &Path) -> Option<String> {
        let out = match Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(dir)
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                eprintln!("skipping the Python check: python3: {e}");
                return None;
            }
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(String::from_utf8(out.stdout).unwrap())
    }

    #[test]
    fn names_are_unique_and_escaped() {
        let root = tempfile::tempdir().unwrap();
        let mut names = std::collections::HashSet::new();
        for _ in 0..50 {
            let p = deliver(
                root.path(),
                "jones",
                "a@b",
                "jones@x",
                b"x\r\n",
                "h/o:st",
                t0(),
            )
            .unwrap();
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            assert!(name.starts_with("1700000000.M123456P"), "{name}");
            assert!(name.ends_with(".h\\057o\\072st"), "{name}");
            assert!(names.insert(name));
        }
        assert_eq!(
            fs::read_dir(root.path().join("jones/tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn unsafe_user_names_are_refused() {
        let root = tempfile::tempdir().unwrap();
        for user in ["", ".", "..", ".hidden", "a/b", "/abs", "a\0b", "../x"] {
            let err = deliver(root.path(), user, "a@b", "x@y", b"x\r\n", HOST, t0()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{user:?}");
        }
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn header_injection_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let err =
            deliver(root.path(), "jones", "a@b\r\nX: y", "x@y", b"x", HOST, t0()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn no_cr_survives() {
        let root = tempfile::tempdir().unwrap();
        let msg = b"A: 1\r\r\nB: 2\r\n\r\nx\ry\r\n\r";
        let p = deliver(root.path(), "jones", "<a@b>", "x@y", msg, HOST, t0()).unwrap();
        let c = fs::read(p).unwrap();
        assert_eq!(
            c,
            b"Return-Path: <a@b>\nDelivered-To: x@y\nA: 1\n\nB: 2\n\nx\ny\n\n"
        );
    }

    #[test]
    fn error_leaves_no_tmp_file() {
        let root = tempfile::tempdir().unwrap();
        let (tmp_dir, _) = make_dirs(&root.path().join("jones")).unwrap();
        let tmp = tmp_dir.join("x");
        let missing = root.path().join("nowhere/x");
        assert!(write_then_rename(&tmp, &missing, "a@b", "x@y", &mut Some(&b"x"[..])).is_err());
        assert_eq!(fs::read_dir(&tmp_dir).unwrap().count(), 0);
    }
}
