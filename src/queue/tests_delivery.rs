//! The delivery half on real SQLite files: leases, outcomes, hosts,
//! pruning, and the views as `sqlite3` shows them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use super::tests::{count, message, other, temp, T0};
use super::*;
use RecipientState::{Bounced, Deleted, Delivered, Expired};

pub(super) fn at(secs_after_t0: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + secs_after_t0)
}

pub(super) fn text(conn: &Connection, sql: &str) -> Option<String> {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

pub(super) fn rows(conn: &Connection, sql: &str) -> Vec<Vec<String>> {
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| {
                r.get::<_, rusqlite::types::Value>(i).map(|v| match v {
                    rusqlite::types::Value::Null => "NULL".to_string(),
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Text(s) => s,
                    other => format!("{other:?}"),
                })
            })
            .collect()
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The row of `mailbox` in a lease list.
pub(super) fn row_of(leases: &[Lease], mailbox: &str) -> i64 {
    leases
        .iter()
        .flat_map(|l| &l.recipients)
        .find(|r| r.mailbox == mailbox)
        .unwrap()
        .row
}

/// What the loop would report for `mailbox`, one of `leases`.
pub(super) fn outcome(
    leases: &[Lease],
    mailbox: &str,
    state: RecipientState,
    tried: bool,
) -> Outcome {
    let lease = leases
        .iter()
        .find(|l| l.recipients.iter().any(|r| r.mailbox == mailbox))
        .unwrap();
    Outcome {
        row: row_of(leases, mailbox),
        message_id: lease.message_id.clone(),
        recipient: mailbox.into(),
        next_hop: lease.next_hop.clone(),
        state,
        reply: format!("reply for {mailbox}"),
        attempt: tried.then(|| Attempt {
            host: "127.0.0.1:2526".into(),
            started_at: at(10),
            finished_at: at(11),
        }),
        at: at(12),
    }
}

pub(super) fn deferred(secs_after_t0: u64) -> RecipientState {
    RecipientState::Deferred {
        next_attempt: at(secs_after_t0),
    }
}

pub(super) fn turn(outcomes: Vec<Outcome>) -> Batch<'static> {
    Batch {
        outcomes,
        ..Batch::default()
    }
}

#[test]
fn lease_marks_active_and_groups_per_message_and_hop() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    let a = message(
        "A1",
        "s@a.example",
        &["x@b.example", "y@c.example", "z@b.example"],
        b"a\r\n",
    );
    let b = message("B1", "s@a.example", &["w@b.example"], b"b\r\n");
    q.commit(&[&a, &b]).unwrap();

    let leases = q.lease_due(at(0), 100).unwrap();
    let shape: Vec<(&str, &str, Vec<&str>)> = leases
        .iter()
        .map(|l| {
            let r = l.recipients.iter().map(|r| r.mailbox.as_str()).collect();
            (l.message_id.as_str(), l.next_hop.as_str(), r)
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("A1", "b.example", vec!["x@b.example", "z@b.example"]),
            ("A1", "c.example", vec!["y@c.example"]),
            ("B1", "b.example", vec!["w@b.example"]),
        ]
    );
    assert!(leases[0].recipients[0].row < leases[0].recipients[1].row);
    assert_eq!(leases[0].recipients[0].attempts, 0);
    let c = other(&path);
    assert_eq!(
        count(&c, "SELECT count(*) FROM queue WHERE status = 'active'"),
        4
    );
    assert!(q.lease_due(at(0), 100).unwrap().is_empty());
}

#[test]
fn lease_respects_the_limit_oldest_first() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    let mut late = message("L2", "", &["x@b.example"], b"x\r\n");
    late.received_at = at(5);
    let early = message("L1", "", &["y@b.example", "z@b.example"], b"y\r\n");
    q.commit(&[&late, &early]).unwrap();
    let first = q.lease_due(at(10), 2).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].message_id, "L1");
    assert_eq!(first[0].recipients.len(), 2);
    let second = q.lease_due(at(10), 2).unwrap();
    assert_eq!(second[0].message_id, "L2");
    assert!(q.lease_due(at(10), 2).unwrap().is_empty());
    assert!(q.lease_due(at(10), 0).unwrap().is_empty());
}

#[test]
fn not_yet_due_and_held_are_not_leased() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    q.commit(&[&message(
        "H1",
        "",
        &["x@b.example", "y@b.example"],
        b"x\r\n",
    )])
    .unwrap();
    assert!(q
        .lease_due(at(0) - Duration::from_secs(1), 10)
        .unwrap()
        .is_empty());
    other(&path)
        .execute(
            "UPDATE recipients SET status = 'held' WHERE recipient = 'x@b.example'",
            [],
        )
        .unwrap();
    let leases = q.lease_due(at(0), 10).unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].recipients.len(), 1);
    assert_eq!(leases[0].recipients[0].mailbox, "y@b.example");
}

