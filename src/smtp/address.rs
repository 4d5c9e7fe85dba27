//! RFC 5321 paths (section 4.1.2): mailboxes, source routes, address
//! literals, quoted local parts, and RFC 6531 UTF-8 addresses.

use std::fmt;

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

impl fmt::Display for Domain {
    /// `example.org` or `[192.0.2.1]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

impl fmt::Display for Mailbox {
    /// `local@domain`, no angle brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

impl fmt::Display for Path {
    /// `@ONE,@TWO:user@THREE` or `user@THREE`, no angle brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

impl Mailbox {
    /// True when local part and domain are all ASCII (else SMTPUTF8 is needed).
    pub fn is_ascii(&self) -> bool {
        todo!()
    }
}

impl Path {
    pub fn is_ascii(&self) -> bool {
        todo!()
    }
}

/// Parses `<...>` at the start of `input` (the text after `MAIL FROM:`,
/// leading spaces already skipped) and returns the path and the rest of the
/// input after `>` (the parameters, with their leading space).
/// UTF-8 is accepted here; the caller decides whether SMTPUTF8 allows it.
pub fn parse_reverse_path(input: &[u8]) -> Result<(ReversePath, &[u8]), AddressError> {
    todo!()
}

/// As [`parse_reverse_path`], for `RCPT TO:`.
pub fn parse_forward_path(input: &[u8]) -> Result<(ForwardPath, &[u8]), AddressError> {
    todo!()
}
