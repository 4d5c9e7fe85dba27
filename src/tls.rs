//! TLS settings from `[tls]`: the server side (STARTTLS, implicit TLS
//! listeners) and the client side (STARTTLS to next hops), as rustls
//! configurations. rustls is sans-IO, so the event loop drives it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ServerSessionMemoryCache;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{Config, TlsOutbound};

/// Server sessions kept for TLS 1.2 clients that resume by session ID
/// (bounded: the oldest go first). A few hundred bytes each.
const SERVER_SESSION_CACHE: usize = 4096;

#[derive(Clone)]
pub struct TlsSetup {
    /// Present when `cert` and `key` are set: STARTTLS is offered.
    pub server: Option<Arc<ServerConfig>>,
    pub client: Arc<ClientConfig>,
    /// Verifies the server certificate and name: for `[routes]` tables
    /// with `verify` (and `client` itself with `verify_outbound`). Present
    /// when some route or `verify_outbound` needs it.
    pub verified: Option<Arc<ClientConfig>>,
    /// Takes any certificate: for `[routes]` tables with `verify = false`.
    pub unverified: Arc<ClientConfig>,
    /// `outbound = "required"`: no TLS, no delivery.
    pub required: bool,
    /// For MTA-STS (`[outbound] mta_sts`): policy fetches and MX hosts
    /// under a policy are verified against the system's roots and
    /// `[tls] ca_file` both. `None`: MTA-STS off, or nothing to trust.
    pub sts: Option<StsTls>,
}

/// A verifying client, and its verifier on its own: `testing` mode checks
/// a certificate after a handshake that took it anyway.
#[derive(Clone)]
pub struct StsTls {
    pub client: Arc<ClientConfig>,
    pub verifier: Arc<rustls::client::WebPkiServerVerifier>,
}

/// Reads the certificate, key and CA files named in `[tls]`. The message
/// names the key and the file.
pub fn load(config: &Config) -> Result<TlsSetup, String> {
    let provider = Arc::new(ring::default_provider());
    let server = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<_, _>>())
                .map_err(|e| format!("tls.cert: {}: {e}", cert.display()))?;
            if chain.is_empty() {
                return Err(format!(
                    "tls.cert: {}: no certificate in it",
                    cert.display()
                ));
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("tls.key: {}: {e}", key.display()))?;
            let mut server = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("tls: {e}"))?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .map_err(|e| format!("tls.cert/tls.key: {e}"))?;
            // Session resumption, so that a client coming back (a relay
            // sending the next batch) skips the key exchange and the
            // signature: stateless tickets (TLS 1.3 and 1.2, keys rotated
            // by rustls every 6 hours, so the loop keeps no per-client
            // state for them) and a bounded cache for session IDs.
            server.ticketer =
                ring::Ticketer::new().map_err(|e| format!("tls: session ticket keys: {e}"))?;
            server.session_storage = ServerSessionMemoryCache::new(SERVER_SESSION_CACHE);
            Some(Arc::new(server))
        }
        _ => None,
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let verifying_route = config
        .routes
        .iter()
        .find(|r| r.options.as_ref().is_some_and(|o| o.verify));
    let verified = match (config.tls.verify_outbound, verifying_route) {
        (true, _) => Some(Arc::new(verifying(
            builder.clone(),
            config,
            "tls.verify_outbound",
        )?)),
        (false, Some(route)) => {
            let key = format!("routes.{:?}.verify", route.domain);
            Some(Arc::new(verifying(builder.clone(), config, &key)?))
        }
        (false, None) => None,
    };
    let unverified = Arc::new(
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider.clone())))
            .with_no_client_auth(),
    );
    let client = match &verified {
        Some(verified) if config.tls.verify_outbound => verified.clone(),
        _ => unverified.clone(),
    };
    let sts = match config.outbound_mta_sts {
        true => sts_client(config, provider)?,
        false => None,
    };
    Ok(TlsSetup {
        server,
        client,
        verified,
        unverified,
        required: config.tls.outbound == TlsOutbound::Required,
        sts,
    })
}

/// The MTA-STS client: RFC 8461 4.2 asks for a certificate "chained to
/// a trusted root", so the system's roots count, and `[tls] ca_file` on
/// top (a private CA, or tests). Nothing to trust at all: `None`, and
/// policies can be neither fetched nor met (a warning says so).
fn sts_client(config: &Config, provider: Arc<CryptoProvider>) -> Result<Option<StsTls>, String> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(ca) = &config.tls.ca_file {
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("tls.ca_file: {}: {e}", ca.display()))?;
        roots.add_parsable_certificates(certs);
    }
    if roots.is_empty() {
        log::warn!(
            "outbound.mta_sts: no trusted root certificates (system or [tls] ca_file): \
             MTA-STS policies cannot be fetched"
        );
        return Ok(None);
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("outbound.mta_sts: {e}"))?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_webpki_verifier(verifier.clone())
        .with_no_client_auth();
    Ok(Some(StsTls {
        client: Arc::new(client),
        verifier,
    }))
}

