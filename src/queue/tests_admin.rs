//! The operator's commands on real SQLite files, beside a `Queue` playing
//! `serve`: what each changes, what `serve` then leases, and the
//! delete-while-active rule through `commit_turn`.

use rusqlite::Connection;

use super::tests::{count, message, other, temp};
use super::tests_delivery::{at, deferred, outcome, rows, text, turn};
use super::*;
use RecipientState::Delivered;

/// A queue with message `id` to `rcpts`, all tried once and deferred to
/// `at(3600)`; their next hop `b.example` failing until then.
fn deferred_queue(id: &str, rcpts: &[&str]) -> (tempfile::TempDir, std::path::PathBuf, Queue) {
    let (dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    q.commit(&[&message(
        id,
        "s@a.example",
        rcpts,
        b"Subject: t\r\n\r\nbody\r\n",
    )])
    .unwrap();
    let l = q.lease_due(at(0), 10).unwrap();
    let outcomes = rcpts
        .iter()
        .map(|r| outcome(&l, r, deferred(3600), true))
        .collect();
    let mut batch = turn(outcomes);
    batch.hosts.push(HostUpdate {
        next_hop: "b.example".into(),
        up: false,
        failures: 1,
        last_error: Some("refused".into()),
        next_retry: Some(at(3600)),
    });
    q.commit_turn(&batch).unwrap();
    (dir, path, q)
}

fn statuses(c: &Connection) -> Vec<Vec<String>> {
    rows(
        c,
        "SELECT recipient, status, next_attempt FROM recipients ORDER BY id",
    )
}

#[test]
fn open_never_creates_and_refuses_other_files() {
    let (dir, path) = temp();
    let err = Admin::open(&path).err().unwrap().to_string();
    assert!(err.contains("no such file"), "{err}");
    assert!(!path.exists());
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let err = Admin::open(&empty).err().unwrap().to_string();
    assert!(err.contains("not a mailhop queue"), "{err}");
}

#[test]
fn unknown_id_is_an_error_for_every_command() {
    let (_dir, path, _q) = deferred_queue("R1", &["x@b.example"]);
    let mut a = Admin::open(&path).unwrap();
    let errors = [
        a.retry(Some("NOPE"), at(10)).err(),
        a.hold("NOPE").err(),
        a.release("NOPE", at(10)).err(),
        a.delete("NOPE", at(10)).err(),
        a.show("NOPE").err(),
    ];
    for e in errors {
        assert_eq!(e.unwrap().to_string(), "no message NOPE in the queue");
    }
}

#[test]
fn retry_makes_the_message_and_its_failing_hop_due_now() {
    let (_dir, path, mut q) = deferred_queue("R1", &["x@b.example", "y@b.example"]);
    let mut a = Admin::open(&path).unwrap();
    assert!(q.lease_due(at(60), 10).unwrap().is_empty());
    let changed = a.retry(Some("R1"), at(60)).unwrap();
    assert_eq!(
        changed,
        Changed {
            recipients: 2,
            active: 0,
            hops: 1
        }
    );
    assert_eq!(q.host_retries().unwrap(), [("b.example".into(), at(60))]);
    let leased = q.lease_due(at(60), 10).unwrap();
    assert_eq!(leased[0].recipients.len(), 2);
    // Active rows are not due again, nor counted as retried.
    assert_eq!(a.retry(Some("R1"), at(61)).unwrap().recipients, 0);
    assert_eq!(a.retry(Some("R1"), at(61)).unwrap().active, 2);
}

#[test]
fn retry_all_moves_only_what_waits_in_the_future() {
    let (_dir, path, mut q) = deferred_queue("R1", &["x@b.example"]);
    q.commit(&[&message("R2", "", &["z@c.example"], b"z\r\n")])
        .unwrap();
    let mut a = Admin::open(&path).unwrap();
    let changed = a.retry(None, at(60)).unwrap();
    assert_eq!((changed.recipients, changed.hops), (1, 1));
    let c = other(&path);
    // R2 was due since at(0) and keeps its place in line.
    assert_eq!(
        statuses(&c),
        [
            ["x@b.example", "deferred", "2023-11-14T22:14:20Z"],
            ["z@c.example", "queued", "2023-11-14T22:13:20Z"],
        ]
    );
}

#[test]
fn held_is_never_leased_and_release_makes_it_due_now() {
    let (_dir, path, mut q) = deferred_queue("H1", &["x@b.example"]);
    q.commit(&[&message("H2", "", &["n@c.example"], b"n\r\n")])
        .unwrap();
    let mut a = Admin::open(&path).unwrap();
    assert_eq!(a.hold("H1").unwrap().recipients, 1);
    assert_eq!(a.hold("H2").unwrap().recipients, 1);
    let c = other(&path);
    assert_eq!(
        count(&c, "SELECT count(*) FROM queue WHERE status = 'held'"),
        2
    );
    assert!(q.lease_due(at(999_999), 10).unwrap().is_empty());
    assert_eq!(q.next_due().unwrap(), None);

    let released = a.release("H1", at(100)).unwrap();
    assert_eq!((released.recipients, released.hops), (1, 1));
    a.release("H2", at(100)).unwrap();
    // Tried before: deferred; never tried: queued; both due now.
    assert_eq!(
        statuses(&c),
        [
            ["x@b.example", "deferred", "2023-11-14T22:15:00Z"],
            ["n@c.example", "queued", "2023-11-14T22:15:00Z"],
        ]
    );
    assert_eq!(q.lease_due(at(100), 10).unwrap().len(), 2);
    assert_eq!(a.release("H1", at(100)).unwrap().recipients, 0);
}

#[test]
fn hold_leaves_a_recipient_in_flight_alone() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    q.commit(&[&message("A1", "", &["x@b.example"], b"x\r\n")])
        .unwrap();
    let l = q.lease_due(at(0), 10).unwrap();
    let mut a = Admin::open(&path).unwrap();
    let changed = a.hold("A1").unwrap();
    assert_eq!((changed.recipients, changed.active), (0, 1));
    q.commit_turn(&turn(vec![outcome(&l, "x@b.example", deferred(60), true)]))
        .unwrap();
    assert_eq!(
        text(&other(&path), "SELECT status FROM queue").unwrap(),
        "deferred"
    );
}

