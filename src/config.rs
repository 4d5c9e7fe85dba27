//! The configuration file (TOML, SPEC section 2) and the flags that
//! override it, validated into one [`Config`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

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
    /// The value as written in the file, or the table's `host` (what
    /// `next_hop` shows).
    pub written: String,
    pub target: RouteTarget,
    /// Written as a table: per-hop TLS and AUTH. `None`: a plain string.
    pub options: Option<RouteOptions>,
}

/// How a table route's `tls` key says to secure the hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTls {
    /// As `[tls] outbound` says (the default).
    Opportunistic,
    /// STARTTLS or no mail (defer 4.7.x).
    Required,
    /// TLS from the first byte (RFC 8314, port 465).
    Implicit,
}

impl RouteTls {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteTls::Opportunistic => "opportunistic",
            RouteTls::Required => "required",
            RouteTls::Implicit => "implicit",
        }
    }
}

/// The options of a `[routes]` table value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOptions {
    pub tls: RouteTls,
    /// Outbound AUTH (RFC 4954), only ever over TLS.
    pub auth: Option<Credentials>,
    /// Verify the server certificate and name (`[tls] ca_file` or the
    /// system's roots).
    pub verify: bool,
}

/// A smarthost account: the user name, where the password came from, and
/// the password (never printed: its `Debug` says `***`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password_file: PathBuf,
    pub password: Secret,
}

/// A password in memory. `Debug` prints `***`; the text is only had
/// through `expose`, where it goes on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: String) -> Secret {
        Secret(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
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

/// One `[dkim."domain"]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimDomain {
    /// Lower case, the signature's `d=`.
    pub domain: String,
    /// The signature's `s=`: the key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// A PEM private key: RSA (PKCS#8 or PKCS#1) or Ed25519 (PKCS#8).
    pub key: PathBuf,
    /// Also sign mail from subdomains of `domain` (with `d=domain`).
    pub subdomains: bool,
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
    /// Send with BDAT (RFC 3030) to next hops that offer CHUNKING.
    pub outbound_chunking: bool,
    /// `[outbound] mta_sts`: apply MTA-STS (RFC 8461) policies to mail
    /// delivered by MX (on by default).
    pub outbound_mta_sts: bool,
    pub tls: Tls,
    pub auth_users_file: Option<PathBuf>,
    /// `[metrics] listen`: the Prometheus endpoint, off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// Where `serve` writes its PID (for `mailhop reload`), if anywhere.
    pub pid_file: Option<PathBuf>,
    /// `[shaping]`: limits per next hop, sorted by key with `"*"` last.
    pub shaping: Vec<crate::shaping::Rule>,
    /// `[dkim."domain"]`, sorted by domain. The keys are secrets, read by
    /// `serve` (`crate::dkim::Signers::load`), not by every command.
    pub dkim: Vec<DkimDomain>,
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
        let Some(file) = file else {
            let cwd = std::env::current_dir().map_err(|e| {
                ConfigError(format!(
                    "embedded default: cannot read the current directory: {e}"
                ))
            })?;
            return Config::from_toml("", &cwd, "embedded default");
        };
        let origin = file.display().to_string();
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError(format!("{origin}: cannot read: {e}")))?;
        let abs = std::path::absolute(file)
            .map_err(|e| ConfigError(format!("{origin}: cannot make the path absolute: {e}")))?;
        let base = abs.parent().unwrap_or(Path::new("/"));
        let mut config = Config::from_toml(&text, base, &origin)?;
        config.file = Some(file.to_path_buf());
        Ok(config)
    }

    /// Parses TOML text; relative paths are resolved against `base_dir`;
    /// `origin` names the source in error messages.
    pub fn from_toml(text: &str, base_dir: &Path, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        // Absolute, so that `to_toml` output reads back the same from anywhere.
        let base = std::path::absolute(base_dir).map_err(|e| {
            ConfigError(format!(
                "{origin}: cannot make {} absolute: {e}",
                base_dir.display()
            ))
        })?;
        Validator {
            origin,
            base: &base,
        }
        .config(raw)
    }

    /// The effective settings as TOML that `from_toml` reads back to an
    /// equal `Config` (what `check-config` prints).
    pub fn to_toml(&self) -> String {
        let mut o = String::new();
        let src = match &self.file {
            Some(f) => f.display().to_string(),
            None => "the embedded default".to_string(),
        };
        let _ = writeln!(o, "# mailhop effective settings, from {src}");
        let _ = writeln!(o, "hostname = {}", q(&self.hostname));
        let _ = writeln!(o, "listen = {}", list(&self.listen));
        let _ = writeln!(o, "queue = {}", qpath(Some(&self.queue)));
        let _ = writeln!(o, "max_message_size = {}", self.max_message_size);
        let _ = writeln!(o, "max_recipients = {}", self.max_recipients);
        let _ = writeln!(o, "max_connections = {}", self.max_connections);
        let _ = writeln!(
            o,
            "max_connections_per_ip = {}",
            self.max_connections_per_ip
        );
        let _ = writeln!(o, "max_hops = {}", self.max_hops);
        let _ = writeln!(o, "relay_networks = {}", list(&self.relay_networks));
        let _ = writeln!(o, "relay_domains = {}", list(&self.relay_domains));
        let _ = writeln!(o, "local_domains = {}", list(&self.local_domains));
        let _ = writeln!(o, "local_users = {}", list(&self.local_users));
        let _ = writeln!(o, "maildir = {}", qpath(Some(&self.maildir)));
        let sr = match self.source_routes {
            SourceRoutes::Honor => "honor",
            SourceRoutes::Strip => "strip",
        };
        let _ = writeln!(o, "source_routes = {}", q(sr));
        let bl = match self.bare_lf {
            BareLineEnds::Reject => "reject",
            BareLineEnds::Normalize => "normalize",
        };
        let _ = writeln!(o, "bare_lf = {}", q(bl));
        let _ = writeln!(o, "pid_file = {}", qpath(self.pid_file.as_deref()));

        let _ = writeln!(o, "\n[routes]");
        for r in &self.routes {
            let Some(opt) = &r.options else {
                let _ = writeln!(o, "{} = {}", q(&r.domain), q(&r.written));
                continue;
            };
            // The password file's path, never the password.
            let auth = match &opt.auth {
                Some(c) => format!(
                    ", auth = {}, password_file = {}",
                    q(&c.user),
                    qpath(Some(&c.password_file))
                ),
                None => String::new(),
            };
            let _ = writeln!(
                o,
                "{} = {{ host = {}, tls = {}{auth}, verify = {} }}",
                q(&r.domain),
                q(&r.written),
                q(opt.tls.as_str()),
                opt.verify
            );
        }

        let _ = writeln!(o, "\n[retry]");
        let sched: Vec<String> = self
            .retry
            .schedule
            .iter()
            .map(|d| format_duration(*d))
            .collect();
        let _ = writeln!(o, "schedule = {}", list(&sched));
        for (k, d) in [
            ("max_lifetime", self.retry.max_lifetime),
            ("delay_warning", self.retry.delay_warning),
            ("history_retention", self.retry.history_retention),
        ] {
            let _ = writeln!(o, "{k} = {}", q(&format_duration(d)));
        }

        let _ = writeln!(o, "\n[timeouts]");
        let t = &self.timeouts;
        for (k, d) in [
            ("server_idle", t.server_idle),
            ("connect", t.connect),
            ("command", t.command),
            ("data_init", t.data_init),
            ("data_block", t.data_block),
            ("data_done", t.data_done),
        ] {
            let _ = writeln!(o, "{k} = {}", q(&format_duration(d)));
        }

        let _ = writeln!(o, "\n[dns]");
        let _ = writeln!(o, "servers = {}", list(&self.dns_servers));

        let _ = writeln!(o, "\n[outbound]");
        let _ = writeln!(o, "max_connections = {}", self.outbound_max_connections);
        let _ = writeln!(
            o,
            "max_connections_per_host = {}",
            self.outbound_max_connections_per_host
        );
        let _ = writeln!(o, "chunking = {}", self.outbound_chunking);
        let _ = writeln!(o, "mta_sts = {}", self.outbound_mta_sts);

        let tls = &self.tls;
        let _ = writeln!(o, "\n[tls]");
        let _ = writeln!(o, "cert = {}", qpath(tls.cert.as_deref()));
        let _ = writeln!(o, "key = {}", qpath(tls.key.as_deref()));
        let _ = writeln!(o, "implicit_listen = {}", list(&tls.implicit_listen));
        let ob = match tls.outbound {
            TlsOutbound::Opportunistic => "opportunistic",
            TlsOutbound::Required => "required",
        };
        let _ = writeln!(o, "outbound = {}", q(ob));
        let _ = writeln!(o, "ca_file = {}", qpath(tls.ca_file.as_deref()));
        let _ = writeln!(o, "verify_outbound = {}", tls.verify_outbound);

        let _ = writeln!(o, "\n[auth]");
        let _ = writeln!(o, "users_file = {}", qpath(self.auth_users_file.as_deref()));

        let _ = writeln!(o, "\n[metrics]");
        let metrics = self
            .metrics_listen
            .map(|a| a.to_string())
            .unwrap_or_default();
        let _ = writeln!(o, "listen = {}", q(&metrics));
        shaping_to_toml(&mut o, &self.shaping);
        dkim_to_toml(&mut o, &self.dkim);
        o
    }
}

