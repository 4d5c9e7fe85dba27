//! Outbound sessions on the loop: connect to a next hop, drive the client
//! state machine, keep the connection a few seconds for the next message,
//! and turn what the server said into outcomes for the turn's commit.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hashbrown::HashMap;
use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{shaper, sts, write_out, Readiness, Server, Transport, OUT_BASE};
use crate::config::{Config, RouteOptions, RouteTls};
use crate::metrics::Direction;
use crate::queue::{Lease, StoredMessage};
use crate::smtp::client::{Body, Client, Dsn, Event, TlsPolicy, Transaction, Wait};
use crate::smtp::reply::Reply;

/// How long a connection waits, idle, for another message to the same hop.
pub(super) const IDLE_KEEP: Duration = Duration::from_secs(5);
/// Outbound sessions moved per loop turn while clients are waiting
/// (`run_outbound`). Measured (accept, reused connections, c=100): with no
/// limit a burst was accepted at 17-18k msg/s, forwarding 13k of each 20k
/// meanwhile; with 4, at 22-24k msg/s, and end to end was unchanged.
const OUT_PER_BUSY_TURN: usize = 4;

/// Leased recipients of one message for one next hop, with the message.
pub(super) struct Job {
    pub(super) lease: Lease,
    pub(super) message: Rc<StoredMessage>,
    /// A small body kept in memory since it arrived, shared by the hops it
    /// goes to and never copied; `None`: read from the queue piece by
    /// piece as the next hop takes it.
    pub(super) body: Option<Rc<[u8]>>,
    /// Of a body read from the queue: the piece to send next.
    pub(super) next_piece: u32,
    /// The next hop offered DSN and got the parameters: it reports.
    pub(super) dsn_passed: bool,
    pub(super) started_at: SystemTime,
    /// TLS under an MTA-STS policy on the session its attempt was on, for
    /// the history (`attempts.tls_result`).
    pub(super) tls: Option<sts::TlsNote>,
}

/// Where a next hop's connections go: its hosts in the order to try them
/// (MX preference), and the one in use. A failed connection or greeting
/// moves on to the next host; when all have failed the hop is failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Destination {
    /// `(label, address)`; the label is what the history records:
    /// `mx1.example.org[192.0.2.1]:25`, or the address alone.
    pub(super) hosts: Vec<(String, SocketAddr)>,
    pub(super) current: usize,
    /// The MTA-STS policy its MX hosts are under (enforce or testing).
    pub(super) sts: Option<Rc<sts::Applied>>,
}

impl Destination {
    pub(super) fn single(addr: SocketAddr) -> Destination {
        Destination {
            hosts: vec![(addr.to_string(), addr)],
            current: 0,
            sts: None,
        }
    }

    fn host(&self) -> Option<&(String, SocketAddr)> {
        self.hosts.get(self.current)
    }
}

pub(super) struct OutConn {
    pub(super) transport: Transport,
    pub(super) client: Client,
    pub(super) hop: String,
    addr: SocketAddr,
    /// The host as the history shows it (see `Destination::hosts`).
    pub(super) label: String,
    connected: bool,
    /// Greeting and EHLO went through: the host is up.
    pub(super) greeted: bool,
    /// Under an MTA-STS policy: what it asks and what TLS came to.
    pub(super) sts: Option<sts::StsConn>,
    inbuf: Vec<u8>,
    ready: Readiness,
    /// In `Server::out_ready`.
    ready_queued: bool,
    job: Option<Job>,
    /// The hop's next job, pipelined behind `job`'s final dot
    /// (`Client::may_send_next`); it becomes `job` when that is answered.
    next: Option<Job>,
    pub(super) idle: bool,
    pub(super) deadline: Instant,
}

