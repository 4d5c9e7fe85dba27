//! SMTP AUTH (RFC 4954) credentials: the users file of `name:hash` lines
//! made by `mailhop passwd` (Argon2id PHC strings), SASL PLAIN and LOGIN
//! decoding, and the per-client failure limit.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hashbrown::HashMap;

/// Failed AUTH attempts a client address may make per window before it is
/// told to come back later (`454 4.7.0`), whatever the password.
pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(600);
/// Addresses remembered at once; the oldest entries go first.
const MAX_TRACKED: usize = 10_000;

/// The accounts allowed to authenticate.
#[derive(Debug, Clone)]
pub struct Users {
    hashes: HashMap<String, String>,
    /// Verified against when the name is unknown, so a wrong name costs as
    /// much time as a wrong password and names cannot be probed.
    decoy: String,
}

impl Users {
    /// Reads a users file; the message names the file and line.
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Users::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// `name:hash` lines; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Users, String> {
        let mut hashes = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                return Err(format!("line {}: expected name:hash", n + 1));
            };
            if name.is_empty() || PasswordHash::new(hash).is_err() {
                return Err(format!(
                    "line {}: not a name and a password hash from `mailhop passwd`",
                    n + 1
                ));
            }
            hashes.insert(name.to_string(), hash.to_string());
        }
        Ok(Users {
            hashes,
            decoy: hash_password("decoy password, never matches"),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn verify(&self, name: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(name) {
            Some(hash) => (hash.as_str(), true),
            None => (self.decoy.as_str(), false),
        };
        let ok = PasswordHash::new(hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && known
    }
}

/// An Argon2id PHC string for `mailhop passwd`.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters")
        .to_string()
}

/// Base64 (RFC 4648) as SASL uses it; `=` alone is the empty response.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if text == "=" {
        return Some(Vec::new());
    }
    BASE64.decode(text).ok()
}

/// SASL PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`. An authzid,
/// if given, must be the authcid itself (no acting as someone else).
pub fn plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|&b| b == 0);
    let (authzid, authcid, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || authcid.is_empty() || (!authzid.is_empty() && authzid != authcid) {
        return None;
    }
    Some((
        String::from_utf8(authcid.to_vec()).ok()?,
        String::from_utf8(password.to_vec()).ok()?,
    ))
}

/// Failed attempts per client address, shared by all sessions. An IPv6
/// client counts as its /64: one host usually has all of it.
#[derive(Debug, Default)]
pub struct Failures {
    by_ip: HashMap<IpAddr, (u32, SystemTime)>,
}

fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, 64)
            .map(|net| IpAddr::V6(net.trunc().addr()))
            .unwrap_or(ip),
        v4 => v4,
    }
}

impl Failures {
    /// Whether this client may try (again) now.
    pub fn allowed(&self, ip: IpAddr, now: SystemTime) -> bool {
        match self.by_ip.get(&client_key(ip)) {
            Some(&(count, since)) => {
                count < MAX_FAILURES
                    || now.duration_since(since).unwrap_or_default() >= FAILURE_WINDOW
            }
            None => true,
        }
    }

    pub fn failed(&mut self, ip: IpAddr, now: SystemTime) {
        let ip = client_key(ip);
        if self.by_ip.len() >= MAX_TRACKED && !self.by_ip.contains_key(&ip) {
            self.by_ip.retain(|_, (_, since)| {
                now.duration_since(*since).unwrap_or_default() < FAILURE_WINDOW
            });
            // Still full of recent failures: one entry goes, not all
            // (clearing would lift every lockout, the attacker's too): one
            // not locked out if there is one, the oldest of those.
            if self.by_ip.len() >= MAX_TRACKED {
                let evict = self
                    .by_ip
                    .iter()
                    .min_by_key(|(_, &(count, since))| (count >= MAX_FAILURES, since))
                    .map(|(&ip, _)| ip);
                if let Some(evict) = evict {
                    self.by_ip.remove(&evict);
                }
            }
        }
        let entry = self.by_ip.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1).unwrap_or_default() >= FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    pub fn succeeded(&mut self, ip: IpAddr) {
        self.by_ip.remove(&client_key(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_wrong_names_or_passwords_do_not() {
        let line = format!("alice:{}\n# comment\n\n", hash_password("s3cret"));
        let users = Users::parse(&line).unwrap();
        assert!(users.verify("alice", "s3cret"));
        assert!(!users.verify("alice", "wrong"));
        assert!(!users.verify("bob", "s3cret"));
        assert!(Users::parse("alice:plaintext\n")
            .unwrap_err()
            .contains("line 1"));
    }

    #[test]
    fn sasl_plain_takes_no_identity_but_ones_own() {
        assert_eq!(plain(b"\0alice\0pw"), Some(("alice".into(), "pw".into())));
        assert_eq!(
            plain(b"alice\0alice\0pw"),
            Some(("alice".into(), "pw".into()))
        );
        assert_eq!(plain(b"root\0alice\0pw"), None);
        assert_eq!(plain(b"alice\0pw"), None);
        assert_eq!(decode("AGFsaWNlAHB3").as_deref(), Some(&b"\0alice\0pw"[..]));
        assert_eq!(decode("=").as_deref(), Some(&b""[..]));
        assert_eq!(decode("not base64!"), None);
    }

    #[test]
    fn failures_lock_a_client_out_for_the_window() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut failures = Failures::default();
        for _ in 0..MAX_FAILURES {
            assert!(failures.allowed(ip, t0));
            failures.failed(ip, t0);
        }
        assert!(!failures.allowed(ip, t0 + Duration::from_secs(60)));
        assert!(failures.allowed("192.0.2.2".parse().unwrap(), t0));
        assert!(failures.allowed(ip, t0 + FAILURE_WINDOW));
    }

    #[test]
    fn an_ipv6_client_counts_as_its_64_and_a_full_table_keeps_lockouts() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut failures = Failures::default();
        for i in 0..MAX_FAILURES {
            let ip: IpAddr = format!("2001:db8:1:2::{}", i + 1).parse().unwrap();
            failures.failed(ip, t0);
        }
        assert!(!failures.allowed("2001:db8:1:2::ffff".parse().unwrap(), t0));
        assert!(failures.allowed("2001:db8:1:3::1".parse().unwrap(), t0));
        // Ten thousand other addresses failing once, later: the locked-out
        // /64 stays locked out until its window ends.
        for i in 0..MAX_TRACKED as u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            failures.failed(ip, t0 + Duration::from_secs(1));
        }
        assert!(failures.by_ip.len() <= MAX_TRACKED);
        assert!(!failures.allowed(
            "2001:db8:1:2::1".parse().unwrap(),
            t0 + Duration::from_secs(2)
        ));
    }
}
