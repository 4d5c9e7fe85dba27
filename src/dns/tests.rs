//! The resolver without sockets: canned responses built with hickory's
//! `Message` and fed through `handle_response`, time passed explicitly.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::cache::{Cache, QResult};
use super::rng::Rng;
use super::*;

fn s1() -> SocketAddr {
    "192.0.2.53:53".parse().unwrap()
}
fn s2() -> SocketAddr {
    "198.51.100.53:53".parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}
fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// This host: `mail.self.test`, listening on 192.0.2.25.
fn resolver_seeded(servers: Vec<SocketAddr>, seed: u64) -> Resolver {
    let names = vec!["MAIL.self.test.".to_string()];
    Resolver::with_rng(servers, names, vec![ip("192.0.2.25")], Rng::with_seed(seed))
}
fn resolver(servers: Vec<SocketAddr>) -> Resolver {
    resolver_seeded(servers, 7)
}

/// A transmitted query, decoded and checked for the basics.
struct Sent {
    tx: Transmit,
    msg: Message,
}

impl Sent {
    fn question(&self) -> (String, RecordType) {
        let q = &self.msg.queries[0];
        (q.name.to_ascii(), q.query_type)
    }
}

fn sent(r: &mut Resolver) -> Vec<Sent> {
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

fn one(r: &mut Resolver) -> Sent {
    let mut v = sent(r);
    assert_eq!(v.len(), 1, "expected one query");
    v.pop().unwrap()
}

fn closed(r: &mut Resolver) -> Vec<u64> {
    std::iter::from_fn(|| r.poll_closed()).collect()
}

fn answers(r: &mut Resolver) -> Vec<(Target, Answer)> {
    std::iter::from_fn(|| r.poll_answer()).collect()
}

/// A response to `to`, to be completed with records.
struct Resp(Message);

fn resp(to: &Sent) -> Resp {
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

fn mx(owner: &str, pref: u16, exchange: &str) -> Record {
    Record::from_rdata(name(owner), 300, RData::MX(MX::new(pref, name(exchange))))
}
fn a(owner: &str, addr: &str) -> Record {
    Record::from_rdata(name(owner), 300, RData::A(A(addr.parse().unwrap())))
}
fn aaaa(owner: &str, addr: &str) -> Record {
    Record::from_rdata(name(owner), 300, RData::AAAA(AAAA(addr.parse().unwrap())))
}
fn cname(owner: &str, target: &str) -> Record {
    Record::from_rdata(name(owner), 300, RData::CNAME(CNAME(name(target))))
}
fn ttl(mut r: Record, ttl: u32) -> Record {
    r.ttl = ttl;
    r
}

fn cand(n: &str, addrs: &[&str]) -> Candidate {
    Candidate {
        name: n.into(),
        addrs: addrs.iter().map(|s| ip(s)).collect(),
    }
}

fn mx_target() -> Target {
    Target::Mx("example.test".into())
}

/// Answers each A/AAAA query for the given host names from `addrs`, with
/// NODATA for a type it has none of.
fn answer_addrs(r: &mut Resolver, queries: &[Sent], addrs: &[(&str, &str)], now: Instant) {
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

#[test]
fn mx_with_glue_needs_one_query() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    assert_eq!(r.lookup(mx_target(), t0), None);
    let q = one(&mut r);
    assert_eq!(q.question(), ("example.test.".into(), RecordType::MX));
    assert_eq!((q.tx.server, q.tx.tcp), (s1(), false));
    assert_eq!(r.next_timeout(), Some(t0 + secs(2)));
    resp(&q)
        .answer(mx("example.test.", 20, "mx2.example.test."))
        .answer(mx("example.test.", 10, "mx1.example.test."))
        .glue(a("mx1.example.test.", "192.0.2.1"))
        .glue(aaaa("mx1.example.test.", "2001:db8::1"))
        .glue(a("mx2.example.test.", "192.0.2.2"))
        .glue(aaaa("mx2.example.test.", "2001:db8::2"))
        .glue(a("unrelated.test.", "192.0.2.99"))
        .send(&mut r, &q, t0);
    assert!(sent(&mut r).is_empty());
    assert_eq!(closed(&mut r), vec![q.tx.query]);
    let want = Answer::Hosts(vec![
        cand("mx1.example.test", &["192.0.2.1", "2001:db8::1"]),
        cand("mx2.example.test", &["192.0.2.2", "2001:db8::2"]),
    ]);
    assert_eq!(answers(&mut r), vec![(mx_target(), want)]);
    assert_eq!(r.next_timeout(), None);
}

#[test]
fn mx_without_glue_asks_for_addresses() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let q = one(&mut r);
    resp(&q)
        .answer(mx("example.test.", 10, "MX1.Example.Test."))
        .answer(mx("example.test.", 20, "mx2.example.test."))
        .glue(a("mx1.example.test.", "192.0.2.1")) // A glue only: AAAA still asked
        .send(&mut r, &q, t0);
    let qs = sent(&mut r);
    let mut asked: Vec<_> = qs.iter().map(Sent::question).collect();
    asked.sort();
    assert_eq!(
        asked,
        vec![
            ("mx1.example.test.".into(), RecordType::AAAA),
            ("mx2.example.test.".into(), RecordType::A),
            ("mx2.example.test.".into(), RecordType::AAAA),
        ]
    );
    let handles: std::collections::HashSet<u64> = qs.iter().map(|q| q.tx.query).collect();
    assert_eq!(handles.len(), 3, "one handle per query");
    answer_addrs(&mut r, &qs[..2], &[("mx2.example.test.", "192.0.2.2")], t0);
    assert!(answers(&mut r).is_empty(), "not before all are in");
    answer_addrs(&mut r, &qs[2..], &[("mx2.example.test.", "192.0.2.2")], t0);
    let want = Answer::Hosts(vec![
        cand("mx1.example.test", &["192.0.2.1"]),
        cand("mx2.example.test", &["192.0.2.2"]),
    ]);
    assert_eq!(answers(&mut r), vec![(mx_target(), want)]);
    assert_eq!(closed(&mut r).len(), 4);
}

#[test]
fn mx_host_nxdomain_is_skipped_and_none_left_is_not_found() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let q = one(&mut r);
    resp(&q)
        .answer(mx("example.test.", 10, "gone.example.test."))
        .send(&mut r, &q, t0);
    for q in sent(&mut r) {
        resp(&q)
            .rcode(ResponseCode::NXDomain)
            .soa("example.test.", 60)
            .send(&mut r, &q, t0);
    }
    let got = answers(&mut r);
    assert!(matches!(&got[..], [(_, Answer::NotFound(_))]), "{got:?}");
}