impl Server {
    /// Hands waiting jobs of `hop` to idle connections, and opens new ones
    /// (within the limits) for the rest.
    pub(super) fn dispatch(&mut self, hop: &str) {
        let Some(waiting) = self.jobs.get(hop).map(VecDeque::len) else {
            return;
        };
        if waiting == 0 {
            return;
        }
        if let Some(until) = self.failing_until(hop) {
            let jobs: Vec<Job> = self
                .jobs
                .get_mut(hop)
                .map(|q| q.drain(..).collect())
                .unwrap_or_default();
            let reply = self.host_error(hop);
            for job in jobs {
                self.settle_job(job, &[], reply.clone(), None, Some(until));
            }
            return;
        }
        if let Some(until) = self.backing_off_until(hop) {
            return self.hold_back_shaped(hop, until);
        }
        self.trim_shaped_backlog(hop);
        let idle: Vec<usize> = self
            .out
            .iter()
            .filter(|(_, c)| c.idle && c.hop == hop)
            .map(|(k, _)| k)
            .collect();
        for key in idle {
            self.out[key].idle = false;
            self.next_job(key);
            self.drive_out(key);
        }
        let waiting = self.jobs.get(hop).map_or(0, VecDeque::len);
        let on_hop = self.out.iter().filter(|(_, c)| c.hop == hop).count();
        let starting = self
            .out
            .iter()
            .filter(|(_, c)| c.hop == hop && c.job.is_none() && !c.idle)
            .count();
        // `[shaping]` and back-off: fewer connections, and no more new
        // ones than the hop's tokens will keep busy.
        let (per_host, tokens) = self
            .shaped_room(hop, starting)
            .unwrap_or((self.limits.out_per_host, usize::MAX));
        let mut to_open = waiting
            .saturating_sub(starting)
            .min(per_host.saturating_sub(on_hop))
            .min(tokens)
            .min(self.limits.out_total.saturating_sub(self.out.len()));
        while to_open > 0 {
            let Some((label, addr)) = self.destinations.get(hop).and_then(|d| d.host()).cloned()
            else {
                return;
            };
            self.open(hop, label, addr);
            to_open -= 1;
        }
    }

