//! For `mailhop sendmail`: a second process that puts new mail into the
//! queue file of a running (or stopped) `serve`, one message per
//! transaction, with the same body pieces and message rows as `serve`.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, DatabaseName, OpenFlags};

use super::{body, configure_sqlite, migrate, set_pragmas, sql, Queue, QueueError, PRAGMAS};

/// A user's sendmail may wait longer for `serve`'s commits than the event
/// loop waits for anyone.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Queue {
    /// Opens an existing queue to submit mail to. Never creates one (a
    /// mistyped path or a missing config would otherwise queue mail that no
    /// `serve` ever sends), and leaves `serve`'s state alone: recipients it
    /// leased stay `active`, and the body pieces of messages it is still
    /// receiving are not orphans. Fails at once when the file cannot be
    /// written.
    pub fn open_to_submit(path: &Path) -> Result<Queue, QueueError> {
        configure_sqlite();
        let shown = path.display();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(QueueError(format!(
                    "queue {shown}: folder {} does not exist",
                    dir.display()
                )));
            }
        }
        if !path.is_file() {
            return Err(QueueError(format!(
                "queue {shown}: no such file (`mailhop serve` creates it; name the queue in the config)"
            )));
        }
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| QueueError(format!("queue {shown}: cannot open: {e}")))?;
        // SQLite opens a file it may not write read-only, without a word.
        if conn.is_readonly(DatabaseName::Main).unwrap_or(true) {
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
        Ok(Queue {
            conn,
            data_version: None,
            spool: body::Spool::default(),
        })
    }

    /// Ends the open transaction without keeping any of it: the pieces of
    /// a message that will not be committed go with it.
    pub fn abandon(&mut self) {
        self.rollback_open();
    }
}
