//! The DATA phase: finding the end of data (`CRLF . CRLF` and nothing else),
//! dot-unstuffing, and the checks applied when the data ends.

use memchr::{memchr, memchr2};

/// What `bare_lf` in the config says to do with a LF or CR not part of CRLF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BareLineEnds {
    /// Remember it and fail the message at end of data.
    #[default]
    Reject,
    /// Store it as CRLF.
    Normalize,
}

/// Why the message cannot be accepted, found once the data has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    /// More than the size limit: `552 5.3.4`.
    TooBig,
    /// A text line over 998 octets: `552 5.3.4`.
    LineTooLong,
    /// Bare LF or CR with `BareLineEnds::Reject`: `550 5.6.0`.
    BareLineEnd,
}

/// RFC 5321 4.5.3.1.6, without the CRLF.
const MAX_LINE: usize = 998;

/// Where we are in the framing. Only real CRLFs of the input move to
/// `Start`, so a bare CR or LF can never begin an end-of-data line: that is
/// the whole defence against SMTP smuggling. Every state is exact about the
/// bytes seen, so nothing is ever held back between chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (start of data, or just after CRLF).
    Start,
    /// The line began with `.`, which has been dropped: either it is the
    /// end line or it was stuffing.
    Dot,
    /// The line began with `.` CR; LF now ends the data.
    DotCr,
    /// Inside a line.
    Mid,
    /// Inside a line, just after a CR not yet known to be part of CRLF.
    MidCr,
    /// The end line has been consumed.
    Done,
}

/// Streaming decoder for the bytes after `354`. The caller feeds it chunks
/// of any size; it appends the unstuffed message (CRLF line ends) to `body`
/// and says when the end-of-data line has been consumed.
#[derive(Debug)]
pub struct DataReader {
    state: State,
    /// DATA: dot-stuffed, ended by `CRLF . CRLF`. Without it (BDAT, RFC
    /// 3030) every byte is content and the caller says where it ends.
    stuffed: bool,
    bare: BareLineEnds,
    max_size: usize,
    /// Octets appended to `body` so far (never above `max_size`).
    stored: usize,
    /// Octets of the current stored line, unstuffed, without its CRLF.
    line_len: usize,
    too_big: bool,
    line_too_long: bool,
    bare_seen: bool,
}

impl DataReader {
    /// `max_size`: octets of message (after unstuffing) allowed in `body`;
    /// beyond it, input is still consumed but no longer stored.
    pub fn new(max_size: usize, bare: BareLineEnds) -> DataReader {
        DataReader {
            state: State::Start,
            stuffed: true,
            bare,
            max_size,
            stored: 0,
            line_len: 0,
            too_big: false,
            line_too_long: false,
            bare_seen: false,
        }
    }

    /// For BDAT chunks: no dot-stuffing and no end line (the chunk sizes
    /// frame the message); the same limits, line rule and bare CR/LF
    /// policy, so BDAT cannot carry what DATA may not. Call `end_chunks`
    /// after the last chunk.
    pub fn chunks(max_size: usize, bare: BareLineEnds) -> DataReader {
        DataReader {
            stuffed: false,
            ..DataReader::new(max_size, bare)
        }
    }

    /// The last BDAT chunk is in: a CR that ended it had no LF after it.
    pub fn end_chunks(&mut self, body: &mut Vec<u8>) {
        if self.state == State::MidCr {
            self.bare_line_end(body, b"\r");
        }
        self.state = State::Done;
    }

