//! Real SQLite files in a temp folder; checks read through a second
//! connection, as an operator's `sqlite3` would see them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use super::*;
use crate::message::{Message, Recipient};

pub(super) fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    (dir, path)
}

/// 2023-11-14T22:13:20Z
pub(super) const T0: u64 = 1_700_000_000;

pub(super) fn message(id: &str, sender: &str, rcpts: &[&str], body: &[u8]) -> Message {
    Message {
        id: id.to_string(),
        sender: sender.to_string(),
        reverse_path: sender.to_string(),
        recipients: rcpts
            .iter()
            .map(|r| Recipient {
                mailbox: r.to_string(),
                forward_path: r.to_string(),
                next_hop: r.split('@').nth(1).unwrap().to_string(),
                ..Recipient::default()
            })
            .collect(),
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        helo: "client.example".to_string(),
        received_at: UNIX_EPOCH + Duration::from_secs(T0),
        eight_bit: false,
        smtputf8: false,
        ret: None,
        envid: None,
        body: body.to_vec(),
        chunks: 0,
        size: body.len() as u64,
    }
}

pub(super) fn other(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

pub(super) fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

pub(super) fn columns(conn: &Connection, table: &str) -> Vec<String> {
    let mut stmt = conn
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
        .unwrap();
    let names = stmt.query_map([], |r| r.get(0)).unwrap();
    names.map(Result::unwrap).collect()
}

#[test]
fn open_sets_wal_and_full_sync() {
    let (_dir, path) = temp();
    let q = Queue::open(&path).unwrap();
    let c = other(&path);
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // synchronous and foreign_keys are per connection: check the queue's own.
    let sync: i64 = q
        .conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2, "FULL");
    let fk: i64 = q
        .conn
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(fk, 1);
}

#[test]
fn pragma_that_does_not_take_is_an_error() {
    // Misspelled (effectum's `journal`): SQLite ignores it silently.
    let c = Connection::open_in_memory().unwrap();
    assert!(set_pragmas(&c, &[("journal", "WAL", "wal")]).is_err());
    // Known but refused: an in-memory database stays in `memory` mode.
    let err = set_pragmas(&c, &PRAGMAS).unwrap_err().to_string();
    assert!(err.contains("did not take"), "{err}");
}

#[test]
fn iso8601_is_utc_with_z() {
    assert_eq!(
        iso8601(UNIX_EPOCH + Duration::from_secs(T0)),
        "2023-11-14T22:13:20Z"
    );
}

#[test]
fn missing_folder_is_a_clear_error() {
    let (dir, _) = temp();
    let path = dir.path().join("no-such-dir").join("queue.db");
    let err = Queue::open(&path).err().expect("must fail").to_string();
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("no-such-dir"), "{err}");
}

#[test]
fn migrations_are_idempotent() {
    let (_dir, path) = temp();
    drop(Queue::open(&path).unwrap());
    drop(Queue::open(&path).unwrap());
    let c = other(&path);
    assert_eq!(
        count(&c, "PRAGMA user_version"),
        migrate::MIGRATIONS.len() as i64
    );
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM sqlite_master WHERE name = 'queue'"
        ),
        1
    );
}

#[test]
fn every_schema_file_is_embedded_in_order() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    files.sort();
    let embedded: Vec<&str> = migrate::MIGRATIONS.iter().map(|(n, _)| *n).collect();
    assert_eq!(files, embedded);
    for (i, name) in embedded.iter().enumerate() {
        assert!(name.starts_with(&format!("{:04}_", i + 1)), "{name}");
    }
}

#[test]
fn newer_database_is_refused() {
    let (_dir, path) = temp();
    drop(Queue::open(&path).unwrap());
    other(&path)
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = Queue::open(&path).err().expect("must fail").to_string();
    assert!(err.contains("newer"), "{err}");
}

