//! One message through the signer, piece by piece as it arrives. Only the
//! header section is held (bounded); the body is hashed as it passes.

use std::sync::Arc;

use mail_auth::common::crypto::DkimKey;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigningStream;
use mail_auth::AuthenticatedMessage;
use memchr::memmem;

use super::Signers;

/// A header section longer than this is not signed (Postfix's
/// `header_size_limit` is 100 KiB too).
pub const MAX_HEADER_SECTION: usize = 100 * 1024;

/// What became of a message's signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The `DKIM-Signature:` field, folded, ending in CRLF.
    Signed {
        field: String,
        domain: String,
        selector: String,
    },
    /// Not signed, and why (no key for the From domain, ...).
    Unsigned(String),
    /// A key matched but signing failed.
    Failed(String),
}

type Stream<'a> = Option<DkimSigningStream<'a, DkimKey>>;

self_cell::self_cell!(
    /// The streaming signer borrows its key from the shared `Signers`.
    struct Hashing {
        owner: Arc<Signers>,
        #[covariant]
        dependent: Stream,
    }
);

enum State {
    /// Collecting the header section to find its From.
    Headers {
        signers: Arc<Signers>,
        buf: Vec<u8>,
    },
    Body {
        key: usize,
        hashing: Box<Hashing>,
    },
    Done(Outcome),
}

/// The signing of one message, fed the message as stored (after dot
/// unstuffing, lines ending in CRLF), our `Received:` line excluded.
pub struct Signing(State);

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.0 {
            State::Headers { .. } => "Signing(headers)",
            State::Body { .. } => "Signing(body)",
            State::Done(_) => "Signing(done)",
        })
    }
}

impl Signing {
    pub fn new(signers: Arc<Signers>) -> Signing {
        Signing(State::Headers {
            signers,
            buf: Vec::new(),
        })
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        match &mut self.0 {
            State::Headers { buf, .. } => {
                let scanned = buf.len().saturating_sub(3);
                buf.extend_from_slice(bytes);
                // Held: at most the limit and one piece of input.
                match header_end(buf, scanned) {
                    Some(end) if end <= MAX_HEADER_SECTION => self.start_body(end),
                    None if buf.len() <= MAX_HEADER_SECTION => {}
                    _ => {
                        self.0 = State::Done(Outcome::Unsigned(format!(
                            "header section over {} KiB",
                            MAX_HEADER_SECTION / 1024
                        )))
                    }
                }
            }
            State::Body { hashing, .. } => {
                hashing.with_dependent_mut(|_, stream| {
                    if let Some(stream) = stream {
                        stream.write(bytes);
                    }
                });
            }
            State::Done(_) => {}
        }
    }

    /// The header section is in (`buf[..end]`, its empty line included):
    /// pick the key by the From domain, or give up.
    fn start_body(&mut self, end: usize) {
        let State::Headers { signers, buf } =
            std::mem::replace(&mut self.0, State::Done(Outcome::Unsigned(String::new())))
        else {
            unreachable!("called while collecting headers")
        };
        let key = match from_domain(&buf[..end]) {
            Err(why) => return self.0 = State::Done(Outcome::Unsigned(why)),
            Ok(domain) => match signers.for_domain(&domain) {
                Some(key) => key,
                None => {
                    return self.0 = State::Done(Outcome::Unsigned(format!(
                        "no key for From domain {domain}"
                    )))
                }
            },
        };
        let mut hashing = Box::new(Hashing::new(signers, |s| {
            Some(s.keys()[key].signer.sign_streaming())
        }));
        hashing.with_dependent_mut(|_, stream| {
            if let Some(stream) = stream {
                stream.write(&buf);
            }
        });
        self.0 = State::Body { key, hashing };
    }

    /// At the end of the message: the signature, or why there is none.
    pub fn finish(mut self) -> Outcome {
        if let State::Headers { buf, .. } = &self.0 {
            // Headers only, no empty line: the section is all of it.
            if buf.is_empty() {
                return Outcome::Unsigned("empty message".into());
            }
            let end = buf.len();
            self.start_body(end);
        }
        match self.0 {
            State::Headers { .. } => unreachable!("started above"),
            State::Done(outcome) => outcome,
            State::Body { key, mut hashing } => {
                let signed =
                    hashing.with_dependent_mut(|_, stream| stream.take().map(|s| s.finish()));
                let k = &hashing.borrow_owner().keys()[key];
                match signed {
                    Some(Ok(signature)) => Outcome::Signed {
                        field: signature.to_header(),
                        domain: k.domain.clone(),
                        selector: k.selector.clone(),
                    },
                    Some(Err(e)) => {
                        Outcome::Failed(format!("d={} s={}: {e}", k.domain, k.selector))
                    }
                    None => Outcome::Failed("signed twice".into()),
                }
            }
        }
    }
}

/// Where the header section ends (after its empty line), looking from
/// `from` on. A message may also start with the empty line.
fn header_end(buf: &[u8], from: usize) -> Option<usize> {
    if buf.starts_with(b"\r\n") {
        return Some(2);
    }
    memmem::find(&buf[from..], b"\r\n\r\n").map(|p| from + p + 4)
}

/// The domain of the (first) From address, as DMARC aligns with it.
fn from_domain(headers: &[u8]) -> Result<String, String> {
    let parsed = AuthenticatedMessage::parse(headers).ok_or("no header section")?;
    let from = parsed.from.first().ok_or("no From address")?;
    match from.rsplit_once('@') {
        Some((_, domain)) if !domain.is_empty() => Ok(domain.to_ascii_lowercase()),
        _ => Err(format!("From address {from:?} has no domain")),
    }
}
