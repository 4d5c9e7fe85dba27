//! The load generator: N nonblocking SMTP client sessions on one mio loop.
//!
//! Each session: greeting, EHLO (HELO if refused), then per message MAIL,
//! RCPT..., DATA (all in one write with `--pipelining` when the server
//! offers PIPELINING), the headers and the shared dot-stuffed body in one
//! `writev`, and the reply to the final dot, timed from the moment its last
//! byte was written. With `--reuse` a session carries messages until none
//! are left, else it QUITs after one and a new session takes its place.
//!
//! With TLS (`--starttls`: after the first EHLO; `--tls`: from the first
//! byte) a rustls `ClientConnection` sits between the session and the
//! socket: replies are read from its plaintext, commands written into it,
//! and the body is fed in 16 KiB pieces, each only once the ciphertext of
//! the last is out, so no session buffers more than a piece of a large
//! message. `--plain-probe N` adds N plain sessions that send one message
//! at a time for as long as the main load runs; their figures are kept
//! apart.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memchr::memchr;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, HandshakeKind};
use slab::Slab;

use super::args::{Args, OnOff};
use super::message::Messages;
use super::stats::LoadResult;
use super::tls;

/// A server that sends more than this without completing a reply is broken.
const MAX_INPUT: usize = 1 << 20;
/// Distinct error texts kept; the rest are lumped together.
const MAX_ERROR_KINDS: usize = 50;
/// Plaintext handed to rustls at a time: one TLS record.
const TLS_PIECE: usize = 16 * 1024;
/// Message numbers of the plain probe (in its Message-IDs) start here.
const PROBE_BASE: u64 = 1 << 60;

pub struct Plan {
    pub target: SocketAddr,
    pub connections: usize,
    pub messages: u64,
    pub recipients: Vec<String>,
    pub from: String,
    pub helo: String,
    pub pipelining: bool,
    pub reuse: bool,
    pub deadline: Instant,
    /// None: plain sessions.
    pub tls: Option<Arc<tls::Client>>,
    /// Plain sessions measuring latency beside the load, and where to.
    pub plain_probe: usize,
    pub probe_target: SocketAddr,
}

