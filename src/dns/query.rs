//! One question (name, type) on the wire: which server to ask, the attempt
//! timer, UDP then TCP when truncated, the next server on failure, and
//! re-asking for a CNAME target. Several lookups may wait on one question.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::rr::Name;

use super::cache::{Key, QResult};
use super::rng::Rng;
use super::wire::{self, Reply, MAX_CNAME_HOPS};
use super::{Target, Transmit};

pub(super) const UDP_TIMEOUT: Duration = Duration::from_secs(2);
/// Longer: includes the TCP handshake, and the answer is a large one.
pub(super) const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// Each server is tried this many times (server 1, 2, ..., then again).
pub(super) const ROUNDS: usize = 2;

/// The socket side shared by all questions: servers, query handles, output.
pub(super) struct Transport {
    pub(super) servers: Vec<SocketAddr>,
    pub(super) rng: Rng,
    pub(super) next_handle: u64,
    pub(super) transmits: VecDeque<Transmit>,
    pub(super) closed: VecDeque<u64>,
}

pub(super) enum Step {
    Wait,
    /// The result and its TTL in seconds (bounded by the cache).
    Done(QResult, u32),
}

pub(super) struct Question {
    pub(super) key: Key,
    /// The name now asked: the key's, or a CNAME target.
    qname: Name,
    hops: u8,
    chain_ttl: u32,
    /// Index into the servers, ROUNDS times over.
    attempt: usize,
    /// Servers that answered SERVFAIL, REFUSED and the like.
    failures: usize,
    tcp: bool,
    server: SocketAddr,
    id: u16,
    pub(super) handle: u64,
    pub(super) deadline: Instant,
    pub(super) waiters: Vec<Target>,
}

impl Question {
    /// `tx.servers` must not be empty.
    pub(super) fn start(key: Key, tx: &mut Transport, now: Instant) -> Question {
        let mut q = Question {
            qname: key.0.clone(),
            key,
            hops: 0,
            chain_ttl: u32::MAX,
            attempt: 0,
            failures: 0,
            tcp: false,
            server: tx.servers[0],
            id: 0,
            handle: 0,
            deadline: now,
            waiters: Vec::new(),
        };
        q.send(tx, now);
        q
    }

    /// A fresh handle and ID for every attempt, so that a late answer to an
    /// earlier attempt can never be taken for this one.
    fn send(&mut self, tx: &mut Transport, now: Instant) {
        if !self.tcp {
            self.server = tx.servers[self.attempt % tx.servers.len()];
        }
        self.id = tx.rng.next_u16();
        tx.next_handle += 1;
        self.handle = tx.next_handle;
        self.deadline = now + if self.tcp { TCP_TIMEOUT } else { UDP_TIMEOUT };
        let bytes = wire::encode_query(self.id, &self.qname, self.key.1);
        log::debug!(
            "dns: query {} {} {} to {}{}",
            self.handle,
            self.qname,
            self.key.1,
            self.server,
            if self.tcp { " over TCP" } else { "" }
        );
        tx.transmits.push_back(Transmit {
            query: self.handle,
            server: self.server,
            tcp: self.tcp,
            bytes,
        });
    }

    /// `None`: not a response to this attempt, ignored.
    pub(super) fn on_reply(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        tx: &mut Transport,
        now: Instant,
    ) -> Option<Step> {
        if from != self.server {
            return None;
        }
        let reply = wire::decode_reply(bytes, self.id, &self.qname, self.key.1)?;
        tx.closed.push_back(self.handle);
        Some(match reply {
            Reply::Truncated if !self.tcp => {
                self.tcp = true;
                self.send(tx, now);
                Step::Wait
            }
            Reply::Truncated => self.server_failed("truncated answer over TCP".into(), tx, now),
            Reply::Failed(why) => self.server_failed(why, tx, now),
            Reply::NxDomain { ttl } => Step::Done(QResult::NxDomain, ttl),
            Reply::NoData { ttl } => Step::Done(QResult::NoData, ttl),
            Reply::Found { data, ttl, .. } => {
                Step::Done(QResult::Found(data), ttl.min(self.chain_ttl))
            }
            Reply::Alias { target, ttl, hops } => {
                self.hops = self.hops.saturating_add(hops);
                if self.hops > MAX_CNAME_HOPS {
                    return Some(self.give_up("CNAME chain too long"));
                }
                self.qname = target;
                self.chain_ttl = self.chain_ttl.min(ttl);
                self.attempt = 0;
                self.failures = 0;
                self.tcp = false;
                self.send(tx, now);
                Step::Wait
            }
        })
    }

    /// The attempt timed out or its socket failed.
    pub(super) fn on_failure(&mut self, why: &str, tx: &mut Transport, now: Instant) -> Step {
        tx.closed.push_back(self.handle);
        self.next_attempt(why, tx, now)
    }

    /// Once every server has answered with a failure, asking again is moot.
    fn server_failed(&mut self, why: String, tx: &mut Transport, now: Instant) -> Step {
        self.failures += 1;
        if self.failures >= tx.servers.len() {
            return self.give_up(&why);
        }
        self.next_attempt(&why, tx, now)
    }

    fn next_attempt(&mut self, why: &str, tx: &mut Transport, now: Instant) -> Step {
        log::debug!(
            "dns: {} {} from {}: {why}",
            self.qname,
            self.key.1,
            self.server
        );
        self.attempt += 1;
        self.tcp = false;
        if self.attempt >= ROUNDS * tx.servers.len() {
            return self.give_up(why);
        }
        self.send(tx, now);
        Step::Wait
    }

    fn give_up(&self, why: &str) -> Step {
        let name = super::display(&self.qname);
        Step::Done(
            QResult::TempFail(format!("DNS {} {name}: {why}", self.key.1)),
            0,
        )
    }
}
