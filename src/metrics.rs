//! What `GET /metrics` shows: the relay's counters, gauges and histograms,
//! kept by the loop as things happen and encoded by `prometheus-client`.
//!
//! Counters of mail move only when the queue's transaction that records
//! the same fact has committed, so after a run they equal the rows of the
//! `deliveries` and `attempts` views.

use hashbrown::HashMap;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::smtp::server::Sent;

/// Next hops with a label of their own; later ones count as `other`, so a
/// relay that talks to the whole world keeps a bounded set of series.
pub const MAX_HOP_LABELS: usize = 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplyLabels {
    command: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    inbound,
    outbound,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StsLabels {
    mode: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HopLabels {
    next_hop: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HopOutcomeLabels {
    next_hop: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// How a recipient's attempt ended, as the `outcome` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Deferred,
    Bounced,
    Expired,
}

/// The counters of one next hop, looked up once per hop name.
#[derive(Clone)]
struct HopCounters {
    attempts: Counter,
    delivered: Counter,
    deferred: Counter,
    bounced: Counter,
    expired: Counter,
}

/// Pending recipients by status, kept from what the loop does (and
/// recounted when another process changed the queue).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Depth {
    pub queued: i64,
    pub deferred: i64,
    pub active: i64,
    pub held: i64,
}

impl From<[i64; 4]> for Depth {
    /// As `Queue::pending_counts` gives them: queued, deferred, active, held.
    fn from([queued, deferred, active, held]: [i64; 4]) -> Depth {
        Depth {
            queued,
            deferred,
            active,
            held,
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub inbound_open: Gauge,
    pub inbound_accepted: Counter,
    refused: Family<ReasonLabels, Counter>,
    replies: Family<ReplyLabels, Counter>,
    pub messages_accepted: Counter,
    pub recipients_accepted: Counter,
    pub bytes_received: Counter,
    handshakes: Family<DirectionLabels, Counter>,
    handshake_failures: Family<DirectionLabels, Counter>,
    auth: Family<ResultLabels, Counter>,
    dkim: Family<ResultLabels, Counter>,
    outbound_connections: Family<ResultLabels, Counter>,
    pub outbound_open: Gauge,
    pub outbound_transactions: Counter,
    attempts: Family<HopLabels, Counter>,
    recipients: Family<HopOutcomeLabels, Counter>,
    hops: HashMap<String, HopCounters>,
    depth: Family<StatusLabels, Gauge>,
    pub oldest_pending: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub commit_duration: Histogram,
    pub commit_batch: Histogram,
    pub turn_duration: Histogram,
    dns_queries: Family<TypeLabels, Counter>,
    pub dns_errors: Counter,
    pub dns_cache_hits: Counter,
    reloads: Family<ResultLabels, Counter>,
    mta_sts_results: Family<StsLabels, Counter>,
    mta_sts_fetches: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("mailhop");
        let m = Metrics {
            inbound_open: Gauge::default(),
            inbound_accepted: Counter::default(),
            refused: Family::default(),
            replies: Family::default(),
            messages_accepted: Counter::default(),
            recipients_accepted: Counter::default(),
            bytes_received: Counter::default(),
            handshakes: Family::default(),
            handshake_failures: Family::default(),
            auth: Family::default(),
            dkim: Family::default(),
            outbound_connections: Family::default(),
            outbound_open: Gauge::default(),
            outbound_transactions: Counter::default(),
            attempts: Family::default(),
            recipients: Family::default(),
            hops: HashMap::new(),
            depth: Family::default(),
            oldest_pending: Gauge::default(),
            // 0.25 ms to 8 s: an fsync on a good disk to a stalled one.
            commit_duration: Histogram::new(exponential_buckets(0.00025, 2.0, 16)),
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            // 50 µs to 3.3 s.
            turn_duration: Histogram::new(exponential_buckets(0.00005, 2.0, 17)),
            dns_queries: Family::default(),
            dns_errors: Counter::default(),
            dns_cache_hits: Counter::default(),
            reloads: Family::default(),
            mta_sts_results: Family::default(),
            mta_sts_fetches: Family::default(),
            registry: Registry::default(),
        };
        let build = Family::<VersionLabels, Gauge>::default();
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("build_info", "mailhop's version", build);
        r.register(
            "inbound_sessions",
            "Inbound SMTP sessions open now",
            m.inbound_open.clone(),
        );
        r.register(
            "inbound_connections",
            "Inbound SMTP connections accepted",
            m.inbound_accepted.clone(),
        );
        r.register(
            "inbound_refused",
            "Inbound connections turned away, by reason",
            m.refused.clone(),
        );
        r.register(
            "smtp_replies",
            "SMTP replies sent to clients, by command answered and class",
            m.replies.clone(),
        );
        r.register(
            "messages_accepted",
            "Messages committed to the queue and answered 250",
            m.messages_accepted.clone(),
        );
        r.register(
            "recipients_accepted",
            "Recipients of the messages accepted",
            m.recipients_accepted.clone(),
        );
        r.register(
            "received_bytes",
            "Octets of the messages accepted, as stored",
            m.bytes_received.clone(),
        );
        r.register(
            "tls_handshakes",
            "TLS handshakes completed",
            m.handshakes.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed",
            m.handshake_failures.clone(),
        );
        r.register("auth", "SMTP AUTH attempts, by result", m.auth.clone());
        r.register(
            "dkim_signatures",
            "Committed messages from trusted clients, by DKIM result (signed, unsigned, failed)",
            m.dkim.clone(),
        );
        r.register(
            "outbound_connections",
            "Outbound connections to next hops, by result",
            m.outbound_connections.clone(),
        );
        r.register(
            "outbound_sessions",
            "Outbound SMTP sessions open now",
            m.outbound_open.clone(),
        );
        r.register(
            "outbound_transactions",
            "Mail transactions started with next hops",
            m.outbound_transactions.clone(),
        );
        r.register(
            "delivery_attempts",
            "Recipient delivery attempts (rows of the attempts view), by next hop",
            m.attempts.clone(),
        );
        r.register(
            "recipients",
            "Recipient outcomes, by next hop",
            m.recipients.clone(),
        );
        r.register(
            "queue_recipients",
            "Pending recipients in the queue, by status",
            m.depth.clone(),
        );
        r.register(
            "queue_oldest_pending_age_seconds",
            "Age of the oldest message with a pending recipient",
            m.oldest_pending.clone(),
        );
        r.register(
            "commit_duration_seconds",
            "Time of one group commit of the queue",
            m.commit_duration.clone(),
        );
        r.register(
            "commit_batch_size",
            "Messages stored by one group commit",
            m.commit_batch.clone(),
        );
        r.register(
            "loop_turn_duration_seconds",
            "Time of one event loop turn, from the end of poll to the next poll",
            m.turn_duration.clone(),
        );
        r.register(
            "dns_queries",
            "DNS queries sent, by type",
            m.dns_queries.clone(),
        );
        r.register(
            "dns_errors",
            "DNS lookups that failed (timeouts, server failures)",
            m.dns_errors.clone(),
        );
        r.register(
            "dns_cache_hits",
            "DNS lookups answered from the cache",
            m.dns_cache_hits.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads (SIGHUP), by result",
            m.reloads.clone(),
        );
        r.register(
            "mta_sts_results",
            "TLS with MX hosts under an MTA-STS policy, per session: the policy's mode \
             and the RFC 8460 result type (or success)",
            m.mta_sts_results.clone(),
        );
        r.register(
            "mta_sts_fetches",
            "MTA-STS policy fetches, by result",
            m.mta_sts_fetches.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The OpenMetrics text exposition, ending in `# EOF`.
    pub fn encode_openmetrics(&self, out: &mut String) {
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(out, &self.registry);
    }

    /// The Prometheus text format (0.0.4), for scrapers that do not ask
    /// for OpenMetrics: there a counter's HELP and TYPE name the sample
    /// (`x_total`), and there is no `# EOF` or `# UNIT`.
    pub fn encode_text(&self, out: &mut String) {
        let mut openmetrics = String::with_capacity(16 * 1024);
        self.encode_openmetrics(&mut openmetrics);
        to_text_format(&openmetrics, out);
    }

    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts the replies a session wrote; AUTH's 235 and 535 are also
    /// AUTH results.
    pub fn replies(&self, sent: impl Iterator<Item = Sent>) {
        for s in sent {
            let class = match s.code / 100 {
                2 => "2xx",
                3 => "3xx",
                4 => "4xx",
                _ => "5xx",
            };
            self.replies
                .get_or_create(&ReplyLabels {
                    command: s.verb.name(),
                    class,
                })
                .inc();
            if s.verb == crate::smtp::server::Verb::Auth {
                let result = match s.code {
                    235 => "success",
                    535 => "failure",
                    _ => continue,
                };
                self.auth.get_or_create(&ResultLabels { result }).inc();
            }
        }
    }

    pub fn dkim(&self, outcome: &crate::dkim::Outcome) {
        let result = match outcome {
            crate::dkim::Outcome::Signed { .. } => "signed",
            crate::dkim::Outcome::Unsigned(_) => "unsigned",
            crate::dkim::Outcome::Failed(_) => "failed",
        };
        self.dkim.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn handshake(&self, direction: Direction, ok: bool) {
        let family = if ok {
            &self.handshakes
        } else {
            &self.handshake_failures
        };
        family.get_or_create(&DirectionLabels { direction }).inc();
    }

    pub fn outbound_connection(&self, connected: bool) {
        let result = if connected { "connected" } else { "failed" };
        self.outbound_connections
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// One committed recipient outcome; `attempted`: it also made a row in
    /// `attempts`.
    pub fn outcome(&mut self, next_hop: &str, outcome: Outcome, attempted: bool) {
        let hop = self.hop(next_hop);
        if attempted {
            hop.attempts.inc();
        }
        match outcome {
            Outcome::Delivered => hop.delivered.inc(),
            Outcome::Deferred => hop.deferred.inc(),
            Outcome::Bounced => hop.bounced.inc(),
            Outcome::Expired => hop.expired.inc(),
        };
    }

    fn hop(&mut self, next_hop: &str) -> &HopCounters {
        let own = self.hops.contains_key(next_hop) || self.hops.len() < MAX_HOP_LABELS;
        let key = if own { next_hop } else { "other" };
        if !self.hops.contains_key(key) {
            let counters = self.counters_for(key);
            self.hops.insert(key.to_string(), counters);
        }
        &self.hops[key]
    }

    fn counters_for(&self, label: &str) -> HopCounters {
        let outcome = |outcome| {
            self.recipients.get_or_create_owned(&HopOutcomeLabels {
                next_hop: label.to_string(),
                outcome,
            })
        };
        HopCounters {
            attempts: self.attempts.get_or_create_owned(&HopLabels {
                next_hop: label.to_string(),
            }),
            delivered: outcome("delivered"),
            deferred: outcome("deferred"),
            bounced: outcome("bounced"),
            expired: outcome("expired"),
        }
    }

    pub fn set_depth(&self, depth: Depth) {
        for (status, n) in [
            ("queued", depth.queued),
            ("deferred", depth.deferred),
            ("active", depth.active),
            ("held", depth.held),
        ] {
            self.depth.get_or_create(&StatusLabels { status }).set(n);
        }
    }

    pub fn dns_query(&self, r#type: &'static str) {
        self.dns_queries.get_or_create(&TypeLabels { r#type }).inc();
    }

    /// Both labels come from fixed sets: no domain names in series.
    pub fn mta_sts_result(&self, mode: &'static str, result: &'static str) {
        self.mta_sts_results
            .get_or_create(&StsLabels { mode, result })
            .inc();
    }

    pub fn mta_sts_fetch(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.mta_sts_fetches
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }
}

/// OpenMetrics text to Prometheus text format 0.0.4 (see `encode_text`).
fn to_text_format(openmetrics: &str, out: &mut String) {
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            if let Some(h) = help.replace(line) {
                out.push_str(h);
                out.push('\n');
            }
            continue;
        }
        let counter = line
            .strip_prefix("# TYPE ")
            .and_then(|t| t.strip_suffix(" counter"));
        match (counter, help.take()) {
            (Some(name), help) => {
                if let Some(h) = help {
                    let doc = h.strip_prefix("# HELP ").unwrap_or(h);
                    let doc = doc.strip_prefix(name).unwrap_or(doc);
                    out.push_str(&format!("# HELP {name}_total{doc}\n"));
                }
                out.push_str(&format!("# TYPE {name}_total counter\n"));
            }
            (None, help) => {
                if let Some(h) = help {
                    out.push_str(h);
                    out.push('\n');
                }
                out.push_str(line);
                out.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_names_counters_by_their_samples() {
        let om = "# HELP mailhop_x Things.\n# TYPE mailhop_x counter\nmailhop_x_total 3\n\
                  # HELP mailhop_g Now.\n# TYPE mailhop_g gauge\nmailhop_g 1\n# EOF\n";
        let mut text = String::new();
        to_text_format(om, &mut text);
        assert_eq!(
            text,
            "# HELP mailhop_x_total Things.\n# TYPE mailhop_x_total counter\nmailhop_x_total 3\n\
             # HELP mailhop_g Now.\n# TYPE mailhop_g gauge\nmailhop_g 1\n"
        );
    }

    #[test]
    fn next_hops_past_the_bound_count_as_other() {
        let mut m = Metrics::new();
        for i in 0..MAX_HOP_LABELS + 5 {
            m.outcome(&format!("hop{i}.test"), Outcome::Delivered, true);
        }
        m.outcome("hop0.test", Outcome::Deferred, true);
        let mut text = String::new();
        m.encode_text(&mut text);
        let attempts: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("mailhop_delivery_attempts_total{"))
            .collect();
        assert_eq!(attempts.len(), MAX_HOP_LABELS + 1, "{attempts:?}");
        assert!(text.contains("mailhop_delivery_attempts_total{next_hop=\"other\"} 5\n"));
        assert!(text.contains("mailhop_delivery_attempts_total{next_hop=\"hop0.test\"} 2\n"));
        assert!(m.hops.len() <= MAX_HOP_LABELS + 1);
    }
}