    fn open(&mut self, hop: &str, label: String, addr: SocketAddr) {
        let tls = self
            .route_options
            .get(hop)
            .map_or(RouteTls::Opportunistic, |o| o.tls);
        // RFC 8314 implicit TLS: the handshake starts with the connection.
        let implicit = match tls {
            RouteTls::Implicit => match self.tls_client(hop, &label, addr) {
                Ok(client) => Some(client),
                Err(e) => {
                    let reply = Reply::local(451, "4.7.5", &format!("TLS with {label}: {e}"));
                    return self.hop_failed(hop, addr, reply, None);
                }
            },
            _ => None,
        };
        let sts = self.sts_conn(hop, &label);
        let entry = self.out.vacant_entry();
        let key = entry.key();
        let stream = TcpStream::connect(addr).and_then(|mut stream| {
            // A big body's final piece and the next envelope behind it are
            // written apart; Nagle would hold the second for an ACK.
            stream.set_nodelay(true)?;
            self.poll.registry().register(
                &mut stream,
                Token(OUT_BASE + key),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                self.metrics.outbound_connection(false);
                let reply = Reply::local(451, "4.4.1", &format!("connect to {label}: {e}"));
                return self.hop_failed(hop, addr, reply, None);
            }
        };
        let deadline = self.now + self.timeouts.connect;
        let options = self.route_options.get(hop);
        let enforce = sts.as_ref().is_some_and(sts::StsConn::enforce);
        let policy = if self.tls.required || tls != RouteTls::Opportunistic || enforce {
            TlsPolicy::Required
        } else {
            TlsPolicy::Opportunistic
        };
        let mut client = Client::with_tls(&self.settings.hostname, policy);
        client.set_chunking(self.limits.chunking);
        if let Some(auth) = options.and_then(|o| o.auth.as_ref()) {
            client.set_auth(&auth.user, &auth.password);
        }
        let mut transport = Transport::plain(stream);
        if let Some((config, name)) = implicit {
            // The first flight waits in rustls until the socket is writable.
            if let Err(e) = transport.start_client(config, name) {
                let _ = self.poll.registry().deregister(&mut transport.stream);
                let reply = Reply::local(451, "4.7.5", &format!("TLS with {label}: {e}"));
                return self.hop_failed(hop, addr, reply, None);
            }
            client.set_implicit_tls();
        }
        entry.insert(OutConn {
            transport,
            client,
            hop: hop.to_string(),
            addr,
            label,
            connected: false,
            greeted: false,
            sts,
            inbuf: Vec::new(),
            ready: Readiness::default(),
            ready_queued: false,
            job: None,
            next: None,
            idle: false,
            deadline,
        });
        self.out_deadlines.insert((deadline, key));
        debug!("connecting to {hop} [{addr}] as outbound {key}");
        self.sts_opened(key);
    }

    /// Notes what the event says; the session is driven in `run_outbound`.
    pub(super) fn out_event(&mut self, key: usize, ready: Readiness) {
        let Some(conn) = self.out.get_mut(key) else {
            return;
        };
        conn.ready.note(ready);
        if !conn.ready_queued {
            conn.ready_queued = true;
            self.out_ready.push_back(key);
        }
    }

    /// Drives the outbound sessions that had events, oldest first, once
    /// per commit turn. Clients come first: while inbound sessions kept
    /// the turn busy (`clients_waiting`), at most `OUT_PER_BUSY_TURN` move
    /// and the rest wait for the next turn, so a burst is answered at the
    /// speed of accepting alone and the queue absorbs the difference,
    /// which is what it is for. Delivery never stops (that many move every
    /// turn) and has the whole loop as soon as the burst ends.
    pub(super) fn run_outbound(&mut self, clients_waiting: bool) {
        let mut budget = if clients_waiting {
            OUT_PER_BUSY_TURN
        } else {
            usize::MAX
        };
        while budget > 0 {
            let Some(key) = self.out_ready.pop_front() else {
                break;
            };
            if let Some(conn) = self.out.get_mut(key) {
                conn.ready_queued = false;
                self.drive_out(key);
                budget -= 1;
            }
        }
    }

    /// Moves one outbound session as far as it goes now.
    pub(super) fn drive_out(&mut self, key: usize) {
        let Some(conn) = self.out.get_mut(key) else {
            return;
        };
        if !conn.connected {
            if !(conn.ready.readable || conn.ready.writable) {
                return;
            }
            // mio: connected only once writable, no pending error, and a peer.
            let error = match conn.transport.stream.take_error() {
                Ok(None) => match conn.transport.stream.peer_addr() {
                    Ok(_) => None,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(e) => Some(e),
                },
                Ok(Some(e)) | Err(e) => Some(e),
            };
            if let Some(e) = error {
                self.metrics.outbound_connection(false);
                let reply = Reply::local(451, "4.4.1", &format!("connect to {}: {e}", conn.label));
                return self.out_failed(key, reply);
            }
            conn.connected = true;
            self.metrics.outbound_connection(true);
        }
        loop {
            let Some(conn) = self.out.get_mut(key) else {
                return;
            };
            if !conn.inbuf.is_empty() {
                let used = conn.client.receive(&conn.inbuf);
                conn.inbuf.drain(..used);
            }
            let mut acted = false;
            while let Some(event) = self.out.get_mut(key).and_then(|c| c.client.poll_event()) {
                acted = true;
                self.client_event(key, event);
            }
            self.pipeline_next(key);
            let Some(conn) = self.out.get_mut(key) else {
                return;
            };
            if conn.ready.writable && conn.client.wants_body() {
                if let Err(reply) = feed_body(conn, &self.queue, &mut self.piece) {
                    return self.out_failed(key, reply);
                }
            }
            let mut progressed = acted;
            while conn.ready.writable {
                let out = conn.client.output();
                if out.is_empty() && !conn.transport.wants_flush() {
                    break;
                }
                match write_out(&mut conn.transport, out) {
                    Ok(blocked) => {
                        conn.ready.writable = !blocked;
                        progressed = true;
                    }
                    Err(e) => {
                        let reply = Reply::local(
                            451,
                            "4.4.2",
                            &format!("lost connection with {}: {e}", conn.label),
                        );
                        return self.out_failed(key, reply);
                    }
                }
            }
            if !conn.ready.readable {
                if !progressed {
                    break;
                }
                continue;
            }
            let handshaking = conn.transport.is_handshaking();
            let read = conn.transport.read(&mut self.scratch);
            let handshake = conn.transport.handshake_outcome(handshaking, &read);
            if let Some(ok) = handshake {
                self.metrics.handshake(Direction::outbound, ok);
                if conn.sts.is_some() {
                    if let Some(reply) =
                        sts::after_handshake(conn, ok, &read, &self.tls, &self.metrics)
                    {
                        return self.out_failed(key, reply);
                    }
                }
                if !ok {
                    // A TLS problem (a bad certificate, say), not a
                    // network one: 4.7.5 (RFC 3463 "cryptographic failure").
                    let why = match &read {
                        Err(e) => e.to_string(),
                        _ => "closed by the server".to_string(),
                    };
                    let reply = Reply::local(
                        451,
                        "4.7.5",
                        &format!("TLS handshake with {} failed: {why}", conn.label),
                    );
                    return self.out_failed(key, reply);
                }
            }
            match read {
                Ok(0) => {
                    let reply = Reply::local(
                        451,
                        "4.4.2",
                        &format!("connection closed by {}", conn.label),
                    );
                    return self.out_failed(key, reply);
                }
                Ok(n) => {
                    if conn.inbuf.len() + n > MAX_REPLY_BUFFER {
                        let reply = Reply::local(
                            451,
                            "4.5.0",
                            &format!("{} talks without end", conn.label),
                        );
                        return self.out_failed(key, reply);
                    }
                    conn.inbuf.extend_from_slice(&self.scratch[..n]);
                    conn.ready
                        .after_read(n, self.scratch.len(), &conn.transport);
                    // Acknowledge at once: a next hop that writes each
                    // pipelined reply on its own, with Nagle on, holds the
                    // second until the first is acknowledged, and a delayed
                    // ACK (40 ms) made that the pace: 25 messages a second
                    // per connection. Linux turns quick ACKs off again by
                    // itself, so this is asked after every read.
                    let _ = socket2::SockRef::from(&conn.transport.stream).set_tcp_quickack(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.ready.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reply = Reply::local(
                        451,
                        "4.4.2",
                        &format!("lost connection with {}: {e}", conn.label),
                    );
                    return self.out_failed(key, reply);
                }
            }
        }
        self.set_out_deadline(key);
    }

    fn set_out_deadline(&mut self, key: usize) {
        let Some(conn) = self.out.get_mut(key) else {
            return;
        };
        let t = &self.timeouts;
        let wait = if conn.idle {
            IDLE_KEEP
        } else {
            match conn.client.waiting() {
                Some(Wait::Command) | None => t.command,
                Some(Wait::DataInit) => t.data_init,
                Some(Wait::DataBlock) => t.data_block,
                Some(Wait::DataDone) => t.data_done,
            }
        };
        let deadline = self.now + wait;
        if deadline != conn.deadline {
            self.out_deadlines.remove(&(conn.deadline, key));
            conn.deadline = deadline;
            self.out_deadlines.insert((deadline, key));
        }
    }

    fn client_event(&mut self, key: usize, event: Event) {
        match event {
            Event::Ready => {
                let conn = &mut self.out[key];
                if !conn.greeted {
                    conn.greeted = true;
                    sts::after_greeting(conn, &self.metrics);
                    let hop = conn.hop.clone();
                    self.hop_up(&hop);
                }
                self.next_job(key);
            }
            Event::Finished(replies) => {
                let conn = &mut self.out[key];
                let remote = conn.label.clone();
                // A pipelined next job is the one on the wire now.
                let next = conn.next.take();
                if let Some(job) = std::mem::replace(&mut conn.job, next) {
                    self.settle_job(
                        job,
                        &replies,
                        Reply::local(451, "4.4.0", "no reply"),
                        Some(&remote),
                        None,
                    );
                }
            }
            Event::Failed { reply, recipients } => {
                let reply = match self.out.get_mut(key) {
                    Some(conn) => sts::refused_before_tls(conn, reply, &self.metrics),
                    None => reply,
                };
                let note = self.out.get(key).and_then(|c| c.sts.as_ref()?.note());
                if let Some((hop, addr, false)) = self.session_over(key, &reply, recipients) {
                    self.hop_failed(&hop, addr, reply, note);
                }
            }
            Event::StartTls => self.start_tls(key),
            Event::Closed => self.close_out(key),
        }
    }

    /// The server said 220 to STARTTLS: whatever else it sent in clear is
    /// dropped, and the handshake starts; verified against the MX host name
    /// (or the address) when `verify_outbound` is set.
    fn start_tls(&mut self, key: usize) {
        let conn = &mut self.out[key];
        conn.inbuf.clear();
        let (hop, label, addr) = (conn.hop.clone(), conn.label.clone(), conn.addr);
        let client = match self.sts_tls_client(key) {
            Some(client) => client,
            None => self.tls_client(&hop, &label, addr),
        };
        let started =
            client.and_then(|(config, name)| self.out[key].transport.start_client(config, name));
        let conn = &mut self.out[key];
        match started {
            Ok(()) => conn.client.tls_started(),
            Err(e) => {
                let reply = Reply::local(451, "4.7.5", &format!("TLS with {}: {e}", conn.label));
                self.out_failed(key, reply);
            }
        }
    }

    /// The client config and server name for TLS with `hop` at `addr`: a
    /// `[routes]` table with `verify` checks the certificate (against the
    /// MX or route host name, or the address); else as `[tls]` says.
    fn tls_client(
        &self,
        hop: &str,
        label: &str,
        addr: SocketAddr,
    ) -> io::Result<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )> {
        // `mx.example[192.0.2.1]:25`, else an address alone (`[::1]:465`
        // too: no name before the bracket).
        let name = match label.split_once('[') {
            Some((name, _)) if !name.is_empty() => name.to_string(),
            _ => addr.ip().to_string(),
        };
        let config = match self.route_options.get(hop).map(|o| o.verify) {
            None => self.tls.client.clone(),
            Some(false) => self.tls.unverified.clone(),
            Some(true) => match &self.tls.verified {
                Some(verified) => verified.clone(),
                // tls::load builds it whenever a route verifies.
                None => return Err(io::Error::other("no verifying TLS client configured")),
            },
        };
        let name = crate::tls::server_name(&name)
            .ok_or_else(|| io::Error::other(format!("{name} is not a TLS server name")))?;
        Ok((config, name))
    }

    /// Gives the connection the next job of its hop, or parks it idle (or
    /// says QUIT when stopping).
    fn next_job(&mut self, key: usize) {
        let job = if self.shutdown.is_some() {
            None
        } else if !self.shaper.is_active() {
            let conn = &self.out[key];
            self.jobs.get_mut(&conn.hop).and_then(VecDeque::pop_front)
        } else {
            let hop = self.out[key].hop.clone();
            if self.jobs.get(&hop).is_none_or(|q| q.is_empty()) {
                None
            } else {
                match self.gate(&hop, key) {
                    shaper::Gate::Send => self.jobs.get_mut(&hop).and_then(VecDeque::pop_front),
                    shaper::Gate::Wait => None,
                    shaper::Gate::Quit => {
                        debug!("outbound {key}: max_messages_per_connection reached, QUIT");
                        return self.out[key].client.quit();
                    }
                }
            }
        };
        let conn = &mut self.out[key];
        match job {
            Some(mut job) => {
                let hostname = &self.settings.hostname;
                send_job(
                    &mut conn.client,
                    &mut job,
                    self.wall,
                    hostname,
                    self.honor_routes,
                );
                self.metrics.outbound_transactions.inc();
                job.tls = conn.sts.as_ref().and_then(sts::StsConn::note);
                conn.job = Some(job);
                conn.idle = false;
            }
            None if self.shutdown.is_some() => conn.client.quit(),
            None => conn.idle = true,
        }
    }

    /// Sends the hop's next waiting job right behind the final dot of the
    /// current one, when the client may (PIPELINING): one round trip per
    /// message instead of two.
    fn pipeline_next(&mut self, key: usize) {
        let Some(conn) = self.out.get_mut(key) else {
            return;
        };
        if conn.next.is_some() || self.shutdown.is_some() || !conn.client.may_send_next() {
            return;
        }
        if self.shaper.is_active() {
            if self.jobs.get(&conn.hop).is_none_or(|q| q.is_empty()) {
                return;
            }
            let hop = conn.hop.clone();
            // Waiting or quitting: the current job ends first, and
            // `next_job` decides after it.
            if !matches!(self.gate(&hop, key), shaper::Gate::Send) {
                return;
            }
        }
        let conn = &mut self.out[key];
        let Some(mut job) = self.jobs.get_mut(&conn.hop).and_then(VecDeque::pop_front) else {
            return;
        };
        let hostname = &self.settings.hostname;
        send_job(
            &mut conn.client,
            &mut job,
            self.wall,
            hostname,
            self.honor_routes,
        );
        self.metrics.outbound_transactions.inc();
        job.tls = conn.sts.as_ref().and_then(sts::StsConn::note);
        conn.next = Some(job);
    }

    /// The connection broke (EOF, reset, timeout) outside the protocol.
    pub(super) fn out_failed(&mut self, key: usize, reply: Reply) {
        let Some(conn) = self.out.get_mut(key) else {
            return;
        };
        let recipients = conn.client.fail(reply.clone());
        let note = conn.sts.as_ref().and_then(sts::StsConn::note);
        if let Some((hop, addr, false)) = self.session_over(key, &reply, recipients) {
            self.hop_failed(&hop, addr, reply, note);
        }
    }

    /// Dispatches `hop` at the end of the turn (`dispatch_waiting`), not
    /// from inside a session's handling: a connection opened there could
    /// take the slab key of the one being closed while it is still in use.
    fn dispatch_later(&mut self, hop: &str) {
        if !self.to_dispatch.iter().any(|h| h == hop) {
            self.to_dispatch.push(hop.to_string());
        }
    }

    pub(super) fn dispatch_waiting(&mut self) {
        for hop in std::mem::take(&mut self.to_dispatch) {
            self.dispatch(&hop);
        }
    }

    /// Closes a session that ended with `reply` (from the server, or a
    /// broken connection). The job on the wire gets what the server
    /// already said (`recipients`), else `reply`; one sent behind its dot,
    /// never answered, gets `reply`. Returns the hop, the address and
    /// whether the session got through its greeting.
    fn session_over(
        &mut self,
        key: usize,
        reply: &Reply,
        recipients: Option<Vec<Reply>>,
    ) -> Option<(String, SocketAddr, bool)> {
        let conn = self.out.get_mut(key)?;
        let (hop, addr, greeted) = (conn.hop.clone(), conn.addr, conn.greeted);
        let label = conn.label.clone();
        let (job, next) = (conn.job.take(), conn.next.take());
        if let Some(job) = job {
            let replies = recipients.unwrap_or_default();
            self.settle_job(job, &replies, reply.clone(), Some(&label), None);
        }
        if let Some(next) = next {
            self.settle_job(next, &[], reply.clone(), Some(&label), None);
        }
        self.close_out(key);
        Some((hop, addr, greeted))
    }

    fn close_out(&mut self, key: usize) {
        if !self.out.contains(key) {
            return;
        }
        let conn = self.out.remove(key);
        self.out_deadlines.remove(&(conn.deadline, key));
        debug!("closed outbound {key} to {} [{}]", conn.hop, conn.addr);
        self.shaped_conn_closed(&conn.hop, key);
        for job in [conn.job, conn.next].into_iter().flatten() {
            // Only when stopping: the lease stays active and is retried
            // after the restart.
            self.jobs_in_memory -= 1;
            debug!("{}: left active for the next start", job.lease.message_id);
        }
        if self.shutdown.is_none() {
            // A free slot: for this hop's waiting jobs, or another hop's
            // that the total limit held back.
            let waiting: Vec<String> = self
                .jobs
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(hop, _)| hop.clone())
                .collect();
            for hop in waiting {
                self.dispatch_later(&hop);
            }
        }
    }

