//! For `mailhop sendmail`: a second process that puts new mail into the
//! queue file of a running (or stopped) `serve`, one message per
//! transaction, with the same body pieces and message rows as `serve`.

use std::path::Path;

use super::{admin, body, configure_sqlite, Queue, QueueError};

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
        let conn = admin::open_existing(
            path,
            "`mailhop serve` creates it; name the queue in the config",
            true,
        )?;
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
