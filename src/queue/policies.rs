//! MTA-STS policies as the queue caches them (`sts_policies`, shown by the
//! `policies` view): read once per domain per run, written with the turn's
//! commit after each fetch; and each attempt's TLS result.

use std::time::SystemTime;

use rusqlite::{params, Connection, OptionalExtension};

use super::{iso8601, parse_time, Queue, QueueError};
use crate::mta_sts::tracker::Cached;
use crate::mta_sts::Policy;

/// What a policy fetch came to, for the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyUpdate {
    /// A good fetch: the new cached policy.
    Fetched {
        domain: String,
        cached: Cached,
        at: SystemTime,
    },
    /// A failed one: the cached policy (if any) stays as it was.
    Failed {
        domain: String,
        id: String,
        error: String,
        at: SystemTime,
    },
}

/// An attempt's TLS under a policy: `outcome` is the index of its outcome
/// in the batch (only outcomes with an attempt get a row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTls {
    pub outcome: usize,
    pub mode: &'static str,
    pub result: &'static str,
}

impl Queue {
    /// The policy cached for `domain`, if there is a good one stored
    /// (expired or not: the caller judges).
    pub fn sts_policy(&self, domain: &str) -> Result<Option<Cached>, QueueError> {
        let row: Option<(String, String, String, u32, String)> = self
            .conn
            .prepare_cached(
                "SELECT policy_id, mode, mx, max_age, expires_at FROM sts_policies
                 WHERE domain = ?1 AND policy_id IS NOT NULL",
            )
            .and_then(|mut stmt| {
                stmt.query_row([domain], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .optional()
            })
            .map_err(|e| QueueError(format!("queue: policy of {domain}: {e}")))?;
        let Some((id, mode, mx, max_age, expires)) = row else {
            return Ok(None);
        };
        let Some(policy) = Policy::from_stored(&mode, &mx, max_age) else {
            return Err(QueueError(format!(
                "queue: policy of {domain}: bad mode {mode:?}"
            )));
        };
        Ok(Some(Cached {
            id,
            policy,
            expires: parse_time(&expires)?,
        }))
    }
}

pub(super) fn apply(conn: &Connection, update: &PolicyUpdate) -> Result<(), QueueError> {
    let result = match update {
        PolicyUpdate::Fetched { domain, cached, at } => conn
            .prepare_cached(
                "INSERT INTO sts_policies (domain, policy_id, mode, mx, max_age, fetched_at,
                                           expires_at, last_attempt, last_id, last_error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6, ?2, NULL)
                 ON CONFLICT (domain) DO UPDATE
                 SET policy_id = excluded.policy_id, mode = excluded.mode, mx = excluded.mx,
                     max_age = excluded.max_age, fetched_at = excluded.fetched_at,
                     expires_at = excluded.expires_at, last_attempt = excluded.last_attempt,
                     last_id = excluded.last_id, last_error = NULL",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    domain,
                    cached.id,
                    cached.policy.mode.as_str(),
                    cached.policy.mx_text(),
                    cached.policy.max_age,
                    iso8601(*at),
                    iso8601(cached.expires)
                ])
            }),
        PolicyUpdate::Failed {
            domain,
            id,
            error,
            at,
        } => conn
            .prepare_cached(
                "INSERT INTO sts_policies (domain, last_attempt, last_id, last_error)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (domain) DO UPDATE
                 SET last_attempt = excluded.last_attempt, last_id = excluded.last_id,
                     last_error = excluded.last_error",
            )
            .and_then(|mut stmt| stmt.execute(params![domain, iso8601(*at), id, error])),
    };
    let domain = match update {
        PolicyUpdate::Fetched { domain, .. } | PolicyUpdate::Failed { domain, .. } => domain,
    };
    result.map_err(|e| QueueError(format!("queue: storing the policy of {domain}: {e}")))?;
    Ok(())
}
