//! The DATA phase: finding the end of data (`CRLF . CRLF` and nothing else),
//! dot-unstuffing, and the checks applied when the data ends.

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

/// Streaming decoder for the bytes after `354`. The caller feeds it chunks
/// of any size; it appends the unstuffed message (CRLF line ends) to `body`
/// and says when the end-of-data line has been consumed.
#[derive(Debug)]
pub struct DataReader {
    // private state chosen by the implementation
}

impl DataReader {
    /// `max_size`: octets of message (after unstuffing) allowed in `body`;
    /// beyond it, input is still consumed but no longer stored.
    pub fn new(max_size: usize, bare: BareLineEnds) -> DataReader {
        todo!()
    }

    /// Consumes from `input`, appending to `body`. Returns the number of
    /// bytes consumed and whether the end-of-data line was among them (then
    /// the bytes after it, not consumed, are the next commands).
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> (usize, bool) {
        todo!()
    }

    /// The verdict once `feed` has reported the end: the first problem seen.
    pub fn finish(&self) -> Result<(), DataError> {
        todo!()
    }
}

/// Counts the `Received:` header fields in the header section of `message`
/// (up to the first empty line), case-insensitively.
pub fn count_received(message: &[u8]) -> usize {
    todo!()
}
