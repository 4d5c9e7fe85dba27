//! What the loop knows of each mail domain's policy, and what to do next
//! (RFC 8461 5.1): look at the TXT record now and then, fetch the policy
//! when the record's `id` is new or the cached policy has expired, keep
//! the cached policy when a fetch fails. Pure: time comes in, decisions
//! go out; the loop does the DNS, the HTTPS and the jobs that wait.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use super::{Mode, Policy};

/// Domains known at once; beyond it the least recently used idle ones
/// are forgotten (their policies stay in the queue and come back).
pub const CAPACITY: usize = 10_000;
/// A domain's TXT record is looked at again at most this often: a job
/// costs a map lookup, not a DNS question (RFC 8461 5.1 asks for a look
/// "when sending", which the resolver's cache would answer anyway).
pub const RECHECK: Duration = Duration::from_secs(60);
/// After a failed fetch of an `id`, the same `id` is not fetched again
/// before this: a broken policy server costs a fetch per few minutes,
/// not one per message.
pub const FETCH_RETRY: Duration = Duration::from_secs(300);

/// A policy as cached: the record `id` it was fetched for, and when it
/// expires (`max_age` after the fetch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub id: String,
    pub policy: Policy,
    pub expires: SystemTime,
}

/// What the TXT record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Txt {
    /// One valid `v=STSv1` record with this `id`.
    Record(String),
    /// No record (or none valid, or several): the domain publishes none.
    Absent,
    /// DNS could not say.
    Failed,
}

/// May a job for the domain go now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// The first look at the domain is under way, and nothing is cached.
    Wait,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Busy {
    Idle,
    Txt,
    Fetch,
}

#[derive(Debug)]
struct Entry {
    cached: Option<Cached>,
    /// The last TXT answer's time; `None`: not yet looked at this run.
    checked: Option<Instant>,
    /// The first look (TXT, and the fetch it led to) is over.
    looked: bool,
    busy: Busy,
    /// The `id` whose fetch failed last, and when.
    failed: Option<(String, Instant)>,
    used: Instant,
}

impl Entry {
    fn valid(&self, wall: SystemTime) -> Option<&Cached> {
        self.cached.as_ref().filter(|c| c.expires > wall)
    }
}

pub struct Tracker {
    entries: HashMap<String, Entry>,
    capacity: usize,
}

impl Tracker {
    pub fn new(capacity: usize) -> Tracker {
        Tracker {
            entries: HashMap::new(),
            capacity: capacity.max(2),
        }
    }

    pub fn contains(&self, domain: &str) -> bool {
        self.entries.contains_key(domain)
    }

    /// A domain seen for the first time (this run, or since forgotten),
    /// with what the queue had cached for it.
    pub fn insert(&mut self, domain: &str, cached: Option<Cached>, now: Instant) {
        if self.entries.len() >= self.capacity {
            self.forget_idle_half();
        }
        self.entries.insert(
            domain.to_string(),
            Entry {
                cached,
                checked: None,
                looked: false,
                busy: Busy::Idle,
                failed: None,
                used: now,
            },
        );
    }

    /// Forgets the older half of the idle entries (busy ones have jobs or
    /// answers coming): a sort once per `capacity / 2` new domains.
    fn forget_idle_half(&mut self) {
        let mut used: Vec<Instant> = self
            .entries
            .values()
            .filter(|e| e.busy == Busy::Idle)
            .map(|e| e.used)
            .collect();
        used.sort_unstable();
        let Some(&cut) = used.get(used.len() / 2) else {
            return;
        };
        self.entries
            .retain(|_, e| e.busy != Busy::Idle || e.used >= cut);
    }

    /// A job for `domain` (inserted before): whether it may go, and
    /// whether the loop must look up the TXT record now.
    pub fn job(&mut self, domain: &str, now: Instant, wall: SystemTime) -> (Gate, bool) {
        let Some(e) = self.entries.get_mut(domain) else {
            return (Gate::Go, false);
        };
        e.used = now;
        let look = e.busy == Busy::Idle && e.checked.is_none_or(|t| now >= t + RECHECK);
        if look {
            e.busy = Busy::Txt;
        }
        let gate = if !e.looked && e.valid(wall).is_none() {
            Gate::Wait
        } else {
            Gate::Go
        };
        (gate, look)
    }