    /// No session could be had with `addr`: try the hop's next host (the
    /// next MX, RFC 5321 5.1); when none is left, hold the hop's mail back
    /// until the retry time instead of trying once per message. `tls`:
    /// what TLS came to under an MTA-STS policy on the failed session.
    fn hop_failed(&mut self, hop: &str, addr: SocketAddr, reply: Reply, tls: Option<sts::TlsNote>) {
        if let Some(destination) = self.destinations.get_mut(hop) {
            let at_current = destination.host().is_some_and(|(_, a)| *a == addr);
            if at_current && destination.current + 1 < destination.hosts.len() {
                destination.current += 1;
                info!("{hop}: {reply}; trying the next host");
                return self.dispatch_later(hop);
            }
            if destination.host().is_some_and(|(_, a)| *a != addr) {
                // Another connection already moved on from this host.
                return self.dispatch_later(hop);
            }
            destination.current = 0;
        }
        let now = self.wall;
        let health = self.hosts.entry(hop.to_string()).or_default();
        // Parallel connections failing together are one failure.
        if health.until.is_none_or(|until| until <= now) {
            health.failures += 1;
            health.until =
                Some(now + crate::delivery::retry_delay(&self.retry.schedule, health.failures));
        }
        let until = health.until.unwrap_or(now);
        health.last_error = reply.to_string();
        warn!(
            "{hop} [{addr}] is failing ({}), holding its mail until {}",
            health.last_error,
            crate::queue::iso8601(until)
        );
        self.turn.hosts.push(crate::queue::HostUpdate {
            next_hop: hop.to_string(),
            up: false,
            failures: health.failures,
            last_error: Some(health.last_error.clone()),
            next_retry: Some(until),
        });
        self.turn.hold_backs.push(crate::queue::HoldBack {
            next_hop: hop.to_string(),
            until,
            reply: health.last_error.clone(),
        });
        let waiting: Vec<Job> = self
            .jobs
            .get_mut(hop)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default();
        for mut job in waiting {
            // They waited on this connection: it was their attempt too.
            job.tls = tls;
            self.settle_job(
                job,
                &[],
                reply.clone(),
                Some(&addr.to_string()),
                Some(until),
            );
        }
    }

