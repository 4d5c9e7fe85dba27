//! MTA-STS (RFC 8461) as text: the `_mta-sts` TXT record and the policy
//! file, and whether an MX host matches a policy. Pure: fetching (DNS,
//! HTTPS) and caching are the loop's and the queue's; what to do next for
//! a domain is `tracker`'s, the HTTP response `response`'s, and the names
//! of TLS outcomes (RFC 8460) `result`'s.

use std::fmt;

pub mod response;
pub mod result;
pub mod tracker;

pub use result::TlsResult;

/// Largest `max_age` a policy may give (RFC 8461 3.2: about a year).
pub const MAX_AGE_LIMIT: u32 = 31_557_600;
/// A policy file larger than this is refused (RFC 8461 3.3 suggests 64 KiB).
pub const MAX_POLICY_SIZE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(what: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError(what.into()))
}

/// The `_mta-sts.<domain>` TXT record: only its `id` matters (a change
/// means a new policy to fetch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
}

/// RFC 8461 3.1: `v=STSv1; id=<1-32 alphanumerics>;` with optional other
/// fields, `v` first.
pub fn parse_record(txt: &str) -> Result<Record, PolicyError> {
    let mut fields = txt.split(';').map(str::trim).filter(|f| !f.is_empty());
    match fields.next().map(|f| f.split_once('=')) {
        Some(Some(("v", "STSv1"))) => {}
        _ => return err("the record does not start with v=STSv1"),
    }
    let mut id = None;
    for field in fields {
        let Some((key, value)) = field.split_once('=') else {
            return err(format!("bad field {field:?}"));
        };
        if key.trim() == "id" {
            let value = value.trim();
            let ok =
                (1..=32).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric());
            if !ok {
                return err(format!("bad id {value:?} (1 to 32 letters and digits)"));
            }
            id = Some(value.to_string());
        }
    }
    match id {
        Some(id) => Ok(Record { id }),
        None => err("the record has no id"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to matching MX hosts over verified TLS.
    Enforce,
    /// Deliver anyway; report what would have failed.
    Testing,
    /// No policy (a domain withdrawing it).
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// The policy file of `https://mta-sts.<domain>/.well-known/mta-sts.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// Lowercased, without a trailing dot; `*.example.com` matches one
    /// label in front of `example.com`.
    pub mx: Vec<String>,
    pub max_age: u32,
}

/// RFC 8461 3.2: `key: value` lines (CRLF or LF); `version: STSv1`,
/// `mode`, `max_age` and (unless `mode: none`) at least one `mx`.
pub fn parse_policy(text: &str) -> Result<Policy, PolicyError> {
    if text.len() > MAX_POLICY_SIZE {
        return err(format!(
            "the policy is larger than {MAX_POLICY_SIZE} octets"
        ));
    }
    let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return err(format!("bad line {line:?}"));
        };
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_string()),
            "mode" => match Mode::parse(value) {
                Some(m) => mode = Some(m),
                None => return err(format!("unknown mode {value:?}")),
            },
            "max_age" => {
                let age: u32 = value
                    .parse()
                    .ok()
                    .filter(|_| value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| PolicyError(format!("bad max_age {value:?}")))?;
                max_age = Some(age.min(MAX_AGE_LIMIT));
            }
            "mx" => {
                let pattern = value.trim_end_matches('.').to_ascii_lowercase();
                let host = pattern.strip_prefix("*.").unwrap_or(&pattern);
                if host.is_empty() || host.contains('*') {
                    return err(format!("bad mx pattern {value:?}"));
                }
                mx.push(pattern);
            }
            // Other keys are for future versions (RFC 8461 3.2).
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return err("the policy has no version: STSv1");
    }
    let Some(mode) = mode else {
        return err("the policy has no mode");
    };
    let Some(max_age) = max_age else {
        return err("the policy has no max_age");
    };
    if mx.is_empty() && mode != Mode::None {
        return err("the policy names no mx");
    }
    Ok(Policy { mode, mx, max_age })
}

/// Of a name's TXT records, the `_mta-sts` one: RFC 8461 3.1 says
/// records not starting with `v=STSv1` are ignored and several STSv1
/// records mean none.
pub fn pick_record(texts: &[String]) -> Option<Result<Record, PolicyError>> {
    let mut sts = texts
        .iter()
        .filter(|t| t.trim_start().starts_with("v=STSv1"));
    let first = sts.next()?;
    if sts.next().is_some() {
        return Some(err("more than one v=STSv1 record"));
    }
    Some(parse_record(first.trim()))
}

