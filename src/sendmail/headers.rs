//! The header section of a message handed to sendmail: what its fields
//! say (which are there, the recipients of To, Cc and Bcc), and the
//! fields a submission adds when they are missing, as Postfix's cleanup
//! does for local mail. Pure: names, times and IDs come in as text.

use base64::Engine as _;

/// What the header section held, noted field by field as it streams past.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    pub from: bool,
    pub date: bool,
    pub message_id: bool,
    /// The values of To, Cc and Bcc, unfolded, in order (for `-t`).
    pub recipient_fields: Vec<String>,
}

/// How the lines of one field are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Stored as it is.
    Kept,
    /// Stored, and its value is a list of recipients (To, Cc).
    Recipients,
    /// Bcc: its recipients are noted, its lines never stored.
    Blind,
}

impl Field {
    pub fn stored(self) -> bool {
        self != Field::Blind
    }

    pub fn lists_recipients(self) -> bool {
        self != Field::Kept
    }
}

impl Seen {
    /// A field begins (`name` as [`field_name`] gave it): noted, and how
    /// its lines are treated.
    pub fn field(&mut self, name: &[u8]) -> Field {
        let is = |want: &str| name.eq_ignore_ascii_case(want.as_bytes());
        if is("from") {
            self.from = true;
        } else if is("date") {
            self.date = true;
        } else if is("message-id") {
            self.message_id = true;
        } else if is("to") || is("cc") {
            self.recipient_fields.push(String::new());
            return Field::Recipients;
        } else if is("bcc") {
            self.recipient_fields.push(String::new());
            return Field::Blind;
        }
        Field::Kept
    }

    /// More of the value of the last recipient field (its first line after
    /// the colon, or a continuation line).
    pub fn recipients_text(&mut self, text: &[u8]) {
        if let Some(value) = self.recipient_fields.last_mut() {
            value.push_str(&String::from_utf8_lossy(text));
        }
    }
}

/// The name of the field a header line starts (RFC 5322 2.2: printable
/// ASCII but the colon, then `:`; blanks before the colon are the obsolete
/// syntax, allowed), and the text after the colon. `None`: not a field
/// line (a continuation, the body, or garbage).
pub fn field_name(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    let trimmed_len = name.len()
        - name
            .iter()
            .rev()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
    let name = &name[..trimmed_len];
    let ftext = |b: &u8| (33..=126).contains(b) && *b != b':';
    (!name.is_empty() && name.iter().all(ftext)).then(|| (name, &line[colon + 1..]))
}

/// The addr-specs of an RFC 5322 address list (a To value, or a sendmail
/// argument): display names, comments and group names dropped, `<...>`
/// taken (without any obsolete route), quoted local parts and address
/// literals kept as written.
pub fn addresses(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut bare = String::new();
    let mut angle: Option<String> = None;
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                bare.push('"');
                copy_quoted(&mut chars, &mut bare, '"');
            }
            '[' => {
                bare.push('[');
                copy_quoted(&mut chars, &mut bare, ']');
            }
            '(' => skip_comment(&mut chars),
            '<' => {
                let mut inside = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '>' => break,
                        '"' => {
                            inside.push('"');
                            copy_quoted(&mut chars, &mut inside, '"');
                        }
                        c if c.is_whitespace() => {}
                        c => inside.push(c),
                    }
                }
                angle = Some(inside);
            }
            ',' | ';' => finish(&mut out, &mut bare, &mut angle),
            // The display name of a group (`friends: a@x, b@y;`).
            ':' if angle.is_none() => bare.clear(),
            c if c.is_whitespace() => {}
            c => bare.push(c),
        }
    }
    finish(&mut out, &mut bare, &mut angle);
    out
}

/// Copies a quoted string or literal up to and including `end`,
/// backslash pairs as they are.
fn copy_quoted(chars: &mut std::str::Chars<'_>, into: &mut String, end: char) {
    while let Some(c) = chars.next() {
        into.push(c);
        if c == '\\' {
            if let Some(escaped) = chars.next() {
                into.push(escaped);
            }
        } else if c == end {
            return;
        }
    }
}

fn skip_comment(chars: &mut std::str::Chars<'_>) {
    let mut depth = 1;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
            _ => {}
        }
    }
}

