//! What became of TLS with one MX host under a policy, named as RFC 8460
//! (TLS-RPT) 4.3 names result types, so the history can be summed into a
//! report: successful sessions, and failures by type.

use rustls::CertificateError;

/// One session's TLS outcome under an MTA-STS policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsResult {
    /// TLS with a valid certificate for a matching MX host.
    Success,
    /// The MX host did not offer STARTTLS (or refused it).
    StarttlsNotSupported,
    /// The certificate does not name the MX host.
    CertificateHostMismatch,
    CertificateExpired,
    /// Not issued by a trusted root (self-signed, unknown issuer, bad chain).
    CertificateNotTrusted,
    /// Anything else; also an MX host that matches none of the policy's
    /// `mx` patterns (RFC 8460 has no type of its own for it).
    ValidationFailure,
}

impl TlsResult {
    /// The RFC 8460 `result-type` (`success` for a successful session).
    pub fn as_str(self) -> &'static str {
        match self {
            TlsResult::Success => "success",
            TlsResult::StarttlsNotSupported => "starttls-not-supported",
            TlsResult::CertificateHostMismatch => "certificate-host-mismatch",
            TlsResult::CertificateExpired => "certificate-expired",
            TlsResult::CertificateNotTrusted => "certificate-not-trusted",
            TlsResult::ValidationFailure => "validation-failure",
        }
    }

    /// A failed certificate check (rustls's own error), by type.
    pub fn of_tls_error(e: &rustls::Error) -> TlsResult {
        use CertificateError::*;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                NotValidForName | NotValidForNameContext { .. } => {
                    TlsResult::CertificateHostMismatch
                }
                Expired | ExpiredContext { .. } | NotValidYet | NotValidYetContext { .. } => {
                    TlsResult::CertificateExpired
                }
                UnknownIssuer
                | BadSignature
                | BadEncoding
                | Revoked
                | InvalidPurpose
                | InvalidPurposeContext { .. }
                | ApplicationVerificationFailure => TlsResult::CertificateNotTrusted,
                _ => TlsResult::CertificateNotTrusted,
            },
            _ => TlsResult::ValidationFailure,
        }
    }

    /// As `of_tls_error`, for the `io::Error` a TLS read fails with.
    pub fn of_io_error(e: &std::io::Error) -> TlsResult {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map_or(TlsResult::ValidationFailure, TlsResult::of_tls_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_map_to_rfc_8460_types() {
        let cert = |c| rustls::Error::InvalidCertificate(c);
        assert_eq!(
            TlsResult::of_tls_error(&cert(CertificateError::UnknownIssuer)),
            TlsResult::CertificateNotTrusted
        );
        assert_eq!(
            TlsResult::of_tls_error(&cert(CertificateError::NotValidForName)),
            TlsResult::CertificateHostMismatch
        );
        assert_eq!(
            TlsResult::of_tls_error(&cert(CertificateError::Expired)),
            TlsResult::CertificateExpired
        );
        assert_eq!(
            TlsResult::of_tls_error(&rustls::Error::HandshakeNotComplete),
            TlsResult::ValidationFailure
        );
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            cert(CertificateError::UnknownIssuer),
        );
        assert_eq!(
            TlsResult::of_io_error(&io),
            TlsResult::CertificateNotTrusted
        );
        let plain = std::io::Error::other("reset");
        assert_eq!(TlsResult::of_io_error(&plain), TlsResult::ValidationFailure);
        assert_eq!(
            TlsResult::StarttlsNotSupported.as_str(),
            "starttls-not-supported"
        );
    }
}
