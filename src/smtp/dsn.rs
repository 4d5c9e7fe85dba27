//! Delivery Status Notification parameters (RFC 3461): `RET` and `ENVID`
//! on MAIL, `NOTIFY` and `ORCPT` on RCPT, and the xtext they are written in.

/// `RET=`: what a failure report carries of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

impl Ret {
    pub fn parse(value: &[u8]) -> Option<Ret> {
        if value.eq_ignore_ascii_case(b"FULL") {
            Some(Ret::Full)
        } else if value.eq_ignore_ascii_case(b"HDRS") {
            Some(Ret::Hdrs)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

/// `NOTIFY=`: `NEVER`, or which of success, failure and delay to report.
/// Absent, a relay reports failure and delay (RFC 3461 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    /// What is reported when the sender said nothing.
    pub const DEFAULT: Notify = Notify {
        success: false,
        failure: true,
        delay: true,
    };

    /// `NEVER` alone, or a comma list of `SUCCESS`, `FAILURE`, `DELAY`,
    /// each at most once.
    pub fn parse(value: &[u8]) -> Option<Notify> {
        if value.eq_ignore_ascii_case(b"NEVER") {
            return Some(Notify::default());
        }
        let mut notify = Notify::default();
        for word in value.split(|&b| b == b',') {
            let slot = if word.eq_ignore_ascii_case(b"SUCCESS") {
                &mut notify.success
            } else if word.eq_ignore_ascii_case(b"FAILURE") {
                &mut notify.failure
            } else if word.eq_ignore_ascii_case(b"DELAY") {
                &mut notify.delay
            } else {
                return None;
            };
            if std::mem::replace(slot, true) {
                return None;
            }
        }
        Some(notify)
    }

    pub fn never(self) -> bool {
        self == Notify::default()
    }

    /// As written in `NOTIFY=` and stored in the queue.
    pub fn to_param(self) -> String {
        if self.never() {
            return "NEVER".to_string();
        }
        let words = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ];
        words
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, w)| *w)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// xtext (RFC 3461 4): printable ASCII but `+` and `=`, and `+XX` for any
/// octet. Decoded values must be printable ASCII too, as ENVID and ORCPT
/// are (anything else is refused rather than carried into reports).
pub fn xtext_decode(value: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        let decoded = match b {
            b'+' => {
                let hex = value.get(i + 1..i + 3)?;
                if !hex
                    .iter()
                    .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h))
                {
                    return None;
                }
                i += 2;
                u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?
            }
            b'=' => return None,
            33..=126 => b,
            _ => return None,
        };
        if !(32..=126).contains(&decoded) {
            return None;
        }
        out.push(decoded as char);
        i += 1;
    }
    Some(out)
}

/// The other way, for passing ENVID and ORCPT on.
pub fn xtext_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// `ORCPT=addr-type;xtext`: returned decoded as `addr-type;address`, the
/// form reports show (`Original-Recipient: rfc822;user@example.org`).
pub fn orcpt(value: &[u8]) -> Option<String> {
    let semicolon = value.iter().position(|&b| b == b';')?;
    let (kind, address) = (&value[..semicolon], &value[semicolon + 1..]);
    let atom = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(b);
    if kind.is_empty() || !kind.iter().all(atom) || address.is_empty() {
        return None;
    }
    let address = xtext_decode(address)?;
    Some(format!("{};{address}", std::str::from_utf8(kind).ok()?))
}

/// `ORCPT=` again from the stored `addr-type;address`.
pub fn orcpt_param(stored: &str) -> String {
    match stored.split_once(';') {
        Some((kind, address)) => format!("{kind};{}", xtext_encode(address)),
        None => format!("rfc822;{}", xtext_encode(stored)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_values() {
        let n = |s: &str| Notify::parse(s.as_bytes());
        assert_eq!(n("NEVER").map(Notify::never), Some(true));
        assert_eq!(
            n("success,Delay"),
            Some(Notify {
                success: true,
                failure: false,
                delay: true
            })
        );
        for bad in ["", "NEVER,SUCCESS", "SUCCESS,SUCCESS", "FAILURE,", "LATER"] {
            assert_eq!(n(bad), None, "{bad:?}");
        }
        assert_eq!(n("DELAY,FAILURE").unwrap().to_param(), "FAILURE,DELAY");
        assert_eq!(n("NEVER").unwrap().to_param(), "NEVER");
    }

    #[test]
    fn xtext_both_ways() {
        assert_eq!(xtext_decode(b"abc+2Bdef+3D").as_deref(), Some("abc+def="));
        for bad in [&b"a+2"[..], b"a+zz", b"a+2b", b"a=b", b"a\x01", b"+0A"] {
            assert_eq!(xtext_decode(bad), None, "{bad:?}");
        }
        let text = "id+with=odd chars";
        assert_eq!(xtext_encode(text), "id+2Bwith+3Dodd+20chars");
        assert_eq!(
            xtext_decode(xtext_encode(text).as_bytes()).as_deref(),
            Some(text)
        );
    }

    #[test]
    fn orcpt_values() {
        assert_eq!(
            orcpt(b"rfc822;user+2Bx@example.org").as_deref(),
            Some("rfc822;user+x@example.org")
        );
        for bad in [
            &b"rfc822"[..],
            b";a@b",
            b"rfc822;",
            b"rfc 822;a@b",
            b"rfc822;a+zz",
        ] {
            assert_eq!(orcpt(bad), None, "{bad:?}");
        }
        assert_eq!(
            orcpt_param("rfc822;user+x@example.org"),
            "rfc822;user+2Bx@example.org"
        );
    }
}
