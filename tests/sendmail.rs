//! `mailhop sendmail` end to end: the real binary (as `mailhop sendmail`
//! and through a `sendmail` symlink), real queue files read back with
//! SQLite, real bytes, and a running `serve` that sends what sendmail
//! queued on to an in-test sink. Loopback only; every child is bounded.

mod common;

use std::io::{BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sink::Sink;
use common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// A folder with a config (`queue.db` beside it) and the queue file, made
/// the way `serve` makes it.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new(extra: &str) -> Setup {
        let dir = tempdir();
        let config = dir.path().join("mailhop.toml");
        std::fs::write(
            &config,
            format!("hostname = \"host.test\"\nqueue = \"queue.db\"\nrelay_networks = []\n{extra}"),
        )
        .unwrap();
        drop(mailhop::queue::Queue::open(&dir.path().join("queue.db")).unwrap());
        Setup { dir, config }
    }

    fn queue(&self) -> PathBuf {
        self.dir.path().join("queue.db")
    }

    /// `mailhop sendmail -C <config> ARGS`, in the setup's folder, with
    /// nothing from the environment that could change what it does.
    fn sendmail(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("sendmail")
            .arg("-C")
            .arg(&self.config)
            .args(args)
            .env_remove("MAILHOP_CONFIG")
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path());
        cmd
    }
}

/// What a finished sendmail left.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// Peak RSS of the process, from wait4(2).
    max_rss_kb: i64,
}

/// Runs `cmd` with `input` on its stdin, bounded by `LIMIT`.
fn run(mut cmd: Command, input: &[u8]) -> Ran {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start sendmail");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // A sendmail that gives up early closes its stdin: EPIPE is fine.
    let writer = std::thread::spawn(move || drop(stdin.write_all(&input)));
    let stdout = read_all(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());
    let (status, max_rss_kb) = wait4_bounded(&mut child, LIMIT);
    writer.join().unwrap();
    Ran {
        status,
        stdout: String::from_utf8_lossy(&stdout.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.join().unwrap()).into_owned(),
        max_rss_kb,
    }
}

fn read_all(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = from.read_to_end(&mut all);
        all
    })
}