#[test]
fn each_outcome_shows_in_the_views_and_history() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    let rcpts = [
        "d@b.example",
        "b@b.example",
        "e@b.example",
        "x@b.example",
        "f@b.example",
    ];
    q.commit(&[&message("O1", "s@a.example", &rcpts, b"body\r\n")])
        .unwrap();
    let l = q.lease_due(at(0), 10).unwrap();
    q.commit_turn(&turn(vec![
        outcome(&l, "d@b.example", Delivered, true),
        outcome(&l, "b@b.example", Bounced, true),
        outcome(&l, "e@b.example", Expired, false),
        outcome(&l, "x@b.example", Deleted, false),
        outcome(&l, "f@b.example", deferred(600), true),
    ]))
    .unwrap();

    let c = other(&path);
    assert_eq!(
        rows(
            &c,
            "SELECT recipient, status, attempts, reply, finished_at FROM deliveries
             ORDER BY recipient"
        ),
        [
            [
                "b@b.example",
                "bounced",
                "1",
                "reply for b@b.example",
                "2023-11-14T22:13:32Z"
            ],
            [
                "d@b.example",
                "delivered",
                "1",
                "reply for d@b.example",
                "2023-11-14T22:13:32Z"
            ],
            [
                "e@b.example",
                "expired",
                "0",
                "reply for e@b.example",
                "2023-11-14T22:13:32Z"
            ],
            [
                "x@b.example",
                "deleted",
                "0",
                "reply for x@b.example",
                "2023-11-14T22:13:32Z"
            ],
        ]
    );
    assert_eq!(
        rows(
            &c,
            "SELECT recipient, status, attempts, next_attempt, last_reply FROM queue"
        ),
        [[
            "f@b.example",
            "deferred",
            "1",
            "2023-11-14T22:23:20Z",
            "reply for f@b.example"
        ]]
    );
    assert_eq!(
        rows(
            &c,
            "SELECT id, recipient, next_hop, host, started_at, finished_at, reply
             FROM attempts WHERE recipient = 'd@b.example'"
        ),
        [[
            "O1",
            "d@b.example",
            "b.example",
            "127.0.0.1:2526",
            "2023-11-14T22:13:30Z",
            "2023-11-14T22:13:31Z",
            "reply for d@b.example"
        ]]
    );
    assert_eq!(count(&c, "SELECT count(*) FROM attempts"), 3);
    // One recipient still waits: the body stays.
    assert_eq!(q.read_body("O1").unwrap(), b"body\r\n");

    let l = q.lease_due(at(600), 10).unwrap();
    assert_eq!(l[0].recipients[0].attempts, 1);
    q.commit_turn(&turn(vec![outcome(&l, "f@b.example", Delivered, true)]))
        .unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM queue"), 0);
    assert_eq!(
        count(
            &c,
            "SELECT attempts FROM deliveries WHERE recipient = 'f@b.example'"
        ),
        2
    );
    assert!(q.read_body("O1").unwrap().is_empty());
    assert_eq!(count(&c, "SELECT size FROM messages WHERE id = 'O1'"), 6);
}

#[test]
fn deferred_outcome_keeps_an_operator_hold() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    q.commit(&[&message("K1", "", &["x@b.example"], b"x\r\n")])
        .unwrap();
    let l = q.lease_due(at(0), 10).unwrap();
    let c = other(&path);
    c.execute("UPDATE recipients SET status = 'held'", [])
        .unwrap();
    q.commit_turn(&turn(vec![outcome(&l, "x@b.example", deferred(60), true)]))
        .unwrap();
    assert_eq!(text(&c, "SELECT status FROM queue").unwrap(), "held");
}

#[test]
fn hold_back_moves_only_that_hops_waiting_recipients() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    let m = message(
        "HB",
        "",
        &[
            "q@b.example",
            "late@b.example",
            "act@b.example",
            "held@b.example",
            "o@c.example",
        ],
        b"x\r\n",
    );
    q.commit(&[&m]).unwrap();
    let c = other(&path);
    c.execute_batch(
        "UPDATE recipients SET status = 'deferred', next_attempt = '2030-01-01T00:00:00Z'
           WHERE recipient = 'late@b.example';
         UPDATE recipients SET status = 'active' WHERE recipient = 'act@b.example';
         UPDATE recipients SET status = 'held' WHERE recipient = 'held@b.example';",
    )
    .unwrap();
    q.commit_turn(&Batch {
        hold_backs: vec![HoldBack {
            next_hop: "b.example".into(),
            until: at(3600),
            reply: "b.example failing".into(),
        }],
        ..Batch::default()
    })
    .unwrap();
    assert_eq!(
        rows(
            &c,
            "SELECT recipient, status, attempts, next_attempt, coalesce(last_reply, '-')
             FROM queue ORDER BY recipient"
        ),
        [
            ["act@b.example", "active", "0", "2023-11-14T22:13:20Z", "-"],
            ["held@b.example", "held", "0", "2023-11-14T22:13:20Z", "-"],
            [
                "late@b.example",
                "deferred",
                "0",
                "2030-01-01T00:00:00Z",
                "-"
            ],
            ["o@c.example", "queued", "0", "2023-11-14T22:13:20Z", "-"],
            [
                "q@b.example",
                "queued",
                "0",
                "2023-11-14T23:13:20Z",
                "b.example failing"
            ],
        ]
    );
}