    /// The TXT answer: the `id` to fetch, if a fetch is needed; else the
    /// look is over (jobs waiting for it may go).
    pub fn txt(
        &mut self,
        domain: &str,
        txt: Txt,
        now: Instant,
        wall: SystemTime,
    ) -> Option<String> {
        let e = self.entries.get_mut(domain)?;
        e.checked = Some(now);
        e.busy = Busy::Idle;
        e.looked = true;
        let Txt::Record(id) = txt else {
            // RFC 8461 5.1: without a live record a valid cached policy
            // still applies, until it expires.
            return None;
        };
        if e.valid(wall).is_some_and(|c| c.id == id) {
            return None;
        }
        let failed_lately = e
            .failed
            .as_ref()
            .is_some_and(|(f, at)| *f == id && now < *at + FETCH_RETRY);
        if failed_lately {
            return None;
        }
        e.busy = Busy::Fetch;
        // Jobs wait for the fetch only when nothing valid is cached.
        e.looked = e.valid(wall).is_some();
        Some(id)
    }

    /// A fetch for `id` ended: with the policy (cached from now on, for
    /// its `max_age`; returned to be stored) or why not (the old one stays).
    pub fn fetched(
        &mut self,
        domain: &str,
        id: &str,
        result: Result<Policy, String>,
        now: Instant,
        wall: SystemTime,
    ) -> Option<Cached> {
        let e = self.entries.get_mut(domain)?;
        e.busy = Busy::Idle;
        e.looked = true;
        match result {
            Ok(policy) => {
                let age = Duration::from_secs(u64::from(policy.max_age));
                let cached = Cached {
                    id: id.to_string(),
                    policy,
                    expires: wall + age,
                };
                e.failed = None;
                e.cached = Some(cached.clone());
                Some(cached)
            }
            Err(_) => {
                e.failed = Some((id.to_string(), now));
                None
            }
        }
    }

    /// Whether jobs waiting on the domain may go (no look in progress).
    pub fn settled(&self, domain: &str) -> bool {
        self.entries
            .get(domain)
            .is_none_or(|e| e.busy == Busy::Idle)
    }

