//! The inbound SMTP session as a pure state machine: the event loop feeds
//! it bytes and takes back reply bytes and, at the end of data, a
//! [`Message`] to commit. It never touches a socket, a clock or SQL; time
//! and queue IDs come in through [`Env`].

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::SystemTime;

use memchr::memchr;

use super::address::{ForwardPath, ReversePath};
use super::command::{self, BodyType, Command, CommandError, MailParams, RcptParams};
use super::data::{BareLineEnds, DataError, DataReader, ReceivedCounter};
use crate::auth::{self, Failures, Users};
use crate::config::Config;
use crate::dkim::{Outcome, Signers, Signing};
use crate::message::{Message, QueueIds, Recipient, PIECE};
use crate::policy::{Policy, Refusal};

/// Command lines, CRLF included (RFC 5321 4.5.3.1.4).
const MAX_COMMAND_LINE: usize = 512;
/// MAIL and RCPT lines may carry parameters (RFC 5321 4.5.3.1.4, RFC 1869).
const MAX_MAIL_RCPT_LINE: usize = 4096;
/// Stop taking input while this much output waits for a client that does
/// not read (pipelining backpressure).
const OUTPUT_HIGH_WATER: usize = 16 * 1024;
/// Postfix `smtpd_hard_error_limit`.
const MAX_ERRORS: u32 = 10;

/// What every inbound session shares, derived once from the config.
#[derive(Debug)]
pub struct Settings {
    pub hostname: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_hops: usize,
    pub bare_lf: BareLineEnds,
    pub policy: Policy,
    /// STARTTLS is offered (a certificate is configured).
    pub starttls: bool,
    /// AUTH is offered over TLS to these accounts.
    pub users: Option<Users>,
    /// DKIM keys for mail from trusted clients (`crate::dkim`).
    pub dkim: Option<Arc<Signers>>,
    greeting: String,
    ehlo_extensions: String,
}

impl Settings {
    pub fn new(config: &Config) -> Settings {
        let mut ehlo_extensions = String::new();
        for ext in [
            "PIPELINING".to_string(),
            format!("SIZE {}", config.max_message_size),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
            "DSN".to_string(),
        ] {
            let _ = write!(ehlo_extensions, "250-{ext}\r\n");
        }
        Settings {
            hostname: config.hostname.clone(),
            max_message_size: config.max_message_size as usize,
            max_recipients: config.max_recipients,
            max_hops: config.max_hops,
            bare_lf: config.bare_lf,
            policy: Policy::new(config),
            starttls: false,
            users: None,
            dkim: None,
            greeting: format!("220 {} ESMTP mailhop\r\n", config.hostname),
            ehlo_extensions,
        }
    }

    /// The EHLO reply after its first line: STARTTLS only before TLS, AUTH
    /// only after it (credentials never cross in clear).
    fn write_extensions(&self, out: &mut Vec<u8>, tls: bool) {
        out.extend_from_slice(self.ehlo_extensions.as_bytes());
        if self.starttls && !tls {
            out.extend_from_slice(b"250-STARTTLS\r\n");
        }
        if tls && self.users.is_some() {
            out.extend_from_slice(b"250-AUTH PLAIN LOGIN\r\n");
        }
        out.extend_from_slice(b"250 SMTPUTF8\r\n");
    }
}

/// What a call needs from outside the machine.
pub struct Env<'a> {
    pub settings: &'a Settings,
    pub now: SystemTime,
    pub ids: &'a mut QueueIds,
    /// AUTH failures per client address, across sessions.
    pub auth_failures: &'a mut Failures,
}

#[derive(Debug)]
enum State {
    /// Before HELO/EHLO.
    Fresh,
    /// Greeted, no transaction.
    Ready,
    /// MAIL accepted; taking RCPTs.
    Mail(Box<Transaction>),
    /// After 354, or inside a BDAT chunk (`Transaction::chunk`): reading
    /// the message.
    Data(Box<Transaction>, DataReader),
    /// Between BDAT chunks (RFC 3030): commands again, the next BDAT goes on.
    Chunked(Box<Transaction>, DataReader),
    /// The octets of a BDAT that was refused are read and dropped, so the
    /// session stays in sync; then the state it was in.
    Skip(u64, Box<State>),
    /// The message is handed to the loop; input waits for the commit.
    Committing,
    /// AUTH asked for a SASL response: the next line is one, not a command.
    Auth(AuthStep),
    /// The last reply is written; the loop closes after flushing.
    Closed,
}

#[derive(Debug)]
enum AuthStep {
    Plain,
    LoginUser,
    LoginPassword(String),
}

#[derive(Debug, Default)]
struct Transaction {
    reverse_path: String,
    sender: String,
    params: MailParams,
    recipients: Vec<Recipient>,
    /// Queue ID, given at DATA so the `Received:` line can carry it.
    id: String,
    /// The piece being filled: our `Received:` line, then the data as it
    /// arrives; once full it goes to the queue (`Session::piece`).
    body: Vec<u8>,
    /// Full pieces already written to the queue.
    chunks: u32,
    /// Octets stored so far, pieces and `body`.
    size: u64,
    /// `Received:` fields of the data (ours not included), for the hop limit.
    hops: ReceivedCounter,
    /// Inside a BDAT chunk: what is left of it.
    chunk: Option<Chunk>,
    /// A message to be signed: the signature goes after our `Received:`
    /// line, which is held here meanwhile, and piece 0 stays free for the
    /// two (the data's pieces are 1, 2, ...).
    signing: Option<(Signing, Vec<u8>)>,
}

impl Transaction {
    /// The data's first piece number: 1 while piece 0 is kept for our
    /// `Received:` line and the signature.
    fn first_seq(&self) -> u32 {
        u32::from(self.signing.is_some())
    }

    /// At the end of the data: the signature goes in after our
    /// `Received:` line. A message kept whole gets both at its start; one
    /// in pieces gets them as piece 0, returned for the queue.
    fn sign(&mut self) -> Option<(Outcome, Option<Vec<u8>>)> {
        let (signing, mut head) = self.signing.take()?;
        let outcome = signing.finish();
        if let Outcome::Signed { field, .. } = &outcome {
            head.extend_from_slice(field.as_bytes());
            self.size += field.len() as u64;
        }
        if self.chunks == 0 {
            head.extend_from_slice(&self.body);
            self.body = head;
            return Some((outcome, None));
        }
        self.chunks += 1;
        Some((outcome, Some(head)))
    }
}

/// The BDAT chunk being read.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    size: u64,
    left: u64,
    last: bool,
}

/// Which command a reply answered: the loop counts replies by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Greeting,
    Helo,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    /// The reply after the final dot, or to BDAT LAST.
    DataEnd,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    Auth,
    /// Unknown or unimplemented commands, over-long lines, timeouts.
    Other,
}

impl Verb {
    pub fn name(self) -> &'static str {
        match self {
            Verb::Greeting => "greeting",
            Verb::Helo => "HELO",
            Verb::Ehlo => "EHLO",
            Verb::Mail => "MAIL",
            Verb::Rcpt => "RCPT",
            Verb::Data => "DATA",
            Verb::DataEnd => "data_end",
            Verb::Bdat => "BDAT",
            Verb::Rset => "RSET",
            Verb::Noop => "NOOP",
            Verb::Quit => "QUIT",
            Verb::Vrfy => "VRFY",
            Verb::Help => "HELP",
            Verb::StartTls => "STARTTLS",
            Verb::Auth => "AUTH",
            Verb::Other => "other",
        }
    }

    fn of(command: &Command<'_>) -> Verb {
        match command {
            Command::Helo(_) => Verb::Helo,
            Command::Ehlo(_) => Verb::Ehlo,
            Command::Mail { .. } => Verb::Mail,
            Command::Rcpt { .. } => Verb::Rcpt,
            Command::Data => Verb::Data,
            Command::Bdat { last: true, .. } => Verb::DataEnd,
            Command::Bdat { .. } => Verb::Bdat,
            Command::Rset => Verb::Rset,
            Command::Noop => Verb::Noop,
            Command::Quit => Verb::Quit,
            Command::Vrfy => Verb::Vrfy,
            Command::Help => Verb::Help,
            Command::StartTls => Verb::StartTls,
            Command::Auth { .. } => Verb::Auth,
            Command::NotImplemented(_) => Verb::Other,
        }
    }
}

