//! The durable queue: the only module that speaks SQL (with `schema/`).

use std::path::Path;

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

pub struct Queue {
    // private: a rusqlite::Connection, cached statements
}

impl Queue {
    /// Opens (creating if needed) the queue file: WAL, synchronous=FULL
    /// (both read back and checked), busy timeout, pending migrations from
    /// `schema/` applied in one transaction, and recipients left `active`
    /// by a dead process made due again.
    pub fn open(path: &Path) -> Result<Queue, QueueError> {
        todo!()
    }

    /// Stores every message of one loop turn in one transaction (one fsync).
    /// Either all are durable when this returns Ok, or none are.
    pub fn commit(&mut self, batch: &[&Message]) -> Result<(), QueueError> {
        todo!()
    }
}