impl Plan {
    /// The plan the command line asks for, against `target`; the plain
    /// probe goes to `probe_target`.
    pub fn new(
        args: &Args,
        target: SocketAddr,
        probe_target: SocketAddr,
        deadline: Instant,
    ) -> Result<Plan, String> {
        let mode = tls::Mode::of(args);
        let tls = match mode {
            tls::Mode::Plain => None,
            _ => {
                let name = ServerName::try_from("localhost").expect("a valid name");
                let resume = args.resumption == OnOff::On;
                // Tickets for every session and the next one.
                let tickets = 2 * args.connections as usize;
                Some(Arc::new(tls::client(mode, name, resume, tickets)?))
            }
        };
        Ok(Plan {
            target,
            connections: args.connections as usize,
            messages: args.messages,
            recipients: args.recipients(),
            from: args.from.clone(),
            helo: args.helo.clone(),
            pipelining: args.pipelining,
            reuse: args.reuse,
            deadline,
            tls,
            plain_probe: args.plain_probe as usize,
            probe_target,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Greeting,
    Ehlo,
    Helo,
    /// STARTTLS sent, its 220 awaited.
    StartTls,
    /// MAIL, RCPT, DATA sent; replies awaited in `pending`.
    Envelope,
    /// Writing the headers and body.
    Body,
    /// The final dot is written; waiting for the reply.
    Dot,
    Rset,
    Quit,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Connecting => "connect",
            Phase::Greeting => "greeting",
            Phase::Ehlo => "EHLO",
            Phase::Helo => "HELO",
            Phase::StartTls => "STARTTLS",
            Phase::Envelope => "envelope",
            Phase::Body => "data",
            Phase::Dot => "end of data",
            Phase::Rset => "RSET",
            Phase::Quit => "QUIT",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    Mail,
    Rcpt(usize),
    Data,
}

struct Conn {
    sock: TcpStream,
    /// Once TLS is on, everything goes through it.
    tls: Option<ClientConnection>,
    /// While the TLS handshake runs: since when.
    hs_start: Option<Instant>,
    starttls: bool,
    /// A plain-probe session.
    probe: bool,
    phase: Phase,
    input: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    /// Some while the shared body is written (bytes of it done).
    body_written: Option<usize>,
    pipelining: bool,
    size_ext: bool,
    pending: VecDeque<Expect>,
    /// Without --reuse, the message this session was opened for.
    claimed: Option<u64>,
    /// The message in flight, until its outcome is counted.
    msg: Option<u64>,
    rcpts_ok: u64,
    mail_refused: bool,
    dot_at: Instant,
    done: u64,
}

/// Everything but the sessions.
struct Ctx<'a> {
    plan: &'a Plan,
    msgs: &'a Messages,
    /// Messages handed out so far.
    claimed: u64,
    result: LoadResult,
    last_final: Option<Instant>,
    warned_pipelining: bool,
    /// Sessions open, of the load and of the probe.
    main_open: usize,
    probe_open: usize,
    probe_sent: u64,
}

impl Ctx<'_> {
    fn error(&mut self, kind: String) {
        if self.result.errors.len() >= MAX_ERROR_KINDS && !self.result.errors.contains_key(&kind) {
            self.result.error("(other errors)".to_string());
        } else {
            self.result.error(kind);
        }
    }

    fn claim(&mut self) -> Option<u64> {
        if self.claimed < self.plan.messages && Instant::now() < self.plan.deadline {
            self.claimed += 1;
            Some(self.claimed - 1)
        } else {
            None
        }
    }

    fn finished(&mut self) {
        self.last_final = Some(Instant::now());
    }

    /// The load still has messages to send or to hear about.
    fn main_running(&self) -> bool {
        (self.claimed < self.plan.messages || self.main_open > 0)
            && Instant::now() < self.plan.deadline
    }

    /// The probe's next message, while the load runs.
    fn probe_claim(&mut self) -> Option<u64> {
        if self.main_running() {
            self.probe_sent += 1;
            Some(PROBE_BASE + self.probe_sent)
        } else {
            None
        }
    }
}

pub fn run(plan: &Plan, msgs: &Messages) -> io::Result<LoadResult> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut conns: Slab<Conn> = Slab::with_capacity(plan.connections);
    let mut scratch = vec![0u8; 64 * 1024];
    let mut ctx = Ctx {
        plan,
        msgs,
        claimed: 0,
        result: LoadResult {
            messages: plan.messages,
            latencies_us: Vec::with_capacity(plan.messages.min(10_000_000) as usize),
            ..LoadResult::default()
        },
        last_final: None,
        warned_pipelining: false,
        main_open: 0,
        probe_open: 0,
        probe_sent: 0,
    };
    let start = Instant::now();

    loop {
        // Keep N sessions open while there are messages for them.
        while ctx.main_open < plan.connections && ctx.claimed < plan.messages {
            if Instant::now() >= plan.deadline {
                break;
            }
            open(&poll, &mut conns, &mut ctx, false);
        }
        // One attempt per missing probe and turn: a refused probe cannot spin.
        for _ in ctx.probe_open..plan.plain_probe {
            if !ctx.main_running() {
                break;
            }
            open(&poll, &mut conns, &mut ctx, true);
        }
        if conns.is_empty() {
            break;
        }
        let now = Instant::now();
        if now >= plan.deadline {
            ctx.result.timed_out = true;
            break;
        }
        let timeout = (plan.deadline - now).min(Duration::from_millis(100));
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            let key = event.token().0;
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            if !conn.drive(&mut ctx, &mut scratch) {
                let mut conn = conns.remove(key);
                let _ = poll.registry().deregister(&mut conn.sock);
                match conn.probe {
                    true => ctx.probe_open -= 1,
                    false => ctx.main_open -= 1,
                }
            }
        }
    }
    // Whatever is still open at the deadline is abandoned, not failed.
    drop(conns);
    let mut result = ctx.result;
    result.elapsed = match ctx.last_final {
        Some(t) => t - start,
        None => start.elapsed(),
    };
    Ok(result)
}

