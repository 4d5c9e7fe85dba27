//! RFC 5321 paths (section 4.1.2): mailboxes, source routes, address
//! literals, quoted local parts, and RFC 6531 UTF-8 addresses.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The domain part of a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    /// A host name as written (case kept; compare case-insensitively).
    /// May contain UTF-8 U-labels when the address is not ASCII.
    Name(String),
    /// An address literal, the text between the brackets as written:
    /// `192.0.2.1` or `IPv6:2001:db8::1` (or a general `tag:content` literal).
    Literal(String),
}

/// `local-part@domain`. The local part is kept exactly as written,
/// including the quotes of a quoted string (`"a b"@x` keeps `"a b"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub local: String,
    pub domain: Domain,
}

/// A path: an optional RFC 821 source route (`@ONE,@TWO:`) and a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// Route hosts in order, without the `@` (may be empty).
    pub route: Vec<String>,
    pub mailbox: Mailbox,
}

/// What `MAIL FROM:` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`
    Null,
    Path(Path),
}

/// What `RCPT TO:` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    /// `<Postmaster>` with no domain (RFC 5321 4.5.1), any case.
    Postmaster,
    Path(Path),
}

/// Why a path did not parse. The text is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressError(pub &'static str);

const BAD_SYNTAX: AddressError = AddressError("Bad address syntax");
const BAD_DOMAIN: AddressError = AddressError("Bad domain");
const BAD_LITERAL: AddressError = AddressError("Bad address literal");
const BAD_UTF8: AddressError = AddressError("Bad UTF-8 in address");
const NO_BRACKETS: AddressError = AddressError("Address must be in angle brackets");
const NULL_FORWARD: AddressError = AddressError("Null address not allowed here");
const PATH_TOO_LONG: AddressError = AddressError("Address too long");
const ROUTE_TOO_LONG: AddressError = AddressError("Too many route hops");

/// Sanity bounds, well above what real mail uses (RFC 5321 4.5.3.1).
const MAX_PATH: usize = 2048;
const MAX_DOMAIN: usize = 255;
const MAX_LABEL: usize = 63;
const MAX_HOPS: usize = 32;

impl fmt::Display for Domain {
    /// `example.org` or `[192.0.2.1]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(name) => f.write_str(name),
            Domain::Literal(lit) => write!(f, "[{lit}]"),
        }
    }
}

impl fmt::Display for Mailbox {
    /// `local@domain`, no angle brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl fmt::Display for Path {
    /// `@ONE,@TWO:user@THREE` or `user@THREE`, no angle brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, host) in self.route.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}@{host}")?;
        }
        if !self.route.is_empty() {
            f.write_str(":")?;
        }
        write!(f, "{}", self.mailbox)
    }
}

impl Domain {
    pub fn is_ascii(&self) -> bool {
        match self {
            Domain::Name(s) | Domain::Literal(s) => s.is_ascii(),
        }
    }
}

impl Mailbox {
    /// True when local part and domain are all ASCII (else SMTPUTF8 is needed).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }
}

impl Path {
    pub fn is_ascii(&self) -> bool {
        self.mailbox.is_ascii() && self.route.iter().all(|h| h.is_ascii())
    }
}

/// Parses `<...>` at the start of `input` (the text after `MAIL FROM:`,
/// leading spaces already skipped) and returns the path and the rest of the
/// input after `>` (the parameters, with their leading space).
/// UTF-8 is accepted here; the caller decides whether SMTPUTF8 allows it.
pub fn parse_reverse_path(input: &[u8]) -> Result<(ReversePath, &[u8]), AddressError> {
    if input.starts_with(b"<>") {
        return Ok((ReversePath::Null, &input[2..]));
    }
    let (path, end) = parse_path(input)?;
    Ok((ReversePath::Path(path), &input[end..]))
}

