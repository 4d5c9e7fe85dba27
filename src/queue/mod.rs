//! The durable queue: the only module that speaks SQL (with `schema/`).

mod admin;
mod body;
mod delivery;
mod inspect;
mod migrate;
mod policies;
mod submit;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_admin;
#[cfg(test)]
mod tests_body;
#[cfg(test)]
mod tests_delivery;
#[cfg(test)]
mod tests_policies;
#[cfg(test)]
mod tests_upkeep;
mod watch;

pub use admin::{Admin, Changed};
pub use inspect::{
    age_bucket, AttemptRecord, HopStats, MessageDetail, PendingMessage, PendingRecipient,
    RecipientDetail, Stats, AGE_BUCKETS, STATUSES,
};
pub use policies::{AttemptTls, PolicyUpdate};

use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, NaiveDateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{params, Connection};

use crate::message::Message;
use crate::smtp::dsn::{Notify, Ret};

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

/// Room for every statement the loop runs (rusqlite's default is 16), so
/// none is re-prepared per turn.
const STATEMENT_CACHE: usize = 48;

/// Pragmas set on every open, each with the value it must read back as.
/// SQLite ignores unknown pragmas silently, so only the read-back proves them.
const PRAGMAS: [(&str, &str, &str); 3] = [
    ("journal_mode", "WAL", "wal"),
    ("synchronous", "FULL", "2"),
    ("foreign_keys", "ON", "1"),
];

/// The one time format of the queue: ISO 8601 UTC, text that sorts in
/// time order (the schema's CHECKs hold hand-written updates to it).
const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%SZ";

/// ISO 8601 UTC as stored in the queue; text that sorts in time order.
pub fn iso8601(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).format(TIME_FORMAT).to_string()
}

/// Reads a stored time back; whole seconds, as stored.
pub fn parse_time(text: &str) -> Result<SystemTime, QueueError> {
    NaiveDateTime::parse_from_str(text, TIME_FORMAT)
        .map(|t| t.and_utc().into())
        .map_err(|e| QueueError(format!("queue: bad time {text:?}: {e}")))
}

pub struct Queue {
    /// Also holds the prepared-statement cache (`prepare_cached`).
    conn: Connection,
    /// `PRAGMA data_version` when last looked at (`changed_elsewhere`).
    data_version: Option<i64>,
    /// The open write transaction and the unfinished bodies in it.
    spool: body::Spool,
}

impl Queue {
    /// Opens (creating if needed) the queue file: WAL, synchronous=FULL
    /// (both read back and checked), busy timeout, pending migrations from
    /// `schema/` applied in one transaction, and recipients left `active`
    /// by a dead process made due again.
    pub fn open(path: &Path) -> Result<Queue, QueueError> {
        configure_sqlite();
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
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        set_pragmas(&conn, &PRAGMAS)?;
        migrate::apply(&mut conn)?;
        let requeued = requeue_active(&conn, SystemTime::now())?;
        if requeued > 0 {
            log::info!("queue: {requeued} recipients left active by the last run are due again");
        }
        let orphans = body::remove_orphans(&conn)?;
        if orphans > 0 {
            log::info!("queue: removed {orphans} body pieces of messages never committed");
        }
        Ok(Queue {
            conn,
            data_version: None,
            spool: body::Spool::default(),
        })
    }

    /// Stores every message of one loop turn in one transaction (one fsync).
    /// Either all are durable when this returns Ok, or none are.
    pub fn commit(&mut self, batch: &[&Message]) -> Result<(), QueueError> {
        self.commit_turn(&Batch {
            messages: batch.to_vec(),
            ..Batch::default()
        })
    }

    /// Everything one loop turn finished, in one transaction (one fsync):
    /// new messages, then delivery outcomes, host states, held-back hops and
    /// delay warnings. Either all of it is durable when this returns Ok, or
    /// none of it is.
    pub fn commit_turn(&mut self, batch: &Batch<'_>) -> Result<(), QueueError> {
        self.commit_and_lease(batch, false).map(drop)
    }

