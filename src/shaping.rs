//! Traffic shaping per next hop, without I/O: which `[shaping]` entry a
//! next hop falls under, a token bucket that paces its messages, and the
//! back-off a "slow down" reply (421, 4.7.x) puts it in. Time is an input
//! everywhere, so the tests say exactly when things happen.

use std::time::{Duration, Instant};

use crate::smtp::reply::Reply;

/// The limits of one `[shaping."KEY"]` entry; `None`: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: Option<usize>,
    pub max_messages_per_connection: Option<usize>,
    pub max_messages_per_minute: Option<u32>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        *self == Limits::default()
    }
}

/// One `[shaping]` entry; `key` is lowercased, `"*"` for the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub key: String,
    pub limits: Limits,
}

/// The entry for `next_hop` (a stored next hop: `127.0.0.1:2526`,
/// `gmail.com`): a key equal to it or a label suffix of it (`gmail.com`
/// shapes `alt1.gmail.com`), the longest first, else `"*"`.
pub fn lookup<'a>(rules: &'a [Rule], next_hop: &str) -> Option<&'a Limits> {
    let hop = next_hop.to_ascii_lowercase();
    let mut best: Option<&Rule> = None;
    for rule in rules {
        let matches = rule.key == hop
            || (hop.len() > rule.key.len()
                && hop.ends_with(rule.key.as_str())
                && hop.as_bytes()[hop.len() - rule.key.len() - 1] == b'.');
        if matches && best.is_none_or(|b| rule.key.len() > b.key.len()) {
            best = Some(rule);
        }
    }
    best.or_else(|| rules.iter().find(|r| r.key == "*"))
        .map(|r| &r.limits)
}

/// A reply that asks us to send less: any 421, or a 4.7.x other than the
/// TLS ones (4.7.4, 4.7.5, 4.7.10 say nothing about the pace).
pub fn is_slow_down(reply: &Reply) -> bool {
    if reply.code == 421 {
        return true;
    }
    reply.code / 100 == 4
        && reply.enhanced.as_deref().is_some_and(|e| {
            e.strip_prefix("4.7.")
                .is_some_and(|d| !matches!(d, "4" | "5" | "10"))
        })
}

/// Messages as tokens: `rate` per minute come in steadily, and at most a
/// second's worth (at least one) is kept, so a backlog goes out paced, not
/// all at once.
#[derive(Debug, Clone)]
pub struct Bucket {
    per_minute: u32,
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(per_minute: u32, now: Instant) -> Bucket {
        let per_minute = per_minute.max(1);
        Bucket {
            per_minute,
            tokens: capacity(per_minute),
            updated: now,
        }
    }

    pub fn rate(&self) -> u32 {
        self.per_minute
    }

    /// A new rate; the tokens already there stay (up to the new capacity).
    pub fn set_rate(&mut self, per_minute: u32, now: Instant) {
        self.refill(now);
        self.per_minute = per_minute.max(1);
        self.tokens = self.tokens.min(capacity(self.per_minute));
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        let rate = f64::from(self.per_minute) / 60.0;
        self.tokens = (self.tokens + elapsed * rate).min(capacity(self.per_minute));
        self.updated = now.max(self.updated);
    }

    /// Whole messages that may go now.
    pub fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens as usize
    }

    /// Takes one message's token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        // A hair under one still counts: float sums of exact steps.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            true
        } else {
            false
        }
    }

    /// When the next token is there (now, if it is).
    pub fn next_token(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 - 1e-9 {
            return now;
        }
        let rate = f64::from(self.per_minute) / 60.0;
        now + Duration::from_secs_f64((1.0 - self.tokens) / rate)
    }
}

fn capacity(per_minute: u32) -> f64 {
    f64::from((per_minute / 60).max(1))
}

/// The first wait after a slow-down; each further one doubles it.
pub const FIRST_WAIT: Duration = Duration::from_secs(30);
pub const MAX_WAIT: Duration = Duration::from_secs(30 * 60);
/// A hop that was never limited gets this rate while it backs off (then
/// halved per level, as a configured rate is).
pub const UNLIMITED_BACKOFF_RATE: u32 = 600;
/// Successes at one back-off level before the limits come up a level.
pub const RECOVER_AFTER: u32 = 20;
/// Levels at most: rate and connections are divided by `2^level`.
const MAX_LEVEL: u32 = 10;