fn finish(out: &mut Vec<String>, bare: &mut String, angle: &mut Option<String>) {
    let address = match angle.take() {
        // `<@a,@b:user@c>`: the obsolete route goes (RFC 5322 4.4).
        Some(inside) if inside.starts_with('@') => match inside.split_once(':') {
            Some((_, mailbox)) => mailbox.to_string(),
            None => inside,
        },
        Some(inside) => inside,
        None => bare.clone(),
    };
    bare.clear();
    if !address.is_empty() {
        out.push(address);
    }
}

/// What the added fields say about this submission.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    pub hostname: &'a str,
    pub queue_id: &'a str,
    /// RFC 5322 date-time of the submission.
    pub date: &'a str,
    /// The same instant as `YYYYMMDDhhmmss`, for the Message-ID.
    pub stamp: &'a str,
    /// The address of a `From:` we add (`-f`, else the user's).
    pub from: &'a str,
    /// Its display name (`-F`, else the passwd full name), if any.
    pub full_name: Option<&'a str>,
}

/// The Date, Message-ID and From fields the header section lacks, each
/// with its CRLF.
pub fn missing_fields(seen: &Seen, origin: &Origin<'_>) -> String {
    let mut out = String::new();
    if !seen.date {
        out.push_str(&format!("Date: {}\r\n", origin.date));
    }
    if !seen.message_id {
        out.push_str(&format!(
            "Message-ID: <{}.{}@{}>\r\n",
            origin.stamp, origin.queue_id, origin.hostname
        ));
    }
    if !seen.from {
        out.push_str(&format!(
            "From: {}\r\n",
            mailbox(origin.full_name, origin.from)
        ));
    }
    out
}

/// A display name longer than this is cut (at a character).
const MAX_NAME: usize = 200;

/// `Name <address>`, the name as an atom phrase, a quoted string, or RFC
/// 2047 encoded words (for UTF-8 and anything unprintable, so a name can
/// never break the line); just the address without a name.
pub fn mailbox(name: Option<&str>, address: &str) -> String {
    let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
        return address.to_string();
    };
    let name: String = name.chars().take(MAX_NAME).collect();
    const SPECIALS: &str = "()<>[]:;@\\,.\"";
    let phrase = if name
        .chars()
        .all(|c| c.is_ascii_graphic() && !SPECIALS.contains(c) || c == ' ')
    {
        name
    } else if name.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\"")
    } else {
        encoded_words(&name)
    };
    format!("{phrase} <{address}>")
}

/// RFC 2047 `=?UTF-8?B?...?=` words of at most 75 characters, folded.
fn encoded_words(text: &str) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut words = Vec::new();
    let mut part = String::new();
    for c in text.chars() {
        // 45 octets make 60 base64 characters: 72 with the delimiters.
        if part.len() + c.len_utf8() > 45 {
            words.push(format!("=?UTF-8?B?{}?=", engine.encode(&part)));
            part.clear();
        }
        part.push(c);
    }
    words.push(format!("=?UTF-8?B?{}?=", engine.encode(&part)));
    words.join("\r\n ")
}