#[test]
fn hosts_view_counts_waiting_recipients() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    let m = message(
        "HV",
        "",
        &["a@b.example", "b@b.example", "c@c.example"],
        b"x\r\n",
    );
    q.commit_turn(&Batch {
        messages: vec![&m],
        hosts: vec![HostUpdate {
            next_hop: "b.example".into(),
            up: false,
            failures: 3,
            last_error: Some("connection refused".into()),
            next_retry: Some(at(300)),
        }],
        ..Batch::default()
    })
    .unwrap();
    let c = other(&path);
    assert_eq!(
        rows(&c, "SELECT * FROM hosts"),
        [[
            "b.example",
            "failing",
            "3",
            "connection refused",
            "2023-11-14T22:18:20Z",
            "2",
            "NULL",
            "NULL",
            "NULL"
        ]]
    );
    // One delivered: no longer waiting.
    let l = q.lease_due(at(0), 10).unwrap();
    q.commit_turn(&Batch {
        outcomes: vec![outcome(&l, "a@b.example", Delivered, true)],
        hosts: vec![HostUpdate {
            next_hop: "b.example".into(),
            up: true,
            failures: 3,
            last_error: None,
            next_retry: None,
        }],
        shaping: vec![ShapeUpdate {
            next_hop: "b.example".into(),
            rate_limit: Some(300),
            connection_limit: Some(10),
            reason: Some("421 4.7.0 slow down (backing off until ...)".into()),
        }],
        ..Batch::default()
    })
    .unwrap();
    assert_eq!(
        rows(&c, "SELECT * FROM hosts"),
        [[
            "b.example",
            "up",
            "0",
            "NULL",
            "NULL",
            "1",
            "300",
            "10",
            "421 4.7.0 slow down (backing off until ...)"
        ]]
    );
    // The hop's state and its limits are written apart: neither clobbers
    // the other; limits alone make a row for a hop not yet tried.
    q.commit_turn(&Batch {
        hosts: vec![HostUpdate {
            next_hop: "b.example".into(),
            up: false,
            failures: 1,
            last_error: Some("refused".into()),
            next_retry: None,
        }],
        shaping: vec![ShapeUpdate {
            next_hop: "c.example".into(),
            rate_limit: Some(60),
            connection_limit: None,
            reason: Some("config".into()),
        }],
        ..Batch::default()
    })
    .unwrap();
    assert_eq!(
        rows(
            &c,
            "SELECT next_hop, state, rate_limit, connection_limit, shaped_reason FROM hosts ORDER BY 1"
        ),
        [
            ["b.example", "failing", "300", "10", "421 4.7.0 slow down (backing off until ...)"],
            ["c.example", "up", "60", "NULL", "config"]
        ]
    );
}

#[test]
fn next_due_is_the_earliest_waiting_time() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    assert_eq!(q.next_due().unwrap(), None);
    let mut m = message("N1", "", &["x@b.example"], b"x\r\n");
    m.received_at = at(30);
    q.commit(&[&m]).unwrap();
    assert_eq!(q.next_due().unwrap(), Some(at(30)));
    let l = q.lease_due(at(30), 10).unwrap();
    assert_eq!(q.next_due().unwrap(), None, "active is not waiting");
    q.commit_turn(&turn(vec![outcome(&l, "x@b.example", deferred(900), true)]))
        .unwrap();
    assert_eq!(q.next_due().unwrap(), Some(at(900)));
}

#[test]
fn warned_flag_and_message_lookup() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    let mut m = message("W1", "s@a.example", &["x@b.example"], b"x\r\n");
    m.eight_bit = true;
    q.commit(&[&m]).unwrap();
    assert!(!q.message("W1").unwrap().warned);
    q.commit_turn(&Batch {
        warned: vec!["W1".into()],
        ..Batch::default()
    })
    .unwrap();
    let got = q.message("W1").unwrap();
    assert_eq!(
        (
            got.id.as_str(),
            got.sender.as_str(),
            got.warned,
            got.eight_bit,
            got.smtputf8
        ),
        ("W1", "s@a.example", true, true, false)
    );
    let err = q.message("NOPE").unwrap_err().to_string();
    assert!(err.contains("NOPE"), "{err}");
}
