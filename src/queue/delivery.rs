//! The delivery half of the queue: leasing due recipients, applying what a
//! loop turn decided about them, and pruning the history.
//!
//! Status lists are written out in full in every query: SQLite uses a
//! partial index only when the query repeats its WHERE term verbatim.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::smtp::dsn::{Notify, Ret};

use super::{
    iso8601, parse_time, sql, Batch, HoldBack, HostUpdate, Lease, LeasedRecipient, Outcome, Queue,
    QueueError, RecipientState, ShapeUpdate, StoredMessage,
};

/// Due work, oldest first; served by the partial index `recipients_due`.
pub(super) const LEASE_SQL: &str =
    "SELECT id, message_id, next_hop, recipient, forward_path, attempts, notify, orcpt,
            status = 'deferred'
     FROM recipients
     WHERE status IN ('queued', 'deferred') AND next_attempt <= ?1
     ORDER BY next_attempt
     LIMIT ?2";

/// Served by the partial index `recipients_due` (first entry, no scan).
pub(super) const NEXT_DUE_SQL: &str = "SELECT min(next_attempt) FROM recipients
     WHERE status IN ('queued', 'deferred')";

/// Moves a failing hop's waiting recipients to its retry time. The pending
/// list is repeated so `recipients_pending_hop` serves the `next_hop` lookup.
pub(super) const HOLD_BACK_SQL: &str = "UPDATE recipients SET next_attempt = ?2, last_reply = ?3
     WHERE next_hop = ?1
       AND (status = 'queued' OR status = 'deferred' OR status = 'active' OR status = 'held')
       AND status IN ('queued', 'deferred') AND next_attempt < ?2";

/// A deferral; `delete_requested` (set by `mailhop queue delete` while the
/// row was active) turns it into the final `deleted` instead.
const DEFERRED_SQL: &str = "UPDATE recipients
     SET status = CASE WHEN delete_requested = 1 THEN 'deleted'
                       WHEN status = 'held' THEN 'held'
                       ELSE 'deferred' END,
         finished_at = CASE WHEN delete_requested = 1 THEN ?5 ELSE finished_at END,
         last_reply = CASE WHEN delete_requested = 1
                           THEN 'deleted by operator (last attempt: ' || ?3 || ')'
                           ELSE ?3 END,
         next_attempt = ?2, attempts = attempts + ?4
     WHERE id = ?1 AND (status = 'queued' OR status = 'deferred' OR status = 'active' OR status = 'held')";

/// Applies everything of `batch` but its new messages, inside the caller's
/// transaction.
pub(super) fn apply(conn: &Connection, batch: &Batch<'_>) -> Result<(), QueueError> {
    // `batch.tls` is in outcome order: walked alongside.
    let mut tls = batch.tls.iter().peekable();
    for (i, outcome) in batch.outcomes.iter().enumerate() {
        while tls.next_if(|t| t.outcome < i).is_some() {}
        let sts = tls.next_if(|t| t.outcome == i);
        apply_outcome(conn, outcome, sts)?;
    }
    for update in &batch.policies {
        super::policies::apply(conn, update)?;
    }
    let mut touched = HashSet::new();
    for outcome in &batch.outcomes {
        if touched.insert(outcome.message_id.as_str()) {
            drop_body_if_done(conn, &outcome.message_id)?;
        }
    }
    for host in &batch.hosts {
        upsert_host(conn, host)?;
    }
    for shape in &batch.shaping {
        upsert_shape(conn, shape)?;
    }
    for hold in &batch.hold_backs {
        hold_back(conn, hold)?;
    }
    for id in &batch.warned {
        conn.prepare_cached("UPDATE messages SET warned = 1 WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute([id]))
            .map_err(|e| QueueError(format!("queue: marking {id} warned: {e}")))?;
    }
    Ok(())
}

fn final_status(state: &RecipientState) -> Option<&'static str> {
    match state {
        RecipientState::Delivered => Some("delivered"),
        RecipientState::Bounced => Some("bounced"),
        RecipientState::Expired => Some("expired"),
        RecipientState::Deleted => Some("deleted"),
        RecipientState::Deferred { .. } => None,
    }
}