    /// A session with the hop got through its greeting: the `hosts` view
    /// says `up` (an upsert per new connection, not per message).
    fn hop_up(&mut self, hop: &str) {
        if let Some(health) = self.hosts.remove(hop) {
            info!("{hop} is up again after {} failure(s)", health.failures);
        }
        self.turn.hosts.push(crate::queue::HostUpdate {
            next_hop: hop.to_string(),
            up: true,
            failures: 0,
            last_error: None,
            next_retry: None,
        });
    }

    pub(super) fn out_quit(&mut self, key: usize) {
        if let Some(conn) = self.out.get_mut(key) {
            conn.client.quit();
            self.drive_out(key);
        }
    }

    pub(super) fn fire_out_deadlines(&mut self) {
        while let Some(&(when, key)) = self.out_deadlines.first() {
            if when > self.now {
                break;
            }
            self.out_deadlines.pop_first();
            let Some(conn) = self.out.get_mut(key) else {
                continue;
            };
            if conn.deadline != when {
                continue;
            }
            if conn.idle {
                conn.idle = false;
                self.out_quit(key);
                continue;
            }
            let what = if conn.connected {
                "a reply"
            } else {
                self.metrics.outbound_connection(false);
                "the connection"
            };
            let reply = Reply::local(
                451,
                "4.4.2",
                &format!("timeout waiting for {what} from {}", conn.label),
            );
            self.out_failed(key, reply);
        }
    }
}