/// `"90s"`, `"5m"`, `"4h"`, `"7d"`: a number and one unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {text:?} (expected a number and one of s, m, h, d)");
    let split = text.len().saturating_sub(1);
    let (num, unit) = (text.get(..split).ok_or_else(bad)?, &text[split..]);
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    match num.parse::<u64>().ok().and_then(|n| n.checked_mul(scale)) {
        Some(secs) if secs <= MAX_DURATION_SECS => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "duration {text:?} is too large (at most {}d)",
            MAX_DURATION_SECS / 86400
        )),
    }
}

/// The inverse of [`parse_duration`], in the largest unit that is exact.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".to_string(),
        _ if s.is_multiple_of(86400) => format!("{}d", s / 86400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// A hundred years: far beyond any sane setting, and safe to add to an
/// `Instant` or `SystemTime` without overflow.
const MAX_DURATION_SECS: u64 = 36500 * 86400;

/// Messages are held in memory while received, so the size is capped.
const MAX_MESSAGE_SIZE_LIMIT: i64 = 1 << 30;

// ---------------------------------------------------------------------------
// The file as written: every field optional, every unknown key an error.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    hostname: Option<String>,
    listen: Option<Vec<String>>,
    queue: Option<String>,
    max_message_size: Option<i64>,
    max_recipients: Option<i64>,
    max_connections: Option<i64>,
    max_connections_per_ip: Option<i64>,
    max_hops: Option<i64>,
    relay_networks: Option<Vec<String>>,
    relay_domains: Option<Vec<String>>,
    local_domains: Option<Vec<String>>,
    local_users: Option<Vec<String>>,
    maildir: Option<String>,
    source_routes: Option<String>,
    bare_lf: Option<String>,
    routes: BTreeMap<String, toml::Value>,
    retry: RawRetry,
    timeouts: RawTimeouts,
    dns: RawDns,
    outbound: RawOutbound,
    tls: RawTls,
    auth: RawAuth,
    metrics: RawMetrics,
    pid_file: Option<String>,
    shaping: BTreeMap<String, RawShaping>,
    dkim: BTreeMap<String, RawDkim>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawRetry {
    schedule: Option<Vec<String>>,
    max_lifetime: Option<String>,
    delay_warning: Option<String>,
    history_retention: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawTimeouts {
    server_idle: Option<String>,
    connect: Option<String>,
    command: Option<String>,
    data_init: Option<String>,
    data_block: Option<String>,
    data_done: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDns {
    servers: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawOutbound {
    max_connections: Option<i64>,
    max_connections_per_host: Option<i64>,
    chunking: Option<bool>,
    mta_sts: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    implicit_listen: Option<Vec<String>>,
    outbound: Option<String>,
    ca_file: Option<String>,
    verify_outbound: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    users_file: Option<String>,
}

// ---------------------------------------------------------------------------
// Validation: raw values to typed ones, each error naming origin and key.

struct Validator<'a> {
    origin: &'a str,
    base: &'a Path,
}

impl Validator<'_> {
    fn err(&self, key: &str, problem: impl std::fmt::Display) -> ConfigError {
        ConfigError(format!("{}: {key}: {problem}", self.origin))
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let hostname = match raw.hostname {
            Some(h) => {
                check_domain(&h).map_err(|p| self.err("hostname", format!("{h:?}: {p}")))?;
                h
            }
            None => system_hostname(),
        };

        let listen = self.addrs("listen", raw.listen, &["127.0.0.1:2525"], None)?;
        if listen.is_empty() {
            return Err(self.err("listen", "needs at least one address"));
        }

        let max_message_size = self.int(
            "max_message_size",
            raw.max_message_size,
            10_485_760,
            1,
            MAX_MESSAGE_SIZE_LIMIT,
        )? as u64;
        let max_recipients = self.count("max_recipients", raw.max_recipients, 100)?;
        if max_recipients < 100 {
            log::warn!(
                "{}: max_recipients = {max_recipients} is under RFC 5321's minimum of 100",
                self.origin
            );
        }
        let max_connections = self.count("max_connections", raw.max_connections, 10_000)?;
        let max_connections_per_ip =
            self.count("max_connections_per_ip", raw.max_connections_per_ip, 100)?;
        let max_hops = self.count("max_hops", raw.max_hops, 100)?;

        let relay_networks = self.networks(raw.relay_networks)?;
        let relay_domains = self.domains("relay_domains", raw.relay_domains)?;
        let local_domains = self.domains("local_domains", raw.local_domains)?;
        if let Some(d) = local_domains.iter().find(|d| relay_domains.contains(d)) {
            return Err(self.err(
                "local_domains",
                format!("{d:?} is also in relay_domains; a domain is either local or relayed"),
            ));
        }
        let local_users = self.users(raw.local_users)?;

        let source_routes =
            match self.choice("source_routes", raw.source_routes, &["honor", "strip"])? {
                0 => SourceRoutes::Honor,
                _ => SourceRoutes::Strip,
            };
        let bare_lf = match self.choice("bare_lf", raw.bare_lf, &["reject", "normalize"])? {
            0 => BareLineEnds::Reject,
            _ => BareLineEnds::Normalize,
        };

        let retry = self.retry(raw.retry)?;
        let timeouts = self.timeouts(raw.timeouts)?;

        let dns_servers = match raw.dns.servers {
            Some(_) => self.addrs("dns.servers", raw.dns.servers, &[], Some(53))?,
            None => resolv_conf_servers(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            ),
        };

        let outbound_max_connections = self.count(
            "outbound.max_connections",
            raw.outbound.max_connections,
            500,
        )?;
        let outbound_max_connections_per_host = self.count(
            "outbound.max_connections_per_host",
            raw.outbound.max_connections_per_host,
            20,
        )?;

        let tls = self.tls(raw.tls)?;
        let routes = self.routes(raw.routes, tls.verify_outbound)?;
        // Port 0 asks the system for a free port each time: never a clash.
        let clash = |a: &&SocketAddr| a.port() != 0 && listen.contains(a);
        if let Some(a) = tls.implicit_listen.iter().find(clash) {
            return Err(self.err("tls.implicit_listen", format!("{a} is also in listen")));
        }

        let metrics_listen = match raw.metrics.listen.filter(|s| !s.is_empty()) {
            None => None,
            Some(a) => {
                let a = self.addrs("metrics.listen", Some(vec![a]), &[], None)?[0];
                if a.port() != 0 && (listen.contains(&a) || tls.implicit_listen.contains(&a)) {
                    return Err(self.err("metrics.listen", format!("{a} is also an SMTP listener")));
                }
                Some(a)
            }
        };

        Ok(Config {
            file: None,
            hostname,
            listen,
            queue: self.path("queue", raw.queue, "mailhop.db")?,
            max_message_size,
            max_recipients,
            max_connections,
            max_connections_per_ip,
            max_hops,
            relay_networks,
            relay_domains,
            local_domains,
            local_users,
            maildir: self.path("maildir", raw.maildir, "mail")?,
            source_routes,
            bare_lf,
            routes,
            retry,
            timeouts,
            dns_servers,
            outbound_max_connections,
            outbound_max_connections_per_host,
            outbound_chunking: raw.outbound.chunking.unwrap_or(true),
            outbound_mta_sts: raw.outbound.mta_sts.unwrap_or(true),
            tls,
            auth_users_file: self.opt_path(raw.auth.users_file),
            metrics_listen,
            pid_file: self.opt_path(raw.pid_file),
            shaping: self.shaping(raw.shaping)?,
            dkim: self.dkim(raw.dkim)?,
        })
    }

    fn int(
        &self,
        key: &str,
        v: Option<i64>,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<i64, ConfigError> {
        let n = v.unwrap_or(default);
        if n < min {
            return Err(self.err(key, format!("{n} is too small (at least {min})")));
        }
        if n > max {
            return Err(self.err(key, format!("{n} is too large (at most {max})")));
        }
        Ok(n)
    }

    /// A positive count that fits a `usize`.
    fn count(&self, key: &str, v: Option<i64>, default: i64) -> Result<usize, ConfigError> {
        let max = i64::try_from(usize::MAX).unwrap_or(i64::MAX);
        Ok(self.int(key, v, default, 1, max)? as usize)
    }

    /// Index of `v` among `choices` (the first is the default).
    fn choice(&self, key: &str, v: Option<String>, choices: &[&str]) -> Result<usize, ConfigError> {
        let Some(v) = v else { return Ok(0) };
        choices.iter().position(|c| *c == v).ok_or_else(|| {
            let list: Vec<String> = choices.iter().map(|c| format!("{c:?}")).collect();
            self.err(
                key,
                format!("unknown value {v:?} (expected {})", list.join(" or ")),
            )
        })
    }

    /// Socket addresses; with `default_port`, a bare IP is allowed too.
    fn addrs(
        &self,
        key: &str,
        v: Option<Vec<String>>,
        default: &[&str],
        default_port: Option<u16>,
    ) -> Result<Vec<SocketAddr>, ConfigError> {
        let v = v.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
        let mut out: Vec<SocketAddr> = Vec::new();
        for (i, s) in v.iter().enumerate() {
            let k = format!("{key}[{i}]");
            let addr = match (s.parse::<SocketAddr>(), default_port) {
                (Ok(a), _) => a,
                (Err(_), Some(port)) => match s.parse::<IpAddr>() {
                    Ok(ip) => SocketAddr::new(ip, port),
                    Err(_) => {
                        return Err(self.err(
                            &k,
                            format!("bad address {s:?} (expected IP or IP:port, e.g. 127.0.0.1:{port} or [::1]:{port})"),
                        ))
                    }
                },
                (Err(_), None) => {
                    return Err(self.err(
                        &k,
                        format!("bad address {s:?} (expected IP:port, e.g. 127.0.0.1:2525 or [::1]:2525)"),
                    ))
                }
            };
            if addr.port() != 0 && out.contains(&addr) {
                return Err(self.err(&k, format!("{addr} is listed twice")));
            }
            out.push(addr);
        }
        Ok(out)
    }

    fn networks(&self, v: Option<Vec<String>>) -> Result<Vec<IpNet>, ConfigError> {
        let v = v.unwrap_or_else(|| vec!["127.0.0.0/8".into(), "::1/128".into()]);
        let mut out = Vec::new();
        for (i, s) in v.iter().enumerate() {
            let k = format!("relay_networks[{i}]");
            let net = match (s.parse::<IpNet>(), s.parse::<IpAddr>()) {
                (Ok(n), _) => n,
                (_, Ok(ip)) => IpNet::from(ip),
                _ => {
                    return Err(self.err(
                        &k,
                        format!(
                            "bad network {s:?} (expected CIDR like 10.0.0.0/8 or an IP address)"
                        ),
                    ))
                }
            };
            let trunc = net.trunc();
            if trunc != net {
                log::warn!(
                    "{}: {k}: {s:?} has host bits set; using {trunc}",
                    self.origin
                );
            }
            if trunc.prefix_len() == 0 {
                log::warn!(
                    "{}: {k}: {trunc} lets every client relay (open relay)",
                    self.origin
                );
            }
            if !out.contains(&trunc) {
                out.push(trunc);
            }
        }
        Ok(out)
    }

    /// Lowercased, checked, duplicates dropped.
    fn domains(&self, key: &str, v: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
        let mut out: Vec<String> = Vec::new();
        for (i, s) in v.unwrap_or_default().iter().enumerate() {
            let d = s.to_ascii_lowercase();
            check_domain(&d)
                .map_err(|p| self.err(&format!("{key}[{i}]"), format!("{s:?}: {p}")))?;
            if !out.contains(&d) {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn users(&self, v: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
        let mut out: Vec<String> = Vec::new();
        for (i, s) in v.unwrap_or_default().iter().enumerate() {
            let u = s.to_ascii_lowercase();
            check_user(&u)
                .map_err(|p| self.err(&format!("local_users[{i}]"), format!("{s:?}: {p}")))?;
            if !out.contains(&u) {
                out.push(u);
            }
        }
        Ok(out)
    }

    /// Sorted by domain with `"*"` last, so the order never depends on the file.
    fn routes(
        &self,
        raw: BTreeMap<String, toml::Value>,
        verify_outbound: bool,
    ) -> Result<Vec<Route>, ConfigError> {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut out: Vec<Route> = Vec::new();
        for (key, value) in raw {
            let k = format!("routes.{}", toml_key(&key));
            let domain = key.to_ascii_lowercase();
            if domain != "*" {
                check_domain(&domain).map_err(|p| {
                    self.err(
                        &k,
                        format!("bad key {key:?}: {p} (expected a domain or \"*\")"),
                    )
                })?;
            }
            if let Some(first) = seen.insert(domain.clone(), key.clone()) {
                return Err(self.err(
                    &k,
                    format!(
                        "same domain as routes.{} (keys are not case-sensitive)",
                        toml_key(&first)
                    ),
                ));
            }
            let (written, options) = match value {
                toml::Value::String(s) => (s, None),
                toml::Value::Table(t) => {
                    let (host, options) = self.route_table(&k, t, verify_outbound)?;
                    (host, Some(options))
                }
                other => {
                    return Err(self.err(
                        &k,
                        format!("expected a string or a table, not a {}", other.type_str()),
                    ))
                }
            };
            let target = parse_route(&written).map_err(|p| self.err(&k, p))?;
            // One next hop, one set of options: they are found by it.
            if let Some(other) = out
                .iter()
                .find(|r| r.written == written && r.options != options)
            {
                return Err(self.err(
                    &k,
                    format!(
                        "same host {written:?} as routes.{} with other options",
                        toml_key(&other.domain)
                    ),
                ));
            }
            out.push(Route {
                domain,
                written,
                target,
                options,
            });
        }
        out.sort_by(|a, b| (a.domain == "*", &a.domain).cmp(&(b.domain == "*", &b.domain)));
        Ok(out)
    }

    /// `{ host = ..., tls = ..., auth = ..., password_file = ..., verify = ... }`.
    fn route_table(
        &self,
        k: &str,
        table: toml::Table,
        verify_outbound: bool,
    ) -> Result<(String, RouteOptions), ConfigError> {
        let mut host = None;
        let mut tls = None;
        let mut user = None;
        let mut password_file = None;
        let mut verify = None;
        for (name, value) in table {
            let key = format!("{k}.{}", toml_key(&name));
            let text = |v: toml::Value| match v {
                toml::Value::String(s) => Ok(s),
                other => Err(self.err(
                    &key,
                    format!("expected a string, not a {}", other.type_str()),
                )),
            };
            match name.as_str() {
                "host" => host = Some(text(value)?),
                "tls" => {
                    let choices = ["opportunistic", "required", "implicit"];
                    tls = Some(match self.choice(&key, Some(text(value)?), &choices)? {
                        0 => RouteTls::Opportunistic,
                        1 => RouteTls::Required,
                        _ => RouteTls::Implicit,
                    });
                }
                "auth" => user = Some(text(value)?),
                "password_file" => password_file = Some(text(value)?),
                "verify" => match value {
                    toml::Value::Boolean(b) => verify = Some(b),
                    other => {
                        return Err(self.err(
                            &key,
                            format!("expected true or false, not a {}", other.type_str()),
                        ))
                    }
                },
                _ => {
                    return Err(self.err(
                        &key,
                        "unknown key (expected host, tls, auth, password_file or verify)",
                    ))
                }
            }
        }
        let host = host.ok_or_else(|| self.err(k, "a route table needs host"))?;
        let tls = tls.unwrap_or(RouteTls::Opportunistic);
        let auth = match (user, password_file) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(self.err(&format!("{k}.password_file"), "needs auth (the user name)"))
            }
            (Some(_), None) => {
                return Err(self.err(&format!("{k}.auth"), "needs password_file"));
            }
            (Some(user), Some(file)) => {
                if user.is_empty() || user.contains(['\0', '\r', '\n']) {
                    return Err(self.err(&format!("{k}.auth"), "not a user name"));
                }
                if tls == RouteTls::Opportunistic {
                    return Err(self.err(
                        &format!("{k}.tls"),
                        "auth needs tls = \"required\" or \"implicit\" (credentials never go in clear)",
                    ));
                }
                let key = format!("{k}.password_file");
                let path = resolve(self.base, &file);
                let password = read_password(&path).map_err(|p| self.err(&key, p))?;
                Some(Credentials {
                    user,
                    password_file: path,
                    password,
                })
            }
        };
        let verify = verify.unwrap_or(auth.is_some() || verify_outbound);
        Ok((host, RouteOptions { tls, auth, verify }))
    }

    fn duration(
        &self,
        key: &str,
        v: Option<String>,
        default: &str,
        zero_ok: bool,
    ) -> Result<Duration, ConfigError> {
        let s = v.unwrap_or_else(|| default.to_string());
        let d = parse_duration(&s).map_err(|p| self.err(key, p))?;
        if d.is_zero() && !zero_ok {
            return Err(self.err(key, "must be more than 0s"));
        }
        Ok(d)
    }

    fn retry(&self, r: RawRetry) -> Result<Retry, ConfigError> {
        let schedule = match r.schedule {
            None => ["5m", "30m", "1h", "2h", "3h"]
                .iter()
                .map(|s| parse_duration(s).expect("valid default"))
                .collect(),
            Some(list) => {
                if list.is_empty() {
                    return Err(self.err("retry.schedule", "needs at least one interval"));
                }
                let mut out = Vec::new();
                for (i, s) in list.into_iter().enumerate() {
                    out.push(self.duration(&format!("retry.schedule[{i}]"), Some(s), "", false)?);
                }
                out
            }
        };
        let max_lifetime = self.duration("retry.max_lifetime", r.max_lifetime, "5d", false)?;
        let delay_warning = self.duration("retry.delay_warning", r.delay_warning, "4h", true)?;
        if !delay_warning.is_zero() && delay_warning >= max_lifetime {
            log::warn!(
                "{}: retry.delay_warning is not less than retry.max_lifetime; no delay warning will be sent",
                self.origin
            );
        }
        Ok(Retry {
            schedule,
            max_lifetime,
            delay_warning,
            history_retention: self.duration(
                "retry.history_retention",
                r.history_retention,
                "7d",
                false,
            )?,
        })
    }

    fn timeouts(&self, t: RawTimeouts) -> Result<Timeouts, ConfigError> {
        Ok(Timeouts {
            server_idle: self.duration("timeouts.server_idle", t.server_idle, "5m", false)?,
            connect: self.duration("timeouts.connect", t.connect, "30s", false)?,
            command: self.duration("timeouts.command", t.command, "5m", false)?,
            data_init: self.duration("timeouts.data_init", t.data_init, "2m", false)?,
            data_block: self.duration("timeouts.data_block", t.data_block, "3m", false)?,
            data_done: self.duration("timeouts.data_done", t.data_done, "10m", false)?,
        })
    }

    fn tls(&self, t: RawTls) -> Result<Tls, ConfigError> {
        let cert = self.opt_path(t.cert);
        let key = self.opt_path(t.key);
        match (&cert, &key) {
            (Some(_), None) => {
                return Err(self.err("tls.cert", "is set but tls.key is not; set both or neither"))
            }
            (None, Some(_)) => {
                return Err(self.err("tls.key", "is set but tls.cert is not; set both or neither"))
            }
            _ => {}
        }
        let implicit_listen = self.addrs("tls.implicit_listen", t.implicit_listen, &[], None)?;
        if !implicit_listen.is_empty() && cert.is_none() {
            return Err(self.err("tls.implicit_listen", "needs tls.cert and tls.key"));
        }
        let outbound =
            match self.choice("tls.outbound", t.outbound, &["opportunistic", "required"])? {
                0 => TlsOutbound::Opportunistic,
                _ => TlsOutbound::Required,
            };
        Ok(Tls {
            cert,
            key,
            implicit_listen,
            outbound,
            ca_file: self.opt_path(t.ca_file),
            verify_outbound: t.verify_outbound.unwrap_or(false),
        })
    }

    fn path(&self, key: &str, v: Option<String>, default: &str) -> Result<PathBuf, ConfigError> {
        let s = v.unwrap_or_else(|| default.to_string());
        if s.is_empty() {
            return Err(self.err(key, "must not be empty"));
        }
        Ok(resolve(self.base, &s))
    }

    /// `""` (or absent) means none.
    fn opt_path(&self, v: Option<String>) -> Option<PathBuf> {
        v.filter(|s| !s.is_empty()).map(|s| resolve(self.base, &s))
    }
}

/// `base.join(p)` without `.` components (absolute `p` stays as it is).
fn resolve(base: &Path, p: &str) -> PathBuf {
    base.join(p)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// A host name in ASCII (IDNs in their `xn--` form), no trailing dot.
fn check_domain(d: &str) -> Result<(), &'static str> {
    if d.is_empty() {
        return Err("empty");
    }
    if !d.is_ascii() {
        return Err("not ASCII (write an international name in its xn-- form)");
    }
    if d.len() > 253 {
        return Err("longer than 253 characters");
    }
    for label in d.split('.') {
        if label.is_empty() {
            return Err("not a domain (empty label)");
        }
        if label.len() > 63 {
            return Err("not a domain (a label is longer than 63 characters)");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("not a domain (only letters, digits, '-', '_' and '.' are allowed)");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("not a domain (a label starts or ends with '-')");
        }
    }
    Ok(())
}

/// A dot-atom local part that is also a safe single path component
/// (it names a folder under `maildir`).
fn check_user(u: &str) -> Result<(), &'static str> {
    if u.is_empty() {
        return Err("empty");
    }
    if u.len() > 64 {
        return Err("longer than 64 characters (RFC 5321 4.5.3.1.1)");
    }
    let atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-=?^_`{|}~".contains(&b);
    if !u.bytes().all(|b| atext(b) || b == b'.') {
        return Err("not a plain mailbox name (letters, digits, . and !#$%&'*+-=?^_`{|}~ only)");
    }
    if u.starts_with('.') || u.ends_with('.') || u.contains("..") {
        return Err("not a plain mailbox name (a dot at the start or end, or two in a row)");
    }
    Ok(())
}

/// The first line of a password file, its line end stripped. The error
/// names the file, never what is in it.
fn read_password(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(format!(
            "{}: the first line (the password) is empty",
            path.display()
        ));
    }
    let line = String::from_utf8(line.to_vec())
        .map_err(|_| format!("{}: the password is not UTF-8", path.display()))?;
    Ok(Secret::new(line))
}