/// As [`parse_reverse_path`], for `RCPT TO:`.
pub fn parse_forward_path(input: &[u8]) -> Result<(ForwardPath, &[u8]), AddressError> {
    if input.starts_with(b"<>") {
        return Err(NULL_FORWARD);
    }
    if input.len() >= 12
        && input[0] == b'<'
        && input[1..11].eq_ignore_ascii_case(b"postmaster")
        && input[11] == b'>'
    {
        return Ok((ForwardPath::Postmaster, &input[12..]));
    }
    let (path, end) = parse_path(input)?;
    Ok((ForwardPath::Path(path), &input[end..]))
}

/// Parses a non-null `<path>`; returns it and the index just after `>`.
///
/// The grammar is checked over bytes, with every byte >= 0x80 taken as part
/// of a UTF-8 letter; the whole path is then checked to be valid UTF-8
/// once, so the recorded ranges can be sliced as `str`.
fn parse_path(s: &[u8]) -> Result<(Path, usize), AddressError> {
    if s.first() != Some(&b'<') {
        return Err(NO_BRACKETS);
    }
    let mut p = 1;
    let mut route = Vec::new();
    if s.get(p) == Some(&b'@') {
        loop {
            p += 1; // the '@'
            let end = scan_domain(s, p)?;
            if route.len() == MAX_HOPS {
                return Err(ROUTE_TOO_LONG);
            }
            route.push(p..end);
            p = end;
            match s.get(p) {
                Some(b',') if s.get(p + 1) == Some(&b'@') => p += 1,
                Some(b':') => {
                    p += 1;
                    break;
                }
                _ => return Err(BAD_SYNTAX),
            }
        }
    }
    let local = p..scan_local_part(s, p)?;
    p = local.end;
    if s.get(p) != Some(&b'@') {
        return Err(BAD_SYNTAX);
    }
    p += 1;
    let (domain, literal) = if s.get(p) == Some(&b'[') {
        let end = scan_literal(s, p + 1)?;
        (p + 1..end, true)
    } else {
        (p..scan_domain(s, p)?, false)
    };
    p = domain.end + usize::from(literal);
    match s.get(p) {
        Some(b'>') => p += 1,
        None => return Err(NO_BRACKETS),
        Some(_) => return Err(BAD_SYNTAX),
    }
    if p > MAX_PATH {
        return Err(PATH_TOO_LONG);
    }
    let text = std::str::from_utf8(&s[..p]).map_err(|_| BAD_UTF8)?;
    if !text.is_ascii() && text.chars().any(char::is_control) {
        return Err(BAD_UTF8);
    }
    let domain = text[domain].to_owned();
    let path = Path {
        route: route.into_iter().map(|r| text[r].to_owned()).collect(),
        mailbox: Mailbox {
            local: text[local].to_owned(),
            domain: if literal {
                Domain::Literal(domain)
            } else {
                Domain::Name(domain)
            },
        },
    };
    Ok((path, p))
}

