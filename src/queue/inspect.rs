//! What `mailhop queue list|show|stats` read. Each is one read transaction,
//! so it sees one consistent queue while `serve` keeps writing (WAL).
//! Times stay the stored ISO 8601 text: that is what `sqlite3` shows too.

use std::time::SystemTime;

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

use super::admin::{known, Admin};
use super::{iso8601, sql, QueueError};

/// One message with pending recipients, as `list` and `list --json` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingMessage {
    pub id: String,
    /// `""` for the null sender.
    pub sender: String,
    pub size: u64,
    pub received_at: String,
    pub recipients: Vec<PendingRecipient>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingRecipient {
    pub recipient: String,
    pub next_hop: String,
    pub status: String,
    pub attempts: u32,
    pub next_attempt: String,
    pub last_reply: Option<String>,
}

/// Everything `show` prints about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageDetail {
    pub id: String,
    pub sender: String,
    pub reverse_path: String,
    pub client_ip: String,
    pub helo: String,
    pub received_at: String,
    pub size: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub warned: bool,
    pub recipients: Vec<RecipientDetail>,
    pub attempts: Vec<AttemptRecord>,
    /// The header section of the stored body (without the blank line);
    /// `None` once the body was dropped because every recipient is final.
    pub header: Option<Vec<u8>>,
    /// `RET=` and `ENVID=` as received (RFC 3461).
    pub ret: Option<String>,
    pub envid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientDetail {
    pub recipient: String,
    pub forward_path: String,
    pub next_hop: String,
    pub status: String,
    pub attempts: u32,
    pub next_attempt: String,
    pub last_reply: Option<String>,
    pub finished_at: Option<String>,
    /// Deleted by the operator while being delivered; final when it ends.
    pub delete_requested: bool,
    /// `NOTIFY=` and `ORCPT=` as received (RFC 3461).
    pub notify: Option<String>,
    pub orcpt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub recipient: String,
    pub next_hop: String,
    pub host: String,
    pub started_at: String,
    pub finished_at: String,
    pub reply: String,
}

