//! Schema upkeep on real SQLite files: the migration, the views' columns,
//! pruning, all-or-nothing turns, and the query plans.

use rusqlite::Connection;

use super::delivery::{HOLD_BACK_SQL, LEASE_SQL, NEXT_DUE_SQL};
use super::tests::{columns, count, message, other, temp};
use super::tests_delivery::{at, deferred, outcome, rows, turn};
use super::*;
use RecipientState::{Bounced, Delivered};

fn plan(conn: &Connection, sql: &str) -> String {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let n = stmt.parameter_count();
    let args: Vec<String> = (0..n).map(|_| "2024-01-01T00:00:00Z".into()).collect();
    let lines: Vec<String> = stmt
        .query_map(rusqlite::params_from_iter(args), |r| r.get(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    lines.join("; ")
}

#[test]
fn migration_from_version_1_keeps_data() {
    let (_dir, path) = temp();
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(migrate::MIGRATIONS[0].1).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute_batch(
            "INSERT INTO messages VALUES ('OLD1', 'a@a.example', 'a@a.example',
                 '192.0.2.1', 'h', '2023-11-14T22:13:20Z', 3, 0, 0, x'616263');
             INSERT INTO recipients (message_id, recipient, forward_path, next_hop,
                                     next_attempt)
             VALUES ('OLD1', 'x@b.example', 'x@b.example', 'b.example',
                     '2023-11-14T22:13:20Z');",
        )
        .unwrap();
    }
    let q = Queue::open(&path).unwrap();
    let c = other(&path);
    assert_eq!(
        count(&c, "PRAGMA user_version"),
        migrate::MIGRATIONS.len() as i64
    );
    assert_eq!(count(&c, "SELECT count(*) FROM queue"), 1);
    let m = q.message("OLD1").unwrap();
    assert_eq!((m.size, m.chunks, m.warned), (3, 0, false));
    assert_eq!(q.read_body("OLD1").unwrap(), b"abc");
    assert_eq!(m.received_at, at(0));
}

#[test]
fn views_have_the_spec_columns() {
    let (_dir, path) = temp();
    let _q = Queue::open(&path).unwrap();
    let c = other(&path);
    assert_eq!(
        columns(&c, "attempts"),
        [
            "id",
            "recipient",
            "next_hop",
            "host",
            "started_at",
            "finished_at",
            "reply",
            // 0007: TLS under an MTA-STS policy, after the columns of 0002.
            "sts_mode",
            "tls_result"
        ]
    );
    assert_eq!(
        columns(&c, "policies"),
        [
            "domain",
            "id",
            "mode",
            "mx",
            "max_age",
            "fetched_at",
            "expires_at",
            "expired",
            "last_attempt",
            "last_id",
            "last_error"
        ]
    );
    assert_eq!(
        columns(&c, "hosts"),
        [
            "next_hop",
            "state",
            "failures",
            "last_error",
            "next_retry",
            "queued",
            // 0006: the limits in force, after the columns of 0002.
            "rate_limit",
            "connection_limit",
            "shaped_reason"
        ]
    );
    assert_eq!(columns(&c, "queue").len(), 10);
    assert_eq!(columns(&c, "deliveries").len(), 8);
}

#[test]
fn prune_removes_old_final_rows_and_history_but_nothing_pending() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    let done = message("P1", "", &["a@b.example", "b@b.example"], b"x\r\n");
    let half = message("P2", "", &["c@b.example", "d@b.example"], b"y\r\n");
    q.commit(&[&done, &half]).unwrap();
    let l = q.lease_due(at(0), 10).unwrap();
    q.commit_turn(&turn(vec![
        outcome(&l, "a@b.example", Delivered, true),
        outcome(&l, "b@b.example", Bounced, true),
        outcome(&l, "c@b.example", Delivered, true),
        outcome(&l, "d@b.example", deferred(60), true),
    ]))
    .unwrap();
    let c = other(&path);
    // Finished at T0+12: nothing is older than T0+12.
    assert_eq!(q.prune(at(12), 100).unwrap(), 0);
    // Bounded: one recipient per call (and history whose recipient is gone).
    assert_eq!(q.prune(at(3600), 1).unwrap(), 2);
    assert_eq!(count(&c, "SELECT count(*) FROM deliveries"), 2);
    let mut total = 0;
    loop {
        let n = q.prune(at(3600), 1).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    // b, c, P1 and the attempt rows of b and c.
    assert_eq!(total, 5);
    assert_eq!(count(&c, "SELECT count(*) FROM deliveries"), 0);
    assert_eq!(rows(&c, "SELECT id FROM messages"), [["P2"]]);
    assert_eq!(
        rows(&c, "SELECT id, recipient, status FROM queue"),
        [["P2", "d@b.example", "deferred"]]
    );
    assert_eq!(
        rows(&c, "SELECT recipient FROM attempts"),
        [["d@b.example"]],
        "history of a waiting recipient stays, however old"
    );
}