/// `host:port`, `[ip]:port`, `[ip]` or a bare IPv4 (port 25), or a host name (MX).
pub fn parse_route(v: &str) -> Result<RouteTarget, String> {
    let bad = |why: &str| {
        format!(
            "bad route {v:?}: {why} (expected host:port, [ip]:port, or a host name for MX lookup)"
        )
    };
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(bad(&format!("bad port {p:?}"))),
        }
    };
    if let Some(rest) = v.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(|| bad("no closing ']'"))?;
        let ip: IpAddr = inside
            .parse()
            .map_err(|_| bad(&format!("{inside:?} is not an IP address")))?;
        let port = match after {
            "" => 25,
            _ => port(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| bad("expected ':' after ']'"))?,
            )?,
        };
        return Ok(RouteTarget::HostPort {
            host: ip.to_string(),
            port,
        });
    }
    if v.matches(':').count() > 1 {
        // `::1:25` is itself an IPv6 address: brackets keep it unambiguous.
        return Err(bad("write an IPv6 address in brackets, [addr]:port"));
    }
    if let Ok(ip) = v.parse::<std::net::Ipv4Addr>() {
        return Ok(RouteTarget::HostPort {
            host: ip.to_string(),
            port: 25,
        });
    }
    if let Some((host, p)) = v.rsplit_once(':') {
        let port = port(p)?;
        if host.parse::<std::net::Ipv4Addr>().is_err() {
            check_domain(host).map_err(bad)?;
        }
        return Ok(RouteTarget::HostPort {
            host: host.to_ascii_lowercase(),
            port,
        });
    }
    check_domain(v).map_err(bad)?;
    Ok(RouteTarget::Mx(v.to_ascii_lowercase()))
}