/// Our trace field, first in the stored message (RFC 5321 4.4 for mail
/// that did not come over SMTP, as Postfix writes it for local mail).
pub fn received(hostname: &str, uid: u32, user: &str, queue_id: &str, date: &str) -> String {
    let user: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect();
    format!(
        "Received: by {hostname} (mailhop sendmail, from userid {uid} ({user})) id {queue_id}; {date}\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_and_what_is_not_one() {
        assert_eq!(
            field_name(b"Subject: hi: there"),
            Some((&b"Subject"[..], &b" hi: there"[..]))
        );
        assert_eq!(field_name(b"To :a@b"), Some((&b"To"[..], &b"a@b"[..])));
        assert_eq!(field_name(b"X-Empty:"), Some((&b"X-Empty"[..], &b""[..])));
        for not in [
            &b"hello world"[..],
            b"From me@x Mon Jan 1 2024",
            b" folded: line",
            b": no name",
            b"two words: x",
        ] {
            assert_eq!(field_name(not), None, "{}", String::from_utf8_lossy(not));
        }
    }

    #[test]
    fn seen_notes_fields_and_hides_bcc() {
        let mut seen = Seen::default();
        assert_eq!(seen.field(b"FROM"), Field::Kept);
        assert_eq!(seen.field(b"Subject"), Field::Kept);
        assert_eq!(seen.field(b"to"), Field::Recipients);
        seen.recipients_text(b" a@x,");
        seen.recipients_text(b"\tb@y");
        let bcc = seen.field(b"Bcc");
        assert!(!bcc.stored() && bcc.lists_recipients());
        seen.recipients_text(b" secret@z");
        assert!(seen.from && !seen.date && !seen.message_id);
        assert_eq!(seen.recipient_fields, [" a@x,\tb@y", " secret@z"]);
    }

    #[test]
    fn address_lists_as_mail_programs_write_them() {
        let cases: &[(&str, &[&str])] = &[
            ("a@x.example", &["a@x.example"]),
            (
                " a@x.example , b@y.example,",
                &["a@x.example", "b@y.example"],
            ),
            (
                "\"Doe, John\" <john@x.example>, Ann <ann@y.example> (work)",
                &["john@x.example", "ann@y.example"],
            ),
            ("bob@x.example (Bob, the builder)", &["bob@x.example"]),
            (
                "friends: a@x.example, \"b c\"@y.example; d@z.example",
                &["a@x.example", "\"b c\"@y.example", "d@z.example"],
            ),
            ("undisclosed-recipients:;", &[]),
            ("<@relay.example:u@x.example>", &["u@x.example"]),
            (
                "u@[192.0.2.1], v@[IPv6:2001:db8::1]",
                &["u@[192.0.2.1]", "v@[IPv6:2001:db8::1]"],
            ),
            ("=?UTF-8?B?w6lsw6g=?= <e@x.example>", &["e@x.example"]),
            ("root", &["root"]),
            ("jösé@bücher.example", &["jösé@bücher.example"]),
            ("", &[]),
        ];
        for (list, want) in cases {
            assert_eq!(addresses(list), *want, "{list}");
        }
    }

    fn origin<'a>(name: Option<&'a str>) -> Origin<'a> {
        Origin {
            hostname: "host.example",
            queue_id: "0123456789ABCDEF",
            date: "Fri, 15 Jan 2027 08:00:00 +0100",
            stamp: "20270115080000",
            from: "alice@host.example",
            full_name: name,
        }
    }

    #[test]
    fn missing_fields_are_added_and_present_ones_are_not() {
        let all = missing_fields(&Seen::default(), &origin(Some("Alice Liddell")));
        assert_eq!(
            all,
            "Date: Fri, 15 Jan 2027 08:00:00 +0100\r\n\
             Message-ID: <20270115080000.0123456789ABCDEF@host.example>\r\n\
             From: Alice Liddell <alice@host.example>\r\n"
        );
        let seen = Seen {
            from: true,
            date: true,
            message_id: true,
            ..Seen::default()
        };
        assert_eq!(missing_fields(&seen, &origin(None)), "");
        let no_from = Seen {
            from: false,
            ..seen
        };
        assert_eq!(
            missing_fields(&no_from, &origin(None)),
            "From: alice@host.example\r\n"
        );
    }

    #[test]
    fn display_names_are_quoted_or_encoded_never_raw() {
        let m = |name| mailbox(Some(name), "a@x.example");
        assert_eq!(m("Cron Daemon"), "Cron Daemon <a@x.example>");
        assert_eq!(m("Doe, John"), "\"Doe, John\" <a@x.example>");
        assert_eq!(m("say \"hi\""), "\"say \\\"hi\\\"\" <a@x.example>");
        assert_eq!(m("José"), "=?UTF-8?B?Sm9zw6k=?= <a@x.example>");
        assert_eq!(mailbox(Some("  "), "a@x.example"), "a@x.example");
        // A line break in a name is encoded, never a new header field.
        let evil = m("x\r\nBcc: victim@y.example");
        let unfolded = evil.replace("\r\n ", " ");
        assert!(!unfolded.contains(['\r', '\n']), "{evil}");
        assert!(!evil.contains("Bcc:"), "{evil}");
        // Long UTF-8 names fold into words of at most 75 characters.
        let long = m(&"é".repeat(100));
        for word in long.trim_end_matches(" <a@x.example>").split("\r\n ") {
            assert!(word.len() <= 75 && word.starts_with("=?UTF-8?B?"), "{word}");
        }
    }

    #[test]
    fn the_received_line_names_the_user() {
        assert_eq!(
            received("host.example", 1000, "alice", "ID1", "Fri, 15 Jan 2027 08:00:00 +0100"),
            "Received: by host.example (mailhop sendmail, from userid 1000 (alice)) id ID1; Fri, 15 Jan 2027 08:00:00 +0100\r\n"
        );
        assert!(received("h", 1, "a(b)\r\n", "I", "d").contains("(a?b???))"));
    }
}
