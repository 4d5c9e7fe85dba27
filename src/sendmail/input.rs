//! The message on sendmail's standard input, as it streams in: where it
//! ends (end of input, or a lone `.` line without `-i`), its header
//! section read on the way ([`Seen`]; Bcc taken out; the empty line put in
//! when the body starts without one; a leading mbox `From ` line dropped),
//! and the data as the queue stores it. Line ends, the size limit, the
//! 998-octet line rule and the hop count are the server's own
//! ([`DataReader`] in BDAT mode with bare line ends normalised, and
//! [`ReceivedCounter`]), so LF input is stored with CRLF.
//!
//! Pure: bytes in, bytes out, any chunking; nothing held but one header
//! line, so memory stays bounded whatever the message size.

use memchr::memchr;

use super::headers::{field_name, Field, Seen};
use crate::smtp::data::{BareLineEnds, DataError, DataReader, ReceivedCounter};

/// A header line longer than this cannot be stored (998 octets is the
/// limit): it is passed on as it is, for the data reader to refuse.
const MAX_HEADER_LINE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the header section; the line so far is in `line`.
    Header,
    /// In the body, at the start of a line.
    LineStart,
    /// A `.` began the line; held back, as it may be the end.
    Dot,
    /// `.` CR began the line.
    DotCr,
    /// Inside a body line.
    Mid,
    /// The lone `.` line was read: the rest of the input is not ours.
    Done,
}

#[derive(Debug)]
pub struct Input {
    /// No `-i`: a lone `.` line ends the message.
    dots_end: bool,
    state: State,
    line: Vec<u8>,
    first_line: bool,
    /// The field the next continuation line belongs to.
    field: Option<Field>,
    seen: Seen,
    reader: DataReader,
    hops: ReceivedCounter,
    eight_bit: bool,
    /// The last two octets stored (does the data end with a line end?).
    tail: [u8; 2],
    stored: u64,
}

/// What the input held, once it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub seen: Seen,
    /// `Received:` fields of the header section.
    pub hops: usize,
    /// An octet above 127 was in it.
    pub eight_bit: bool,
    /// Octets stored.
    pub size: u64,
}

impl Input {
    /// `dots_end`: no `-i`. `max_size`: octets of data allowed.
    pub fn new(dots_end: bool, max_size: usize) -> Input {
        Input {
            dots_end,
            state: State::Header,
            line: Vec::new(),
            first_line: true,
            field: None,
            seen: Seen::default(),
            reader: DataReader::chunks(max_size, BareLineEnds::Normalize),
            hops: ReceivedCounter::default(),
            eight_bit: false,
            tail: [0; 2],
            stored: 0,
        }
    }

    /// The lone `.` line was read: read no further.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// The message will be refused (too big, a line too long): reading
    /// the rest is no use.
    pub fn failing(&self) -> bool {
        self.reader.failing()
    }

