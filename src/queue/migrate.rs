//! Numbered schema migrations from `schema/`, tracked in `PRAGMA user_version`.

use rusqlite::{Connection, TransactionBehavior};

use super::{sql, QueueError};

/// Every `schema/NNNN_*.sql`, in order: entry `i` takes the database from
/// version `i` to `i + 1`. Append only; never edit one that has shipped.
pub(super) const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init.sql", include_str!("../../schema/0001_init.sql")),
    (
        "0002_delivery.sql",
        include_str!("../../schema/0002_delivery.sql"),
    ),
    (
        "0003_admin.sql",
        include_str!("../../schema/0003_admin.sql"),
    ),
    (
        "0004_body_chunks.sql",
        include_str!("../../schema/0004_body_chunks.sql"),
    ),
    ("0005_dsn.sql", include_str!("../../schema/0005_dsn.sql")),
    (
        "0006_shaping.sql",
        include_str!("../../schema/0006_shaping.sql"),
    ),
    (
        "0007_mta_sts.sql",
        include_str!("../../schema/0007_mta_sts.sql"),
    ),
];

/// Applies the missing migrations in one transaction, so a crash leaves the
/// database at the old version or the new one, never between.
pub(super) fn apply(conn: &mut Connection) -> Result<(), QueueError> {
    // IMMEDIATE, and the version read inside it, so two processes starting
    // at once cannot both apply the same migration.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql("begin migration"))?;
    let version: usize = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sql("read user_version"))?;
    let known = MIGRATIONS.len();
    if version > known {
        return Err(QueueError(format!(
            "queue: schema version {version} is newer than this mailhop knows ({known}); \
             use a newer mailhop"
        )));
    }
    if version == known {
        return Ok(()); // dropping `tx` ends the empty transaction
    }
    for (name, text) in &MIGRATIONS[version..] {
        tx.execute_batch(text)
            .map_err(|e| QueueError(format!("queue: migration {name}: {e}")))?;
    }
    tx.pragma_update(None, "user_version", known)
        .map_err(sql("set user_version"))?;
    tx.commit().map_err(sql("commit migrations"))
}