/// Waits for our child with wait4(2), for its peak RSS; kills it past `limit`.
fn wait4_bounded(child: &mut Child, limit: Duration) -> (ExitStatus, i64) {
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: zeroed rusage is valid; wait4 on our own child's pid.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let got = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if got == pid {
            return (ExitStatus::from_raw(status), usage.ru_maxrss);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sendmail did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[track_caller]
fn assert_ok(ran: &Ran) {
    assert!(
        ran.status.success(),
        "{:?}\nstdout: {}\nstderr: {}",
        ran.status,
        ran.stdout,
        ran.stderr
    );
    assert_eq!(
        (ran.stdout.as_str(), ran.stderr.as_str()),
        ("", ""),
        "sendmail says nothing on success"
    );
}

/// IDs of every message in the queue file.
fn message_ids(queue: &Path) -> Vec<String> {
    rows(&open_queue(queue), "SELECT id FROM messages ORDER BY id")
}

#[track_caller]
fn only_message(queue: &Path) -> String {
    let ids = message_ids(queue);
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

/// A stored message as delivery reads it: its pieces, then its row's body.
fn stored(queue: &Path, id: &str) -> Vec<u8> {
    let conn = open_queue(queue);
    let mut body = Vec::new();
    let mut pieces = conn
        .prepare("SELECT data FROM body_chunks WHERE message_id = ?1 ORDER BY seq")
        .unwrap();
    for piece in pieces.query_map([id], |r| r.get::<_, Vec<u8>>(0)).unwrap() {
        body.extend(piece.unwrap());
    }
    let rest: Vec<u8> = conn
        .query_row("SELECT body FROM messages WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    body.extend(rest);
    body
}

fn count(queue: &Path, table: &str) -> i64 {
    open_queue(queue)
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// LF line ends made CRLF, as the queue stores them.
fn crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 20);
    for &b in data {
        if b == b'\n' && out.last() != Some(&b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// The login name of the user running the tests, as sendmail finds it.
fn login() -> (u32, String) {
    let user = mailhop::sendmail::user::current();
    (user.uid, user.name)
}

fn header_names(message: &str) -> Vec<&str> {
    message
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with([' ', '\t']))
        .map(|l| l.split(':').next().unwrap())
        .collect()
}

/// (1) `-t -i`: recipients from To, Cc and Bcc, the Bcc field gone, Date,
/// Message-ID and From added, the rows in the `queue` view; a lone dot is
/// text with `-i`.
#[test]
fn dash_t_reads_recipients_drops_bcc_and_adds_the_missing_fields() {
    let setup = Setup::new(
        "[routes]\n\"one.test\" = \"127.0.0.1:2601\"\n\"two.test\" = \"127.0.0.1:2602\"\n",
    );
    let input = b"To: Ann <ann@one.test>, bob@two.test\nCc: \"Carl, C.\" <carl@three.test>\nBcc: secret@four.test,\n  hidden@one.test\nSubject: report\n\nfirst line\n.\nafter the dot\n";
    let ran = run(setup.sendmail(&["-t", "-i"]), input);
    assert_ok(&ran);
    let id = only_message(&setup.queue());
    let queue = open_queue(&setup.queue());
    let (uid, name) = login();
    assert_eq!(
        rows(
            &queue,
            &format!("SELECT recipient, next_hop, status, sender FROM queue WHERE id = '{id}' ORDER BY recipient")
        ),
        [
            format!("ann@one.test|127.0.0.1:2601|queued|{name}@host.test"),
            format!("bob@two.test|127.0.0.1:2602|queued|{name}@host.test"),
            format!("carl@three.test|three.test|queued|{name}@host.test"),
            format!("hidden@one.test|127.0.0.1:2601|queued|{name}@host.test"),
            format!("secret@four.test|four.test|queued|{name}@host.test"),
        ]
    );
    let body = stored(&setup.queue(), &id);
    let size: Vec<String> = rows(
        &queue,
        &format!("SELECT DISTINCT size FROM queue WHERE id = '{id}'"),
    );
    assert_eq!(size, [body.len().to_string()]);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.starts_with(&format!(
            "Received: by host.test (mailhop sendmail, from userid {uid} ({name})) id {id}; "
        )),
        "{text}"
    );
    assert_eq!(
        header_names(&text),
        [
            "Received",
            "Date",
            "Message-ID",
            "From",
            "To",
            "Cc",
            "Subject"
        ],
        "{text}"
    );
    assert!(!text.contains("Bcc") && !text.contains("secret") && !text.contains("hidden"));
    let date = text.lines().find_map(|l| l.strip_prefix("Date: ")).unwrap();
    chrono::DateTime::parse_from_rfc2822(date.trim_end()).expect("an RFC 5322 date");
    assert!(text.contains("\r\nMessage-ID: <") && text.contains(&format!(".{id}@host.test>\r\n")));
    assert!(text.contains(&format!("<{name}@host.test>\r\n")), "{text}");
    assert!(text.ends_with(
        "\r\nTo: Ann <ann@one.test>, bob@two.test\r\nCc: \"Carl, C.\" <carl@three.test>\r\nSubject: report\r\n\r\nfirst line\r\n.\r\nafter the dot\r\n"
    ), "{text}");
    assert!(
        !text.replace("\r\n", "").contains('\n'),
        "only CRLF line ends"
    );
}

/// (2) A running `serve` on the same queue sends what sendmail queued, and
/// the next hop gets the bytes that were stored.
#[test]
fn a_running_serve_delivers_what_sendmail_queued() {
    let sink = Sink::start();
    let dir = tempdir();
    let mut serve = start_in(
        dir.path(),
        &format!(
            "hostname = \"host.test\"\nrelay_networks = []\n[routes]\n\"sink.test\" = \"{}\"\n",
            sink.addr
        ),
    );
    let setup = Setup {
        config: dir.path().join("mailhop.toml"),
        dir,
    };
    let input = "Subject: from cron\nFrom: Cron Daemon <root@host.test>\n\n.leading dot\ncafé 8-bit\nlast\n";
    let ran = run(
        setup.sendmail(&["-i", "-f", "cron@host.test", "ops@sink.test"]),
        input.as_bytes(),
    );
    assert_ok(&ran);
    let id = only_message(&setup.queue());
    let want = stored(&setup.queue(), &id);
    let got = sink.wait_for(1, Duration::from_secs(20));
    let [delivered] = got.as_slice() else {
        panic!("{} delivered:\n{}", got.len(), serve.log());
    };
    assert!(
        delivered.mail_from.starts_with("<cron@host.test>"),
        "{}",
        delivered.mail_from
    );
    assert!(
        delivered.mail_from.contains("BODY=8BITMIME"),
        "{}",
        delivered.mail_from
    );
    assert_eq!(delivered.rcpt_to.len(), 1);
    assert!(delivered.rcpt_to[0].starts_with("<ops@sink.test>"));
    assert_eq!(delivered.data, want, "the next hop gets the stored bytes");
    assert!(want.ends_with(&crlf(
        b"Subject: from cron\nFrom: Cron Daemon <root@host.test>\n\n.leading dot\ncaf\xc3\xa9 8-bit\nlast\n"
    )));
    let start = Instant::now();
    while count(&setup.queue(), "queue") > 0 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        rows(
            &open_queue(&setup.queue()),
            "SELECT id, status FROM deliveries"
        ),
        [format!("{id}|delivered")]
    );
    serve.signal(libc::SIGTERM);
}

/// Kills a child if the test has not finished with it in time.
struct Watchdog(Arc<Mutex<Option<Child>>>);

impl Watchdog {
    fn new(child: Child, limit: Duration) -> Watchdog {
        let child = Arc::new(Mutex::new(Some(child)));
        let held = Arc::downgrade(&child);
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(50));
                if held.strong_count() == 0 {
                    return;
                }
            }
            if let Some(child) = held.upgrade() {
                if let Some(child) = child.lock().unwrap().as_mut() {
                    let _ = child.kill();
                }
            }
        });
        Watchdog(child)
    }

    fn wait(self) -> ExitStatus {
        let mut child = self.0.lock().unwrap().take().unwrap();
        wait_bounded(&mut child, LIMIT).expect("sendmail -bs exits")
    }
}