/// What a next hop's "slow down" replies did to it: a level (0: none)
/// that halves its rate and connections per step, a wait before anything
/// is sent again, and the reason as the `hosts` view shows it.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    level: u32,
    until: Option<Instant>,
    /// Consecutive waits, for the doubling; back to zero once recovered.
    waits: u32,
    successes: u32,
    reason: Option<String>,
}

impl Backoff {
    pub fn level(&self) -> u32 {
        self.level
    }

    /// The reply as the reason, without the wait (`reason` adds it).
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// A slow-down reply: one level down, and a wait that doubles from
    /// `FIRST_WAIT` to `MAX_WAIT`. Replies that arrive during the wait
    /// (other connections, pipelined messages) are the same complaint.
    /// Returns whether this changed anything.
    pub fn on_slow_down(&mut self, now: Instant, reply: &Reply) -> bool {
        if self.until.is_some_and(|until| now < until) {
            return false;
        }
        self.level = (self.level + 1).min(MAX_LEVEL);
        let wait = FIRST_WAIT
            .saturating_mul(1 << self.waits.min(16))
            .min(MAX_WAIT);
        self.waits += 1;
        self.until = Some(now + wait);
        self.successes = 0;
        self.reason = Some(reply.to_string());
        true
    }

    /// A message went through: after `RECOVER_AFTER` of them at a level,
    /// one level up; at level 0 the back-off is over. Returns whether the
    /// level changed.
    pub fn on_success(&mut self, now: Instant) -> bool {
        if self.level == 0 || self.until.is_some_and(|until| now < until) {
            return false;
        }
        self.successes += 1;
        if self.successes < RECOVER_AFTER {
            return false;
        }
        self.successes = 0;
        self.level -= 1;
        if self.level == 0 {
            *self = Backoff::default();
        }
        true
    }

    /// Nothing goes before this (the wait after a slow-down).
    pub fn next_allowed(&self, now: Instant) -> Option<Instant> {
        self.until.filter(|until| now < *until)
    }

