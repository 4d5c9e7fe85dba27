//! The command line of the load harness.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser, ValueEnum};

/// Load generator, SMTP sink and end-to-end driver for any SMTP server.
///
/// Exactly one mode: `--target HOST:PORT` (load an SMTP server), `--sink
/// PORT` (accept and count on 127.0.0.1:PORT), or `--e2e` (start a release
/// mailhop relaying to an in-process sink, load it, wait for every message
/// at the sink). Everything is bounded by `--max-time`.
#[derive(Debug, Parser)]
#[command(
    name = "cargo bench --bench load --",
    after_help = "Examples:\n  \
        cargo bench --bench load -- --e2e --connections 100 --messages 20000 --reuse\n  \
        cargo bench --bench load -- --target 127.0.0.1:2525 --connections 100 --messages 20000 --pipelining\n  \
        cargo bench --bench load -- --sink 2526 --max-time 300\n  \
        cargo bench --bench load -- --e2e --starttls --connections 100 --messages 5000 --plain-probe 4\n  \
        cargo bench --bench load -- --target 127.0.0.1:10025 --starttls --server-pid-tree $(cat /var/spool/postfix/pid/master.pid)"
)]
#[command(group(ArgGroup::new("mode").required(true).args(["target", "sink", "e2e"])))]
pub struct Args {
    /// Load the SMTP server at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_target)]
    pub target: Option<SocketAddr>,

    /// Run an SMTP sink on 127.0.0.1:PORT that accepts and counts everything.
    #[arg(long, value_name = "PORT")]
    pub sink: Option<u16>,

    /// Start target/release/mailhop relaying to an in-process sink and load it.
    #[arg(long)]
    pub e2e: bool,

    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,

    /// Messages to send in all.
    #[arg(long, short = 'm', default_value_t = 1000)]
    pub messages: u64,

    /// Message size in bytes, headers included, before dot-stuffing; a
    /// suffix K, M or G multiplies by 1024, 1024^2, 1024^3 (1K, 64K, 1M, 10M).
    #[arg(long, short = 's', default_value = "1024", value_parser = parse_size)]
    pub size: usize,

    /// Recipients per message.
    #[arg(long, short = 'r', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub recipients: u32,

    /// Send MAIL, RCPT and DATA in one write when the server offers PIPELINING.
    #[arg(long)]
    pub pipelining: bool,

    /// Send all of a connection's messages over it (else one connection per message).
    #[arg(long)]
    pub reuse: bool,

    /// STARTTLS after EHLO, EHLO again, then the transactions over TLS.
    #[arg(long, conflicts_with = "tls")]
    pub starttls: bool,

    /// Implicit TLS from the first byte (RFC 8314); with --e2e mailhop gets
    /// an `implicit_listen` for it.
    #[arg(long)]
    pub tls: bool,

    /// TLS session resumption: on keeps a client session cache so that
    /// reconnects resume; off makes every connection a full handshake.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub resumption: OnOff,

    /// --e2e with TLS: the key of the generated test certificate.
    #[arg(long, value_enum, default_value_t = CertType::Ecdsa)]
    pub cert_type: CertType,

    /// Also keep N plain (non-TLS) sessions sending one message at a time
    /// while the load runs; their latency is reported on its own.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub plain_probe: u32,

    /// --target: where the plain probe connects (default: --target; give
    /// the plain port when --tls aims at an implicit-TLS port).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_target)]
    pub probe_target: Option<SocketAddr>,

    /// --target: a server process whose CPU time and RSS are measured over
    /// the load (repeatable, or a comma list; the figures are summed).
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub server_pid: Vec<u32>,

    /// --target: like --server-pid, for PID and all its descendants (found
    /// again at every sample, so a Postfix master's children are counted).
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub server_pid_tree: Vec<u32>,

    /// Envelope sender.
    #[arg(long, default_value = "loadgen@example.com", value_parser = parse_address)]
    pub from: String,

    /// Recipient pattern; with --recipients R > 1: user1@..userR@.
    #[arg(long, default_value = "user@example.org", value_parser = parse_address)]
    pub to: String,

    /// Name given in EHLO.
    #[arg(long, default_value = "loadgen.example.com")]
    pub helo: String,

    /// Stop after this many seconds and report what was done.
    #[arg(long, default_value_t = 120.0, value_name = "SECS", value_parser = parse_secs)]
    pub max_time: f64,

    /// Print one JSON line with all the figures instead of the text report.
    #[arg(long)]
    pub json: bool,

    /// --e2e: the mailhop binary (default: found next to this bench, or built).
    #[arg(long, value_name = "PATH")]
    pub mailhop: Option<PathBuf>,

    /// --e2e: an extra line for mailhop's config (repeatable), e.g. 'max_hops = 50'.
    #[arg(long, value_name = "TOML")]
    pub mailhop_set: Vec<String>,

    /// --e2e: keep the temporary directory (config, queue, log) and print its path.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// ECDSA P-256 (what most servers would pick) or RSA-2048 (the costlier
/// signature, still the most common certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CertType {
    Ecdsa,
    Rsa,
}

impl CertType {
    pub fn name(self) -> &'static str {
        match self {
            CertType::Ecdsa => "ecdsa-p256",
            CertType::Rsa => "rsa-2048",
        }
    }
}

impl Args {
    pub fn max_time(&self) -> Duration {
        Duration::from_secs_f64(self.max_time)
    }

    /// The recipients of every message.
    pub fn recipients(&self) -> Vec<String> {
        if self.recipients == 1 {
            return vec![self.to.clone()];
        }
        let (local, domain) = self.to.rsplit_once('@').expect("checked by the parser");
        (1..=self.recipients)
            .map(|i| format!("{local}{i}@{domain}"))
            .collect()
    }
}

fn parse_target(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{s}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s}: no address"))
}

fn parse_address(s: &str) -> Result<String, String> {
    let ok = s.contains('@')
        && !s.starts_with('@')
        && !s.ends_with('@')
        && !s
            .bytes()
            .any(|b| b <= b' ' || b == b'<' || b == b'>' || b == 0x7f);
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a plain local@domain address"))
    }
}

fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        _ => (t, 0),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?}: bytes, optionally with K, M or G (powers of 1024)"))
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("{s:?}: seconds between 0 and 86400")),
    }
}
