//! Bodies in pieces: written while a message is still arriving, read back
//! piece by piece for delivery (schema 0004).
//!
//! Pieces go into the loop's open write transaction, which the turn's
//! group commit ends, so a 10 MB message costs no fsync of its own. Until
//! the message row is committed the pieces belong to nothing the views
//! show. If a statement or a commit fails, the pieces of that transaction
//! are gone: their messages are "lost" and must be answered 451, never 250.

use hashbrown::HashSet;
use rusqlite::params;

use super::{sql, Queue, QueueError};

/// The open write transaction and what it holds of unfinished messages.
#[derive(Debug, Default)]
pub(super) struct Spool {
    /// `BEGIN IMMEDIATE` ran and no COMMIT or ROLLBACK yet.
    open: bool,
    /// Messages with pieces written in the open transaction.
    writing: HashSet<String>,
    /// Messages that lost pieces (failed statement, rolled-back
    /// transaction): they can no longer be stored whole.
    lost: HashSet<String>,
}

impl Queue {
    /// Stores piece `seq` of the message `id` that is still arriving.
    /// An error means the message has lost pieces (`is_lost`); others
    /// written in the same transaction may have too. Pieces of a message
    /// already lost are not written (and not reported again).
    pub fn write_piece(&mut self, id: &str, seq: u32, data: &[u8]) -> Result<(), QueueError> {
        if self.spool.lost.contains(id) {
            return Ok(());
        }
        self.begin()?;
        if !self.spool.writing.contains(id) {
            self.spool.writing.insert(id.to_string());
        }
        let written = self
            .conn
            .prepare_cached("INSERT INTO body_chunks (message_id, seq, data) VALUES (?1, ?2, ?3)")
            .and_then(|mut stmt| stmt.execute(params![id, seq, data]));
        if let Err(e) = written {
            self.spool.lost.insert(id.to_string());
            // SQLite rolls the whole transaction back on some errors (a
            // full disk, I/O): then every piece in it is gone.
            if self.conn.is_autocommit() {
                self.open_rolled_back();
            }
            return Err(QueueError(format!("queue: body of {id}: {e}")));
        }
        Ok(())
    }

    /// A message that will not be stored (the session failed, or its
    /// data was refused): its pieces go, in the open transaction. Should
    /// that fail, start-up removes them.
    pub fn discard_body(&mut self, id: &str) {
        self.spool.lost.remove(id);
        let deleted = self.begin().and_then(|()| {
            self.conn
                .prepare_cached("DELETE FROM body_chunks WHERE message_id = ?1")
                .and_then(|mut stmt| stmt.execute([id]))
                .map_err(sql("discard body pieces"))
        });
        if let Err(e) = deleted {
            log::warn!("{id}: {e}; start-up will remove its pieces");
            if self.conn.is_autocommit() {
                self.open_rolled_back();
            }
        }
    }

    /// Whether the message lost pieces and must be refused (451).
    pub fn is_lost(&self, id: &str) -> bool {
        self.spool.lost.contains(id)
    }

    /// Commits the open transaction, if any; on failure its pieces are lost.
    pub fn commit_open(&mut self) -> Result<(), QueueError> {
        if !self.spool.open {
            return Ok(());
        }
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => {
                self.spool.open = false;
                self.spool.writing.clear();
                Ok(())
            }
            Err(e) => {
                self.rollback_open();
                Err(QueueError(format!("queue: commit: {e}")))
            }
        }
    }

    /// Reads piece `seq` of a stored message into `buf` (cleared first):
    /// `body_chunks` row `seq` while `seq < chunks`, then the rest kept
    /// in the message row.
    pub fn read_piece(
        &self,
        id: &str,
        seq: u32,
        chunks: u32,
        buf: &mut Vec<u8>,
    ) -> Result<(), QueueError> {
        buf.clear();
        let (query, key): (&str, &[&dyn rusqlite::ToSql]) = if seq < chunks {
            (
                "SELECT data FROM body_chunks WHERE message_id = ?1 AND seq = ?2",
                &[&id, &seq],
            )
        } else {
            ("SELECT body FROM messages WHERE id = ?1", &[&id])
        };
        self.conn
            .prepare_cached(query)
            .and_then(|mut stmt| {
                stmt.query_row(key, |r| {
                    buf.extend_from_slice(r.get_ref(0)?.as_blob()?);
                    Ok(())
                })
            })
            .map_err(|e| QueueError(format!("queue: reading piece {seq} of {id}: {e}")))
    }

    /// Joins the open transaction, or opens one. IMMEDIATE takes the
    /// write lock up front, so a busy database fails here (after the busy
    /// timeout) rather than halfway through.
    pub(super) fn begin(&mut self) -> Result<(), QueueError> {
        if !self.spool.open {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(sql("begin"))?;
            self.spool.open = true;
        }
        Ok(())
    }

    /// Ends the open transaction without keeping anything.
    pub(super) fn rollback_open(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.open_rolled_back();
    }

    /// The open transaction is gone: what it held of unfinished messages
    /// with it.
    fn open_rolled_back(&mut self) {
        self.spool.open = false;
        let writing = std::mem::take(&mut self.spool.writing);
        self.spool.lost.extend(writing);
    }
}

/// Pieces a crash left behind: written, but their message never committed.
pub(super) fn remove_orphans(conn: &rusqlite::Connection) -> Result<usize, QueueError> {
    conn.execute(
        "DELETE FROM body_chunks
         WHERE NOT EXISTS (SELECT 1 FROM messages WHERE messages.id = body_chunks.message_id)",
        [],
    )
    .map_err(sql("remove orphaned body pieces"))
}

#[cfg(test)]
impl Queue {
    /// A whole stored body, pieces joined (empty once dropped).
    pub(crate) fn read_body(&self, id: &str) -> Result<Vec<u8>, QueueError> {
        let message = self.message(id)?;
        let (mut body, mut piece) = (Vec::new(), Vec::new());
        for seq in 0..=message.chunks {
            self.read_piece(id, seq, message.chunks, &mut piece)?;
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }
}
