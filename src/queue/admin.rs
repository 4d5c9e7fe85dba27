//! The operator's side of the queue (`mailhop queue ...`): a second process
//! on the same file as `serve`, so every change is one short IMMEDIATE
//! transaction, and `active` rows (leased by `serve`) are left alone except
//! for the delete request that `serve`'s own outcome commit honours.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::{
    params, Connection, DatabaseName, OpenFlags, OptionalExtension, Transaction,
    TransactionBehavior,
};

use super::{iso8601, migrate, set_pragmas, sql, QueueError, PRAGMAS};

/// Another process (an operator's command, `mailhop sendmail`) can wait
/// longer than the event loop for `serve`'s commits.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The queue file opened by an operator's command.
pub struct Admin {
    pub(super) conn: Connection,
}

/// What a change command did to one message (or, for `retry --all`, to all).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changed {
    /// Recipients changed.
    pub recipients: usize,
    /// Recipients being delivered right now, not changed (for `delete`:
    /// marked, to be deleted when the attempt ends without success).
    pub active: usize,
    /// Failing next hops told to try again now.
    pub hops: usize,
}

impl Admin {
    /// Opens an existing queue; never creates one (a mistyped path would
    /// otherwise show an empty queue). Pending migrations are applied, as
    /// `serve` would; leases are not touched (`serve` may hold them).
    pub fn open(path: &Path) -> Result<Admin, QueueError> {
        let conn = open_existing(
            path,
            "name the queue with --queue PATH or --config FILE",
            false,
        )?;
        Ok(Admin { conn })
    }

    /// Makes the waiting recipients of `id` (all messages when `None`) due
    /// at `now`, and their failing next hops too, like `postqueue -f`.
    pub fn retry(&mut self, id: Option<&str>, now: SystemTime) -> Result<Changed, QueueError> {
        let now = iso8601(now);
        let tx = self.write()?;
        let changed = match id {
            Some(id) => {
                known(&tx, id)?;
                Changed {
                    recipients: tx
                        .execute(
                            "UPDATE recipients SET next_attempt = min(next_attempt, ?2)
                             WHERE message_id = ?1 AND status IN ('queued', 'deferred')",
                            params![id, now],
                        )
                        .map_err(sql("retry"))?,
                    active: active(&tx, id)?,
                    hops: wake_hops(&tx, Some(id), &now)?,
                }
            }
            None => Changed {
                // Already due rows keep their place; the due index serves it.
                recipients: tx
                    .execute(
                        "UPDATE recipients SET next_attempt = ?1
                         WHERE status IN ('queued', 'deferred') AND next_attempt > ?1",
                        [&now],
                    )
                    .map_err(sql("retry all"))?,
                active: 0,
                hops: wake_hops(&tx, None, &now)?,
            },
        };
        tx.commit().map_err(sql("commit retry"))?;
        Ok(changed)
    }

    /// Parks the waiting recipients of `id`: `held` is never due.
    pub fn hold(&mut self, id: &str) -> Result<Changed, QueueError> {
        let tx = self.write()?;
        known(&tx, id)?;
        let recipients = tx
            .execute(
                "UPDATE recipients SET status = 'held'
                 WHERE message_id = ?1 AND status IN ('queued', 'deferred')",
                [id],
            )
            .map_err(sql("hold"))?;
        let active = active(&tx, id)?;
        tx.commit().map_err(sql("commit hold"))?;
        Ok(Changed {
            recipients,
            active,
            hops: 0,
        })
    }

    /// Unparks the held recipients of `id`, due at `now`.
    pub fn release(&mut self, id: &str, now: SystemTime) -> Result<Changed, QueueError> {
        let now = iso8601(now);
        let tx = self.write()?;
        known(&tx, id)?;
        let recipients = tx
            .execute(
                "UPDATE recipients
                 SET status = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END,
                     next_attempt = ?2
                 WHERE message_id = ?1 AND status = 'held'",
                params![id, now],
            )
            .map_err(sql("release"))?;
        let hops = if recipients > 0 {
            wake_hops(&tx, Some(id), &now)?
        } else {
            0
        };
        let active = active(&tx, id)?;
        tx.commit().map_err(sql("commit release"))?;
        Ok(Changed {
            recipients,
            active,
            hops,
        })
    }

