//! The resolver without sockets: canned responses built with hickory's
//! `Message` and fed through `handle_response`, time passed explicitly.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::rng::Rng;
use super::*;

mod caching;
mod resolution;
mod transport;

pub(super) fn s1() -> SocketAddr {
    "192.0.2.53:53".parse().unwrap()
}
pub(super) fn s2() -> SocketAddr {
    "198.51.100.53:53".parse().unwrap()
}
pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
pub(super) fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}
pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// This host: `mail.self.test`, listening on 192.0.2.25.
pub(super) fn resolver_seeded(servers: Vec<SocketAddr>, seed: u64) -> Resolver {
    let names = vec!["MAIL.self.test.".to_string()];
    Resolver::with_rng(servers, names, vec![ip("192.0.2.25")], Rng::with_seed(seed))
}
pub(super) fn resolver(servers: Vec<SocketAddr>) -> Resolver {
    resolver_seeded(servers, 7)
}

/// A transmitted query, decoded and checked for the basics.
pub(super) struct Sent {
    tx: Transmit,
    msg: Message,
}

impl Sent {
    fn question(&self) -> (String, RecordType) {
        let q = &self.msg.queries[0];
        (q.name.to_ascii(), q.query_type)
    }
}

pub(super) fn sent(r: &mut Resolver) -> Vec<Sent> {
    let mut out = Vec::new();
    while let Some(tx) = r.poll_transmit() {
        let msg = Message::from_vec(&tx.bytes).expect("query decodes");
        assert_eq!(msg.metadata.message_type, MessageType::Query);
        assert_eq!(msg.metadata.op_code, OpCode::Query);
        assert!(msg.metadata.recursion_desired);
        assert_eq!(msg.queries.len(), 1);
        assert_eq!(msg.queries[0].query_class, DNSClass::IN);
        assert!(msg.answers.is_empty() && msg.additionals.is_empty());
        out.push(Sent { tx, msg });
    }
    out
}

pub(super) fn one(r: &mut Resolver) -> Sent {
    let mut v = sent(r);
    assert_eq!(v.len(), 1, "expected one query");
    v.pop().unwrap()
}

pub(super) fn closed(r: &mut Resolver) -> Vec<u64> {
    std::iter::from_fn(|| r.poll_closed()).collect()
}

pub(super) fn answers(r: &mut Resolver) -> Vec<(Target, Answer)> {
    std::iter::from_fn(|| r.poll_answer()).collect()
}

/// A response to `to`, to be completed with records.
pub(super) struct Resp(Message);

pub(super) fn resp(to: &Sent) -> Resp {
    let mut m = Message::response(to.msg.metadata.id, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.add_query(to.msg.queries[0].clone());
    Resp(m)
}

impl Resp {
    fn rcode(mut self, c: ResponseCode) -> Resp {
        self.0.metadata.response_code = c;
        self
    }
    fn tc(mut self) -> Resp {
        self.0.metadata.truncation = true;
        self
    }
    fn answer(mut self, r: Record) -> Resp {
        self.0.add_answer(r);
        self
    }
    fn glue(mut self, r: Record) -> Resp {
        self.0.add_additional(r);
        self
    }
    fn soa(mut self, zone: &str, minimum: u32) -> Resp {
        let soa = SOA::new(
            name("ns.test."),
            name("admin.test."),
            1,
            3600,
            600,
            86400,
            minimum,
        );
        self.0
            .add_authority(Record::from_rdata(name(zone), 3600, RData::SOA(soa)));
        self
    }
    fn bytes(&self) -> Vec<u8> {
        self.0.to_vec().unwrap()
    }
    fn send(self, r: &mut Resolver, to: &Sent, now: Instant) {
        r.handle_response(to.tx.query, to.tx.server, &self.bytes(), now);
    }
}

pub(super) fn mx(owner: &str, pref: u16, exchange: &str) -> Record {
    Record::from_rdata(name(owner), 300, RData::MX(MX::new(pref, name(exchange))))
}
pub(super) fn a(owner: &str, addr: &str) -> Record {
    Record::from_rdata(name(owner), 300, RData::A(A(addr.parse().unwrap())))
}
pub(super) fn aaaa(owner: &str, addr: &str) -> Record {
    Record::from_rdata(name(owner), 300, RData::AAAA(AAAA(addr.parse().unwrap())))
}
pub(super) fn cname(owner: &str, target: &str) -> Record {
    Record::from_rdata(name(owner), 300, RData::CNAME(CNAME(name(target))))
}
pub(super) fn ttl(mut r: Record, ttl: u32) -> Record {
    r.ttl = ttl;
    r
}

pub(super) fn cand(n: &str, addrs: &[&str]) -> Candidate {
    Candidate {
        name: n.into(),
        addrs: addrs.iter().map(|s| ip(s)).collect(),
    }
}

pub(super) fn mx_target() -> Target {
    Target::Mx("example.test".into())
}

/// Answers each A/AAAA query for the given host names from `addrs`, with
/// NODATA for a type it has none of.
pub(super) fn answer_addrs(
    r: &mut Resolver,
    queries: &[Sent],
    addrs: &[(&str, &str)],
    now: Instant,
) {
    for q in queries {
        let (qname, qtype) = q.question();
        let mut resp = resp(q);
        for (host, addr) in addrs {
            if name(host).eq_ignore_root(&name(&qname)) {
                match (qtype, ip(addr)) {
                    (RecordType::A, IpAddr::V4(_)) => resp = resp.answer(a(host, addr)),
                    (RecordType::AAAA, IpAddr::V6(_)) => resp = resp.answer(aaaa(host, addr)),
                    _ => {}
                }
            }
        }
        if resp.0.answers.is_empty() {
            resp = resp.soa("example.test.", 60);
        }
        resp.send(r, q, now);
    }
}