/// (3) `-bs`: the server's own SMTP machine on stdin/stdout; the 250
/// comes with the queue ID once the message is committed.
#[test]
fn dash_bs_is_an_smtp_session_on_stdin_and_stdout() {
    let setup = Setup::new("");
    let mut child = setup
        .sendmail(&["-bs"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut to = child.stdin.take().unwrap();
    let mut from = BufReader::new(child.stdout.take().unwrap());
    let watchdog = Watchdog::new(child, LIMIT);
    assert_eq!(read_reply(&mut from), "220 host.test ESMTP mailhop");
    let mut cmd = |line: &str| {
        to.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        read_reply(&mut from)
    };
    let ehlo = cmd("EHLO me.local");
    expect(&ehlo, "250-host.test");
    assert!(ehlo.contains("\n250-PIPELINING\n"), "{ehlo}");
    expect(&cmd("MAIL FROM:<alice@host.test>"), "250 2.1.0");
    // relay_networks is empty: the local user relays all the same.
    expect(&cmd("RCPT TO:<far@remote.test>"), "250 2.1.5");
    expect(&cmd("DATA"), "354");
    let reply = cmd("Subject: over a pipe\r\n\r\n..stuffed\r\nbye\r\n.");
    let id = queued_id(&reply);
    // Committed before the 250 was written: the row is there already.
    assert_eq!(
        rows(
            &open_queue(&setup.queue()),
            &format!("SELECT sender, recipient, next_hop, status FROM queue WHERE id = '{id}'")
        ),
        ["alice@host.test|far@remote.test|remote.test|queued"]
    );
    let text = String::from_utf8(stored(&setup.queue(), &id)).unwrap();
    let (uid, _) = login();
    assert!(
        text.starts_with(&format!(
            "Received: from me.local ([127.0.0.1]) by host.test (mailhop sendmail -bs, userid {uid}) with ESMTP id {id} for <far@remote.test>; "
        )),
        "{text}"
    );
    assert!(
        text.ends_with("\r\nSubject: over a pipe\r\n\r\n.stuffed\r\nbye\r\n"),
        "{text}"
    );
    expect(&cmd("QUIT"), "221 2.0.0");
    drop(to);
    assert!(watchdog.wait().success());
}

/// (4) Through a symlink named `sendmail`, as cron and mutt run it: every
/// argument is sendmail's, the config comes from MAILHOP_CONFIG.
#[test]
fn a_symlink_named_sendmail_is_sendmail() {
    let setup = Setup::new("");
    let bin = setup.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("sendmail")).unwrap();
    let mut cmd = Command::new(bin.join("sendmail"));
    cmd.args(["-oem", "-oi", "-f", "a@b.example", "rcpt@c.example"])
        .env("MAILHOP_CONFIG", &setup.config)
        .env_remove("RUST_LOG")
        .current_dir("/");
    let ran = run(cmd, b"Subject: cron job\n\nout\n.\nstill out\n");
    assert_ok(&ran);
    let id = only_message(&setup.queue());
    assert_eq!(
        rows(
            &open_queue(&setup.queue()),
            &format!("SELECT sender, recipient, next_hop FROM queue WHERE id = '{id}'")
        ),
        ["a@b.example|rcpt@c.example|c.example"]
    );
    let text = String::from_utf8(stored(&setup.queue(), &id)).unwrap();
    assert!(
        text.contains(
            "\r\nFrom: a@b.example\r\nSubject: cron job\r\n\r\nout\r\n.\r\nstill out\r\n"
        ),
        "{text}"
    );
    // Not `mailhop`'s own command line: `serve` is a recipient here; the
    // DSN options are stored as the server stores RET, ENVID and NOTIFY.
    let mut cmd = Command::new(bin.join("sendmail"));
    cmd.args(["-C", setup.config.to_str().unwrap()])
        .args([
            "-N",
            "success,failure",
            "-R",
            "hdrs",
            "-V",
            "env-42",
            "serve",
        ])
        .env_remove("MAILHOP_CONFIG");
    assert_ok(&run(cmd, b"Subject: x\n\n"));
    assert_eq!(message_ids(&setup.queue()).len(), 2);
    let conn = open_queue(&setup.queue());
    assert_eq!(
        rows(
            &conn,
            "SELECT recipient, notify, envid, ret FROM dsn WHERE recipient LIKE 'serve@%'"
        ),
        ["serve@host.test|SUCCESS,FAILURE|env-42|HDRS"]
    );
    // An unknown option is a usage error, nothing queued.
    let mut cmd = Command::new(bin.join("sendmail"));
    cmd.args(["-C", setup.config.to_str().unwrap(), "-k", "r@c.example"]);
    let ran = run(cmd, b"x\n");
    assert_eq!(ran.status.code(), Some(64), "{}", ran.stderr);
    assert!(
        ran.stderr.starts_with("sendmail: unknown option -k"),
        "{}",
        ran.stderr
    );
    let ran = run(setup.sendmail(&["-i"]), b"Subject: x\n\n");
    assert_eq!(ran.status.code(), Some(64));
    assert!(
        ran.stderr.starts_with("sendmail: no recipients"),
        "{}",
        ran.stderr
    );
    assert_eq!(message_ids(&setup.queue()).len(), 2);
}

#[track_caller]
fn assert_tempfail(ran: &Ran, says: &str) {
    assert_eq!(
        ran.status.code(),
        Some(75),
        "{:?}: {}",
        ran.status,
        ran.stderr
    );
    assert!(
        ran.stderr
            .starts_with("sendmail: cannot queue the message: ")
            && ran.stderr.contains(says),
        "{}",
        ran.stderr
    );
}

/// (5) A queue that cannot take the message: exit 75, a clear message,
/// nothing of it written; also when it fails halfway through its pieces.
#[test]
fn an_unwritable_queue_is_a_temporary_failure_and_leaves_nothing() {
    let message = b"Subject: x\n\nbody\n".as_slice();
    // The folder is missing.
    let setup = Setup::new("");
    std::fs::write(
        &setup.config,
        "hostname = \"host.test\"\nqueue = \"missing/queue.db\"\n",
    )
    .unwrap();
    let ran = run(setup.sendmail(&["r@x.test"]), message);
    assert_tempfail(&ran, "folder");
    assert!(
        ran.stderr.contains("missing does not exist"),
        "{}",
        ran.stderr
    );
    assert!(!setup.dir.path().join("missing").exists());

    // No write permission (as root, run as nobody: root may write anyway).
    let setup = Setup::new("");
    let mut cmd = setup.sendmail(&["r@x.test"]);
    if is_root() {
        use std::os::unix::fs::PermissionsExt;
        let open = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(setup.dir.path(), open).unwrap();
        cmd.uid(65534).gid(65534);
    } else {
        use std::os::unix::fs::PermissionsExt;
        let read_only = std::fs::Permissions::from_mode(0o444);
        std::fs::set_permissions(setup.queue(), read_only).unwrap();
    }
    let ran = run(cmd, message);
    assert_tempfail(&ran, "permission denied");
    assert_eq!(count(&setup.queue(), "messages"), 0);

    // Locked by another process beyond the busy timeout.
    let setup = Setup::new("");
    let locker = rusqlite::Connection::open(setup.queue()).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let ran = run(setup.sendmail(&["r@x.test"]), message);
    assert_tempfail(&ran, "locked");
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    assert_eq!(count(&setup.queue(), "messages"), 0);

    // The disk fills up halfway through the message's pieces: a file size
    // limit a little above the message. Its spool (exactly the data, as
    // the input has CRLF line ends) fits; the queue's write-ahead log does
    // not, as it holds the data in 4 KiB pages of 4092 octets of it, each
    // with a 24-octet frame header (0.68%: 20 KB for 3 MB).
    let setup = Setup::new("");
    let spool = setup.dir.path().join("tmp");
    std::fs::create_dir(&spool).unwrap();
    let line = b"0123456789 the quick brown fox jumps over the lazy dog 0123456789\r\n";
    let big: Vec<u8> = [
        b"Subject: big\r\n\r\n".as_slice(),
        &line.repeat(3_000_000 / line.len()),
    ]
    .concat();
    let limit = big.len() as u64 + 10_000;
    let mut cmd = setup.sendmail(&["-i", "r@x.test"]);
    cmd.env("TMPDIR", &spool);
    // SAFETY: only setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let ran = run(cmd, &big);
    assert_eq!(ran.status.signal(), None, "not killed by SIGXFSZ");
    assert_tempfail(&ran, "");
    assert_eq!(count(&setup.queue(), "messages"), 0);
    assert_eq!(
        count(&setup.queue(), "body_chunks"),
        0,
        "no piece of it remains"
    );
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "no spool file left"
    );
    // The same message without the limit goes in (the limit was the cause).
    let mut cmd = setup.sendmail(&["-i", "r@x.test"]);
    cmd.env("TMPDIR", &spool);
    assert_ok(&run(cmd, &big));
    assert!(count(&setup.queue(), "body_chunks") > 0);
}

