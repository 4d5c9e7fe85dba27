//! RFC 3464 delivery status notifications: the bounce (and the delay
//! warning) mailhop sends from `<>` to the original sender.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use memchr::{memchr, memmem};

/// `Action:` of one recipient (RFC 3464 2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Given up: the bounce.
    Failed,
    /// Still trying: the delay warning.
    Delayed,
    /// Delivered here (`NOTIFY=SUCCESS`, RFC 3461).
    Delivered,
    /// Handed to a next hop that does not offer DSN (`NOTIFY=SUCCESS`).
    Relayed,
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
    /// `ORCPT=` as given, `addr-type;address` (`Original-Recipient:`).
    pub original_recipient: Option<String>,
}

/// The message the report is about.
#[derive(Debug, Clone, Copy)]
pub struct Original<'a> {
    /// Its queue ID (`Original-Envelope-Id` is not used; `X-Postfix-Queue-ID` style).
    pub id: &'a str,
    /// The sender the report goes to (never empty: mail from `<>` is not reported on).
    pub sender: &'a str,
    pub received_at: SystemTime,
    /// The stored message (CRLF line ends), or its first piece; only its
    /// header section is returned unless `full`.
    pub message: &'a [u8],
    /// `RET=FULL` and `message` is all of it: returned whole.
    pub full: bool,
    /// `ENVID=` as given (`Original-Envelope-Id:`).
    pub envid: Option<&'a str>,
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
///
/// A report with any failed recipient is a bounce, else a delay warning.
/// Diagnostics that are not SMTP replies get `Diagnostic-Code: X-Mailhop;`.
/// Non-ASCII in the sender, mailboxes and diagnostics becomes `?` (no RFC
/// 6533 `utf-8` address type); 8-bit original headers are kept and then
/// the parts say `Content-Transfer-Encoding: 8bit`.
pub fn report(
    hostname: &str,
    original: &Original<'_>,
    recipients: &[ReportedRecipient],
    now: SystemTime,
) -> Vec<u8> {
    let failed = recipients.is_empty() || recipients.iter().any(|r| r.action == Action::Failed);
    let success = !failed && recipients.iter().all(|r| r.action != Action::Delayed);
    let host = seven_bit(hostname);
    let id = seven_bit(original.id);

    let kind = match (failed, success) {
        (true, _) => Kind::Failure,
        (false, true) => Kind::Success,
        (false, false) => Kind::Delay,
    };
    let notice = human_part(&host, original, recipients, kind);
    let status = status_part(&host, &id, original, recipients);
    let (headers, eight_bit) = if original.full {
        original_lines(original.message, usize::MAX)
    } else {
        original_headers(original.message)
    };

    let micros = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default();
    let boundary = boundary(
        &id,
        micros,
        [notice.as_bytes(), status.as_bytes(), &headers],
    );
    let cte = if eight_bit { "8bit" } else { "7bit" };
    let subject = match kind {
        Kind::Failure => "Undelivered Mail Returned to Sender",
        Kind::Delay => "Delayed Mail (still being retried)",
        Kind::Success => "Successful Mail Delivery Report",
    };

    let mut out = String::with_capacity(2048 + notice.len() + status.len());
    push_field(
        &mut out,
        &format!("From: Mail Delivery System <MAILER-DAEMON@{host}>"),
    );
    push_field(&mut out, &format!("To: <{}>", seven_bit(original.sender)));
    push_field(&mut out, &format!("Subject: {subject}"));
    push_field(&mut out, &format!("Date: {}", rfc5322(now)));
    push_field(
        &mut out,
        &format!("Message-ID: <{}.{micros}@{host}>", atom(&id)),
    );
    out.push_str("Auto-Submitted: auto-replied\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str("Content-Type: multipart/report; report-type=delivery-status;\r\n");
    out.push_str(&format!("\tboundary=\"{boundary}\"\r\n"));
    out.push_str(&format!("Content-Transfer-Encoding: {cte}\r\n"));
    out.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    out.push_str(&format!("--{boundary}\r\n"));
    out.push_str("Content-Description: Notification\r\n");
    out.push_str("Content-Type: text/plain; charset=us-ascii\r\n\r\n");
    out.push_str(&notice);
    out.push_str(&format!("\r\n--{boundary}\r\n"));
    out.push_str("Content-Description: Delivery report\r\n");
    out.push_str("Content-Type: message/delivery-status\r\n\r\n");
    out.push_str(&status);
    out.push_str(&format!("\r\n--{boundary}\r\n"));
    if original.full {
        out.push_str("Content-Description: Undelivered Message\r\n");
        out.push_str("Content-Type: message/rfc822\r\n");
    } else {
        out.push_str("Content-Description: Undelivered Message Headers\r\n");
        out.push_str("Content-Type: text/rfc822-headers\r\n");
    }
    out.push_str(&format!("Content-Transfer-Encoding: {cte}\r\n\r\n"));

    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&headers);
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// RFC 5322 lines may be 998 octets plus CRLF.
const MAX_LINE: usize = 998;
/// Where fields and text are folded when they can be (RFC 5322 2.1.1).
const SOFT_LINE: usize = 76;

/// Keeps printable ASCII and tab; anything else, CR and LF included,
/// becomes `?`, so a remote reply cannot add lines or 8-bit text.
fn seven_bit(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '\t' || (' '..='~').contains(&c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// A dot-atom-safe rendering of the queue ID for Message-ID and boundary.
fn atom(s: &str) -> String {
    s.chars()
        .take(32)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn rfc5322(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc2822()
}

/// Appends `field` (7-bit, one line) and CRLF, folded before a space
/// once a line passes `SOFT_LINE`. Runs of spaces count as one. A word too
/// long for any line is split, which adds a space where it is unfolded:
/// better than passing `MAX_LINE`.
fn push_field(out: &mut String, field: &str) {
    let mut line = 0;
    let mut first = true;
    for word in field.split([' ', '\t']).filter(|w| !w.is_empty()) {
        for chunk in chunks(word, MAX_LINE - 1) {
            if first {
                first = false;
            } else {
                if line + 1 + chunk.len() > SOFT_LINE {
                    out.push_str("\r\n");
                    line = 0;
                }
                out.push(' ');
                line += 1;
            }
            out.push_str(chunk);
            line += chunk.len();
        }
    }
    out.push_str("\r\n");
}

/// Plain text wrapped at `SOFT_LINE`, continuation lines indented by
/// `indent` spaces; words longer than a line are split.
fn push_wrapped(out: &mut String, text: &str, indent: usize) {
    let mut line = 0;
    let mut started = false;
    for word in text.split([' ', '\t']).filter(|w| !w.is_empty()) {
        for chunk in chunks(word, SOFT_LINE - indent - 1) {
            if started && line + 1 + chunk.len() > SOFT_LINE {
                out.push_str("\r\n");
                out.extend(std::iter::repeat_n(' ', indent));
                line = indent;
            } else if started {
                out.push(' ');
                line += 1;
            }
            out.push_str(chunk);
            line += chunk.len();
            started = true;
        }
    }
    out.push_str("\r\n");
}

/// `s` (ASCII) in pieces of at most `max` bytes.
fn chunks(s: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut cut = rest.len().min(max);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        rest = tail;
        Some(head)
    })
}

/// Part 1, for people: what happened, then one paragraph per recipient.
/// What a report says: RFC 3464 reports of three kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Failure,
    Delay,
    Success,
}

fn human_part(
    host: &str,
    original: &Original<'_>,
    recipients: &[ReportedRecipient],
    kind: Kind,
) -> String {
    let failed = kind == Kind::Failure;
    let mut out = format!("This is the mail system at host {host}.\r\n\r\n");
    if kind == Kind::Success {
        push_wrapped(
            &mut out,
            "Your message was delivered to the recipients below, or handed on \
             to a mail system that does not send delivery reports (\"relayed\"), \
             as you asked (NOTIFY=SUCCESS).",
            0,
        );
    } else if failed {
        out.push_str(
            "I'm sorry to have to inform you that your message could not\r\n\
             be delivered to one or more recipients. The header section of\r\n\
             your message is attached below.\r\n\r\n\
             For further assistance, please send mail to postmaster.\r\n\r\n\
             If you do so, please include this problem report.\r\n",
        );
    } else {
        out.push_str(
            "####################################################################\r\n\
             # THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n\
             ####################################################################\r\n\r\n",
        );
        let text = format!(
            "Your message, received {}, has not yet been delivered to one or \
             more recipients. The mail system will keep trying until the message \
             reaches its maximum time in the queue, and will tell you again if \
             it finally cannot be delivered.",
            rfc5322(original.received_at)
        );
        push_wrapped(&mut out, &text, 0);
    }
    out.push_str("\r\n                   The mail system\r\n");
    for r in recipients {
        let mut text = format!("<{}>: ", seven_bit(&r.mailbox));
        match (&r.remote_mta, &r.diagnostic) {
            (Some(mta), Some(diag)) => {
                text += &format!("host {} said: {}", seven_bit(mta), seven_bit(diag));
            }
            (None, Some(diag)) => text += &seven_bit(diag),
            (Some(mta), None) => text += &format!("host {}, status {}", seven_bit(mta), status(r)),
            (None, None) => text += &format!("status {}", status(r)),
        }
        if failed && r.action == Action::Delayed {
            text += " (delayed only: still being retried)";
        }
        out.push_str("\r\n");
        push_wrapped(&mut out, &text, 4);
    }
    out
}

/// Part 2, RFC 3464 2.1: the per-message fields (extension fields last,
/// as the grammar has them), then a block per recipient.
fn status_part(
    host: &str,
    id: &str,
    original: &Original<'_>,
    recipients: &[ReportedRecipient],
) -> String {
    let mut out = String::new();
    if let Some(envid) = original.envid {
        push_field(
            &mut out,
            &format!("Original-Envelope-Id: {}", seven_bit(envid)),
        );
    }
    push_field(&mut out, &format!("Reporting-MTA: dns; {host}"));
    push_field(
        &mut out,
        &format!("Arrival-Date: {}", rfc5322(original.received_at)),
    );
    push_field(&mut out, &format!("X-Mailhop-Queue-ID: {id}"));
    for r in recipients {
        out.push_str("\r\n");
        if let Some(orcpt) = &r.original_recipient {
            push_field(
                &mut out,
                &format!("Original-Recipient: {}", seven_bit(orcpt)),
            );
        }
        push_field(
            &mut out,
            &format!("Final-Recipient: rfc822; {}", seven_bit(&r.mailbox)),
        );
        let action = match r.action {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        };
        push_field(&mut out, &format!("Action: {action}"));
        push_field(&mut out, &format!("Status: {}", status(r)));
        if let Some(mta) = &r.remote_mta {
            push_field(&mut out, &format!("Remote-MTA: dns; {}", seven_bit(mta)));
        }
        if let Some(diag) = &r.diagnostic {
            let diag = seven_bit(diag);
            // An SMTP reply is `smtp`; anything else (a connection
            // failure, a local error) gets an X- type, as Postfix does.
            let kind = if is_reply(&diag) { "smtp" } else { "X-Mailhop" };
            push_field(&mut out, &format!("Diagnostic-Code: {kind}; {diag}"));
        }
        if let Some(t) = r.last_attempt {
            push_field(&mut out, &format!("Last-Attempt-Date: {}", rfc5322(t)));
        }
    }
    out
}

/// The recipient's status if it is RFC 3463 syntax (and a class that fits
/// a DSN), else the generic one for its action.
fn status(r: &ReportedRecipient) -> &str {
    let mut parts = r.status.split('.');
    let ok = matches!(parts.next(), Some("2" | "4" | "5"))
        && parts
            .by_ref()
            .take(2)
            .filter(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
            .count()
            == 2
        && parts.next().is_none();
    match (ok, r.action) {
        (true, _) => &r.status,
        (false, Action::Failed) => "5.0.0",
        (false, Action::Delayed) => "4.0.0",
        (false, Action::Delivered | Action::Relayed) => "2.0.0",
    }
}

/// Starts like an SMTP reply: three digits, then a space, `-` or the end.
fn is_reply(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 3
        && matches!(b[0], b'2'..=b'5')
        && b[1..3].iter().all(u8::is_ascii_digit)
        && matches!(b.get(3), None | Some(b' ' | b'-'))
}

/// Part 3: the lines up to the first empty one (all of them if there is
/// none, but never more than `MAX_HEADERS` bytes: a bounce must not carry
/// a whole message back to a forged sender), each ending in CRLF. Bytes are kept, except that a CR that does
/// not end a line and NUL become a space (neither may stand in a MIME
/// text part) and a line longer than `MAX_LINE` is cut. Also says whether
/// any byte is 8-bit.
const MAX_HEADERS: usize = 64 * 1024;

fn original_headers(message: &[u8]) -> (Vec<u8>, bool) {
    original_lines(message, MAX_HEADERS)
}

/// The header section (`limit` bytes at most), or with `usize::MAX` the
/// whole message (RET=FULL), sanitised as `original_headers` says.
fn original_lines(message: &[u8], limit: usize) -> (Vec<u8>, bool) {
    let whole = limit == usize::MAX;
    let mut out = Vec::with_capacity(message.len().min(MAX_HEADERS));
    let mut rest = message;
    while !rest.is_empty() && out.len().saturating_add(MAX_LINE + 2) <= limit {
        let (line, next) = match memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() && !whole {
            break;
        }
        let mut cut = line.len().min(MAX_LINE);
        // Do not leave half a UTF-8 sequence behind.
        if cut < line.len() {
            while cut > MAX_LINE - 3 && (line[cut] & 0xC0) == 0x80 {
                cut -= 1;
            }
        }
        out.extend(
            line[..cut]
                .iter()
                .map(|&b| if b == b'\r' || b == 0 { b' ' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
    }
    let eight_bit = out.iter().any(|&b| b >= 0x80);
    (out, eight_bit)
}

/// `<id>.<micros>/mailhop`, made longer until it occurs in no part.
fn boundary<const N: usize>(id: &str, micros: u128, parts: [&[u8]; N]) -> String {
    let base = format!("{}.{micros}/mailhop", atom(id));
    let mut candidate = base.clone();
    let mut n = 0u32;
    while parts
        .iter()
        .any(|p| memmem::find(p, candidate.as_bytes()).is_some())
    {
        n += 1;
        candidate = format!("{base}.{n}");
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    const HOST: &str = "mx.example";
    const MESSAGE: &[u8] = b"Received: from a ([192.0.2.1])\r\n\tby mx.example; \
        Tue, 14 Nov 2023 22:13:20 +0000\r\nFrom: Smith <smith@alpha.example>\r\n\
        Subject: Lunch on Friday\r\n\r\nBody text\r\nmore\r\n";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn original(message: &[u8]) -> Original<'_> {
        Original {
            id: "7K3M9Q2A",
            sender: "smith@alpha.example",
            received_at: at(1_700_000_000),
            message,
            full: false,
            envid: None,
        }
    }

    fn failed(mailbox: &str, diagnostic: Option<&str>) -> ReportedRecipient {
        ReportedRecipient {
            mailbox: mailbox.into(),
            action: Action::Failed,
            status: "5.1.1".into(),
            remote_mta: Some("mx.beta.example".into()),
            diagnostic: diagnostic.map(Into::into),
            last_attempt: Some(at(1_700_000_100)),
            original_recipient: None,
        }
    }

    fn delayed(mailbox: &str) -> ReportedRecipient {
        ReportedRecipient {
            mailbox: mailbox.into(),
            action: Action::Delayed,
            status: "4.4.1".into(),
            remote_mta: None,
            diagnostic: Some(
                "connect to mx.gamma.example[192.0.2.7]:25: Connection refused".into(),
            ),
            last_attempt: None,
            original_recipient: None,
        }
    }

    /// Line checks every report must pass: CRLF only, at most 998 octets.
    fn check_lines(report: &[u8]) {
        assert!(report.ends_with(b"\r\n"));
        for (i, &b) in report.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(report.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
            if b == b'\n' {
                assert!(i > 0 && report[i - 1] == b'\r', "bare LF at {i}");
            }
        }
        for line in report.split(|&b| b == b'\n') {
            assert!(line.len() <= MAX_LINE + 1, "line of {} octets", line.len());
        }
    }

    fn boundary_of(report: &[u8]) -> String {
        let text = String::from_utf8_lossy(report);
        let start = text.find("boundary=\"").unwrap() + "boundary=\"".len();
        let end = start + text[start..].find('"').unwrap();
        text[start..end].to_owned()
    }

    /// Runs `script` under `python3 -c` with `input` on stdin; `None` (and
    /// a note) when there is no python3.
    fn python(script: &str, input: &[u8]) -> Option<String> {
        let mut child = match Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                eprintln!("skipping the Python check: python3: {e}");
                return None;
            }
        };
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(String::from_utf8(out.stdout).unwrap())
    }

    /// Prints what a mail client would see of the report, one fact a line.
    const PARSE: &str = r#"
import email, re, sys
msg = email.message_from_bytes(sys.stdin.buffer.read())
unfold = lambda v: re.sub(r'\r?\n(?=[ \t])', '', str(v))
print('type', msg.get_content_type(), msg.get_param('report-type'))
print('subject', msg['Subject'])
print('auto', msg['Auto-Submitted'])
print('defects', len(msg.defects))
parts = msg.get_payload()
print('parts', [p.get_content_type() for p in parts])
blocks = parts[1].get_payload()
print('mta', blocks[0]['Reporting-MTA'], '|', blocks[0]['X-Mailhop-Queue-ID'])
for b in blocks[1:]:
    print('rcpt', ' | '.join(unfold(b[k]) for k in
          ('Final-Recipient', 'Action', 'Status', 'Remote-MTA', 'Diagnostic-Code')))
headers = parts[2].get_payload(decode=True).decode('utf-8', 'replace')
print('original subject', 'Subject: Lunch on Friday' in headers, 'Body text' in headers)
"#;

    #[test]
    fn bounce_parses_as_a_dsn() {
        let rcpts = [
            failed(
                "jones@beta.example",
                Some("550 5.1.1 <jones@beta.example>: no such user"),
            ),
            failed("brown@beta.example", None),
        ];
        let report = report(HOST, &original(MESSAGE), &rcpts, at(1_700_000_200));
        check_lines(&report);
        let text = String::from_utf8(report.clone()).unwrap();
        assert!(text.starts_with("From: Mail Delivery System <MAILER-DAEMON@mx.example>\r\n"));
        assert!(text.contains("\r\nTo: <smith@alpha.example>\r\n"));
        assert!(text.contains("\r\nMessage-ID: <7K3M9Q2A.1700000200000000@mx.example>\r\n"));
        assert!(text.contains("\r\nDate: Tue, 14 Nov 2023 22:16:40 +0000\r\n"));
        assert!(text.contains("\r\nArrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"));
        assert!(text.contains("\r\nLast-Attempt-Date: Tue, 14 Nov 2023 22:15:00 +0000\r\n"));
        assert!(text.contains("could not\r\nbe delivered"));
        assert!(!text.contains("Body text"));
        assert!(!text.contains("8bit"));
        assert!(report.is_ascii());

        let Some(out) = python(PARSE, &report) else {
            return;
        };
        assert_eq!(
            out,
            "type multipart/report delivery-status\n\
             subject Undelivered Mail Returned to Sender\n\
             auto auto-replied\n\
             defects 0\n\
             parts ['text/plain', 'message/delivery-status', 'text/rfc822-headers']\n\
             mta dns; mx.example | 7K3M9Q2A\n\
             rcpt rfc822; jones@beta.example | failed | 5.1.1 | dns; mx.beta.example | \
             smtp; 550 5.1.1 <jones@beta.example>: no such user\n\
             rcpt rfc822; brown@beta.example | failed | 5.1.1 | dns; mx.beta.example | None\n\
             original subject True False\n"
        );
    }

    #[test]
    fn delay_warning() {
        let report = report(
            HOST,
            &original(MESSAGE),
            &[delayed("x@gamma.example")],
            at(1_700_000_200),
        );
        check_lines(&report);
        let text = String::from_utf8(report.clone()).unwrap();
        assert!(text.contains("THIS IS A WARNING ONLY"));
        assert!(text.contains("has not yet been\r\ndelivered"));
        assert!(!text.contains("\r\nLast-Attempt-Date:"));
        let Some(out) = python(PARSE, &report) else {
            return;
        };
        assert!(
            out.contains("subject Delayed Mail (still being retried)\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "rcpt rfc822; x@gamma.example | delayed | 4.4.1 | None | X-Mailhop; connect to \
                 mx.gamma.example[192.0.2.7]:25: Connection refused\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn mixed_report_is_a_bounce() {
        let rcpts = [
            delayed("x@gamma.example"),
            failed("jones@beta.example", Some("550 no")),
        ];
        let report = report(HOST, &original(MESSAGE), &rcpts, at(1_700_000_200));
        let text = String::from_utf8(report).unwrap();
        assert!(text.contains("\r\nSubject: Undelivered Mail Returned to Sender\r\n"));
        assert!(text.contains("\r\nAction: delayed\r\n"));
        assert!(text.contains("\r\nAction: failed\r\n"));
        assert!(text.contains("still being retried"));
    }

    #[test]
    fn many_recipients_in_one_report() {
        let rcpts: Vec<_> = (0..20)
            .map(|i| {
                failed(
                    &format!("user{i}@beta.example"),
                    Some(&format!("550 5.1.1 user{i} unknown")),
                )
            })
            .collect();
        let report = report(HOST, &original(MESSAGE), &rcpts, at(1_700_000_200));
        check_lines(&report);
        let text = String::from_utf8(report.clone()).unwrap();
        assert_eq!(text.matches("\r\nFinal-Recipient: rfc822; ").count(), 20);
        assert_eq!(text.matches("\r\n\r\nFinal-Recipient: ").count(), 20);
        let Some(out) = python(PARSE, &report) else {
            return;
        };
        for i in 0..20 {
            let line = format!(
                "rcpt rfc822; user{i}@beta.example | failed | 5.1.1 | dns; mx.beta.example | \
                 smtp; 550 5.1.1 user{i} unknown\n"
            );
            assert!(out.contains(&line), "{out}");
        }
    }

    #[test]
    fn long_diagnostic_is_folded() {
        let words: Vec<String> = (0..700).map(|i| format!("w{i}")).collect();
        let spaced = format!("550 5.7.1 {}", words.join(" "));
        let solid = format!("550 {}", "x".repeat(5000));
        let rcpts = [
            failed("a@beta.example", Some(&spaced)),
            failed("b@beta.example", Some(&solid)),
        ];
        let report = report(HOST, &original(MESSAGE), &rcpts, at(1_700_000_200));
        check_lines(&report);
        assert!(
            report.split(|&b| b == b'\n').any(|l| l.len() > 900),
            "solid run split near 998"
        );
        let Some(out) = python(PARSE, &report) else {
            return;
        };
        // Folding at spaces is undone exactly by unfolding.
        assert!(out.contains(&format!("| smtp; {spaced}\n")), "{out}");
        let solid_line = out
            .lines()
            .find(|l| l.starts_with("rcpt rfc822; b@"))
            .unwrap();
        let (_, diag) = solid_line.split_once("| smtp; 550 ").unwrap();
        assert_eq!(diag.len(), 5000 + 5000 / 997, "one space per split");
        assert_eq!(diag.matches('x').count(), 5000);
    }

    #[test]
    fn control_and_8bit_in_diagnostics_become_question_marks() {
        let diag = "550 bad\r\nInjected: yes\0 caf\u{e9}";
        let report = report(
            HOST,
            &original(MESSAGE),
            &[failed("a@b.example", Some(diag))],
            at(1),
        );
        check_lines(&report);
        assert!(report.is_ascii());
        let text = String::from_utf8(report).unwrap();
        assert!(!text.contains("\r\nInjected"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 bad??Injected: yes? caf?\r\n"));
    }

    #[test]
    fn a_message_without_a_blank_line_comes_back_cut_short() {
        let line = format!("X-Filler: {}\r\n", "z".repeat(100));
        let msg = line.repeat(20_000);
        let (headers, _) = original_headers(msg.as_bytes());
        assert!(headers.len() <= MAX_HEADERS, "{} bytes", headers.len());
        // Whole lines, as many as fit with room for one of the longest.
        assert!(headers.len() + MAX_LINE + 2 + line.len() > MAX_HEADERS);
        assert!(headers.ends_with(line.as_bytes()));
    }

    #[test]
    fn original_headers_are_kept_with_crlf_and_cut() {
        let long = format!("X-Long: {}", "y".repeat(3000));
        let msg = format!("Subject: Lunch on Friday\nX-Utf8: caf\u{e9}\r\n{long}\r\nX-Cr: a\rb");
        let report = report(
            HOST,
            &original(msg.as_bytes()),
            &[failed("a@b.example", None)],
            at(1),
        );
        check_lines(&report);
        let text = String::from_utf8(report.clone()).unwrap();
        assert!(text.contains("Subject: Lunch on Friday\r\nX-Utf8: caf\u{e9}\r\n"));
        assert!(text.contains(&format!("\r\n{}\r\nX-Cr: a b\r\n\r\n--", &long[..998])));
        assert!(text.contains("\r\nContent-Transfer-Encoding: 8bit\r\n"));
        assert!(!text.contains("7bit"));
        let Some(out) = python(PARSE, &report) else {
            return;
        };
        assert!(out.contains("original subject True False\n"), "{out}");
    }

    #[test]
    fn message_without_body_is_all_headers() {
        let r = report(
            HOST,
            &original(b"Subject: x\r\nFrom: y"),
            &[failed("a@b.example", None)],
            at(1),
        );
        let text = String::from_utf8(r).unwrap();
        assert!(text.contains("\r\n\r\nSubject: x\r\nFrom: y\r\n\r\n--"));
    }

    #[test]
    fn boundary_avoids_the_content() {
        let first = report(
            HOST,
            &original(MESSAGE),
            &[failed("a@b.example", None)],
            at(5),
        );
        let b = boundary_of(&first);
        assert_eq!(b, "7K3M9Q2A.5000000/mailhop");
        // The original headers now hold the boundary that would be chosen.
        let msg =
            format!("Subject: Lunch on Friday\r\nX-Trap: --{b}\r\nX-Trap2: --{b}.1--\r\n\r\n");
        let second = report(
            HOST,
            &original(msg.as_bytes()),
            &[failed("a@b.example", None)],
            at(5),
        );
        let b2 = boundary_of(&second);
        assert_eq!(b2, format!("{b}.2"));
        let text = String::from_utf8(second.clone()).unwrap();
        // Two delimiters, one close, all at line starts and nowhere else.
        assert_eq!(text.matches(&format!("\r\n--{b2}\r\n")).count(), 3);
        assert_eq!(text.matches(&format!("\r\n--{b2}--\r\n")).count(), 1);
        assert_eq!(text.matches(&b2).count(), 5);
        assert!(b2.len() <= 70);
        let Some(out) = python(PARSE, &second) else {
            return;
        };
        assert!(out.contains("original subject True False\n"), "{out}");
    }

    #[test]
    fn bad_status_falls_back() {
        let mut r = failed("a@b.example", None);
        r.status = "550".into();
        let mut d = delayed("c@d.example");
        d.status = "4.4.7.1".into();
        let text = String::from_utf8(report(HOST, &original(MESSAGE), &[r, d], at(1))).unwrap();
        assert!(text.contains("\r\nStatus: 5.0.0\r\n"));
        assert!(text.contains("\r\nStatus: 4.0.0\r\n"));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    /// Text with the characters that could break a report: line ends, NUL,
    /// 8-bit, long words, runs of spaces.
    fn hostile_text(max: usize) -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            3 => "[ -~]{1,12}",
            1 => Just("\r\n".to_string()),
            1 => Just("\r".to_string()),
            1 => Just("\n".to_string()),
            1 => Just("\0".to_string()),
            1 => Just("\t".to_string()),
            1 => Just("é€".to_string()),
            1 => Just(" ".repeat(80)),
            1 => (1usize..3000).prop_map(|n| "w".repeat(n)),
            1 => any::<char>().prop_map(String::from),
        ];
        prop::collection::vec(piece, 0..max).prop_map(|v| v.concat())
    }

    fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            3 => "[ -~]{1,20}".prop_map(String::into_bytes),
            2 => Just(b"\r\n".to_vec()),
            1 => Just(b"\n".to_vec()),
            1 => Just(b"\r".to_vec()),
            1 => Just(b"\0".to_vec()),
            1 => Just(b"\r\n\t".to_vec()),
            1 => (1usize..3000).prop_map(|n| vec![b'h'; n]),
            1 => (1usize..700).prop_map(|n| "é".repeat(n).into_bytes()),
            1 => prop::collection::vec(any::<u8>(), 0..20),
        ];
        prop::collection::vec(piece, 0..30).prop_map(|v| v.concat())
    }

    fn recipient() -> impl Strategy<Value = ReportedRecipient> {
        (
            hostile_text(6),
            any::<bool>(),
            hostile_text(3),
            prop::option::of(hostile_text(6)),
            prop::option::of(hostile_text(12)),
            prop::option::of(0u64..4_000_000_000),
        )
            .prop_map(|(mailbox, failed, status, remote_mta, diagnostic, last)| {
                ReportedRecipient {
                    mailbox,
                    action: if failed {
                        Action::Failed
                    } else {
                        Action::Delayed
                    },
                    status,
                    remote_mta,
                    diagnostic,
                    last_attempt: last.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
                    original_recipient: None,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn no_line_over_998_octets_and_no_bare_cr_or_lf(
            // The config checks the hostname as a domain (at most 255 octets).
            hostname in "([a-z0-9-]{1,63}\\.){0,3}[a-z0-9-]{1,63}",
            id in hostile_text(3),
            sender in hostile_text(5),
            message in header_bytes(),
            recipients in prop::collection::vec(recipient(), 0..4),
            received in 0u64..4_000_000_000,
            now in 0u64..4_000_000_000,
        ) {
            let original = Original {
                id: &id,
                sender: &sender,
                received_at: UNIX_EPOCH + Duration::from_secs(received),
                message: &message,
                full: false,
                envid: None,
            };
            let report = report(&hostname, &original, &recipients, UNIX_EPOCH + Duration::from_secs(now));
            prop_assert!(report.ends_with(b"\r\n"));
            for (i, &b) in report.iter().enumerate() {
                if b == b'\r' {
                    prop_assert_eq!(report.get(i + 1), Some(&b'\n'), "bare CR at {}", i);
                }
                if b == b'\n' {
                    prop_assert!(i > 0 && report[i - 1] == b'\r', "bare LF at {}", i);
                }
                prop_assert!(b != 0, "NUL at {}", i);
            }
            for line in report.split(|&b| b == b'\n') {
                prop_assert!(line.len() <= MAX_LINE + 1, "line of {} octets", line.len());
            }
        }
    }
}
