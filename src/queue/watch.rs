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