/// (6) 5 MB on stdin is stored whole and byte exact (CRLF line ends), in
/// pieces, without sendmail holding the message in memory.
#[test]
fn a_five_megabyte_message_is_stored_whole_in_bounded_memory() {
    let setup = Setup::new("max_message_size = 20000000\n");
    let mut input = b"Subject: big\nFrom: me@host.test\n\n".to_vec();
    let mut n = 0u64;
    while input.len() < 5_000_000 {
        n += 1;
        match n % 7 {
            0 => input.extend_from_slice(b".a line that starts with a dot\n"),
            1 => input.extend_from_slice(format!("line {n} with é in it\n").as_bytes()),
            2 => input.extend_from_slice(b"\n"),
            _ => input.extend_from_slice(
                format!("{n:08} Lorem ipsum dolor sit amet, consectetur adipiscing elit\n")
                    .as_bytes(),
            ),
        }
    }
    let small = run(
        setup.sendmail(&["-i", "r@x.test"]),
        b"Subject: small\n\nx\n",
    );
    assert_ok(&small);
    let ran = run(setup.sendmail(&["-i", "-v", "r@x.test"]), &input);
    assert!(ran.status.success(), "{}", ran.stderr);
    let id = ran
        .stderr
        .trim()
        .strip_prefix("sendmail: queued as ")
        .unwrap_or_else(|| panic!("{}", ran.stderr))
        .to_string();
    let body = stored(&setup.queue(), &id);
    let want = crlf(&input);
    assert!(body.ends_with(&want), "the message, whole and in order");
    let head = String::from_utf8(body[..body.len() - want.len()].to_vec()).unwrap();
    assert_eq!(
        header_names(&head),
        ["Received", "Date", "Message-ID"],
        "{head}"
    );
    let pieces = count(&setup.queue(), "body_chunks");
    assert_eq!(pieces as usize, body.len() / (64 * 1024), "64 KiB pieces");
    // Bounded: the 5 MB cost little more than a one-line message did
    // (SQLite's page cache is 2 MB of it).
    assert!(
        ran.max_rss_kb < small.max_rss_kb + 6 * 1024,
        "peak RSS {} kB against {} kB for a small message",
        ran.max_rss_kb,
        small.max_rss_kb
    );
}

