//! The configuration file (TOML, SPEC section 2) and the flags that
//! override it, validated into one [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::smtp::data::BareLineEnds;

/// `source_routes`: what to do with `@ONE,@TWO:` routes (SPEC section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRoutes {
    Honor,
    Strip,
}

/// A `[routes]` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// `host:port` or `[ip]:port`: connect there (host looked up by A/AAAA).
    HostPort { host: String, port: u16 },
    /// A bare host name: look up its MX.
    Mx(String),
}

/// One `[routes]` entry; `domain` is lowercased, `"*"` for the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub domain: String,
    /// The value as written in the file (what `next_hop` shows).
    pub written: String,
    pub target: RouteTarget,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub schedule: Vec<Duration>,
    pub max_lifetime: Duration,
    /// Zero disables.
    pub delay_warning: Duration,
    pub history_retention: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub server_idle: Duration,
    pub connect: Duration,
    pub command: Duration,
    pub data_init: Duration,
    pub data_block: Duration,
    pub data_done: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsOutbound {
    Opportunistic,
    Required,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub implicit_listen: Vec<SocketAddr>,
    pub outbound: TlsOutbound,
    pub ca_file: Option<PathBuf>,
    pub verify_outbound: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where it came from (`None`: the embedded default), for messages.
    pub file: Option<PathBuf>,
    pub hostname: String,
    pub listen: Vec<SocketAddr>,
    pub queue: PathBuf,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_hops: usize,
    pub relay_networks: Vec<IpNet>,
    /// Lowercased.
    pub relay_domains: Vec<String>,
    /// Lowercased.
    pub local_domains: Vec<String>,
    /// Lowercased.
    pub local_users: Vec<String>,
    pub maildir: PathBuf,
    pub source_routes: SourceRoutes,
    pub bare_lf: BareLineEnds,
    pub routes: Vec<Route>,
    pub retry: Retry,
    pub timeouts: Timeouts,
    pub dns_servers: Vec<SocketAddr>,
    pub outbound_max_connections: usize,
    pub outbound_max_connections_per_host: usize,
    pub tls: Tls,
    pub auth_users_file: Option<PathBuf>,
}

/// A config problem: the message names the file, the key and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates `file`, or returns the embedded default for `None`.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        todo!()
    }

    /// Parses TOML text; relative paths are resolved against `base_dir`;
    /// `origin` names the source in error messages.
    pub fn from_toml(text: &str, base_dir: &Path, origin: &str) -> Result<Config, ConfigError> {
        todo!()
    }

    /// The effective settings as TOML that `from_toml` reads back to an
    /// equal `Config` (what `check-config` prints).
    pub fn to_toml(&self) -> String {
        todo!()
    }
}

/// `"90s"`, `"5m"`, `"4h"`, `"7d"`: a number and one unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    todo!()
}
