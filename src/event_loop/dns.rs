//! DNS on the loop: the resolver (`crate::dns`) decides, this moves its
//! bytes. Each query gets a fresh UDP socket (so a random source port, on
//! top of the random ID) connected to its server; a truncated answer is
//! asked again over TCP. Jobs wait here, per target, for their answer.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use log::{debug, info};
use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Token};

use super::outbound::{Destination, Job};
use super::{Server, DNS_BASE};
use crate::dns::{Answer, Target, Transmit};
use crate::smtp::reply::Reply;

/// Largest DNS message over TCP (RFC 1035 4.2.2: 16-bit length).
const MAX_TCP_MESSAGE: usize = 65535;

pub(super) struct DnsSocket {
    query: u64,
    server: SocketAddr,
    kind: Kind,
}

enum Kind {
    Udp(UdpSocket),
    Tcp {
        stream: TcpStream,
        out: Vec<u8>,
        inbuf: Vec<u8>,
    },
}

impl Server {
    /// Parks `job` until `target` is resolved (at once when cached).
    pub(super) fn resolve(&mut self, job: Job, target: Target, port: u16) {
        let cached = self.resolver.lookup(target.clone(), self.now);
        if cached.is_some() {
            self.metrics.dns_cache_hits.inc();
        }
        self.resolving
            .entry(target.clone())
            .or_default()
            .push((job, port));
        if let Some(answer) = cached {
            self.resolved(target, answer);
        }
        self.dns_flush();
    }

    /// Moves the resolver's work: sends queries, closes finished sockets,
    /// and hands answers to the jobs waiting for them.
    pub(super) fn dns_flush(&mut self) {
        if self.resolver.next_timeout().is_some_and(|t| t <= self.now) {
            self.resolver.handle_timeout(self.now);
        }
        loop {
            let mut progressed = false;
            while let Some(transmit) = self.resolver.poll_transmit() {
                progressed = true;
                self.dns_send(transmit);
            }
            while let Some(query) = self.resolver.poll_closed() {
                progressed = true;
                if let Some(key) = self.dns_by_query.remove(&query) {
                    self.dns_sockets.remove(key);
                }
            }
            while let Some((target, answer)) = self.resolver.poll_answer() {
                progressed = true;
                self.resolved(target, answer);
            }
            if !progressed {
                break;
            }
        }
    }

    fn dns_send(&mut self, transmit: Transmit) {
        let Transmit {
            query,
            server,
            tcp,
            bytes,
        } = transmit;
        self.metrics.dns_query(query_type(&bytes));
        let entry = self.dns_sockets.vacant_entry();
        let key = entry.key();
        let token = Token(DNS_BASE + key);
        let registry = self.poll.registry();
        let opened = if tcp {
            TcpStream::connect(server).and_then(|mut stream| {
                registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
                let mut out = Vec::with_capacity(bytes.len() + 2);
                out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                out.extend_from_slice(&bytes);
                Ok(Kind::Tcp {
                    stream,
                    out,
                    inbuf: Vec::new(),
                })
            })
        } else {
            let any: SocketAddr = if server.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            UdpSocket::bind(any).and_then(|mut socket| {
                socket.connect(server)?;
                registry.register(&mut socket, token, Interest::READABLE)?;
                socket.send(&bytes)?;
                Ok(Kind::Udp(socket))
            })
        };
        match opened {
            Ok(kind) => {
                entry.insert(DnsSocket {
                    query,
                    server,
                    kind,
                });
                self.dns_by_query.insert(query, key);
                debug!(
                    "dns query {query} to {server} ({})",
                    if tcp { "tcp" } else { "udp" }
                );
            }
            Err(e) => {
                debug!("dns query {query} to {server}: {e}");
                self.resolver.handle_error(query, self.now);
            }
        }
    }