#[test]
fn equal_preferences_are_shuffled() {
    let mut orders = std::collections::HashSet::new();
    for seed in 0..16 {
        let t0 = Instant::now();
        let mut r = resolver_seeded(vec![s1()], seed);
        r.lookup(mx_target(), t0);
        let q = one(&mut r);
        let mut resp = resp(&q).answer(mx("example.test.", 5, "best.example.test."));
        resp = resp.glue(a("best.example.test.", "192.0.2.5"));
        for i in 1..=4 {
            let host = format!("h{i}.example.test.");
            resp = resp
                .answer(mx("example.test.", 10, &host))
                .glue(a(&host, &format!("192.0.2.{i}")));
        }
        resp = resp
            .answer(mx("example.test.", 20, "last.example.test."))
            .glue(a("last.example.test.", "192.0.2.6"));
        resp.send(&mut r, &q, t0);
        let aaaa_queries = sent(&mut r);
        assert_eq!(aaaa_queries.len(), 6, "A glue only: AAAA asked");
        answer_addrs(&mut r, &aaaa_queries, &[], t0);
        let Some((_, Answer::Hosts(hosts))) = r.poll_answer() else {
            panic!("no hosts")
        };
        let names: Vec<String> = hosts.into_iter().map(|c| c.name).collect();
        assert_eq!(names[0], "best.example.test");
        assert_eq!(names[5], "last.example.test");
        let mut middle = names[1..5].to_vec();
        orders.insert(middle.clone());
        middle.sort();
        assert_eq!(
            middle,
            [
                "h1.example.test",
                "h2.example.test",
                "h3.example.test",
                "h4.example.test"
            ]
        );
    }
    assert!(
        orders.len() > 3,
        "equal preferences not shuffled: {orders:?}"
    );
}

#[test]
fn null_mx() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let q = one(&mut r);
    resp(&q)
        .answer(mx("example.test.", 0, "."))
        .send(&mut r, &q, t0);
    assert_eq!(answers(&mut r), vec![(mx_target(), Answer::NullMx)]);
    assert!(sent(&mut r).is_empty());
}

