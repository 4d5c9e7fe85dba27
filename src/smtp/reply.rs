//! SMTP replies as a client reads them (RFC 5321 4.2): multi-line, with
//! an RFC 3463 enhanced code when the server gives one.

use std::fmt;

use memchr::memchr;

/// RFC 5321 does not bound replies; these keep a hostile server from
/// making us buffer without end.
const MAX_LINES: usize = 100;
pub(super) const MAX_BYTES: usize = 64 * 1024;

/// What a reply's first digit means for a transaction (DESIGN pattern 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx: done.
    Positive,
    /// 3xx: go on (354).
    Intermediate,
    /// 4xx: try again later.
    Transient,
    /// 5xx: give up.
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// 200..=599.
    pub code: u16,
    /// `5.1.1`, when the first line carries one (class digit must match the code's).
    pub enhanced: Option<String>,
    /// The text of every line (after code and enhanced code), in order.
    pub lines: Vec<String>,
}

/// A reply that is not SMTP: the connection cannot be trusted further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError(pub &'static str);

impl Reply {
    /// A reply made up here (connection refused, timeout, DNS ...), so that
    /// every outcome is recorded and classified the same way. An empty
    /// `enhanced` means none.
    pub fn local(code: u16, enhanced: &str, text: &str) -> Reply {
        Reply {
            code,
            enhanced: (!enhanced.is_empty()).then(|| enhanced.to_string()),
            lines: vec![clean(text.as_bytes())],
        }
    }

    /// A code outside 2xx..5xx (only possible by building a `Reply` by
    /// hand) counts as transient: a bug should defer, not deliver or bounce.
    pub fn class(&self) -> Class {
        match self.code / 100 {
            2 => Class::Positive,
            3 => Class::Intermediate,
            5 => Class::Permanent,
            _ => Class::Transient,
        }
    }

    /// The enhanced code, or one derived from the basic code (`X.0.0`).
    pub fn status(&self) -> String {
        match &self.enhanced {
            Some(enhanced) => enhanced.clone(),
            None => format!("{}.0.0", self.code / 100),
        }
    }
}

impl fmt::Display for Reply {
    /// One line for logs and the queue: `550 5.1.1 No such user (more lines joined by spaces)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(enhanced) = &self.enhanced {
            write!(f, " {enhanced}")?;
        }
        for line in self.lines.iter().filter(|l| !l.is_empty()) {
            f.write_str(" ")?;
            // The fields are public: never let a line break through.
            for (i, part) in line.split(['\r', '\n']).enumerate() {
                if i > 0 {
                    f.write_str(" ")?;
                }
                f.write_str(part)?;
            }
        }
        Ok(())
    }
}

/// Parses one complete reply at the start of `input`: `Ok(None)` when more
/// bytes are needed, else the reply and the bytes it used. Bounded: a reply
/// over 100 lines or 64 KiB, a line without a valid code, or codes that
/// differ between lines is an error.
pub fn parse(input: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    // First find the end without allocating: a partial reply is scanned
    // again when more bytes come.
    let mut pos = 0;
    let mut count = 0;
    let mut code = 0;
    let end = loop {
        let Some(lf) = memchr(b'\n', &input[pos..]) else {
            // Only the size is judged on a partial line, so the verdict on a
            // reply never depends on where its bytes were cut.
            return if input.len() >= MAX_BYTES {
                Err(ReplyError("reply longer than 64 KiB"))
            } else {
                Ok(None)
            };
        };
        let next = pos + lf + 1;
        if next > MAX_BYTES {
            return Err(ReplyError("reply longer than 64 KiB"));
        }
        let (line_code, last, _) = split_line(line_at(input, pos, next))?;
        if count > 0 && line_code != code {
            return Err(ReplyError("reply codes differ between lines"));
        }
        code = line_code;
        count += 1;
        pos = next;
        if last {
            break pos;
        }
        if count == MAX_LINES {
            return Err(ReplyError("reply longer than 100 lines"));
        }
    };

    let mut reply = Reply {
        code,
        enhanced: None,
        lines: Vec::with_capacity(count),
    };
    let mut pos = 0;
    while pos < end {
        let next = pos + memchr(b'\n', &input[pos..end]).expect("scanned above") + 1;
        let (_, _, mut text) = split_line(line_at(input, pos, next))?;
        if pos == 0 {
            if let Some((enhanced, rest)) = split_enhanced(text, code) {
                reply.enhanced = Some(String::from_utf8_lossy(enhanced).into_owned());
                text = rest;
            }
        } else if reply.enhanced.is_some() {
            if let Some((_, rest)) = split_enhanced(text, code) {
                text = rest;
            }
        }
        reply.lines.push(clean(text));
        pos = next;
    }
    Ok(Some((reply, end)))
}