/// `[routes]` table options by next hop (the table's `host`), as open and
/// start_tls look them up.
pub(super) fn route_options(config: &Config) -> HashMap<String, RouteOptions> {
    config
        .routes
        .iter()
        .filter_map(|r| Some((r.written.clone(), r.options.clone()?)))
        .collect()
}

/// Hands the client the next piece of the body on the wire, read from the
/// queue (into the loop's one piece buffer). A piece that cannot be read
/// ends the session before the dot, so nothing half-sent is delivered.
fn feed_body(
    conn: &mut OutConn,
    queue: &crate::queue::Queue,
    buf: &mut Vec<u8>,
) -> Result<(), Reply> {
    let Some(job) = conn.job.as_mut() else {
        return Err(Reply::local(
            451,
            "4.3.0",
            "internal error: body without a job",
        ));
    };
    let message = &job.message;
    let seq = job.next_piece;
    if let Err(e) = queue.read_piece(&message.id, seq, message.chunks, buf) {
        log::error!("{}: {e}", message.id);
        return Err(Reply::local(
            451,
            "4.3.0",
            "queue read error, try again later",
        ));
    }
    job.next_piece += 1;
    conn.client.push_body(buf, seq >= message.chunks);
    Ok(())
}

/// Bytes of server replies we hold while waiting for the end of one.
const MAX_REPLY_BUFFER: usize = 128 * 1024;