    /// Consumes from `input`, appending to `body`. Returns the number of
    /// bytes consumed and whether the end-of-data line was among them (then
    /// the bytes after it, not consumed, are the next commands).
    /// Once the end has been seen, consumes nothing and says so again.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Start if b == b'.' && self.stuffed => {
                    self.state = State::Dot;
                    i += 1;
                }
                State::Dot if b == b'\r' => {
                    self.state = State::DotCr;
                    i += 1;
                }
                State::DotCr if b == b'\n' => {
                    self.state = State::Done;
                    return (i + 1, true);
                }
                State::MidCr if b == b'\n' => {
                    self.store(body, b"\r\n");
                    self.line_len = 0;
                    self.state = State::Start;
                    i += 1;
                }
                State::DotCr | State::MidCr => {
                    // The CR before `b` was bare; `b` is looked at again.
                    self.bare_line_end(body, b"\r");
                    self.state = State::Mid;
                }
                State::Start | State::Dot => self.state = State::Mid,
                State::Mid => {
                    let rest = &input[i..];
                    match memchr2(b'\r', b'\n', rest) {
                        None => {
                            self.text(body, rest);
                            i = input.len();
                        }
                        Some(k) if rest[k] == b'\r' && rest.get(k + 1) == Some(&b'\n') => {
                            // The common case: the rest of a line and its CRLF
                            // in one copy.
                            self.line_len += k;
                            if self.line_len > MAX_LINE {
                                self.line_too_long = true;
                            }
                            self.store(body, &rest[..k + 2]);
                            self.line_len = 0;
                            self.state = State::Start;
                            i += k + 2;
                        }
                        Some(k) => {
                            self.text(body, &rest[..k]);
                            i += k + 1;
                            if rest[k] == b'\r' {
                                self.state = State::MidCr;
                            } else {
                                self.bare_line_end(body, b"\n");
                            }
                        }
                    }
                }
                State::Done => return (0, true),
            }
        }
        (input.len(), self.state == State::Done)
    }

    /// The verdict once `feed` has reported the end. When several problems
    /// were seen, the order is fixed (size, line length, bare line end)
    /// rather than by position, so it cannot depend on how input was chunked.
    pub fn finish(&self) -> Result<(), DataError> {
        if self.too_big {
            Err(DataError::TooBig)
        } else if self.line_too_long {
            Err(DataError::LineTooLong)
        } else if self.bare_seen {
            Err(DataError::BareLineEnd)
        } else {
            Ok(())
        }
    }

    /// A problem has been seen: the message will be refused at end of data,
    /// so what is stored of it meanwhile need not be kept.
    pub fn failing(&self) -> bool {
        self.too_big || self.line_too_long || self.bare_seen
    }

    /// Line content (no CR or LF in it).
    fn text(&mut self, body: &mut Vec<u8>, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.line_len += bytes.len();
        if self.line_len > MAX_LINE {
            self.line_too_long = true;
        }
        self.store(body, bytes);
    }

    /// A CR or LF that is not part of a CRLF of the input.
    fn bare_line_end(&mut self, body: &mut Vec<u8>, byte: &'static [u8]) {
        match self.bare {
            BareLineEnds::Reject => {
                self.bare_seen = true;
                self.text(body, byte);
            }
            BareLineEnds::Normalize => {
                self.store(body, b"\r\n");
                self.line_len = 0;
            }
        }
    }

    /// Appends up to the size limit and no further.
    fn store(&mut self, body: &mut Vec<u8>, bytes: &[u8]) {
        let room = self.max_size - self.stored;
        if bytes.len() <= room {
            body.extend_from_slice(bytes);
            self.stored += bytes.len();
        } else {
            body.extend_from_slice(&bytes[..room]);
            self.stored = self.max_size;
            self.too_big = true;
        }
    }
}

/// Counts `Received:` header fields as the message streams past, in pieces
/// of any size, with the same reading as [`count_received`] (lines end at
/// LF; the header section ends at the first empty line).
#[derive(Debug, Default)]
pub struct ReceivedCounter {
    state: HeaderState,
    /// The field name so far (only its first bytes matter).
    name: [u8; 16],
    name_len: usize,
    /// Spaces and tabs after the name so far: trailing ones do not count.
    blanks: usize,
    count: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum HeaderState {
    #[default]
    LineStart,
    /// A CR first on the line: an empty line if LF follows.
    LineStartCr,
    Name,
    /// The rest of a line that is not (or no longer) of interest.
    Skip,
    /// Past the header section.
    Done,
}

impl ReceivedCounter {
    pub fn count(&self) -> usize {
        self.count
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        use HeaderState::*;
        while let Some((&b, rest)) = bytes.split_first() {
            match self.state {
                Done => return,
                Skip => match memchr(b'\n', bytes) {
                    Some(k) => {
                        bytes = &bytes[k + 1..];
                        self.state = LineStart;
                        continue;
                    }
                    None => return,
                },
                LineStart => {
                    self.state = match b {
                        b'\n' => Done,
                        b'\r' => LineStartCr,
                        // Only a field named Received counts: other names
                        // are not looked at (a header section can be
                        // megabytes of lines).
                        b' ' | b'\t' => Skip,
                        _ if !b.eq_ignore_ascii_case(&b'r') => Skip,
                        _ => {
                            self.name_len = 0;
                            self.blanks = 0;
                            self.push_name(b);
                            bytes = rest;
                            self.state = Name;
                            continue;
                        }
                    }
                }
                LineStartCr => {
                    self.state = if b == b'\n' { Done } else { Skip };
                    if b == b'\n' {
                        return;
                    }
                    // Not consumed: the Skip state looks at it again.
                    continue;
                }
                Name => {
                    let Some(k) = memchr2(b':', b'\n', bytes) else {
                        return self.name_part(bytes);
                    };
                    self.name_part(&bytes[..k]);
                    if self.state == Name {
                        self.state = if bytes[k] == b'\n' { LineStart } else { Skip };
                        let name = &self.name[..self.name_len];
                        if bytes[k] == b':' && name.eq_ignore_ascii_case(b"received") {
                            self.count += 1;
                        }
                    } else if bytes[k] == b'\n' {
                        self.state = LineStart;
                    }
                    bytes = &bytes[k + 1..];
                    continue;
                }
            }
            bytes = rest;
        }
    }