#[test]
fn views_have_the_spec_columns() {
    let (_dir, path) = temp();
    let _q = Queue::open(&path).unwrap();
    let c = other(&path);
    assert_eq!(
        columns(&c, "queue"),
        [
            "id",
            "sender",
            "recipient",
            "next_hop",
            "status",
            "attempts",
            "next_attempt",
            "last_reply",
            "size",
            "received_at"
        ]
    );
    assert_eq!(
        columns(&c, "dsn"),
        ["id", "recipient", "notify", "orcpt", "envid", "ret"]
    );
    assert_eq!(
        columns(&c, "deliveries"),
        [
            "id",
            "sender",
            "recipient",
            "next_hop",
            "status",
            "attempts",
            "reply",
            "finished_at"
        ]
    );
}

#[test]
fn commit_batch_shows_in_queue_view() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    let a = message(
        "A1",
        "alice@a.example",
        &["x@b.example", "y@c.example"],
        b"one\r\n",
    );
    let mut b = message("B2", "", &["z@b.example"], b"two two\r\n");
    b.smtputf8 = true;
    let c3 = message(
        "C3",
        "carol@a.example",
        &["p@d.example", "q@d.example", "r@e.example"],
        &[b'x'; 1000],
    );
    q.commit(&[&a, &b, &c3]).unwrap();

    let c = other(&path);
    assert_eq!(count(&c, "SELECT count(*) FROM messages"), 3);
    assert_eq!(count(&c, "SELECT count(*) FROM queue"), 6);
    assert_eq!(count(&c, "SELECT count(*) FROM deliveries"), 0);
    let mut stmt = c.prepare("SELECT * FROM queue WHERE id = 'B2'").unwrap();
    let row = stmt
        .query_row([], |r| {
            Ok((
                r.get::<_, String>("id")?,
                r.get::<_, String>("sender")?,
                r.get::<_, String>("recipient")?,
                r.get::<_, String>("next_hop")?,
                r.get::<_, String>("status")?,
                r.get::<_, i64>("attempts")?,
                r.get::<_, String>("next_attempt")?,
                r.get::<_, Option<String>>("last_reply")?,
                r.get::<_, i64>("size")?,
                r.get::<_, String>("received_at")?,
            ))
        })
        .unwrap();
    let t0 = "2023-11-14T22:13:20Z".to_string();
    assert_eq!(
        row,
        (
            "B2".into(),
            "".into(),
            "z@b.example".into(),
            "b.example".into(),
            "queued".into(),
            0,
            t0.clone(),
            None,
            9,
            t0
        )
    );
    assert_eq!(
        count(&c, "SELECT size FROM queue WHERE id = 'C3' LIMIT 1"),
        1000
    );
    let body: Vec<u8> = c
        .query_row("SELECT body FROM messages WHERE id = 'A1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(body, b"one\r\n");
    assert_eq!(
        count(&c, "SELECT smtputf8 FROM messages WHERE id = 'B2'"),
        1
    );
}

#[test]
fn empty_batch_is_a_no_op() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    q.commit(&[]).unwrap();
}

#[test]
fn duplicate_id_fails_whole_batch_then_next_commit_works() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    let a = message("D1", "a@a.example", &["x@b.example"], b"x\r\n");
    let b = message("D2", "a@a.example", &["y@b.example"], b"y\r\n");
    let dup = message("D1", "a@a.example", &["z@b.example"], b"z\r\n");
    assert!(q.commit(&[&a, &b, &dup]).is_err());
    let c = other(&path);
    assert_eq!(count(&c, "SELECT count(*) FROM messages"), 0);
    assert_eq!(count(&c, "SELECT count(*) FROM recipients"), 0);

    q.commit(&[&a, &b]).unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM queue"), 2);
}

#[test]
fn full_disk_fails_whole_batch_then_next_commit_works() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    let small = message("S1", "a@a.example", &["x@b.example"], b"x\r\n");
    let big = message("S2", "a@a.example", &["y@b.example"], &[b'y'; 200_000]);
    let pages = count(&q.conn, "PRAGMA page_count");
    q.conn
        .pragma_update(None, "max_page_count", pages + 2)
        .unwrap();
    let err = q.commit(&[&small, &big]).unwrap_err().to_string();
    assert!(err.contains("full"), "{err}");
    let c = other(&path);
    assert_eq!(count(&c, "SELECT count(*) FROM messages"), 0);

    q.conn
        .pragma_update(None, "max_page_count", 1_000_000)
        .unwrap();
    q.commit(&[&small, &big]).unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM queue"), 2);
}