/// A reply the session wrote: what it answered and its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub verb: Verb,
    pub code: u16,
}

#[derive(Debug)]
pub struct Session {
    state: State,
    client: IpAddr,
    helo: String,
    esmtp: bool,
    errors: u32,
    /// Discarding the rest of an over-long command line.
    discarding: bool,
    shutting_down: bool,
    /// The session runs over TLS (after STARTTLS, or an implicit listener).
    tls: bool,
    /// STARTTLS was answered 220: the loop switches to TLS next.
    upgrade: bool,
    /// Who authenticated (AUTH), if anyone.
    user: Option<String>,
    out: Vec<u8>,
    accepted: Option<Message>,
    discarded: Option<String>,
    /// What the replies being written answer.
    answering: Verb,
    /// Replies written since the loop last took them (`take_sent`).
    sent: Vec<Sent>,
    /// This machine's own user on the other end (`mailhop sendmail -bs`):
    /// what our `Received:` line says instead of `mailhop`.
    local: Option<String>,
    /// Piece 0 of the signed message waiting for its commit: our
    /// `Received:` line and the signature (queue ID, bytes).
    head_piece: Option<(String, Vec<u8>)>,
    /// How the message waiting for its commit was signed, if it was for
    /// signing (`take_dkim`).
    dkim: Option<Outcome>,
}

impl Session {
    /// A new session, its greeting already in the output. `tls`: the
    /// connection is already encrypted (an RFC 8314 implicit-TLS listener).
    pub fn new(settings: &Settings, client: IpAddr, tls: bool) -> Session {
        let mut session = Session::silent(client, tls);
        session.out.extend_from_slice(settings.greeting.as_bytes());
        session.note_sent(220);
        session
    }

    /// A session with a user of this machine over a pipe (`mailhop
    /// sendmail -bs`): from 127.0.0.1, trusted to relay like an
    /// authenticated client, and named in our `Received:` line by
    /// `software` (`mailhop sendmail -bs, userid 1000`).
    pub fn local(settings: &Settings, software: String) -> Session {
        let mut session = Session::new(settings, IpAddr::V4(Ipv4Addr::LOCALHOST), false);
        session.local = Some(software);
        session
    }

    /// Turned away at connect time (too many connections): one reply, close.
    pub fn refuse(settings: &Settings, client: IpAddr, text: &str) -> Session {
        let mut session = Session::silent(client, false);
        session.close_with(&format!("421 4.7.0 {} {text}", settings.hostname));
        session
    }

    fn silent(client: IpAddr, tls: bool) -> Session {
        Session {
            state: State::Fresh,
            client: client.to_canonical(),
            helo: String::new(),
            esmtp: false,
            errors: 0,
            discarding: false,
            shutting_down: false,
            tls,
            upgrade: false,
            user: None,
            out: Vec::new(),
            accepted: None,
            discarded: None,
            answering: Verb::Greeting,
            sent: Vec::new(),
            local: None,
            head_piece: None,
            dkim: None,
        }
    }

    /// How the message now being committed was signed (`None`: it was not
    /// for signing: no keys, or a stranger's). Taken before `committed`.
    pub fn take_dkim(&mut self) -> Option<Outcome> {
        self.dkim.take()
    }