/// The `nameserver` lines, port 53; unparsable ones (scoped IPv6) skipped.
fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            if let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) {
                let a = SocketAddr::new(ip, 53);
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// `gethostname()`, or `localhost` if it fails or is not UTF-8.
fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; we stop at the NUL
    // or the end of the buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast::<libc::c_char>(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
        _ => "localhost".to_string(),
    }
}

/// A TOML basic string, escaped.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn qpath(p: Option<&Path>) -> String {
    q(&p.map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default())
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let v: Vec<String> = items.iter().map(|i| q(&i.to_string())).collect();
    format!("[{}]", v.join(", "))
}

/// A key as TOML writes it: bare if it can be, quoted otherwise.
fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        k.to_string()
    } else {
        q(k)
    }
}

// ---------------------------------------------------------------------------
// `[shaping."KEY"]`: limits per next hop (see `crate::shaping`).

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawShaping {
    max_connections: Option<i64>,
    max_messages_per_connection: Option<i64>,
    max_messages_per_minute: Option<i64>,
}

impl Validator<'_> {
    /// Keys as `[routes]` keys, or a route target (`127.0.0.1:2526`, the
    /// next hop as stored); every limit optional and positive. Sorted by
    /// key with `"*"` last, so the order never depends on the file.
    fn shaping(
        &self,
        raw: BTreeMap<String, RawShaping>,
    ) -> Result<Vec<crate::shaping::Rule>, ConfigError> {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut out = Vec::new();
        for (key, value) in raw {
            let k = format!("shaping.{}", toml_key(&key));
            let lower = key.to_ascii_lowercase();
            if lower != "*" && parse_route(&lower).is_err() {
                return Err(self.err(
                    &k,
                    format!("bad key {key:?} (expected a domain, host:port, [ip]:port or \"*\")"),
                ));
            }
            if let Some(first) = seen.insert(lower.clone(), key.clone()) {
                return Err(self.err(
                    &k,
                    format!(
                        "same next hop as shaping.{} (keys are not case-sensitive)",
                        toml_key(&first)
                    ),
                ));
            }
            let opt = |name: &str, v: Option<i64>| -> Result<Option<i64>, ConfigError> {
                match v {
                    None => Ok(None),
                    Some(n) if n < 1 => Err(self.err(
                        &format!("{k}.{name}"),
                        format!("{n} is too small (at least 1; leave it out for no limit)"),
                    )),
                    Some(n) if n > i64::from(u32::MAX) => Err(self.err(
                        &format!("{k}.{name}"),
                        format!("{n} is too large (at most {})", u32::MAX),
                    )),
                    Some(n) => Ok(Some(n)),
                }
            };
            let limits = crate::shaping::Limits {
                max_connections: opt("max_connections", value.max_connections)?.map(|n| n as usize),
                max_messages_per_connection: opt(
                    "max_messages_per_connection",
                    value.max_messages_per_connection,
                )?
                .map(|n| n as usize),
                max_messages_per_minute: opt(
                    "max_messages_per_minute",
                    value.max_messages_per_minute,
                )?
                .map(|n| n as u32),
            };
            out.push(crate::shaping::Rule { key: lower, limits });
        }
        out.sort_by(|a, b| (a.key == "*", &a.key).cmp(&(b.key == "*", &b.key)));
        Ok(out)
    }
}

