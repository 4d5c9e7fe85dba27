//! Traffic shaping on the loop: the `[shaping]` limits and the back-off of
//! each next hop that has any (`crate::shaping` decides; this keeps the
//! state and the timers). A hop with no limits has no entry, and its mail
//! costs nothing here: every per-message path first asks whether any hop is
//! shaped at all. A throttled hop has one deadline, the time its next token
//! (or the end of its wait) is due, never one per message.

use std::collections::BTreeSet;
use std::time::{Instant, SystemTime};

use hashbrown::{HashMap, HashSet};
use log::{info, warn};

use super::Server;
use crate::queue::ShapeUpdate;
use crate::shaping::{self, Backoff, Bucket, Limits, Rule};
use crate::smtp::reply::Reply;

/// One shaped next hop.
struct HopShape {
    /// As configured (`[shaping]`); all `None` for a hop shaped only
    /// because it asked us to slow down.
    base: Limits,
    /// In force: `base` lowered by the back-off.
    limits: Limits,
    bucket: Option<Bucket>,
    backoff: Backoff,
    /// Transactions given to each of its connections (by slab key), with
    /// `max_messages_per_connection`.
    per_conn: HashMap<usize, usize>,
    /// Its entry in `Shaper::wakes`.
    wake: Option<Instant>,
    /// What the `hosts` view was last told.
    shown: Option<ShapeUpdate>,
    /// The queue was told to hold its mail back until the end of the
    /// current wait.
    held: bool,
}

/// Next hops remembered as having no limits, at most (then forgotten and
/// looked up again: a match against a handful of rules).
const MAX_UNSHAPED_REMEMBERED: usize = 10_000;

#[derive(Default)]
pub(super) struct Shaper {
    rules: Vec<Rule>,
    hops: HashMap<String, HopShape>,
    /// Hops looked up and found without limits.
    unshaped: HashSet<String>,
    /// When each throttled hop may send again.
    wakes: BTreeSet<(Instant, String)>,
}

impl Shaper {
    /// Whether any hop is shaped now; when not, nothing here runs per
    /// message.
    pub(super) fn is_active(&self) -> bool {
        !self.hops.is_empty()
    }

    pub(super) fn next_wake(&self) -> Option<Instant> {
        self.wakes.first().map(|(t, _)| *t)
    }

    fn set_wake(&mut self, hop: &str, at: Instant) {
        let Some(shape) = self.hops.get_mut(hop) else {
            return;
        };
        if shape.wake.is_some_and(|w| w <= at) {
            return; // an earlier wake dispatches the hop anyway
        }
        if let Some(old) = shape.wake.replace(at) {
            self.wakes.remove(&(old, hop.to_string()));
        }
        self.wakes.insert((at, hop.to_string()));
    }
}

/// What a connection of a shaped hop may do next.
pub(super) enum Gate {
    Send,
    /// No token, or the hop waits after a slow-down: park until woken.
    Wait,
    /// `max_messages_per_connection` reached: QUIT, a new one follows.
    Quit,
}

impl Server {
    /// `hop` waits after a slow-down until `until`: its waiting jobs go
    /// back to the queue until then, without an attempt, and its queued
    /// mail waits as long (as for a failing hop).
    pub(super) fn hold_back_shaped(&mut self, hop: &str, until: SystemTime) {
        let jobs: Vec<super::outbound::Job> = self
            .jobs
            .get_mut(hop)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default();
        let text = format!(
            "held back, {hop} asked us to slow down (until {})",
            crate::queue::iso8601(until)
        );
        let first = self
            .shaper
            .hops
            .get_mut(hop)
            .is_some_and(|s| !std::mem::replace(&mut s.held, true));
        if first {
            self.turn.hold_backs.push(crate::queue::HoldBack {
                next_hop: hop.to_string(),
                until,
                reply: format!("451 4.4.5 {text}"),
            });
        }
        let reply = Reply::local(451, "4.4.5", &text);
        for job in jobs {
            self.settle_job(job, &[], reply.clone(), None, Some(until));
        }
    }

    /// New `[shaping]` rules (start-up and reload): hops already known get
    /// their new limits; back-offs in progress stay.
    pub(super) fn set_shaping(&mut self, rules: Vec<Rule>) {
        self.shaper.rules = rules;
        self.shaper.unshaped.clear();
        let hops: Vec<String> = self.shaper.hops.keys().cloned().collect();
        for hop in hops {
            let base = shaping::lookup(&self.shaper.rules, &hop)
                .copied()
                .unwrap_or_default();
            if let Some(shape) = self.shaper.hops.get_mut(&hop) {
                shape.base = base;
            }
            self.reshape(&hop);
        }
    }