    /// Part of a field name (no colon or LF in it). A name too long to be
    /// `Received` is not looked at further: the line is skipped.
    fn name_part(&mut self, part: &[u8]) {
        for &b in part {
            if b.is_ascii_whitespace() {
                // Trailing blanks do not count; blanks inside the name do.
                self.blanks += 1;
                continue;
            }
            let blanks = std::mem::take(&mut self.blanks);
            if self.name_len + blanks + 1 > self.name.len() {
                self.state = HeaderState::Skip;
                return;
            }
            self.name[self.name_len..self.name_len + blanks].fill(b' ');
            self.name_len += blanks;
            self.push_name(b);
        }
    }

    fn push_name(&mut self, b: u8) {
        self.name[self.name_len] = b;
        self.name_len += 1;
    }
}

/// Counts the `Received:` header fields in the header section of `message`
/// (up to the first empty line), case-insensitively.
pub fn count_received(message: &[u8]) -> usize {
    let mut count = 0;
    let mut rest = message;
    while !rest.is_empty() {
        let (line, next) = match memchr(b'\n', rest) {
            Some(k) => (&rest[..k], &rest[k + 1..]),
            None => (rest, &b""[..]),
        };
        rest = next;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.first() {
            None => break,
            Some(b' ' | b'\t') => continue,
            Some(_) => {}
        }
        if let Some(colon) = memchr(b':', line) {
            let name = line[..colon].trim_ascii_end();
            if name.eq_ignore_ascii_case(b"received") {
                count += 1;
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use BareLineEnds::{Normalize, Reject};

    /// What one run of the reader gave: body, bytes consumed, end seen, verdict.
    type Outcome = (Vec<u8>, usize, bool, Result<(), DataError>);

    fn feed_chunks(chunks: &[&[u8]], max: usize, bare: BareLineEnds) -> Outcome {
        let mut r = DataReader::new(max, bare);
        let mut body = Vec::new();
        let mut consumed = 0;
        for chunk in chunks {
            let (n, done) = r.feed(chunk, &mut body);
            consumed += n;
            assert!(body.len() <= max);
            if done {
                return (body, consumed, true, r.finish());
            }
            // Partial input is always consumed whole.
            assert_eq!(n, chunk.len());
        }
        (body, consumed, false, r.finish())
    }

    /// Feeds `input` whole, split in two at every offset, and byte by
    /// byte; all must agree. Returns the outcome.
    fn feed_all_ways(input: &[u8], max: usize, bare: BareLineEnds) -> Outcome {
        let whole = feed_chunks(&[input], max, bare);
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            let split = feed_chunks(&[a, b], max, bare);
            assert_eq!(
                split,
                whole,
                "split at {at}: {:?}",
                String::from_utf8_lossy(input)
            );
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let by_byte = feed_chunks(&bytes, max, bare);
        assert_eq!(
            by_byte,
            whole,
            "byte by byte: {:?}",
            String::from_utf8_lossy(input)
        );
        whole
    }

    const NEXT: &[u8] = b"QUIT\r\n";

    /// Input, mode, expected body, whether it ends, verdict.
    type Case = (
        &'static [u8],
        BareLineEnds,
        &'static [u8],
        bool,
        Result<(), DataError>,
    );

    #[test]
    fn table() {
        use DataError::*;
        // Every input that ends is
        // followed by NEXT, which must be left unconsumed.
        #[rustfmt::skip]
        let cases: &[Case] = &[
            (b"Subject: hi\r\n\r\nHello\r\n.\r\n", Reject, b"Subject: hi\r\n\r\nHello\r\n", true, Ok(())),
            (b".\r\n", Reject, b"", true, Ok(())),
            (b"\r\n.\r\n", Reject, b"\r\n", true, Ok(())),
            (b"a\r\n.\r\n", Reject, b"a\r\n", true, Ok(())),
            // Dot-stuffing.
            (b"..\r\n.\r\n", Reject, b".\r\n", true, Ok(())),
            (b"..leading\r\n...two\r\n.x\r\nmid.dle\r\n.\r\n", Reject,
             b".leading\r\n..two\r\nx\r\nmid.dle\r\n", true, Ok(())),
            (b". \r\n.\r\n", Reject, b" \r\n", true, Ok(())),
            // 8-bit and NUL are content.
            (b"caf\xc3\xa9 \xff\x00\r\n.\r\n", Reject, b"caf\xc3\xa9 \xff\x00\r\n", true, Ok(())),
            // The smuggling family: none of these ends the data.
            (b"a\n.\nb\r\n.\r\n", Reject, b"a\n.\nb\r\n", true, Err(BareLineEnd)),
            (b"a\n.\nb\r\n.\r\n", Normalize, b"a\r\n.\r\nb\r\n", true, Ok(())),
            (b"a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n", Reject, b"a\n.\r\nMAIL FROM:<x@y>\r\n", true, Err(BareLineEnd)),
            (b"a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n", Normalize, b"a\r\n.\r\nMAIL FROM:<x@y>\r\n", true, Ok(())),
            (b"a\r\n.\nb\r\n.\r\n", Reject, b"a\r\n\nb\r\n", true, Err(BareLineEnd)),
            (b"a\r\n.\nb\r\n.\r\n", Normalize, b"a\r\n\r\nb\r\n", true, Ok(())),
            (b"a\r.\rb\r\n.\r\n", Reject, b"a\r.\rb\r\n", true, Err(BareLineEnd)),
            (b"a\r.\rb\r\n.\r\n", Normalize, b"a\r\n.\r\nb\r\n", true, Ok(())),
            (b"a\r\n.\rX\r\n.\r\n", Reject, b"a\r\n\rX\r\n", true, Err(BareLineEnd)),
            (b"a\r\n.\rX\r\n.\r\n", Normalize, b"a\r\n\r\nX\r\n", true, Ok(())),
            (b"a\r\n.\r\r\n.\r\n", Reject, b"a\r\n\r\r\n", true, Err(BareLineEnd)),
            (b"a\r\r\n.\r\n", Reject, b"a\r\r\n", true, Err(BareLineEnd)),
            (b"a\r\r\n.\r\n", Normalize, b"a\r\n\r\n", true, Ok(())),
            (b".\n.\r\n.\r\n", Reject, b"\n.\r\n", true, Err(BareLineEnd)),
            (b"\n.\n\r\n.\r\n", Normalize, b"\r\n.\r\n\r\n", true, Ok(())),
            (b"a\n\r\n.\r\n", Reject, b"a\n\r\n", true, Err(BareLineEnd)),
            (b"a\r\n\n.\r\n.\r\n", Reject, b"a\r\n\n.\r\n", true, Err(BareLineEnd)),
            (b"a\r\n \r\n.\r\n", Reject, b"a\r\n \r\n", true, Ok(())),
            (b"a\r\n .\r\n.\r\n", Reject, b"a\r\n .\r\n", true, Ok(())),
            // Never ends: each of these is still waiting for CRLF . CRLF.
            (b"a\n.\n", Reject, b"a\n.\n", false, Err(BareLineEnd)),
            (b"a\r\n.\n", Reject, b"a\r\n\n", false, Err(BareLineEnd)),
            (b"a\n.\r\n", Normalize, b"a\r\n.\r\n", false, Ok(())),
            (b"a\r.\r", Reject, b"a\r.", false, Err(BareLineEnd)),
            (b"a\r\n.\r", Reject, b"a\r\n", false, Ok(())),
            (b"a\r\n.", Reject, b"a\r\n", false, Ok(())),
            (b"a\r\n", Reject, b"a\r\n", false, Ok(())),
            (b"a\r", Reject, b"a", false, Ok(())),
            (b"", Reject, b"", false, Ok(())),
        ];
        for &(input, bare, body, ended, verdict) in cases {
            let shown = String::from_utf8_lossy(input);
            let mut full = input.to_vec();
            if ended {
                full.extend_from_slice(NEXT);
            }
            let got = feed_all_ways(&full, 1 << 20, bare);
            assert_eq!(got.0, body, "body of {shown:?} {bare:?}");
            assert_eq!(got.1, input.len(), "consumed of {shown:?} {bare:?}");
            assert_eq!(got.2, ended, "end of {shown:?} {bare:?}");
            assert_eq!(got.3, verdict, "verdict of {shown:?} {bare:?}");
            assert_eq!(&full[got.1..], if ended { NEXT } else { b"" });
        }
    }

    #[test]
    fn long_lines() {
        use DataError::LineTooLong;
        let line = |prefix: &str, n: usize| {
            let mut v = prefix.as_bytes().to_vec();
            v.extend(vec![b'a'; n]);
            v.extend_from_slice(b"\r\nshort\r\n.\r\n");
            v
        };
        for (input, verdict) in [
            (line("", 998), Ok(())),
            (line("", 999), Err(LineTooLong)),
            (line("x\r\n", 998), Ok(())),
            (line("x\r\n", 999), Err(LineTooLong)),
            // Counted after unstuffing.
            (line(".", 998), Ok(())),
            (line(".", 999), Err(LineTooLong)),
        ] {
            let got = feed_all_ways(&input, 1 << 20, Reject);
            assert!(got.2);
            assert_eq!(got.1, input.len(), "the long line is consumed too");
            assert_eq!(got.3, verdict, "{}", input.len());
            assert_eq!(got.0.len(), input.len() - 3 - usize::from(input[0] == b'.'));
        }
        // A normalized bare LF splits the stored line; a rejected one does not.
        let mut input = vec![b'a'; 500];
        input.push(b'\n');
        input.extend(vec![b'b'; 500]);
        input.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(feed_all_ways(&input, 1 << 20, Normalize).3, Ok(()));
        assert_eq!(feed_all_ways(&input, 1 << 20, Reject).3, Err(LineTooLong));
    }

    #[test]
    fn size_limit() {
        let input = b"12345\r\n..789\r\n.\r\nQUIT\r\n";
        let stored = b"12345\r\n.789\r\n";
        let n = stored.len();
        let end = input.len() - NEXT.len();
        assert_eq!(
            feed_all_ways(input, n, Reject),
            (stored.to_vec(), end, true, Ok(()))
        );
        assert_eq!(
            feed_all_ways(input, n - 1, Reject),
            (stored[..n - 1].to_vec(), end, true, Err(DataError::TooBig))
        );
        assert_eq!(
            feed_all_ways(input, 3, Reject),
            (b"123".to_vec(), end, true, Err(DataError::TooBig))
        );
        assert_eq!(
            feed_all_ways(input, 0, Reject),
            (vec![], end, true, Err(DataError::TooBig))
        );
        assert_eq!(
            feed_all_ways(b".\r\n", 0, Reject),
            (vec![], 3, true, Ok(()))
        );
        // Size wins over the other problems, whatever came first.
        let input = b"a\nbbbb\r\n.\r\n";
        assert_eq!(feed_all_ways(input, 4, Reject).3, Err(DataError::TooBig));
    }

    #[test]
    fn appends_to_body_and_stops_after_end() {
        let mut r = DataReader::new(10, Reject);
        let mut body = b"Received: x\r\n".to_vec();
        assert_eq!(r.feed(b"abc\r\n.\r\nQUIT\r\n", &mut body), (8, true));
        assert_eq!(body, b"Received: x\r\nabc\r\n");
        assert_eq!(r.feed(b"QUIT\r\n", &mut body), (0, true));
        assert_eq!(r.feed(b"", &mut body), (0, true));
        assert_eq!(body, b"Received: x\r\nabc\r\n");
        assert_eq!(r.finish(), Ok(()));
    }

    /// An obviously-correct model on the whole input, for the exhaustive test.
    fn model(input: &[u8], bare: BareLineEnds) -> (Vec<u8>, usize, bool, bool) {
        let (mut body, mut i, mut line_start, mut bare_seen) = (Vec::new(), 0, true, false);
        while i < input.len() {
            let rest = &input[i..];
            if line_start && rest.starts_with(b".\r\n") {
                return (body, i + 3, true, bare_seen);
            }
            if line_start && rest[0] == b'.' {
                line_start = false;
                i += 1;
                continue;
            }
            line_start = false;
            if rest.starts_with(b"\r\n") {
                body.extend_from_slice(b"\r\n");
                line_start = true;
                i += 2;
            } else if rest == b"\r" {
                break; // a CR whose next byte is not known yet
            } else if rest[0] == b'\r' || rest[0] == b'\n' {
                bare_seen |= bare == Reject;
                match bare {
                    Reject => body.push(rest[0]),
                    Normalize => body.extend_from_slice(b"\r\n"),
                }
                i += 1;
            } else {
                body.push(rest[0]);
                i += 1;
            }
        }
        (body, input.len(), false, bare_seen)
    }

    #[test]
    fn exhaustive_small_inputs_match_model() {
        const ALPHABET: &[u8] = b".\r\na";
        for len in 0..=7u32 {
            for mut code in 0..ALPHABET.len().pow(len) {
                let mut input = Vec::new();
                for _ in 0..len {
                    input.push(ALPHABET[code % ALPHABET.len()]);
                    code /= ALPHABET.len();
                }
                for bare in [Reject, Normalize] {
                    for max in [usize::MAX, 3] {
                        let got = feed_all_ways(&input, max, bare);
                        let (mut body, consumed, ended, bare_seen) = model(&input, bare);
                        let too_big = body.len() > max;
                        body.truncate(max);
                        let verdict = if too_big {
                            Err(DataError::TooBig)
                        } else if bare_seen {
                            Err(DataError::BareLineEnd)
                        } else {
                            Ok(())
                        };
                        assert_eq!(got, (body, consumed, ended, verdict), "{input:?} {bare:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn received_count() {
        let cases: &[(&[u8], usize)] = &[
            (b"", 0),
            (b"Subject: x\r\n\r\nReceived: in body\r\n", 0),
            (
                b"Received: a\r\nreceived: b\r\nRECEIVED : c\r\nReceived\t:d\r\n\r\n",
                4,
            ),
            (
                b"Received: a\r\n  Received: continuation\r\n\tReceived: too\r\n\r\n",
                1,
            ),
            (
                b"X-Received: a\r\nReceivedX: b\r\nReceived-SPF: c\r\n\r\n",
                0,
            ),
            (b"Received a\r\nReceived: b", 1),
            (b"\r\nReceived: after the empty line\r\n", 0),
            (b"Received: lf only\nReceived: x\n\nReceived: body\n", 2),
        ];
        for &(msg, want) in cases {
            assert_eq!(
                count_received(msg),
                want,
                "{:?}",
                String::from_utf8_lossy(msg)
            );
        }
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use BareLineEnds::{Normalize, Reject};

    /// Mostly the bytes that matter to framing, some text and some anything.
    fn data_like() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            3 => Just(b"\r\n".to_vec()),
            2 => Just(b".".to_vec()),
            2 => Just(b"\r".to_vec()),
            2 => Just(b"\n".to_vec()),
            1 => Just(b"\r\n.\r\n".to_vec()),
            1 => Just(b"..".to_vec()),
            2 => "[a-z ]{1,6}".prop_map(String::into_bytes),
            1 => any::<u8>().prop_map(|b| vec![b]),
            1 => Just(vec![b'x'; 400]),
        ];
        prop::collection::vec(piece, 0..30).prop_map(|v| v.concat())
    }

    fn mode() -> impl Strategy<Value = BareLineEnds> {
        prop_oneof![Just(Reject), Just(Normalize)]
    }

    type Outcome = (Vec<u8>, usize, bool, Result<(), DataError>);

    /// Feeds `input` cut at `cuts` (offsets, any order), as the loop does.
    fn run(input: &[u8], cuts: &[usize], max: usize, bare: BareLineEnds) -> Outcome {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (input.len() + 1)).collect();
        cuts.push(0);
        cuts.push(input.len());
        cuts.sort_unstable();
        cuts.dedup();
        let mut r = DataReader::new(max, bare);
        let mut body = Vec::new();
        let mut consumed = 0;
        for w in cuts.windows(2) {
            let (n, done) = r.feed(&input[w[0]..w[1]], &mut body);
            consumed += n;
            assert!(body.len() <= max, "body over the limit");
            if done {
                return (body, consumed, true, r.finish());
            }
            assert_eq!(n, w[1] - w[0], "partial input not consumed whole");
        }
        (body, consumed, false, r.finish())
    }

    /// Where the data ends: just after the first `.` CRLF at a line start.
    fn end_of(input: &[u8]) -> Option<usize> {
        if input.starts_with(b".\r\n") {
            return Some(3);
        }
        input
            .windows(5)
            .position(|w| w == b"\r\n.\r\n")
            .map(|p| p + 5)
    }

    fn has_bare_line_end(body: &[u8]) -> bool {
        body.iter().enumerate().any(|(i, &b)| {
            (b == b'\n' && (i == 0 || body[i - 1] != b'\r'))
                || (b == b'\r' && body.get(i + 1) != Some(&b'\n'))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_split_gives_the_same_as_whole(
            input in data_like(),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
            max in prop_oneof![Just(usize::MAX), 0usize..200, 200usize..5000],
            bare in mode(),
        ) {
            let whole = run(&input, &[], max, bare);
            prop_assert_eq!(&run(&input, &cuts, max, bare), &whole);
            let every: Vec<usize> = (0..input.len()).collect();
            prop_assert_eq!(&run(&input, &every, max, bare), &whole);
        }

        #[test]
        fn ends_exactly_at_the_first_crlf_dot_crlf(
            input in data_like(),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
            bare in mode(),
        ) {
            let (body, consumed, ended, verdict) = run(&input, &cuts, usize::MAX, bare);
            match end_of(&input) {
                None => {
                    prop_assert!(!ended, "ended without CRLF . CRLF");
                    prop_assert_eq!(consumed, input.len());
                }
                Some(end) => {
                    prop_assert!(ended);
                    prop_assert_eq!(consumed, end);
                }
            }
            if ended && verdict.is_ok() {
                // Accepted text is clean CRLF text with short lines.
                prop_assert!(!has_bare_line_end(&body));
                prop_assert!(body.is_empty() || body.ends_with(b"\r\n"));
                for line in body.split(|&b| b == b'\n') {
                    prop_assert!(line.len() <= MAX_LINE + 1);
                }
            }
            if bare == Normalize && verdict.is_ok() {
                prop_assert!(!has_bare_line_end(&body));
            }
        }

        #[test]
        fn received_counter_agrees_with_count_received(
            pieces in prop::collection::vec(prop_oneof![
                3 => Just(b"Received: x\r\n".to_vec()),
                1 => Just(b"received \t: y\n".to_vec()),
                1 => Just(b"X-Received: z\r\n".to_vec()),
                1 => Just(b"Rec eived: z\r\n".to_vec()),
                1 => Just(b" Received: folded\r\n".to_vec()),
                1 => Just(b"\r\n".to_vec()),
                1 => Just(b"\r".to_vec()),
                1 => Just(b"\n".to_vec()),
                1 => Just(b"Received".to_vec()),
                1 => Just(b"          ".to_vec()),
                1 => Just(b":".to_vec()),
                1 => "[a-zA-Z \t:]{1,30}".prop_map(String::into_bytes),
            ], 0..30),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let input = pieces.concat();
            let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (input.len() + 1)).collect();
            cuts.extend([0, input.len()]);
            cuts.sort_unstable();
            let mut counter = ReceivedCounter::default();
            for w in cuts.windows(2) {
                counter.feed(&input[w[0]..w[1]]);
            }
            prop_assert_eq!(counter.count(), count_received(&input));
        }

        #[test]
        fn arbitrary_bytes_without_the_end_line_never_end(
            input in prop::collection::vec(any::<u8>(), 0..2000),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
            max in 0usize..3000,
            bare in mode(),
        ) {
            let (body, consumed, ended, _) = run(&input, &cuts, max, bare);
            prop_assert!(body.len() <= max);
            prop_assert_eq!(ended, end_of(&input).is_some());
            prop_assert_eq!(consumed, end_of(&input).unwrap_or(input.len()));
        }
    }
}
