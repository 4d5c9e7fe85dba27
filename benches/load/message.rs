//! The messages the load generator sends: a few headers made per message
//! (Message-ID, Subject) and one shared body, dot-stuffed once.

use std::rc::Rc;

/// Filler lines are this long (without CRLF); every tenth starts with a
/// dot so that the server's dot-unstuffing is exercised.
const LINE: usize = 76;

pub struct Messages {
    from: String,
    to: String,
    date: String,
    run: String,
    /// The dot-stuffed body after the headers, ending in CRLF . CRLF.
    pub body: Rc<[u8]>,
    /// Of every message, headers included, not stuffed (for SIZE=).
    pub size: usize,
}

impl Messages {
    /// `size`: the whole message (headers and body, before stuffing).
    pub fn new(from: &str, recipients: &[String], size: usize) -> Messages {
        let to = match recipients {
            [one] => one.clone(),
            [first, .., last] => format!("{first}, ..., {last}"),
            [] => String::new(),
        };
        let mut m = Messages {
            from: from.to_string(),
            to,
            date: chrono::Local::now().to_rfc2822(),
            run: format!("{}.{}", std::process::id(), chrono::Utc::now().timestamp()),
            body: Rc::from(&b""[..]),
            size: 0,
        };
        let headers = m.headers(u64::MAX).len();
        let (body, len) = stuffed_body(size.saturating_sub(headers));
        m.body = Rc::from(body);
        m.size = headers + len;
        m
    }

    /// The headers of message `n` and the empty line after them.
    pub fn headers(&self, n: u64) -> Vec<u8> {
        format!(
            "From: <{}>\r\nTo: <{}>\r\nDate: {}\r\nSubject: load test message {n:020}\r\n\
             Message-ID: <{n:020}.{}@loadgen.example.com>\r\n\r\n",
            self.from, self.to, self.date, self.run
        )
        .into_bytes()
    }
}

/// `len` bytes of text in CRLF lines (as the server should store them),
/// dot-stuffed, then the final CRLF . CRLF; and its length unstuffed.
fn stuffed_body(len: usize) -> (Vec<u8>, usize) {
    let mut body = Vec::with_capacity(len + len / 700 + 8);
    let mut left = len;
    let mut i = 0usize;
    let mut unstuffed = 0;
    while left > 0 {
        // The last line keeps its CRLF whole: at least 1 byte of text.
        let text = (LINE).min(left.saturating_sub(2)).max(1);
        let mut line: Vec<u8> = (0..text)
            .map(|k| b"abcdefghijklmnopqrstuvwxyz0123456789 "[(i + k) % 37])
            .collect();
        if i % 10 == 9 {
            line[0] = b'.';
        }
        if line[0] == b'.' {
            body.push(b'.');
        }
        body.extend_from_slice(&line);
        body.extend_from_slice(b"\r\n");
        left = left.saturating_sub(text + 2);
        unstuffed += text + 2;
        i += 1;
    }
    body.extend_from_slice(b".\r\n");
    (body, unstuffed)
}