    /// The limits in force: `base` (the configured ones, connections
    /// already capped by the host limit `max_connections`) halved per level.
    pub fn limit(&self, base: &Limits, max_connections: usize) -> Limits {
        if self.level == 0 {
            return *base;
        }
        let div = 1u64 << self.level;
        let rate = base
            .max_messages_per_minute
            .unwrap_or(UNLIMITED_BACKOFF_RATE);
        let connections = base.max_connections.unwrap_or(max_connections);
        Limits {
            max_connections: Some(((connections as u64 / div) as usize).max(1)),
            max_messages_per_connection: base.max_messages_per_connection,
            max_messages_per_minute: Some(((u64::from(rate) / div) as u32).max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(key: &str, rate: u32) -> Rule {
        Rule {
            key: key.into(),
            limits: Limits {
                max_messages_per_minute: Some(rate),
                ..Limits::default()
            },
        }
    }

    fn rate_of(rules: &[Rule], hop: &str) -> Option<u32> {
        lookup(rules, hop).and_then(|l| l.max_messages_per_minute)
    }

    #[test]
    fn keys_match_like_routes_longest_first_then_star() {
        let rules = [
            rule("gmail.com", 1),
            rule("alt.gmail.com", 2),
            rule("127.0.0.1:2526", 3),
            rule("*", 4),
        ];
        assert_eq!(rate_of(&rules, "gmail.com"), Some(1));
        assert_eq!(rate_of(&rules, "GMAIL.com"), Some(1));
        assert_eq!(rate_of(&rules, "mx.gmail.com"), Some(1));
        assert_eq!(rate_of(&rules, "mx.alt.gmail.com"), Some(2));
        assert_eq!(rate_of(&rules, "notgmail.com"), Some(4));
        assert_eq!(rate_of(&rules, "127.0.0.1:2526"), Some(3));
        assert_eq!(rate_of(&rules, "127.0.0.1:2527"), Some(4));
        assert_eq!(rate_of(&rules[..3], "example.org"), None);
        assert_eq!(lookup(&[], "example.org"), None);
    }

    #[test]
    fn slow_down_replies() {
        let r = |code, enh: &str| Reply::local(code, enh, "x");
        assert!(is_slow_down(&r(421, "4.7.0")));
        assert!(is_slow_down(&r(421, "")));
        assert!(is_slow_down(&r(450, "4.7.1")));
        assert!(is_slow_down(&r(451, "4.7.28")));
        assert!(!is_slow_down(&r(451, "4.7.5")));
        assert!(!is_slow_down(&r(451, "4.7.10")));
        assert!(!is_slow_down(&r(451, "4.4.2")));
        assert!(!is_slow_down(&r(550, "5.7.1")));
        assert!(!is_slow_down(&r(250, "2.0.0")));
    }

    #[test]
    fn a_bucket_paces_a_backlog_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(120, t0); // 2 a second, burst 2
        assert!(b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert_eq!(b.next_token(t0), t0 + Duration::from_millis(500));
        let mut sent = 2;
        let mut t = t0;
        // 10 seconds of asking every 10 ms: 20 more, never faster.
        for _ in 0..1000 {
            t += Duration::from_millis(10);
            if b.take(t) {
                sent += 1;
            }
        }
        assert_eq!(sent, 22);
        // Idle for a minute: only the burst is saved up.
        t += Duration::from_secs(60);
        assert_eq!(b.available(t), 2);
    }

    #[test]
    fn slow_rates_keep_a_burst_of_one_and_fast_ones_a_seconds_worth() {
        let t0 = Instant::now();
        let mut slow = Bucket::new(1, t0);
        assert!(slow.take(t0));
        assert_eq!(slow.next_token(t0), t0 + Duration::from_secs(60));
        let mut fast = Bucket::new(600, t0);
        assert_eq!(fast.available(t0), 10);
        fast.set_rate(60, t0);
        assert_eq!(fast.available(t0), 1);
    }

    #[test]
    fn backoff_waits_doubling_and_bounded_then_recovers() {
        let t0 = Instant::now();
        let slow = Reply::local(421, "4.7.0", "slow down");
        let base = Limits {
            max_connections: Some(8),
            max_messages_per_connection: Some(5),
            max_messages_per_minute: Some(600),
        };
        let mut b = Backoff::default();
        assert_eq!(b.next_allowed(t0), None);
        assert_eq!(b.limit(&base, 20), base);
        assert!(b.on_slow_down(t0, &slow));
        assert_eq!(b.next_allowed(t0), Some(t0 + FIRST_WAIT));
        // The same complaint again, during the wait: nothing more.
        assert!(!b.on_slow_down(t0 + Duration::from_secs(1), &slow));
        let l = b.limit(&base, 20);
        assert_eq!(l.max_messages_per_minute, Some(300));
        assert_eq!(l.max_connections, Some(4));
        assert_eq!(l.max_messages_per_connection, Some(5));
        assert_eq!(b.reason(), Some("421 4.7.0 slow down"));
        // Again after the wait: twice as long, halved again.
        let mut t = t0 + FIRST_WAIT;
        assert_eq!(b.next_allowed(t), None);
        assert!(b.on_slow_down(t, &slow));
        assert_eq!(b.next_allowed(t), Some(t + 2 * FIRST_WAIT));
        assert_eq!(b.limit(&base, 20).max_messages_per_minute, Some(150));
        // Bounded: the wait stops at MAX_WAIT, the limits at 1.
        for _ in 0..20 {
            t += MAX_WAIT;
            b.on_slow_down(t, &slow);
        }
        assert_eq!(b.next_allowed(t), Some(t + MAX_WAIT));
        let l = b.limit(&base, 20);
        assert_eq!(l.max_messages_per_minute, Some(1));
        assert_eq!(l.max_connections, Some(1));
        // Successes during the wait do not count; after it, they bring the
        // limits back a level per RECOVER_AFTER.
        assert!(!b.on_success(t));
        t += MAX_WAIT;
        let level = b.level();
        for _ in 0..RECOVER_AFTER - 1 {
            assert!(!b.on_success(t));
        }
        assert!(b.on_success(t));
        assert_eq!(b.level(), level - 1);
        for _ in 0..RECOVER_AFTER * level {
            b.on_success(t);
        }
        assert_eq!(b.level(), 0);
        assert_eq!(b.limit(&base, 20), base);
        assert_eq!(b.reason(), None);
        // Recovered: the next wait starts from the first again.
        b.on_slow_down(t, &slow);
        assert_eq!(b.next_allowed(t), Some(t + FIRST_WAIT));
    }

    #[test]
    fn an_unlimited_hop_backs_off_from_a_default_rate_and_the_host_limit() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        b.on_slow_down(t0, &Reply::local(421, "", "busy"));
        let l = b.limit(&Limits::default(), 20);
        assert_eq!(l.max_messages_per_minute, Some(UNLIMITED_BACKOFF_RATE / 2));
        assert_eq!(l.max_connections, Some(10));
        assert_eq!(l.max_messages_per_connection, None);
    }
}