/// `[shaping."KEY"]` tables, only the limits that are set.
fn shaping_to_toml(o: &mut String, rules: &[crate::shaping::Rule]) {
    for rule in rules {
        let _ = writeln!(o, "\n[shaping.{}]", q(&rule.key));
        let l = &rule.limits;
        if let Some(n) = l.max_connections {
            let _ = writeln!(o, "max_connections = {n}");
        }
        if let Some(n) = l.max_messages_per_connection {
            let _ = writeln!(o, "max_messages_per_connection = {n}");
        }
        if let Some(n) = l.max_messages_per_minute {
            let _ = writeln!(o, "max_messages_per_minute = {n}");
        }
    }
}

// ---------------------------------------------------------------------------
// `[dkim."DOMAIN"]`: a signing key per From domain (see `crate::dkim`).

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDkim {
    selector: Option<String>,
    key: Option<String>,
    subdomains: Option<bool>,
}

impl Validator<'_> {
    /// Only the tables: the key files are read by `serve` (they are
    /// secrets, unreadable to `mailhop sendmail`'s users).
    fn dkim(&self, raw: BTreeMap<String, RawDkim>) -> Result<Vec<DkimDomain>, ConfigError> {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut out = Vec::new();
        for (domain, table) in raw {
            let k = format!("dkim.{}", toml_key(&domain));
            let lower = domain.to_ascii_lowercase();
            check_domain(&lower).map_err(|why| self.err(&k, format!("{domain:?}: {why}")))?;
            if let Some(first) = seen.insert(lower.clone(), domain.clone()) {
                return Err(self.err(
                    &k,
                    format!(
                        "same domain as dkim.{} (domains are not case-sensitive)",
                        toml_key(&first)
                    ),
                ));
            }
            let selector = table.selector.ok_or_else(|| {
                self.err(
                    &format!("{k}.selector"),
                    "missing (the s= of the signature)",
                )
            })?;
            check_domain(&selector).map_err(|why| {
                self.err(&format!("{k}.selector"), format!("{selector:?}: {why}"))
            })?;
            let key = table
                .key
                .filter(|f| !f.is_empty())
                .ok_or_else(|| self.err(&format!("{k}.key"), "missing (a PEM private key file)"))?;
            out.push(DkimDomain {
                domain: lower,
                selector,
                key: resolve(self.base, &key),
                subdomains: table.subdomains.unwrap_or(false),
            });
        }
        // By domain as written to the queue, never by the file's case.
        out.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(out)
    }
}

