//! The only `mio` code: one `Poll`, the listeners on fixed tokens, the
//! sessions in a `Slab`, the deadlines that set the poll timeout, the group
//! commit at the end of each turn, and the shutdown drain.

mod counting;
mod dns;
mod http;
mod inbound;
mod outbound;
mod reload;
mod scheduler;
mod shaper;
mod sts;
mod sts_fetch;
mod transport;

pub use reload::{listen_addrs, Reloader};

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hashbrown::HashMap;
use log::{error, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::config::{Config, Retry, Timeouts};
use crate::message::{Message, QueueIds};
use crate::metrics::{Depth, Metrics};
use crate::queue::{Batch, Queue};
use crate::smtp::server::Settings;
use inbound::Conn;
use outbound::{Job, OutConn};
use scheduler::{HostHealth, Turn};
use transport::Transport;

/// Accept backlog: bursts of connections are queued, not dropped at SYN.
const LISTEN_BACKLOG: i32 = 1024;
const SIGNALS: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
const METRICS_LISTENER: Token = Token(usize::MAX - 2);
/// Listener `k` (a slab key) has token `LISTENER_BASE + k`.
const LISTENER_BASE: usize = usize::MAX - 2 - MAX_LISTENERS;
const MAX_LISTENERS: usize = 1024;
/// Metrics connection `k` has token `HTTP_BASE + k`.
const HTTP_BASE: usize = 1 << 31;
/// Outbound session `k` has token `OUT_BASE + k`.
const OUT_BASE: usize = 1 << 30;
/// DNS socket `k` has token `DNS_BASE + k`.
const DNS_BASE: usize = 1 << 29;
/// MTA-STS policy fetch `k` has token `FETCH_BASE + k`; inbound sessions
/// are slab keys below it.
const FETCH_BASE: usize = 1 << 28;
/// How long sessions inside DATA may go on after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long the first message of a batch may wait for company (its 250
/// is that much later at most) while sessions keep coming ready.
const MAX_GATHER: Duration = Duration::from_millis(2);
/// Messages of one group commit at most.
const MAX_BATCH: usize = 1024;
/// TLS handshake steps (reads of a handshaking session) per loop turn; the
/// rest wait for the next turn, in order. An ECDSA P-256 handshake costs the
/// server about 0.3 ms, so a turn spends about 20 ms on them at most, what
/// ever the storm. (16 measured no better for plain sessions at c=100 and
/// cost handshakes/s: more turns, more commits.)
const HANDSHAKES_PER_TURN: usize = 64;
/// Back-off after accept fails for want of file descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Binds a listening socket with a large backlog (std and mio use 128).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Thousands of sessions need thousands of descriptors: raises the soft
/// `RLIMIT_NOFILE` to the hard limit and returns the limit now in force.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// A write past `RLIMIT_FSIZE` raises SIGXFSZ, which kills by default; as
/// Postfix's master does, ignore it, so the write fails with EFBIG instead:
/// the commit fails, the client gets 451, and the relay goes on serving.
pub fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no handler
    // that could run unsafely; done once at start-up.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// After a load, the buffers of the sessions it brought are free but the
/// allocator keeps the pages; when the loop first finds nothing to do, they
/// go back to the system, so RSS returns to its idle level. (glibc only;
/// `malloc_trim` walks the free lists, a few ms at most, and only then.)
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Lets a signal handler (another thread) ask the loop to stop.
#[derive(Clone)]
pub struct ShutdownHandle {
    waker: Arc<Waker>,
    signals: Arc<AtomicUsize>,
}

impl ShutdownHandle {
    /// Asks for a graceful stop; returns how many times it was asked before.
    pub fn signal(&self) -> usize {
        let before = self.signals.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            error!("cannot wake the event loop: {e}");
        }
        before
    }
}

/// A connection's timer entry: when, and which slab key.
type Deadline = (Instant, usize);