/// Hands `job` to the client: its attempt starts now.
fn send_job(
    client: &mut Client,
    job: &mut Job,
    now: SystemTime,
    hostname: &str,
    honor_routes: bool,
) {
    job.started_at = now;
    job.next_piece = 0;
    job.dsn_passed = client.offers_dsn();
    client.send(transaction(job, hostname, honor_routes, job.dsn_passed));
}

/// The transaction for a job. With honoured source routes, a relay puts
/// itself at the front of the reverse-path when it forwards along a route
/// (RFC 821 3.1 / SPEC section 6).
fn transaction(job: &Job, hostname: &str, honor_routes: bool, dsn: bool) -> Transaction {
    let message = &job.message;
    let routed = job
        .lease
        .recipients
        .iter()
        .any(|r| r.forward_path != r.mailbox);
    let reverse_path = if honor_routes && routed && !message.reverse_path.is_empty() {
        match message
            .reverse_path
            .split_once(':')
            .filter(|_| message.reverse_path.starts_with('@'))
        {
            Some((route, mailbox)) => format!("@{hostname},{route}:{mailbox}"),
            None => format!("@{hostname}:{}", message.reverse_path),
        }
    } else {
        message.reverse_path.clone()
    };
    Transaction {
        reverse_path,
        recipients: job
            .lease
            .recipients
            .iter()
            .map(|r| r.forward_path.clone())
            .collect(),
        body: match &job.body {
            Some(body) => Body::Whole(body.clone()),
            None => Body::Pieces { size: message.size },
        },
        eight_bit: message.eight_bit,
        smtputf8: message.smtputf8,
        // Only for a next hop that takes them: no copies per message else.
        dsn: if dsn {
            Dsn {
                ret: message.ret,
                envid: message.envid.clone(),
                recipients: job
                    .lease
                    .recipients
                    .iter()
                    .map(|r| {
                        let orcpt = r.orcpt.clone();
                        (
                            r.notify,
                            orcpt.or_else(|| Some(format!("rfc822;{}", r.mailbox))),
                        )
                    })
                    .collect(),
            }
        } else {
            Dsn::default()
        },
    }
}