    /// As `commit_turn`; with `lease_new`, the new messages' recipients are
    /// stored already `active` and returned as leases (per message and next
    /// hop), so mail that can go at once is not looked up again.
    pub fn commit_and_lease(
        &mut self,
        batch: &Batch<'_>,
        lease_new: bool,
    ) -> Result<Vec<Lease>, QueueError> {
        if batch.is_empty() {
            self.commit_open()?;
            return Ok(Vec::new());
        }
        // Joins the transaction that holds this turn's body pieces: the
        // messages, their pieces and the outcomes commit together.
        self.begin()?;
        let mut leases = Vec::new();
        let stored = (|| {
            for message in &batch.messages {
                insert(&self.conn, message, lease_new.then_some(&mut leases))?;
            }
            delivery::apply(&self.conn, batch)
        })();
        if let Err(e) = stored {
            self.rollback_open();
            return Err(e);
        }
        self.commit_open()?;
        Ok(leases)
    }
}

/// One recipient leased for delivery (status now `active`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedRecipient {
    /// `recipients` rowid: what outcomes refer to.
    pub row: i64,
    pub mailbox: String,
    pub forward_path: String,
    /// Attempts made before this one.
    pub attempts: u32,
    /// `NOTIFY=` and `ORCPT=` as received (RFC 3461).
    pub notify: Option<Notify>,
    pub orcpt: Option<String>,
    /// It was `deferred` before the lease (else `queued`).
    pub was_deferred: bool,
}

/// Due recipients of one message that share a next hop: one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub message_id: String,
    pub next_hop: String,
    pub recipients: Vec<LeasedRecipient>,
}

/// A stored message as delivery needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: String,
    pub sender: String,
    pub reverse_path: String,
    pub received_at: SystemTime,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// A delay warning was already sent for it.
    pub warned: bool,
    /// Octets of the stored message.
    pub size: u64,
    /// Pieces in `body_chunks` before the rest in the message row (see
    /// `Queue::read_piece`).
    pub chunks: u32,
    /// `RET=` and `ENVID=` as received (RFC 3461).
    pub ret: Option<Ret>,
    pub envid: Option<String>,
}

/// Where a recipient stands after an attempt (or a decision without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientState {
    Delivered,
    Deferred { next_attempt: SystemTime },
    Bounced,
    Expired,
    Deleted,
}

/// One delivery attempt, for the `attempts` history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The address actually connected to (`127.0.0.1:2526`), or `local`.
    pub host: String,
    pub started_at: SystemTime,
    pub finished_at: SystemTime,
}

/// The new state of one leased recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub row: i64,
    pub message_id: String,
    pub recipient: String,
    pub next_hop: String,
    pub state: RecipientState,
    /// The reply (or connection error) that decided it, as one line.
    pub reply: String,
    /// `Some` when an attempt was made: counted in `attempts` and logged in
    /// the history; `None` for decisions without one (held back because
    /// the host is failing, expired while waiting, deleted).
    pub attempt: Option<Attempt>,
    pub at: SystemTime,
}

/// The state of a next hop, for the `hosts` view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUpdate {
    pub next_hop: String,
    pub up: bool,
    pub failures: u32,
    pub last_error: Option<String>,
    pub next_retry: Option<SystemTime>,
}

/// The limits in force on a next hop, for the `hosts` view; `None`: no
/// limit. A hop without limits and without a row gets none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeUpdate {
    pub next_hop: String,
    pub rate_limit: Option<u32>,
    pub connection_limit: Option<u32>,
    pub reason: Option<String>,
}

/// Push every waiting recipient of a failing next hop to its retry time,
/// so a dead host costs no attempt per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldBack {
    pub next_hop: String,
    pub until: SystemTime,
    pub reply: String,
}

/// What one loop turn commits together.
#[derive(Debug, Default)]
pub struct Batch<'a> {
    pub messages: Vec<&'a Message>,
    pub outcomes: Vec<Outcome>,
    pub hosts: Vec<HostUpdate>,
    pub hold_backs: Vec<HoldBack>,
    /// Message IDs whose delay warning went out.
    pub warned: Vec<String>,
    pub shaping: Vec<ShapeUpdate>,
    /// MTA-STS policies fetched (or not) this turn.
    pub policies: Vec<PolicyUpdate>,
    /// TLS results of attempts under a policy, in outcome order.
    pub tls: Vec<AttemptTls>,
}