/// A bound listening socket; `implicit_tls`: RFC 8314 (TLS from the start);
/// `configured`: the address as the config says it (port 0 stays 0), so a
/// reload knows which listeners it still wants.
pub struct Listener {
    pub socket: std::net::TcpListener,
    pub implicit_tls: bool,
    pub configured: SocketAddr,
}

/// A listener on the loop.
struct Bound {
    socket: TcpListener,
    implicit_tls: bool,
    configured: SocketAddr,
}

/// What `[tls]` and `[auth]` load from files.
pub struct Secrets {
    pub tls: crate::tls::TlsSetup,
    pub users: Option<crate::auth::Users>,
    pub dkim: Option<std::sync::Arc<crate::dkim::Signers>>,
}

pub struct Server {
    poll: Poll,
    listeners: Slab<Bound>,
    tls: crate::tls::TlsSetup,
    /// `[routes]` table options by next hop (`outbound::route_options`).
    route_options: HashMap<String, crate::config::RouteOptions>,
    auth_failures: crate::auth::Failures,
    conns: Slab<Conn>,
    per_ip: HashMap<std::net::IpAddr, usize>,
    deadlines: BTreeSet<Deadline>,
    /// For new sessions; each session keeps the one it started with.
    settings: Rc<Settings>,
    idle_timeout: Duration,
    max_connections: usize,
    max_connections_per_ip: usize,
    queue: Queue,
    ids: QueueIds,
    /// One read buffer for all sessions, so idle ones hold none.
    scratch: Vec<u8>,
    /// One buffer for the body pieces read back from the queue.
    piece: Vec<u8>,
    /// Messages that reached end of data this turn: (slab key, message).
    to_commit: Vec<(usize, Message)>,
    /// Sessions with input left after their per-turn read budget.
    runnable: Vec<usize>,
    /// Handshake steps this turn may still do (`HANDSHAKES_PER_TURN`).
    handshakes_left: usize,
    /// Bytes this turn may still read from all sessions (`TURN_READ_BUDGET`).
    turn_read_left: usize,
    /// Sessions closed since memory was last given back (`give_back_memory`).
    trim_due: bool,
    /// Sessions whose handshake step waits for the next turn, oldest first.
    handshakes_waiting: std::collections::VecDeque<usize>,
    /// The latest commit of the messages in `to_commit` (`keep_gathering`).
    gather_until: Option<Instant>,
    /// Inbound sessions had events since outbound ones last moved
    /// (`run_outbound`).
    clients_waiting: bool,
    /// Outbound sessions with readiness not yet acted on, in arrival
    /// order (see `run_outbound`).
    out_ready: std::collections::VecDeque<usize>,
    waker: Arc<Waker>,
    signals: Arc<AtomicUsize>,
    shutdown: Option<Instant>,
    accept_paused_until: Option<Instant>,
    now: Instant,
    wall: SystemTime,
    // The outbound side.
    out: Slab<OutConn>,
    out_deadlines: BTreeSet<Deadline>,
    resolver: crate::dns::Resolver,
    dns_sockets: Slab<dns::DnsSocket>,
    dns_by_query: HashMap<u64, usize>,
    /// Jobs waiting for a lookup, with the port their hop uses.
    resolving: HashMap<crate::dns::Target, Vec<(Job, u16)>>,
    /// Where each next hop's connections go.
    destinations: HashMap<String, outbound::Destination>,
    /// MTA-STS: what is known of each domain's policy, jobs waiting on it.
    sts: sts::Sts,
    /// MTA-STS policy fetches over HTTPS.
    fetches: sts_fetch::Fetches,
    /// Leased jobs waiting for a connection, per next hop.
    jobs: HashMap<String, std::collections::VecDeque<Job>>,
    /// Hops to dispatch at the end of the turn (`dispatch_later`).
    to_dispatch: Vec<String>,
    jobs_in_memory: usize,
    /// Next hops that could not be reached, until their retry time.
    hosts: HashMap<String, HostHealth>,
    /// `[shaping]` limits and back-offs of next hops.
    shaper: shaper::Shaper,
    /// Messages whose delay warning went out in this run.
    warned: hashbrown::HashSet<String>,
    turn: Turn,
    next_scan: Instant,
    next_prune: Instant,
    limits: OutboundLimits,
    retry: Retry,
    timeouts: Timeouts,
    maildir: std::path::PathBuf,
    honor_routes: bool,
    metrics: Metrics,
    /// Pending recipients by status, kept as the loop changes them.
    depth: Depth,
    http: http::Http,
    /// SIGHUP and SIGTERM, as a mio source.
    hangups: Option<signal_hook_mio::v1_0::Signals>,
    reloader: Option<Reloader>,
    /// What a reload may not change.
    queue_path: std::path::PathBuf,
    metrics_listen: Option<SocketAddr>,
}