fn apply_outcome(
    conn: &Connection,
    o: &Outcome,
    tls: Option<&super::AttemptTls>,
) -> Result<(), QueueError> {
    let counted = i64::from(o.attempt.is_some());
    let changed = match (&o.state, final_status(&o.state)) {
        // A hold the operator set meanwhile stays, a recipient already
        // final (deleted by the operator meanwhile) is not revived, and one
        // the operator deleted while it was in flight is now deleted.
        (RecipientState::Deferred { next_attempt }, _) => {
            conn.prepare_cached(DEFERRED_SQL).and_then(|mut stmt| {
                stmt.execute(params![
                    o.row,
                    iso8601(*next_attempt),
                    o.reply,
                    counted,
                    iso8601(o.at)
                ])
            })
        }
        // What happened on the wire is the truth, whatever the row says now.
        (_, status) => conn
            .prepare_cached(
                "UPDATE recipients
                 SET status = ?2, finished_at = ?3, last_reply = ?4,
                     attempts = attempts + ?5
                 WHERE id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![o.row, status, iso8601(o.at), o.reply, counted])
            }),
    }
    .map_err(|e| {
        QueueError(format!(
            "queue: outcome for {} of {}: {e}",
            o.recipient, o.message_id
        ))
    })?;
    if changed == 0 {
        // Not worth failing the turn (and its 250s) over.
        log::warn!(
            "queue: outcome for {} of {} (row {}) matched no recipient",
            o.recipient,
            o.message_id,
            o.row
        );
    }
    if let Some(a) = &o.attempt {
        conn.prepare_cached(
            "INSERT INTO attempt_log (message_id, recipient, next_hop, host,
                                      started_at, finished_at, reply, sts_mode, tls_result)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                o.message_id,
                o.recipient,
                o.next_hop,
                a.host,
                iso8601(a.started_at),
                iso8601(a.finished_at),
                o.reply,
                tls.map(|t| t.mode),
                tls.map(|t| t.result)
            ])
        })
        .map_err(|e| {
            QueueError(format!(
                "queue: logging attempt for {} of {}: {e}",
                o.recipient, o.message_id
            ))
        })?;
    }
    Ok(())
}

/// A message nobody waits for no longer needs its body, pieces included;
/// the row stays (with `size`) for the `deliveries` view until pruned.
/// Plain UPDATEs (no RETURNING, which buffers its rows): this runs for
/// every finished message.
pub(super) fn drop_body_if_done(conn: &Connection, id: &str) -> Result<(), QueueError> {
    let run = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute([id]))
            .map_err(|e| QueueError(format!("queue: dropping body of {id}: {e}")))
    };
    // Small mail, all of it in its row: one statement, as before pieces.
    if run(DROP_WHOLE_BODY_SQL)? > 0 {
        return Ok(());
    }
    if run(DROP_CHUNKED_BODY_SQL)? > 0 {
        run("DELETE FROM body_chunks WHERE message_id = ?1")?;
    }
    Ok(())
}

const DROP_WHOLE_BODY_SQL: &str = "UPDATE messages SET body = x''
     WHERE id = ?1 AND chunks = 0 AND length(body) > 0
       AND NOT EXISTS (SELECT 1 FROM recipients
                       WHERE message_id = ?1
                         AND (status = 'queued' OR status = 'deferred' OR status = 'active' OR status = 'held'))";

const DROP_CHUNKED_BODY_SQL: &str = "UPDATE messages SET body = x'', chunks = 0
     WHERE id = ?1 AND chunks > 0
       AND NOT EXISTS (SELECT 1 FROM recipients
                       WHERE message_id = ?1
                         AND (status = 'queued' OR status = 'deferred' OR status = 'active' OR status = 'held'))";

fn upsert_host(conn: &Connection, h: &HostUpdate) -> Result<(), QueueError> {
    let (state, failures) = if h.up {
        ("up", 0)
    } else {
        ("failing", h.failures)
    };
    conn.prepare_cached(
        "INSERT INTO host_state (next_hop, state, failures, last_error, next_retry)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (next_hop) DO UPDATE
         SET state = excluded.state, failures = excluded.failures,
             last_error = excluded.last_error, next_retry = excluded.next_retry",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            h.next_hop,
            state,
            failures,
            h.last_error,
            h.next_retry.map(iso8601)
        ])
    })
    .map_err(|e| QueueError(format!("queue: state of {}: {e}", h.next_hop)))?;
    Ok(())
}

