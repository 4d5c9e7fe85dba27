//! SMTP replies as a client reads them (RFC 5321 4.2): multi-line, with
//! an RFC 3463 enhanced code when the server gives one.

use std::fmt;

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
    /// every outcome is recorded and classified the same way.
    pub fn local(code: u16, enhanced: &str, text: &str) -> Reply {
        todo!()
    }

    pub fn class(&self) -> Class {
        todo!()
    }

    /// The enhanced code, or one derived from the basic code (`X.0.0`).
    pub fn status(&self) -> String {
        todo!()
    }
}

impl fmt::Display for Reply {
    /// One line for logs and the queue: `550 5.1.1 No such user (more lines joined by spaces)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

/// Parses one complete reply at the start of `input`: `Ok(None)` when more
/// bytes are needed, else the reply and the bytes it used. Bounded: a reply
/// over 100 lines or 64 KiB, a line without a valid code, or codes that
/// differ between lines is an error.
pub fn parse(input: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    todo!()
}