    /// The replies written since the last call, for counting.
    pub fn take_sent(&mut self) -> std::vec::Drain<'_, Sent> {
        self.sent.drain(..)
    }

    fn note_sent(&mut self, code: u16) {
        self.sent.push(Sent {
            verb: self.answering,
            code,
        });
    }

    /// Bytes waiting to be written to the client; the caller drains it.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether input should be read and fed now.
    pub fn wants_input(&self) -> bool {
        !matches!(self.state, State::Committing | State::Closed)
            && !self.upgrade
            && self.out.len() < OUTPUT_HIGH_WATER
            && self.piece().is_none()
    }

    /// A full piece of the message being received, to be written to the
    /// queue now: (queue ID, piece number, bytes). Input waits until the
    /// loop calls `piece_written`, so a session never holds more than one.
    pub fn piece(&self) -> Option<(&str, u32, &[u8])> {
        if let Some((id, head)) = &self.head_piece {
            return Some((id, 0, head));
        }
        match &self.state {
            // Full when the next input byte might not fit (a bare LF
            // normalised takes two), so the buffer never grows past PIECE.
            State::Data(txn, _) | State::Chunked(txn, _) if txn.body.len() + 2 > PIECE => {
                Some((&txn.id, txn.chunks + txn.first_seq(), &txn.body))
            }
            _ => None,
        }
    }

    /// The piece is with the queue (or lost with it, which the queue
    /// remembers: the message then gets 451 at its end).
    pub fn piece_written(&mut self) {
        if self.head_piece.take().is_some() {
            return;
        }
        if let State::Data(txn, _) | State::Chunked(txn, _) = &mut self.state {
            txn.body.clear();
            txn.chunks += 1;
        }
    }

    /// The queue ID of a message being received that has pieces in the
    /// queue: if the session ends now, they must be discarded.
    pub fn unfinished_pieces(&self) -> Option<&str> {
        match &self.state {
            State::Data(txn, _) | State::Chunked(txn, _) if txn.chunks > 0 => Some(&txn.id),
            _ => None,
        }
    }

    /// A message refused at its end whose pieces are in the queue: the
    /// loop discards them.
    pub fn take_discarded(&mut self) -> Option<String> {
        self.discarded.take()
    }

    /// STARTTLS was accepted: once the 220 is written, the loop must throw
    /// away whatever input it holds (plaintext pipelined after STARTTLS is
    /// an injection, CVE-2011-0411), start TLS, then call `tls_started`.
    pub fn wants_tls(&self) -> bool {
        self.upgrade
    }

    /// The TLS handshake may begin: forget everything said in clear
    /// (RFC 3207 4.2); the client must say EHLO again.
    pub fn tls_started(&mut self) {
        self.upgrade = false;
        self.tls = true;
        self.state = State::Fresh;
        self.helo.clear();
        self.esmtp = false;
    }

    /// Inside DATA or waiting for its commit: shutdown lets these finish.
    pub fn in_transaction_data(&self) -> bool {
        matches!(
            self.state,
            State::Data(..) | State::Chunked(..) | State::Committing
        )
    }

    /// The message is with the loop for its commit; nothing else moves.
    pub fn awaiting_commit(&self) -> bool {
        matches!(self.state, State::Committing)
    }

    /// The message that reached end of data, to be committed by the loop.
    pub fn take_accepted(&mut self) -> Option<Message> {
        self.accepted.take()
    }

    /// Feeds input; returns how many bytes were consumed. Unconsumed bytes
    /// (a partial command line, or anything after a message waiting for its
    /// commit) must be fed again later, followed by newer input.
    pub fn receive(&mut self, input: &[u8], env: &mut Env<'_>) -> usize {
        let mut pos = 0;
        while pos < input.len() && self.wants_input() {
            if let State::Skip(left, _) = &mut self.state {
                let n = (*left).min((input.len() - pos) as u64);
                *left -= n;
                pos += n as usize;
                if *left == 0 {
                    let State::Skip(_, after) = std::mem::replace(&mut self.state, State::Ready)
                    else {
                        unreachable!("matched above")
                    };
                    self.state = *after;
                }
                continue;
            }
            if let State::Data(txn, reader) = &mut self.state {
                // No more than fits in the piece: unstuffing never grows
                // the data, normalising a bare line end doubles it at most,
                // and a CR held from the last input may come out with it.
                let room = PIECE.saturating_sub(txn.body.len() + 1);
                let room = match env.settings.bare_lf {
                    BareLineEnds::Reject => room,
                    BareLineEnds::Normalize => room / 2,
                };
                let mut end = input.len().min(pos + room.max(1));
                if let Some(chunk) = &txn.chunk {
                    end = end.min(pos + chunk.left.min(usize::MAX as u64) as usize);
                }
                let before = txn.body.len();
                let (used, done) = reader.feed(&input[pos..end], &mut txn.body);
                pos += used;
                txn.hops.feed(&txn.body[before..]);
                if let Some((signing, _)) = &mut txn.signing {
                    signing.feed(&txn.body[before..]);
                }
                txn.size += (txn.body.len() - before) as u64;
                let chunk_done = txn.chunk.as_mut().is_some_and(|chunk| {
                    chunk.left -= used as u64;
                    chunk.left == 0
                });
                if reader.failing() || txn.hops.count() > env.settings.max_hops {
                    // It will be refused: nothing of it needs keeping.
                    txn.body.clear();
                }
                if done {
                    self.end_of_data(env);
                } else if chunk_done {
                    self.end_of_chunk(env);
                }
                continue;
            }
            let rest = &input[pos..];
            let Some(lf) = memchr(b'\n', rest) else {
                if self.discarding || rest.len() >= MAX_MAIL_RCPT_LINE {
                    self.discarding = true;
                    pos = input.len();
                }
                break;
            };
            pos += lf + 1;
            let line = &rest[..lf];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.answering = match self.state {
                State::Auth(_) => Verb::Auth,
                _ => Verb::Other,
            };
            let limit = match self.state {
                State::Auth(_) => MAX_MAIL_RCPT_LINE,
                _ => line_limit(line),
            };
            if std::mem::take(&mut self.discarding) || line.len() + 2 > limit {
                if matches!(self.state, State::Auth(_)) {
                    self.state = State::Ready;
                }
                self.error("500 5.5.6 Error: line too long");
            } else if let State::Auth(_) = self.state {
                self.auth_response(line, env);
            } else {
                self.command(line, env);
            }
        }
        pos
    }

    /// The commit of the accepted message finished: the delayed reply.
    pub fn committed(&mut self, result: Result<&str, ()>, settings: &Settings) {
        debug_assert!(matches!(self.state, State::Committing));
        self.state = State::Ready;
        self.dkim = None;
        match result {
            Ok(id) => self.reply(&format!("250 2.0.0 Ok: queued as {id}")),
            Err(()) => self.reply("451 4.3.0 Error: queue file write error, try again later"),
        }
        if self.shutting_down {
            self.shutdown(settings);
        }
    }

    /// The client was idle too long.
    pub fn timeout(&mut self, settings: &Settings) {
        if !self.is_closed() {
            self.answering = Verb::Other;
            self.close_with(&format!(
                "421 4.4.2 {} Error: timeout exceeded",
                settings.hostname
            ));
        }
    }

    /// The server is stopping: close now unless a message is being
    /// received, which is let finish first.
    pub fn shutdown(&mut self, settings: &Settings) {
        self.shutting_down = true;
        if !self.in_transaction_data() && !self.is_closed() {
            self.answering = Verb::Other;
            self.close_with(&format!(
                "421 4.3.2 {} Service shutting down",
                settings.hostname
            ));
        }
    }

    fn command(&mut self, line: &[u8], env: &mut Env<'_>) {
        let settings = env.settings;
        let command = match command::parse(line) {
            Ok(command) => command,
            Err(CommandError::Unknown) => {
                return self.error("500 5.5.2 Error: command not recognized")
            }
            Err(CommandError::Syntax(why)) => {
                return self.error(&format!("501 5.5.4 Syntax error: {why}"))
            }
            Err(CommandError::UnknownParameter(what)) => {
                return self.error(&format!("555 5.5.4 Unsupported option: {what}"))
            }
        };
        self.answering = Verb::of(&command);
        if matches!(self.state, State::Chunked(..)) {
            match command {
                Command::Bdat { .. }
                | Command::Noop
                | Command::Help
                | Command::Vrfy
                | Command::NotImplemented(_) => {}
                Command::Data => {
                    return self.error("503 5.5.1 Error: DATA inside a BDAT transaction")
                }
                Command::Mail { .. } | Command::Rcpt { .. } | Command::StartTls => {
                    return self.error("503 5.5.1 Error: BDAT transaction in progress")
                }
                // RSET, HELO, EHLO, QUIT, AUTH: the transaction is over.
                _ => self.abandon_chunks(),
            }
        }
        match command {
            Command::Helo(name) | Command::Ehlo(name) => {
                self.helo = name.to_string();
                self.esmtp = matches!(command, Command::Ehlo(_));
                self.state = State::Ready;
                if self.esmtp {
                    let _ = write!(self.out_str(), "250-{}\r\n", settings.hostname);
                    settings.write_extensions(&mut self.out, self.tls);
                    self.note_sent(250);
                } else {
                    self.reply(&format!("250 2.0.0 {}", settings.hostname));
                }
            }
            Command::Mail { path, params } => self.mail(path, params, settings),
            Command::Rcpt { path, params } => self.rcpt(path, params, settings),
            Command::Data => self.data(env),
            Command::Bdat { size, last } => self.bdat(size, last, env),
            Command::Rset => {
                if !matches!(self.state, State::Fresh) {
                    self.state = State::Ready;
                }
                self.reply("250 2.0.0 Ok");
            }
            Command::Noop => self.reply("250 2.0.0 Ok"),
            Command::Quit => self.close_with("221 2.0.0 Bye"),
            Command::Vrfy => self
                .reply("252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"),
            Command::Help => self.reply("214 2.0.0 See RFC 5321"),
            Command::NotImplemented(_) => self.error("502 5.5.1 Error: command not implemented"),
            Command::StartTls => self.starttls(settings),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial, env),
        }
    }

    fn starttls(&mut self, settings: &Settings) {
        if !settings.starttls {
            return self.error("502 5.5.1 Error: command not implemented");
        }
        match self.state {
            _ if self.tls => self.error("503 5.5.1 Error: TLS already active"),
            State::Fresh => self.error("503 5.5.1 Error: send EHLO first"),
            State::Ready => {
                self.reply("220 2.0.0 Ready to start TLS");
                self.upgrade = true;
            }
            _ => self.error("503 5.5.1 Error: STARTTLS inside a mail transaction"),
        }
    }

    fn auth(&mut self, mechanism: &str, initial: Option<&str>, env: &mut Env<'_>) {
        if env.settings.users.is_none() {
            return self.error("502 5.5.1 Error: authentication not enabled");
        }
        if !self.tls {
            return self
                .error("538 5.7.11 Encryption required for requested authentication mechanism");
        }
        match self.state {
            State::Fresh => return self.error("503 5.5.1 Error: send EHLO first"),
            State::Ready if self.user.is_none() => {}
            State::Ready => return self.error("503 5.5.1 Error: already authenticated"),
            _ => return self.error("503 5.5.1 Error: AUTH inside a mail transaction"),
        }
        if !env.auth_failures.allowed(self.client, env.now) {
            return self.error("454 4.7.0 Too many authentication failures, try again later");
        }
        let step = if mechanism.eq_ignore_ascii_case("PLAIN") {
            AuthStep::Plain
        } else if mechanism.eq_ignore_ascii_case("LOGIN") {
            AuthStep::LoginUser
        } else {
            return self.error("504 5.5.4 Error: unrecognized authentication type");
        };
        self.state = State::Auth(step);
        match initial {
            Some(response) => self.auth_response(response.as_bytes(), env),
            None => self.ask(),
        }
    }

    /// The 334 challenge for the step we are at.
    fn ask(&mut self) {
        match &self.state {
            State::Auth(AuthStep::LoginUser) => self.reply("334 VXNlcm5hbWU6"), // "Username:"
            State::Auth(AuthStep::LoginPassword(_)) => self.reply("334 UGFzc3dvcmQ6"), // "Password:"
            _ => self.reply("334 "),
        }
    }

    /// A SASL response line (RFC 4954 4): `*` cancels.
    fn auth_response(&mut self, line: &[u8], env: &mut Env<'_>) {
        let State::Auth(step) = std::mem::replace(&mut self.state, State::Ready) else {
            return;
        };
        if line == b"*" {
            return self.error("501 5.0.0 Error: authentication cancelled");
        }
        let Some(decoded) = std::str::from_utf8(line).ok().and_then(auth::decode) else {
            return self.error("501 5.5.2 Error: cannot decode response");
        };
        let credentials = match step {
            AuthStep::Plain => auth::plain(&decoded),
            AuthStep::LoginUser => {
                let Ok(name) = String::from_utf8(decoded) else {
                    return self.error("501 5.5.2 Error: cannot decode response");
                };
                self.state = State::Auth(AuthStep::LoginPassword(name));
                return self.ask();
            }
            AuthStep::LoginPassword(name) => String::from_utf8(decoded).ok().map(|pw| (name, pw)),
        };
        let users = env.settings.users.as_ref();
        match credentials {
            Some((name, password)) if users.is_some_and(|u| u.verify(&name, &password)) => {
                env.auth_failures.succeeded(self.client);
                self.user = Some(name);
                self.reply("235 2.7.0 Authentication successful");
            }
            _ => {
                env.auth_failures.failed(self.client, env.now);
                self.error("535 5.7.8 Error: authentication failed");
            }
        }
    }

    fn mail(&mut self, path: ReversePath, params: MailParams, settings: &Settings) {
        match self.state {
            State::Fresh => return self.error("503 5.5.1 Error: send HELO/EHLO first"),
            State::Mail(_) => return self.error("503 5.5.1 Error: nested MAIL command"),
            _ => {}
        }
        if params
            .size
            .is_some_and(|size| size > settings.max_message_size as u64)
        {
            return self.reply("552 5.3.4 Message size exceeds fixed maximum message size");
        }
        let (sender, reverse_path) = match &path {
            ReversePath::Null => (String::new(), String::new()),
            ReversePath::Path(p) => {
                if !p.is_ascii() && !params.smtputf8 {
                    return self.error("553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter");
                }
                (p.mailbox.to_string(), p.to_string())
            }
        };
        self.state = State::Mail(Box::new(Transaction {
            reverse_path,
            sender,
            params,
            ..Transaction::default()
        }));
        self.reply("250 2.1.0 Ok");
    }

    fn rcpt(&mut self, path: ForwardPath, params: RcptParams, settings: &Settings) {
        let txn = match &mut self.state {
            State::Fresh => return self.error("503 5.5.1 Error: send HELO/EHLO first"),
            State::Mail(txn) => txn,
            _ => return self.error("503 5.5.1 Error: need MAIL command"),
        };
        if txn.recipients.len() >= settings.max_recipients {
            return self.reply("452 4.5.3 Error: too many recipients");
        }
        if let ForwardPath::Path(p) = &path {
            if !p.is_ascii() && !txn.params.smtputf8 {
                return self.error("553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter");
            }
        }
        // Authenticated clients and local users may relay anywhere, like
        // trusted networks.
        let decided = if self.user.is_some() || self.local.is_some() {
            settings.policy.route(&path)
        } else {
            settings.policy.recipient(self.client, &path)
        };
        match decided {
            Ok(mut recipient) => {
                recipient.notify = params.notify;
                recipient.orcpt = params.orcpt;
                let known = txn.recipients.iter().any(|r| {
                    r.forward_path == recipient.forward_path && r.next_hop == recipient.next_hop
                });
                if !known {
                    txn.recipients.push(recipient);
                }
                self.reply("250 2.1.5 Ok");
            }
            Err(Refusal::NoSuchUser) => self.error("550 5.1.1 No such user here"),
            Err(Refusal::RelayDenied) => self.error("554 5.7.1 Relay access denied"),
        }
    }

    fn data(&mut self, env: &mut Env<'_>) {
        match &self.state {
            State::Fresh => return self.error("503 5.5.1 Error: send HELO/EHLO first"),
            State::Mail(txn) if txn.recipients.is_empty() => {
                return self.error("503 5.5.1 Error: no valid recipients")
            }
            State::Mail(_) => {}
            _ => return self.error("503 5.5.1 Error: need MAIL command"),
        }
        let State::Mail(mut txn) = std::mem::replace(&mut self.state, State::Ready) else {
            unreachable!("checked above")
        };
        self.start_message(&mut txn, env);
        let settings = env.settings;
        let reader = DataReader::new(settings.max_message_size, settings.bare_lf);
        self.state = State::Data(txn, reader);
        self.reply("354 End data with <CR><LF>.<CR><LF>");
    }

    /// The message begins: its queue ID, and our `Received:` line first.
    fn start_message(&self, txn: &mut Transaction, env: &mut Env<'_>) {
        txn.id = env.ids.next(env.now);
        let received = received_header(self, txn, env.settings, env.now);
        txn.size = received.len() as u64;
        match &env.settings.dkim {
            // Strangers' mail is never signed.
            Some(signers) if self.trusted(env.settings) => {
                txn.signing = Some((Signing::new(signers.clone()), received.into_bytes()));
            }
            // Grown as the data comes, so a small message takes little.
            _ => txn.body = received.into_bytes(),
        }
    }

    /// Authenticated, or from `relay_networks`: mail we vouch for.
    fn trusted(&self, settings: &Settings) -> bool {
        self.user.is_some() || settings.policy.may_relay(self.client)
    }

    /// `BDAT size [LAST]` (RFC 3030): the chunk's octets follow at once.
    /// Refused ones are still read (`State::Skip`), so the session stays
    /// in sync whatever the client pipelined behind them.
    fn bdat(&mut self, size: u64, last: bool, env: &mut Env<'_>) {
        let chunk = Chunk {
            size,
            left: size,
            last,
        };
        let refusal = match &self.state {
            State::Fresh => Some("503 5.5.1 Error: send HELO/EHLO first"),
            State::Mail(txn) if txn.recipients.is_empty() => {
                Some("503 5.5.1 Error: no valid recipients")
            }
            State::Mail(_) | State::Chunked(..) => None,
            _ => Some("503 5.5.1 Error: need MAIL command"),
        };
        if let Some(reply) = refusal {
            self.error(reply);
            if size > 0 && !self.is_closed() {
                let after = std::mem::replace(&mut self.state, State::Ready);
                self.state = State::Skip(size, Box::new(after));
            }
            return;
        }
        let (txn, reader) = match std::mem::replace(&mut self.state, State::Ready) {
            State::Mail(mut txn) => {
                self.start_message(&mut txn, env);
                let settings = env.settings;
                let reader = DataReader::chunks(settings.max_message_size, settings.bare_lf);
                (txn, reader)
            }
            State::Chunked(txn, reader) => (txn, reader),
            _ => unreachable!("checked above"),
        };
        let mut txn = txn;
        txn.chunk = Some(chunk);
        self.state = State::Data(txn, reader);
        if size == 0 {
            self.end_of_chunk(env);
        }
    }

    /// A BDAT chunk is in: the last one ends the message like the final
    /// dot; another gets its 250 unless the message is already refused.
    fn end_of_chunk(&mut self, env: &mut Env<'_>) {
        let State::Data(txn, reader) = &mut self.state else {
            unreachable!("end of a chunk outside one")
        };
        let Some(chunk) = txn.chunk.take() else {
            unreachable!("end of a chunk outside one")
        };
        if chunk.last {
            let before = txn.body.len();
            reader.end_chunks(&mut txn.body);
            if let Some((signing, _)) = &mut txn.signing {
                signing.feed(&txn.body[before..]);
            }
            txn.size += (txn.body.len() - before) as u64;
            return self.end_of_data(env);
        }
        if let Err(reply) = verdict(reader, txn, env.settings) {
            // Refused now, not at LAST: the client stops sending chunks
            // (RFC 3030 2), and any it sent anyway are read and refused.
            let State::Data(txn, _) = std::mem::replace(&mut self.state, State::Ready) else {
                unreachable!("matched above")
            };
            if txn.chunks > 0 {
                self.discarded = Some(txn.id);
            }
            return self.reply(reply);
        }
        let State::Data(txn, reader) = std::mem::replace(&mut self.state, State::Ready) else {
            unreachable!("matched above")
        };
        self.state = State::Chunked(txn, reader);
        let _ = write!(self.out_str(), "250 2.0.0 Ok: {} octets\r\n", chunk.size);
        self.note_sent(250);
    }

    /// A BDAT transaction ends without its LAST chunk (RSET, EHLO, QUIT,
    /// shutdown): its pieces in the queue are to be discarded.
    fn abandon_chunks(&mut self) {
        if let State::Chunked(txn, _) = std::mem::replace(&mut self.state, State::Ready) {
            if txn.chunks > 0 {
                self.discarded = Some(txn.id);
            }
        }
    }

    fn end_of_data(&mut self, env: &mut Env<'_>) {
        self.answering = Verb::DataEnd;
        let State::Data(txn, reader) = std::mem::replace(&mut self.state, State::Ready) else {
            unreachable!("end of data outside DATA")
        };
        if let Err(reply) = verdict(&reader, &txn, env.settings) {
            if txn.chunks > 0 {
                self.discarded = Some(txn.id);
            }
            self.reply(reply);
            if self.shutting_down {
                self.shutdown(env.settings);
            }
            return;
        }
        let mut txn = *txn;
        if let Some((outcome, head)) = txn.sign() {
            self.dkim = Some(outcome);
            self.head_piece = head.map(|head| (txn.id.clone(), head));
        }
        self.accepted = Some(Message {
            id: txn.id,
            sender: txn.sender,
            reverse_path: txn.reverse_path,
            recipients: txn.recipients,
            client_ip: self.client,
            helo: self.helo.clone(),
            received_at: env.now,
            eight_bit: txn.params.body == BodyType::EightBitMime,
            smtputf8: txn.params.smtputf8,
            ret: txn.params.ret,
            envid: txn.params.envid,
            body: txn.body,
            chunks: txn.chunks,
            size: txn.size,
        });
        self.state = State::Committing;
    }

    fn reply(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.note_sent(reply_code(line));
    }

    /// Replies that count towards the hard error limit.
    fn error(&mut self, line: &str) {
        self.reply(line);
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.close_with("421 4.7.0 Error: too many errors");
        }
    }

    fn close_with(&mut self, line: &str) {
        self.reply(line);
        self.state = State::Closed;
    }

    fn out_str(&mut self) -> OutWriter<'_> {
        OutWriter(&mut self.out)
    }
}