#[test]
fn failing_turn_leaves_nothing_applied() {
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
    let c = other(&path);
    let snapshot = |c: &Connection| {
        rows(
            c,
            "SELECT 'r', id, status, attempts, coalesce(last_reply, '') FROM recipients
             UNION ALL SELECT 'm', id, warned, length(body), '' FROM messages
             UNION ALL SELECT 'a', count(*), '', '', '' FROM attempt_log
             UNION ALL SELECT 'h', count(*), '', '', '' FROM host_state",
        )
    };
    let before = snapshot(&c);
    let fresh = message("F2", "", &["z@b.example"], b"z\r\n");
    let batch = |with_fresh: bool| {
        let outcomes = vec![
            outcome(&l, "x@b.example", Delivered, true),
            outcome(&l, "y@b.example", Bounced, true),
        ];
        Batch {
            messages: if with_fresh { vec![&fresh] } else { vec![] },
            outcomes,
            hosts: vec![HostUpdate {
                next_hop: "b.example".into(),
                up: true,
                failures: 0,
                last_error: None,
                next_retry: None,
            }],
            hold_backs: vec![],
            warned: vec!["F1".into()],
            shaping: vec![],
            policies: vec![],
            tls: vec![],
        }
    };

    // Fails at the last step (a trigger refusing host rows).
    c.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON host_state
         BEGIN SELECT RAISE(ABORT, 'refused'); END;",
    )
    .unwrap();
    let err = q.commit_turn(&batch(true)).unwrap_err().to_string();
    assert!(err.contains("refused"), "{err}");
    assert_eq!(snapshot(&c), before);
    c.execute_batch("DROP TRIGGER refuse").unwrap();

    // Fails at the first step: a queue ID already stored.
    let dup = message("F1", "", &["w@b.example"], b"w\r\n");
    let mut b = batch(false);
    b.messages = vec![&dup];
    assert!(q.commit_turn(&b).is_err());
    assert_eq!(snapshot(&c), before);

    // Fails for want of space.
    let pages = count(&q.conn, "PRAGMA page_count");
    q.conn.pragma_update(None, "max_page_count", pages).unwrap();
    let big = message("F3", "", &["v@b.example"], &[b'v'; 100_000]);
    let mut b = batch(false);
    b.messages = vec![&big];
    let err = q.commit_turn(&b).unwrap_err().to_string();
    assert!(err.contains("full"), "{err}");
    assert_eq!(snapshot(&c), before);

    // And the connection is fine afterwards.
    q.conn
        .pragma_update(None, "max_page_count", 1_000_000)
        .unwrap();
    q.commit_turn(&batch(true)).unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM deliveries"), 2);
    assert_eq!(count(&c, "SELECT warned FROM messages WHERE id = 'F1'"), 1);
    assert_eq!(count(&c, "SELECT count(*) FROM queue WHERE id = 'F2'"), 1);
}

#[test]
fn queries_use_their_indexes() {
    let (_dir, path) = temp();
    let _q = Queue::open(&path).unwrap();
    let c = other(&path);
    let lease = plan(&c, LEASE_SQL);
    assert!(lease.contains("recipients_due"), "{lease}");
    assert!(!lease.contains("TEMP B-TREE"), "{lease}");
    let next = plan(&c, NEXT_DUE_SQL);
    assert!(next.contains("recipients_due"), "{next}");
    let hold = plan(&c, HOLD_BACK_SQL);
    assert!(hold.contains("recipients_pending_hop"), "{hold}");
    let hosts = plan(&c, "SELECT * FROM hosts");
    assert!(hosts.contains("recipients_pending_hop"), "{hosts}");
    let prune = plan(
        &c,
        "SELECT id FROM recipients
         WHERE (status = 'delivered' OR status = 'bounced' OR status = 'expired' OR status = 'deleted')
           AND finished_at < ?1 ORDER BY finished_at LIMIT 10",
    );
    assert!(prune.contains("recipients_finished"), "{prune}");
}
