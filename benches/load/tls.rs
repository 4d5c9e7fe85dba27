//! TLS for the load generator: a rustls client configuration that takes
//! any certificate (a load tool measures, it does not authenticate), and a
//! test certificate for the mailhop that `--e2e` starts.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue,
    Tls13ClientSessionValue,
};
use rustls::crypto::ring;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, NamedGroup};

use super::args::{Args, CertType};

/// TLS 1.2 sessions (one per server name) and key-exchange hints.
const SESSION_CACHE: usize = 64;

/// How the sessions of a run speak TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    StartTls,
    Implicit,
}

impl Mode {
    /// `--starttls`, `--tls` (clap keeps them apart) or neither.
    pub fn of(args: &Args) -> Mode {
        match (args.starttls, args.tls) {
            (true, _) => Mode::StartTls,
            (false, true) => Mode::Implicit,
            (false, false) => Mode::Plain,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Plain => "none",
            Mode::StartTls => "starttls",
            Mode::Implicit => "implicit",
        }
    }
}

/// What every TLS session of a run shares.
pub struct Client {
    pub mode: Mode,
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

/// `resumption`: keep a session cache (reconnects resume) or none (every
/// handshake is a full one). Protocol versions are rustls's defaults
/// (TLS 1.3 and 1.2), as a real client would offer.
/// `tickets`: TLS 1.3 tickets kept per server name (single use each).
pub fn client(
    mode: Mode,
    name: ServerName<'static>,
    resumption: bool,
    tickets: usize,
) -> Result<Client, String> {
    let provider = Arc::new(ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(mailhop::tls::Unverified::new(provider)))
        .with_no_client_auth();
    config.resumption = if resumption {
        Resumption::store(Arc::new(TicketPool::new(tickets)))
    } else {
        Resumption::disabled()
    };
    Ok(Client {
        mode,
        config: Arc::new(config),
        name,
    })
}

/// rustls's own client cache keeps at most eight TLS 1.3 tickets per
/// server name, and a ticket serves one connection: at c=100 against one
/// server, 92 of every burst of reconnects would do a full handshake for
/// want of a ticket, which a fleet of real clients, each with its own
/// cache, would not. This pool keeps up to `per_name` tickets instead,
/// oldest dropped first; the rest is rustls's cache.
#[derive(Debug)]
struct TicketPool {
    per_name: usize,
    tls13: Mutex<HashMap<ServerName<'static>, VecDeque<Tls13ClientSessionValue>>>,
    rest: ClientSessionMemoryCache,
}

impl TicketPool {
    fn new(per_name: usize) -> TicketPool {
        TicketPool {
            per_name: per_name.max(8),
            tls13: Mutex::new(HashMap::new()),
            rest: ClientSessionMemoryCache::new(SESSION_CACHE),
        }
    }
}

impl ClientSessionStore for TicketPool {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.rest.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.rest.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.rest.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.rest.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.rest.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let mut pool = self.tls13.lock().unwrap_or_else(|e| e.into_inner());
        let tickets = pool.entry(server_name).or_default();
        if tickets.len() >= self.per_name {
            tickets.pop_front();
        }
        tickets.push_back(value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let mut pool = self.tls13.lock().unwrap_or_else(|e| e.into_inner());
        // The newest: the likeliest to be still valid.
        pool.get_mut(server_name)?.pop_back()
    }
}

/// Writes a self-signed certificate for `localhost` and 127.0.0.1 into
/// `dir`: cert.pem and key.pem. rcgen with ring cannot generate RSA keys,
/// so an RSA key comes from `openssl genpkey` and rcgen signs with it.
pub fn write_test_cert(dir: &Path, kind: CertType) -> Result<(PathBuf, PathBuf), String> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let key = match kind {
        CertType::Ecdsa => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("ECDSA key: {e}"))?,
        CertType::Rsa => {
            let out = Command::new("openssl")
                .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
                .arg("rsa_keygen_bits:2048")
                .output()
                .map_err(|e| format!("openssl genpkey (for the RSA key): {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "openssl genpkey: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let pem = String::from_utf8_lossy(&out.stdout);
            rcgen::KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)
                .map_err(|e| format!("RSA key from openssl: {e}"))?
        }
    };
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let params = rcgen::CertificateParams::new(names).map_err(|e| format!("cert: {e}"))?;
    let cert = params.self_signed(&key).map_err(|e| format!("cert: {e}"))?;
    std::fs::write(&cert_path, cert.pem()).map_err(|e| format!("{}: {e}", cert_path.display()))?;
    std::fs::write(&key_path, key.serialize_pem())
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    Ok((cert_path, key_path))
}