fn open(poll: &Poll, conns: &mut Slab<Conn>, ctx: &mut Ctx, probe: bool) {
    if probe {
        return open_probe(poll, conns, ctx);
    }
    let claimed = if ctx.plan.reuse { None } else { ctx.claim() };
    ctx.result.connections_opened += 1;
    let tls = match ctx.plan.tls.as_deref() {
        Some(t) if t.mode == tls::Mode::Implicit => {
            match ClientConnection::new(t.config.clone(), t.name.clone()) {
                Ok(c) => Some(c),
                Err(e) => {
                    ctx.error(format!("TLS client: {e}"));
                    if claimed.is_some() || ctx.claim().is_some() {
                        ctx.result.failed += 1;
                    }
                    return;
                }
            }
        }
        _ => None,
    };
    let mut sock = match TcpStream::connect(ctx.plan.target) {
        Ok(sock) => sock,
        Err(e) => {
            ctx.error(format!("connect: {e}"));
            // Every failed attempt uses up a message: the run stays bounded.
            if claimed.is_some() || ctx.claim().is_some() {
                ctx.result.failed += 1;
            }
            return;
        }
    };
    let entry = conns.vacant_entry();
    if let Err(e) = poll.registry().register(
        &mut sock,
        Token(entry.key()),
        Interest::READABLE | Interest::WRITABLE,
    ) {
        ctx.error(format!("register: {e}"));
        if claimed.is_some() || ctx.claim().is_some() {
            ctx.result.failed += 1;
        }
        return;
    }
    ctx.main_open += 1;
    entry.insert(Conn::new(sock, tls, claimed, false));
}

/// A plain session beside the load; its failures use up no message.
fn open_probe(poll: &Poll, conns: &mut Slab<Conn>, ctx: &mut Ctx) {
    ctx.result.probe.connections_opened += 1;
    let mut sock = match TcpStream::connect(ctx.plan.probe_target) {
        Ok(sock) => sock,
        Err(e) => return ctx.error(format!("plain probe: connect: {e}")),
    };
    let entry = conns.vacant_entry();
    let interest = Interest::READABLE | Interest::WRITABLE;
    if let Err(e) = poll
        .registry()
        .register(&mut sock, Token(entry.key()), interest)
    {
        return ctx.error(format!("plain probe: register: {e}"));
    }
    ctx.probe_open += 1;
    entry.insert(Conn::new(sock, None, None, true));
}

impl Conn {
    fn new(
        sock: TcpStream,
        tls: Option<ClientConnection>,
        claimed: Option<u64>,
        probe: bool,
    ) -> Conn {
        Conn {
            sock,
            tls,
            hs_start: None,
            starttls: false,
            probe,
            phase: Phase::Connecting,
            input: Vec::new(),
            out: Vec::new(),
            written: 0,
            body_written: None,
            pipelining: false,
            size_ext: false,
            pending: VecDeque::new(),
            claimed,
            msg: None,
            rcpts_ok: 0,
            mail_refused: false,
            dot_at: Instant::now(),
            done: 0,
        }
    }

