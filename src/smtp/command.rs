//! One command line (CRLF already removed) -> [`Command`].

use super::address::{ForwardPath, ReversePath};

/// `BODY=` of MAIL FROM (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// `SIZE=n` (RFC 1870).
    pub size: Option<u64>,
    pub body: BodyType,
    /// `SMTPUTF8` (RFC 6531), no value.
    pub smtputf8: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// The domain or address literal given (validated, not empty).
    Helo(&'a str),
    Ehlo(&'a str),
    Mail {
        path: ReversePath,
        params: MailParams,
    },
    Rcpt {
        path: ForwardPath,
    },
    Data,
    Rset,
    Noop,
    Quit,
    /// VRFY with any argument.
    Vrfy,
    Help,
    /// Recognised but not implemented here (EXPN, TURN, SEND, SOML, SAML):
    /// the verb in upper case.
    NotImplemented(&'static str),
}

/// Why a line is not an acceptable command; maps to one SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Not a command we know: `500 5.5.2`.
    Unknown,
    /// A known verb with bad arguments or a bad path: `501 5.5.4 <text>`.
    Syntax(&'static str),
    /// A MAIL/RCPT parameter we do not support: `555 5.5.4 <text>`.
    UnknownParameter(&'static str),
}

/// Parses one command line without its CRLF. Verbs and parameter keywords
/// are case-insensitive. Non-UTF-8 bytes are a syntax error.
pub fn parse(line: &[u8]) -> Result<Command<'_>, CommandError> {
    todo!()
}