#[test]
fn delete_ends_pending_recipients_and_drops_the_body() {
    let (_dir, path, q) = deferred_queue("D1", &["x@b.example", "y@b.example"]);
    let mut a = Admin::open(&path).unwrap();
    a.hold("D1").unwrap();
    assert_eq!(a.delete("D1", at(100)).unwrap().recipients, 2);
    let c = other(&path);
    assert_eq!(count(&c, "SELECT count(*) FROM queue"), 0);
    assert_eq!(
        rows(
            &c,
            "SELECT recipient, status, attempts, reply, finished_at FROM deliveries"
        ),
        [
            [
                "x@b.example",
                "deleted",
                "1",
                "deleted by operator",
                "2023-11-14T22:15:00Z"
            ],
            [
                "y@b.example",
                "deleted",
                "1",
                "deleted by operator",
                "2023-11-14T22:15:00Z"
            ],
        ]
    );
    assert!(q.read_body("D1").unwrap().is_empty());
    assert_eq!(a.show("D1").unwrap().header, None);
    assert_eq!(a.delete("D1", at(101)).unwrap().recipients, 0);
}

#[test]
fn delete_while_active_takes_effect_when_the_attempt_ends() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    q.commit(&[&message(
        "F1",
        "",
        &["x@b.example", "y@b.example"],
        b"x\r\n",
    )])
    .unwrap();
    let l = q.lease_due(at(0), 10).unwrap();
    let mut a = Admin::open(&path).unwrap();
    let changed = a.delete("F1", at(5)).unwrap();
    assert_eq!((changed.recipients, changed.active), (0, 2));
    let c = other(&path);
    assert_eq!(
        count(&c, "SELECT count(*) FROM queue WHERE status = 'active'"),
        2
    );
    // The deferral becomes deleted; the delivery stays the truth.
    q.commit_turn(&turn(vec![
        outcome(&l, "x@b.example", deferred(60), true),
        outcome(&l, "y@b.example", Delivered, true),
    ]))
    .unwrap();
    assert_eq!(
        rows(
            &c,
            "SELECT recipient, status, attempts, reply, finished_at FROM deliveries
             ORDER BY recipient"
        ),
        [
            [
                "x@b.example",
                "deleted",
                "1",
                "deleted by operator (last attempt: reply for x@b.example)",
                "2023-11-14T22:13:32Z"
            ],
            [
                "y@b.example",
                "delivered",
                "1",
                "reply for y@b.example",
                "2023-11-14T22:13:32Z"
            ],
        ]
    );
    assert_eq!(count(&c, "SELECT count(*) FROM attempts"), 2);
    assert!(q.lease_due(at(999_999), 10).unwrap().is_empty());
    assert!(q.read_body("F1").unwrap().is_empty());
}