/// (7) `git send-email` with sendmail as its mailer, when it is installed.
#[test]
fn git_send_email_queues_a_patch() {
    let works = Command::new("git")
        .args(["send-email", "--dump-aliases"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        let _ = writeln!(std::io::stderr(), "skipped: git send-email not installed");
        return;
    }
    let setup = Setup::new("");
    let bin = setup.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("sendmail")).unwrap();
    let repo = setup.dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(&repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", setup.dir.path())
            .env("MAILHOP_CONFIG", &setup.config)
            .env("GIT_AUTHOR_NAME", "Dev Eloper")
            .env("GIT_AUTHOR_EMAIL", "dev@host.test")
            .env("GIT_COMMITTER_NAME", "Dev Eloper")
            .env("GIT_COMMITTER_EMAIL", "dev@host.test")
            .stdin(Stdio::null());
        let ran = run(cmd, b"");
        assert!(
            ran.status.success(),
            "git {args:?}: {}{}",
            ran.stdout,
            ran.stderr
        );
        ran.stdout
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join("hello.txt"), "hello\n.\nworld\n").unwrap();
    git(&["add", "hello.txt"]);
    git(&["commit", "-q", "-m", "Add hello"]);
    git(&["format-patch", "-1", "-o", "out"]);
    let sendmail_cmd = format!("--sendmail-cmd={}", bin.join("sendmail").display());
    git(&[
        "send-email",
        &sendmail_cmd,
        "--to=list@lists.test",
        "--from=Dev Eloper <dev@host.test>",
        "--confirm=never",
        "--suppress-cc=all",
        "--quiet",
        "out",
    ]);
    let id = only_message(&setup.queue());
    assert_eq!(
        rows(
            &open_queue(&setup.queue()),
            &format!("SELECT recipient FROM queue WHERE id = '{id}'")
        ),
        ["list@lists.test"]
    );
    let text = String::from_utf8(stored(&setup.queue(), &id)).unwrap();
    assert!(
        text.contains("\r\nSubject: [PATCH] Add hello\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\r\nFrom: Dev Eloper <dev@host.test>\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\n+hello\r\n+.\r\n+world\r\n"), "{text}");
}
