//! RFC 5321 section 5 and RFC 7505 semantics, CNAMEs, literals.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use super::*;

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
fn only_the_best_ten_mx_hosts_are_looked_up() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    r.lookup(mx_target(), t0);
    let q = one(&mut r);
    let mut resp = resp(&q);
    for i in 0..50 {
        let host = format!("h{i}.example.test.");
        resp = resp
            .answer(mx("example.test.", i, &host))
            .glue(a(&host, &format!("192.0.2.{i}")));
    }
    resp.send(&mut r, &q, t0);
    // AAAA for the ten kept, none for the other forty.
    let aaaa_queries = sent(&mut r);
    assert_eq!(aaaa_queries.len(), 10);
    answer_addrs(&mut r, &aaaa_queries, &[], t0);
    let Some((_, Answer::Hosts(hosts))) = r.poll_answer() else {
        panic!("no hosts")
    };
    let names: Vec<String> = hosts.into_iter().map(|c| c.name).collect();
    let want: Vec<String> = (0..10).map(|i| format!("h{i}.example.test")).collect();
    assert_eq!(names, want);
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

fn txt(owner: &str, strings: &[&str]) -> Record {
    let data = strings.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Record::from_rdata(
        name(owner),
        300,
        RData::TXT(hickory_proto::rr::rdata::TXT::new(data)),
    )
}

#[test]
fn txt_records_are_joined_per_record_and_cached() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    let target = Target::Txt("_mta-sts.example.test".into());
    assert_eq!(r.lookup(target.clone(), t0), None);
    let q = one(&mut r);
    assert_eq!(
        q.question(),
        ("_mta-sts.example.test.".into(), RecordType::TXT)
    );
    resp(&q)
        .answer(txt("_mta-sts.example.test.", &["v=STSv1; ", "id=abc;"]))
        .answer(txt("_mta-sts.example.test.", &["something else"]))
        .send(&mut r, &q, t0);
    let want = Answer::Txt(vec!["v=STSv1; id=abc;".into(), "something else".into()]);
    assert_eq!(answers(&mut r), vec![(target.clone(), want.clone())]);
    // From the cache, at once and without a query.
    assert_eq!(r.lookup(target, t0 + secs(10)), Some(want));
    assert!(sent(&mut r).is_empty());
}

#[test]
fn no_txt_record_is_not_found_and_a_failure_is_temporary() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    let none = Target::Txt("_mta-sts.none.test".into());
    r.lookup(none.clone(), t0);
    let q = one(&mut r);
    resp(&q)
        .rcode(ResponseCode::NXDomain)
        .soa("none.test.", 60)
        .send(&mut r, &q, t0);
    assert!(matches!(&answers(&mut r)[..], [(t, Answer::NotFound(_))] if *t == none));
    let failing = Target::Txt("_mta-sts.failing.test".into());
    r.lookup(failing.clone(), t0);
    let q = one(&mut r);
    resp(&q).rcode(ResponseCode::ServFail).send(&mut r, &q, t0);
    assert!(matches!(&answers(&mut r)[..], [(t, Answer::TempFail(_))] if *t == failing));
    // An address has no TXT records to ask for.
    let literal = Target::Txt("[192.0.2.1]".into());
    assert!(matches!(r.lookup(literal, t0), Some(Answer::NotFound(_))));
}

#[test]
fn a_huge_txt_answer_keeps_a_bounded_number_of_records() {
    let t0 = Instant::now();
    let mut r = resolver(vec![s1()]);
    let target = Target::Txt("_mta-sts.big.test".into());
    r.lookup(target.clone(), t0);
    let q = one(&mut r);
    let mut response = resp(&q);
    for i in 0..100 {
        response = response.answer(txt("_mta-sts.big.test.", &[&format!("record {i}")]));
    }
    response.send(&mut r, &q, t0);
    match &answers(&mut r)[..] {
        [(_, Answer::Txt(texts))] => assert_eq!(texts.len(), crate::dns::MAX_TXT_RECORDS),
        other => panic!("{other:?}"),
    }
}