impl Batch<'_> {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.outcomes.is_empty()
            && self.hosts.is_empty()
            && self.hold_backs.is_empty()
            && self.warned.is_empty()
            && self.shaping.is_empty()
            && self.policies.is_empty()
    }
}

/// Process-wide SQLite settings, before the first connection: no memory
/// statistics, whose global mutex is otherwise taken on every allocation
/// SQLite makes (a profile showed ~8% of the event loop in it).
fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_config before any other SQLite call of this
        // process (the Once runs first); an error only leaves the default.
        unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                0 as std::os::raw::c_int,
            );
        }
    });
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
/// it is tried again (at least once, never lost), unless the operator
/// deleted it meanwhile.
fn requeue_active(conn: &Connection, now: SystemTime) -> Result<usize, QueueError> {
    conn.execute(
        "UPDATE recipients
         SET status = CASE WHEN delete_requested = 1 THEN 'deleted'
                           WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END,
             finished_at = CASE WHEN delete_requested = 1 THEN ?1 ELSE finished_at END,
             last_reply = CASE WHEN delete_requested = 1 THEN 'deleted by operator'
                               ELSE last_reply END,
             next_attempt = ?1
         WHERE status = 'active'",
        [iso8601(now)],
    )
    .map_err(sql("requeue active recipients"))
}

/// Stores one message; with `leases`, its recipients go in `active` and
/// their leases are appended.
fn insert(
    conn: &Connection,
    m: &Message,
    leases: Option<&mut Vec<Lease>>,
) -> Result<(), QueueError> {
    let received_at = iso8601(m.received_at);
    conn.prepare_cached(
        "INSERT INTO messages (id, sender, reverse_path, client_ip, helo,
                               received_at, size, eight_bit, smtputf8, body, chunks,
                               ret, envid)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            m.id,
            m.sender,
            m.reverse_path,
            m.client_ip.to_string(),
            m.helo,
            received_at,
            m.size as i64,
            m.eight_bit,
            m.smtputf8,
            m.body,
            m.chunks,
            m.ret.map(Ret::as_str),
            m.envid,
        ])
    })
    .map_err(|e| QueueError(format!("queue: storing message {}: {e}", m.id)))?;

    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO recipients (message_id, recipient, forward_path, next_hop,
                                     status, attempts, next_attempt, notify, orcpt)
             VALUES (?1, ?2, ?3, ?4, ?6, 0, ?5, ?7, ?8)",
        )
        .map_err(sql("prepare recipient insert"))?;
    let status = if leases.is_some() { "active" } else { "queued" };
    let first = leases.as_ref().map_or(0, |l| l.len());
    let mut leases = leases;
    for r in &m.recipients {
        stmt.execute(params![
            m.id,
            r.mailbox,
            r.forward_path,
            r.next_hop,
            received_at,
            status,
            r.notify.map(Notify::to_param),
            r.orcpt,
        ])
        .map_err(|e| {
            QueueError(format!(
                "queue: storing recipient {} of {}: {e}",
                r.mailbox, m.id
            ))
        })?;
        if let Some(leases) = leases.as_deref_mut() {
            let leased = LeasedRecipient {
                row: conn.last_insert_rowid(),
                mailbox: r.mailbox.clone(),
                forward_path: r.forward_path.clone(),
                attempts: 0,
                notify: r.notify,
                orcpt: r.orcpt.clone(),
                was_deferred: false,
            };
            match leases[first..]
                .iter_mut()
                .find(|l| l.next_hop == r.next_hop)
            {
                Some(lease) => lease.recipients.push(leased),
                None => leases.push(Lease {
                    message_id: m.id.clone(),
                    next_hop: r.next_hop.clone(),
                    recipients: vec![leased],
                }),
            }
        }
    }
    Ok(())
}