/// A client config that checks certificates against `[tls] ca_file` or
/// the system's roots; `key` names who asked, for the error.
fn verifying(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>,
    config: &Config,
    key: &str,
) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match &config.tls.ca_file {
        Some(ca) => {
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("tls.ca_file: {}: {e}", ca.display()))?;
            roots.add_parsable_certificates(certs);
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    if roots.is_empty() {
        return Err(format!(
            "{key}: no trusted root certificates found (set [tls] ca_file)"
        ));
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// The name a next hop is verified against: the MX host name, or its
/// address when there is no name.
pub fn server_name(name: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(name.to_string()).ok()
}

/// Postfix `smtp_tls_security_level = may`/`encrypt`: encrypt, but take any
/// certificate. The handshake signatures are still checked, so the session
/// key belongs to whoever holds the certificate's key.
#[derive(Debug)]
pub struct Unverified(Arc<CryptoProvider>);

impl Unverified {
    pub fn new(provider: Arc<CryptoProvider>) -> Unverified {
        Unverified(provider)
    }
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rustls::{ClientConnection, Connection, HandshakeKind, ServerConnection};

    use super::*;

    /// A config naming a fresh self-signed certificate in `dir`.
    fn config_with_cert(dir: &Path) -> Config {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        let text = "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n";
        Config::from_toml(text, dir, "test.toml").unwrap()
    }

    /// Moves what `from` has to send into `to`; false if nothing.
    fn pass(from: &mut Connection, to: &mut Connection) -> bool {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).unwrap();
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            to.process_new_packets().unwrap();
        }
        !wire.is_empty()
    }

    /// Both ways, in memory, until neither side has anything to send
    /// (the server's tickets come after its handshake is done).
    fn exchange(client: &mut Connection, server: &mut Connection) {
        for _ in 0..20 {
            let sent = pass(client, server);
            if !(pass(server, client) || sent) {
                return;
            }
        }
        panic!("the handshake did not settle");
    }

    fn handshake(setup: &TlsSetup) -> Option<HandshakeKind> {
        let server = setup.server.clone().expect("a server config");
        let name = ServerName::try_from("localhost").unwrap();
        let mut client: Connection = ClientConnection::new(setup.client.clone(), name)
            .unwrap()
            .into();
        let mut server: Connection = ServerConnection::new(server).unwrap().into();
        exchange(&mut client, &mut server);
        assert!(!client.is_handshaking() && !server.is_handshaking());
        assert_eq!(client.handshake_kind(), server.handshake_kind());
        client.handshake_kind()
    }

    #[test]
    fn a_verifying_route_gets_a_verifying_client() {
        let dir = tempfile::tempdir().unwrap();
        config_with_cert(dir.path());
        let plain = Config::from_toml("", dir.path(), "t.toml").unwrap();
        assert!(load(&plain).unwrap().verified.is_none());
        let text = "[tls]\nca_file = \"cert.pem\"\n[routes]\n\"*\" = { host = \"[::1]:465\", tls = \"implicit\", verify = true }\n";
        let config = Config::from_toml(text, dir.path(), "t.toml").unwrap();
        let setup = load(&config).unwrap();
        assert!(setup.verified.is_some());
        // The global client stays as verify_outbound says.
        assert!(!Arc::ptr_eq(
            setup.verified.as_ref().unwrap(),
            &setup.client
        ));
        assert!(Arc::ptr_eq(&setup.unverified, &setup.client));
        // Nothing to trust: the error names the route's key.
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let text = text.replace("cert.pem", "empty.pem");
        let config = Config::from_toml(&text, dir.path(), "t.toml").unwrap();
        let e = load(&config).err().unwrap();
        assert!(e.starts_with("routes.\"*\".verify: no trusted root"), "{e}");
    }

    #[test]
    fn second_handshake_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let setup = load(&config_with_cert(dir.path())).unwrap();
        assert!(setup.server.as_ref().unwrap().ticketer.enabled());
        // The relay's own client config (no verification by default)
        // keeps the ticket the server sends after the first handshake.
        assert_eq!(handshake(&setup), Some(HandshakeKind::Full));
        assert_eq!(handshake(&setup), Some(HandshakeKind::Resumed));
    }

    #[test]
    fn tls12_client_resumes_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut setup = load(&config_with_cert(dir.path())).unwrap();
        let provider = Arc::new(ring::default_provider());
        let tls12 = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth();
        setup.client = Arc::new(tls12);
        assert_eq!(handshake(&setup), Some(HandshakeKind::Full));
        assert_eq!(handshake(&setup), Some(HandshakeKind::Resumed));
    }
}