struct OutboundLimits {
    out_total: usize,
    out_per_host: usize,
    /// `[outbound] chunking`: BDAT to next hops that offer it.
    chunking: bool,
}

impl Server {
    /// Takes listeners already bound (by [`bind`]) and the opened queue.
    pub fn new(
        config: &Config,
        listeners: Vec<Listener>,
        queue: Queue,
        secrets: Secrets,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut hangups = signal_hook_mio::v1_0::Signals::new([libc::SIGHUP, libc::SIGTERM])?;
        poll.registry()
            .register(&mut hangups, SIGNALS, Interest::READABLE)?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => {
                let mut listener = TcpListener::from_std(bind(addr)?);
                poll.registry()
                    .register(&mut listener, METRICS_LISTENER, Interest::READABLE)?;
                Some(listener)
            }
            None => None,
        };
        // An MX at one of our addresses is us only where we listen on the
        // SMTP port.
        let local_addrs: Vec<std::net::IpAddr> = listeners
            .iter()
            .filter_map(|l| l.socket.local_addr().ok())
            .filter(|a| a.port() == crate::routing::SMTP_PORT)
            .map(|a| a.ip())
            .collect();
        let depth = match queue.pending_counts() {
            Ok(counts) => Depth::from(counts),
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        let mut server = Server {
            poll,
            listeners: Slab::new(),
            conns: Slab::with_capacity(1024),
            per_ip: HashMap::new(),
            deadlines: BTreeSet::new(),
            settings: Rc::new(Settings::new(config)),
            tls: secrets.tls.clone(),
            route_options: outbound::route_options(config),
            auth_failures: crate::auth::Failures::default(),
            idle_timeout: config.timeouts.server_idle,
            max_connections: config.max_connections,
            max_connections_per_ip: config.max_connections_per_ip,
            queue,
            ids: QueueIds::default(),
            scratch: vec![0; 64 * 1024],
            piece: Vec::new(),
            to_commit: Vec::new(),
            runnable: Vec::new(),
            handshakes_left: HANDSHAKES_PER_TURN,
            turn_read_left: inbound::TURN_READ_BUDGET,
            trim_due: false,
            handshakes_waiting: std::collections::VecDeque::new(),
            gather_until: None,
            clients_waiting: false,
            out_ready: std::collections::VecDeque::new(),
            waker,
            signals: Arc::new(AtomicUsize::new(0)),
            shutdown: None,
            accept_paused_until: None,
            now: Instant::now(),
            wall: SystemTime::now(),
            out: Slab::new(),
            out_deadlines: BTreeSet::new(),
            resolver: crate::dns::Resolver::new(
                config.dns_servers.clone(),
                vec![config.hostname.to_lowercase()],
                local_addrs,
            ),
            dns_sockets: Slab::new(),
            dns_by_query: HashMap::new(),
            resolving: HashMap::new(),
            sts: sts::Sts::new(config.outbound_mta_sts),
            fetches: sts_fetch::Fetches::default(),
            destinations: HashMap::new(),
            jobs: HashMap::new(),
            to_dispatch: Vec::new(),
            jobs_in_memory: 0,
            hosts: HashMap::new(),
            shaper: shaper::Shaper::default(),
            warned: hashbrown::HashSet::new(),
            turn: Turn::default(),
            next_scan: Instant::now(),
            next_prune: Instant::now(),
            limits: OutboundLimits {
                out_total: config.outbound_max_connections,
                out_per_host: config.outbound_max_connections_per_host,
                chunking: config.outbound_chunking,
            },
            retry: config.retry.clone(),
            timeouts: config.timeouts.clone(),
            maildir: config.maildir.clone(),
            honor_routes: true,
            metrics: Metrics::new(),
            depth,
            http: http::Http::new(metrics_listener),
            hangups: Some(hangups),
            reloader: None,
            queue_path: config.queue.clone(),
            metrics_listen: config.metrics_listen,
        };
        server.apply_config(config, secrets);
        for listener in listeners {
            if server.listeners.len() >= MAX_LISTENERS {
                return Err(io::Error::other(format!(
                    "more than {MAX_LISTENERS} listeners"
                )));
            }
            listener.socket.set_nonblocking(true)?;
            let mut socket = TcpListener::from_std(listener.socket);
            let entry = server.listeners.vacant_entry();
            server.poll.registry().register(
                &mut socket,
                Token(LISTENER_BASE + entry.key()),
                Interest::READABLE,
            )?;
            entry.insert(Bound {
                socket,
                implicit_tls: listener.implicit_tls,
                configured: listener.configured,
            });
        }
        Ok(server)
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            waker: self.waker.clone(),
            signals: self.signals.clone(),
        }
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(_, l)| l.socket.local_addr().ok())
            .collect()
    }

    /// The metrics endpoint's bound address, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.http.listener.as_ref()?.local_addr().ok()
    }

    /// Runs until a shutdown signal has been handled; Ok means a clean stop.
    pub fn run(self) -> io::Result<()> {
        crate::logbuf::start_gathering();
        let result = self.run_loop();
        crate::logbuf::stop_gathering();
        result
    }

    fn run_loop(mut self) -> io::Result<()> {
        for addr in self.local_addrs() {
            info!("listening on {addr}");
        }
        if let Some(addr) = self.metrics_addr() {
            info!("metrics on http://{addr}/metrics");
        }
        crate::service::ready();
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            crate::logbuf::flush();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.now = Instant::now();
            let turn_started = self.now;
            self.wall = SystemTime::now();
            // Idle: the poll waited and nothing came.
            let idle = events.is_empty() && timeout != Some(Duration::ZERO);
            if idle && std::mem::take(&mut self.trim_due) {
                give_back_memory();
            }
            self.turn_read_left = inbound::TURN_READ_BUDGET;
            // Sessions the last turn's read budget left waiting go first.
            self.run_runnable();
            self.resume_handshakes();
            let mut inbound_events = false;
            for event in events.iter() {
                match event.token() {
                    WAKER => self.check_signals(),
                    SIGNALS => self.check_hangups(),
                    METRICS_LISTENER => self.http_accept(),
                    Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE),
                    Token(t) if (HTTP_BASE..LISTENER_BASE).contains(&t) => {
                        self.http_event(t - HTTP_BASE)
                    }
                    Token(t) if (OUT_BASE..HTTP_BASE).contains(&t) => {
                        self.out_event(t - OUT_BASE, Readiness::of(event))
                    }
                    Token(t) if (DNS_BASE..OUT_BASE).contains(&t) => self.dns_event(t - DNS_BASE),
                    Token(t) if (FETCH_BASE..DNS_BASE).contains(&t) => {
                        self.fetch_event(t - FETCH_BASE)
                    }
                    // Hang-ups and errors surface through the next read.
                    Token(key) => {
                        inbound_events = true;
                        self.clients_waiting = true;
                        self.conn_event(key, Readiness::of(event))
                    }
                }
            }
            self.fire_deadlines();
            self.fire_out_deadlines();
            self.fire_shaping();
            self.fire_fetch_deadlines();
            self.http_deadlines();
            self.dns_flush();
            if self.accept_paused_until.is_some_and(|t| t <= self.now) {
                self.accept_paused_until = None;
                let keys: Vec<usize> = self.listeners.iter().map(|(k, _)| k).collect();
                for key in keys {
                    self.accept(key);
                }
            }
            if self.keep_gathering(inbound_events) {
                let turn = Instant::now().saturating_duration_since(turn_started);
                self.metrics.turn_duration.observe(turn.as_secs_f64());
                continue;
            }
            self.commit();
            let clients_waiting = std::mem::take(&mut self.clients_waiting);
            self.run_outbound(clients_waiting);
            self.dispatch_waiting();
            self.schedule();
            self.commit();
            let turn = Instant::now().saturating_duration_since(turn_started);
            self.metrics.turn_duration.observe(turn.as_secs_f64());
            if let Some(deadline) = self.shutdown {
                if self.conns.is_empty() || self.now >= deadline {
                    self.commit();
                    info!("stopped; {} session(s) cut off", self.conns.len());
                    return Ok(());
                }
            }
        }
    }

    /// Group commit sized by the load: while clients keep sessions ready
    /// (the last poll, which did not wait, found inbound events), serve
    /// them before committing, so more messages share one fsync. Bounded:
    /// the first finished message waits at most `MAX_GATHER` for its 250,
    /// and a batch holds at most `MAX_BATCH`. When nothing more is ready
    /// the commit is at once, so a lightly loaded relay answers at once.
    fn keep_gathering(&mut self, inbound_events: bool) -> bool {
        if self.to_commit.is_empty() {
            self.gather_until = None;
            return false;
        }
        let until = *self.gather_until.get_or_insert(self.now + MAX_GATHER);
        let more = inbound_events
            && self.now < until
            && self.to_commit.len() < MAX_BATCH
            && self.shutdown.is_none();
        if !more {
            self.gather_until = None;
        }
        more
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.runnable.is_empty()
            || !self.handshakes_waiting.is_empty()
            || !self.to_commit.is_empty()
            || !self.out_ready.is_empty()
            || !self.to_dispatch.is_empty()
            || self.turn.urgent()
        {
            return Some(Duration::ZERO);
        }
        let scan = self.shutdown.is_none().then_some(self.next_scan);
        let next = [
            self.deadlines.first().map(|d| d.0),
            self.out_deadlines.first().map(|d| d.0),
            self.shaper.next_wake(),
            self.resolver.next_timeout(),
            self.fetches.next_deadline(),
            self.turn.due(),
            self.shutdown,
            self.accept_paused_until,
            self.http.next_deadline(),
            scan,
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }

    fn check_signals(&mut self) {
        if self.signals.load(Ordering::SeqCst) == 0 || self.shutdown.is_some() {
            return;
        }
        info!("shutting down: closing listeners, finishing messages in progress");
        crate::service::stopping();
        self.shutdown = Some(self.now + SHUTDOWN_GRACE);
        for mut bound in self.listeners.drain() {
            let _ = self.poll.registry().deregister(&mut bound.socket);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let conn = &mut self.conns[key];
            conn.session.shutdown(&conn.settings);
            self.drive(key);
        }
        // Idle outbound sessions say QUIT; busy ones are cut at exit and
        // their mail, still leased, is due again at the next start.
        let idle: Vec<usize> = self
            .out
            .iter()
            .filter(|(_, c)| c.idle)
            .map(|(k, _)| k)
            .collect();
        for key in idle {
            self.out[key].idle = false;
            self.out_quit(key);
        }
    }

    /// Signals since the last look: SIGTERM stops as SIGINT does; any
    /// number of SIGHUPs make one reload.
    fn check_hangups(&mut self) {
        let Some(hangups) = self.hangups.as_mut() else {
            return;
        };
        let (mut hup, mut term) = (false, false);
        for signal in hangups.pending() {
            hup |= signal == libc::SIGHUP;
            term |= signal == libc::SIGTERM;
        }
        if term {
            self.signals.fetch_add(1, Ordering::SeqCst);
            self.check_signals();
        } else if hup && self.shutdown.is_none() {
            self.reload();
        }
    }

    /// Group commit: everything that reached end of data this turn, and
    /// every delivery outcome, shares one transaction; only then are the
    /// 250s (or 451s) written. Outcomes of a failed commit wait for the next.
    fn commit(&mut self) {
        if self.to_commit.is_empty() && self.turn.is_empty() {
            // Body pieces of unfinished messages, alone.
            if let Err(e) = self.queue.commit_open() {
                error!("queue commit of body pieces failed: {e}");
            }
            return;
        }
        // Delivery outcomes alone may wait a moment for company: while
        // only next hops are talking, that keeps an fsync out of every
        // round trip. Nothing anyone waits on is ever held back.
        let outcomes_may_wait = self.to_commit.is_empty()
            && !self.turn.urgent()
            && self.shutdown.is_none()
            && self.turn.due().is_some_and(|due| due > self.now);
        if outcomes_may_wait {
            return;
        }
        let (keys, inbound): (Vec<usize>, Vec<Message>) = std::mem::take(&mut self.to_commit)
            .into_iter()
            .filter(|(key, message)| self.keep_whole(*key, message))
            .unzip();
        let Turn {
            outcomes,
            hosts,
            hold_backs,
            warned,
            shaping,
            policies,
            tls,
            generated,
            since,
        } = std::mem::take(&mut self.turn);
        let batch = Batch {
            messages: inbound.iter().chain(&generated).collect(),
            outcomes,
            hosts,
            hold_backs,
            warned,
            shaping,
            policies,
            tls,
        };
        // New mail goes straight to delivery while there is room for it.
        let lease_new = self.shutdown.is_none()
            && self.jobs_in_memory + batch.messages.len() <= scheduler::MAX_JOBS / 2;
        let started = Instant::now();
        let result = self.queue.commit_and_lease(&batch, lease_new);
        self.metrics
            .commit_duration
            .observe(started.elapsed().as_secs_f64());
        if result.is_ok() {
            let leases = result.as_deref().unwrap_or_default();
            self.count_committed(&batch, leases, inbound.len());
        }
        let Batch {
            outcomes,
            hosts,
            hold_backs,
            warned,
            shaping,
            policies,
            tls,
            ..
        } = batch;
        match result {
            Ok(leases) => {
                for (key, message) in keys.iter().zip(&inbound) {
                    if let Some(conn) = self.conns.get_mut(*key) {
                        if let Some(outcome) = conn.session.take_dkim() {
                            log_dkim(&message.id, &outcome);
                            self.metrics.dkim(&outcome);
                        }
                        conn.session.committed(Ok(&message.id), &conn.settings);
                    }
                    info!(
                        "{}: from=<{}> size={} nrcpt={} client=[{}] helo={}",
                        message.id,
                        message.sender,
                        message.size,
                        message.recipients.len(),
                        message.client_ip,
                        message.helo
                    );
                }
                let messages: Vec<Message> = inbound.into_iter().chain(generated).collect();
                if lease_new {
                    self.start_committed(messages, leases);
                } else if !messages.is_empty() {
                    self.next_scan = self.now; // new mail is due at once
                }
            }
            Err(e) => {
                error!("queue commit failed: {e}");
                for (key, message) in keys.iter().zip(&inbound) {
                    if let Some(conn) = self.conns.get_mut(*key) {
                        conn.session.committed(Err(()), &conn.settings);
                    }
                    // Pieces committed in earlier turns would be orphans.
                    if message.chunks > 0 {
                        self.queue.discard_body(&message.id);
                    }
                }
                self.turn = Turn {
                    outcomes,
                    hosts,
                    hold_backs,
                    warned,
                    shaping,
                    policies,
                    tls,
                    generated,
                    since,
                };
            }
        }
        for key in keys {
            if self.conns.contains(key) {
                self.drive(key);
            }
        }
    }

    /// A message that lost body pieces to a failed write cannot be stored
    /// whole: its session gets 451 now, its other pieces are discarded,
    /// and it stays out of the commit.
    fn keep_whole(&mut self, key: usize, message: &Message) -> bool {
        if message.chunks == 0 || !self.queue.is_lost(&message.id) {
            return true;
        }
        error!(
            "{}: body pieces were lost to a failed queue write; answered 451",
            message.id
        );
        self.queue.discard_body(&message.id);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.session.committed(Err(()), &conn.settings);
            self.runnable.push(key);
        }
        false
    }

    fn fire_deadlines(&mut self) {
        while let Some(&(when, key)) = self.deadlines.first() {
            if when > self.now {
                break;
            }
            self.deadlines.pop_first();
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.deadline != when {
                continue;
            }
            let due = conn.last_active + self.idle_timeout;
            if due > self.now {
                // Activity since the entry was made: move it, once, here
                // rather than on every read.
                conn.deadline = due;
                self.deadlines.insert((due, key));
                continue;
            }
            conn.session.timeout(&conn.settings);
            self.drive(key);
        }
    }

    /// A new turn: handshakes held back by the last one go first.
    fn resume_handshakes(&mut self) {
        self.handshakes_left = HANDSHAKES_PER_TURN;
        let waiting = self.handshakes_waiting.len();
        for _ in 0..waiting {
            if self.handshakes_left == 0 {
                break;
            }
            let Some(key) = self.handshakes_waiting.pop_front() else {
                break;
            };
            if self.conns.contains(key) {
                self.drive(key);
            }
        }
    }

    fn run_runnable(&mut self) {
        for key in std::mem::take(&mut self.runnable) {
            if self.conns.contains(key) {
                self.drive(key);
            }
        }
    }

    fn pause_accepting(&mut self, e: &io::Error) {
        if self.accept_paused_until.is_none() {
            warn!("accept failed: {e}; pausing accepts for {ACCEPT_RETRY:?}");
        }
        self.accept_paused_until = Some(self.now + ACCEPT_RETRY);
    }
}

