//! DATA framing: the first byte picks the mode and the size limit, the
//! next two a cut; split input gives the same as whole, the body never
//! passes the limit, and the end is exactly the first CRLF . CRLF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailhop::smtp::data::{BareLineEnds, DataReader};

fn run(
    chunks: &[&[u8]],
    max: usize,
    bare: BareLineEnds,
) -> (
    Vec<u8>,
    usize,
    bool,
    Result<(), mailhop::smtp::data::DataError>,
) {
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
        assert_eq!(n, chunk.len());
    }
    (body, consumed, false, r.finish())
}

fuzz_target!(|input: &[u8]| {
    let [head, c1, c2, rest @ ..] = input else {
        return;
    };
    let bare = if head & 1 == 0 {
        BareLineEnds::Reject
    } else {
        BareLineEnds::Normalize
    };
    let max = match head >> 1 {
        0..=63 => usize::MAX,
        n => usize::from(n) * 16,
    };
    let cut = (usize::from(*c1) << 8 | usize::from(*c2)) % (rest.len() + 1);
    let whole = run(&[rest], max, bare);
    let (a, b) = rest.split_at(cut);
    assert_eq!(run(&[a, b], max, bare), whole);
    let end = if rest.starts_with(b".\r\n") {
        Some(3)
    } else {
        rest.windows(5)
            .position(|w| w == b"\r\n.\r\n")
            .map(|p| p + 5)
    };
    assert_eq!(whole.2, end.is_some());
    assert_eq!(whole.1, end.unwrap_or(rest.len()));
});