/// The code of a reply line this machine wrote (always three digits).
fn reply_code(line: &str) -> u16 {
    line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// `fmt::Write` into the output buffer, so replies format without a temporary.
struct OutWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for OutWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Whether the message (so far) may be stored, else the reply refusing it.
fn verdict(
    reader: &DataReader,
    txn: &Transaction,
    settings: &Settings,
) -> Result<(), &'static str> {
    match reader.finish() {
        Err(DataError::TooBig) => Err("552 5.3.4 Error: message file too big"),
        Err(DataError::LineTooLong) => Err("552 5.3.4 Error: text line longer than 998 octets"),
        Err(DataError::BareLineEnd) => {
            Err("550 5.6.0 Error: bare LF or CR in message text (RFC 5321 2.3.8)")
        }
        Ok(()) if txn.hops.count() > settings.max_hops => Err("554 5.4.6 Error: too many hops"),
        Ok(()) => Ok(()),
    }
}

fn line_limit(line: &[u8]) -> usize {
    let verb = line.get(..4).unwrap_or(line);
    if verb.eq_ignore_ascii_case(b"MAIL") || verb.eq_ignore_ascii_case(b"RCPT") {
        MAX_MAIL_RCPT_LINE
    } else {
        MAX_COMMAND_LINE
    }
}

