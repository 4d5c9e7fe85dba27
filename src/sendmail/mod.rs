//! `mailhop sendmail` (also a `sendmail` symlink to the binary): the
//! sendmail command line that cron, mutt, `git send-email` and PHP's
//! `mail()` use. It writes each message straight into the queue file, in
//! one transaction, and a running `serve` sends it on.
//!
//! - [`args`]: the command line (pure).
//! - [`input`] and [`headers`]: standard input to the stored data, and the
//!   header fields read and added on the way (pure).
//! - [`store`](mod@store): spooling the data, then one commit with the envelope.
//! - [`session`]: `-bs`, the server's own SMTP machine on stdin/stdout.
//! - [`user`]: who is sending.

pub mod args;
pub mod headers;
pub mod input;
pub mod session;
pub mod store;
pub mod user;

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use args::{Mode, Options};
use headers::{addresses, missing_fields, received, Origin};
use input::{Input, Scanned};
use store::{store, Spool};
use user::User;

use crate::config::Config;
use crate::message::{Message, QueueIds, Recipient, PIECE};
use crate::policy::Refusal;
use crate::queue::Queue;
use crate::smtp::address::{parse_forward_path, parse_reverse_path, ForwardPath, ReversePath};
use crate::smtp::data::DataError;
use crate::smtp::dsn::Notify;
use crate::smtp::server::Settings;

/// sysexits.h, as sendmail and Postfix use them.
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_NOUSER: u8 = 67;
pub const EX_IOERR: u8 = 74;
pub const EX_TEMPFAIL: u8 = 75;
pub const EX_CONFIG: u8 = 78;

/// Read when neither `-C`/`--config` nor `MAILHOP_CONFIG` names a config.
pub const SYSTEM_CONFIG: &str = "/etc/mailhop/mailhop.toml";

/// Why sendmail stops: the exit code and the line after `sendmail: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn cannot_queue(e: impl std::fmt::Display) -> Failure {
    fail(EX_TEMPFAIL, format!("cannot queue the message: {e}"))
}

/// Whether the program was started as `sendmail` (a symlink to the
/// binary): then every argument is sendmail's.
pub fn invoked_as_sendmail(argv0: &OsStr) -> bool {
    Path::new(argv0).file_name() == Some(OsStr::new("sendmail"))
}

/// Runs sendmail with the arguments after the program name.
pub fn main(args: &[OsString]) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("sendmail: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn run(args: &[OsString]) -> Result<(), Failure> {
    let args = args
        .iter()
        .map(|a| {
            a.to_str()
                .map(String::from)
                .ok_or_else(|| fail(EX_USAGE, format!("argument {a:?} is not UTF-8")))
        })
        .collect::<Result<Vec<String>, Failure>>()?;
    let options =
        args::parse(&args).map_err(|e| fail(EX_USAGE, format!("{e}\n{}", args::USAGE)))?;
    if options.help {
        println!("{}", args::USAGE);
        return Ok(());
    }
    let file = config_file(
        options.config.as_deref(),
        std::env::var_os("MAILHOP_CONFIG"),
        Path::new(SYSTEM_CONFIG).exists(),
    );
    let config = Config::load(file.as_deref()).map_err(|e| fail(EX_CONFIG, e.to_string()))?;
    // A queue write past RLIMIT_FSIZE fails (EFBIG) instead of killing us.
    crate::event_loop::ignore_file_size_signal();
    let settings = Settings::new(&config);
    let user = user::current();
    match options.mode {
        Mode::Smtp => smtp_session(&options, &config, &settings, &user),
        Mode::Deliver => deliver(&options, &config, &settings, &user),
    }
}

/// `-C`/`--config`, else `MAILHOP_CONFIG`, else [`SYSTEM_CONFIG`] if it
/// exists, else none (the embedded default).
pub fn config_file(
    option: Option<&Path>,
    env: Option<OsString>,
    system_exists: bool,
) -> Option<PathBuf> {
    option
        .map(Path::to_path_buf)
        .or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from))
        .or_else(|| system_exists.then(|| PathBuf::from(SYSTEM_CONFIG)))
}

fn open_queue(config: &Config) -> Result<Queue, Failure> {
    Queue::open_to_submit(&config.queue).map_err(cannot_queue)
}

