//! `mailhop dkim keygen`: a new key, and the TXT record that publishes it
//! (RFC 6376 3.6.1, RFC 8463 4).

use base64::Engine;
use mail_auth::common::crypto::Ed25519Key;
use rsa::pkcs8::der::pem::LineEnding;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSA of this many bits: 2048 to 8192 (RFC 8301 allows 1024, but
    /// ring, which signs, refuses keys under 2048).
    Rsa(usize),
    Ed25519,
}

pub struct KeyPair {
    /// PKCS#8 PEM, what `[dkim."domain"] key` reads.
    pub private_pem: String,
    /// `k=` of the record.
    pub kind: &'static str,
    /// `p=` of the record: SubjectPublicKeyInfo for RSA, the raw 32 octets
    /// for Ed25519, base64.
    pub public: String,
}

pub fn keygen(algorithm: Algorithm) -> Result<KeyPair, String> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    match algorithm {
        Algorithm::Rsa(bits) => {
            if !(2048..=8192).contains(&bits) {
                return Err(format!(
                    "{bits} bits: RSA keys here have 2048 to 8192 bits (2048 is usual)"
                ));
            }
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
                .map_err(|e| format!("cannot make an RSA key: {e}"))?;
            let private_pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| format!("cannot encode the key: {e}"))?
                .to_string();
            let public = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| format!("cannot encode the public key: {e}"))?;
            Ok(KeyPair {
                private_pem,
                kind: "rsa",
                public: b64(public.as_bytes()),
            })
        }
        Algorithm::Ed25519 => {
            let pkcs8 = Ed25519Key::generate_pkcs8()
                .map_err(|e| format!("cannot make an Ed25519 key: {e}"))?;
            let key = Ed25519Key::from_pkcs8_der(&pkcs8)
                .map_err(|e| format!("cannot read the new key: {e}"))?;
            let private_pem =
                rsa::pkcs8::der::pem::encode_string("PRIVATE KEY", LineEnding::LF, &pkcs8)
                    .map_err(|e| format!("cannot encode the key: {e}"))?;
            Ok(KeyPair {
                private_pem,
                kind: "ed25519",
                public: b64(&key.public_key()),
            })
        }
    }
}

impl KeyPair {
    /// The record's text, `v=DKIM1; k=...; p=...`.
    pub fn record(&self) -> String {
        format!("v=DKIM1; k={}; p={}", self.kind, self.public)
    }

    /// A zone-file line: strings of at most 255 octets (RFC 1035 3.3.14),
    /// which resolvers join back into one.
    pub fn zone_line(&self, domain: &str, selector: &str) -> String {
        let record = self.record();
        let strings: Vec<String> = record
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        format!(
            "{selector}._domainkey.{}. IN TXT ( {} )",
            domain.trim_end_matches('.'),
            strings.join(" ")
        )
    }
}
