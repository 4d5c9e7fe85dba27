//! The command line of the load harness.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser};

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
        cargo bench --bench load -- --sink 2526 --max-time 300"
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

    /// Message size in bytes, headers included, before dot-stuffing.
    #[arg(long, short = 's', default_value_t = 1024)]
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

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("{s:?}: seconds between 0 and 86400")),
    }
}