#[test]
fn nxdomain_is_not_found_and_cached_per_soa_minimum() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let q = one(&mut r);
    resp(&q)
        .rcode(ResponseCode::NXDomain)
        .soa("test.", 60)
        .send(&mut r, &q, t0);
    let got = answers(&mut r);
    assert!(
        matches!(&got[..], [(_, Answer::NotFound(m))] if m.contains("example.test")),
        "{got:?}"
    );
    // Negative cache: 60 s from the SOA.
    assert!(matches!(
        r.lookup(mx_target(), t0 + secs(59)),
        Some(Answer::NotFound(_))
    ));
    assert!(sent(&mut r).is_empty());
    assert_eq!(r.lookup(mx_target(), t0 + secs(61)), None);
    assert_eq!(one(&mut r).question().1, RecordType::MX);
}

#[test]
fn negative_ttl_is_clamped_to_an_hour() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let q = one(&mut r);
    resp(&q)
        .rcode(ResponseCode::NXDomain)
        .soa("test.", 7 * 86400)
        .send(&mut r, &q, t0);
    answers(&mut r);
    assert!(r.lookup(mx_target(), t0 + secs(3599)).is_some());
    assert_eq!(r.lookup(mx_target(), t0 + secs(3601)), None);
}

#[test]
fn nodata_mx_falls_back_to_the_domain_itself() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let q = one(&mut r);
    resp(&q).soa("example.test.", 60).send(&mut r, &q, t0);
    let qs = sent(&mut r);
    let mut asked: Vec<_> = qs.iter().map(Sent::question).collect();
    asked.sort();
    assert_eq!(
        asked,
        vec![
            ("example.test.".into(), RecordType::A),
            ("example.test.".into(), RecordType::AAAA)
        ]
    );
    answer_addrs(&mut r, &qs, &[("example.test.", "192.0.2.10")], t0);
    let want = Answer::Hosts(vec![cand("example.test", &["192.0.2.10"])]);
    assert_eq!(answers(&mut r), vec![(mx_target(), want)]);
}

#[test]
fn no_mx_and_no_address_is_not_found() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let q = one(&mut r);
    resp(&q).soa("example.test.", 60).send(&mut r, &q, t0);
    let qs = sent(&mut r);
    answer_addrs(&mut r, &qs, &[], t0);
    let got = answers(&mut r);
    assert!(
        matches!(&got[..], [(_, Answer::NotFound(m))] if m.contains("no MX")),
        "{got:?}"
    );
}

#[test]
fn servfail_moves_to_the_next_server() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1(), s2()]);
    r.lookup(mx_target(), t0);
    let q1 = one(&mut r);
    assert_eq!(q1.tx.server, s1());
    resp(&q1)
        .rcode(ResponseCode::ServFail)
        .send(&mut r, &q1, t0);
    assert_eq!(closed(&mut r), vec![q1.tx.query]);
    let q2 = one(&mut r);
    assert_eq!(q2.tx.server, s2());
    assert_ne!(q2.tx.query, q1.tx.query);
    assert_eq!(q2.question(), q1.question());
    resp(&q2)
        .answer(mx("example.test.", 10, "mx1.example.test."))
        .glue(a("mx1.example.test.", "192.0.2.1"))
        .glue(aaaa("mx1.example.test.", "2001:db8::1"))
        .send(&mut r, &q2, t0);
    let want = Answer::Hosts(vec![cand(
        "mx1.example.test",
        &["192.0.2.1", "2001:db8::1"],
    )]);
    assert_eq!(answers(&mut r), vec![(mx_target(), want)]);
}

#[test]
fn servfail_everywhere_is_tempfail() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1(), s2()]);
    r.lookup(mx_target(), t0);
    for _ in 0..2 {
        let q = one(&mut r);
        resp(&q).rcode(ResponseCode::Refused).send(&mut r, &q, t0);
    }
    assert!(sent(&mut r).is_empty());
    let got = answers(&mut r);
    assert!(matches!(&got[..], [(_, Answer::TempFail(_))]), "{got:?}");
}

