//! The outbound SMTP session as a pure state machine: the event loop feeds
//! it the server's bytes and writes what it outputs; it reports per-recipient
//! replies. No socket, clock or SQL here.
//!
//! Order of events: `Ready` once greeted; after `send`, `Finished` and then
//! `Ready` again (a transaction that failed before the data is followed by
//! an RSET, and its `Ready` comes when the RSET is answered); after `quit`,
//! `Closed`. `Failed` ends the session whenever it comes; the loop should
//! still write what `output` holds (a QUIT after a 554 greeting) if it can,
//! then close.
//!
//! With PIPELINING the next transaction may go out right behind the final
//! dot (RFC 2920 3.1: message content may start a group; MAIL, RCPT and DATA
//! may follow), saving a round trip per message: when `may_send_next` says
//! so, `send` is allowed before the dot is answered. Its envelope replies
//! come after the dot's, so then `Finished` is followed by that
//! transaction's events instead of `Ready`. Should the session fail before
//! the dot is answered, the server has answered nothing of the next
//! transaction: `Failed` and `fail` report only the first, and the caller
//! decides the next with the failure reply.

use std::collections::VecDeque;
use std::io::Write as _;
use std::rc::Rc;

use base64::Engine as _;
use memchr::{memchr, memchr2};

use super::dsn::{self, Notify, Ret};
use super::reply::{self, Class, Reply, ReplyError};
use crate::config::Secret;

/// Below this much pending output the body is stuffed into it again ...
const LOW_WATER: usize = 16 * 1024;
/// ... up to about this much, so a large message is never copied whole.
const HIGH_WATER: usize = 64 * 1024;

/// One mail transaction to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Without angle brackets; `""` for the null reverse-path.
    pub reverse_path: String,
    /// Forward paths without angle brackets (may carry a source route).
    pub recipients: Vec<String>,
    /// As stored: CRLF line ends, not dot-stuffed (the client stuffs).
    pub body: Body,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// RFC 3461 parameters, passed on to a next hop that offers DSN.
    pub dsn: Dsn,
}

/// DSN parameters of one transaction (RFC 3461), as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dsn {
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// Per recipient, in the order of `Transaction::recipients`: `NOTIFY`,
    /// and `ORCPT` as `addr-type;address` (the caller puts the mailbox for
    /// recipients that came without one, as Postfix does). Missing entries
    /// mean neither.
    pub recipients: Vec<(Option<Notify>, Option<String>)>,
}

/// Where the body comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// All of it in memory (a small message, shared between the hops it
    /// goes to): the client stuffs it into the output by itself.
    Whole(Rc<[u8]>),
    /// `size` octets the loop hands over piece by piece as the socket
    /// takes them (`Client::wants_body`, `Client::push_body`), so a big
    /// message is never in memory whole.
    Pieces { size: u64 },
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Whole(bytes) => bytes.len() as u64,
            Body::Pieces { size } => *size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<&[u8]> for Body {
    fn from(bytes: &[u8]) -> Body {
        Body::Whole(bytes.into())
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body::Whole(bytes.into())
    }
}

/// What the loop must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Greeting and EHLO/HELO done, or the previous transaction is finished:
    /// call `send` with the next transaction, or `quit`.
    Ready,
    /// The transaction ended: the reply that decided each recipient, in the
    /// order of `Transaction::recipients`.
    Finished(Vec<Reply>),
    /// The connection cannot be used further (greeting refused, 421,
    /// garbage, server closed). When a transaction was in flight, the reply
    /// for each of its recipients: what the server already said where that
    /// was final (a 5xx to RCPT), else the reply that ended the connection.
    Failed {
        reply: Reply,
        recipients: Option<Vec<Reply>>,
    },
    /// STARTTLS was answered 220: the loop drops any input it holds,
    /// starts the TLS handshake, and calls `tls_started`.
    StartTls,
    /// QUIT answered (or not needed): close the socket.
    Closed,
}

/// What we do about STARTTLS with a next hop (`[tls] outbound`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// No TLS configured for this session.
    Off,
    /// STARTTLS when offered, else in clear.
    Opportunistic,
    /// No TLS, no mail: defer rather than send in clear.
    Required,
}

/// Which RFC 5321 4.5.3.2 timeout applies to what we wait for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Greeting, EHLO, MAIL, RCPT, RSET, QUIT replies.
    Command,
    /// The reply to DATA.
    DataInit,
    /// Writing the data (the loop applies it while output is pending).
    DataBlock,
    /// The reply after the final dot.
    DataDone,
}

/// What the server offered in its EHLO reply (nothing after HELO).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Extensions {
    pipelining: bool,
    /// The SIZE limit; `Some(0)` when offered without one.
    size: Option<u64>,
    eight_bit_mime: bool,
    smtputf8: bool,
    starttls: bool,
    chunking: bool,
    dsn: bool,
    auth_plain: bool,
    auth_login: bool,
}

impl Extensions {
    /// From the lines after the first (which greets, RFC 5321 4.1.1.1).
    fn from_ehlo(reply: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let is = |name: &str| keyword.eq_ignore_ascii_case(name);
            if is("PIPELINING") {
                ext.pipelining = true;
            } else if is("SIZE") {
                // A missing or unreadable number is no limit (RFC 1870: 0).
                ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
            } else if is("8BITMIME") {
                ext.eight_bit_mime = true;
            } else if is("SMTPUTF8") {
                ext.smtputf8 = true;
            } else if is("STARTTLS") {
                ext.starttls = true;
            } else if is("CHUNKING") {
                ext.chunking = true;
            } else if is("DSN") {
                ext.dsn = true;
            } else if is("AUTH") || keyword.len() > 5 && keyword[..5].eq_ignore_ascii_case("AUTH=")
            {
                // `AUTH PLAIN LOGIN`, or the old `AUTH=LOGIN PLAIN`.
                let first = keyword.get(5..).filter(|m| !m.is_empty());
                for mechanism in first.into_iter().chain(words) {
                    if mechanism.eq_ignore_ascii_case("PLAIN") {
                        ext.auth_plain = true;
                    } else if mechanism.eq_ignore_ascii_case("LOGIN") {
                        ext.auth_login = true;
                    }
                }
            }
        }
        ext
    }
}

