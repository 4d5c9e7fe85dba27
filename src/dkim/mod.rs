//! DKIM signing (RFC 6376, RFC 8463): the keys of `[dkim."domain"]`, and
//! which of them signs a message. The signing itself is mail-auth's
//! (`signing` streams a message through it); the DNS record to publish is
//! `keygen`'s.

mod keygen;
mod signing;

pub use keygen::{keygen, Algorithm, KeyPair};
pub use signing::{Outcome, Signing, MAX_HEADER_SECTION};

use std::path::Path;

use crate::config::DkimDomain;

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

/// The fields signed: those RFC 6376 5.4.1 recommends, the MIME ones and
/// Message-ID. A listed field the message lacks is signed as absent, so it
/// cannot be added in transit; From is listed twice, so a second From
/// cannot be added either (oversigning, RFC 6376 8.15).
pub const SIGNED_FIELDS: [&str; 26] = [
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Resent-Date",
    "Resent-From",
    "Resent-To",
    "Resent-Cc",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Sender",
];

/// One `[dkim."domain"]` table, its key loaded.
pub struct DomainKey {
    /// Lower case, as `d=`.
    pub domain: String,
    pub selector: String,
    /// Also sign mail whose From is in a subdomain (with `d=` this domain).
    pub subdomains: bool,
    /// `ed25519-sha256` or `rsa-sha256`.
    pub algorithm: &'static str,
    signer: DkimSigner<DkimKey, Done>,
}

impl std::fmt::Debug for DomainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("subdomains", &self.subdomains)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl DomainKey {
    /// Reads and parses the table's key file (PEM: PKCS#8 RSA or Ed25519,
    /// or PKCS#1 RSA); the error names the file and what is wrong.
    pub fn load(table: &DkimDomain) -> Result<DomainKey, String> {
        let file = &table.key;
        let pem = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let der = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| format!("{}: not a PEM private key ({e})", file.display()))?;
        let (key, algorithm): (DkimKey, _) = match &der {
            PrivateKeyDer::Pkcs8(p8) => {
                match Ed25519Key::from_pkcs8_maybe_unchecked_der(p8.secret_pkcs8_der()) {
                    Ok(ed) => (ed.into(), "ed25519-sha256"),
                    Err(_) => (rsa(der.clone_key(), file)?, "rsa-sha256"),
                }
            }
            PrivateKeyDer::Pkcs1(_) => (rsa(der.clone_key(), file)?, "rsa-sha256"),
            _ => {
                return Err(format!(
                    "{}: an EC key; DKIM signs with RSA or Ed25519",
                    file.display()
                ))
            }
        };
        let signer = DkimSigner::from_key(key)
            .domain(table.domain.clone())
            .selector(table.selector.clone())
            .headers(SIGNED_FIELDS)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        Ok(DomainKey {
            domain: table.domain.clone(),
            selector: table.selector.clone(),
            subdomains: table.subdomains,
            algorithm,
            signer,
        })
    }
}

fn rsa(der: PrivateKeyDer<'static>, file: &Path) -> Result<DkimKey, String> {
    RsaKey::<Sha256>::from_key_der(der)
        .map(DkimKey::from)
        .map_err(|e| {
            format!(
                "{}: not an RSA or Ed25519 key, or RSA under 2048 bits ({e})",
                file.display()
            )
        })
}

/// Every configured key; shared by the sessions that sign with them.
#[derive(Debug, Default)]
pub struct Signers {
    keys: Vec<DomainKey>,
}

impl Signers {
    /// Every table's key; `None` when the config has none. The first key
    /// that cannot be read is the error.
    pub fn load(tables: &[DkimDomain]) -> Result<Option<Signers>, String> {
        if tables.is_empty() {
            return Ok(None);
        }
        let mut keys = tables
            .iter()
            .map(|t| DomainKey::load(t).map_err(|e| format!("dkim.\"{}\".key: {e}", t.domain)))
            .collect::<Result<Vec<_>, _>>()?;
        keys.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(Some(Signers { keys }))
    }

    pub fn keys(&self) -> &[DomainKey] {
        &self.keys
    }

    /// The key for a From address's domain: its own, else the nearest
    /// parent's that allows `subdomains`.
    pub fn for_domain(&self, domain: &str) -> Option<usize> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let find = |d: &str| {
            self.keys
                .binary_search_by(|k| k.domain.as_str().cmp(d))
                .ok()
        };
        if let Some(i) = find(&domain) {
            return Some(i);
        }
        let mut rest = domain.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(i) = find(parent).filter(|&i| self.keys[i].subdomains) {
                return Some(i);
            }
            rest = parent;
        }
        None
    }
}

#[cfg(test)]
mod tests;