#[test]
fn active_recipients_are_due_again_after_restart() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    let m = message(
        "R1",
        "a@a.example",
        &["x@b.example", "y@b.example", "z@b.example"],
        b"x\r\n",
    );
    q.commit(&[&m]).unwrap();
    let c = other(&path);
    c.execute_batch(
        "UPDATE recipients SET status = 'active', next_attempt = '2999-01-01T00:00:00Z'
           WHERE recipient IN ('x@b.example', 'y@b.example');
         UPDATE recipients SET attempts = 2 WHERE recipient = 'y@b.example';",
    )
    .unwrap();
    drop(q); // the "dead" process

    let before = iso8601(SystemTime::now());
    let _q = Queue::open(&path).unwrap();
    let after = iso8601(SystemTime::now());
    let rows: Vec<(String, String, String)> = c
        .prepare("SELECT recipient, status, next_attempt FROM queue ORDER BY recipient")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows[0].1, "queued");
    assert_eq!(rows[1].1, "deferred");
    for (_, _, next) in &rows[..2] {
        assert!(before <= *next && *next <= after, "{next}");
    }
    assert_eq!(
        rows[2],
        (
            "z@b.example".into(),
            "queued".into(),
            "2023-11-14T22:13:20Z".into()
        )
    );
}

#[test]
fn due_work_query_uses_the_partial_index() {
    let (_dir, path) = temp();
    let _q = Queue::open(&path).unwrap();
    let c = other(&path);
    let plan: Vec<String> = c
        .prepare(
            "EXPLAIN QUERY PLAN SELECT id, message_id, next_hop FROM recipients
             WHERE status IN ('queued', 'deferred') AND next_attempt <= ?1
             ORDER BY next_attempt",
        )
        .unwrap()
        .query_map(["2024-01-01T00:00:00Z"], |r| r.get(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        plan.iter().any(|d| d.contains("recipients_due")),
        "{plan:?}"
    );
}

#[test]
fn bad_time_shape_is_rejected() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    q.commit(&[&message("T1", "", &["x@b.example"], b"x\r\n")])
        .unwrap();
    let c = other(&path);
    assert!(c
        .execute("UPDATE recipients SET next_attempt = datetime('now')", [])
        .is_err());
}

#[test]
fn dsn_parameters_are_stored_and_shown_in_the_dsn_view() {
    use crate::smtp::dsn::{Notify, Ret};
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    let mut m = message(
        "DSN1",
        "a@b.example",
        &["c@d.example", "e@f.example"],
        b"x\r\n",
    );
    m.ret = Some(Ret::Hdrs);
    m.envid = Some("env 1".into());
    m.recipients[0].notify = Notify::parse(b"SUCCESS,DELAY");
    m.recipients[0].orcpt = Some("rfc822;orig@d.example".into());
    q.commit(&[&m]).unwrap();
    let c = other(&path);
    let rows: Vec<String> = c
        .prepare("SELECT recipient, notify, orcpt, envid, ret FROM dsn ORDER BY recipient")
        .unwrap()
        .query_map([], |r| {
            Ok(format!(
                "{}|{:?}|{:?}|{:?}|{:?}",
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        [
            "c@d.example|Some(\"SUCCESS,DELAY\")|Some(\"rfc822;orig@d.example\")|Some(\"env 1\")|Some(\"HDRS\")",
            "e@f.example|None|None|Some(\"env 1\")|Some(\"HDRS\")",
        ]
    );
    // And back out with the lease, as delivery sees them.
    let leases = q.lease_due(SystemTime::now(), 10).unwrap();
    let leased: Vec<_> = leases.iter().flat_map(|l| &l.recipients).collect();
    let first = leased.iter().find(|r| r.mailbox == "c@d.example").unwrap();
    assert_eq!(first.notify, Notify::parse(b"SUCCESS,DELAY"));
    assert_eq!(first.orcpt.as_deref(), Some("rfc822;orig@d.example"));
    let stored = q.message("DSN1").unwrap();
    assert_eq!(
        (stored.ret, stored.envid.as_deref()),
        (Some(Ret::Hdrs), Some("env 1"))
    );
}
