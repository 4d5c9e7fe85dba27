//! Figures of a run and how they are printed (text or one JSON line).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use super::procstat::ServerFigures;

/// What the load generator did.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Messages asked for.
    pub messages: u64,
    /// Messages whose final dot was written.
    pub sent: u64,
    /// Messages with a 2xx reply to the final dot.
    pub accepted: u64,
    /// Recipients accepted in accepted messages (what the next hop must get).
    pub accepted_rcpts: u64,
    /// Bytes of the accepted messages (headers and body, unstuffed).
    pub accepted_bytes: u64,
    /// Messages that ended otherwise (refused, connection lost).
    pub failed: u64,
    /// From the first connect to the last final reply.
    pub elapsed: Duration,
    /// End of data (final dot written) to the reply, in microseconds.
    pub latencies_us: Vec<u32>,
    /// What went wrong, by kind.
    pub errors: BTreeMap<String, u64>,
    pub connections_opened: u64,
    /// Stopped by --max-time.
    pub timed_out: bool,
    pub tls: TlsFigures,
    pub probe: ProbeFigures,
    /// CPU and memory of the server processes, when watched.
    pub server: Option<ServerFigures>,
}

/// The TLS handshakes of the load sessions.
#[derive(Debug, Default)]
pub struct TlsFigures {
    /// Completed handshakes, and how many of them resumed a session.
    pub handshakes: u64,
    pub resumed: u64,
    /// From ClientHello queued (TCP connected, or the 220 to STARTTLS) to
    /// the handshake done, microseconds.
    pub handshake_us: Vec<u32>,
}

/// The plain sessions of `--plain-probe`, apart from the load.
#[derive(Debug, Default)]
pub struct ProbeFigures {
    pub accepted: u64,
    pub accepted_rcpts: u64,
    pub failed: u64,
    pub connections_opened: u64,
    /// End of data to the reply, microseconds.
    pub latencies_us: Vec<u32>,
}

impl LoadResult {
    pub fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn accepted_per_s(&self) -> f64 {
        rate(self.accepted, self.elapsed)
    }

    pub fn latency(&mut self) -> Latency {
        Latency::of(&mut self.latencies_us)
    }

    /// Decimal megabytes (10^6 B) of accepted messages per second.
    pub fn accepted_mb_per_s(&self) -> f64 {
        rate(self.accepted_bytes, self.elapsed) / 1e6
    }

    pub fn handshakes_per_s(&self) -> f64 {
        rate(self.tls.handshakes, self.elapsed)
    }

    /// Server CPU microseconds per accepted message.
    pub fn server_cpu_us(&self) -> Option<f64> {
        let cpu = self.server.and_then(|s| s.cpu_s)?;
        (self.accepted > 0).then(|| cpu * 1e6 / self.accepted as f64)
    }
}

pub fn rate(count: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        count as f64 / d.as_secs_f64()
    }
}

/// Percentiles in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub samples: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(us: &mut [u32]) -> Latency {
        if us.is_empty() {
            return Latency::default();
        }
        us.sort_unstable();
        let at = |p: f64| {
            let rank = ((p / 100.0) * us.len() as f64).ceil() as usize;
            us[rank.clamp(1, us.len()) - 1] as f64 / 1000.0
        };
        Latency {
            samples: us.len(),
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: us[us.len() - 1] as f64 / 1000.0,
        }
    }

    fn json(&self) -> Value {
        json!({
            "samples": self.samples,
            "p50": round3(self.p50),
            "p90": round3(self.p90),
            "p99": round3(self.p99),
            "max": round3(self.max),
        })
    }
}

/// The end-to-end extras.
#[derive(Debug, Default)]
pub struct E2eResult {
    /// Messages and recipients the sink received.
    pub delivered: u64,
    pub delivered_rcpts: u64,
    /// Bytes of those messages as the sink received them (dot-stuffed,
    /// without the final dot line).
    pub delivered_bytes: u64,
    /// Recipients the sink had to get: the load's and the plain probe's
    /// (the sink counts both).
    pub expected_rcpts: u64,
    /// From the first connect to the last message at the sink.
    pub delivery_elapsed: Duration,
    /// The sink has every accepted recipient.
    pub complete: bool,
    /// mailhop's VmHWM and VmRSS just before SIGTERM, bytes.
    pub peak_rss: Option<u64>,
    pub rss: Option<u64>,
    /// mailhop's user+system CPU seconds over its whole life.
    pub cpu_s: Option<f64>,
    pub exit: String,
    pub binary: String,
}

impl E2eResult {
    pub fn delivered_per_s(&self) -> f64 {
        rate(self.delivered, self.delivery_elapsed)
    }

    pub fn delivered_mb_per_s(&self) -> f64 {
        rate(self.delivered_bytes, self.delivery_elapsed) / 1e6
    }
}