/// Upper bounds (minutes since arrival) of the age columns, as Postfix
/// `qshape` has them; a last column holds everything older.
pub const AGE_BUCKETS: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// Every status, pending first, in the order `stats` lists them.
pub const STATUSES: [&str; 8] = [
    "queued",
    "deferred",
    "active",
    "held",
    "delivered",
    "bounced",
    "expired",
    "deleted",
];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    /// Recipients per status, for every entry of `STATUSES`; the final
    /// ones as far back as the history is kept.
    pub by_status: Vec<(&'static str, u64)>,
    /// Next hops with pending recipients, most waiting first.
    pub hops: Vec<HopStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HopStats {
    pub next_hop: String,
    /// Pending recipients per pending status (the first four `STATUSES`).
    pub by_status: [u64; 4],
    /// Pending recipients per age column: `AGE_BUCKETS`, then older.
    pub by_age: [u64; AGE_BUCKETS.len() + 1],
}

impl HopStats {
    pub fn total(&self) -> u64 {
        self.by_status.iter().sum()
    }
}

impl Admin {
    /// Messages with pending recipients, oldest first.
    pub fn pending(&mut self) -> Result<Vec<PendingMessage>, QueueError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT m.id, m.sender, m.size, m.received_at, r.recipient, r.next_hop,
                        r.status, r.attempts, r.next_attempt, r.last_reply
                 FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
                 WHERE (r.status = 'queued' OR r.status = 'deferred' OR r.status = 'active' OR r.status = 'held')
                 ORDER BY m.received_at, m.id, r.id",
            )
            .map_err(sql("prepare list"))?;
        let rows = stmt
            .query_map([], |r| {
                let message = PendingMessage {
                    id: r.get(0)?,
                    sender: r.get(1)?,
                    size: r.get(2)?,
                    received_at: r.get(3)?,
                    recipients: Vec::new(),
                };
                let recipient = PendingRecipient {
                    recipient: r.get(4)?,
                    next_hop: r.get(5)?,
                    status: r.get(6)?,
                    attempts: r.get(7)?,
                    next_attempt: r.get(8)?,
                    last_reply: r.get(9)?,
                };
                Ok((message, recipient))
            })
            .map_err(sql("list"))?;
        let mut messages: Vec<PendingMessage> = Vec::new();
        for row in rows {
            let (message, recipient) = row.map_err(sql("list row"))?;
            match messages.last_mut() {
                Some(last) if last.id == message.id => last.recipients.push(recipient),
                _ => messages.push(PendingMessage {
                    recipients: vec![recipient],
                    ..message
                }),
            }
        }
        Ok(messages)
    }

    /// One message, pending or finished (until its history is pruned).
    pub fn show(&mut self, id: &str) -> Result<MessageDetail, QueueError> {
        let tx = self.conn.transaction().map_err(sql("begin show"))?;
        known(&tx, id)?;
        // Only the header section leaves SQLite, however big the body.
        let mut detail = tx
            .query_row(
                "SELECT id, sender, reverse_path, client_ip, helo, received_at, size,
                        eight_bit, smtputf8, warned, ret, envid,
                        CASE WHEN length(first) = 0 THEN NULL
                             WHEN instr(first, x'0d0a0d0a') > 0
                                 THEN substr(first, 1, instr(first, x'0d0a0d0a') + 1)
                             ELSE first END
                 FROM (SELECT *,
                              -- The first piece: the header section of a
                              -- streamed body is in its first chunk.
                              CASE WHEN chunks > 0
                                   THEN (SELECT data FROM body_chunks
                                         WHERE message_id = messages.id AND seq = 0)
                                   ELSE body END AS first
                       FROM messages WHERE id = ?1)",
                [id],
                |r| {
                    Ok(MessageDetail {
                        id: r.get(0)?,
                        sender: r.get(1)?,
                        reverse_path: r.get(2)?,
                        client_ip: r.get(3)?,
                        helo: r.get(4)?,
                        received_at: r.get(5)?,
                        size: r.get(6)?,
                        eight_bit: r.get(7)?,
                        smtputf8: r.get(8)?,
                        warned: r.get(9)?,
                        recipients: Vec::new(),
                        attempts: Vec::new(),
                        header: r.get(12)?,
                        ret: r.get(10)?,
                        envid: r.get(11)?,
                    })
                },
            )
            .optional()
            .map_err(sql("show message"))?
            .ok_or_else(|| QueueError(format!("no message {id} in the queue")))?;
        detail.recipients = tx
            .prepare(
                "SELECT recipient, forward_path, next_hop, status, attempts, next_attempt,
                        last_reply, finished_at, delete_requested, notify, orcpt
                 FROM recipients WHERE message_id = ?1 ORDER BY id",
            )
            .and_then(|mut stmt| stmt.query_map([id], recipient_detail)?.collect())
            .map_err(sql("show recipients"))?;
        detail.attempts = tx
            .prepare(
                "SELECT recipient, next_hop, host, started_at, finished_at, reply
                 FROM attempt_log WHERE message_id = ?1 ORDER BY id",
            )
            .and_then(|mut stmt| {
                stmt.query_map([id], |r| {
                    Ok(AttemptRecord {
                        recipient: r.get(0)?,
                        next_hop: r.get(1)?,
                        host: r.get(2)?,
                        started_at: r.get(3)?,
                        finished_at: r.get(4)?,
                        reply: r.get(5)?,
                    })
                })?
                .collect()
            })
            .map_err(sql("show attempts"))?;
        Ok(detail)
    }

    /// Counts by status, and by next hop and age (minutes since arrival
    /// at `now`) of the pending recipients.
    pub fn stats(&mut self, now: SystemTime) -> Result<Stats, QueueError> {
        let tx = self.conn.transaction().map_err(sql("begin stats"))?;
        let mut stats = Stats {
            by_status: STATUSES.iter().map(|s| (*s, 0)).collect(),
            hops: Vec::new(),
        };
        let counts: Vec<(String, u64)> = tx
            .prepare("SELECT status, count(*) FROM recipients GROUP BY status")
            .and_then(|mut stmt| {
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(sql("count by status"))?;
        for (status, n) in counts {
            if let Some(slot) = stats.by_status.iter_mut().find(|(s, _)| *s == status) {
                slot.1 = n;
            }
        }
        let groups: Vec<(String, String, i64, u64)> = tx
            .prepare(
                "SELECT r.next_hop, r.status,
                        (unixepoch(?1) - unixepoch(m.received_at)) / 60, count(*)
                 FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
                 WHERE (r.status = 'queued' OR r.status = 'deferred' OR r.status = 'active' OR r.status = 'held')
                 GROUP BY 1, 2, 3",
            )
            .and_then(|mut stmt| {
                stmt.query_map(params![iso8601(now)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            })
            .map_err(sql("count by next hop"))?;
        for (hop, status, minutes, n) in groups {
            let at = match stats.hops.iter().position(|h| h.next_hop == hop) {
                Some(at) => at,
                None => {
                    stats.hops.push(HopStats {
                        next_hop: hop,
                        ..HopStats::default()
                    });
                    stats.hops.len() - 1
                }
            };
            let entry = &mut stats.hops[at];
            if let Some(i) = STATUSES[..4].iter().position(|s| *s == status) {
                entry.by_status[i] += n;
            }
            entry.by_age[age_bucket(minutes)] += n;
        }
        stats
            .hops
            .sort_by(|a, b| b.total().cmp(&a.total()).then(a.next_hop.cmp(&b.next_hop)));
        Ok(stats)
    }
}

/// The age column of a recipient `minutes` old (a clock step back counts as 0).
pub fn age_bucket(minutes: i64) -> usize {
    let minutes = u64::try_from(minutes).unwrap_or(0);
    AGE_BUCKETS
        .iter()
        .position(|limit| minutes < *limit)
        .unwrap_or(AGE_BUCKETS.len())
}

fn recipient_detail(r: &Row<'_>) -> rusqlite::Result<RecipientDetail> {
    Ok(RecipientDetail {
        recipient: r.get(0)?,
        forward_path: r.get(1)?,
        next_hop: r.get(2)?,
        status: r.get(3)?,
        attempts: r.get(4)?,
        next_attempt: r.get(5)?,
        last_reply: r.get(6)?,
        finished_at: r.get(7)?,
        delete_requested: r.get(8)?,
        notify: r.get(9)?,
        orcpt: r.get(10)?,
    })
}