    /// Ends every pending recipient of `id` as `deleted`. Those being
    /// delivered right now get `delete_requested`; their outcome commit
    /// turns a deferral into `deleted` (a delivery or bounce stays true).
    pub fn delete(&mut self, id: &str, now: SystemTime) -> Result<Changed, QueueError> {
        let tx = self.write()?;
        known(&tx, id)?;
        let recipients = tx
            .execute(
                "UPDATE recipients
                 SET status = 'deleted', finished_at = ?2,
                     last_reply = 'deleted by operator'
                 WHERE message_id = ?1 AND status IN ('queued', 'deferred', 'held')",
                params![id, iso8601(now)],
            )
            .map_err(sql("delete"))?;
        let active = tx
            .execute(
                "UPDATE recipients SET delete_requested = 1
                 WHERE message_id = ?1 AND status = 'active'",
                [id],
            )
            .map_err(sql("request delete"))?;
        // As delivery does once nobody waits for the message.
        super::delivery::drop_body_if_done(&tx, id)?;
        tx.commit().map_err(sql("commit delete"))?;
        Ok(Changed {
            recipients,
            active,
            hops: 0,
        })
    }

    /// IMMEDIATE: take the write lock first (waiting up to the busy
    /// timeout), so a command never fails halfway.
    fn write(&mut self) -> Result<Transaction<'_>, QueueError> {
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin"))
    }
}

/// An unknown queue ID is the operator's mistake, said plainly.
pub(super) fn known(conn: &Connection, id: &str) -> Result<(), QueueError> {
    let found = conn
        .query_row("SELECT 1 FROM messages WHERE id = ?1", [id], |_| Ok(()))
        .optional()
        .map_err(sql("look up message"))?;
    found.ok_or_else(|| QueueError(format!("no message {id} in the queue")))
}

fn active(conn: &Connection, id: &str) -> Result<usize, QueueError> {
    conn.query_row(
        "SELECT count(*) FROM recipients WHERE message_id = ?1 AND status = 'active'",
        [id],
        |r| r.get(0),
    )
    .map_err(sql("count active"))
}

/// Failing next hops with waiting mail of `id` (or any) get `next_retry =
/// now`: `serve` holds a failing hop's mail back until then, so without this
/// an operator's retry would wait for the hop's own retry time.
fn wake_hops(conn: &Connection, id: Option<&str>, now: &str) -> Result<usize, QueueError> {
    match id {
        Some(id) => conn.execute(
            "UPDATE host_state SET next_retry = ?2
             WHERE state = 'failing' AND (next_retry IS NULL OR next_retry > ?2)
               AND next_hop IN (SELECT next_hop FROM recipients
                                WHERE message_id = ?1 AND status IN ('queued', 'deferred'))",
            params![id, now],
        ),
        None => conn.execute(
            "UPDATE host_state SET next_retry = ?1
             WHERE state = 'failing' AND (next_retry IS NULL OR next_retry > ?1)",
            [now],
        ),
    }
    .map_err(sql("wake next hops"))
}

/// Opens a queue file that `serve` made, for another process (`mailhop
/// queue ...`, `mailhop sendmail`): never creates one (a mistyped path
/// would otherwise show an empty queue, or take mail no `serve` sends),
/// checks that it is a mailhop queue and applies pending migrations as
/// `serve` would, and leaves leases alone (`serve` may hold them).
/// `no_file_hint` ends the message for a missing file; `must_write`
/// refuses a file this process may only read.
pub(super) fn open_existing(
    path: &Path,
    no_file_hint: &str,
    must_write: bool,
) -> Result<Connection, QueueError> {
    let shown = path.display();
    if !path.is_file() {
        return Err(QueueError(format!(
            "queue {shown}: no such file ({no_file_hint})"
        )));
    }
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| QueueError(format!("queue {shown}: cannot open: {e}")))?;
    // SQLite opens a file it may not write read-only, without a word.
    if must_write && conn.is_readonly(DatabaseName::Main).unwrap_or(true) {
        return Err(QueueError(format!(
            "queue {shown}: permission denied (the file, its -wal and -shm files and its folder must be writable)"
        )));
    }
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sql("busy timeout"))?;
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'recipients'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| QueueError(format!("queue {shown}: {e}")))?;
    if tables == 0 {
        return Err(QueueError(format!(
            "queue {shown}: not a mailhop queue (no recipients table)"
        )));
    }
    set_pragmas(&conn, &PRAGMAS)?;
    migrate::apply(&mut conn)?;
    Ok(conn)
}
