//! MTA-STS policy fetches on the loop (RFC 8461 3.3): `mta-sts.<domain>`
//! resolved by the loop's resolver, a nonblocking TCP connection to port
//! 443, rustls with SNI `mta-sts.<domain>` verified against the trusted
//! roots, one HTTP/1.0 GET, the response judged by `mta_sts::response`.
//! Bounded: `MAX_FETCHES` at once (the rest queue, up to `MAX_QUEUED`),
//! `FETCH_DEADLINE` for the whole of one, `MAX_RESPONSE` octets of it.

use std::collections::{BTreeSet, VecDeque};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use log::debug;
use mio::net::TcpStream;
use mio::{Interest, Token};
use slab::Slab;

use super::{Server, Transport, FETCH_BASE};
use crate::dns::{Answer, Target};
use crate::mta_sts::response::{self, Progress, MAX_RESPONSE};

/// Fetches in flight at once.
const MAX_FETCHES: usize = 8;
/// Fetches waiting for a slot; more fail at once (and are tried again
/// after `tracker::FETCH_RETRY`).
const MAX_QUEUED: usize = 256;
/// From asking for the host's address to the end of the response.
const FETCH_DEADLINE: Duration = Duration::from_secs(20);
/// Addresses of the policy host tried, in order.
const MAX_ADDRS: usize = 4;

#[derive(Default)]
pub(super) struct Fetches {
    slab: Slab<Fetch>,
    queued: VecDeque<(String, String)>,
    /// Fetches waiting for their host's addresses.
    resolving: HashMap<Target, Vec<usize>>,
    deadlines: BTreeSet<(Instant, usize)>,
}

impl Fetches {
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|d| d.0)
    }
}

struct Fetch {
    domain: String,
    id: String,
    deadline: Instant,
    /// Addresses still to try after the current one.
    addrs: Vec<SocketAddr>,
    conn: Option<Conn>,
}

struct Conn {
    transport: Transport,
    addr: SocketAddr,
    connected: bool,
    inbuf: Vec<u8>,
}

fn host(domain: &str) -> String {
    format!("mta-sts.{domain}")
}

impl Server {
    /// Fetches the policy of `domain` for record `id`; the result goes to
    /// `sts_fetched`, now or later.
    pub(super) fn fetch_policy(&mut self, domain: &str, id: &str) {
        if self.fetches.slab.len() >= MAX_FETCHES {
            if self.fetches.queued.len() >= MAX_QUEUED {
                let why = format!("more than {MAX_QUEUED} policy fetches waiting");
                return self.sts_fetched(domain, id, Err(why));
            }
            return self
                .fetches
                .queued
                .push_back((domain.to_string(), id.to_string()));
        }
        let deadline = self.now + FETCH_DEADLINE;
        let key = self.fetches.slab.insert(Fetch {
            domain: domain.to_string(),
            id: id.to_string(),
            deadline,
            addrs: Vec::new(),
            conn: None,
        });
        self.fetches.deadlines.insert((deadline, key));
        let target = Target::Host(host(domain));
        self.fetches
            .resolving
            .entry(target.clone())
            .or_default()
            .push(key);
        if let Some(answer) = self.resolver.lookup(target.clone(), self.now) {
            self.fetch_resolved(&target, &answer);
        }
        self.dns_flush();
    }

    /// From `resolved`: addresses (or not) for fetches waiting on `target`.
    pub(super) fn fetch_resolved(&mut self, target: &Target, answer: &Answer) {
        let Some(keys) = self.fetches.resolving.remove(target) else {
            return;
        };
        for key in keys {
            let addrs: Vec<SocketAddr> = match answer {
                Answer::Hosts(candidates) => candidates
                    .iter()
                    .flat_map(|c| c.addrs.iter().map(|ip| SocketAddr::new(*ip, 443)))
                    .take(MAX_ADDRS)
                    .collect(),
                _ => Vec::new(),
            };
            if addrs.is_empty() {
                let why = match answer {
                    Answer::NotFound(why) | Answer::TempFail(why) => why.clone(),
                    _ => "no address for the policy host".to_string(),
                };
                self.fetch_done(key, Err(format!("DNS: {why}")));
                continue;
            }
            if let Some(fetch) = self.fetches.slab.get_mut(key) {
                fetch.addrs = addrs;
                fetch.addrs.reverse(); // popped from the end, in order
                self.fetch_connect(key);
            }
        }
    }