/// Letters, digits and (as RFC 6531 letters) any byte of a UTF-8 sequence.
fn is_let_dig(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

/// RFC 5322 atext, plus UTF-8.
fn is_atext(b: u8) -> bool {
    is_let_dig(b) || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// RFC 5321 qtextSMTP, plus UTF-8.
fn is_qtext(b: u8) -> bool {
    matches!(b, 32..=33 | 35..=91 | 93..=126) || b >= 0x80
}

/// RFC 5321 dcontent (ASCII only: literals are never internationalised).
fn is_dcontent(b: u8) -> bool {
    matches!(b, 33..=90 | 94..=126)
}

/// `Domain` from `p`; returns where it ends. Stops at the first byte that
/// cannot continue it, which the caller must then accept.
fn scan_domain(s: &[u8], start: usize) -> Result<usize, AddressError> {
    let mut p = start;
    loop {
        let label = p;
        while p < s.len() && (is_let_dig(s[p]) || s[p] == b'-') {
            p += 1;
        }
        if p == label || s[label] == b'-' || s[p - 1] == b'-' || p - label > MAX_LABEL {
            return Err(BAD_DOMAIN);
        }
        if s.get(p) == Some(&b'.') {
            p += 1;
        } else {
            break;
        }
    }
    if p - start > MAX_DOMAIN {
        return Err(BAD_DOMAIN);
    }
    Ok(p)
}

/// `Dot-string / Quoted-string` from `p`; returns where it ends.
fn scan_local_part(s: &[u8], start: usize) -> Result<usize, AddressError> {
    let mut p = start;
    if s.get(p) == Some(&b'"') {
        p += 1;
        loop {
            match s.get(p) {
                Some(b'"') => return Ok(p + 1),
                Some(b'\\') => match s.get(p + 1) {
                    Some(32..=126) => p += 2,
                    _ => return Err(BAD_SYNTAX),
                },
                Some(&b) if is_qtext(b) => p += 1,
                _ => return Err(BAD_SYNTAX),
            }
        }
    }
    loop {
        let atom = p;
        while p < s.len() && is_atext(s[p]) {
            p += 1;
        }
        if p == atom {
            return Err(BAD_SYNTAX);
        }
        if s.get(p) == Some(&b'.') {
            p += 1;
        } else {
            return Ok(p);
        }
    }
}

/// The inside of `[...]` from `p` (just after `[`); returns the index of `]`.
fn scan_literal(s: &[u8], start: usize) -> Result<usize, AddressError> {
    let mut p = start;
    while p < s.len() && is_dcontent(s[p]) {
        p += 1;
    }
    if s.get(p) != Some(&b']') || p - start > MAX_DOMAIN {
        return Err(BAD_LITERAL);
    }
    // dcontent is ASCII, so this cannot fail.
    let text = std::str::from_utf8(&s[start..p]).map_err(|_| BAD_LITERAL)?;
    let ok = if text.len() >= 5 && text[..5].eq_ignore_ascii_case("IPv6:") {
        text[5..].parse::<Ipv6Addr>().is_ok()
    } else if let Some((tag, content)) = text.split_once(':') {
        // General-address-literal: Standardized-tag ":" 1*dcontent. The tag
        // must start with a letter so a bare IPv6 address (`[2001:db8::1]`,
        // missing its `IPv6:`) is not taken for tag `2001`.
        let tag = tag.as_bytes();
        !content.is_empty()
            && tag.first().is_some_and(u8::is_ascii_alphabetic)
            && tag.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-')
            && tag.last().is_some_and(u8::is_ascii_alphanumeric)
    } else {
        text.parse::<Ipv4Addr>().is_ok()
    };
    if ok {
        Ok(p)
    } else {
        Err(BAD_LITERAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Domain {
        Domain::Name(s.to_owned())
    }

    fn lit(s: &str) -> Domain {
        Domain::Literal(s.to_owned())
    }

    fn path(route: &[&str], local: &str, domain: Domain) -> Path {
        Path {
            route: route.iter().map(|s| s.to_string()).collect(),
            mailbox: Mailbox {
                local: local.to_owned(),
                domain,
            },
        }
    }

    #[test]
    fn valid_paths() {
        let long_label = "a".repeat(63);
        let long_domain = format!("{0}.{0}.{0}.{1}", long_label, "b".repeat(63)); // 255
        let cases: Vec<(String, Path)> = vec![
            (
                "<user@example.org>".into(),
                path(&[], "user", name("example.org")),
            ),
            (
                "<User@Example.ORG>".into(),
                path(&[], "User", name("Example.ORG")),
            ),
            ("<a.b.c@x>".into(), path(&[], "a.b.c", name("x"))),
            (
                "<user%evil@local>".into(),
                path(&[], "user%evil", name("local")),
            ),
            (
                "<\"user@evil\"@local>".into(),
                path(&[], "\"user@evil\"", name("local")),
            ),
            ("<\"a b\"@x>".into(), path(&[], "\"a b\"", name("x"))),
            ("<\"\"@x>".into(), path(&[], "\"\"", name("x"))),
            (
                "<\"a\\\"b\\\\c\"@x>".into(),
                path(&[], "\"a\\\"b\\\\c\"", name("x")),
            ),
            ("<\"a>b\"@x>".into(), path(&[], "\"a>b\"", name("x"))),
            (
                "<!#$%&'*+-/=?^_`{|}~@x>".into(),
                path(&[], "!#$%&'*+-/=?^_`{|}~", name("x")),
            ),
            (
                "<@local:user@evil>".into(),
                path(&["local"], "user", name("evil")),
            ),
            (
                "<@evil:user@local>".into(),
                path(&["evil"], "user", name("local")),
            ),
            (
                "<@ONE,@TWO:user@THREE>".into(),
                path(&["ONE", "TWO"], "user", name("THREE")),
            ),
            ("<a@x-y.b2.c>".into(), path(&[], "a", name("x-y.b2.c"))),
            ("<a@1.2.3.4>".into(), path(&[], "a", name("1.2.3.4"))),
            ("<a@[192.0.2.1]>".into(), path(&[], "a", lit("192.0.2.1"))),
            (
                "<a@[IPv6:2001:db8::1]>".into(),
                path(&[], "a", lit("IPv6:2001:db8::1")),
            ),
            (
                "<a@[ipv6:::ffff:192.0.2.1]>".into(),
                path(&[], "a", lit("ipv6:::ffff:192.0.2.1")),
            ),
            (
                "<a@[x-tag:any.thing]>".into(),
                path(&[], "a", lit("x-tag:any.thing")),
            ),
            (
                "<jörg@müller.example>".into(),
                path(&[], "jörg", name("müller.example")),
            ),
            (
                "<用户@例子.广告>".into(),
                path(&[], "用户", name("例子.广告")),
            ),
            ("<\"ü b\"@x>".into(), path(&[], "\"ü b\"", name("x"))),
            (
                format!("<a@{long_domain}>"),
                path(&[], "a", name(&long_domain)),
            ),
        ];
        for (input, want) in cases {
            let (got, rest) = parse_forward_path(input.as_bytes()).unwrap_or_else(|e| {
                panic!("{input}: {e:?}");
            });
            assert_eq!(got, ForwardPath::Path(want.clone()), "{input}");
            assert_eq!(rest, b"", "{input}");
            let (got, _) = parse_reverse_path(input.as_bytes()).unwrap();
            assert_eq!(got, ReversePath::Path(want), "{input}");
        }
    }

    #[test]
    fn invalid_paths() {
        let long_label = "a".repeat(64);
        let long_domain = format!("{0}.{0}.{0}.{0}", "a".repeat(63)); // 255 + 1 label
        let long_domain = format!("{long_domain}.b"); // 257
        let long_route = format!("<{}:a@b>", vec!["@h"; 33].join(","));
        let long_local = format!("<{}@b>", "a".repeat(2100));
        let cases: Vec<(Vec<u8>, AddressError)> = vec![
            (b"user@example.org".to_vec(), NO_BRACKETS),
            (b"<user@example.org".to_vec(), NO_BRACKETS),
            (b"".to_vec(), NO_BRACKETS),
            (b"<".to_vec(), BAD_SYNTAX),
            (b"<user>".to_vec(), BAD_SYNTAX),
            (b"<@x>".to_vec(), BAD_SYNTAX),
            (b"<user@>".to_vec(), BAD_DOMAIN),
            (b"<@example.org>".to_vec(), BAD_SYNTAX),
            (b"<user@evil@local>".to_vec(), BAD_SYNTAX),
            (b"<user@example.org.>".to_vec(), BAD_DOMAIN),
            (b"<user@.example.org>".to_vec(), BAD_DOMAIN),
            (b"<user@example..org>".to_vec(), BAD_DOMAIN),
            (b"<user@-example.org>".to_vec(), BAD_DOMAIN),
            (b"<user@example-.org>".to_vec(), BAD_DOMAIN),
            (b"<user@exa_mple.org>".to_vec(), BAD_SYNTAX),
            (format!("<a@{long_label}.org>").into_bytes(), BAD_DOMAIN),
            (format!("<a@{long_domain}>").into_bytes(), BAD_DOMAIN),
            (b"<.user@x>".to_vec(), BAD_SYNTAX),
            (b"<user.@x>".to_vec(), BAD_SYNTAX),
            (b"<us..er@x>".to_vec(), BAD_SYNTAX),
            (b"<us er@x>".to_vec(), BAD_SYNTAX),
            (b"< user@x>".to_vec(), BAD_SYNTAX),
            (b"<user@x >".to_vec(), BAD_SYNTAX),
            (b"<us(er@x>".to_vec(), BAD_SYNTAX),
            (b"<\"unterminated@x>".to_vec(), BAD_SYNTAX),
            (b"<\"a\\\x01\"@x>".to_vec(), BAD_SYNTAX),
            (b"<\"a\x01\"@x>".to_vec(), BAD_SYNTAX),
            (b"<\"a\"b@x>".to_vec(), BAD_SYNTAX),
            (b"<us\x00er@x>".to_vec(), BAD_SYNTAX),
            (b"<us\x7fer@x>".to_vec(), BAD_SYNTAX),
            (b"<user@[192.0.2.256]>".to_vec(), BAD_LITERAL),
            (b"<user@[192.0.2]>".to_vec(), BAD_LITERAL),
            (b"<user@[IPv6:2001:db8::g]>".to_vec(), BAD_LITERAL),
            (b"<user@[IPv6:192.0.2.1]>".to_vec(), BAD_LITERAL),
            (b"<user@[2001:db8::1]>".to_vec(), BAD_LITERAL),
            (b"<user@[x-tag:]>".to_vec(), BAD_LITERAL),
            (b"<user@[:x]>".to_vec(), BAD_LITERAL),
            (b"<user@[192.0.2.1>".to_vec(), BAD_LITERAL),
            (b"<user@[]>".to_vec(), BAD_LITERAL),
            (b"<user@[192.0.2.1]x>".to_vec(), BAD_SYNTAX),
            (b"<@[192.0.2.1]:user@x>".to_vec(), BAD_DOMAIN),
            (b"<@a,b:user@x>".to_vec(), BAD_SYNTAX),
            (b"<@a,:user@x>".to_vec(), BAD_SYNTAX),
            (b"<@a.:user@x>".to_vec(), BAD_DOMAIN),
            (b"<@a user@x>".to_vec(), BAD_SYNTAX),
            (long_route.into_bytes(), ROUTE_TOO_LONG),
            (long_local.into_bytes(), PATH_TOO_LONG),
            (b"<j\xf6rg@x>".to_vec(), BAD_UTF8),
            (b"<a@m\xc3\xbc\xc3>".to_vec(), BAD_UTF8),
            ("<a\u{85}b@x>".as_bytes().to_vec(), BAD_UTF8),
        ];
        for (input, want) in cases {
            let shown = String::from_utf8_lossy(&input).into_owned();
            assert_eq!(parse_forward_path(&input), Err(want.clone()), "{shown}");
            assert_eq!(parse_reverse_path(&input), Err(want), "{shown}");
        }
    }

    #[test]
    fn path_length_bound() {
        let at_limit = format!("<{}@b>", "a".repeat(MAX_PATH - 4));
        assert!(parse_forward_path(at_limit.as_bytes()).is_ok());
        let over = format!("<{}@b>", "a".repeat(MAX_PATH - 3));
        assert_eq!(parse_forward_path(over.as_bytes()), Err(PATH_TOO_LONG));
    }

    #[test]
    fn ipv4_literal_is_strict() {
        for bad in ["<a@[192.0.2.01]>", "<a@[1.2.3.4.5]>", "<a@[ 1.2.3.4]>"] {
            assert!(parse_forward_path(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn route_of_32_hops_is_allowed() {
        let input = format!("<{}:a@b>", vec!["@h"; 32].join(","));
        let (got, _) = parse_forward_path(input.as_bytes()).unwrap();
        let ForwardPath::Path(p) = got else { panic!() };
        assert_eq!(p.route.len(), 32);
    }

    #[test]
    fn null_and_postmaster() {
        assert_eq!(parse_reverse_path(b"<>"), Ok((ReversePath::Null, &b""[..])));
        assert_eq!(
            parse_reverse_path(b"<> SIZE=10"),
            Ok((ReversePath::Null, &b" SIZE=10"[..]))
        );
        assert_eq!(parse_forward_path(b"<>"), Err(NULL_FORWARD));
        for input in [&b"<Postmaster>"[..], b"<postmaster>", b"<POSTMASTER>"] {
            assert_eq!(
                parse_forward_path(input),
                Ok((ForwardPath::Postmaster, &b""[..]))
            );
        }
        assert_eq!(
            parse_forward_path(b"<PostMaster> X=Y"),
            Ok((ForwardPath::Postmaster, &b" X=Y"[..]))
        );
        // Only the forward path has the bare postmaster form.
        assert_eq!(parse_reverse_path(b"<Postmaster>"), Err(BAD_SYNTAX));
        // With a domain it is an ordinary mailbox.
        let (got, _) = parse_forward_path(b"<postmaster@x>").unwrap();
        assert_eq!(got, ForwardPath::Path(path(&[], "postmaster", name("x"))));
        assert_eq!(parse_forward_path(b"<postmasterx>"), Err(BAD_SYNTAX));
    }

    #[test]
    fn rest_after_path() {
        let (_, rest) = parse_reverse_path(b"<a@b> SIZE=100 BODY=8BITMIME").unwrap();
        assert_eq!(rest, b" SIZE=100 BODY=8BITMIME");
        let (_, rest) = parse_forward_path(b"<\"x>y\"@b>>").unwrap();
        assert_eq!(rest, b">");
        // Bytes after the path are not the path's business, even bad ones.
        let (_, rest) = parse_forward_path(b"<a@b>\xff").unwrap();
        assert_eq!(rest, b"\xff");
    }

    #[test]
    fn display() {
        let p = path(&["ONE", "TWO"], "user", name("THREE"));
        assert_eq!(p.to_string(), "@ONE,@TWO:user@THREE");
        assert_eq!(p.mailbox.to_string(), "user@THREE");
        let p = path(&[], "\"a b\"", lit("192.0.2.1"));
        assert_eq!(p.to_string(), "\"a b\"@[192.0.2.1]");
        assert_eq!(lit("IPv6:::1").to_string(), "[IPv6:::1]");
        // Display then parse gives the same path back.
        for input in ["<@a,@b:x.y@c.d>", "<\"q\\\"\"@[IPv6:::1]>", "<ü@ö.de>"] {
            let (ForwardPath::Path(p), _) = parse_forward_path(input.as_bytes()).unwrap() else {
                panic!()
            };
            assert_eq!(format!("<{p}>"), input);
        }
    }

    #[test]
    fn ascii() {
        assert!(path(&["a"], "b", name("c")).is_ascii());
        assert!(!path(&[], "jörg", name("c")).is_ascii());
        assert!(!path(&[], "b", name("ö.de")).is_ascii());
        assert!(!path(&["ö"], "b", name("c")).is_ascii());
        assert!(lit("IPv6:::1").is_ascii());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn label() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?"
    }

    fn domain_name() -> impl Strategy<Value = String> {
        prop::collection::vec(label(), 1..4).prop_map(|labels| labels.join("."))
    }

    fn domain() -> impl Strategy<Value = Domain> {
        prop_oneof![
            4 => domain_name().prop_map(Domain::Name),
            1 => any::<[u8; 4]>().prop_map(|b| Domain::Literal(Ipv4Addr::from(b).to_string())),
            1 => any::<[u16; 8]>()
                .prop_map(|s| Domain::Literal(format!("IPv6:{}", Ipv6Addr::from(s)))),
            1 => ("x-[a-z0-9]{1,5}", "[!-Z^-~]{1,12}")
                .prop_map(|(tag, content)| Domain::Literal(format!("{tag}:{content}"))),
        ]
    }

    fn local_part() -> impl Strategy<Value = String> {
        let atom = "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}";
        prop_oneof![
            prop::collection::vec(atom, 1..4).prop_map(|atoms| atoms.join(".")),
            // Quoted: qtext and quoted pairs.
            prop::collection::vec(prop_oneof!["[ !#-\\[\\]-~]", "\\\\[ -~]"], 0..10)
                .prop_map(|parts| format!("\"{}\"", parts.concat())),
        ]
    }

    fn valid_path() -> impl Strategy<Value = Path> {
        (
            prop::collection::vec(domain_name(), 0..4),
            local_part(),
            domain(),
        )
            .prop_map(|(route, local, domain)| Path {
                route,
                mailbox: Mailbox { local, domain },
            })
    }

    /// Bytes that matter to the grammar, so random input gets deep.
    fn path_like_bytes() -> impl Strategy<Value = Vec<u8>> {
        let pieces = prop_oneof![
            Just(b"<".to_vec()),
            Just(b">".to_vec()),
            Just(b"@".to_vec()),
            Just(b".".to_vec()),
            Just(b":".to_vec()),
            Just(b",".to_vec()),
            Just(b"\"".to_vec()),
            Just(b"\\".to_vec()),
            Just(b"[".to_vec()),
            Just(b"]".to_vec()),
            Just(b"IPv6:".to_vec()),
            Just(b"-".to_vec()),
            Just("ü".as_bytes().to_vec()),
            Just(b"\xc3".to_vec()),
            Just(b"\xff".to_vec()),
            "[a-z0-9]{1,4}".prop_map(String::into_bytes),
            any::<u8>().prop_map(|b| vec![b]),
        ];
        prop::collection::vec(pieces, 0..40).prop_map(|v| {
            let mut out = b"<".to_vec();
            out.extend(v.concat());
            out
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics_on_arbitrary_bytes(input in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_forward_path(&input);
            let _ = parse_reverse_path(&input);
        }

        #[test]
        fn whatever_parses_displays_and_parses_back_the_same(input in path_like_bytes()) {
            if let Ok((ForwardPath::Path(p), _)) = parse_forward_path(&input) {
                let shown = format!("<{p}>");
                let (again, rest) = parse_forward_path(shown.as_bytes()).unwrap();
                prop_assert_eq!(again, ForwardPath::Path(p.clone()));
                prop_assert!(rest.is_empty());
                // What is shown never carries a line break or a NUL.
                prop_assert!(!shown.contains(['\r', '\n', '\0']));
            }
            if let Ok((ReversePath::Path(p), rest)) = parse_reverse_path(&input) {
                // The rest is a suffix of the input, the path its prefix.
                prop_assert!(input.ends_with(rest));
                let shown = format!("<{p}>");
                let (again, _) = parse_reverse_path(shown.as_bytes()).unwrap();
                prop_assert_eq!(again, ReversePath::Path(p));
            }
        }

        #[test]
        fn valid_paths_round_trip_display_then_parse(p in valid_path(), params in "( [A-Z]{1,5}=[a-z0-9]{1,5}){0,3}") {
            let shown = format!("<{p}>{params}");
            let (got, rest) = parse_forward_path(shown.as_bytes())
                .unwrap_or_else(|e| panic!("{shown}: {e:?}"));
            prop_assert_eq!(got, ForwardPath::Path(p.clone()));
            prop_assert_eq!(rest, params.as_bytes());
            let (got, rest) = parse_reverse_path(shown.as_bytes()).unwrap();
            prop_assert_eq!(got, ReversePath::Path(p));
            prop_assert_eq!(rest, params.as_bytes());
        }
    }
}
