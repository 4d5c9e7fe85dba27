//! Inbound sessions on the loop: accept, read, feed the state machine,
//! write its replies, close.
//!
//! Sockets are registered once for READABLE | WRITABLE (edge-triggered) and
//! never re-registered; `Readiness` remembers an edge until a
//! `WouldBlock` consumes it. What the session wants decides whether we read
//! (see `Session::wants_input`), which is the backpressure against clients
//! that pipeline without reading, without an `epoll_ctl` per state change.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use log::debug;
use mio::{Interest, Token};

use super::{write_out, Readiness, Server, Transport, DNS_BASE};
use crate::message::Message;
use crate::metrics::Direction;
use crate::queue::Queue;
use crate::smtp::server::{Env, Session, Settings};

/// Input a session may hold unconsumed: a partial command line is at most
/// 4 KiB, the rest is pipelined input waiting for a commit or for the
/// client to read its replies.
const MAX_PENDING_INPUT: usize = 64 * 1024;
/// Bytes read from one session per loop turn before others get a go.
const READ_BUDGET: usize = 256 * 1024;
/// Bytes read from all sessions in one loop turn: a thousand clients
/// sending big messages at once would otherwise make a turn of hundreds of
/// megabytes (seconds), and timers, commits and outbound sessions wait for
/// the end of a turn. Sessions left over go first in the next turn.
pub(super) const TURN_READ_BUDGET: usize = 4 * 1024 * 1024;
/// Buffers grown by a burst are given back once empty.
const KEEP_CAPACITY: usize = 16 * 1024;

pub(super) struct Conn {
    transport: Transport,
    pub(super) session: Session,
    /// The settings the session started with (a reload changes only new
    /// sessions'), and the TLS configuration it may upgrade with.
    pub(super) settings: Rc<Settings>,
    tls: Option<Arc<rustls::ServerConfig>>,
    ip: IpAddr,
    /// Input read but not yet consumed by the session.
    inbuf: Vec<u8>,
    ready: Readiness,
    eof: bool,
    pub(super) last_active: Instant,
    /// The entry this connection has in `Server::deadlines`.
    pub(super) deadline: Instant,
}