/// A reply the transaction still waits for, in the order of the commands
/// (RFC 2920: pipelined replies come in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Mail,
    Rcpt(usize),
    Data,
    /// The reply to a BDAT chunk; `true` for the LAST one.
    Bdat(bool),
}

/// A transaction on the wire.
#[derive(Debug)]
struct Txn {
    recipients: Vec<String>,
    /// What follows each `RCPT TO:<...>`: the DSN parameters, if passed on.
    rcpt_params: Vec<String>,
    body: Body,
    /// The reply that decided each recipient, once one has. After all RCPT
    /// replies are in, `None` means accepted.
    replies: Vec<Option<Reply>>,
    /// RCPTs answered 2xx.
    accepted: usize,
    mail_refused: bool,
    pipelined: bool,
    pending: VecDeque<Expect>,
    /// The body goes as BDAT chunks (RFC 3030), not after DATA.
    bdat: bool,
    /// BDAT: the first chunk refused; it decides the recipients.
    chunk_error: Option<Reply>,
}

impl Txn {
    /// Nothing to deliver: DATA and whatever follows only need consuming.
    fn abandoned(&self) -> bool {
        self.mail_refused || self.accepted == 0
    }

    /// Recipients not yet decided get `reply`.
    fn decide_rest(&mut self, reply: &Reply) {
        for slot in self.replies.iter_mut().filter(|r| r.is_none()) {
            *slot = Some(reply.clone());
        }
    }

    /// Each recipient's final reply, `failure` for those without one.
    fn outcome(&self, failure: &Reply) -> Vec<Reply> {
        self.replies
            .iter()
            .map(|r| r.as_ref().unwrap_or(failure).clone())
            .collect()
    }
}

/// Where the body has got to on its way into the output: dot-stuffed, every
/// CRLF, bare CR and bare LF written as CRLF. The body comes in pieces cut
/// anywhere, so a CR that ends one waits for the next to say what it is.
#[derive(Debug, Default)]
struct Stuffer {
    /// Of a `Body::Whole`: how much is in the output.
    pos: usize,
    /// Nothing of the current line written yet (true at the start).
    line_start: bool,
    /// The last piece ended in a CR: CRLF if the next begins with LF,
    /// else a bare CR (written as CRLF all the same).
    cr: bool,
    /// The final `.` CRLF is written (BDAT: the last line is closed).
    done: bool,
    /// BDAT: no dot-stuffing and no end line; chunk sizes frame the body.
    raw: bool,
}

impl Stuffer {
    fn new() -> Stuffer {
        Stuffer {
            line_start: true,
            ..Stuffer::default()
        }
    }

    fn for_chunks() -> Stuffer {
        Stuffer {
            raw: true,
            ..Stuffer::new()
        }
    }

    /// Appends all of `piece` to `out`, stuffed. Copies runs, never byte
    /// by byte.
    fn stuff(&mut self, mut rest: &[u8], out: &mut Vec<u8>) {
        if self.cr && !rest.is_empty() {
            self.cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
            out.extend_from_slice(b"\r\n");
            self.line_start = true;
        }
        while let Some(&first) = rest.first() {
            if self.line_start && first == b'.' && !self.raw {
                out.push(b'.');
            }
            match memchr2(b'\r', b'\n', rest) {
                Some(0) => {
                    match (first, rest.get(1)) {
                        (b'\r', None) => {
                            self.cr = true;
                            return;
                        }
                        (b'\r', Some(b'\n')) => rest = &rest[2..],
                        _ => rest = &rest[1..],
                    }
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                }
                found => {
                    let run = found.unwrap_or(rest.len());
                    out.extend_from_slice(&rest[..run]);
                    rest = &rest[run..];
                    self.line_start = false;
                }
            }
        }
    }

    /// The body is over: close its last line and write the end line.
    fn end(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.cr) || !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        if !self.raw {
            out.extend_from_slice(b".\r\n");
        }
        self.done = true;
    }

    /// For a body in memory: stuffs until `out` holds about `limit` bytes
    /// or the body and its end line are all written.
    fn fill(&mut self, body: &[u8], out: &mut Vec<u8>, limit: usize) {
        // An input byte makes two at most (a CR held from before makes
        // its CRLF then too): half the room at a time stays within it.
        while !self.done && out.len() < limit {
            let room = (limit - out.len()) / 2;
            let end = body.len().min(self.pos + room.max(1));
            self.stuff(&body[self.pos..end], out);
            self.pos = end;
            if self.pos == body.len() {
                self.end(out);
            }
        }
    }
}

/// A transaction given behind the final dot of another.
#[derive(Debug)]
enum Next {
    /// Its envelope follows the dot on the wire.
    Sent(Box<Txn>),
    /// Refused before sending (`local_refusal`); reported after the
    /// first's `Finished`, so outcomes keep their order.
    Refused(Vec<Reply>),
}

/// Where an outbound AUTH is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthStep {
    /// `AUTH PLAIN <initial response>` sent: 235 owed.
    Plain,
    /// `AUTH LOGIN` sent: the 334 asking for the user name owed.
    LoginUser,
    /// The user name sent: the 334 asking for the password owed.
    LoginPassword,
    /// The password sent: 235 owed.
    LoginDone,
}