/// Only the limit columns: the hop's state is `upsert_host`'s.
fn upsert_shape(conn: &Connection, s: &ShapeUpdate) -> Result<(), QueueError> {
    conn.prepare_cached(
        "INSERT INTO host_state (next_hop, rate_limit, connection_limit, shaped_reason)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (next_hop) DO UPDATE
         SET rate_limit = excluded.rate_limit,
             connection_limit = excluded.connection_limit,
             shaped_reason = excluded.shaped_reason",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            s.next_hop,
            s.rate_limit,
            s.connection_limit,
            s.reason
        ])
    })
    .map_err(|e| QueueError(format!("queue: limits of {}: {e}", s.next_hop)))?;
    Ok(())
}

fn hold_back(conn: &Connection, h: &HoldBack) -> Result<(), QueueError> {
    conn.prepare_cached(HOLD_BACK_SQL)
        .and_then(|mut stmt| stmt.execute(params![h.next_hop, iso8601(h.until), h.reply]))
        .map_err(|e| QueueError(format!("queue: holding back {}: {e}", h.next_hop)))?;
    Ok(())
}

impl Queue {
    /// Leases up to `limit` due recipients (`queued`/`deferred` with
    /// `next_attempt <= now`, oldest first, through the due index): marks
    /// them `active` (committed before returning) and groups them per
    /// message and next hop. Held recipients are never due.
    pub fn lease_due(&mut self, now: SystemTime, limit: usize) -> Result<Vec<Lease>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Body pieces of this turn first: one transaction at a time.
        self.commit_open()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin lease"))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Read all, then update: no writes under a running scan of the index.
        let due: Vec<(String, String, LeasedRecipient)> = tx
            .prepare_cached(LEASE_SQL)
            .and_then(|mut stmt| {
                stmt.query_map(params![iso8601(now), limit], |r| {
                    Ok((
                        r.get(1)?,
                        r.get(2)?,
                        LeasedRecipient {
                            row: r.get(0)?,
                            mailbox: r.get(3)?,
                            forward_path: r.get(4)?,
                            attempts: r.get(5)?,
                            notify: r
                                .get::<_, Option<String>>(6)?
                                .and_then(|n| Notify::parse(n.as_bytes())),
                            orcpt: r.get(7)?,
                            was_deferred: r.get(8)?,
                        },
                    ))
                })?
                .collect()
            })
            .map_err(sql("select due recipients"))?;