    /// The policy in force: cached, unexpired, and not `mode: none`.
    pub fn policy(&self, domain: &str, wall: SystemTime) -> Option<&Cached> {
        self.entries
            .get(domain)?
            .valid(wall)
            .filter(|c| c.policy.mode != Mode::None)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: Mode, max_age: u32) -> Policy {
        Policy {
            mode,
            mx: vec!["mx.example".into()],
            max_age,
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_first_look_holds_jobs_until_the_policy_is_in() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let mut t = Tracker::new(10);
        t.insert("example", None, t0);
        assert_eq!(t.job("example", t0, w0), (Gate::Wait, true));
        // A second job joins the look in progress.
        assert_eq!(t.job("example", t0, w0), (Gate::Wait, false));
        assert!(!t.settled("example"));
        let id = t.txt("example", Txt::Record("1".into()), t0, w0);
        assert_eq!(id.as_deref(), Some("1"));
        assert!(!t.settled("example"));
        // While the first fetch runs, jobs still wait.
        assert_eq!(t.job("example", t0, w0), (Gate::Wait, false));
        let stored = t.fetched("example", "1", Ok(policy(Mode::Enforce, 600)), t0, w0);
        assert_eq!(stored.unwrap().expires, w0 + secs(600));
        assert!(t.settled("example"));
        assert_eq!(t.policy("example", w0).unwrap().policy.mode, Mode::Enforce);
        // Later jobs go at once; the record is looked at again after RECHECK.
        assert_eq!(t.job("example", t0 + secs(1), w0), (Gate::Go, false));
        let later = t0 + RECHECK;
        assert_eq!(t.job("example", later, w0), (Gate::Go, true));
        // Same id, policy still valid: no fetch.
        assert_eq!(t.txt("example", Txt::Record("1".into()), later, w0), None);
        // The policy expires: fetched again even for the same id.
        let after = w0 + secs(601);
        assert!(t.policy("example", after).is_none());
        let much_later = later + RECHECK;
        assert_eq!(t.job("example", much_later, after), (Gate::Go, true));
        let id = t.txt("example", Txt::Record("1".into()), much_later, after);
        assert_eq!(id.as_deref(), Some("1"));
    }

    #[test]
    fn a_failed_fetch_keeps_the_cached_policy_and_is_not_retried_at_once() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let cached = Cached {
            id: "1".into(),
            policy: policy(Mode::Enforce, 86_400),
            expires: w0 + secs(86_400),
        };
        let mut t = Tracker::new(10);
        t.insert("example", Some(cached), t0);
        // A cached policy: the first job goes at once, the look runs behind it.
        assert_eq!(t.job("example", t0, w0), (Gate::Go, true));
        let id = t.txt("example", Txt::Record("2".into()), t0, w0);
        assert_eq!(id.as_deref(), Some("2"));
        assert_eq!(
            t.fetched("example", "2", Err("HTTP 500".into()), t0, w0),
            None
        );
        assert_eq!(t.policy("example", w0).unwrap().id, "1");
        let t1 = t0 + RECHECK;
        assert_eq!(t.job("example", t1, w0), (Gate::Go, true));
        assert_eq!(t.txt("example", Txt::Record("2".into()), t1, w0), None);
        let t2 = t0 + FETCH_RETRY;
        assert_eq!(t.job("example", t2, w0), (Gate::Go, true));
        assert_eq!(
            t.txt("example", Txt::Record("2".into()), t2, w0).as_deref(),
            Some("2")
        );
        // The record disappearing does not drop the cached policy either.
        t.fetched("example", "2", Err("timeout".into()), t2, w0);
        let t3 = t2 + RECHECK;
        t.job("example", t3, w0);
        assert_eq!(t.txt("example", Txt::Absent, t3, w0), None);
        assert_eq!(t.policy("example", w0).unwrap().id, "1");
    }

    #[test]
    fn no_record_or_a_dns_failure_lets_jobs_go_without_a_policy() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let mut t = Tracker::new(10);
        for (domain, txt) in [("a", Txt::Absent), ("b", Txt::Failed)] {
            t.insert(domain, None, t0);
            assert_eq!(t.job(domain, t0, w0), (Gate::Wait, true));
            assert_eq!(t.txt(domain, txt, t0, w0), None);
            assert!(t.settled(domain));
            assert_eq!(t.job(domain, t0, w0), (Gate::Go, false));
            assert!(t.policy(domain, w0).is_none());
        }
        // A fetch that fails without a cache: no policy, jobs go.
        t.insert("c", None, t0);
        t.job("c", t0, w0);
        t.txt("c", Txt::Record("x".into()), t0, w0);
        t.fetched("c", "x", Err("refused".into()), t0, w0);
        assert!(t.settled("c") && t.policy("c", w0).is_none());
        assert_eq!(t.job("c", t0, w0), (Gate::Go, false));
        // mode: none is no policy, though cached.
        t.insert("d", None, t0);
        t.job("d", t0, w0);
        t.txt("d", Txt::Record("n".into()), t0, w0);
        t.fetched("d", "n", Ok(policy(Mode::None, 600)), t0, w0);
        assert!(t.policy("d", w0).is_none());
    }

    #[test]
    fn the_map_is_bounded_and_keeps_busy_domains() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let mut t = Tracker::new(100);
        t.insert("busy", None, t0);
        t.job("busy", t0, w0);
        for i in 0..1000u64 {
            let name = format!("d{i}");
            t.insert(&name, None, t0 + secs(i + 1));
            assert!(t.len() <= 100);
        }
        assert!(t.contains("busy") && t.contains("d999"));
        assert!(!t.contains("d0"));
    }
}