    pub(super) fn dns_event(&mut self, key: usize) {
        let Some(socket) = self.dns_sockets.get_mut(key) else {
            return;
        };
        let (query, server) = (socket.query, socket.server);
        let mut failed = false;
        match &mut socket.kind {
            Kind::Udp(udp) => loop {
                match udp.recv(&mut self.scratch) {
                    Ok(n) => {
                        self.resolver
                            .handle_response(query, server, &self.scratch[..n], self.now);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            },
            Kind::Tcp { stream, out, inbuf } => {
                failed = tcp_exchange(stream, out, inbuf, &mut self.scratch).is_err();
                if inbuf.len() >= 2 {
                    let len = u16::from_be_bytes([inbuf[0], inbuf[1]]) as usize;
                    if inbuf.len() >= 2 + len {
                        self.resolver
                            .handle_response(query, server, &inbuf[2..2 + len], self.now);
                        inbuf.clear();
                    }
                }
            }
        }
        if failed {
            self.resolver.handle_error(query, self.now);
        }
        self.dns_flush();
    }

    /// An answer for `target`: the jobs waiting for it go to their hosts,
    /// or are decided (bounced, deferred) without an attempt.
    fn resolved(&mut self, target: Target, answer: Answer) {
        match &target {
            // Only MTA-STS asks for TXT records.
            Target::Txt(name) => return self.sts_txt_answer(name, answer),
            // A policy fetch may wait for `mta-sts.<domain>`.
            Target::Host(_) => self.fetch_resolved(&target, &answer),
            Target::Mx(_) => {}
        }
        let Some(waiting) = self.resolving.remove(&target) else {
            return;
        };
        let failure = match &answer {
            Answer::Hosts(_) => None,
            Answer::NullMx => Some(Reply::local(
                550,
                "5.1.10",
                &format!(
                    "{}: the domain accepts no mail (null MX, RFC 7505)",
                    name(&target)
                ),
            )),
            Answer::NotFound(why) => Some(Reply::local(550, "5.1.2", why)),
            Answer::TempFail(why) => {
                self.metrics.dns_errors.inc();
                Some(Reply::local(451, "4.4.3", why))
            }
            Answer::Loop(why) => Some(Reply::local(554, "5.4.6", why)),
            Answer::Txt(_) => Some(Reply::local(451, "4.4.3", "internal error: a TXT answer")),
        };
        if let Some(reply) = failure {
            info!("{}: {reply}", name(&target));
            for (job, _) in waiting {
                self.settle_job(job, &[], reply.clone(), None, None);
            }
            return;
        }
        let Answer::Hosts(candidates) = answer else {
            return;
        };
        // MTA-STS enforce: only MX hosts the policy names.
        let applied = self.sts_applied(&target);
        let candidates = match self.sts_filter(applied.as_ref(), candidates) {
            Ok(candidates) => candidates,
            Err((reply, mx, note)) => {
                for (mut job, _) in waiting {
                    job.tls = Some(note);
                    self.settle_job(job, &[], reply.clone(), Some(&mx), None);
                }
                return;
            }
        };
        let mut hops = Vec::new();
        for (job, port) in waiting {
            let hosts: Vec<(String, SocketAddr)> = candidates
                .iter()
                .flat_map(|c| {
                    c.addrs.iter().map(move |ip| {
                        let addr = SocketAddr::new(*ip, port);
                        (format!("{}[{ip}]:{port}", c.name), addr)
                    })
                })
                .collect();
            let hop = job.lease.next_hop.clone();
            let destination = self
                .destinations
                .entry(hop.clone())
                .or_insert_with(|| Destination {
                    hosts: Vec::new(),
                    current: 0,
                    sts: None,
                });
            if destination.hosts != hosts {
                destination.hosts = hosts;
                destination.current = 0;
            }
            destination.sts = applied.clone();
            self.jobs.entry(hop.clone()).or_default().push_back(job);
            if !hops.contains(&hop) {
                hops.push(hop);
            }
        }
        for hop in hops {
            self.dispatch(&hop);
        }
    }
}

fn name(target: &Target) -> &str {
    match target {
        Target::Mx(name) | Target::Host(name) | Target::Txt(name) => name,
    }
}

/// Writes what is pending and reads what arrived, until either would block.
fn tcp_exchange(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    inbuf: &mut Vec<u8>,
    scratch: &mut [u8],
) -> io::Result<()> {
    while !out.is_empty() {
        match stream.write(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    loop {
        match stream.read(scratch) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                if inbuf.len() + n > MAX_TCP_MESSAGE + 2 {
                    return Err(io::ErrorKind::InvalidData.into());
                }
                inbuf.extend_from_slice(&scratch[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The QTYPE of a query we made (one question, QTYPE and QCLASS last).
fn query_type(query: &[u8]) -> &'static str {
    let qtype = query
        .len()
        .checked_sub(4)
        .map(|at| u16::from_be_bytes([query[at], query[at + 1]]));
    match qtype {
        Some(1) => "A",
        Some(28) => "AAAA",
        Some(15) => "MX",
        Some(16) => "TXT",
        Some(5) => "CNAME",
        _ => "other",
    }
}