/// `[dkim."DOMAIN"]` tables.
fn dkim_to_toml(o: &mut String, tables: &[DkimDomain]) {
    for t in tables {
        let _ = writeln!(o, "\n[dkim.{}]", q(&t.domain));
        let _ = writeln!(o, "selector = {}", q(&t.selector));
        let _ = writeln!(o, "key = {}", qpath(Some(&t.key)));
        let _ = writeln!(o, "subdomains = {}", t.subdomains);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/mailhop"), "mailhop.toml")
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("should fail").0
    }

    const FULL: &str = r#"
hostname = "beta.example"
listen = ["127.0.0.1:2525", "[::1]:2525"]
queue = "q/mailhop.db"
max_message_size = 1048576
max_recipients = 200
max_connections = 50
max_connections_per_ip = 5
max_hops = 30
relay_networks = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
relay_domains = ["Example.ORG"]
local_domains = ["beta.example"]
local_users = ["Jones", "brown"]
maildir = "/var/mail/mailhop"
source_routes = "strip"
bare_lf = "normalize"

[routes]
"example.org" = "127.0.0.1:2526"
"*" = "smarthost.example:25"
"v6.example" = "[::1]:2527"
"mx.example" = "relay.example"

[retry]
schedule = ["90s", "10m"]
max_lifetime = "2d"
delay_warning = "0s"
history_retention = "30d"

[timeouts]
server_idle = "1m"
connect = "10s"
command = "2m"
data_init = "3m"
data_block = "4m"
data_done = "5m"

[dns]
servers = ["127.0.0.1:5353", "::1"]

[outbound]
max_connections = 7
max_connections_per_host = 3
chunking = false
mta_sts = false

[tls]
cert = "cert.pem"
key = "/keys/key.pem"
implicit_listen = ["127.0.0.1:4650"]
outbound = "required"
ca_file = "ca.pem"
verify_outbound = true

[auth]
users_file = "users"

[dkim."Example.COM"]
selector = "s1"
key = "dkim/s1.pem"

[dkim."corp.example"]
selector = "2026.ed"
key = "/keys/ed.pem"
subdomains = true
"#;

    #[test]
    fn default() {
        let c = Config::load(None).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(c.file, None);
        assert!(!c.hostname.is_empty());
        assert_eq!(
            c.listen,
            vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.queue, cwd.join("mailhop.db"));
        assert_eq!(c.max_message_size, 10_485_760);
        assert_eq!(c.max_recipients, 100);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_connections_per_ip, 100);
        assert_eq!(c.max_hops, 100);
        let nets: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert_eq!(c.relay_networks, nets);
        assert!(c.relay_domains.is_empty() && c.local_domains.is_empty());
        assert!(c.local_users.is_empty() && c.routes.is_empty());
        assert_eq!(c.maildir, cwd.join("mail"));
        assert_eq!(c.source_routes, SourceRoutes::Honor);
        assert_eq!(c.bare_lf, BareLineEnds::Reject);
        let m = |n: u64| Duration::from_secs(60 * n);
        assert_eq!(c.retry.schedule, vec![m(5), m(30), m(60), m(120), m(180)]);
        assert_eq!(c.retry.max_lifetime, m(5 * 24 * 60));
        assert_eq!(c.retry.delay_warning, m(4 * 60));
        assert_eq!(c.retry.history_retention, m(7 * 24 * 60));
        let t = &c.timeouts;
        assert_eq!(t.server_idle, m(5));
        assert_eq!(t.connect, Duration::from_secs(30));
        assert_eq!(
            (t.command, t.data_init, t.data_block, t.data_done),
            (m(5), m(2), m(3), m(10))
        );
        assert_eq!(c.outbound_max_connections, 500);
        assert_eq!(c.outbound_max_connections_per_host, 20);
        assert!(c.outbound_chunking);
        assert!(c.outbound_mta_sts);
        assert_eq!(c.tls.cert, None);
        assert_eq!(c.tls.key, None);
        assert!(c.tls.implicit_listen.is_empty());
        assert_eq!(c.tls.outbound, TlsOutbound::Opportunistic);
        assert_eq!(c.tls.ca_file, None);
        assert!(!c.tls.verify_outbound);
        assert_eq!(c.auth_users_file, None);
    }

    #[test]
    fn full_file() {
        let c = parse(FULL).unwrap();
        let base = Path::new("/etc/mailhop");
        assert_eq!(c.hostname, "beta.example");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.queue, base.join("q/mailhop.db"));
        assert_eq!(c.max_message_size, 1_048_576);
        assert_eq!(c.max_recipients, 200);
        assert_eq!(
            (c.max_connections, c.max_connections_per_ip, c.max_hops),
            (50, 5, 30)
        );
        assert_eq!(
            c.relay_networks[1],
            "192.0.2.7/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(c.relay_domains, vec!["example.org"]);
        assert_eq!(c.local_users, vec!["jones", "brown"]);
        assert_eq!(c.maildir, PathBuf::from("/var/mail/mailhop"));
        assert_eq!(c.source_routes, SourceRoutes::Strip);
        assert_eq!(c.bare_lf, BareLineEnds::Normalize);
        let domains: Vec<&str> = c.routes.iter().map(|r| r.domain.as_str()).collect();
        assert_eq!(domains, ["example.org", "mx.example", "v6.example", "*"]);
        let hp = |h: &str, port| RouteTarget::HostPort {
            host: h.into(),
            port,
        };
        assert_eq!(c.routes[0].target, hp("127.0.0.1", 2526));
        assert_eq!(c.routes[1].target, RouteTarget::Mx("relay.example".into()));
        assert_eq!(c.routes[2].target, hp("::1", 2527));
        assert_eq!(c.routes[2].written, "[::1]:2527");
        assert_eq!(c.routes[3].target, hp("smarthost.example", 25));
        assert_eq!(
            c.retry.schedule,
            [Duration::from_secs(90), Duration::from_secs(600)]
        );
        assert_eq!(c.retry.delay_warning, Duration::ZERO);
        assert_eq!(c.timeouts.data_done, Duration::from_secs(300));
        let dns: Vec<SocketAddr> = vec![
            "127.0.0.1:5353".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
        ];
        assert_eq!(c.dns_servers, dns);
        assert_eq!(
            (
                c.outbound_max_connections,
                c.outbound_max_connections_per_host
            ),
            (7, 3)
        );
        assert_eq!(c.tls.cert, Some(base.join("cert.pem")));
        assert_eq!(c.tls.key, Some(PathBuf::from("/keys/key.pem")));
        assert_eq!(c.tls.implicit_listen.len(), 1);
        assert_eq!(c.tls.outbound, TlsOutbound::Required);
        assert_eq!(c.tls.ca_file, Some(base.join("ca.pem")));
        assert!(c.tls.verify_outbound);
        assert!(!c.outbound_chunking);
        assert!(!c.outbound_mta_sts);
        assert_eq!(c.auth_users_file, Some(base.join("users")));
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &[&str])] = &[
            ("bogus = 1", &["mailhop.toml: ", "bogus"]),
            ("[retry]\nbogus = \"5m\"", &["mailhop.toml: ", "bogus"]),
            ("[nosuch]\na = 1", &["mailhop.toml: ", "nosuch"]),
            (
                "[retry]\nschedule = [\"5m\", \"5x\"]",
                &["mailhop.toml: retry.schedule[1]: bad duration \"5x\" (expected a number and one of s, m, h, d)"],
            ),
            ("[timeouts]\nconnect = \"0s\"", &["mailhop.toml: timeouts.connect: "]),
            ("[retry]\nschedule = []", &["mailhop.toml: retry.schedule: "]),
            ("[routes]\n\"example.org\" = \"host:port\"", &["mailhop.toml: routes.\"example.org\": bad route \"host:port\""]),
            ("[routes]\n\"example.org\" = \"::1:25\"", &["routes.\"example.org\": ", "brackets"]),
            ("[routes]\n\"bad domain\" = \"mx.example\"", &["routes.\"bad domain\": "]),
            (
                "[routes]\n\"Example.org\" = \"a.example\"\n\"example.ORG\" = \"b.example\"",
                &["routes.\"example.ORG\": same domain as routes.\"Example.org\""],
            ),
            ("relay_networks = [\"10.0.0.0/33\"]", &["mailhop.toml: relay_networks[0]: bad network \"10.0.0.0/33\""]),
            ("[tls]\ncert = \"c.pem\"", &["mailhop.toml: tls.cert: ", "tls.key"]),
            ("[tls]\nkey = \"k.pem\"", &["mailhop.toml: tls.key: "]),
            ("[tls]\nimplicit_listen = [\"127.0.0.1:465\"]", &["mailhop.toml: tls.implicit_listen: "]),
            ("max_message_size = \"big\"", &["mailhop.toml: ", "max_message_size", "invalid type"]),
            ("[retry]\nmax_lifetime = 5", &["mailhop.toml: ", "max_lifetime", "invalid type"]),
            ("max_message_size = 0", &["mailhop.toml: max_message_size: 0 is too small"]),
            ("max_message_size = 1073741825", &["mailhop.toml: max_message_size: ", "too large"]),
            ("max_recipients = 0", &["mailhop.toml: max_recipients: "]),
            ("max_hops = -1", &["mailhop.toml: max_hops: "]),
            ("[outbound]\nmax_connections_per_host = 0", &["mailhop.toml: outbound.max_connections_per_host: "]),
            ("listen = []", &["mailhop.toml: listen: "]),
            ("listen = [\"localhost:25\"]", &["mailhop.toml: listen[0]: bad address \"localhost:25\""]),
            ("[dns]\nservers = [\"x\"]", &["mailhop.toml: dns.servers[0]: "]),
            ("local_domains = [\"a..b\"]", &["mailhop.toml: local_domains[0]: "]),
            ("local_users = [\"../etc\"]", &["mailhop.toml: local_users[0]: "]),
            ("local_users = [\"\"]", &["mailhop.toml: local_users[0]: "]),
            ("source_routes = \"keep\"", &["mailhop.toml: source_routes: unknown value \"keep\""]),
            ("bare_lf = \"ok\"", &["mailhop.toml: bare_lf: "]),
            ("[tls]\noutbound = \"never\"", &["mailhop.toml: tls.outbound: "]),
            ("queue = \"\"", &["mailhop.toml: queue: "]),
            ("hostname = \"bad host\"", &["mailhop.toml: hostname: "]),
            ("relay_domains = [\"a.example\"]\nlocal_domains = [\"A.example\"]", &["local_domains: "]),
            ("listen = [\"1.2.3.4:25\"\n", &["mailhop.toml: ", "line 1"]),
        ];
        for (text, needles) in cases {
            let e = err(text);
            for n in *needles {
                assert!(e.contains(n), "{text:?}: {e:?} lacks {n:?}");
            }
        }
    }

    #[test]
    fn relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mailhop.toml");
        std::fs::write(
            &file,
            "queue = \"./spool/q.db\"\nmaildir = \"/abs/mail\"\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nca_file = \"\"\n[auth]\nusers_file = \"../users\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&file)).unwrap();
        assert_eq!(c.file.as_deref(), Some(file.as_path()));
        assert_eq!(c.queue, dir.path().join("spool/q.db"));
        assert_eq!(c.maildir, PathBuf::from("/abs/mail"));
        assert_eq!(c.tls.cert, Some(dir.path().join("c.pem")));
        assert_eq!(c.tls.ca_file, None);
        assert_eq!(c.auth_users_file, Some(dir.path().join("../users")));

        let missing = dir.path().join("nope.toml");
        let e = Config::load(Some(&missing)).unwrap_err().0;
        assert!(e.starts_with(&missing.display().to_string()), "{e}");
        assert!(e.contains("No such file"), "{e}");
    }

    #[test]
    fn route_tables_with_tls_and_auth() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("smarthost.secret"), "pa ss\nignored\n").unwrap();
        std::fs::write(dir.path().join("empty.secret"), "\n").unwrap();
        let load = |routes: &str| {
            Config::from_toml(&format!("[routes]\n{routes}\n"), dir.path(), "m.toml")
        };
        let c = load(
            "\"*\" = { host = \"smtp.provider.example:587\", tls = \"required\", auth = \"relay-user\", password_file = \"smarthost.secret\" }\n\
             \"a.example\" = { host = \"[::1]:465\", tls = \"implicit\", verify = false }\n\
             \"b.example\" = \"mx.b.example\"",
        )
        .unwrap();
        let star = &c.routes[2];
        assert_eq!(star.written, "smtp.provider.example:587");
        let opt = star.options.as_ref().unwrap();
        assert_eq!(opt.tls, RouteTls::Required);
        assert!(opt.verify, "verify defaults to true with auth");
        let auth = opt.auth.as_ref().unwrap();
        assert_eq!(auth.user, "relay-user");
        assert_eq!(auth.password.expose(), "pa ss");
        assert_eq!(auth.password_file, dir.path().join("smarthost.secret"));
        let a = c.routes[0].options.as_ref().unwrap();
        assert_eq!(
            (a.tls, a.verify, a.auth.is_none()),
            (RouteTls::Implicit, false, true)
        );
        assert_eq!(c.routes[1].options, None);
        // Printed: the file, never the password; and read back the same.
        let out = c.to_toml();
        assert!(out.contains("password_file = \""), "{out}");
        assert!(!out.contains("pa ss"), "{out}");
        assert!(!format!("{c:?}").contains("pa ss"));
        let back = Config::from_toml(&out, Path::new("/elsewhere"), "out").unwrap();
        assert_eq!(back, c, "{out}");

        let err = |routes: &str| load(routes).unwrap_err().0;
        let cases: &[(&str, &[&str])] = &[
            (
                "\"*\" = { host = \"h.example:587\", auth = \"u\", password_file = \"smarthost.secret\" }",
                &["m.toml: routes.\"*\".tls: auth needs tls = \"required\""],
            ),
            (
                "\"*\" = { host = \"h.example:587\", tls = \"opportunistic\", auth = \"u\", password_file = \"smarthost.secret\" }",
                &["routes.\"*\".tls: "],
            ),
            (
                "\"*\" = { host = \"h.example:587\", tls = \"required\", auth = \"u\", password_file = \"nope.secret\" }",
                &["routes.\"*\".password_file: cannot read ", "nope.secret"],
            ),
            (
                "\"*\" = { host = \"h.example:587\", tls = \"required\", auth = \"u\", password_file = \"empty.secret\" }",
                &["routes.\"*\".password_file: ", "empty.secret", "is empty"],
            ),
            (
                "\"*\" = { host = \"h.example:587\", tls = \"required\", auth = \"u\" }",
                &["routes.\"*\".auth: needs password_file"],
            ),
            ("\"*\" = { host = \"h.example:587\", port = 25 }", &["routes.\"*\".port: unknown key"]),
            ("\"*\" = { tls = \"required\" }", &["routes.\"*\": a route table needs host"]),
            ("\"*\" = { host = \"h.example:587\", tls = \"always\" }", &["routes.\"*\".tls: unknown value"]),
            ("\"*\" = { host = \"h.example:587\", verify = \"yes\" }", &["routes.\"*\".verify: expected true or false"]),
            ("\"*\" = { host = \"h:p\" }", &["routes.\"*\": bad route"]),
            ("\"*\" = 25", &["routes.\"*\": expected a string or a table"]),
            (
                "\"a.example\" = \"h.example:587\"\n\"b.example\" = { host = \"h.example:587\", tls = \"required\" }",
                &["routes.\"b.example\": same host \"h.example:587\" as routes.\"a.example\""],
            ),
        ];
        for (text, needles) in cases {
            let e = err(text);
            for n in *needles {
                assert!(e.contains(n), "{text:?}: {e:?} lacks {n:?}");
            }
            assert!(!e.contains("pa ss"), "{e}");
        }
    }

    #[test]
    fn round_trip() {
        for text in [FULL, ""] {
            let c = parse(text).unwrap();
            let out = c.to_toml();
            let back = Config::from_toml(&out, Path::new("/elsewhere"), "out").unwrap();
            assert_eq!(back, c, "{out}");
            assert_eq!(back.to_toml(), out);
        }
        let out = parse(FULL).unwrap().to_toml();
        assert!(out.contains("schedule = [\"90s\", \"10m\"]"), "{out}");
        assert!(out.contains("history_retention = \"30d\""), "{out}");
        assert!(
            out.contains("queue = \"/etc/mailhop/q/mailhop.db\""),
            "{out}"
        );
        assert!(
            out.contains("[dkim.\"example.com\"]\nselector = \"s1\"\nkey = \"/etc/mailhop/dkim/s1.pem\"\nsubdomains = false"),
            "{out}"
        );
    }

    #[test]
    fn dkim_tables_need_a_domain_a_selector_and_a_key() {
        for (text, needles) in [
            ("[dkim.\"example.com\"]\nkey = \"k.pem\"", &["dkim.\"example.com\".selector", "missing"][..]),
            ("[dkim.\"example.com\"]\nselector = \"s1\"", &["dkim.\"example.com\".key", "missing"]),
            ("[dkim.\"example.com\"]\nselector = \"s 1\"\nkey = \"k\"", &["dkim.\"example.com\".selector"]),
            ("[dkim.\"exa mple.com\"]\nselector = \"s1\"\nkey = \"k\"", &["dkim.\"exa mple.com\""]),
            (
                "[dkim.\"example.com\"]\nselector = \"a\"\nkey = \"k\"\n[dkim.\"EXAMPLE.com\"]\nselector = \"b\"\nkey = \"k\"",
                &["same domain"],
            ),
            ("[dkim.\"example.com\"]\nselector = \"s1\"\nkey = \"k\"\nalgorithm = \"rsa\"", &["unknown field"]),
        ] {
            let e = err(text);
            for n in needles {
                assert!(e.contains(n), "{text:?}: {e:?} lacks {n:?}");
            }
        }
    }

    #[test]
    fn durations() {
        let ok = [
            ("0s", 0),
            ("90s", 90),
            ("5m", 300),
            ("4h", 14_400),
            ("7d", 604_800),
            ("007m", 420),
            ("36500d", 36500 * 86400),
        ];
        for (s, secs) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_secs(secs)), "{s}");
        }
        for s in [
            "", "s", "5", "5x", "5 m", " 5m", "5m ", "1.5h", "-5m", "+5m", "5mm", "5M", "m5", "é",
            "5é",
        ] {
            let e = parse_duration(s).unwrap_err();
            assert!(e.starts_with("bad duration"), "{s:?}: {e}");
        }
        for s in ["36501d", "99999999999999999999s", "18446744073709551615d"] {
            assert!(parse_duration(s).unwrap_err().contains("too large"), "{s}");
        }
        let fmt = [
            (0, "0s"),
            (90, "90s"),
            (120, "2m"),
            (7200, "2h"),
            (172_800, "2d"),
            (90_000, "25h"),
        ];
        for (secs, s) in fmt {
            assert_eq!(format_duration(Duration::from_secs(secs)), s);
        }
    }

    #[test]
    fn resolv_conf() {
        let text = "# comment\nsearch example\nnameserver 10.0.0.1\nnameserver ::1\nnameserver fe80::1%eth0\n";
        let want: Vec<SocketAddr> =
            vec!["10.0.0.1:53".parse().unwrap(), "[::1]:53".parse().unwrap()];
        assert_eq!(resolv_conf_servers(text), want);
    }

    // `[shaping]`.

    #[test]
    fn shaping_parses_sorts_and_round_trips() {
        let text = r#"
[shaping."Gmail.com"]
max_connections = 5
max_messages_per_connection = 100
max_messages_per_minute = 600
[shaping."*"]
max_messages_per_minute = 6000
[shaping."127.0.0.1:2526"]
max_connections = 2
"#;
        let c = parse(text).unwrap();
        let keys: Vec<&str> = c.shaping.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["127.0.0.1:2526", "gmail.com", "*"]);
        let gmail = crate::shaping::lookup(&c.shaping, "alt1.gmail.com").unwrap();
        assert_eq!(gmail.max_connections, Some(5));
        assert_eq!(gmail.max_messages_per_connection, Some(100));
        assert_eq!(gmail.max_messages_per_minute, Some(600));
        let local = crate::shaping::lookup(&c.shaping, "127.0.0.1:2526").unwrap();
        assert_eq!(local.max_messages_per_minute, None);
        let out = c.to_toml();
        assert!(
            out.contains("[shaping.\"gmail.com\"]\nmax_connections = 5\n"),
            "{out}"
        );
        let back = Config::from_toml(&out, Path::new("/elsewhere"), "out").unwrap();
        assert_eq!(back, c, "{out}");
        assert_eq!(back.to_toml(), out);
        assert!(parse("").unwrap().shaping.is_empty());
    }

    #[test]
    fn shaping_errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            (
                "[shaping.\"a.example\"]\nmax_rate = 5",
                "unknown field `max_rate`",
            ),
            (
                "[shaping.\"a.example\"]\nmax_connections = 0",
                "mailhop.toml: shaping.\"a.example\".max_connections: 0 is too small",
            ),
            (
                "[shaping.\"a.example\"]\nmax_messages_per_minute = -3",
                "shaping.\"a.example\".max_messages_per_minute: -3 is too small",
            ),
            (
                "[shaping.\"a.example\"]\nmax_messages_per_connection = 0",
                "shaping.\"a.example\".max_messages_per_connection: 0 is too small",
            ),
            (
                "[shaping.\"a.example\"]\nmax_messages_per_minute = 99999999999",
                "is too large",
            ),
            (
                "[shaping.\"bad key\"]\nmax_connections = 1",
                "shaping.\"bad key\": bad key",
            ),
            (
                "[shaping.\"A.example\"]\n[shaping.\"a.EXAMPLE\"]",
                "same next hop as shaping.\"A.example\"",
            ),
            (
                "[shaping.\"a.example\"]\nmax_connections = \"5\"",
                "invalid type",
            ),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