fn smtp_session(
    options: &Options,
    config: &Config,
    settings: &Settings,
    user: &User,
) -> Result<(), Failure> {
    let mut queue = match open_queue(config) {
        Ok(queue) => queue,
        Err(failure) => {
            // The client on the other end hears it too.
            println!(
                "421 4.3.0 {} Error: queue file write error, try again later\r",
                config.hostname
            );
            return Err(failure);
        }
    };
    let local = session::Local {
        settings,
        queue: &mut queue,
        software: format!("mailhop sendmail -bs, userid {}", user.uid),
        verbose: options.verbose,
    };
    session::run(local, &mut io::stdin().lock(), &mut io::stdout().lock())
        .map_err(|e| fail(EX_IOERR, format!("-bs: {e}")))
}

/// The envelope of one submission, built before the data is read.
#[derive(Debug)]
struct Envelope {
    sender: String,
    reverse_path: String,
    recipients: Vec<Recipient>,
    smtputf8: bool,
}

fn deliver(
    options: &Options,
    config: &Config,
    settings: &Settings,
    user: &User,
) -> Result<(), Failure> {
    let hostname = config.hostname.as_str();
    let mut envelope = sender(options.sender.as_deref(), user, hostname)?;
    for arg in &options.recipients {
        for address in addresses(arg) {
            add_recipient(&mut envelope, &address, options.notify, settings, EX_USAGE)?;
        }
    }
    if envelope.recipients.is_empty() && !options.extract {
        return Err(fail(EX_USAGE, format!("no recipients\n{}", args::USAGE)));
    }
    // Before reading anything: a queue that cannot take mail says so now.
    let mut queue = open_queue(config)?;
    let (mut spool, scanned) = read_message(&mut io::stdin().lock(), options, settings)?;
    if options.extract {
        for field in &scanned.seen.recipient_fields {
            for address in addresses(field) {
                add_recipient(
                    &mut envelope,
                    &address,
                    options.notify,
                    settings,
                    EX_DATAERR,
                )?;
            }
        }
    }
    if envelope.recipients.is_empty() {
        return Err(fail(EX_USAGE, "no recipients"));
    }

    let now = SystemTime::now();
    let id = QueueIds::for_process(std::process::id()).next(now);
    let local = chrono::DateTime::<chrono::Local>::from(now);
    let date = local.to_rfc2822();
    let stamp = local.format("%Y%m%d%H%M%S").to_string();
    let own_address = default_sender(user, hostname);
    let from = if envelope.sender.is_empty() {
        &own_address
    } else {
        &envelope.sender
    };
    // The passwd name is the user's: it goes with their own address only.
    let full_name = match &options.full_name {
        Some(name) => Some(name.as_str()),
        None if *from == own_address => user.full_name.as_deref(),
        None => None,
    };
    let origin = Origin {
        hostname,
        queue_id: &id,
        date: &date,
        stamp: &stamp,
        from,
        full_name,
    };
    let mut head = received(hostname, user.uid, &user.name, &id, &date);
    head.push_str(&missing_fields(&scanned.seen, &origin));

    let mut message = Message {
        id,
        sender: envelope.sender,
        reverse_path: envelope.reverse_path,
        recipients: envelope.recipients,
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        helo: "localhost".to_string(),
        received_at: now,
        eight_bit: options.eight_bit || scanned.eight_bit,
        smtputf8: envelope.smtputf8,
        ret: options.ret,
        envid: options.envid.clone(),
        body: Vec::new(),
        chunks: 0,
        size: 0,
    };
    let mut rest = spool.reader().map_err(cannot_queue)?;
    store(&mut queue, &mut message, head.as_bytes(), &mut rest).map_err(cannot_queue)?;
    if options.verbose {
        eprintln!("sendmail: queued as {}", message.id);
    }
    Ok(())
}

/// Reads standard input to its end (or its lone `.` line) into a spool,
/// in pieces: never more than a piece of it in memory.
fn read_message(
    stdin: &mut dyn Read,
    options: &Options,
    settings: &Settings,
) -> Result<(Spool, Scanned), Failure> {
    let max = settings.max_message_size;
    let mut machine = Input::new(!options.ignore_dots, max);
    let mut spool = Spool::default();
    let mut buf = vec![0u8; PIECE];
    let mut out = Vec::with_capacity(2 * PIECE);
    while !machine.done() && !machine.failing() {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(EX_IOERR, format!("cannot read the message: {e}"))),
        };
        machine.feed(&buf[..n], &mut out);
        spool.write(&out).map_err(cannot_queue)?;
        out.clear();
    }
    let scanned = machine.finish(&mut out);
    spool.write(&out).map_err(cannot_queue)?;
    let scanned = scanned.map_err(|e| match e {
        DataError::TooBig => fail(
            EX_TEMPFAIL,
            format!("message too big: more than {max} octets (max_message_size); nothing queued"),
        ),
        DataError::LineTooLong => fail(
            EX_DATAERR,
            "a line is longer than 998 octets (RFC 5322 2.1.1); nothing queued",
        ),
        DataError::BareLineEnd => fail(EX_DATAERR, "bare line ends; nothing queued"),
    })?;
    if scanned.hops > settings.max_hops {
        return Err(fail(
            EX_DATAERR,
            format!(
                "too many Received header fields ({}, max_hops {}): a mail loop? nothing queued",
                scanned.hops, settings.max_hops
            ),
        ));
    }
    Ok((spool, scanned))
}