        let mut leases: Vec<Lease> = Vec::new();
        let mut group: HashMap<(String, String), usize> = HashMap::new();
        {
            let mut mark = tx
                .prepare_cached("UPDATE recipients SET status = 'active' WHERE id = ?1")
                .map_err(sql("prepare lease"))?;
            for (message_id, next_hop, recipient) in due {
                mark.execute([recipient.row])
                    .map_err(sql("lease recipient"))?;
                let key = (message_id, next_hop);
                let i = *group.entry(key.clone()).or_insert_with(|| {
                    leases.push(Lease {
                        message_id: key.0,
                        next_hop: key.1,
                        recipients: Vec::new(),
                    });
                    leases.len() - 1
                });
                leases[i].recipients.push(recipient);
            }
        }
        for lease in &mut leases {
            lease.recipients.sort_by_key(|r| r.row);
        }
        tx.commit().map_err(sql("commit lease"))?;
        Ok(leases)
    }

    /// The earliest `next_attempt` of any waiting recipient (index, no scan).
    pub fn next_due(&self) -> Result<Option<SystemTime>, QueueError> {
        let next: Option<String> = self
            .conn
            .prepare_cached(NEXT_DUE_SQL)
            .and_then(|mut stmt| stmt.query_row([], |r| r.get(0)))
            .map_err(sql("next due"))?;
        next.as_deref().map(parse_time).transpose()
    }

    /// One message's envelope, for delivery or a bounce; its body is read
    /// piece by piece (`read_piece`) as it is sent.
    pub fn message(&self, id: &str) -> Result<StoredMessage, QueueError> {
        self.message_and_body(id, 0).map(|(message, _)| message)
    }

    /// As `message`, with the body too when it is whole in its row and at
    /// most `keep` octets: small mail is then sent from memory, one query.
    pub fn message_and_body(
        &self,
        id: &str,
        keep: u64,
    ) -> Result<(StoredMessage, Option<Vec<u8>>), QueueError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT id, sender, reverse_path, received_at, eight_bit, smtputf8,
                        warned, size, chunks, ret, envid,
                        CASE WHEN chunks = 0 AND size <= ?2 THEN body END
                 FROM messages WHERE id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![id, keep as i64], |r| {
                    Ok((
                        StoredMessage {
                            id: r.get(0)?,
                            sender: r.get(1)?,
                            reverse_path: r.get(2)?,
                            received_at: SystemTime::UNIX_EPOCH,
                            eight_bit: r.get(4)?,
                            smtputf8: r.get(5)?,
                            warned: r.get(6)?,
                            size: r.get(7)?,
                            chunks: r.get(8)?,
                            ret: r
                                .get::<_, Option<String>>(9)?
                                .and_then(|v| Ret::parse(v.as_bytes())),
                            envid: r.get(10)?,
                        },
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<Vec<u8>>>(11)?,
                    ))
                })
                .optional()
            })
            .map_err(|e| QueueError(format!("queue: reading message {id}: {e}")))?;
        let (mut message, received_at, body) =
            row.ok_or_else(|| QueueError(format!("queue: no message {id}")))?;
        message.received_at = parse_time(&received_at)?;
        // A dropped body (every recipient final) is empty, not small.
        Ok((message, body.filter(|b| !b.is_empty())))
    }

    /// Deletes up to `limit` final recipients finished before `before`, the
    /// messages they leave without recipients, and up to `limit` attempt
    /// rows older than `before` whose recipient is gone; so one call never
    /// blocks the loop long. Returns all rows deleted: call again until 0.
    pub fn prune(&mut self, before: SystemTime, limit: usize) -> Result<usize, QueueError> {
        if limit == 0 {
            return Ok(0);
        }
        let before = iso8601(before);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.commit_open()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin prune"))?;
        let old: Vec<(i64, String)> = tx
            .prepare_cached(
                "SELECT id, message_id FROM recipients
                 WHERE (status = 'delivered' OR status = 'bounced' OR status = 'expired' OR status = 'deleted')
                   AND finished_at < ?1
                 ORDER BY finished_at
                 LIMIT ?2",
            )
            .and_then(|mut stmt| {
                stmt.query_map(params![before, limit], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(sql("select old recipients"))?;

        let mut deleted = 0;
        let mut messages = Vec::new();
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM recipients WHERE id = ?1")
                .map_err(sql("prepare prune"))?;
            for (row, message_id) in old {
                deleted += delete.execute([row]).map_err(sql("prune recipient"))?;
                if !messages.contains(&message_id) {
                    messages.push(message_id);
                }
            }
        }
        for id in &messages {
            deleted += tx
                .prepare_cached(
                    "DELETE FROM messages WHERE id = ?1
                     AND NOT EXISTS (SELECT 1 FROM recipients WHERE message_id = ?1)",
                )
                .and_then(|mut stmt| stmt.execute([id]))
                .map_err(|e| QueueError(format!("queue: pruning message {id}: {e}")))?;
        }
        // History stays as long as its recipient row does, however old.
        deleted += tx
            .prepare_cached(
                "DELETE FROM attempt_log WHERE id IN (
                     SELECT a.id FROM attempt_log AS a
                     WHERE a.finished_at < ?1
                       AND NOT EXISTS (SELECT 1 FROM recipients AS r
                                       WHERE r.message_id = a.message_id
                                         AND r.recipient = a.recipient
                                         AND r.next_hop = a.next_hop)
                     ORDER BY a.finished_at
                     LIMIT ?2)",
            )
            .and_then(|mut stmt| stmt.execute(params![before, limit]))
            .map_err(sql("prune attempts"))?;
        tx.commit().map_err(sql("commit prune"))?;
        Ok(deleted)
    }
}