    /// Handles a readiness event; false when the session is over.
    fn drive(&mut self, ctx: &mut Ctx, scratch: &mut [u8]) -> bool {
        if self.phase == Phase::Connecting {
            match self.sock.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.lost(ctx, format!("connect: {e}")),
            }
            match self.sock.peer_addr() {
                Ok(_) => {
                    let _ = self.sock.set_nodelay(true);
                    self.phase = Phase::Greeting;
                    if self.tls.is_some() {
                        self.hs_start = Some(Instant::now());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return true,
                Err(e) => return self.lost(ctx, format!("connect: {e}")),
            }
        }
        loop {
            let read = match self.tls.is_some() {
                true => self.read_tls(ctx, scratch),
                false => self.sock.read(scratch),
            };
            match read {
                Ok(0) => {
                    return match self.phase {
                        Phase::Quit => false,
                        _ => {
                            let why = format!("connection closed by the server ({})", self.stage());
                            self.lost(ctx, why)
                        }
                    };
                }
                Ok(n) => {
                    self.input.extend_from_slice(&scratch[..n]);
                    if !self.replies(ctx) {
                        return false;
                    }
                    // A short read on a plain socket empties it; rustls's
                    // plaintext says nothing about the socket.
                    if self.tls.is_none() && n < scratch.len() {
                        break;
                    }
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => {}
                    _ => return self.lost(ctx, format!("read ({}): {e}", self.stage())),
                },
            }
        }
        let flushed = match self.tls.is_some() {
            true => self.flush_tls(ctx),
            false => self.flush(ctx),
        };
        match flushed {
            Ok(()) => true,
            Err(e) => self.lost(ctx, format!("write ({}): {e}", self.stage())),
        }
    }

    /// The phase, or the TLS handshake while it runs.
    fn stage(&self) -> &'static str {
        match self.hs_start {
            Some(_) => "TLS handshake",
            None => self.phase.name(),
        }
    }