impl Mode {
    fn parse(value: &str) -> Option<Mode> {
        match value {
            "enforce" => Some(Mode::Enforce),
            "testing" => Some(Mode::Testing),
            "none" => Some(Mode::None),
            _ => None,
        }
    }
}

impl Policy {
    /// A policy as the queue stores it: mode and patterns as text.
    pub fn from_stored(mode: &str, mx: &str, max_age: u32) -> Option<Policy> {
        Some(Policy {
            mode: Mode::parse(mode)?,
            mx: mx.split_whitespace().map(str::to_string).collect(),
            max_age,
        })
    }

    /// The patterns as the queue stores them: space-separated.
    pub fn mx_text(&self) -> String {
        self.mx.join(" ")
    }

    /// RFC 8461 4.1: the MX host name equals a pattern, or a wildcard
    /// pattern's base with exactly one label in front (`*.example.com`
    /// matches `mx1.example.com`, not `a.b.example.com` or `example.com`).
    pub fn matches(&self, mx_host: &str) -> bool {
        let host = mx_host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(base) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == base),
                None => host == *pattern,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_as_rfc_8461_writes_them() {
        assert_eq!(
            parse_record("v=STSv1; id=20160831085700Z;"),
            Ok(Record {
                id: "20160831085700Z".into()
            })
        );
        assert_eq!(parse_record("v=STSv1;id=abc").unwrap().id, "abc");
        assert!(parse_record("id=abc; v=STSv1;").is_err());
        assert!(parse_record("v=STSv2; id=abc;").is_err());
        assert!(parse_record("v=STSv1;").is_err());
        assert!(parse_record("v=STSv1; id=has-dash;").is_err());
        assert!(parse_record(&format!("v=STSv1; id={};", "a".repeat(33))).is_err());
    }

    #[test]
    fn the_rfc_example_policy_parses_and_matches() {
        let text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";
        let policy = parse_policy(text).unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.max_age, 604_800);
        assert!(policy.matches("mail.example.com"));
        assert!(policy.matches("MAIL.example.com."));
        assert!(policy.matches("mx1.example.net"));
        assert!(!policy.matches("example.net"));
        assert!(!policy.matches("a.b.example.net"));
        assert!(!policy.matches("evil.example.com"));
    }

    #[test]
    fn one_sts_record_among_others_is_picked() {
        let texts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(pick_record(&texts(&["v=spf1 -all"])), None);
        assert_eq!(
            pick_record(&texts(&["v=spf1 -all", "v=STSv1; id=abc;"])),
            Some(Ok(Record { id: "abc".into() }))
        );
        assert!(matches!(
            pick_record(&texts(&["v=STSv1; id=a;", "v=STSv1; id=b;"])),
            Some(Err(_))
        ));
        let stored = Policy::from_stored("testing", "mx.example *.example.net", 60).unwrap();
        assert_eq!(stored.mx_text(), "mx.example *.example.net");
        assert!(stored.matches("a.example.net"));
        assert!(Policy::from_stored("strict", "", 0).is_none());
    }

    #[test]
    fn bad_policies_are_refused() {
        let base = "version: STSv1\nmode: enforce\nmx: mx.example\nmax_age: 86400\n";
        assert!(parse_policy(base).is_ok());
        assert!(parse_policy(&base.replace("STSv1", "STSv2")).is_err());
        assert!(parse_policy(&base.replace("enforce", "strict")).is_err());
        assert!(parse_policy(&base.replace("86400", "-1")).is_err());
        assert!(parse_policy(&base.replace("mx: mx.example\n", "")).is_err());
        assert!(parse_policy(&base.replace("mx.example", "*.*.example")).is_err());
        assert!(parse_policy("version: STSv1\nmode: none\nmax_age: 0\n").is_ok());
        assert!(parse_policy(&"x".repeat(MAX_POLICY_SIZE + 1)).is_err());
        let huge_age = base.replace("86400", "99999999");
        assert_eq!(parse_policy(&huge_age).unwrap().max_age, MAX_AGE_LIMIT);
    }
}
