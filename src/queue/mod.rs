//! The durable queue: the only module that speaks SQL (with `schema/`).

mod migrate;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{params, Connection, TransactionBehavior};

use crate::message::Message;

/// Why the queue could not do what was asked.
#[derive(Debug)]
pub struct QueueError(pub String);

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QueueError {}

/// Wraps a SQLite error with what we were doing, for the log line.
fn sql(what: &'static str) -> impl FnOnce(rusqlite::Error) -> QueueError {
    move |e| QueueError(format!("queue: {what}: {e}"))
}

/// The event loop blocks while it waits for a lock (an operator's `sqlite3`,
/// `mailhop queue ...`), so the wait must be short and bounded.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Pragmas set on every open, each with the value it must read back as.
/// SQLite ignores unknown pragmas silently, so only the read-back proves them.
const PRAGMAS: [(&str, &str, &str); 3] = [
    ("journal_mode", "WAL", "wal"),
    ("synchronous", "FULL", "2"),
    ("foreign_keys", "ON", "1"),
];

/// ISO 8601 UTC as stored in the queue; text that sorts in time order.
fn iso8601(t: SystemTime) -> String {
    DateTime::<Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub struct Queue {
    /// Also holds the prepared-statement cache (`prepare_cached`).
    conn: Connection,
}

impl Queue {
    /// Opens (creating if needed) the queue file: WAL, synchronous=FULL
    /// (both read back and checked), busy timeout, pending migrations from
    /// `schema/` applied in one transaction, and recipients left `active`
    /// by a dead process made due again.
    pub fn open(path: &Path) -> Result<Queue, QueueError> {
        // SQLite would say only "unable to open database file".
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(QueueError(format!(
                    "queue {}: folder {} does not exist",
                    path.display(),
                    dir.display()
                )));
            }
        }
        let mut conn = Connection::open(path)
            .map_err(|e| QueueError(format!("queue {}: cannot open: {e}", path.display())))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql("busy timeout"))?;
        set_pragmas(&conn, &PRAGMAS)?;
        migrate::apply(&mut conn)?;
        let requeued = requeue_active(&conn, SystemTime::now())?;
        if requeued > 0 {
            log::info!("queue: {requeued} recipients left active by the last run are due again");
        }
        Ok(Queue { conn })
    }

    /// Stores every message of one loop turn in one transaction (one fsync).
    /// Either all are durable when this returns Ok, or none are.
    pub fn commit(&mut self, batch: &[&Message]) -> Result<(), QueueError> {
        if batch.is_empty() {
            return Ok(());
        }
        // IMMEDIATE takes the write lock up front, so a busy database fails
        // here (after the busy timeout) rather than halfway through.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin"))?;
        // On error, dropping `tx` rolls back (unless SQLite already has), so
        // the connection is ready for the next batch.
        for message in batch {
            insert(&tx, message)?;
        }
        tx.commit().map_err(sql("commit"))
    }
}

/// Sets the pragmas outside any transaction (where some are no-ops) and
/// checks each took.
fn set_pragmas(conn: &Connection, pragmas: &[(&str, &str, &str)]) -> Result<(), QueueError> {
    for &(name, value, want) in pragmas {
        // `journal_mode` answers with a row; `query_row` takes either kind.
        let set = format!("PRAGMA {name} = {value}");
        match conn.query_row(&set, [], |_| Ok(())) {
            Ok(()) | Err(rusqlite::Error::QueryReturnedNoRows) => {}
            Err(e) => return Err(QueueError(format!("queue: {set}: {e}"))),
        }
        let got: Value = conn
            .query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
            .map_err(|e| QueueError(format!("queue: reading PRAGMA {name}: {e}")))?;
        let got = match got {
            Value::Integer(i) => i.to_string(),
            Value::Text(s) => s.to_lowercase(),
            other => format!("{other:?}"),
        };
        if got != want {
            return Err(QueueError(format!(
                "queue: PRAGMA {name} = {value} did not take (it reads {got}, not {want})"
            )));
        }
    }
    Ok(())
}

/// Leases of a dead process: that delivery may or may not have happened, so
/// it is tried again (at least once, never lost).
fn requeue_active(conn: &Connection, now: SystemTime) -> Result<usize, QueueError> {
    conn.execute(
        "UPDATE recipients
         SET status = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END,
             next_attempt = ?1
         WHERE status = 'active'",
        [iso8601(now)],
    )
    .map_err(sql("requeue active recipients"))
}

fn insert(conn: &Connection, m: &Message) -> Result<(), QueueError> {
    let received_at = iso8601(m.received_at);
    conn.prepare_cached(
        "INSERT INTO messages (id, sender, reverse_path, client_ip, helo,
                               received_at, size, eight_bit, smtputf8, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            m.id,
            m.sender,
            m.reverse_path,
            m.client_ip.to_string(),
            m.helo,
            received_at,
            m.body.len() as i64,
            m.eight_bit,
            m.smtputf8,
            m.body,
        ])
    })
    .map_err(|e| QueueError(format!("queue: storing message {}: {e}", m.id)))?;

    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO recipients (message_id, recipient, forward_path, next_hop,
                                     status, attempts, next_attempt)
             VALUES (?1, ?2, ?3, ?4, 'queued', 0, ?5)",
        )
        .map_err(sql("prepare recipient insert"))?;
    for r in &m.recipients {
        stmt.execute(params![
            m.id,
            r.mailbox,
            r.forward_path,
            r.next_hop,
            received_at
        ])
        .map_err(|e| {
            QueueError(format!(
                "queue: storing recipient {} of {}: {e}",
                r.mailbox, m.id
            ))
        })?;
    }
    Ok(())
}
