//! Answers per question (name, type), kept for their TTL within sane bounds
//! so that a mis-set zone can neither make us ask on every message nor pin
//! an answer for weeks; negative answers per RFC 2308; temporary failures
//! briefly, so that a dead server is not asked again for every message.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use hickory_proto::rr::{Name, RecordType};

use super::wire::Data;

/// A question: the name (lower case, fully qualified) and the type.
pub(super) type Key = (Name, RecordType);

pub(super) const MIN_TTL: u32 = 5;
pub(super) const MAX_POSITIVE_TTL: u32 = 86_400;
pub(super) const MAX_NEGATIVE_TTL: u32 = 3_600;
pub(super) const TEMPFAIL_TTL: u32 = 5;
pub(super) const CAPACITY: usize = 10_000;

/// The final result of a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum QResult {
    Found(Data),
    NxDomain,
    NoData,
    TempFail(String),
}

pub(super) struct Cache {
    entries: HashMap<Key, (Instant, u64, QResult)>,
    /// Expiry order, to evict what expires first when full.
    by_expiry: BTreeMap<(Instant, u64), Key>,
    seq: u64,
    capacity: usize,
}

impl Cache {
    pub(super) fn new(capacity: usize) -> Cache {
        Cache {
            entries: HashMap::new(),
            by_expiry: BTreeMap::new(),
            seq: 0,
            capacity,
        }
    }

    pub(super) fn get(&mut self, key: &Key, now: Instant) -> Option<QResult> {
        let (expires, seq, result) = self.entries.get(key)?;
        if *expires > now {
            return Some(result.clone());
        }
        let slot = (*expires, *seq);
        self.by_expiry.remove(&slot);
        self.entries.remove(key);
        None
    }

    /// `ttl` is the answer's own (seconds); the bounds are applied here.
    pub(super) fn insert(&mut self, key: Key, result: QResult, ttl: u32, now: Instant) {
        let ttl = match result {
            QResult::Found(_) => ttl.clamp(MIN_TTL, MAX_POSITIVE_TTL),
            QResult::NxDomain | QResult::NoData => ttl.clamp(MIN_TTL, MAX_NEGATIVE_TTL),
            QResult::TempFail(_) => TEMPFAIL_TTL,
        };
        if let Some((expires, seq, _)) = self.entries.remove(&key) {
            self.by_expiry.remove(&(expires, seq));
        }
        while self.entries.len() >= self.capacity {
            let Some((_, old)) = self.by_expiry.pop_first() else {
                break;
            };
            self.entries.remove(&old);
        }
        self.seq += 1;
        let expires = now + Duration::from_secs(u64::from(ttl));
        self.by_expiry.insert((expires, self.seq), key.clone());
        self.entries.insert(key, (expires, self.seq, result));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}