/// What a session's socket is ready for. Sockets are edge-triggered: an
/// edge is remembered here until a `WouldBlock` (or a read that emptied
/// the socket) consumes it.
#[derive(Clone, Copy, Default)]
struct Readiness {
    /// Hang-ups and errors count: they surface through the next read.
    readable: bool,
    writable: bool,
    /// The peer's FIN (or an error) has arrived: read until EOF, since no
    /// new edge will come for it.
    read_closed: bool,
}

impl Readiness {
    fn of(event: &mio::event::Event) -> Readiness {
        Readiness {
            readable: event.is_readable() || event.is_read_closed() || event.is_error(),
            writable: event.is_writable() || event.is_write_closed() || event.is_error(),
            read_closed: event.is_read_closed() || event.is_error(),
        }
    }

    /// Adds what an event says.
    fn note(&mut self, event: Readiness) {
        self.readable |= event.readable;
        self.writable |= event.writable;
        self.read_closed |= event.read_closed;
    }

    /// After a read of `n` bytes into a buffer of `len`: on a plain TCP
    /// stream a short read took all there was, so the next read would only
    /// say `WouldBlock`, and new bytes bring a new edge. Not with TLS,
    /// which holds decrypted bytes of its own, and not once the peer has
    /// closed, whose EOF brings no new edge.
    fn after_read(&mut self, n: usize, len: usize, transport: &Transport) {
        if transport.is_plain() && n < len && !self.read_closed {
            self.readable = false;
        }
    }
}

/// Writes as much of `out` as the socket takes (and the TLS records it
/// makes); true when it would block.
fn write_out(transport: &mut Transport, out: &mut Vec<u8>) -> io::Result<bool> {
    let mut written = 0;
    let result = loop {
        if written == out.len() {
            break transport.flush_records();
        }
        match transport.write(&out[written..]) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    out.drain(..written);
    result
}

/// One line per message that was for signing: what was signed, or why not.
fn log_dkim(id: &str, outcome: &crate::dkim::Outcome) {
    use crate::dkim::Outcome;
    match outcome {
        Outcome::Signed {
            domain, selector, ..
        } => info!("{id}: dkim signed d={domain} s={selector}"),
        Outcome::Unsigned(why) => info!("{id}: dkim not signed: {why}"),
        Outcome::Failed(why) => warn!("{id}: dkim signing failed: {why}; sent unsigned"),
    }
}