/// The line from `start` to its LF at `next - 1`, without LF or CRLF (a bare
/// LF is tolerated).
fn line_at(input: &[u8], start: usize, next: usize) -> &[u8] {
    let line = &input[start..next - 1];
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `code`, whether this is the last line, and the text.
fn split_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ReplyError> {
    const BAD: ReplyError = ReplyError("line does not start with a reply code");
    let (digits, rest) = line.split_at_checked(3).ok_or(BAD)?;
    if !(b'2'..=b'5').contains(&digits[0]) || !digits[1..].iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match rest.split_first() {
        None => Ok((code, true, rest)),
        Some((b' ', text)) => Ok((code, true, text)),
        Some((b'-', text)) => Ok((code, false, text)),
        Some(_) => Err(BAD),
    }
}

/// `D.DDD.DDD` (RFC 3463) at the start of `text`, class digit matching the
/// code's, followed by a space or the end; returns it and the text after.
fn split_enhanced(text: &[u8], code: u16) -> Option<(&[u8], &[u8])> {
    let class = b'0' + (code / 100) as u8;
    if text.first() != Some(&class) || text.get(1) != Some(&b'.') {
        return None;
    }
    let mut i = 2;
    for part in 0..2 {
        let digits = text[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if !(1..=3).contains(&digits) {
            return None;
        }
        i += digits;
        if part == 0 {
            if text.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
    }
    match text.get(i) {
        None => Some((text, b"")),
        Some(b' ') => {
            let rest = &text[i..];
            let spaces = rest.iter().take_while(|&&b| b == b' ').count();
            Some((&text[..i], &rest[spaces..]))
        }
        Some(_) => None,
    }
}

/// Text for logs and the queue: UTF-8 (lossy) with control characters as
/// spaces, so a stray CR can never end up in a line we write.
fn clean(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input; expected code, enhanced code, lines (`Ok`) or error text.
    type Case = (
        &'static [u8],
        Result<(u16, Option<&'static str>, &'static [&'static str]), &'static str>,
    );

    const BAD_CODE: &str = "line does not start with a reply code";
    const DIFFER: &str = "reply codes differ between lines";

    #[rustfmt::skip]
    const CASES: &[Case] = &[
        (b"220 mx.example ESMTP\r\n", Ok((220, None, &["mx.example ESMTP"]))),
        (b"250 2.1.5 Ok\r\n", Ok((250, Some("2.1.5"), &["Ok"]))),
        (b"550 5.1.1 <x@y>: Recipient address rejected\r\n",
         Ok((550, Some("5.1.1"), &["<x@y>: Recipient address rejected"]))),
        // Bare LF, a bare code, a code and a space, an enhanced code alone.
        (b"250 ok\n", Ok((250, None, &["ok"]))),
        (b"250\r\n", Ok((250, None, &[""]))),
        (b"250 \r\n", Ok((250, None, &[""]))),
        (b"250 2.0.0\r\n", Ok((250, Some("2.0.0"), &[""]))),
        (b"421 4.4.2   timeout\r\n", Ok((421, Some("4.4.2"), &["timeout"]))),
        // Not enhanced codes: wrong class, too many digits, no space after.
        (b"550 4.1.1 x\r\n", Ok((550, None, &["4.1.1 x"]))),
        (b"550 5.1234.1 x\r\n", Ok((550, None, &["5.1234.1 x"]))),
        (b"550 5.1.1x\r\n", Ok((550, None, &["5.1.1x"]))),
        (b"550 5.1\r\n", Ok((550, None, &["5.1"]))),
        (b"550 5..1 x\r\n", Ok((550, None, &["5..1 x"]))),
        (b"552 5.3.4 big\r\n", Ok((552, Some("5.3.4"), &["big"]))),
        (b"451 4.123.456 x\r\n", Ok((451, Some("4.123.456"), &["x"]))),
        // Multi-line: EHLO, repeated enhanced codes, mixed line ends.
        (b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n",
         Ok((250, None, &["mx.example", "PIPELINING", "SIZE 10240000", "8BITMIME"]))),
        (b"550-5.7.1 Go away\r\n550-5.7.1 really\n550 5.7.1 now\r\n",
         Ok((550, Some("5.7.1"), &["Go away", "really", "now"]))),
        (b"550-5.7.1 first\r\n550-second\r\n550 \r\n", Ok((550, Some("5.7.1"), &["first", "second", ""]))),
        // Without one on the first line, later lines are left alone.
        (b"250-first\r\n250 2.0.0 x\r\n", Ok((250, None, &["first", "2.0.0 x"]))),
        (b"250-\r\n250\r\n", Ok((250, None, &["", ""]))),
        // Controls and invalid UTF-8 in the text.
        (b"250 a\rb\tc\x00\r\n", Ok((250, None, &["a b c "]))),
        (b"250 caf\xc3\xa9 \xff\r\n", Ok((250, None, &["caf\u{e9} \u{fffd}"]))),
        // Errors.
        (b"hello\r\n", Err(BAD_CODE)),
        (b"\r\n", Err(BAD_CODE)),
        (b"25\r\n", Err(BAD_CODE)),
        (b"199 x\r\n", Err(BAD_CODE)),
        (b"600 x\r\n", Err(BAD_CODE)),
        (b"2a0 x\r\n", Err(BAD_CODE)),
        (b"250x\r\n", Err(BAD_CODE)),
        (b"250\t\r\n", Err(BAD_CODE)),
        (b" 250 x\r\n", Err(BAD_CODE)),
        (b"250-a\r\n251 b\r\n", Err(DIFFER)),
        (b"250-a\r\nxyz\r\n", Err(BAD_CODE)),
    ];

    #[test]
    fn table() {
        for &(input, want) in CASES {
            let shown = String::from_utf8_lossy(input);
            // Followed by the start of the next reply, which is left alone.
            let mut full = input.to_vec();
            full.extend_from_slice(b"250 next\r\n");
            let got = parse(&full);
            match want {
                Ok((code, enhanced, lines)) => {
                    let (reply, used) = got.unwrap().unwrap();
                    assert_eq!(used, input.len(), "{shown:?}");
                    assert_eq!(reply.code, code, "{shown:?}");
                    assert_eq!(reply.enhanced.as_deref(), enhanced, "{shown:?}");
                    assert_eq!(reply.lines, lines, "{shown:?}");
                }
                Err(why) => assert_eq!(got, Err(ReplyError(why)), "{shown:?}"),
            }
            // Every cut: a prefix is incomplete until it errs, and once it
            // errs it errs the same way as the whole.
            let whole = parse(input);
            for at in 0..input.len() {
                match parse(&input[..at]) {
                    Ok(None) => {}
                    other => {
                        assert_eq!(other, whole, "{shown:?} cut at {at}");
                        assert!(whole.is_err(), "{shown:?} cut at {at}");
                    }
                }
            }
        }
    }

    #[test]
    fn incomplete() {
        for input in [
            &b""[..],
            b"2",
            b"250",
            b"250 ok",
            b"250 ok\r",
            b"250-a\r\n",
            b"250-a\r\n250",
            b"250-a\r\n250 b",
            // Garbage is only judged once its line is complete.
            b"xyz",
        ] {
            assert_eq!(
                parse(input),
                Ok(None),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn limits() {
        let lines = |n: usize| {
            let mut v = b"250-x\r\n".repeat(n - 1);
            v.extend_from_slice(b"250 x\r\n");
            v
        };
        let (reply, used) = parse(&lines(100)).unwrap().unwrap();
        assert_eq!((reply.lines.len(), used), (100, 700));
        assert_eq!(
            parse(&lines(101)),
            Err(ReplyError("reply longer than 100 lines"))
        );
        // Already known from the 100th continuation line.
        assert_eq!(
            parse(&b"250-x\r\n".repeat(100)),
            Err(ReplyError("reply longer than 100 lines"))
        );

        let long = |len: usize| {
            let mut v = b"250 ".to_vec();
            v.resize(len - 2, b'a');
            v.extend_from_slice(b"\r\n");
            v
        };
        assert_eq!(parse(&long(MAX_BYTES)).unwrap().unwrap().1, MAX_BYTES);
        let too_long = Err(ReplyError("reply longer than 64 KiB"));
        assert_eq!(parse(&long(MAX_BYTES + 1)), too_long);
        // A partial line that can only end past the limit.
        let partial = long(MAX_BYTES + 1);
        assert_eq!(parse(&partial[..MAX_BYTES - 1]), Ok(None));
        assert_eq!(parse(&partial[..MAX_BYTES]), too_long);
        // Bytes after a complete reply do not count.
        let mut two = long(MAX_BYTES);
        two.extend_from_slice(&long(MAX_BYTES));
        assert_eq!(parse(&two).unwrap().unwrap().1, MAX_BYTES);
    }

    #[test]
    fn display_status_class() {
        let parsed = |s: &str| parse(s.as_bytes()).unwrap().unwrap().0;
        let r = parsed("550-5.1.1 No such user\r\n550 5.1.1 here\r\n");
        assert_eq!(r.to_string(), "550 5.1.1 No such user here");
        assert_eq!(r.status(), "5.1.1");
        assert_eq!(r.class(), Class::Permanent);
        let r = parsed("250-mx\r\n250-\r\n250 SIZE 0\r\n");
        assert_eq!(r.to_string(), "250 mx SIZE 0");
        assert_eq!(r.status(), "2.0.0");
        assert_eq!(r.class(), Class::Positive);
        assert_eq!(parsed("354 go\r\n").class(), Class::Intermediate);
        assert_eq!(parsed("421 bye\r\n").class(), Class::Transient);
        assert_eq!(parsed("421 bye\r\n").status(), "4.0.0");
        assert_eq!(parsed("250\r\n").to_string(), "250");

        let l = Reply::local(451, "4.4.1", "connection refused\r\nby [192.0.2.1]");
        assert_eq!(
            l.to_string(),
            "451 4.4.1 connection refused  by [192.0.2.1]"
        );
        assert_eq!(l.lines.len(), 1);
        assert_eq!(l.status(), "4.4.1");
        let l = Reply::local(421, "", "x");
        assert_eq!(
            (l.enhanced.as_deref(), l.to_string()),
            (None, "421 x".to_string())
        );
        // Built by hand with line breaks: still one line.
        let odd = Reply {
            code: 250,
            enhanced: None,
            lines: vec!["a\r\nb".into(), "c\n".into()],
        };
        assert_eq!(odd.to_string(), "250 a  b c ");
        assert_eq!(odd.class(), Class::Positive);
        let odd = Reply { code: 100, ..odd };
        assert_eq!(odd.class(), Class::Transient);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Lines shaped like replies, well-formed or nearly so.
    fn reply_like() -> impl Strategy<Value = Vec<u8>> {
        let line = (
            prop_oneof![
                Just("250".to_string()),
                Just("550".to_string()),
                Just("421".to_string()),
                "[0-9]{3}",
                "[0-9a-z]{0,4}",
            ],
            prop_oneof![Just(" "), Just("-"), Just(""), Just("\t")],
            prop_oneof![
                Just("2.0.0 ok".to_string()),
                Just("5.1.1 no".to_string()),
                "[ -~]{0,20}",
            ],
            prop::collection::vec(any::<u8>(), 0..3),
            prop_oneof![Just("\r\n"), Just("\n"), Just("\r"), Just("")],
        )
            .prop_map(|(code, sep, text, junk, end)| {
                let mut v = format!("{code}{sep}{text}").into_bytes();
                v.extend(junk);
                v.extend_from_slice(end.as_bytes());
                v
            });
        prop::collection::vec(line, 0..8).prop_map(|v| v.concat())
    }

    /// Reads every reply from `input` fed in pieces cut at `cuts`, as the
    /// client does: unconsumed bytes are kept and fed again with more.
    fn stream(input: &[u8], cuts: &[usize]) -> Vec<Result<Reply, ReplyError>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (input.len() + 1)).collect();
        cuts.push(input.len());
        cuts.sort_unstable();
        let mut held = Vec::new();
        let mut out = Vec::new();
        let mut at = 0;
        for cut in cuts {
            held.extend_from_slice(&input[at..cut]);
            at = cut;
            loop {
                match parse(&held) {
                    Ok(None) => break,
                    Ok(Some((reply, used))) => {
                        assert!(used > 0 && used <= held.len());
                        held.drain(..used);
                        out.push(Ok(reply));
                    }
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics_on_arbitrary_bytes(input in prop::collection::vec(any::<u8>(), 0..1000)) {
            if let Ok(Some((reply, used))) = parse(&input) {
                prop_assert!(used <= input.len());
                prop_assert!((200..600).contains(&reply.code));
                prop_assert!(!reply.to_string().contains(['\r', '\n']));
            }
        }

        #[test]
        fn a_prefix_is_incomplete_or_the_same_as_the_whole(input in reply_like()) {
            let whole = parse(&input);
            for at in 0..input.len() {
                match parse(&input[..at]) {
                    Ok(None) => {}
                    other => prop_assert_eq!(&other, &whole, "cut at {}", at),
                }
            }
        }

        #[test]
        fn any_chunking_reads_the_same_replies(
            input in reply_like(),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let whole = stream(&input, &[]);
            prop_assert_eq!(&stream(&input, &cuts), &whole);
            for reply in whole.iter().flatten() {
                prop_assert!(!reply.to_string().contains(['\r', '\n']));
                for line in &reply.lines {
                    prop_assert!(!line.chars().any(char::is_control));
                }
            }
        }
    }
}