    /// Plaintext from rustls, reading the socket when it has none; notes
    /// the end of the handshake.
    fn read_tls(&mut self, ctx: &mut Ctx, buf: &mut [u8]) -> io::Result<usize> {
        let tls = self.tls.as_mut().expect("a TLS session");
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if tls.read_tls(&mut self.sock)? == 0 {
                return Ok(0);
            }
            if let Err(e) = tls.process_new_packets() {
                // Send the alert rustls queued, if the socket takes it.
                let _ = tls.write_tls(&mut self.sock);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if let Some(t0) = self.hs_start.filter(|_| !tls.is_handshaking()) {
                self.hs_start = None;
                let t = &mut ctx.result.tls;
                t.handshakes += 1;
                if tls.handshake_kind() == Some(HandshakeKind::Resumed) {
                    t.resumed += 1;
                }
                t.handshake_us
                    .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
        }
    }

    /// Acts on every complete reply in the input.
    fn replies(&mut self, ctx: &mut Ctx) -> bool {
        let input = std::mem::take(&mut self.input);
        let mut pos = 0;
        let mut alive = true;
        while alive {
            match next_reply(&input[pos..]) {
                None => break,
                Some(Ok((code, len))) => {
                    let plain = self.tls.is_none();
                    alive = self.on_reply(ctx, code, &input[pos..pos + len]);
                    pos += len;
                    if plain && self.tls.is_some() {
                        // Plaintext after the 220 to STARTTLS is not to be
                        // trusted (RFC 3207, section 6): dropped.
                        pos = input.len();
                        break;
                    }
                }
                Some(Err(())) => {
                    alive = self.lost(
                        ctx,
                        format!("not an SMTP reply: {}", first_line(&input[pos..])),
                    );
                }
            }
        }
        self.input = input;
        self.input.drain(..pos);
        if alive && self.input.len() > MAX_INPUT {
            return self.lost(ctx, "reply longer than 1 MiB".to_string());
        }
        alive
    }

    fn on_reply(&mut self, ctx: &mut Ctx, code: u16, reply: &[u8]) -> bool {
        let positive = (200..300).contains(&code);
        if code == 421 && self.phase != Phase::Quit {
            return self.lost(ctx, format!("{}: {}", self.phase.name(), first_line(reply)));
        }
        match self.phase {
            Phase::Connecting | Phase::Greeting => {
                if !positive {
                    return self.lost(ctx, format!("greeting: {}", first_line(reply)));
                }
                self.command(format_args!("EHLO {}", ctx.plan.helo));
                self.phase = Phase::Ehlo;
            }
            Phase::Ehlo if positive => {
                self.extensions(reply);
                if self.wants_starttls(ctx) {
                    if !self.starttls {
                        return self.lost(ctx, "EHLO: STARTTLS not offered".to_string());
                    }
                    self.command(format_args!("STARTTLS"));
                    self.phase = Phase::StartTls;
                    return true;
                }
                if ctx.plan.pipelining && !self.pipelining && !ctx.warned_pipelining {
                    ctx.warned_pipelining = true;
                    eprintln!("load: the server does not offer PIPELINING; not pipelining");
                }
                // Asked for and offered.
                self.pipelining &= ctx.plan.pipelining;
                self.ready(ctx);
            }
            Phase::Ehlo if code >= 500 => {
                self.command(format_args!("HELO {}", ctx.plan.helo));
                self.phase = Phase::Helo;
            }
            Phase::Helo if positive && self.wants_starttls(ctx) => {
                return self.lost(ctx, "EHLO refused: no STARTTLS".to_string());
            }
            Phase::Helo if positive => self.ready(ctx),
            Phase::Ehlo | Phase::Helo => {
                return self.lost(ctx, format!("{}: {}", self.phase.name(), first_line(reply)));
            }
            Phase::StartTls if code == 220 => {
                let t = ctx.plan.tls.as_deref().expect("--starttls");
                match ClientConnection::new(t.config.clone(), t.name.clone()) {
                    Ok(c) => self.tls = Some(c),
                    Err(e) => return self.lost(ctx, format!("TLS client: {e}")),
                }
                self.hs_start = Some(Instant::now());
                // rustls holds the EHLO until the handshake is done.
                self.command(format_args!("EHLO {}", ctx.plan.helo));
                self.phase = Phase::Ehlo;
            }
            Phase::StartTls => {
                return self.lost(ctx, format!("STARTTLS: {}", first_line(reply)));
            }
            Phase::Rset => self.ready(ctx),
            Phase::Envelope => return self.envelope_reply(ctx, code, reply),
            Phase::Dot if self.probe => {
                if self.msg.take().is_some() {
                    let p = &mut ctx.result.probe;
                    p.latencies_us.push(micros(self.dot_at.elapsed()));
                    if positive {
                        p.accepted += 1;
                        p.accepted_rcpts += self.rcpts_ok;
                    } else {
                        p.failed += 1;
                        ctx.error(format!("plain probe: end of data: {}", first_line(reply)));
                    }
                }
                self.done += 1;
                self.ready(ctx);
            }
            Phase::Dot => {
                if self.msg.take().is_some() {
                    let us = micros(self.dot_at.elapsed());
                    ctx.result.latencies_us.push(us);
                    if positive {
                        ctx.result.accepted += 1;
                        ctx.result.accepted_rcpts += self.rcpts_ok;
                        ctx.result.accepted_bytes += ctx.msgs.size as u64;
                    } else {
                        ctx.result.failed += 1;
                        ctx.error(format!("end of data: {}", first_line(reply)));
                    }
                    ctx.finished();
                }
                self.done += 1;
                self.ready(ctx);
            }
            Phase::Body => {
                return self.lost(ctx, format!("reply during the data: {}", first_line(reply)));
            }
            Phase::Quit => return false,
        }
        true
    }

    fn envelope_reply(&mut self, ctx: &mut Ctx, code: u16, reply: &[u8]) -> bool {
        let positive = (200..300).contains(&code);
        let Some(expect) = self.pending.pop_front() else {
            return self.lost(ctx, format!("unexpected reply: {}", first_line(reply)));
        };
        let n_rcpt = ctx.plan.recipients.len();
        match expect {
            Expect::Mail => {
                if !positive {
                    ctx.error(format!("MAIL: {}", first_line(reply)));
                    self.mail_refused = true;
                    self.fail_message(ctx);
                    if !self.pipelining {
                        return self.rset();
                    }
                } else if !self.pipelining {
                    self.rcpt(ctx, 0);
                }
            }
            Expect::Rcpt(i) => {
                if positive {
                    self.rcpts_ok += 1;
                } else if !self.mail_refused {
                    ctx.error(format!("RCPT: {}", first_line(reply)));
                }
                if !self.pipelining {
                    if i + 1 < n_rcpt {
                        self.rcpt(ctx, i + 1);
                    } else if self.rcpts_ok > 0 {
                        self.command(format_args!("DATA"));
                        self.pending.push_back(Expect::Data);
                    } else {
                        self.fail_message(ctx);
                        return self.rset();
                    }
                }
            }
            Expect::Data if code == 354 => {
                let Some(n) = self.msg.filter(|_| self.rcpts_ok > 0) else {
                    // A 354 for a transaction that already failed: end
                    // the empty message and ignore its reply.
                    self.fail_message(ctx);
                    self.out.extend_from_slice(b".\r\n");
                    self.phase = Phase::Dot;
                    return true;
                };
                self.out.extend_from_slice(&ctx.msgs.headers(n));
                self.body_written = Some(0);
                self.phase = Phase::Body;
            }
            Expect::Data => {
                if self.msg.is_some() {
                    ctx.error(format!("DATA: {}", first_line(reply)));
                }
                self.fail_message(ctx);
                return self.rset();
            }
        }
        true
    }

    /// STARTTLS is due: asked for, and not on yet (never on the probe).
    fn wants_starttls(&self, ctx: &Ctx) -> bool {
        let asked = ctx.plan.tls.as_ref().map(|t| t.mode) == Some(tls::Mode::StartTls);
        asked && !self.probe && self.tls.is_none()
    }

    /// The next message, or QUIT.
    fn ready(&mut self, ctx: &mut Ctx) {
        let next = if self.probe {
            ctx.probe_claim()
        } else if ctx.plan.reuse {
            ctx.claim()
        } else {
            self.claimed.take()
        };
        let Some(n) = next else {
            self.command(format_args!("QUIT"));
            self.phase = Phase::Quit;
            return;
        };
        self.msg = Some(n);
        self.rcpts_ok = 0;
        self.mail_refused = false;
        self.pending.clear();
        self.pending.push_back(Expect::Mail);
        let from = &ctx.plan.from;
        if self.size_ext {
            let size = ctx.msgs.size;
            self.command(format_args!("MAIL FROM:<{from}> SIZE={size}"));
        } else {
            self.command(format_args!("MAIL FROM:<{from}>"));
        }
        if self.pipelining {
            for i in 0..ctx.plan.recipients.len() {
                self.rcpt(ctx, i);
            }
            self.command(format_args!("DATA"));
            self.pending.push_back(Expect::Data);
        }
        self.phase = Phase::Envelope;
    }

    fn rcpt(&mut self, ctx: &Ctx, i: usize) {
        self.command(format_args!("RCPT TO:<{}>", ctx.plan.recipients[i]));
        self.pending.push_back(Expect::Rcpt(i));
    }

    fn rset(&mut self) -> bool {
        self.pending.clear();
        self.command(format_args!("RSET"));
        self.phase = Phase::Rset;
        true
    }

    fn command(&mut self, line: std::fmt::Arguments) {
        let _ = self.out.write_fmt(line);
        self.out.extend_from_slice(b"\r\n");
    }

    /// Counts the message in flight as failed (once).
    fn fail_message(&mut self, ctx: &mut Ctx) {
        if self.probe {
            if self.msg.take().is_some() {
                ctx.result.probe.failed += 1;
            }
            return;
        }
        if self.msg.take().is_some() {
            ctx.result.failed += 1;
            ctx.finished();
        }
    }

    /// The session broke: note why, count what it carried. Returns false.
    fn lost(&mut self, ctx: &mut Ctx, why: String) -> bool {
        if self.probe {
            ctx.error(format!("plain probe: {why}"));
            self.fail_message(ctx);
            self.phase = Phase::Quit;
            return false;
        }
        ctx.error(why);
        let had = self.msg.take().or(self.claimed.take());
        // A session that broke before carrying anything uses up a message,
        // so that a server refusing everything cannot keep us busy.
        let counted = had.is_some() || (self.done == 0 && ctx.claim().is_some());
        if counted {
            ctx.result.failed += 1;
            ctx.finished();
        }
        self.phase = Phase::Quit;
        false
    }

    fn extensions(&mut self, reply: &[u8]) {
        self.pipelining = false;
        self.size_ext = false;
        self.starttls = false;
        for line in reply.split(|&b| b == b'\n').skip(1) {
            let text = line.get(4..).unwrap_or_default();
            let keyword = text
                .split(|&b| b == b' ' || b == b'\r')
                .next()
                .unwrap_or_default();
            if keyword.eq_ignore_ascii_case(b"PIPELINING") {
                self.pipelining = true;
            } else if keyword.eq_ignore_ascii_case(b"SIZE") {
                self.size_ext = true;
            } else if keyword.eq_ignore_ascii_case(b"STARTTLS") {
                self.starttls = true;
            }
        }
    }

    /// Writes commands, then headers and body together; notes when the
    /// final dot is out.
    fn flush(&mut self, ctx: &mut Ctx) -> io::Result<()> {
        loop {
            let out = &self.out[self.written..];
            let n = match self.body_written {
                Some(b) => {
                    let body = &ctx.msgs.body[b..];
                    let slices = [IoSlice::new(out), IoSlice::new(body)];
                    if out.is_empty() && body.is_empty() {
                        0
                    } else {
                        match self.sock.write_vectored(&slices) {
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(e),
                        }
                    }
                }
                None if out.is_empty() => break,
                None => match self.sock.write(out) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                },
            };
            let from_out = n.min(out.len());
            self.written += from_out;
            if let Some(b) = self.body_written.as_mut() {
                *b += n - from_out;
                if *b == ctx.msgs.body.len() && self.written == self.out.len() {
                    self.body_written = None;
                    self.dot_at = Instant::now();
                    self.phase = Phase::Dot;
                    if !self.probe {
                        ctx.result.sent += 1;
                    }
                }
            }
            if self.written == self.out.len() {
                self.out.clear();
                self.written = 0;
                if self.body_written.is_none() {
                    break;
                }
            }
        }
        Ok(())
    }
}