    /// Whether `hop` is shaped; looks its limits up once.
    pub(super) fn is_shaped(&mut self, hop: &str) -> bool {
        if self.shaper.hops.is_empty() && self.shaper.rules.is_empty() {
            return false;
        }
        if self.shaper.hops.contains_key(hop) {
            return true;
        }
        if self.shaper.rules.is_empty() || self.shaper.unshaped.contains(hop) {
            return false;
        }
        match shaping::lookup(&self.shaper.rules, hop).filter(|l| !l.is_unlimited()) {
            Some(base) => {
                let base = *base;
                self.insert_shape(hop, base);
                self.reshape(hop);
                true
            }
            None => {
                // A cache of lookups, bounded: a relay talks to the world.
                if self.shaper.unshaped.len() >= MAX_UNSHAPED_REMEMBERED {
                    self.shaper.unshaped.clear();
                }
                self.shaper.unshaped.insert(hop.to_string());
                false
            }
        }
    }

    fn insert_shape(&mut self, hop: &str, base: Limits) {
        self.shaper.unshaped.remove(hop);
        self.shaper.hops.insert(
            hop.to_string(),
            HopShape {
                base,
                limits: Limits::default(),
                bucket: None,
                backoff: Backoff::default(),
                per_conn: HashMap::new(),
                wake: None,
                shown: None,
                held: false,
            },
        );
    }

    /// Recomputes the limits in force on `hop`, and tells the `hosts` view
    /// when they (or their reason) changed. A hop left without limits or
    /// back-off loses its entry.
    fn reshape(&mut self, hop: &str) {
        let per_host = self.limits.out_per_host;
        let (now, wall) = (self.now, self.wall);
        let Some(shape) = self.shaper.hops.get_mut(hop) else {
            return;
        };
        let mut limits = shape.backoff.limit(&shape.base, per_host);
        limits.max_connections = limits.max_connections.map(|n| n.min(per_host));
        shape.limits = limits;
        match (limits.max_messages_per_minute, shape.bucket.as_mut()) {
            (None, _) => shape.bucket = None,
            (Some(rate), Some(bucket)) => bucket.set_rate(rate, now),
            (Some(rate), None) => shape.bucket = Some(Bucket::new(rate, now)),
        }
        let reason = match (shape.backoff.reason(), shape.backoff.next_allowed(now)) {
            (Some(reply), Some(until)) => Some(format!(
                "{reply} (backing off until {})",
                crate::queue::iso8601(wall + until.saturating_duration_since(now))
            )),
            (Some(reply), None) => Some(format!(
                "{reply} (recovering: limits halved {} time(s))",
                shape.backoff.level()
            )),
            (None, _) if !shape.base.is_unlimited() => Some("config".to_string()),
            (None, _) => None,
        };
        let update = ShapeUpdate {
            next_hop: hop.to_string(),
            rate_limit: limits.max_messages_per_minute,
            connection_limit: limits
                .max_connections
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            reason,
        };
        if shape.shown.as_ref() != Some(&update) {
            shape.shown = Some(update.clone());
            self.turn.shaping.push(update);
        }
        if limits.is_unlimited() && shape.backoff.level() == 0 {
            if let Some(wake) = shape.wake {
                self.shaper.wakes.remove(&(wake, hop.to_string()));
            }
            self.shaper.hops.remove(hop);
        }
    }

    /// The most connections `hop` may have now (`None`: unshaped), and
    /// how many new ones its tokens are worth (`starting` ones already
    /// wait for theirs). Throttled: the hop is woken when it may send.
    pub(super) fn shaped_room(&mut self, hop: &str, starting: usize) -> Option<(usize, usize)> {
        if !self.is_shaped(hop) {
            return None;
        }
        let now = self.now;
        let shape = self.shaper.hops.get_mut(hop)?;
        let cap = shape
            .limits
            .max_connections
            .unwrap_or(self.limits.out_per_host);
        if let Some(until) = shape.backoff.next_allowed(now) {
            self.shaper.set_wake(hop, until);
            return Some((cap, 0));
        }
        let tokens = match shape.bucket.as_mut() {
            None => usize::MAX,
            Some(bucket) => {
                let n = bucket.available(now);
                if n == 0 {
                    let at = bucket.next_token(now);
                    self.shaper.set_wake(hop, at);
                }
                n
            }
        };
        Some((cap, tokens.saturating_sub(starting)))
    }

    /// A paced hop keeps at most a minute's worth of its mail in memory:
    /// leased jobs are few (`MAX_JOBS`) and shared by every hop, and a slow
    /// hop with a backlog must not hold them all. The rest goes back to the
    /// queue without an attempt, each due about when the bucket would
    /// reach it.
    pub(super) fn trim_shaped_backlog(&mut self, hop: &str) {
        if !self.is_shaped(hop) {
            return;
        }
        let Some(rate) = self
            .shaper
            .hops
            .get(hop)
            .and_then(|s| s.limits.max_messages_per_minute)
        else {
            return;
        };
        let keep = (rate as usize).clamp(1, super::scheduler::MAX_JOBS / 4);
        let Some(queue) = self.jobs.get_mut(hop) else {
            return;
        };
        if queue.len() <= keep {
            return;
        }
        let excess: Vec<super::outbound::Job> = queue.drain(keep..).collect();
        info!(
            "{hop}: {} message(s) beyond a minute's worth at {rate} a minute go back to the queue",
            excess.len()
        );
        let reply = Reply::local(
            451,
            "4.4.5",
            &format!("held back by [shaping]: {hop} takes {rate} message(s) a minute"),
        );
        for (i, job) in excess.into_iter().enumerate() {
            let secs = ((keep + i) as u64 * 60) / u64::from(rate);
            let at = self.wall + std::time::Duration::from_secs(secs.max(1));
            self.settle_job(job, &[], reply.clone(), None, Some(at));
        }
    }

