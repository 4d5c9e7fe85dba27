//! TTLs, negative and failure caching, bounds, shared questions.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use super::super::cache::{Cache, QResult};
use super::*;

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