impl Server {
    pub(super) fn accept(&mut self, index: usize) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            let implicit_tls = listener.implicit_tls;
            let listener = &listener.socket;
            let (mut stream, addr) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    return self.pause_accepting(&e);
                }
                Err(e) => {
                    debug!("accept: {e}");
                    self.metrics.refused("accept_error");
                    continue;
                }
            };
            let ip = addr.ip().to_canonical();
            let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
            let refusal = if self.conns.len() >= self.max_connections {
                Some(("max_connections", "Error: too many connections"))
            } else if from_ip >= self.max_connections_per_ip {
                Some((
                    "max_connections_per_ip",
                    "Error: too many connections from your address",
                ))
            } else {
                None
            };
            if let Some((reason, text)) = refusal {
                self.metrics.refused(reason);
                // Best effort, without a slot: one write, then close.
                let mut session = Session::refuse(&self.settings, ip, text);
                let _ = stream.write(session.output());
                debug!("refused [{ip}]: {text}");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if key >= DNS_BASE
                || self
                    .poll
                    .registry()
                    .register(
                        &mut stream,
                        Token(key),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_err()
            {
                continue;
            }
            let deadline = self.now + self.idle_timeout;
            let mut transport = Transport::plain(stream);
            if implicit_tls {
                let Some(config) = self.tls.server.clone() else {
                    continue;
                };
                if transport.start_server(config).is_err() {
                    continue;
                }
            }
            entry.insert(Conn {
                transport,
                session: Session::new(&self.settings, ip, implicit_tls),
                settings: self.settings.clone(),
                tls: self.tls.server.clone(),
                ip,
                inbuf: Vec::new(),
                // Writable until a write would block: the greeting goes
                // out at once.
                ready: Readiness {
                    writable: true,
                    ..Readiness::default()
                },
                eof: false,
                last_active: self.now,
                deadline,
            });
            self.deadlines.insert((deadline, key));
            *self.per_ip.entry(ip).or_insert(0) += 1;
            self.metrics.inbound_accepted.inc();
            debug!("connect from [{ip}] as session {key}");
            self.drive(key);
        }
    }

    pub(super) fn conn_event(&mut self, key: usize, ready: Readiness) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.ready.note(ready);
        self.drive(key);
    }

    /// Moves one session as far as it can go now: feed held input, write
    /// replies, read more while the session wants it; then close it if done.
    pub(super) fn drive(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut env = Env {
            settings: &conn.settings,
            now: self.wall,
            ids: &mut self.ids,
            auth_failures: &mut self.auth_failures,
        };
        let mut budget = READ_BUDGET.min(self.turn_read_left);
        let budget_at_start = budget;
        let mut failed = false;
        loop {
            if !conn.inbuf.is_empty() && conn.session.wants_input() {
                let mut taken = Taken {
                    key,
                    queue: &mut self.queue,
                    to_commit: &mut self.to_commit,
                };
                let used = feed(&mut conn.session, &conn.inbuf, &mut env, &mut taken);
                conn.inbuf.drain(..used);
            }
            if conn.ready.writable
                && (!conn.session.output().is_empty() || conn.transport.wants_flush())
            {
                match write_out(&mut conn.transport, conn.session.output()) {
                    Ok(blocked) => conn.ready.writable = !blocked,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if conn.session.wants_tls() && conn.session.output().is_empty() {
                // The 220 is out: what the client sent after STARTTLS, in
                // clear, is dropped unread (CVE-2011-0411), then TLS.
                conn.inbuf.clear();
                match conn.tls.clone().map(|c| conn.transport.start_server(c)) {
                    Some(Ok(())) => conn.session.tls_started(),
                    _ => {
                        failed = true;
                        break;
                    }
                }
            }
            let may_read = conn.ready.readable
                && !conn.eof
                && budget > 0
                && conn.session.wants_input()
                && conn.inbuf.len() < MAX_PENDING_INPUT;
            if !may_read {
                break;
            }
            let handshaking = conn.transport.is_handshaking();
            if handshaking {
                // A handshake step is the costliest read there is (key
                // exchange and signature): only so many per turn, so a
                // storm of them cannot hold up everyone else's replies.
                if self.handshakes_left == 0 {
                    self.handshakes_waiting.push_back(key);
                    break;
                }
                self.handshakes_left -= 1;
            }
            let read = conn.transport.read(&mut self.scratch);
            if let Some(ok) = conn.transport.handshake_outcome(handshaking, &read) {
                self.metrics.handshake(Direction::inbound, ok);
            }
            match read {
                Ok(0) => conn.eof = true,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    conn.last_active = self.now;
                    conn.ready
                        .after_read(n, self.scratch.len(), &conn.transport);
                    let input = &self.scratch[..n];
                    if conn.inbuf.is_empty() {
                        let mut taken = Taken {
                            key,
                            queue: &mut self.queue,
                            to_commit: &mut self.to_commit,
                        };
                        let used = feed(&mut conn.session, input, &mut env, &mut taken);
                        conn.inbuf.extend_from_slice(&input[used..]);
                    } else {
                        conn.inbuf.extend_from_slice(input);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.ready.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        self.turn_read_left -= budget_at_start - budget;
        self.metrics.replies(conn.session.take_sent());
        if conn.inbuf.is_empty() && conn.inbuf.capacity() > KEEP_CAPACITY {
            conn.inbuf = Vec::new();
        }
        let out = conn.session.output();
        if out.is_empty() && out.capacity() > KEEP_CAPACITY {
            *out = Vec::new();
        }
        // After EOF, what is still held is fed once a commit returns; a
        // message cut off inside DATA is simply dropped.
        let done = failed
            || (conn.session.is_closed() && conn.session.output().is_empty())
            || (conn.eof
                && !conn.session.awaiting_commit()
                && (conn.inbuf.is_empty() || conn.session.wants_input()));
        if done {
            self.close(key);
        } else if budget == 0 && conn.ready.readable {
            self.runnable.push(key);
        }
    }

    fn close(&mut self, key: usize) {
        let conn = self.conns.remove(key);
        self.trim_due = true;
        if let Some(id) = conn.session.unfinished_pieces() {
            debug!("{id}: session ended inside the data; its pieces are discarded");
            self.queue.discard_body(id);
        }
        self.deadlines.remove(&(conn.deadline, key));
        if let Some(count) = self.per_ip.get_mut(&conn.ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&conn.ip);
            }
        }
        debug!("disconnect [{}] session {key}", conn.ip);
    }
}

/// Where what a session produces goes: full body pieces to the queue at
/// once, finished messages to the turn's group commit.
struct Taken<'a> {
    key: usize,
    queue: &'a mut Queue,
    to_commit: &'a mut Vec<(usize, Message)>,
}

/// Feeds `input` to the session, writing each body piece to the queue as
/// it fills so the session can take the rest of the input; returns how
/// much it consumed.
fn feed(session: &mut Session, input: &[u8], env: &mut Env<'_>, taken: &mut Taken<'_>) -> usize {
    let mut used = 0;
    loop {
        used += session.receive(&input[used..], env);
        let mut piece = false;
        if let Some((id, seq, data)) = session.piece() {
            // A failure is remembered by the queue: the message gets 451
            // at its end, and its pieces are discarded then.
            if let Err(e) = taken.queue.write_piece(id, seq, data) {
                log::error!("{e}");
            }
            session.piece_written();
            piece = true;
        }
        if let Some(id) = session.take_discarded() {
            taken.queue.discard_body(&id);
        }
        if let Some(message) = session.take_accepted() {
            taken.to_commit.push((taken.key, message));
        }
        if !piece || used == input.len() {
            return used;
        }
    }
}