/// How the run was set up, for the report.
pub struct Setup<'a> {
    pub mode: &'a str,
    pub target: String,
    pub connections: u32,
    pub messages: u64,
    pub size: usize,
    pub recipients: u32,
    pub pipelining: bool,
    pub reuse: bool,
    /// "none", "starttls" or "implicit".
    pub tls: &'static str,
    pub resumption: bool,
    /// --e2e with TLS: the generated certificate's key type.
    pub cert: Option<&'static str>,
    pub plain_probe: u32,
}

pub fn print(setup: &Setup, load: &mut LoadResult, e2e: Option<&E2eResult>, as_json: bool) {
    let lat = load.latency();
    let more = Lats {
        handshake: Latency::of(&mut load.tls.handshake_us),
        probe: Latency::of(&mut load.probe.latencies_us),
    };
    let mut out = String::new();
    if as_json {
        let mut v = to_json(setup, load, &lat, e2e);
        json_more(&mut v, setup, load, &more, e2e);
        out = format!("{v}\n");
    } else {
        text(&mut out, setup, load, &lat, e2e);
        text_more(&mut out, setup, load, &more, e2e);
    }
    // One write, and no panic when the reader has gone (`| head`).
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
}

fn text(
    out: &mut String,
    setup: &Setup,
    load: &LoadResult,
    lat: &Latency,
    e2e: Option<&E2eResult>,
) {
    let yn = |b| if b { "yes" } else { "no" };
    let _ = writeln!(
        out,
        "{} {}: connections {}, messages {}, size {} B, recipients {}, pipelining {}, reuse {}",
        setup.mode,
        setup.target,
        setup.connections,
        setup.messages,
        setup.size,
        setup.recipients,
        yn(setup.pipelining),
        yn(setup.reuse)
    );
    let _ = writeln!(
        out,
        "  accepted {} of {} ({} failed, {} not finished) in {:.3} s: {:.1} msg/s accepted{}",
        load.accepted,
        load.messages,
        load.failed,
        load.messages - load.accepted - load.failed,
        load.elapsed.as_secs_f64(),
        load.accepted_per_s(),
        if load.timed_out {
            " (stopped by --max-time)"
        } else {
            ""
        }
    );
    let _ = writeln!(out,
        "  latency end of data -> reply: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        lat.p50, lat.p90, lat.p99, lat.max, lat.samples
    );
    if let Some(e) = e2e {
        let _ = writeln!(out,
            "  delivered {} messages ({} of {} recipients) to the sink in {:.3} s: {:.1} msg/s end to end{}",
            e.delivered,
            e.delivered_rcpts,
            e.expected_rcpts,
            e.delivery_elapsed.as_secs_f64(),
            e.delivered_per_s(),
            if e.complete { "" } else { " (INCOMPLETE)" }
        );
        let mib = |b: Option<u64>| match b {
            Some(b) => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
            None => "?".to_string(),
        };
        let cpu = match e.cpu_s {
            Some(s) if load.accepted > 0 => format!(
                "{s:.2} s CPU ({:.1} us per accepted message)",
                s * 1e6 / load.accepted as f64
            ),
            Some(s) => format!("{s:.2} s CPU"),
            None => "CPU ?".to_string(),
        };
        let _ = writeln!(
            out,
            "  mailhop: peak RSS {} (VmHWM), RSS at end {}, {cpu}, exit: {}",
            mib(e.peak_rss),
            mib(e.rss),
            e.exit
        );
    }
}

/// The latencies besides end of data.
struct Lats {
    handshake: Latency,
    probe: Latency,
}

/// Bytes, TLS, the plain probe, the server processes; then the errors.
fn text_more(
    out: &mut String,
    setup: &Setup,
    load: &LoadResult,
    l: &Lats,
    e2e: Option<&E2eResult>,
) {
    let _ = write!(
        out,
        "  bytes: {:.2} MB/s accepted ({} B per message)",
        load.accepted_mb_per_s(),
        setup.size
    );
    match e2e {
        Some(e) => {
            let _ = writeln!(out, ", {:.2} MB/s end to end", e.delivered_mb_per_s());
        }
        None => out.push('\n'),
    }
    if setup.tls != "none" {
        let t = &load.tls;
        let cert = setup
            .cert
            .map(|c| format!(", {c} certificate"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  tls {} (resumption {}{cert}): {} handshakes ({} resumed), {:.1} handshakes/s; \
             handshake p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            setup.tls,
            if setup.resumption { "on" } else { "off" },
            t.handshakes,
            t.resumed,
            load.handshakes_per_s(),
            l.handshake.p50,
            l.handshake.p99,
            l.handshake.max
        );
    }
    if setup.plain_probe > 0 {
        let p = &load.probe;
        let _ = writeln!(
            out,
            "  plain probe ({} sessions): {} accepted, {} failed; end of data -> reply \
             p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
            setup.plain_probe,
            p.accepted,
            p.failed,
            l.probe.p50,
            l.probe.p99,
            l.probe.max,
            l.probe.samples
        );
    }
    if let Some(s) = load.server {
        let cpu = match (s.cpu_s, load.server_cpu_us()) {
            (Some(c), Some(us)) => format!("{c:.2} s CPU, {us:.1} us per accepted message"),
            (Some(c), None) => format!("{c:.2} s CPU"),
            _ => "CPU ? (a process ended)".to_string(),
        };
        let mib = |b: Option<u64>| {
            b.map(|b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)))
                .unwrap_or_else(|| "?".into())
        };
        let _ = writeln!(
            out,
            "  server ({} processes at the end): {cpu} over the load; peak RSS {}, peak PSS {} \
             (sampled every 100 ms, summed)",
            s.processes,
            mib(s.peak_rss),
            mib(s.peak_pss)
        );
    }
    let _ = writeln!(
        out,
        "  errors: {} ({} connections opened)",
        load.error_count(),
        load.connections_opened + load.probe.connections_opened
    );
    for (kind, n) in &load.errors {
        let _ = writeln!(out, "    {n:>8}  {kind}");
    }
}