    /// Connects to the next address, or gives up with `last_error`.
    fn fetch_connect(&mut self, key: usize) {
        let Some(fetch) = self.fetches.slab.get_mut(key) else {
            return;
        };
        if let Some(mut old) = fetch.conn.take() {
            let _ = self.poll.registry().deregister(&mut old.transport.stream);
        }
        let Some(addr) = fetch.addrs.pop() else {
            return self.fetch_done(key, Err("no address could be reached".into()));
        };
        let opened = TcpStream::connect(addr).and_then(|mut stream| {
            self.poll.registry().register(
                &mut stream,
                Token(FETCH_BASE + key),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match opened {
            Ok(stream) => {
                debug!("{}: fetching the MTA-STS policy from {addr}", fetch.domain);
                fetch.conn = Some(Conn {
                    transport: Transport::plain(stream),
                    addr,
                    connected: false,
                    inbuf: Vec::new(),
                });
            }
            Err(e) => {
                debug!("{}: policy host {addr}: {e}", fetch.domain);
                self.fetch_connect(key);
            }
        }
    }

    pub(super) fn fetch_event(&mut self, key: usize) {
        match self.fetch_drive(key) {
            Ok(None) => {}
            Ok(Some(progress)) => {
                let result = match progress {
                    Progress::Done(text) => Ok(text),
                    Progress::Refused(why) => Err(why),
                    Progress::More => return,
                };
                self.fetch_done(key, result);
            }
            Err(Retry::NextAddress(why)) => {
                if let Some(fetch) = self.fetches.slab.get(key) {
                    debug!("{}: policy host: {why}", fetch.domain);
                }
                if self
                    .fetches
                    .slab
                    .get(key)
                    .is_some_and(|f| f.addrs.is_empty())
                {
                    return self.fetch_done(key, Err(why));
                }
                self.fetch_connect(key);
            }
            Err(Retry::Fail(why)) => self.fetch_done(key, Err(why)),
        }
    }

    /// Moves one fetch as far as it goes: the judged response once it is
    /// complete (or refused), `None` while more is to come.
    fn fetch_drive(&mut self, key: usize) -> Result<Option<Progress>, Retry> {
        let Some(fetch) = self.fetches.slab.get_mut(key) else {
            return Ok(None);
        };
        let domain = fetch.domain.clone();
        let Some(conn) = fetch.conn.as_mut() else {
            return Ok(None);
        };
        if !conn.connected {
            // mio: connected once writable, no error, and a peer.
            match conn.transport.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    return Err(Retry::NextAddress(format!("{}: {e}", conn.addr)))
                }
            }
            match conn.transport.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(None),
                Err(e) => return Err(Retry::NextAddress(format!("{}: {e}", conn.addr))),
            }
            conn.connected = true;
            let Some(sts) = &self.tls.sts else {
                return Err(Retry::Fail("no trusted root certificates".into()));
            };
            let name = crate::tls::server_name(&host(&domain)).ok_or_else(|| {
                Retry::Fail(format!("{} is not a TLS server name", host(&domain)))
            })?;
            conn.transport
                .start_client(sts.client.clone(), name)
                .map_err(|e| Retry::Fail(format!("TLS: {e}")))?;
            // rustls holds the request until the handshake is done.
            let request = response::request(&domain);
            conn.transport
                .queue_plaintext(&request)
                .map_err(|e| Retry::Fail(format!("TLS: {e}")))?;
        }
        if let Err(e) = conn.transport.flush_records() {
            return Err(Retry::NextAddress(format!("{}: {e}", conn.addr)));
        }
        loop {
            match conn.transport.read(&mut self.scratch) {
                Ok(0) => return Ok(Some(response::judge(&conn.inbuf, true))),
                Ok(n) => {
                    if conn.inbuf.len() + n > MAX_RESPONSE {
                        return Err(Retry::Fail(format!(
                            "the response is longer than {MAX_RESPONSE} octets"
                        )));
                    }
                    conn.inbuf.extend_from_slice(&self.scratch[..n]);
                    match response::judge(&conn.inbuf, false) {
                        Progress::More => {}
                        done => return Ok(Some(done)),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A certificate not valid for mta-sts.<domain> is an
                // answer, not a network error: no other address.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return Err(Retry::Fail(format!("TLS with {}: {e}", host(&domain))))
                }
                Err(e) => return Err(Retry::NextAddress(format!("{}: {e}", conn.addr))),
            }
        }
    }

    /// Ends fetch `key` and hands its result on; a queued fetch may start.
    fn fetch_done(&mut self, key: usize, result: Result<String, String>) {
        if !self.fetches.slab.contains(key) {
            return;
        }
        let mut fetch = self.fetches.slab.remove(key);
        self.fetches.deadlines.remove(&(fetch.deadline, key));
        if let Some(conn) = fetch.conn.as_mut() {
            let _ = self.poll.registry().deregister(&mut conn.transport.stream);
        }
        let target = Target::Host(host(&fetch.domain));
        if let Some(keys) = self.fetches.resolving.get_mut(&target) {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                self.fetches.resolving.remove(&target);
            }
        }
        self.sts_fetched(&fetch.domain, &fetch.id, result);
        while self.fetches.slab.len() < MAX_FETCHES {
            let Some((domain, id)) = self.fetches.queued.pop_front() else {
                break;
            };
            self.fetch_policy(&domain, &id);
        }
    }

    pub(super) fn fire_fetch_deadlines(&mut self) {
        while let Some(&(when, key)) = self.fetches.deadlines.first() {
            if when > self.now {
                break;
            }
            self.fetches.deadlines.pop_first();
            let why = format!("no policy within {}s", FETCH_DEADLINE.as_secs());
            self.fetch_done(key, Err(why));
        }
    }
}

/// Why a fetch cannot go on where it is.
enum Retry {
    /// A network failure: the next address may do better.
    NextAddress(String),
    Fail(String),
}