    /// Consumes `input`, appending the data as stored to `out`; returns how
    /// much was consumed: all of it, unless the end line was in it.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let mut i = 0;
        while i < input.len() {
            let rest = &input[i..];
            match self.state {
                State::Done => return i,
                State::Header => match memchr(b'\n', rest) {
                    Some(k) => {
                        self.line.extend_from_slice(&rest[..k]);
                        i += k + 1;
                        let line = std::mem::take(&mut self.line);
                        self.header_line(&line, out);
                        self.line = line;
                        self.line.clear();
                    }
                    None => {
                        self.line.extend_from_slice(rest);
                        i = input.len();
                        if self.line.len() > MAX_HEADER_LINE {
                            let line = std::mem::take(&mut self.line);
                            self.emit(&line, out);
                            self.state = State::Mid;
                        }
                    }
                },
                State::LineStart if self.dots_end && rest[0] == b'.' => {
                    self.state = State::Dot;
                    i += 1;
                }
                State::LineStart => self.state = State::Mid,
                State::Dot | State::DotCr if rest[0] == b'\n' => {
                    self.state = State::Done;
                    return i + 1;
                }
                State::Dot if rest[0] == b'\r' => {
                    self.state = State::DotCr;
                    i += 1;
                }
                State::Dot => {
                    self.emit(b".", out);
                    self.state = State::Mid;
                }
                State::DotCr => {
                    self.emit(b".\r", out);
                    self.state = State::Mid;
                }
                State::Mid if !self.dots_end => {
                    self.emit(rest, out);
                    i = input.len();
                }
                State::Mid => match memchr(b'\n', rest) {
                    Some(k) => {
                        self.emit(&rest[..=k], out);
                        i += k + 1;
                        self.state = State::LineStart;
                    }
                    None => {
                        self.emit(rest, out);
                        i = input.len();
                    }
                },
            }
        }
        input.len()
    }

    /// The input ended (or its end line was read): the last of the data,
    /// with a final line end if it had none, and the verdict.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<Scanned, DataError> {
        match self.state {
            State::Header if !self.line.is_empty() => {
                let line = std::mem::take(&mut self.line);
                self.header_line(&line, out);
            }
            State::Dot => self.emit(b".", out),
            State::DotCr => self.emit(b".\r", out),
            _ => {}
        }
        if self.stored > 0 && self.tail != *b"\r\n" {
            self.emit(b"\n", out);
        }
        let before = out.len();
        self.reader.end_chunks(out);
        self.track(before, out);
        self.reader.finish()?;
        Ok(Scanned {
            seen: self.seen,
            hops: self.hops.count(),
            eight_bit: self.eight_bit,
            size: self.stored,
        })
    }

    /// One whole line of the header section, without its LF.
    fn header_line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let text = line.strip_suffix(b"\r").unwrap_or(line);
        if self.dots_end && text == b"." {
            self.state = State::Done;
            return;
        }
        if std::mem::take(&mut self.first_line) && text.starts_with(b"From ") {
            // The mbox separator of a saved message is not a header field.
            return;
        }
        if text.is_empty() {
            self.emit(b"\r\n", out);
            self.state = State::LineStart;
            return;
        }
        let field = if matches!(text[0], b' ' | b'\t') {
            self.field.inspect(|field| {
                if field.lists_recipients() {
                    self.seen.recipients_text(text);
                }
            })
        } else if let Some((name, value)) = field_name(text) {
            let field = self.seen.field(name);
            if field.lists_recipients() {
                self.seen.recipients_text(value);
            }
            self.field = Some(field);
            Some(field)
        } else {
            None
        };
        match field {
            Some(field) => {
                if field.stored() {
                    self.emit(line, out);
                    self.emit(b"\n", out);
                }
            }
            None => {
                // The body begins without the empty line that ends the
                // header section: put it in, or the text would read as a
                // broken header field.
                self.emit(b"\r\n", out);
                self.emit(line, out);
                self.emit(b"\n", out);
                self.state = State::LineStart;
            }
        }
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let before = out.len();
        // BDAT mode consumes everything it is given.
        self.reader.feed(bytes, out);
        self.track(before, out);
    }

    /// What the reader just stored, from `before` in `out`.
    fn track(&mut self, before: usize, out: &[u8]) {
        let new = &out[before..];
        self.hops.feed(new);
        self.eight_bit |= !new.is_ascii();
        self.stored += new.len() as u64;
        match new {
            [] => {}
            &[only] => self.tail = [self.tail[1], only],
            &[.., a, b] => self.tail = [a, b],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `size` (as a pipe might give it) until
    /// done; returns what was stored, how much input was consumed, and the
    /// verdict.
    fn run(
        input: &[u8],
        dots_end: bool,
        max: usize,
        size: usize,
    ) -> (Vec<u8>, usize, Result<Scanned, DataError>) {
        let mut machine = Input::new(dots_end, max);
        let mut out = Vec::new();
        let mut used = 0;
        for piece in input.chunks(size.max(1)) {
            let n = machine.feed(piece, &mut out);
            used += n;
            if machine.done() {
                break;
            }
            assert_eq!(n, piece.len());
        }
        let verdict = machine.finish(&mut out);
        (out, used, verdict)
    }

    /// As `run`, at every chunk size from 1 to 9 and whole, all agreeing.
    fn stored(input: &[u8], dots_end: bool) -> (String, usize, Scanned) {
        let (out, used, verdict) = run(input, dots_end, 1 << 20, input.len());
        for size in 1..10 {
            let other = run(input, dots_end, 1 << 20, size);
            assert_eq!(other.0, out, "chunks of {size}");
            assert_eq!(other.1, used, "chunks of {size}");
            assert_eq!(other.2, verdict, "chunks of {size}");
        }
        (String::from_utf8(out).unwrap(), used, verdict.unwrap())
    }

    #[test]
    fn headers_are_read_bcc_is_dropped_and_lf_becomes_crlf() {
        let input = b"To: a@x.example\nBcc: b@y.example,\n c@z.example\nSubject: s\nCc: d@w.example\n\nbody\nBcc: not a header here\n";
        let (out, used, scanned) = stored(input, false);
        assert_eq!(
            out,
            "To: a@x.example\r\nSubject: s\r\nCc: d@w.example\r\n\r\nbody\r\nBcc: not a header here\r\n"
        );
        assert_eq!(used, input.len());
        assert_eq!(
            scanned.seen.recipient_fields,
            [" a@x.example", " b@y.example, c@z.example", " d@w.example"]
        );
        assert!(!scanned.seen.from && !scanned.seen.date && !scanned.seen.message_id);
        assert_eq!(scanned.size, out.len() as u64);
    }

    #[test]
    fn a_lone_dot_ends_the_message_unless_dash_i() {
        let input = b"Subject: s\n\none\n.two\n..\n.\r\nafter\n.\n";
        let (out, used, _) = stored(input, true);
        assert_eq!(out, "Subject: s\r\n\r\none\r\n.two\r\n..\r\n");
        assert_eq!(used, input.len() - b"after\n.\n".len());
        // A dot line in the header section ends it too.
        let (out, _, _) = stored(b"Subject: s\n.\nSubject: t\n", true);
        assert_eq!(out, "Subject: s\r\n");
        let (out, used, _) = stored(input, false);
        assert_eq!(
            out,
            "Subject: s\r\n\r\none\r\n.two\r\n..\r\n.\r\nafter\r\n.\r\n"
        );
        assert_eq!(used, input.len());
        // `.` then something else on the line is text.
        let (out, _, _) = stored(b"\n.x\n.\rx\n.", true);
        assert_eq!(out, "\r\n.x\r\n.\r\nx\r\n.\r\n");
    }

    #[test]
    fn a_body_without_headers_gets_its_empty_line() {
        let (out, _, scanned) = stored(b"hello\nworld", false);
        assert_eq!(out, "\r\nhello\r\nworld\r\n");
        assert!(scanned.seen.recipient_fields.is_empty());
        let (out, _, _) = stored(b"Subject: x\nnot: a header\nplain text\n", false);
        assert_eq!(out, "Subject: x\r\nnot: a header\r\n\r\nplain text\r\n");
        let (out, _, _) = stored(b" indented first\n", false);
        assert_eq!(out, "\r\n indented first\r\n");
        // Empty input stays empty; headers only stay headers only.
        assert_eq!(stored(b"", false).0, "");
        assert_eq!(stored(b".\n", true).0, "");
        assert_eq!(stored(b"Subject: x", false).0, "Subject: x\r\n");
    }

    #[test]
    fn an_mbox_from_line_is_dropped_and_crlf_and_bare_cr_are_normalised() {
        let (out, _, scanned) = stored(
            b"From 1234abcd Mon Sep 17 00:00:00 2001\r\nFrom: a@x\r\n\r\nx\ry\r\n",
            false,
        );
        assert_eq!(out, "From: a@x\r\n\r\nx\r\ny\r\n");
        assert!(scanned.seen.from);
        // Only as the first line.
        let (out, _, _) = stored(b"Subject: s\nFrom me\n", false);
        assert_eq!(out, "Subject: s\r\n\r\nFrom me\r\n");
    }

    #[test]
    fn hops_eight_bit_and_limits() {
        let (_, _, scanned) = stored(
            "Received: a\nreceived : b\nSubject: é\n\nReceived: body\n".as_bytes(),
            false,
        );
        assert_eq!(scanned.hops, 2);
        assert!(scanned.eight_bit);
        assert!(!stored(b"Subject: plain\n", false).2.eight_bit);
        let long = [b"\n".as_slice(), &[b'x'; 999], b"\n"].concat();
        assert_eq!(run(&long, false, 1 << 20, 7).2, Err(DataError::LineTooLong));
        let long_header = [b"Subject: ".as_slice(), &[b'x'; 2000], b"\n\nbody\n"].concat();
        assert_eq!(
            run(&long_header, false, 1 << 20, 100).2,
            Err(DataError::LineTooLong)
        );
        let big = b"0123456789\n".repeat(100);
        let mut machine = Input::new(false, 500);
        let mut out = Vec::new();
        machine.feed(&big, &mut out);
        assert!(machine.failing());
        assert!(out.len() <= 500);
        assert_eq!(machine.finish(&mut out).unwrap_err(), DataError::TooBig);
    }
}