fn json_more(v: &mut Value, setup: &Setup, load: &LoadResult, l: &Lats, e2e: Option<&E2eResult>) {
    let o = v.as_object_mut().expect("an object");
    o.insert("accepted_bytes".into(), json!(load.accepted_bytes));
    o.insert(
        "accepted_mb_per_s".into(),
        json!(round3(load.accepted_mb_per_s())),
    );
    o.insert("tls_mode".into(), json!(setup.tls));
    if setup.tls != "none" {
        let t = &load.tls;
        o.insert(
            "tls".into(),
            json!({
                "resumption": setup.resumption,
                "cert": setup.cert,
                "handshakes": t.handshakes,
                "resumed": t.resumed,
                "handshakes_per_s": round3(load.handshakes_per_s()),
                "handshake_ms": l.handshake.json(),
            }),
        );
    }
    if setup.plain_probe > 0 {
        let p = &load.probe;
        o.insert(
            "plain_probe".into(),
            json!({
                "sessions": setup.plain_probe,
                "accepted": p.accepted,
                "failed": p.failed,
                "connections_opened": p.connections_opened,
                "latency_ms": l.probe.json(),
            }),
        );
    }
    if let Some(s) = load.server {
        o.insert(
            "server".into(),
            json!({
                "cpu_s": s.cpu_s.map(round3),
                "cpu_us_per_accepted": load.server_cpu_us().map(round3),
                "peak_rss_bytes": s.peak_rss,
                "peak_pss_bytes": s.peak_pss,
                "processes": s.processes,
            }),
        );
    }
    if let Some(e) = e2e {
        o.insert("delivered_bytes".into(), json!(e.delivered_bytes));
        o.insert(
            "delivered_mb_per_s".into(),
            json!(round3(e.delivered_mb_per_s())),
        );
        o.insert("expected_rcpts".into(), json!(e.expected_rcpts));
    }
}

fn to_json(setup: &Setup, load: &LoadResult, lat: &Latency, e2e: Option<&E2eResult>) -> Value {
    let mut v = json!({
        "mode": setup.mode,
        "target": setup.target,
        "connections": setup.connections,
        "messages": setup.messages,
        "size": setup.size,
        "recipients": setup.recipients,
        "pipelining": setup.pipelining,
        "reuse": setup.reuse,
        "sent": load.sent,
        "accepted": load.accepted,
        "accepted_rcpts": load.accepted_rcpts,
        "failed": load.failed,
        "elapsed_s": round3(load.elapsed.as_secs_f64()),
        "accepted_per_s": round3(load.accepted_per_s()),
        "latency_ms": lat.json(),
        "errors": load.error_count(),
        "error_kinds": load.errors,
        "connections_opened": load.connections_opened,
        "timed_out": load.timed_out,
    });
    if let Some(e) = e2e {
        let o = v.as_object_mut().expect("an object");
        o.insert("delivered".into(), json!(e.delivered));
        o.insert("delivered_rcpts".into(), json!(e.delivered_rcpts));
        o.insert(
            "delivery_elapsed_s".into(),
            json!(round3(e.delivery_elapsed.as_secs_f64())),
        );
        o.insert("delivered_per_s".into(), json!(round3(e.delivered_per_s())));
        o.insert("complete".into(), json!(e.complete));
        o.insert("peak_rss_bytes".into(), json!(e.peak_rss));
        o.insert("rss_end_bytes".into(), json!(e.rss));
        o.insert("mailhop_cpu_s".into(), json!(e.cpu_s.map(round3)));
        o.insert(
            "cpu_us_per_accepted".into(),
            json!(e
                .cpu_s
                .filter(|_| load.accepted > 0)
                .map(|s| round3(s * 1e6 / load.accepted as f64))),
        );
        o.insert("mailhop_exit".into(), json!(e.exit));
        o.insert("mailhop_binary".into(), json!(e.binary));
    }
    v
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