/// RFC 5321 4.4 trace line, on one line unless that would pass 998
/// octets, then folded before `by`, `for` and the date. `for` names the
/// recipient only when there is one, so Bcc recipients are not disclosed.
/// HELO sessions say `with SMTP`, EHLO ones `with ESMTP` (RFC 3848).
fn received_header(
    session: &Session,
    txn: &Transaction,
    settings: &Settings,
    now: SystemTime,
) -> String {
    // RFC 3848: ESMTP, then S for TLS and A for AUTH.
    let protocol = match (session.esmtp, session.tls, session.user.is_some()) {
        (false, false, _) => "SMTP",
        (false, true, _) => "SMTPS",
        (true, false, false) => "ESMTP",
        (true, false, true) => "ESMTPA",
        (true, true, false) => "ESMTPS",
        (true, true, true) => "ESMTPSA",
    };
    let date = chrono::DateTime::<chrono::Utc>::from(now).to_rfc2822();
    let from = format!("from {} ([{}])", session.helo, session.client);
    let by = format!(
        "by {} ({}) with {} id {}",
        settings.hostname,
        session.local.as_deref().unwrap_or("mailhop"),
        protocol,
        txn.id
    );
    let rcpt = match txn.recipients.as_slice() {
        [only] => format!(" for <{}>", only.mailbox),
        _ => String::new(),
    };
    let one_line = "Received: ".len() + from.len() + 1 + by.len() + rcpt.len() + 2 + date.len();
    let sep = if one_line <= 998 { " " } else { "\r\n\t" };
    let rcpt = if rcpt.is_empty() {
        rcpt
    } else {
        format!("{sep}{}", &rcpt[1..])
    };
    format!("Received: {from}{sep}{by}{rcpt};{sep}{date}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(extra: &str) -> Settings {
        let text = format!(
            "hostname = \"Beta.ARPA\"\nlocal_domains = [\"Beta.ARPA\"]\nlocal_users = [\"jones\", \"brown\"]\nrelay_networks = []\n{extra}"
        );
        let config = Config::from_toml(&text, std::path::Path::new("/tmp"), "test.toml").unwrap();
        Settings::new(&config)
    }

    /// Plays `chunks` through a session the way the event loop does
    /// (unconsumed input is kept and fed again; full body pieces are
    /// written out; commits succeed at once) and returns everything written
    /// and every message accepted, its `body` made whole again from its
    /// pieces (`chunks` and `size` say how it came).
    fn play<'a>(
        settings: &Settings,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> (String, Vec<Message>) {
        let mut ids = QueueIds::default();
        let mut failures = Failures::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut session = Session::new(settings, "192.0.2.9".parse().unwrap(), false);
        let (mut held, mut accepted) = (Vec::new(), Vec::new());
        // By number: a signed message's piece 0 comes last.
        let mut pieces = std::collections::BTreeMap::new();
        for chunk in chunks {
            held.extend_from_slice(chunk);
            loop {
                let mut env = Env {
                    settings,
                    now,
                    ids: &mut ids,
                    auth_failures: &mut failures,
                };
                let used = session.receive(&held, &mut env);
                held.drain(..used);
                if let Some((_, seq, data)) = session.piece() {
                    assert!(data.len() <= PIECE, "piece {seq} of {}", data.len());
                    assert!(
                        pieces.insert(seq, data.to_vec()).is_none(),
                        "piece {seq} twice"
                    );
                    session.piece_written();
                    continue;
                }
                let Some(mut message) = session.take_accepted() else {
                    break;
                };
                session.committed(Ok(&message.id), settings);
                assert!(
                    pieces.keys().copied().eq(0..message.chunks),
                    "{:?}",
                    pieces.keys()
                );
                let mut whole = std::mem::take(&mut pieces)
                    .into_values()
                    .collect::<Vec<_>>()
                    .concat();
                whole.extend_from_slice(&message.body);
                assert_eq!(whole.len() as u64, message.size);
                message.body = whole;
                accepted.push(message);
            }
        }
        let out = String::from_utf8(std::mem::take(session.output())).unwrap();
        (out, accepted)
    }

    fn codes(out: &str) -> Vec<&str> {
        out.lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| &l[..3])
            .collect()
    }

    const EXAMPLE_1: &[u8] = b"HELO Alpha.ARPA\r\nMAIL FROM:<Smith@Alpha.ARPA>\r\nRCPT TO:<Jones@Beta.ARPA>\r\nRCPT TO:<Green@Beta.ARPA>\r\nRCPT TO:<Brown@Beta.ARPA>\r\nDATA\r\nBlah blah blah...\r\n..etc. etc. etc.\r\n.\r\nQUIT\r\n";

    #[test]
    fn every_reply_is_told_with_the_command_it_answers() {
        let settings = settings("");
        let mut ids = QueueIds::default();
        let mut failures = Failures::default();
        let mut session = Session::new(&settings, "192.0.2.9".parse().unwrap(), false);
        let mut env = Env {
            settings: &settings,
            now: SystemTime::UNIX_EPOCH,
            ids: &mut ids,
            auth_failures: &mut failures,
        };
        let input = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nDATA\r\nBOGUS\r\nRSET\r\nQUIT\r\n";
        session.receive(input, &mut env);
        let sent: Vec<(&str, u16)> = session
            .take_sent()
            .map(|s| (s.verb.name(), s.code))
            .collect();
        assert_eq!(
            sent,
            [
                ("greeting", 220),
                ("EHLO", 250),
                ("MAIL", 250),
                ("DATA", 503),
                ("other", 500),
                ("RSET", 250),
                ("QUIT", 221)
            ]
        );
        assert_eq!(session.take_sent().count(), 0);
    }

    /// A message from 192.0.2.9 with `lines` lines of body to a relay
    /// with a key for `example.com` and `relay`'s rules.
    fn signed_play(relay: &str, lines: usize) -> Message {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let pair = crate::dkim::keygen(crate::dkim::Algorithm::Ed25519).unwrap();
        std::fs::write(&key, pair.private_pem).unwrap();
        let text =
            format!("hostname = \"Beta.ARPA\"\n{relay}\n[routes]\n\"*\" = \"[192.0.2.1]\"\n");
        let config = Config::from_toml(&text, dir.path(), "test.toml").unwrap();
        let mut s = Settings::new(&config);
        let tables = [crate::config::DkimDomain {
            domain: "example.com".into(),
            selector: "s".into(),
            key,
            subdomains: false,
        }];
        s.dkim = crate::dkim::Signers::load(&tables).unwrap().map(Arc::new);
        let mut input = b"EHLO c.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@far.test>\r\nDATA\r\nFrom: a@example.com\r\nSubject: s\r\n\r\n".to_vec();
        for i in 0..lines {
            input.extend_from_slice(format!("line {i} with some text in it\r\n").as_bytes());
        }
        input.extend_from_slice(b".\r\nQUIT\r\n");
        let (out, mut accepted) = play(&s, input.chunks(1000));
        assert_eq!(
            codes(&out),
            ["220", "250", "250", "250", "354", "250", "221"]
        );
        accepted.pop().unwrap()
    }

    #[test]
    fn trusted_mail_gets_its_signature_after_our_received_line_in_one_piece_or_many() {
        for lines in [3, 10_000] {
            let message = signed_play("relay_networks = [\"192.0.2.0/24\"]", lines);
            assert_eq!(message.chunks > 0, lines > 3, "{lines} lines");
            let text = String::from_utf8(message.body).unwrap();
            let (received, rest) = text.split_once("\r\nDKIM-Signature: ").expect("signed");
            assert!(received.starts_with("Received: from c.test") && !received.contains("\r\n\t;"));
            assert!(rest.contains("d=example.com") && rest.contains("\r\nFrom: a@example.com\r\n"));
            assert!(text.ends_with(&format!("line {} with some text in it\r\n", lines - 1)));
        }
    }

    #[test]
    fn strangers_mail_is_not_signed() {
        // 192.0.2.9 is not in relay_networks; it may send to far.test.
        let message = signed_play("relay_networks = []\nrelay_domains = [\"far.test\"]", 3);
        let text = String::from_utf8(message.body).unwrap();
        assert!(text.starts_with("Received: ") && !text.contains("DKIM-Signature"));
    }

    #[test]
    fn rfc821_example_1() {
        let s = settings("");
        let (out, accepted) = play(&s, [EXAMPLE_1]);
        assert_eq!(
            codes(&out),
            ["220", "250", "250", "250", "550", "250", "354", "250", "221"]
        );
        assert!(out.contains("550 5.1.1 No such user here\r\n"));
        let [message] = accepted.as_slice() else {
            panic!("{accepted:?}")
        };
        let rcpts: Vec<_> = message
            .recipients
            .iter()
            .map(|r| r.mailbox.as_str())
            .collect();
        assert_eq!(rcpts, ["Jones@Beta.ARPA", "Brown@Beta.ARPA"]);
        assert_eq!(message.sender, "Smith@Alpha.ARPA");
        let body = String::from_utf8_lossy(&message.body);
        assert!(body.starts_with(
            "Received: from Alpha.ARPA ([192.0.2.9]) by Beta.ARPA (mailhop) with SMTP id "
        ));
        assert!(
            body.ends_with(
                "; Fri, 15 Jan 2027 08:00:00 +0000\r\nBlah blah blah...\r\n.etc. etc. etc.\r\n"
            ),
            "{body}"
        );
        assert!(out.contains(&format!("250 2.0.0 Ok: queued as {}\r\n", message.id)));
    }

    #[test]
    fn any_split_of_the_input_gives_the_same_dialogue() {
        let s = settings("");
        let whole = play(&s, [EXAMPLE_1]);
        for at in 0..=EXAMPLE_1.len() {
            let (a, b) = EXAMPLE_1.split_at(at);
            let split = play(&s, [a, b]);
            assert_eq!(split.0, whole.0, "split at {at}");
            assert_eq!(split.1.len(), 1);
            assert_eq!(split.1[0].body, whole.1[0].body, "split at {at}");
        }
        let bytes = play(&s, EXAMPLE_1.chunks(1));
        assert_eq!(bytes.0, whole.0);
        assert_eq!(bytes.1[0].body, whole.1[0].body);
    }

    #[test]
    fn over_long_lines_are_refused_and_the_session_stays_in_sync() {
        let s = settings("");
        let mut input = b"EHLO x\r\nNOOP ".to_vec();
        input.extend(std::iter::repeat_n(b'a', 100_000));
        input.extend_from_slice(b"\r\nNOOP\r\nMAIL FROM:<a@b.example> ");
        input.extend(std::iter::repeat_n(b' ', 3000));
        input.extend_from_slice(b"\r\n");
        for chunk in [1, 7, 4096, input.len()] {
            let (out, _) = play(&s, input.chunks(chunk));
            assert_eq!(
                codes(&out),
                ["220", "250", "500", "250", "250"],
                "chunk {chunk}"
            );
            assert!(out.contains("500 5.5.6"));
        }
    }

    #[test]
    fn the_tenth_error_closes_with_421() {
        let s = settings("");
        let (out, _) = play(
            &s,
            [b"EHLO x\r\n".as_slice(), b"BOGUS\r\n".repeat(12).as_slice()],
        );
        let c = codes(&out);
        assert_eq!(c.len(), 1 + 1 + 10 + 1, "{out}");
        assert_eq!(c.last(), Some(&"421"));
        assert!(out.ends_with("421 4.7.0 Error: too many errors\r\n"));
    }

    #[test]
    fn a_local_user_may_relay_and_is_named_in_the_received_line() {
        // No relay_networks at all: only the local session may relay.
        let s = settings("");
        let mut ids = QueueIds::default();
        let mut failures = Failures::default();
        let mut env = Env {
            settings: &s,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            ids: &mut ids,
            auth_failures: &mut failures,
        };
        let input = b"EHLO cron\r\nMAIL FROM:<alice@Beta.ARPA>\r\nRCPT TO:<x@far.example>\r\nDATA\r\nhi\r\n.\r\n";
        let mut local = Session::local(&s, "mailhop sendmail -bs, userid 1000".into());
        local.receive(input, &mut env);
        let message = local.take_accepted().expect("relayed for the local user");
        assert_eq!(message.client_ip.to_string(), "127.0.0.1");
        assert_eq!(message.recipients[0].next_hop, "far.example");
        let body = String::from_utf8_lossy(&message.body);
        assert!(
            body.starts_with("Received: from cron ([127.0.0.1]) by Beta.ARPA (mailhop sendmail -bs, userid 1000) with ESMTP id "),
            "{body}"
        );
        let mut remote = Session::new(&s, "127.0.0.1".parse().unwrap(), false);
        remote.receive(input, &mut env);
        assert!(remote.take_accepted().is_none());
        let out = String::from_utf8_lossy(remote.output());
        assert!(out.contains("554 5.7.1 Relay access denied"), "{out}");
    }

    #[test]
    fn utf8_addresses_need_smtputf8() {
        let s = settings("relay_domains = [\"example.org\"]\n");
        let (out, accepted) = play(
            &s,
            ["EHLO x\r\nMAIL FROM:<jösé@example.org>\r\nMAIL FROM:<jösé@example.org> SMTPUTF8\r\nRCPT TO:<ünï@example.org>\r\nDATA\r\nhi\r\n.\r\n".as_bytes()],
        );
        assert_eq!(
            codes(&out),
            ["220", "250", "553", "250", "250", "354", "250"],
            "{out}"
        );
        assert!(accepted[0].smtputf8);
    }

    #[test]
    fn shutdown_waits_for_data_then_says_421() {
        let s = settings("");
        let mut ids = QueueIds::default();
        let mut failures = Failures::default();
        let mut session = Session::new(&s, "192.0.2.9".parse().unwrap(), false);
        let mut env = Env {
            settings: &s,
            now: SystemTime::now(),
            ids: &mut ids,
            auth_failures: &mut failures,
        };
        let input =
            b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<jones@beta.arpa>\r\nDATA\r\nhello\r\n";
        assert_eq!(session.receive(input, &mut env), input.len());
        session.shutdown(&s);
        assert!(!session.is_closed());
        session.receive(b".\r\n", &mut env);
        let message = session.take_accepted().unwrap();
        session.committed(Ok(&message.id), &s);
        assert!(session.is_closed());
        let out = String::from_utf8(session.output().clone()).unwrap();
        assert!(out.ends_with(&format!(
            "250 2.0.0 Ok: queued as {}\r\n421 4.3.2 Beta.ARPA Service shutting down\r\n",
            message.id
        )));
    }

    #[test]
    fn a_failed_commit_answers_451_and_resets_the_transaction() {
        let s = settings("");
        let mut ids = QueueIds::default();
        let mut failures = Failures::default();
        let mut session = Session::new(&s, "192.0.2.9".parse().unwrap(), false);
        let mut env = Env {
            settings: &s,
            now: SystemTime::now(),
            ids: &mut ids,
            auth_failures: &mut failures,
        };
        session.receive(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<jones@beta.arpa>\r\nDATA\r\nhi\r\n.\r\nRCPT TO:<brown@beta.arpa>\r\n", &mut env);
        assert!(session.awaiting_commit());
        session.take_accepted().unwrap();
        session.committed(Err(()), &s);
        session.receive(b"RCPT TO:<brown@beta.arpa>\r\n", &mut env);
        let out = String::from_utf8(session.output().clone()).unwrap();
        assert!(out.ends_with("451 4.3.0 Error: queue file write error, try again later\r\n503 5.5.1 Error: need MAIL command\r\n"), "{out}");
    }

    #[test]
    fn a_big_message_leaves_in_pieces_that_join_up_whatever_the_split() {
        let s = settings("max_message_size = 1000000\nbare_lf = \"normalize\"\n");
        let mut data = Vec::new();
        let mut n = 0;
        while data.len() < 300_000 {
            n += 1;
            match n % 5 {
                0 => data.extend_from_slice(b"..a stuffed dot\r\n"),
                1 => data.extend_from_slice(b"bare lf\n"),
                _ => data.extend_from_slice(b"Lorem ipsum dolor sit amet, consectetur\r\n"),
            }
        }
        let mut input =
            b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<jones@beta.arpa>\r\nDATA\r\n".to_vec();
        input.extend_from_slice(&data);
        input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
        let whole = play(&s, [input.as_slice()]);
        let [message] = whole.1.as_slice() else {
            panic!("{:?}", whole.0)
        };
        let (body, chunks) = (&message.body, message.chunks);
        assert!(chunks >= 4, "{chunks} pieces");
        let text = String::from_utf8_lossy(body);
        let data_start = text.find("\r\n").unwrap() + 2;
        assert!(text.starts_with("Received: "));
        assert!(!body[data_start..]
            .windows(2)
            .any(|w| w[1] == b'\n' && w[0] != b'\r'));
        assert!(text.contains("\r\n.a stuffed dot\r\n"));
        for size in [1, 1000, 4096, 65_536, 100_000] {
            let split = play(&s, input.chunks(size));
            assert_eq!(split.0, whole.0, "read {size} at a time");
            let [got] = split.1.as_slice() else {
                panic!("{:?}", split.0)
            };
            assert_eq!(
                (&got.body, got.chunks, got.size),
                (body, chunks, message.size),
                "read {size} at a time"
            );
        }
    }

    #[test]
    fn a_refused_big_message_says_which_pieces_to_discard() {
        let s = settings("max_message_size = 100000\n");
        let mut input =
            b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<jones@beta.arpa>\r\nDATA\r\n".to_vec();
        input.extend(std::iter::repeat_n(b"0123456789abcdef\r\n".as_slice(), 10_000).flatten());
        input.extend_from_slice(b".\r\nNOOP\r\n");
        let mut ids = QueueIds::default();
        let mut failures = Failures::default();
        let mut session = Session::new(&s, "192.0.2.9".parse().unwrap(), false);
        let mut env = Env {
            settings: &s,
            now: SystemTime::now(),
            ids: &mut ids,
            auth_failures: &mut failures,
        };
        let mut pos = 0;
        let mut pieces = 0;
        let mut discarded = None;
        while pos < input.len() {
            pos += session.receive(&input[pos..], &mut env);
            if session.piece().is_some() {
                assert!(session.unfinished_pieces().is_some() || pieces == 0);
                session.piece_written();
                pieces += 1;
            }
            discarded = discarded.or(session.take_discarded());
        }
        // Stored up to the limit only, then refused at the end.
        assert_eq!(pieces, 1);
        assert!(session.take_accepted().is_none());
        assert!(discarded.is_some());
        assert!(session.unfinished_pieces().is_none());
        let out = String::from_utf8(session.output().clone()).unwrap();
        assert!(
            out.ends_with("552 5.3.4 Error: message file too big\r\n250 2.0.0 Ok\r\n"),
            "{out}"
        );
    }

    const BDAT_ENVELOPE: &[u8] =
        b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<jones@beta.arpa>\r\n";

    /// `BDAT` lines for `chunks`, each followed by its octets.
    fn bdat_input(chunks: &[&[u8]], tail: &[u8]) -> Vec<u8> {
        let mut input = BDAT_ENVELOPE.to_vec();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = if i + 1 == chunks.len() { " LAST" } else { "" };
            input.extend_from_slice(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes());
            input.extend_from_slice(chunk);
        }
        input.extend_from_slice(tail);
        input
    }

    #[test]
    fn bdat_chunks_make_one_message_whatever_the_split() {
        let s = settings("");
        let cases: &[(&[&[u8]], &[u8])] = &[
            (
                &[b"Subject: x\r\n\r\nhello\r\n"],
                b"Subject: x\r\n\r\nhello\r\n",
            ),
            // Cut anywhere, a CRLF across chunks included; dots are content.
            (
                &[b"Subject: x\r", b"\n\r\n.hi\r\n", b"..\r\n.\r\n"],
                b"Subject: x\r\n\r\n.hi\r\n..\r\n.\r\n",
            ),
            (&[b"a\r\n", b""], b"a\r\n"),
            (&[b""], b""),
            // No final CRLF: stored as sent; the client adds one on relay.
            (&[b"abc"], b"abc"),
        ];
        for &(chunks, want) in cases {
            let input = bdat_input(chunks, b"QUIT\r\n");
            let whole = play(&s, [input.as_slice()]);
            let oks = 1 + 1 + 1 + 1 + chunks.len() + 1;
            assert_eq!(codes(&whole.0).len(), oks, "{}", whole.0);
            assert!(whole.0.contains("CHUNKING"));
            let [message] = whole.1.as_slice() else {
                panic!("{}", whole.0)
            };
            let body = &message.body;
            let data = &body[body.windows(2).position(|w| w == b"\r\n").unwrap() + 2..];
            assert_eq!(data, want, "{chunks:?}");
            for at in 0..=input.len() {
                let (a, b) = input.split_at(at);
                let split = play(&s, [a, b]);
                assert_eq!(split.0, whole.0, "split at {at}");
                assert_eq!(split.1[0].body, whole.1[0].body, "split at {at}");
            }
        }
    }

    #[test]
    fn bdat_out_of_place_is_refused_and_its_octets_are_read() {
        let s = settings("");
        let cases: &[(&[u8], &[&str])] = &[
            // Before EHLO, before MAIL, without recipients: 503, and the
            // octets (which look like commands) are not run.
            (b"BDAT 6\r\nQUIT\r\nNOOP\r\n", &["220", "503", "250"]),
            (b"EHLO x\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n", &["220", "250", "503", "250"]),
            (b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<green@beta.arpa>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n",
             &["220", "250", "250", "550", "503", "250"]),
            // DATA inside a BDAT transaction, MAIL too; RSET ends it.
            (b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<jones@beta.arpa>\r\nBDAT 3\r\nabcDATA\r\nMAIL FROM:<c@d.example>\r\nRSET\r\nBDAT 2 LAST\r\nhiNOOP\r\n",
             &["220", "250", "250", "250", "250", "503", "503", "250", "503", "250"]),
            // A bad size: 501, and what follows is commands.
            (b"EHLO x\r\nBDAT x\r\nNOOP\r\n", &["220", "250", "501", "250"]),
        ];
        for &(input, want) in cases {
            let (out, accepted) = play(&s, [input]);
            assert_eq!(codes(&out), want, "{out}");
            assert!(accepted.is_empty());
        }
    }

    #[test]
    fn bdat_keeps_the_limits_and_the_bare_line_end_policy() {
        // Over the size limit across chunks: 552 at the chunk that passes
        // it, the rest read and refused, the session in sync.
        let s = settings("max_message_size = 1000\n");
        let big = vec![b'a'; 600];
        let input = bdat_input(&[&big[..300], &big, &big, &big], b"NOOP\r\n");
        let (out, accepted) = play(&s, [input.as_slice()]);
        assert_eq!(
            codes(&out),
            ["220", "250", "250", "250", "250", "250", "552", "503", "250"],
            "{out}"
        );
        assert!(accepted.is_empty());
        // A bare LF or CR, also split over chunks, never gets in.
        for chunks in [
            &[b"a\nb\r\n".as_slice()][..],
            &[b"a\r", b"b\r\n"],
            &[b"a\r\n", b"\r"],
            &[b"x\r\n.\n", b"MAIL FROM:<evil@x>\r\n"],
        ] {
            let input = bdat_input(chunks, b"NOOP\r\n");
            let (out, accepted) = play(&settings(""), [input.as_slice()]);
            assert!(out.contains("550 5.6.0"), "{chunks:?}: {out}");
            assert!(out.ends_with("250 2.0.0 Ok\r\n"), "{out}");
            assert!(accepted.is_empty());
            let (out, accepted) = play(&settings("bare_lf = \"normalize\"\n"), [input.as_slice()]);
            let [message] = accepted.as_slice() else {
                panic!("{out}")
            };
            let body = &message.body;
            for (i, &b) in body.iter().enumerate() {
                assert!(b != b'\n' || body[i - 1] == b'\r', "bare LF in {body:?}");
                assert!(
                    b != b'\r' || body.get(i + 1) == Some(&b'\n'),
                    "bare CR in {body:?}"
                );
            }
        }
        // Lines over 998 octets and too many hops, as for DATA.
        let long = vec![b'x'; 999];
        let (out, _) = play(&settings(""), [bdat_input(&[&long], b"").as_slice()]);
        assert!(
            out.ends_with("552 5.3.4 Error: text line longer than 998 octets\r\n"),
            "{out}"
        );
        let hops = b"Received: a\r\nReceived: b\r\n\r\nx\r\n";
        let (out, _) = play(
            &settings("max_hops = 1\n"),
            [bdat_input(&[hops], b"").as_slice()],
        );
        assert!(out.ends_with("554 5.4.6 Error: too many hops\r\n"), "{out}");
    }
}