#[test]
fn a_restart_deletes_what_was_deleted_in_flight() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    q.commit(&[&message(
        "F2",
        "",
        &["x@b.example", "y@c.example"],
        b"x\r\n",
    )])
    .unwrap();
    q.lease_due(at(0), 10).unwrap();
    Admin::open(&path).unwrap().delete("F2", at(5)).unwrap();
    // Only x's lease is marked, as if y had been leased after the delete.
    other(&path)
        .execute(
            "UPDATE recipients SET delete_requested = 0 WHERE recipient = 'y@c.example'",
            [],
        )
        .unwrap();
    drop(q);
    let _q = Queue::open(&path).unwrap();
    let c = other(&path);
    assert_eq!(
        rows(&c, "SELECT recipient, status FROM recipients ORDER BY id"),
        [["x@b.example", "deleted"], ["y@c.example", "queued"]]
    );
}

#[test]
fn serve_notices_changes_from_another_process() {
    let (_dir, path, mut q) = deferred_queue("W1", &["x@b.example"]);
    assert!(
        q.changed_elsewhere().unwrap(),
        "the first look says changed"
    );
    assert!(!q.changed_elsewhere().unwrap());
    q.commit(&[&message("W2", "", &["z@c.example"], b"z\r\n")])
        .unwrap();
    assert!(
        !q.changed_elsewhere().unwrap(),
        "its own commits do not count"
    );
    Admin::open(&path).unwrap().hold("W1").unwrap();
    assert!(q.changed_elsewhere().unwrap());
    assert!(!q.changed_elsewhere().unwrap());
}

#[test]
fn list_show_and_stats_read_the_queue() {
    let (_dir, path, mut q) = deferred_queue("S1", &["x@b.example", "y@b.example"]);
    let mut late = message("S2", "", &["z@c.example"], b"no header end");
    late.received_at = at(1200);
    q.commit(&[&late]).unwrap();
    let mut a = Admin::open(&path).unwrap();
    a.hold("S2").unwrap();

    let pending = a.pending().unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(
        (
            pending[0].id.as_str(),
            pending[0].sender.as_str(),
            pending[0].size
        ),
        ("S1", "s@a.example", 20)
    );
    assert_eq!(
        pending[0].recipients[1],
        PendingRecipient {
            recipient: "y@b.example".into(),
            next_hop: "b.example".into(),
            status: "deferred".into(),
            attempts: 1,
            next_attempt: "2023-11-14T23:13:20Z".into(),
            last_reply: Some("reply for y@b.example".into()),
        }
    );
    assert_eq!(pending[1].recipients[0].status, "held");

    let shown = a.show("S1").unwrap();
    assert_eq!(shown.header.as_deref(), Some(&b"Subject: t\r\n"[..]));
    assert_eq!((shown.recipients.len(), shown.attempts.len()), (2, 2));
    assert_eq!(shown.attempts[0].host, "127.0.0.1:2526");
    assert_eq!(
        a.show("S2").unwrap().header.as_deref(),
        Some(&b"no header end"[..])
    );

    // At at(1500): S1 is 25 minutes old (20-40), S2 five (5-10).
    let stats = a.stats(at(1500)).unwrap();
    assert_eq!(stats.by_status[1], ("deferred", 2));
    assert_eq!(stats.by_status[3], ("held", 1));
    assert_eq!(stats.hops.len(), 2);
    assert_eq!(stats.hops[0].next_hop, "b.example");
    assert_eq!(stats.hops[0].by_status, [0, 2, 0, 0]);
    assert_eq!(stats.hops[0].by_age[3], 2);
    assert_eq!(stats.hops[1].by_age[1], 1);
}

#[test]
fn age_buckets_are_those_of_qshape() {
    assert_eq!(age_bucket(-3), 0);
    assert_eq!(age_bucket(4), 0);
    assert_eq!(age_bucket(5), 1);
    assert_eq!(age_bucket(1279), 8);
    assert_eq!(age_bucket(1280), 9);
}
