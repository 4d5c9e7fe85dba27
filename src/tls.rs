//! TLS settings from `[tls]`: the server side (STARTTLS, implicit TLS
//! listeners) and the client side (STARTTLS to next hops), as rustls
//! configurations. rustls is sans-IO, so the event loop drives it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{Config, TlsOutbound};

#[derive(Clone)]
pub struct TlsSetup {
    /// Present when `cert` and `key` are set: STARTTLS is offered.
    pub server: Option<Arc<ServerConfig>>,
    pub client: Arc<ClientConfig>,
    /// `outbound = "required"`: no TLS, no delivery.
    pub required: bool,
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
            let server = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("tls: {e}"))?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .map_err(|e| format!("tls.cert/tls.key: {e}"))?;
            Some(Arc::new(server))
        }
        _ => None,
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let client = if config.tls.verify_outbound {
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
            return Err("tls.verify_outbound: no trusted root certificates found".to_string());
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth()
    };
    Ok(TlsSetup {
        server,
        client: Arc::new(client),
        required: config.tls.outbound == TlsOutbound::Required,
    })
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
struct Unverified(Arc<CryptoProvider>);

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
