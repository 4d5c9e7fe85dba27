//! The HTTP side of a policy fetch (RFC 8461 3.3), without sockets: the
//! request we send, and the response judged as it arrives: 200 only (a
//! redirect is refused, never followed), `text/plain`, a bounded body.

use super::MAX_POLICY_SIZE;

/// Longest response head we read (status line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Headers parsed at most; a response with more is refused.
const MAX_HEADERS: usize = 32;
/// All a response may take in memory: its head and the largest policy.
pub const MAX_RESPONSE: usize = MAX_HEAD + MAX_POLICY_SIZE;

/// `GET` as HTTP/1.0 with a `Host`: a 1.0 request gets no chunked body
/// (RFC 9112 6.1), so the body ends at `Content-Length` or the close.
pub fn request(domain: &str) -> Vec<u8> {
    format!(
        "GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: mta-sts.{domain}\r\n\
         User-Agent: mailhop\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// How far a response is.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed (and may come).
    More,
    /// The policy text.
    Done(String),
    /// Refused: why, for the log and the `policies` view.
    Refused(String),
}

/// Judges the bytes received so far; `closed`: the server has closed, so
/// no more will come. Called again after each read: the head is parsed
/// in place (httparse, no allocation) and the body copied only once whole.
pub fn judge(bytes: &[u8], closed: bool) -> Progress {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if bytes.len() > MAX_HEAD => {
            return refused(format!(
                "the response head is longer than {MAX_HEAD} octets"
            ))
        }
        Ok(httparse::Status::Partial) if closed => {
            return refused("the server closed before the end of the response head")
        }
        Ok(httparse::Status::Partial) => return Progress::More,
        Err(e) => return refused(format!("bad HTTP response: {e}")),
    };
    let code = response.code.unwrap_or(0);
    if (300..400).contains(&code) {
        // RFC 8461 3.3: "senders MUST NOT follow HTTP redirects".
        let to = header(response.headers, "location").unwrap_or("");
        return refused(format!(
            "HTTP {code} redirect to {to:?} refused (RFC 8461 3.3)"
        ));
    }
    if code != 200 {
        return refused(format!("HTTP {code} (only 200 is a policy)"));
    }
    if header(response.headers, "transfer-encoding").is_some() {
        return refused("a Transfer-Encoding in reply to HTTP/1.0");
    }
    // RFC 8461 3.3: senders validate that the media type is text/plain,
    // so that a host letting users put HTML or images at a path of their
    // choosing cannot serve a policy (parameters such as charset may follow).
    let media = header(response.headers, "content-type").map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    if media.as_deref() != Some("text/plain") {
        return refused(format!(
            "Content-Type {} is not text/plain (RFC 8461 3.3)",
            media
                .as_deref()
                .map_or("missing".into(), |m| format!("{m:?}"))
        ));
    }
    let length = match header(response.headers, "content-length") {
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) => Some(n),
            Err(_) => return refused(format!("bad Content-Length {v:?}")),
        },
        None => None,
    };
    if length.is_some_and(|n| n > MAX_POLICY_SIZE) {
        return refused(format!(
            "the policy is larger than {MAX_POLICY_SIZE} octets"
        ));
    }
    let body = &bytes[head_len..];
    if body.len() > MAX_POLICY_SIZE {
        return refused(format!(
            "the policy is larger than {MAX_POLICY_SIZE} octets"
        ));
    }
    let body = match length {
        Some(n) if body.len() >= n => &body[..n],
        Some(n) if closed => {
            return refused(format!(
                "the server closed after {} of {n} octets",
                body.len()
            ))
        }
        Some(_) => return Progress::More,
        None if closed => body,
        None => return Progress::More,
    };
    match std::str::from_utf8(body) {
        Ok(text) => Progress::Done(text.to_string()),
        Err(_) => refused("the policy is not UTF-8"),
    }
}

fn refused(why: impl Into<String>) -> Progress {
    Progress::Refused(why.into())
}

fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx.example\r\nmax_age: 86400\r\n";

    fn ok(extra: &str, body: &str) -> String {
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n{extra}\r\n{body}")
    }

    #[test]
    fn a_policy_with_a_length_is_done_at_its_end_in_any_chunking() {
        let text = ok(&format!("Content-Length: {}\r\n", POLICY.len()), POLICY);
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(judge(&bytes[..cut], false), Progress::More, "cut at {cut}");
        }
        assert_eq!(judge(bytes, false), Progress::Done(POLICY.into()));
        // Bytes past the length are not the policy's.
        let more = format!("{text}junk");
        assert_eq!(judge(more.as_bytes(), true), Progress::Done(POLICY.into()));
    }

    #[test]
    fn without_a_length_the_close_ends_the_policy() {
        let text = ok("", POLICY);
        assert_eq!(judge(text.as_bytes(), false), Progress::More);
        assert_eq!(judge(text.as_bytes(), true), Progress::Done(POLICY.into()));
    }

    #[test]
    fn redirects_and_other_codes_are_refused() {
        let redirect = "HTTP/1.1 301 Moved\r\nLocation: https://elsewhere.example/p\r\n\r\n";
        match judge(redirect.as_bytes(), false) {
            Progress::Refused(why) => {
                assert!(
                    why.contains("301 redirect") && why.contains("elsewhere"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        for code in [
            "302 Found",
            "307 Temporary Redirect",
            "404 Not Found",
            "204 No Content",
        ] {
            let text = format!("HTTP/1.1 {code}\r\nContent-Type: text/plain\r\n\r\n");
            assert!(
                matches!(judge(text.as_bytes(), false), Progress::Refused(_)),
                "{code}"
            );
        }
    }

    #[test]
    fn the_media_type_must_be_text_plain() {
        let html = format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n{POLICY}");
        assert!(
            matches!(judge(html.as_bytes(), true), Progress::Refused(w) if w.contains("text/html"))
        );
        let none = format!("HTTP/1.1 200 OK\r\n\r\n{POLICY}");
        assert!(
            matches!(judge(none.as_bytes(), true), Progress::Refused(w) if w.contains("missing"))
        );
        let upper = format!("HTTP/1.0 200 OK\r\nContent-Type: Text/Plain\r\n\r\n{POLICY}");
        assert_eq!(judge(upper.as_bytes(), true), Progress::Done(POLICY.into()));
    }

    #[test]
    fn size_and_framing_are_bounded() {
        let big = ok(&format!("Content-Length: {}\r\n", MAX_POLICY_SIZE + 1), "");
        assert!(matches!(judge(big.as_bytes(), false), Progress::Refused(_)));
        let endless = ok("", &"x".repeat(MAX_POLICY_SIZE + 1));
        assert!(matches!(
            judge(endless.as_bytes(), false),
            Progress::Refused(_)
        ));
        let head = format!("HTTP/1.1 200 OK\r\nX: {}", "y".repeat(MAX_HEAD));
        assert!(matches!(
            judge(head.as_bytes(), false),
            Progress::Refused(_)
        ));
        let chunked = ok("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n");
        assert!(matches!(
            judge(chunked.as_bytes(), true),
            Progress::Refused(_)
        ));
        let short = ok("Content-Length: 100\r\n", "version");
        assert!(matches!(
            judge(short.as_bytes(), true),
            Progress::Refused(_)
        ));
        assert!(matches!(judge(b"HTTP/1.1 2", true), Progress::Refused(_)));
        assert!(matches!(
            judge(b"garbage\r\n\r\n", false),
            Progress::Refused(_)
        ));
    }

    #[test]
    fn the_request_names_the_policy_host() {
        let r = String::from_utf8(request("example.com")).unwrap();
        assert!(r.starts_with("GET /.well-known/mta-sts.txt HTTP/1.0\r\n"));
        assert!(r.contains("\r\nHost: mta-sts.example.com\r\n") && r.ends_with("\r\n\r\n"));
    }
}