#[test]
fn timeout_then_answer() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let q1 = one(&mut r);
    r.handle_timeout(t0 + secs(1));
    assert!(sent(&mut r).is_empty(), "not yet due");
    let t1 = r.next_timeout().unwrap();
    r.handle_timeout(t1);
    assert_eq!(closed(&mut r), vec![q1.tx.query]);
    let q2 = one(&mut r);
    assert_eq!(q2.tx.server, s1(), "the only server, second round");
    assert_eq!(r.next_timeout(), Some(t1 + secs(2)));
    // A late answer to the first attempt no longer counts.
    resp(&q1)
        .answer(mx("example.test.", 10, "late.example.test."))
        .send(&mut r, &q1, t1);
    assert!(answers(&mut r).is_empty());
    resp(&q2)
        .answer(mx("example.test.", 0, "."))
        .send(&mut r, &q2, t1);
    assert_eq!(answers(&mut r), vec![(mx_target(), Answer::NullMx)]);
}

#[test]
fn timeouts_everywhere_are_tempfail_cached_briefly() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1(), s2()]);
    r.lookup(mx_target(), t0);
    let mut servers = Vec::new();
    let mut now = t0;
    for _ in 0..4 {
        servers.push(one(&mut r).tx.server);
        now = r.next_timeout().unwrap();
        r.handle_timeout(now);
    }
    assert_eq!(servers, vec![s1(), s2(), s1(), s2()]);
    assert!(sent(&mut r).is_empty());
    assert_eq!(closed(&mut r).len(), 4);
    let got = answers(&mut r);
    assert!(
        matches!(&got[..], [(_, Answer::TempFail(m))] if m.contains("timed out")),
        "{got:?}"
    );
    assert_eq!(r.next_timeout(), None);
    // A dead server is not asked again for every message.
    assert!(matches!(
        r.lookup(mx_target(), now + secs(4)),
        Some(Answer::TempFail(_))
    ));
    assert!(sent(&mut r).is_empty());
    assert_eq!(r.lookup(mx_target(), now + secs(6)), None);
    assert_eq!(sent(&mut r).len(), 1);
}

#[test]
fn socket_error_moves_on_at_once() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1(), s2()]);
    r.lookup(mx_target(), t0);
    let q1 = one(&mut r);
    r.handle_error(q1.tx.query, t0);
    assert_eq!(closed(&mut r), vec![q1.tx.query]);
    assert_eq!(one(&mut r).tx.server, s2());
    r.handle_error(q1.tx.query, t0); // stale: ignored
    assert!(sent(&mut r).is_empty());
}

#[test]
fn truncated_answer_retries_over_tcp() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1(), s2()]);
    r.lookup(mx_target(), t0);
    let q1 = one(&mut r);
    resp(&q1).tc().send(&mut r, &q1, t0);
    assert_eq!(closed(&mut r), vec![q1.tx.query]);
    let q2 = one(&mut r);
    assert!(q2.tx.tcp);
    assert_eq!(q2.tx.server, s1(), "same server");
    assert_eq!(q2.question(), q1.question());
    assert_eq!(r.next_timeout(), Some(t0 + secs(5)));
    resp(&q2)
        .answer(mx("example.test.", 10, "mx1.example.test."))
        .glue(a("mx1.example.test.", "192.0.2.1"))
        .glue(aaaa("mx1.example.test.", "2001:db8::1"))
        .send(&mut r, &q2, t0);
    assert_eq!(closed(&mut r), vec![q2.tx.query]);
    let want = Answer::Hosts(vec![cand(
        "mx1.example.test",
        &["192.0.2.1", "2001:db8::1"],
    )]);
    assert_eq!(answers(&mut r), vec![(mx_target(), want)]);
}

#[test]
fn spoofed_answers_are_ignored() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let q = one(&mut r);
    let good = || resp(&q).answer(mx("example.test.", 0, "."));
    let h = q.tx.query;

    let mut wrong_id = good();
    wrong_id.0.metadata.id = q.msg.metadata.id.wrapping_add(1);
    r.handle_response(h, s1(), &wrong_id.bytes(), t0);

    let mut wrong_name = good();
    wrong_name.0.queries[0] = Query::query(name("other.test."), RecordType::MX);
    r.handle_response(h, s1(), &wrong_name.bytes(), t0);

    let mut wrong_type = good();
    wrong_type.0.queries[0] = Query::query(name("example.test."), RecordType::A);
    r.handle_response(h, s1(), &wrong_type.bytes(), t0);

    let mut not_response = good();
    not_response.0.metadata.message_type = MessageType::Query;
    r.handle_response(h, s1(), &not_response.bytes(), t0);

    let mut no_question = good();
    no_question.0.queries.clear();
    r.handle_response(h, s1(), &no_question.bytes(), t0);

    r.handle_response(h, s2(), &good().bytes(), t0); // wrong source
    r.handle_response(h, "192.0.2.53:5353".parse().unwrap(), &good().bytes(), t0);
    r.handle_response(h, s1(), b"\x12\x34garbage", t0);
    r.handle_response(h + 100, s1(), &good().bytes(), t0); // unknown handle

    assert!(answers(&mut r).is_empty());
    assert!(
        closed(&mut r).is_empty(),
        "the socket stays open for the real answer"
    );
    assert!(sent(&mut r).is_empty());

    // The question's name in other case is still the same question.
    let mut upper = good();
    upper.0.queries[0] = Query::query(name("EXAMPLE.Test."), RecordType::MX);
    r.handle_response(h, s1(), &upper.bytes(), t0);
    assert_eq!(answers(&mut r), vec![(mx_target(), Answer::NullMx)]);
}

