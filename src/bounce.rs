//! RFC 3464 delivery status notifications: the bounce (and the delay
//! warning) mailhop sends from `<>` to the original sender.

use std::time::SystemTime;

/// `Action:` of one recipient (RFC 3464 2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Given up: the bounce.
    Failed,
    /// Still trying: the delay warning.
    Delayed,
}

/// One recipient the report is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedRecipient {
    /// The mailbox as given by the sender (`Final-Recipient: rfc822; ...`).
    pub mailbox: String,
    pub action: Action,
    /// RFC 3463 status, `5.1.1`, `4.4.7`.
    pub status: String,
    /// The host that answered (`Remote-MTA: dns; ...`), if one did.
    pub remote_mta: Option<String>,
    /// The reply as one line (`Diagnostic-Code: smtp; 550 5.1.1 ...`), if any.
    pub diagnostic: Option<String>,
    /// When the last attempt was made (`Last-Attempt-Date:`).
    pub last_attempt: Option<SystemTime>,
}

/// The message the report is about.
#[derive(Debug, Clone, Copy)]
pub struct Original<'a> {
    /// Its queue ID (`Original-Envelope-Id` is not used; `X-Postfix-Queue-ID` style).
    pub id: &'a str,
    /// The sender the report goes to (never empty: mail from `<>` is not reported on).
    pub sender: &'a str,
    pub received_at: SystemTime,
    /// The stored message (CRLF line ends); only its header section is returned.
    pub message: &'a [u8],
}

/// Builds the whole report message, CRLF line ends, ready to queue: the
/// header (`From: MAILER-DAEMON@<hostname>`, `To: <sender>`, `Subject:`,
/// `Date:`, `Message-ID:`, `Auto-Submitted: auto-replied`, MIME headers)
/// and a `multipart/report; report-type=delivery-status` body with a
/// human-readable part, a `message/delivery-status` part (per-message
/// fields `Reporting-MTA: dns; <hostname>`, `Arrival-Date:`, then one block
/// per recipient), and a `text/rfc822-headers` part with the original
/// header section. Every line is at most 998 octets (long diagnostics are
/// folded or cut), and the text is 7-bit unless the original headers are not.
pub fn report(hostname: &str, original: &Original<'_>, recipients: &[ReportedRecipient], now: SystemTime) -> Vec<u8> {
    todo!()
}
