//! The load generator: N nonblocking SMTP client sessions on one mio loop.
//!
//! Each session: greeting, EHLO (HELO if refused), then per message MAIL,
//! RCPT..., DATA (all in one write with `--pipelining` when the server
//! offers PIPELINING), the headers and the shared dot-stuffed body in one
//! `writev`, and the reply to the final dot, timed from the moment its last
//! byte was written. With `--reuse` a session carries messages until none
//! are left, else it QUITs after one and a new session takes its place.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use memchr::memchr;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::message::Messages;
use super::stats::LoadResult;

/// A server that sends more than this without completing a reply is broken.
const MAX_INPUT: usize = 1 << 20;
/// Distinct error texts kept; the rest are lumped together.
const MAX_ERROR_KINDS: usize = 50;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Greeting,
    Ehlo,
    Helo,
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
    };
    let start = Instant::now();

    loop {
        // Keep N sessions open while there are messages for them.
        while conns.len() < plan.connections && ctx.claimed < plan.messages {
            if Instant::now() >= plan.deadline {
                break;
            }
            open(&poll, &mut conns, &mut ctx);
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

fn open(poll: &Poll, conns: &mut Slab<Conn>, ctx: &mut Ctx) {
    let claimed = if ctx.plan.reuse { None } else { ctx.claim() };
    ctx.result.connections_opened += 1;
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
    entry.insert(Conn {
        sock,
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
    });
}

impl Conn {
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
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return true,
                Err(e) => return self.lost(ctx, format!("connect: {e}")),
            }
        }
        loop {
            match self.sock.read(scratch) {
                Ok(0) => {
                    return match self.phase {
                        Phase::Quit => false,
                        phase => self.lost(
                            ctx,
                            format!("connection closed by the server ({})", phase.name()),
                        ),
                    };
                }
                Ok(n) => {
                    self.input.extend_from_slice(&scratch[..n]);
                    if !self.replies(ctx) {
                        return false;
                    }
                    if n < scratch.len() {
                        break;
                    }
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => {}
                    _ => return self.lost(ctx, format!("read ({}): {e}", self.phase.name())),
                },
            }
        }
        match self.flush(ctx) {
            Ok(()) => true,
            Err(e) => self.lost(ctx, format!("write ({}): {e}", self.phase.name())),
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
                    alive = self.on_reply(ctx, code, &input[pos..pos + len]);
                    pos += len;
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
            Phase::Helo if positive => self.ready(ctx),
            Phase::Ehlo | Phase::Helo => {
                return self.lost(ctx, format!("{}: {}", self.phase.name(), first_line(reply)));
            }
            Phase::Rset => self.ready(ctx),
            Phase::Envelope => return self.envelope_reply(ctx, code, reply),
            Phase::Dot => {
                if self.msg.take().is_some() {
                    let us = self.dot_at.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    ctx.result.latencies_us.push(us);
                    if positive {
                        ctx.result.accepted += 1;
                        ctx.result.accepted_rcpts += self.rcpts_ok;
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

    /// The next message, or QUIT.
    fn ready(&mut self, ctx: &mut Ctx) {
        let next = if ctx.plan.reuse {
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
        if self.msg.take().is_some() {
            ctx.result.failed += 1;
            ctx.finished();
        }
    }

    /// The session broke: note why, count what it carried. Returns false.
    fn lost(&mut self, ctx: &mut Ctx, why: String) -> bool {
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
                    ctx.result.sent += 1;
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
