//! Servers, attempts, TCP fallback, and answers that are not ours.

use hickory_proto::op::{MessageType, Query, ResponseCode};
use hickory_proto::rr::RecordType;

use super::*;

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
fn no_servers() {
    let mut r = resolver(Vec::new());
    assert_eq!(
        r.lookup(mx_target(), Instant::now()),
        Some(Answer::TempFail("no DNS servers".into()))
    );
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