    /// Until when a slow-down keeps `hop` from sending, as wall time.
    pub(super) fn backing_off_until(&self, hop: &str) -> Option<SystemTime> {
        if self.shaper.hops.is_empty() {
            return None;
        }
        let until = self.shaper.hops.get(hop)?.backoff.next_allowed(self.now)?;
        Some(self.wall + until.saturating_duration_since(self.now))
    }

    /// Before a connection of `hop` (slab key `key`) takes a job: whether
    /// it may. Takes the token and counts the transaction when it may.
    pub(super) fn gate(&mut self, hop: &str, key: usize) -> Gate {
        if self.shaper.hops.is_empty() {
            return Gate::Send;
        }
        let now = self.now;
        let Some(shape) = self.shaper.hops.get_mut(hop) else {
            return Gate::Send;
        };
        if let Some(until) = shape.backoff.next_allowed(now) {
            self.shaper.set_wake(hop, until);
            return Gate::Wait;
        }
        let sent = shape.per_conn.get(&key).copied().unwrap_or(0);
        if shape
            .limits
            .max_messages_per_connection
            .is_some_and(|max| sent >= max)
        {
            return Gate::Quit;
        }
        if let Some(bucket) = shape.bucket.as_mut() {
            if !bucket.take(now) {
                let at = bucket.next_token(now);
                self.shaper.set_wake(hop, at);
                return Gate::Wait;
            }
        }
        if shape.limits.max_messages_per_connection.is_some() {
            shape.per_conn.insert(key, sent + 1);
        }
        Gate::Send
    }

    /// A connection of `hop` is gone: its transaction count goes too.
    pub(super) fn shaped_conn_closed(&mut self, hop: &str, key: usize) {
        if let Some(shape) = self.shaper.hops.get_mut(hop) {
            shape.per_conn.remove(&key);
        }
    }

    /// Hops whose token or wait is due are dispatched again.
    pub(super) fn fire_shaping(&mut self) {
        while let Some((when, hop)) = self.shaper.wakes.first().cloned() {
            if when > self.now {
                break;
            }
            self.shaper.wakes.pop_first();
            if let Some(shape) = self.shaper.hops.get_mut(&hop) {
                shape.wake = None;
                if shape.backoff.reason().is_some()
                    && shape.backoff.next_allowed(self.now).is_none()
                {
                    // The wait is over: the view says so.
                    self.reshape(&hop);
                }
            }
            self.dispatch_soon(&hop);
        }
    }

    /// What a next hop said to one job: a slow-down backs the hop off; a
    /// success brings a backed-off hop back step by step.
    pub(super) fn shaping_reply(&mut self, hop: &str, replies: &[Reply], fallback: &Reply) {
        let slow = replies
            .iter()
            .chain(std::iter::once(fallback).filter(|_| replies.is_empty()))
            .find(|r| shaping::is_slow_down(r));
        if let Some(reply) = slow {
            return self.slow_down(hop, reply);
        }
        if self.shaper.hops.is_empty() || replies.is_empty() {
            return;
        }
        let now = self.now;
        let Some(shape) = self.shaper.hops.get_mut(hop) else {
            return;
        };
        let ok = replies.iter().any(|r| r.code / 100 == 2);
        if ok && shape.backoff.on_success(now) {
            info!("{hop}: limits raised a step after successes");
            self.reshape(hop);
        }
    }

    /// At the end of the turn (`dispatch_waiting`), as `dispatch_later`.
    fn dispatch_soon(&mut self, hop: &str) {
        if !self.to_dispatch.iter().any(|h| h == hop) {
            self.to_dispatch.push(hop.to_string());
        }
    }

    fn slow_down(&mut self, hop: &str, reply: &Reply) {
        if !self.is_shaped(hop) {
            self.insert_shape(hop, Limits::default());
        }
        let now = self.now;
        let Some(shape) = self.shaper.hops.get_mut(hop) else {
            return;
        };
        if !shape.backoff.on_slow_down(now, reply) {
            return;
        }
        shape.held = false;
        let until = shape.backoff.next_allowed(now).unwrap_or(now);
        self.shaper.set_wake(hop, until);
        self.reshape(hop);
        let limits = self
            .shaper
            .hops
            .get(hop)
            .map(|s| s.limits)
            .unwrap_or_default();
        warn!(
            "{hop} asked to slow down ({reply}): nothing for {}s, then at most {} message(s) a minute over {} connection(s)",
            until.saturating_duration_since(now).as_secs(),
            limits.max_messages_per_minute.unwrap_or(0),
            limits.max_connections.unwrap_or(0)
        );
        // Its waiting mail goes back to the queue until then.
        self.dispatch_soon(hop);
    }
}