/// One enum, one transition function (`set_state`): DESIGN pattern 3.
#[derive(Debug)]
enum State {
    /// Connected; the server speaks first.
    Greeting,
    Ehlo,
    Helo,
    /// STARTTLS sent; its 220 is owed.
    StartTls,
    /// The loop is doing the handshake; nothing is expected.
    Handshake,
    /// AUTH (RFC 4954) sent; the step says which reply is owed.
    Auth(AuthStep),
    /// Idle between transactions.
    Ready,
    /// MAIL, RCPT and DATA replies owed.
    Envelope(Box<Txn>),
    /// 354 came; the body is still going into the output.
    Body(Box<Txn>, Stuffer),
    /// The final dot is in the output; its reply is owed. The second is
    /// the next transaction, given while `may_send_next`.
    DataDone(Box<Txn>, Option<Next>),
    /// After a transaction that failed before its data.
    Rset,
    Quit,
    Closed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Greeting => "greeting",
            State::Ehlo => "ehlo",
            State::Helo => "helo",
            State::StartTls => "starttls",
            State::Handshake => "handshake",
            State::Auth(_) => "auth",
            State::Ready => "ready",
            State::Envelope(_) => "envelope",
            State::Body(..) => "body",
            State::DataDone(..) => "data-done",
            State::Rset => "rset",
            State::Quit => "quit",
            State::Closed => "closed",
        }
    }

    fn txn(&self) -> Option<&Txn> {
        match self {
            State::Envelope(txn) | State::Body(txn, _) | State::DataDone(txn, _) => Some(txn),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct Client {
    helo_name: String,
    tls: TlsPolicy,
    /// The session runs over TLS.
    encrypted: bool,
    state: State,
    ext: Extensions,
    out: Vec<u8>,
    events: VecDeque<Event>,
    /// Input left unconsumed by the last `receive`: an incomplete reply
    /// (maybe some lines of a multi-line one). It is parsed again only once
    /// new input brings a line end, not for every byte trickling in.
    held: usize,
    /// In `DataDone` with a next transaction: how many bytes at the end of
    /// `out` follow the dot. The dot is on the wire once `out` is no longer.
    after_dot: usize,
    /// BDAT may be used where offered (`[outbound] chunking`).
    chunking: bool,
    /// One BDAT chunk while it is framed.
    chunk: Vec<u8>,
    /// AUTH with these (user, password) after the EHLO over TLS.
    auth: Option<(String, Secret)>,
}

impl Client {
    /// `helo_name`: our host name for EHLO/HELO. The session starts by
    /// waiting for the greeting.
    pub fn new(helo_name: &str) -> Client {
        Client::with_tls(helo_name, TlsPolicy::Off)
    }

    /// As `new`, using STARTTLS (RFC 3207) as `tls` says.
    pub fn with_tls(helo_name: &str, tls: TlsPolicy) -> Client {
        Client {
            helo_name: helo_name.to_string(),
            tls,
            encrypted: false,
            state: State::Greeting,
            ext: Extensions::default(),
            out: Vec::new(),
            events: VecDeque::new(),
            held: 0,
            after_dot: 0,
            chunking: true,
            chunk: Vec::new(),
            auth: None,
        }
    }

    /// Authenticate (RFC 4954, PLAIN or LOGIN as offered, PLAIN first)
    /// before the first transaction. Only ever over TLS: a session still in
    /// clear after its EHLO fails instead.
    pub fn set_auth(&mut self, user: &str, password: &Secret) {
        self.auth = Some((user.to_string(), password.clone()));
    }

    /// The last EHLO reply offered STARTTLS (RFC 3207).
    pub fn offered_starttls(&self) -> bool {
        self.ext.starttls
    }

    /// The connection is TLS from the first byte (RFC 8314 implicit TLS):
    /// no STARTTLS; the greeting comes over TLS.
    pub fn set_implicit_tls(&mut self) {
        self.encrypted = true;
    }

    /// The next hop offered DSN (RFC 3461): the parameters go on to it,
    /// and success is its to report.
    pub fn offers_dsn(&self) -> bool {
        self.ext.dsn
    }

    /// Whether to send with BDAT to next hops that offer CHUNKING (and
    /// PIPELINING: chunks go out without waiting for each reply); else DATA.
    pub fn set_chunking(&mut self, on: bool) {
        self.chunking = on;
    }

    /// Feeds bytes from the server; returns how many were consumed (the rest,
    /// an incomplete reply, must be fed again with more).
    pub fn receive(&mut self, input: &[u8]) -> usize {
        if matches!(self.state, State::Closed) {
            self.held = 0;
            return input.len();
        }
        let fresh = &input[self.held.min(input.len())..];
        if memchr(b'\n', fresh).is_none() && input.len() < reply::MAX_BYTES {
            self.held = input.len();
            return 0;
        }
        let mut pos = 0;
        while !matches!(self.state, State::Closed) {
            match reply::parse(&input[pos..]) {
                Ok(None) => break,
                Ok(Some((reply, used))) => {
                    pos += used;
                    log::trace!("outbound: <- {reply}");
                    self.on_reply(reply);
                }
                Err(err) => self.on_garbage(err),
            }
        }
        if matches!(self.state, State::Closed) {
            pos = input.len();
        }
        self.held = input.len() - pos;
        pos
    }

    /// Bytes to write to the server; the caller drains what it wrote. While
    /// data is being sent this is topped up from the body (dot-stuffed, bare
    /// CR and LF turned into CRLF) in bounded pieces, so a large message is
    /// never copied whole.
    pub fn output(&mut self) -> &mut Vec<u8> {
        self.refill();
        &mut self.out
    }

    /// The next thing to act on, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The final dot of a transaction the server accepted recipients for
    /// is in the output, the server pipelines, and no next transaction is
    /// queued behind it yet: `send` may be called now.
    pub fn may_send_next(&self) -> bool {
        matches!(&self.state, State::DataDone(txn, None)
            if txn.pipelined && !txn.abandoned() && (!txn.bdat || txn.chunk_error.is_none()))
    }

    /// Starts a transaction; only after `Event::Ready`, or while
    /// `may_send_next`.
    ///
    /// A `Ready` can be followed by a `Failed` already queued (a 421 in the
    /// same read as the EHLO reply); a `send` acting on that stale `Ready`
    /// gets a `Finished` with a local 451 for everyone.
    pub fn send(&mut self, transaction: Transaction) {
        let n = transaction.recipients.len();
        let refusal = match self.state {
            State::Ready => self.local_refusal(&transaction),
            _ if self.may_send_next() => self.local_refusal(&transaction),
            State::Closed => Some(Reply::local(
                451,
                "4.4.2",
                "connection to the next hop lost before the transaction",
            )),
            _ => {
                debug_assert!(false, "send in state {}", self.state.name());
                Some(Reply::local(
                    451,
                    "4.3.0",
                    "internal error: connection not ready",
                ))
            }
        };
        if let Some(reply) = refusal {
            if let State::DataDone(_, next @ None) = &mut self.state {
                *next = Some(Next::Refused(vec![reply; n]));
                return;
            }
            self.events.push_back(Event::Finished(vec![reply; n]));
            if matches!(self.state, State::Ready) {
                self.events.push_back(Event::Ready);
            }
            return;
        }

        let t = transaction;
        let ext = self.ext;
        let before = self.out.len();
        let _ = write!(self.out, "MAIL FROM:<{}>", t.reverse_path);
        if ext.size.is_some() {
            let _ = write!(self.out, " SIZE={}", t.body.len());
        }
        if t.eight_bit && ext.eight_bit_mime {
            self.out.extend_from_slice(b" BODY=8BITMIME");
        }
        if t.smtputf8 {
            self.out.extend_from_slice(b" SMTPUTF8");
        }
        let mut rcpt_params = Vec::new();
        if ext.dsn {
            if let Some(ret) = t.dsn.ret {
                let _ = write!(self.out, " RET={}", ret.as_str());
            }
            if let Some(envid) = &t.dsn.envid {
                let _ = write!(self.out, " ENVID={}", dsn::xtext_encode(envid));
            }
            for i in 0..n {
                let (notify, orcpt) = t.dsn.recipients.get(i).cloned().unwrap_or_default();
                let mut params = String::new();
                if let Some(notify) = notify {
                    params.push_str(" NOTIFY=");
                    params.push_str(&notify.to_param());
                }
                if let Some(orcpt) = orcpt {
                    params.push_str(" ORCPT=");
                    params.push_str(&dsn::orcpt_param(&orcpt));
                }
                rcpt_params.push(params);
            }
        }
        self.out.extend_from_slice(b"\r\n");
        let mut txn = Box::new(Txn {
            replies: vec![None; n],
            recipients: t.recipients,
            rcpt_params,
            body: t.body,
            accepted: 0,
            mail_refused: false,
            pipelined: ext.pipelining,
            pending: VecDeque::from([Expect::Mail]),
            bdat: self.chunking && ext.chunking && ext.pipelining,
            chunk_error: None,
        });
        if txn.pipelined {
            for i in 0..n {
                self.rcpt(&mut txn, i);
            }
            // BDAT waits for the RCPT replies: no chunk for nobody.
            if !txn.bdat {
                self.data(&mut txn);
            }
        }
        match self.take_state() {
            State::DataDone(current, None) => {
                self.after_dot = self.out.len() - before;
                self.set_state(State::DataDone(current, Some(Next::Sent(txn))));
            }
            _ => self.set_state(State::Envelope(txn)),
        }
    }

    /// Ends the session politely (QUIT), after `Event::Ready`.
    pub fn quit(&mut self) {
        match self.take_state() {
            State::Ready => {
                self.out.extend_from_slice(b"QUIT\r\n");
                self.set_state(State::Quit);
            }
            State::Quit => self.set_state(State::Quit),
            // Not between transactions (shutting down): no QUIT, but every
            // recipient in flight is still accounted for.
            other => {
                if let Some(txn) = other.txn() {
                    let reply = Reply::local(451, "4.3.2", "delivery abandoned");
                    let recipients = Some(txn.outcome(&reply));
                    self.events.push_back(Event::Failed { reply, recipients });
                }
                self.out.clear();
                self.events.push_back(Event::Closed);
                self.set_state(State::Closed);
            }
        }
    }

    /// The connection failed from outside (reset, EOF, timeout): like
    /// `Event::Failed`, returned directly; the session is over.
    pub fn fail(&mut self, reply: Reply) -> Option<Vec<Reply>> {
        self.out.clear();
        let state = self.take_state();
        if matches!(state, State::Quit) {
            // The server hung up instead of answering QUIT: as good.
            self.events.push_back(Event::Closed);
        }
        let recipients = state.txn().map(|txn| txn.outcome(&reply));
        if !matches!(state, State::Closed) {
            log::debug!("outbound: {} failed: {reply}", state.name());
        }
        self.set_state(State::Closed);
        recipients
    }

    /// What we are waiting for, for the loop's timer; `None` when idle
    /// between transactions (the loop's connection cache decides) or closed.
    pub fn waiting(&self) -> Option<Wait> {
        match &self.state {
            State::Greeting
            | State::Ehlo
            | State::Helo
            | State::StartTls
            | State::Handshake
            | State::Auth(_)
            | State::Rset
            | State::Quit => Some(Wait::Command),
            State::Envelope(txn) => match txn.pending.front() {
                Some(Expect::Data) => Some(Wait::DataInit),
                _ => Some(Wait::Command),
            },
            State::Body(..) => Some(Wait::DataBlock),
            State::DataDone(..) if self.out.len() > self.after_dot => Some(Wait::DataBlock),
            State::DataDone(..) => Some(Wait::DataDone),
            State::Ready | State::Closed => None,
        }
    }

    /// Why a transaction cannot even start here.
    fn local_refusal(&self, t: &Transaction) -> Option<Reply> {
        let size = t.body.len();
        if let Some(limit) = self.ext.size.filter(|&limit| limit != 0 && limit < size) {
            let text =
                format!("message size {size} exceeds the next hop's limit of {limit} octets");
            return Some(Reply::local(552, "5.3.4", &text));
        }
        if t.smtputf8 && !self.ext.smtputf8 {
            let text = "the message needs SMTPUTF8, which the next hop does not offer";
            return Some(Reply::local(553, "5.6.7", text));
        }
        // The address parsers never let these through; a command line we
        // write must not be split whatever we were given.
        let breaks = |path: &String| memchr2(b'\r', b'\n', path.as_bytes()).is_some();
        if breaks(&t.reverse_path) || t.recipients.iter().any(breaks) {
            return Some(Reply::local(501, "5.1.3", "line break in an address"));
        }
        None
    }

    fn rcpt(&mut self, txn: &mut Txn, i: usize) {
        let params = txn.rcpt_params.get(i).map_or("", String::as_str);
        let _ = write!(self.out, "RCPT TO:<{}>{params}\r\n", txn.recipients[i]);
        txn.pending.push_back(Expect::Rcpt(i));
    }

    fn data(&mut self, txn: &mut Txn) {
        self.out.extend_from_slice(b"DATA\r\n");
        txn.pending.push_back(Expect::Data);
    }

    fn on_reply(&mut self, reply: Reply) {
        match self.take_state() {
            State::Quit => {
                self.events.push_back(Event::Closed);
                self.set_state(State::Closed);
            }
            State::Closed => self.set_state(State::Closed),
            state if reply.code == 421 => self.failed(state, reply),
            State::Greeting => match reply.code {
                220 => {
                    let _ = write!(self.out, "EHLO {}\r\n", self.helo_name);
                    self.set_state(State::Ehlo);
                }
                // RFC 5321 3.1: the client should send QUIT before closing.
                554 => {
                    self.out.extend_from_slice(b"QUIT\r\n");
                    self.failed(State::Greeting, reply);
                }
                _ => self.failed(State::Greeting, refusal(reply)),
            },
            State::Ehlo => match reply.class() {
                Class::Positive => {
                    self.ext = Extensions::from_ehlo(&reply);
                    self.after_ehlo();
                }
                Class::Permanent => {
                    let _ = write!(self.out, "HELO {}\r\n", self.helo_name);
                    self.set_state(State::Helo);
                }
                _ => self.failed(State::Ehlo, refusal(reply)),
            },
            State::Helo if reply.class() == Class::Positive => {
                self.ext = Extensions::default();
                self.after_ehlo();
            }
            State::StartTls if reply.code == 220 => {
                self.events.push_back(Event::StartTls);
                self.set_state(State::Handshake);
            }
            State::StartTls if self.tls == TlsPolicy::Required => {
                self.failed(State::StartTls, refusal(reply))
            }
            // Opportunistic: STARTTLS refused, so in clear it is.
            State::StartTls => self.ready(),
            State::Handshake => self.failed(State::Handshake, unexpected(&reply)),
            State::Auth(step) => self.auth_reply(step, reply),
            State::Rset if reply.class() == Class::Positive => self.ready(),
            state @ (State::Helo | State::Rset) => self.failed(state, refusal(reply)),
            State::Envelope(txn) => self.envelope_reply(txn, reply),
            State::Body(txn, stuffer) if txn.bdat => {
                self.chunk_reply(txn, Some(stuffer), None, reply)
            }
            State::DataDone(txn, next) if txn.bdat => self.chunk_reply(txn, None, next, reply),
            // Only once the dot is on the wire can it have been answered.
            State::DataDone(txn, next) if self.out.len() <= self.after_dot => {
                if txn.abandoned() {
                    // The dot after a 354 nobody wanted: the reply is moot.
                    // (Nothing is pipelined behind it: see may_send_next.)
                    return self.finish_failed(*txn);
                }
                if reply.class() == Class::Intermediate {
                    return self.failed(State::DataDone(txn, next), unexpected(&reply));
                }
                self.data_answered(*txn, next, &reply);
            }
            // Idle, or still writing the data: nothing was asked.
            state => self.failed(state, unexpected(&reply)),
        }
    }

    fn envelope_reply(&mut self, mut txn: Box<Txn>, reply: Reply) {
        let Some(expect) = txn.pending.pop_front() else {
            return self.failed(State::Envelope(txn), unexpected(&reply));
        };
        let class = reply.class();
        match expect {
            Expect::Mail => match class {
                Class::Positive if !txn.pipelined => self.rcpt(&mut txn, 0),
                Class::Positive => {}
                Class::Transient | Class::Permanent => {
                    txn.mail_refused = true;
                    txn.decide_rest(&reply);
                    if !txn.pipelined {
                        return self.finish_failed(*txn);
                    }
                }
                Class::Intermediate => {
                    return self.failed(State::Envelope(txn), unexpected(&reply))
                }
            },
            Expect::Rcpt(i) => {
                // After a refused MAIL, pipelined RCPT replies mean nothing.
                if !txn.mail_refused {
                    match class {
                        Class::Positive => txn.accepted += 1,
                        Class::Transient | Class::Permanent => txn.replies[i] = Some(reply),
                        Class::Intermediate => {
                            return self.failed(State::Envelope(txn), unexpected(&reply))
                        }
                    }
                }
                if !txn.pipelined {
                    if i + 1 < txn.recipients.len() {
                        self.rcpt(&mut txn, i + 1);
                    } else if txn.accepted > 0 {
                        self.data(&mut txn);
                    } else {
                        return self.finish_failed(*txn);
                    }
                }
            }
            Expect::Bdat(_) => return self.failed(State::Envelope(txn), unexpected(&reply)),
            Expect::Data if reply.code == 354 => {
                if txn.abandoned() {
                    // Only pipelined DATA can get here (a server that says
                    // 354 with no recipients): end the empty message.
                    self.out.extend_from_slice(b".\r\n");
                    return self.set_state(State::DataDone(txn, None));
                }
                self.set_state(State::Body(txn, Stuffer::new()));
                return self.refill();
            }
            Expect::Data => {
                if txn.abandoned() {
                    return self.finish_failed(*txn);
                }
                if !matches!(class, Class::Transient | Class::Permanent) {
                    return self.failed(State::Envelope(txn), unexpected(&reply));
                }
                txn.decide_rest(&reply);
                return self.finish_failed(*txn);
            }
        }
        if txn.bdat && txn.pending.is_empty() {
            // The envelope is answered: chunks, or nothing to send.
            if txn.abandoned() {
                return self.finish_failed(*txn);
            }
            self.set_state(State::Body(txn, Stuffer::for_chunks()));
            return self.refill();
        }
        self.set_state(State::Envelope(txn));
    }

    fn on_garbage(&mut self, err: ReplyError) {
        let reply = Reply::local(
            451,
            "4.5.0",
            &format!("invalid reply from the next hop: {}", err.0),
        );
        match self.take_state() {
            State::Quit => {
                self.events.push_back(Event::Closed);
                self.set_state(State::Closed);
            }
            state => self.failed(state, reply),
        }
    }

    /// A reply to a BDAT chunk (in order: RFC 2920). One refused ends the
    /// sending; the transaction is over once every chunk sent is answered.
    fn chunk_reply(
        &mut self,
        mut txn: Box<Txn>,
        stuffer: Option<Stuffer>,
        next: Option<Next>,
        reply: Reply,
    ) {
        let Some(Expect::Bdat(last)) = txn.pending.pop_front() else {
            let state = match stuffer {
                Some(stuffer) => State::Body(txn, stuffer),
                None => State::DataDone(txn, next),
            };
            return self.failed(state, unexpected(&reply));
        };
        match reply.class() {
            Class::Positive => {}
            Class::Intermediate => {
                return self.failed(State::DataDone(txn, next), unexpected(&reply));
            }
            Class::Transient | Class::Permanent => {
                if txn.chunk_error.is_none() {
                    txn.chunk_error = Some(reply.clone());
                }
            }
        }
        if let Some(stuffer) = stuffer {
            // Still sending: stop at a refusal (RFC 3030 2), go on else.
            if txn.chunk_error.is_none() {
                return self.set_state(State::Body(txn, stuffer));
            }
        }
        if !txn.pending.is_empty() {
            return self.set_state(State::DataDone(txn, next));
        }
        if !last {
            // Given up before LAST: the server may still hold the
            // transaction, so RSET it.
            if let Some(error) = txn.chunk_error.take() {
                txn.decide_rest(&error);
            }
            return self.finish_failed(*txn);
        }
        let decided = txn.chunk_error.take().unwrap_or(reply);
        self.data_answered(*txn, next, &decided);
    }

    /// The reply to the final dot (or BDAT LAST) decides the recipients
    /// still open; then the transaction pipelined behind it, if any.
    fn data_answered(&mut self, mut txn: Txn, next: Option<Next>, reply: &Reply) {
        txn.decide_rest(reply);
        self.events.push_back(Event::Finished(final_replies(txn)));
        self.after_dot = 0;
        match next {
            Some(Next::Sent(next)) => self.set_state(State::Envelope(next)),
            Some(Next::Refused(replies)) => {
                self.events.push_back(Event::Finished(replies));
                self.ready();
            }
            None => self.ready(),
        }
    }

    /// BDAT: `piece` (and with `last`, the end) as one chunk in the output.
    fn emit_chunk(&mut self, piece: &[u8], last: bool) {
        let State::Body(txn, stuffer) = &mut self.state else {
            return;
        };
        let chunk = &mut self.chunk;
        chunk.clear();
        stuffer.stuff(piece, chunk);
        if last {
            stuffer.end(chunk);
        }
        if chunk.is_empty() && !last {
            return;
        }
        let _ = write!(
            self.out,
            "BDAT {}{}\r\n",
            chunk.len(),
            if last { " LAST" } else { "" }
        );
        self.out.extend_from_slice(chunk);
        txn.pending.push_back(Expect::Bdat(last));
        if self.chunk.capacity() > 2 * HIGH_WATER {
            self.chunk = Vec::new();
        }
    }

    /// The loop should hand over the next piece of a `Body::Pieces` now
    /// (`push_body`): the data has begun and the output is running low.
    pub fn wants_body(&self) -> bool {
        matches!(&self.state, State::Body(txn, _) if matches!(txn.body, Body::Pieces { .. }))
            && self.out.len() < LOW_WATER
    }

    /// The next piece of a `Body::Pieces`; `last` for the final one (which
    /// may be empty), after which the end-of-data line follows. Pieces are
    /// cut anywhere; their sizes must add up to the promised size.
    pub fn push_body(&mut self, piece: &[u8], last: bool) {
        let State::Body(txn, stuffer) = &mut self.state else {
            // A refused chunk may have ended the sending meanwhile.
            debug_assert!(
                matches!(&self.state, State::DataDone(txn, _) if txn.bdat),
                "push_body in state {}",
                self.state.name()
            );
            return;
        };
        if txn.bdat {
            self.emit_chunk(piece, last);
        } else {
            stuffer.stuff(piece, &mut self.out);
            if last {
                stuffer.end(&mut self.out);
            }
        }
        if last {
            self.refill();
        }
    }

    /// Tops up the output from a body in memory; moves on once the dot is in.
    fn refill(&mut self) {
        let State::Body(txn, stuffer) = &mut self.state else {
            return;
        };
        if let Body::Whole(body) = &txn.body {
            if txn.bdat {
                // A chunk at a time, each about what the output may hold.
                let body = body.clone();
                while self.out.len() < LOW_WATER {
                    let State::Body(_, stuffer) = &mut self.state else {
                        return;
                    };
                    if stuffer.done {
                        break;
                    }
                    let end = body.len().min(stuffer.pos + HIGH_WATER / 2);
                    let (from, last) = (stuffer.pos, end == body.len());
                    stuffer.pos = end;
                    self.emit_chunk(&body[from..end], last);
                }
            } else if self.out.len() < LOW_WATER {
                stuffer.fill(body, &mut self.out, HIGH_WATER);
            }
        }
        let State::Body(_, stuffer) = &mut self.state else {
            return;
        };
        if stuffer.done {
            let State::Body(txn, _) = self.take_state() else {
                unreachable!("matched above")
            };
            self.set_state(State::DataDone(txn, None));
        }
    }

    fn ready(&mut self) {
        self.events.push_back(Event::Ready);
        self.set_state(State::Ready);
    }

    /// Greeted: upgrade to TLS when we may and the server offers it; with
    /// `Required`, a server that does not offer it gets no mail. Then AUTH
    /// if asked for.
    fn after_ehlo(&mut self) {
        if !self.encrypted && self.tls != TlsPolicy::Off {
            if self.ext.starttls {
                self.out.extend_from_slice(b"STARTTLS\r\n");
                return self.set_state(State::StartTls);
            }
            if self.tls == TlsPolicy::Required {
                let reply = Reply::local(
                    451,
                    "4.7.10",
                    "TLS is required but the next hop does not offer STARTTLS",
                );
                return self.failed(State::Ready, reply);
            }
        }
        if self.auth.is_some() {
            return self.start_auth();
        }
        self.ready()
    }

    /// AUTH PLAIN with the initial response, else LOGIN; never in clear.
    fn start_auth(&mut self) {
        let Some((user, password)) = &self.auth else {
            return self.ready();
        };
        if !self.encrypted {
            let reply = Reply::local(
                451,
                "4.7.10",
                "AUTH needs TLS, and the session with the next hop is in clear",
            );
            return self.failed(State::Ready, reply);
        }
        if self.ext.auth_plain {
            let token = format!("\0{user}\0{}", password.expose());
            let _ = write!(self.out, "AUTH PLAIN {}\r\n", b64(token.as_bytes()));
            return self.set_state(State::Auth(AuthStep::Plain));
        }
        if self.ext.auth_login {
            self.out.extend_from_slice(b"AUTH LOGIN\r\n");
            return self.set_state(State::Auth(AuthStep::LoginUser));
        }
        let reply = Reply::local(
            451,
            "4.7.0",
            "AUTH not offered by the next hop (PLAIN or LOGIN needed)",
        );
        self.out.extend_from_slice(b"QUIT\r\n");
        self.failed(State::Ready, reply)
    }

    /// A reply during AUTH: 235 goes on to mail; anything but the
    /// expected answer defers (an account problem is no proof the mail is
    /// bad), quoting what the server said.
    fn auth_reply(&mut self, step: AuthStep, reply: Reply) {
        let Some((user, password)) = &self.auth else {
            return self.failed(State::Auth(step), unexpected(&reply));
        };
        match step {
            AuthStep::LoginUser if reply.code == 334 => {
                let _ = write!(self.out, "{}\r\n", b64(user.as_bytes()));
                self.set_state(State::Auth(AuthStep::LoginPassword));
            }
            AuthStep::LoginPassword if reply.code == 334 => {
                let _ = write!(self.out, "{}\r\n", b64(password.expose().as_bytes()));
                self.set_state(State::Auth(AuthStep::LoginDone));
            }
            AuthStep::Plain | AuthStep::LoginDone if reply.code == 235 => self.ready(),
            _ => {
                let refused = Reply::local(
                    451,
                    "4.7.0",
                    &format!("authentication with the next hop failed: {reply}"),
                );
                if reply.code != 334 {
                    self.out.extend_from_slice(b"QUIT\r\n");
                }
                self.failed(State::Auth(step), refused);
            }
        }
    }

    /// The handshake is under way: start over with EHLO, as RFC 3207 4.2
    /// requires, forgetting what the server said in clear.
    pub fn tls_started(&mut self) {
        // The loop dropped what it held: what came in clear is not input.
        self.held = 0;
        self.encrypted = true;
        self.ext = Extensions::default();
        let _ = write!(self.out, "EHLO {}\r\n", self.helo_name);
        self.set_state(State::Ehlo);
    }

    /// Reports a transaction that ended before its data, then RSETs so the
    /// connection can carry the next one.
    fn finish_failed(&mut self, txn: Txn) {
        self.events.push_back(Event::Finished(final_replies(txn)));
        self.out.extend_from_slice(b"RSET\r\n");
        self.set_state(State::Rset);
    }

    fn failed(&mut self, state: State, reply: Reply) {
        log::debug!("outbound: {} failed: {reply}", state.name());
        let recipients = state.txn().map(|txn| txn.outcome(&reply));
        self.events.push_back(Event::Failed { reply, recipients });
        self.set_state(State::Closed);
    }

    /// Leaves `Closed` in place; every caller sets the next state.
    fn take_state(&mut self) -> State {
        std::mem::replace(&mut self.state, State::Closed)
    }

    fn set_state(&mut self, next: State) {
        log::trace!("outbound: -> {}", next.name());
        self.state = next;
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Every recipient's reply once the transaction is over.
fn final_replies(txn: Txn) -> Vec<Reply> {
    txn.replies
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Reply::local(451, "4.3.0", "no reply recorded")))
        .collect()
}

/// A refusal is passed on as it is; anything else where a refusal was
/// the only alternative to success is a protocol error.
fn refusal(reply: Reply) -> Reply {
    match reply.class() {
        Class::Transient | Class::Permanent => reply,
        _ => unexpected(&reply),
    }
}

/// Deferred, never bounced: a confused server is no proof the mail is bad.
fn unexpected(reply: &Reply) -> Reply {
    Reply::local(
        451,
        "4.5.0",
        &format!("unexpected reply from the next hop: {reply}"),
    )
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Server lines: the usual replies, the odd ones, and garbage.
    fn server_reply() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => Just(b"220 mx ESMTP\r\n".to_vec()),
            3 => Just(b"250 2.0.0 ok\r\n".to_vec()),
            2 => Just(b"250-mx\r\n250-PIPELINING\r\n250-SIZE 100\r\n250 8BITMIME\r\n".to_vec()),
            2 => Just(b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n".to_vec()),
            1 => Just(b"250-mx\r\n250 SMTPUTF8\r\n".to_vec()),
            3 => Just(b"354 go\r\n".to_vec()),
            1 => Just(b"421 4.3.2 bye\r\n".to_vec()),
            1 => Just(b"450 4.2.0 later\r\n".to_vec()),
            1 => Just(b"550 5.1.1 no\r\n".to_vec()),
            1 => Just(b"554 5.7.1 go away\r\n".to_vec()),
            1 => Just(b"500 what\r\n".to_vec()),
            1 => Just(b"221 bye\r\n".to_vec()),
            1 => Just(b"garbage\r\n".to_vec()),
            1 => Just(b"250-continued\r\n".to_vec()),
            1 => prop::collection::vec(any::<u8>(), 0..12),
        ]
    }

    fn transaction() -> impl Strategy<Value = Transaction> {
        (
            1usize..5,
            prop::collection::vec(
                prop_oneof![
                    Just(b"\r\n".to_vec()),
                    Just(b".".to_vec()),
                    Just(b"\r".to_vec()),
                    Just(b"\n".to_vec()),
                    Just(b"text".to_vec())
                ],
                0..20,
            ),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(n, body, eight_bit, smtputf8)| Transaction {
                reverse_path: "s@a.example".into(),
                recipients: (0..n).map(|i| format!("r{i}@b.example")).collect(),
                body: body.concat().into(),
                eight_bit,
                smtputf8,
                dsn: Dsn::default(),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random replies in random pieces: no panic, and each transaction
        /// sent gets exactly one outcome with one reply per recipient.
        #[test]
        fn every_recipient_gets_exactly_one_reply(
            replies in prop::collection::vec(server_reply(), 0..30),
            cuts in prop::collection::vec(any::<usize>(), 0..10),
            txns in prop::collection::vec(transaction(), 1..4),
            quit_early in any::<bool>(),
            opening in 0..4u8,
            pipeline_next in any::<bool>(),
        ) {
            // Most runs get as far as a transaction: a greeting and an EHLO
            // reply (pipelining or not) first, then the random replies.
            let mut input = match opening {
                0 => b"220 mx\r\n250-mx\r\n250 PIPELINING\r\n".to_vec(),
                1 => b"220 mx\r\n250 mx\r\n".to_vec(),
                2 => b"220 mx\r\n250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n".to_vec(),
                _ => Vec::new(),
            };
            input.extend(replies.concat());
            let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (input.len() + 1)).collect();
            cuts.push(input.len());
            cuts.sort_unstable();
            let mut client = Client::new("relay.example");
            let mut txns: VecDeque<Transaction> = txns.into();
            let mut owed: VecDeque<usize> = VecDeque::new();
            let mut held = Vec::new();
            let mut at = 0;
            let mut closed = false;
            let mut quit_done = false;
            for cut in cuts {
                held.extend_from_slice(&input[at..cut]);
                at = cut;
                let used = client.receive(&held);
                prop_assert!(used <= held.len());
                held.drain(..used);
                // The loop writes everything it is given.
                for _ in 0..1000 {
                    if client.output().is_empty() {
                        break;
                    }
                    client.output().clear();
                }
                while let Some(event) = client.poll_event() {
                    match event {
                        Event::Ready => match txns.pop_front() {
                            Some(t) => {
                                owed.push_back(t.recipients.len());
                                client.send(t);
                            }
                            _ => client.quit(),
                        },
                        Event::Finished(replies) => {
                            let n = owed.pop_front().expect("an outcome nobody was owed");
                            prop_assert_eq!(replies.len(), n);
                        }
                        Event::Failed { recipients, .. } => {
                            if let Some(replies) = recipients {
                                let n = owed.pop_front().expect("an outcome nobody was owed");
                                prop_assert_eq!(replies.len(), n);
                                // One sent behind the dot is the caller's to decide.
                                prop_assert!(owed.len() <= 1);
                                owed.clear();
                            }
                        }
                        // TLS is off for this client: never asked for.
                        Event::StartTls => prop_assert!(false, "STARTTLS without TLS"),
                        Event::Closed => closed = true,
                    }
                }
                // The loop may give up at any point (shutting down).
                if quit_early && !quit_done && !owed.is_empty() {
                    quit_done = true;
                    client.quit();
                }
                if pipeline_next && client.may_send_next() {
                    prop_assert_eq!(owed.len(), 1);
                    if let Some(t) = txns.pop_front() {
                        owed.push_back(t.recipients.len());
                        client.send(t);
                    }
                }
            }
            // The connection ends: whatever is still in flight is decided,
            // the one behind the dot by the caller.
            if let Some(replies) = client.fail(Reply::local(451, "4.4.2", "lost")) {
                let n = owed.pop_front().expect("an outcome nobody was owed");
                prop_assert_eq!(replies.len(), n);
                prop_assert!(owed.len() <= 1);
                owed.clear();
            }
            while let Some(event) = client.poll_event() {
                match event {
                    Event::Finished(replies) => {
                        let n = owed.pop_front().expect("an outcome nobody was owed");
                        prop_assert_eq!(replies.len(), n);
                    }
                    Event::Failed { recipients: Some(replies), .. } => {
                        let n = owed.pop_front().expect("an outcome nobody was owed");
                        prop_assert_eq!(replies.len(), n);
                        prop_assert!(owed.len() <= 1);
                        owed.clear();
                    }
                    _ => {}
                }
            }
            prop_assert!(owed.is_empty(), "recipients without a reply: {:?}, closed {}", owed, closed);
        }

        /// Whatever the body holds, the client writes CRLF lines only and
        /// ends them with exactly one end-of-data line.
        #[test]
        fn data_on_the_wire_has_no_bare_line_ends(t in transaction()) {
            let mut t = t;
            t.smtputf8 = false;
            let mut client = Client::new("relay.example");
            client.receive(b"220 mx\r\n250-mx\r\n250 8BITMIME\r\n");
            let mut wire = std::mem::take(client.output());
            prop_assert_eq!(client.poll_event(), Some(Event::Ready));
            let body = t.body.clone();
            let n = t.recipients.len();
            client.send(t);
            wire.clear();
            std::mem::take(client.output());
            client.receive(b"250 ok\r\n");
            for _ in 0..n {
                client.receive(b"250 ok\r\n");
                std::mem::take(client.output());
            }
            client.receive(b"354 go\r\n");
            loop {
                let out = std::mem::take(client.output());
                if out.is_empty() {
                    break;
                }
                wire.extend(out);
            }
            prop_assert!(wire.ends_with(b"\r\n.\r\n") || wire == b".\r\n");
            for (i, &b) in wire.iter().enumerate() {
                if b == b'\n' {
                    prop_assert_eq!(wire[i - 1], b'\r', "bare LF at {} of {:?}", i, body);
                }
                if b == b'\r' {
                    prop_assert_eq!(wire.get(i + 1), Some(&b'\n'), "bare CR at {} of {:?}", i, body);
                }
            }
            // Exactly one end-of-data line, at the end.
            let ends = wire.windows(5).filter(|w| w == b"\r\n.\r\n").count()
                + usize::from(wire.starts_with(b".\r\n"));
            prop_assert_eq!(ends, 1, "{:?}", String::from_utf8_lossy(&wire));
        }
    }
}
