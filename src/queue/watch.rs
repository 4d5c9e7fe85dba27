//! For `serve`: noticing what another process (`mailhop queue ...`, an
//! operator's `sqlite3`) changed, without reading the queue every turn.

use std::time::SystemTime;

use super::{parse_time, sql, Queue, QueueError};

impl Queue {
    /// True when another connection committed since the last call (the
    /// first call says true). `PRAGMA data_version` is answered from memory.
    pub fn changed_elsewhere(&mut self) -> Result<bool, QueueError> {
        let version: i64 = self
            .conn
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut stmt| stmt.query_row([], |r| r.get(0)))
            .map_err(sql("data_version"))?;
        let changed = self.data_version != Some(version);
        self.data_version = Some(version);
        Ok(changed)
    }

    /// When each failing next hop may be tried again, as stored. The
    /// operator's `retry` and `release` set it to now; `serve` keeps its own
    /// copy in memory and should take the earlier of the two.
    pub fn host_retries(&self) -> Result<Vec<(String, SystemTime)>, QueueError> {
        let rows: Vec<(String, String)> = self
            .conn
            .prepare_cached(
                "SELECT next_hop, next_retry FROM host_state
                 WHERE state = 'failing' AND next_retry IS NOT NULL",
            )
            .and_then(|mut stmt| {
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(sql("read host retry times"))?;
        rows.into_iter()
            .map(|(hop, at)| Ok((hop, parse_time(&at)?)))
            .collect()
    }
}

/// Pending recipients by status, in the order `[queued, deferred, active,
/// held]`; served by the partial index `recipients_pending_hop` (as large
/// as the backlog, not the history). `serve` counts once at start and when
/// another process changed the queue, and keeps the counts itself between.
const PENDING_COUNTS_SQL: &str = "SELECT status, count(*) FROM recipients
     WHERE (status = 'queued' OR status = 'deferred' OR status = 'active' OR status = 'held')
     GROUP BY status";

/// The first pending recipient row is of the oldest pending message (rows
/// are added in the order mail is accepted). `INDEXED BY` the partial index,
/// which holds only the backlog: left to itself SQLite walks the rowids from
/// the start, through all the history kept.
const OLDEST_PENDING_SQL: &str = "SELECT m.received_at FROM messages AS m
     WHERE m.id = (SELECT message_id FROM recipients
                   WHERE id = (SELECT min(id) FROM recipients INDEXED BY recipients_pending_hop
                               WHERE (status = 'queued' OR status = 'deferred' OR status = 'active' OR status = 'held')))";

impl Queue {
    pub fn pending_counts(&self) -> Result<[i64; 4], QueueError> {
        let rows: Vec<(String, i64)> = self
            .conn
            .prepare_cached(PENDING_COUNTS_SQL)
            .and_then(|mut stmt| {
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(sql("count pending recipients"))?;
        let mut counts = [0; 4];
        for (status, n) in rows {
            let i = match status.as_str() {
                "queued" => 0,
                "deferred" => 1,
                "active" => 2,
                _ => 3,
            };
            counts[i] = n;
        }
        Ok(counts)
    }

    /// When the oldest message still waiting for a recipient arrived.
    pub fn oldest_pending(&self) -> Result<Option<SystemTime>, QueueError> {
        let at: Option<String> = self
            .conn
            .prepare_cached(OLDEST_PENDING_SQL)
            .and_then(|mut stmt| {
                use rusqlite::OptionalExtension;
                stmt.query_row([], |r| r.get(0)).optional()
            })
            .map_err(sql("oldest pending message"))?;
        at.map(|t| parse_time(&t)).transpose()
    }
}
