//! A sans-IO stub resolver for next hops (RFC 5321 section 5): MX, then
//! A/AAAA, with retries across servers, TCP fallback for truncated answers,
//! and a TTL cache. The event loop owns the sockets; this owns the logic.
//!
//! Driving it: `lookup` (an immediate answer, or later one from
//! `poll_answer`); after that and after every `handle_*` call, drain
//! `poll_transmit` (open a socket per `query`, send), `poll_closed` (close
//! those sockets) and `poll_answer`, then re-arm the timer from
//! `next_timeout`. Each datagram read goes to `handle_response` with the
//! socket's `query` handle and the sender; send or receive errors go to
//! `handle_error`. Wire format by hickory-proto; no sockets or clock here.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use hickory_proto::rr::Name;

mod cache;
mod lookup;
mod query;
mod rng;
#[cfg(test)]
mod tests;
mod wire;

use cache::{Cache, Key, CAPACITY};
use lookup::{Local, Lookup};
use query::{Question, Step, Transport};
use rng::Rng;
pub use wire::MAX_TXT_RECORDS;

/// What to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A mail domain: its MX hosts (or, without MX, the domain itself).
    Mx(String),
    /// One host name, A and AAAA (a `[routes]` `host:port`).
    Host(String),
    /// The TXT records of a name (`_mta-sts.<domain>`, RFC 8461 3.1).
    Txt(String),
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
    /// Of a `Target::Txt`: each record's strings joined (RFC 7208 3.3
    /// style), at most `MAX_TXT_RECORDS` of them.
    Txt(Vec<String>),
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
    tx: Transport,
    local: Local,
    cache: Cache,
    /// Questions on the wire, each shared by the lookups that need it.
    questions: HashMap<Key, Question>,
    /// Query handle of each question's current attempt.
    handles: HashMap<u64, Key>,
    lookups: HashMap<Target, Lookup>,
    answers: VecDeque<(Target, Answer)>,
}

impl Resolver {
    /// `servers`: from `[dns] servers`. `local_names`/`local_addrs`: this
    /// host (hostname, listening addresses), to detect an MX pointing back.
    pub fn new(
        servers: Vec<SocketAddr>,
        local_names: Vec<String>,
        local_addrs: Vec<IpAddr>,
    ) -> Resolver {
        Resolver::with_rng(servers, local_names, local_addrs, Rng::from_os())
    }

    fn with_rng(
        servers: Vec<SocketAddr>,
        local_names: Vec<String>,
        local_addrs: Vec<IpAddr>,
        rng: Rng,
    ) -> Resolver {
        let names = local_names.iter().filter_map(|n| parse_name(n)).collect();
        Resolver {
            tx: Transport {
                servers,
                rng,
                next_handle: 0,
                transmits: VecDeque::new(),
                closed: VecDeque::new(),
            },
            local: Local {
                names,
                addrs: local_addrs,
            },
            cache: Cache::new(CAPACITY),
            questions: HashMap::new(),
            handles: HashMap::new(),
            lookups: HashMap::new(),
            answers: VecDeque::new(),
        }
    }

    /// New servers for the questions asked from now on (a reload); an
    /// empty list is refused (false), since questions in flight need one.
    pub fn set_servers(&mut self, servers: Vec<SocketAddr>) -> bool {
        if servers.is_empty() {
            return false;
        }
        self.tx.servers = servers;
        true
    }

    /// Starts a lookup, or joins one in progress. A cached answer is
    /// returned at once; otherwise it comes later from `poll_answer`.
    pub fn lookup(&mut self, target: Target, now: Instant) -> Option<Answer> {
        if self.lookups.contains_key(&target) {
            return None;
        }
        let lookup = match self.prepare(&target) {
            Ok(lookup) => lookup,
            Err(answer) => return Some(answer),
        };
        if self.tx.servers.is_empty() {
            return Some(Answer::TempFail("no DNS servers".into()));
        }
        self.lookups.insert(target.clone(), lookup);
        self.drive(&target, now)
    }

    /// A lookup to run, or the answer without one (IP literal, bad name).
    fn prepare(&self, target: &Target) -> Result<Lookup, Answer> {
        let (Target::Mx(s) | Target::Host(s) | Target::Txt(s)) = target;
        if matches!(target, Target::Txt(_)) && ip_literal(s).is_some() {
            return Err(Answer::NotFound(format!(
                "{s}: an address has no TXT records"
            )));
        }
        if let Some(addr) = ip_literal(s) {
            if matches!(target, Target::Mx(_)) && self.local.addrs.contains(&addr) {
                return Err(Answer::Loop(format!("{s} is this host")));
            }
            return Err(Answer::Hosts(vec![Candidate {
                name: s.clone(),
                addrs: vec![addr],
            }]));
        }
        let Some(name) = parse_name(s) else {
            return Err(Answer::NotFound(format!("{s}: not a valid domain name")));
        };
        Ok(match target {
            Target::Mx(_) => Lookup::mx(name),
            Target::Host(_) => Lookup::host(name),
            Target::Txt(_) => Lookup::txt(name),
        })
    }

