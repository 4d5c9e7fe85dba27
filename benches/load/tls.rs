//! TLS for the load generator: a rustls client configuration that takes
//! any certificate (a load tool measures, it does not authenticate), and a
//! test certificate for the mailhop that `--e2e` starts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::args::{Args, CertType};

/// Client sessions remembered with `--resumption on`. rustls keeps up to
/// eight TLS 1.3 tickets per server name, and every target has one name.
const SESSION_CACHE: usize = 1024;

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
pub fn client(mode: Mode, name: ServerName<'static>, resumption: bool) -> Result<Client, String> {
    let provider = Arc::new(ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.resumption = if resumption {
        Resumption::in_memory_sessions(SESSION_CACHE)
    } else {
        Resumption::disabled()
    };
    Ok(Client {
        mode,
        config: Arc::new(config),
        name,
    })
}

/// Takes any certificate, but checks the handshake signatures: the client
/// then does the work a verifying client does per handshake, minus the
/// chain, which would only cost the client.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
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
        let algs = &self.0.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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