impl Conn {
    /// `flush` through rustls: ciphertext out first, then the next
    /// commands, then the next piece of the body. The final dot counts as
    /// written when its ciphertext is.
    fn flush_tls(&mut self, ctx: &mut Ctx) -> io::Result<()> {
        let tls = self.tls.as_mut().expect("a TLS session");
        loop {
            while tls.wants_write() {
                match tls.write_tls(&mut self.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if self.written < self.out.len() {
                let n = tls.writer().write(&self.out[self.written..])?;
                self.written += n;
                if self.written == self.out.len() {
                    self.out.clear();
                    self.written = 0;
                }
                // Zero: rustls's buffer for the handshake's time is full.
                if n == 0 {
                    break;
                }
                continue;
            }
            let body = &ctx.msgs.body;
            match self.body_written.as_mut() {
                Some(b) if *b < body.len() => {
                    let piece = &body[*b..body.len().min(*b + TLS_PIECE)];
                    let n = tls.writer().write(piece)?;
                    *b += n;
                    if n == 0 {
                        break;
                    }
                    continue;
                }
                Some(_) => {
                    self.body_written = None;
                    self.dot_at = Instant::now();
                    self.phase = Phase::Dot;
                    ctx.result.sent += 1;
                }
                None => {}
            }
            break;
        }
        Ok(())
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// The length of the complete reply at the start of `buf` and its code,
/// `None` if incomplete, `Err` if a line has no code.
fn next_reply(buf: &[u8]) -> Option<Result<(u16, usize), ()>> {
    let mut pos = 0;
    loop {
        let lf = memchr(b'\n', &buf[pos..])?;
        let line = &buf[pos..pos + lf];
        let next = pos + lf + 1;
        let digits = match line.get(..3) {
            Some(d) if d.iter().all(u8::is_ascii_digit) => d,
            _ => return Some(Err(())),
        };
        if line.get(3) != Some(&b'-') {
            let code = digits
                .iter()
                .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
            return Some(Ok((code, next)));
        }
        pos = next;
    }
}

/// The first line of a reply, for the error tally.
fn first_line(reply: &[u8]) -> String {
    let end = memchr(b'\n', reply).unwrap_or(reply.len());
    let line = String::from_utf8_lossy(&reply[..end]);
    let line = line.trim_end();
    match line.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}