#[test]
fn mx_pointing_to_this_host_is_a_loop() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let q = one(&mut r);
    resp(&q)
        .answer(mx("example.test.", 10, "mail.SELF.test"))
        .send(&mut r, &q, t0);
    assert!(sent(&mut r).is_empty(), "no address lookups");
    let got = answers(&mut r);
    assert!(matches!(&got[..], [(_, Answer::Loop(_))]), "{got:?}");
}

#[test]
fn this_host_among_others_keeps_the_better_ones() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let q = one(&mut r);
    resp(&q)
        .answer(mx("example.test.", 10, "better.example.test."))
        .answer(mx("example.test.", 20, "mail.self.test."))
        .answer(mx("example.test.", 20, "peer.example.test."))
        .answer(mx("example.test.", 30, "worse.example.test."))
        .send(&mut r, &q, t0);
    let qs = sent(&mut r);
    assert!(
        qs.iter().all(|q| q.question().0 == "better.example.test."),
        "only the better MX is looked up"
    );
    answer_addrs(&mut r, &qs, &[("better.example.test.", "192.0.2.1")], t0);
    let want = Answer::Hosts(vec![cand("better.example.test", &["192.0.2.1"])]);
    assert_eq!(answers(&mut r), vec![(mx_target(), want)]);
}

#[test]
fn mx_resolving_to_a_local_address_is_a_loop() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let q = one(&mut r);
    resp(&q)
        .answer(mx("example.test.", 10, "alias.example.test."))
        .glue(a("alias.example.test.", "192.0.2.25"))
        .glue(aaaa("alias.example.test.", "2001:db8::25"))
        .send(&mut r, &q, t0);
    let got = answers(&mut r);
    assert!(matches!(&got[..], [(_, Answer::Loop(_))]), "{got:?}");
}

#[test]
fn cache_hit_then_ttl_expiry() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let q = one(&mut r);
    resp(&q)
        .answer(ttl(mx("example.test.", 10, "mx1.example.test."), 100))
        .glue(ttl(a("mx1.example.test.", "192.0.2.1"), 300))
        .glue(ttl(aaaa("mx1.example.test.", "2001:db8::1"), 300))
        .send(&mut r, &q, t0);
    let first = answers(&mut r).pop().unwrap().1;
    assert_eq!(r.lookup(mx_target(), t0 + secs(99)), Some(first.clone()));
    assert_eq!(
        r.lookup(Target::Mx("EXAMPLE.test.".into()), t0 + secs(99)),
        Some(first)
    );
    assert!(sent(&mut r).is_empty());
    assert!(
        answers(&mut r).is_empty(),
        "a cached answer is not also polled"
    );
    assert_eq!(r.lookup(mx_target(), t0 + secs(101)), None);
    assert_eq!(
        one(&mut r).question(),
        ("example.test.".into(), RecordType::MX)
    );
}

#[test]
fn ttl_zero_is_cached_for_the_minimum() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    let host = Target::Host("h.example.test".into());
    r.lookup(host.clone(), t0);
    for q in sent(&mut r) {
        let rec = if q.question().1 == RecordType::A {
            a("h.example.test.", "192.0.2.1")
        } else {
            aaaa("h.example.test.", "2001:db8::1")
        };
        resp(&q).answer(ttl(rec, 0)).send(&mut r, &q, t0);
    }
    assert_eq!(answers(&mut r).len(), 1);
    assert!(r.lookup(host.clone(), t0 + secs(4)).is_some());
    assert_eq!(r.lookup(host, t0 + secs(6)), None);
}