/// `user@hostname`, the local part quoted if the login name needs it.
fn default_sender(user: &User, hostname: &str) -> String {
    let plain = format!("{}@{hostname}", user.name);
    if parse_reverse_path(format!("<{plain}>").as_bytes()).is_ok() {
        return plain;
    }
    let quoted = user.name.replace('\\', "\\\\").replace('"', "\\\"");
    let quoted = format!("\"{quoted}\"@{hostname}");
    if parse_reverse_path(format!("<{quoted}>").as_bytes()).is_ok() {
        quoted
    } else {
        format!("uid{}@{hostname}", user.uid)
    }
}

/// An address as given on the command line or in a header field, with
/// `@hostname` added when it has no domain (`root`), as Postfix adds
/// `$myorigin`.
fn qualify(address: &str, hostname: &str) -> String {
    let bare = address.trim();
    let bare = bare
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(bare);
    let has_domain = bare
        .rfind('@')
        .is_some_and(|at| !bare[at..].contains('"') && at + 1 < bare.len());
    if has_domain || bare.is_empty() {
        bare.to_string()
    } else {
        format!("{bare}@{hostname}")
    }
}

/// The envelope sender: `-f` (`""` and `<>` are the null sender), else the
/// user at this host.
fn sender(given: Option<&str>, user: &User, hostname: &str) -> Result<Envelope, Failure> {
    let address = match given {
        Some(given) => qualify(given, hostname),
        None => default_sender(user, hostname),
    };
    let bracketed = format!("<{address}>");
    let (path, rest) = parse_reverse_path(bracketed.as_bytes())
        .map_err(|e| fail(EX_USAGE, format!("-f {address:?}: {}", e.0)))?;
    if !rest.is_empty() {
        return Err(fail(
            EX_USAGE,
            format!("-f {address:?}: bad address syntax"),
        ));
    }
    let (sender, reverse_path, ascii) = match &path {
        ReversePath::Null => (String::new(), String::new(), true),
        ReversePath::Path(p) => (p.mailbox.to_string(), p.to_string(), p.is_ascii()),
    };
    Ok(Envelope {
        sender,
        reverse_path,
        recipients: Vec::new(),
        smtputf8: !ascii,
    })
}

/// One recipient, decided as the server decides one from a trusted
/// client (`Policy::route`): its next hop by `[routes]`, MX or `local`.
/// `code`: the exit code of a bad address (64 on the command line, 65 in
/// the message).
fn add_recipient(
    envelope: &mut Envelope,
    address: &str,
    notify: Option<Notify>,
    settings: &Settings,
    code: u8,
) -> Result<(), Failure> {
    let qualified = qualify(address, &settings.hostname);
    let bracketed = format!("<{qualified}>");
    let (path, rest) = parse_forward_path(bracketed.as_bytes())
        .map_err(|e| fail(code, format!("bad recipient address {address:?}: {}", e.0)))?;
    if !rest.is_empty() {
        return Err(fail(
            code,
            format!("bad recipient address {address:?}: bad address syntax"),
        ));
    }
    if let ForwardPath::Path(p) = &path {
        envelope.smtputf8 |= !p.is_ascii();
    }
    let mut recipient = settings
        .policy
        .route(&path)
        .map_err(|refusal| match refusal {
            Refusal::NoSuchUser => fail(EX_NOUSER, format!("{qualified}: no such user here")),
            Refusal::RelayDenied => fail(EX_NOUSER, format!("{qualified}: relay access denied")),
        })?;
    recipient.notify = notify;
    let known = envelope
        .recipients
        .iter()
        .any(|r| r.forward_path == recipient.forward_path && r.next_hop == recipient.next_hop);
    if !known {
        envelope.recipients.push(recipient);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