    /// Feeds `target`'s lookup from the cache and asks the questions still
    /// missing; the answer if that completes it (the lookup is then gone).
    fn drive(&mut self, target: &Target, now: Instant) -> Option<Answer> {
        loop {
            let lookup = self.lookups.get_mut(target)?;
            if let Some(answer) = lookup.answer(&self.local) {
                self.lookups.remove(target);
                return Some(answer);
            }
            let mut fed = false;
            for key in lookup.needs() {
                if let Some(result) = self.cache.get(&key, now) {
                    lookup.feed(&key, &result, &mut self.tx.rng, &self.local);
                    fed = true;
                    continue;
                }
                let question = self.questions.entry(key.clone()).or_insert_with(|| {
                    let q = Question::start(key.clone(), &mut self.tx, now);
                    self.handles.insert(q.handle, key);
                    q
                });
                if !question.waiters.contains(target) {
                    question.waiters.push(target.clone());
                }
            }
            if !fed {
                return None;
            }
        }
    }

    /// Applies what a question's attempt led to.
    fn step(&mut self, key: Key, old_handle: u64, step: Step, now: Instant) {
        let Some(question) = self.questions.get(&key) else {
            return;
        };
        let new_handle = question.handle;
        match step {
            Step::Wait if new_handle != old_handle => {
                self.handles.remove(&old_handle);
                self.handles.insert(new_handle, key);
            }
            Step::Wait => {}
            Step::Done(result, ttl) => {
                self.handles.remove(&old_handle);
                let question = self.questions.remove(&key).expect("question present");
                self.cache.insert(key.clone(), result.clone(), ttl, now);
                for target in question.waiters {
                    let Some(lookup) = self.lookups.get_mut(&target) else {
                        continue;
                    };
                    lookup.feed(&key, &result, &mut self.tx.rng, &self.local);
                    if let Some(answer) = self.drive(&target, now) {
                        self.answers.push_back((target, answer));
                    }
                }
            }
        }
    }

    /// Next datagram or TCP query to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.tx.transmits.pop_front()
    }

    /// A response for `query` (UDP datagram, or TCP message without its
    /// length prefix) from `from`. IDs, question and source are checked;
    /// anything that does not match is ignored.
    pub fn handle_response(&mut self, query: u64, from: SocketAddr, bytes: &[u8], now: Instant) {
        let Some(key) = self.handles.get(&query).cloned() else {
            return;
        };
        let Some(question) = self.questions.get_mut(&key) else {
            return;
        };
        if let Some(step) = question.on_reply(from, bytes, &mut self.tx, now) {
            self.step(key, query, step, now);
        } else {
            log::debug!("dns: ignored a response to query {query} from {from}");
        }
    }

    /// The socket of `query` failed (ICMP unreachable, TCP reset).
    pub fn handle_error(&mut self, query: u64, now: Instant) {
        let Some(key) = self.handles.get(&query).cloned() else {
            return;
        };
        let Some(question) = self.questions.get_mut(&key) else {
            return;
        };
        let step = question.on_failure("socket error", &mut self.tx, now);
        self.step(key, query, step, now);
    }

    /// Queries whose sockets the loop may close now (answered, given up).
    pub fn poll_closed(&mut self) -> Option<u64> {
        self.tx.closed.pop_front()
    }

    /// Finished lookups.
    pub fn poll_answer(&mut self) -> Option<(Target, Answer)> {
        self.answers.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.questions.values().map(|q| q.deadline).min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<(Key, u64)> = self
            .questions
            .values()
            .filter(|q| q.deadline <= now)
            .map(|q| (q.key.clone(), q.handle))
            .collect();
        for (key, handle) in due {
            let Some(question) = self.questions.get_mut(&key) else {
                continue;
            };
            let step = question.on_failure("timed out", &mut self.tx, now);
            self.step(key, handle, step, now);
        }
    }
}

/// Lower case and fully qualified, so that names compare and hash alike.
fn normalize(name: &Name) -> Name {
    let mut name = name.to_lowercase();
    name.set_fqdn(true);
    name
}

fn parse_name(s: &str) -> Option<Name> {
    let s = s.trim();
    if s.is_empty() || s == "." {
        return None;
    }
    let name = if s.is_ascii() {
        Name::from_ascii(s)
    } else {
        Name::from_utf8(s)
    };
    name.ok().map(|n| normalize(&n))
}

/// How names appear in answers and messages: no trailing dot.
fn display(name: &Name) -> String {
    let s = name.to_ascii();
    s.strip_suffix('.').map_or(s.clone(), str::to_string)
}

/// `192.0.2.1`, `2001:db8::1`, or an address literal as in RFC 5321
/// 4.1.3: `[192.0.2.1]`, `[IPv6:2001:db8::1]`.
fn ip_literal(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let inner = match s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(inner) => inner
            .strip_prefix("IPv6:")
            .or_else(|| inner.strip_prefix("ipv6:"))
            .unwrap_or(inner),
        None => s,
    };
    inner.parse().ok()
}