#[test]
fn concurrent_lookups_share_queries() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    assert_eq!(r.lookup(mx_target(), t0), None);
    assert_eq!(r.lookup(mx_target(), t0), None);
    let q = one(&mut r);
    resp(&q)
        .answer(mx("example.test.", 10, "mx1.example.test."))
        .send(&mut r, &q, t0);
    let qs = sent(&mut r);
    assert_eq!(qs.len(), 2);
    // A route to the MX host itself joins the A/AAAA questions in flight.
    let host = Target::Host("MX1.example.test".into());
    assert_eq!(r.lookup(host.clone(), t0), None);
    assert!(sent(&mut r).is_empty());
    answer_addrs(&mut r, &qs, &[("mx1.example.test.", "192.0.2.1")], t0);
    let got = answers(&mut r);
    assert_eq!(got.len(), 2, "each target once: {got:?}");
    let want = vec![cand("mx1.example.test", &["192.0.2.1"])];
    assert!(got.contains(&(mx_target(), Answer::Hosts(want.clone()))));
    assert!(got.contains(&(host, Answer::Hosts(want))));
}

#[test]
fn ip_literals_need_no_query() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    let host = Target::Host("192.0.2.7".into());
    assert_eq!(
        r.lookup(host, t0),
        Some(Answer::Hosts(vec![cand("192.0.2.7", &["192.0.2.7"])]))
    );
    let lit = Target::Mx("[IPv6:2001:db8::7]".into());
    assert_eq!(
        r.lookup(lit, t0),
        Some(Answer::Hosts(vec![cand(
            "[IPv6:2001:db8::7]",
            &["2001:db8::7"]
        )]))
    );
    assert!(matches!(
        r.lookup(Target::Mx("[192.0.2.25]".into()), t0),
        Some(Answer::Loop(_))
    ));
    assert!(sent(&mut r).is_empty());
}

#[test]
fn host_target_asks_a_and_aaaa() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    let host = Target::Host("relay.example.test".into());
    assert_eq!(r.lookup(host.clone(), t0), None);
    let qs = sent(&mut r);
    let mut asked: Vec<_> = qs.iter().map(Sent::question).collect();
    asked.sort();
    assert_eq!(
        asked,
        vec![
            ("relay.example.test.".into(), RecordType::A),
            ("relay.example.test.".into(), RecordType::AAAA)
        ]
    );
    answer_addrs(
        &mut r,
        &qs,
        &[
            ("relay.example.test.", "2001:db8::9"),
            ("relay.example.test.", "192.0.2.9"),
        ],
        t0,
    );
    let want = Answer::Hosts(vec![cand(
        "relay.example.test",
        &["192.0.2.9", "2001:db8::9"],
    )]);
    assert_eq!(answers(&mut r), vec![(host, want)]);
}

#[test]
fn cname_chain_within_the_response() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    let host = Target::Host("www.example.test".into());
    r.lookup(host.clone(), t0);
    for q in sent(&mut r) {
        let resp = resp(&q).answer(cname("www.example.test.", "real.example.test."));
        if q.question().1 == RecordType::A {
            resp.answer(a("real.example.test.", "192.0.2.3"))
                .send(&mut r, &q, t0);
        } else {
            resp.soa("example.test.", 60).send(&mut r, &q, t0);
        }
    }
    let want = Answer::Hosts(vec![cand("www.example.test", &["192.0.2.3"])]);
    assert_eq!(answers(&mut r), vec![(host, want)]);
}

#[test]
fn bare_cname_asks_for_the_target() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let q1 = one(&mut r);
    resp(&q1)
        .answer(cname("example.test.", "mail.provider.test."))
        .send(&mut r, &q1, t0);
    let q2 = one(&mut r);
    assert_eq!(
        q2.question(),
        ("mail.provider.test.".into(), RecordType::MX)
    );
    resp(&q2)
        .answer(mx("mail.provider.test.", 10, "in.provider.test."))
        .glue(a("in.provider.test.", "192.0.2.4"))
        .glue(aaaa("in.provider.test.", "2001:db8::4"))
        .send(&mut r, &q2, t0);
    let want = Answer::Hosts(vec![cand(
        "in.provider.test",
        &["192.0.2.4", "2001:db8::4"],
    )]);
    assert_eq!(answers(&mut r), vec![(mx_target(), want)]);
}

