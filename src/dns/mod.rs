//! A sans-IO stub resolver for next hops (RFC 5321 section 5): MX, then
//! A/AAAA, with retries across servers, TCP fallback for truncated answers,
//! and a TTL cache. The event loop owns the sockets; this owns the logic.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// What to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A mail domain: its MX hosts (or, without MX, the domain itself).
    Mx(String),
    /// One host name, A and AAAA (a `[routes]` `host:port`).
    Host(String),
}

/// One host to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The MX host name (or the host itself).
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Hosts in the order to try them (MX preference; equal preferences shuffled).
    Hosts(Vec<Candidate>),
    /// RFC 7505 null MX: the domain accepts no mail (bounce 5.1.10).
    NullMx,
    /// The name does not exist, or has no address at all (bounce 5.1.2).
    NotFound(String),
    /// SERVFAIL, timeouts, unreachable servers (defer 4.4.3).
    TempFail(String),
    /// The best MX is this host itself (bounce 5.4.6 rather than loop).
    Loop(String),
}

/// Bytes for the loop to send. `query` names the socket: the loop uses one
/// fresh UDP socket (random source port) per query, or a TCP connection when
/// `tcp` is set (2-byte length prefix added by the loop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub query: u64,
    pub server: SocketAddr,
    pub tcp: bool,
    pub bytes: Vec<u8>,
}

pub struct Resolver {
    // private
}

impl Resolver {
    /// `servers`: from `[dns] servers`. `local_names`/`local_addrs`: this
    /// host (hostname, listening addresses), to detect an MX pointing back.
    pub fn new(servers: Vec<SocketAddr>, local_names: Vec<String>, local_addrs: Vec<IpAddr>) -> Resolver {
        todo!()
    }

    /// Starts a lookup, or joins one in progress. A cached answer is
    /// returned at once; otherwise it comes later from `poll_answer`.
    pub fn lookup(&mut self, target: Target, now: Instant) -> Option<Answer> {
        todo!()
    }

    /// Next datagram or TCP query to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        todo!()
    }

    /// A response for `query` (UDP datagram, or TCP message without its
    /// length prefix) from `from`. IDs, question and source are checked;
    /// anything that does not match is ignored.
    pub fn handle_response(&mut self, query: u64, from: SocketAddr, bytes: &[u8], now: Instant) {
        todo!()
    }

    /// The socket of `query` failed (ICMP unreachable, TCP reset).
    pub fn handle_error(&mut self, query: u64, now: Instant) {
        todo!()
    }

    /// Queries whose sockets the loop may close now (answered, given up).
    pub fn poll_closed(&mut self) -> Option<u64> {
        todo!()
    }

    /// Finished lookups.
    pub fn poll_answer(&mut self) -> Option<(Target, Answer)> {
        todo!()
    }

    /// When `handle_timeout` must next be called.
    pub fn next_timeout(&self) -> Option<Instant> {
        todo!()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        todo!()
    }
}

#[allow(dead_code)]
const _DURATION: Option<Duration> = None;