#[test]
fn cname_loop_gives_up() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let mut queries = 0;
    while let Some(q) = sent(&mut r).pop() {
        queries += 1;
        let next = format!("c{queries}.example.test.");
        resp(&q)
            .answer(cname(&q.question().0, &next))
            .send(&mut r, &q, t0);
    }
    assert!(queries <= 9, "{queries} queries");
    let got = answers(&mut r);
    assert!(
        matches!(&got[..], [(_, Answer::TempFail(m))] if m.contains("CNAME")),
        "{got:?}"
    );
}

#[test]
fn no_servers() {
    let mut r = resolver(Vec::new());
    assert_eq!(
        r.lookup(mx_target(), Instant::now()),
        Some(Answer::TempFail("no DNS servers".into()))
    );
    assert!(r.poll_transmit().is_none());
}

#[test]
fn invalid_name_is_not_found() {
    let mut r = resolver(vec![s1()]);
    let long = "a".repeat(70) + ".test";
    assert!(matches!(
        r.lookup(Target::Mx(long), Instant::now()),
        Some(Answer::NotFound(_))
    ));
    assert!(r.poll_transmit().is_none());
}

#[test]
fn query_ids_vary() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    let mut ids = std::collections::HashSet::new();
    for i in 0..50 {
        r.lookup(Target::Host(format!("h{i}.example.test")), t0);
    }
    for q in sent(&mut r) {
        ids.insert(q.msg.metadata.id);
    }
    assert!(ids.len() > 90, "{} distinct IDs of 100", ids.len());
}

#[test]
fn cache_is_bounded_and_evicts_what_expires_first() {
    let t0 = Instant::now();
    let mut c = Cache::new(3);
    let key = |s: &str| (name(s), RecordType::A);
    c.insert(key("a.test."), QResult::NoData, 100, t0);
    c.insert(key("b.test."), QResult::NoData, 10, t0);
    c.insert(key("c.test."), QResult::NoData, 50, t0);
    c.insert(key("d.test."), QResult::NoData, 70, t0);
    assert_eq!(c.len(), 3);
    assert!(c.get(&key("b.test."), t0).is_none());
    assert!(c.get(&key("a.test."), t0).is_some());
    c.insert(key("a.test."), QResult::NxDomain, 100, t0);
    assert_eq!(c.len(), 3);
    assert_eq!(c.get(&key("a.test."), t0), Some(QResult::NxDomain));
}

#[test]
fn query_bytes_on_the_wire() {
    let mut r = resolver(vec![s1()]);
    r.lookup(Target::Mx("Example.TEST.".into()), Instant::now());
    let tx = r.poll_transmit().unwrap();
    let id = &tx.bytes[..2];
    let mut want = id.to_vec();
    want.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    want.extend(b"\x07example\x04test\x00");
    want.extend([0, 15, 0, 1]); // MX, IN
    assert_eq!(tx.bytes, want);
}

#[test]
fn unresolved_mx_hosts_with_a_temporary_failure_defer() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let q = one(&mut r);
    resp(&q)
        .answer(mx("example.test.", 10, "flaky.example.test."))
        .answer(mx("example.test.", 20, "gone.example.test."))
        .answer(mx("example.test.", 30, ".")) // "." among real MX: skipped
        .send(&mut r, &q, t0);
    let qs = sent(&mut r);
    assert_eq!(qs.len(), 4);
    for q in &qs {
        let rcode = if q.question().0.starts_with("flaky") {
            ResponseCode::ServFail
        } else {
            ResponseCode::NXDomain
        };
        resp(q).rcode(rcode).send(&mut r, q, t0);
    }
    let got = answers(&mut r);
    assert!(
        matches!(&got[..], [(_, Answer::TempFail(m))] if m.contains("flaky")),
        "{got:?}"
    );
}

#[test]
fn a_host_with_only_one_family_is_kept() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    let host = Target::Host("v4.example.test".into());
    r.lookup(host.clone(), t0);
    for q in sent(&mut r) {
        if q.question().1 == RecordType::A {
            resp(&q)
                .answer(a("v4.example.test.", "192.0.2.4"))
                .send(&mut r, &q, t0);
        } else {
            resp(&q).rcode(ResponseCode::ServFail).send(&mut r, &q, t0);
        }
    }
    let want = Answer::Hosts(vec![cand("v4.example.test", &["192.0.2.4"])]);
    assert_eq!(answers(&mut r), vec![(host, want)]);
}
