//! An accepted mail transaction, as the inbound side hands it to the queue.

use std::net::IpAddr;
use std::time::SystemTime;

use crate::smtp::dsn::{Notify, Ret};

/// One accepted recipient, with the next hop worked out at RCPT time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recipient {
    /// The mailbox, `user@domain`, no angle brackets.
    pub mailbox: String,
    /// The forward-path to send on, with what is left of a source route
    /// (`@TWO:user@THREE`); equal to `mailbox` when there is no route.
    pub forward_path: String,
    /// `local`, a `[routes]` target as written, or the domain to look up by MX.
    pub next_hop: String,
    /// `NOTIFY=` (RFC 3461); `None`: failures and delays are reported.
    pub notify: Option<Notify>,
    /// `ORCPT=`, decoded: `addr-type;address`.
    pub orcpt: Option<String>,
}

/// A message committed (or about to be) to the queue.
#[derive(Debug, Clone)]
pub struct Message {
    /// The queue ID given in the `250 ... queued as <ID>` reply.
    pub id: String,
    /// The sender mailbox without brackets; `""` for the null sender.
    pub sender: String,
    /// The reverse-path as received, with any source route (`@A:x@y`); `""` for `<>`.
    pub reverse_path: String,
    pub recipients: Vec<Recipient>,
    pub client_ip: IpAddr,
    pub helo: String,
    pub received_at: SystemTime,
    /// `BODY=8BITMIME` was given.
    pub eight_bit: bool,
    /// `SMTPUTF8` was given.
    pub smtputf8: bool,
    /// `RET=` and `ENVID=` (RFC 3461).
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// The end of the message as stored (our `Received:` line, then the
    /// data, unstuffed, with CRLF line ends): all of it when `chunks` is 0,
    /// else what followed the `chunks` pieces already written to the queue
    /// while the data arrived (see [`PIECE`]).
    pub body: Vec<u8>,
    /// Pieces of this message already in the queue's `body_chunks`.
    pub chunks: u32,
    /// Octets of the whole stored message, chunks and `body`.
    pub size: u64,
}

/// The piece a body travels in: a receiving session writes each full piece
/// to the queue as it fills, and delivery reads the body back piece by
/// piece, so no session holds more of a message than this, whatever its size.
pub const PIECE: usize = 64 * 1024;

/// Hands out queue IDs: 16 upper-case hex digits, the microsecond of the
/// call and a 12-bit sequence, so IDs sort by arrival and never repeat
/// within one process even when the clock stands still or steps back.
#[derive(Debug, Default)]
pub struct QueueIds {
    last: u64,
    /// Where the sequence starts within a microsecond: 0 for `serve`.
    offset: u64,
}

impl QueueIds {
    /// For a second process writing the same queue (`mailhop sendmail`):
    /// its sequence starts in the upper half of the 12 bits, at a place
    /// taken from `pid`, where `serve` (counting up from 0) never gets
    /// within one microsecond, so the two do not hand out the same ID. Two
    /// such processes meeting in the same microsecond and slot are refused
    /// by the queue (the ID is its key), never mixed up.
    pub fn for_process(pid: u32) -> QueueIds {
        QueueIds {
            last: 0,
            offset: 0x800 | (u64::from(pid) & 0x7FF),
        }
    }

    pub fn next(&mut self, now: SystemTime) -> String {
        let micros = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        self.last = ((micros << 12) | self.offset).max(self.last + 1);
        format!("{:016X}", self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ids_increase_even_when_the_clock_stands_still_or_steps_back() {
        let mut ids = QueueIds::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = ids.next(t);
        let b = ids.next(t);
        let c = ids.next(t - Duration::from_secs(5));
        assert_eq!(a.len(), 16);
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    #[test]
    fn another_process_gets_other_ids_in_the_same_microsecond() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut serve = QueueIds::default();
        let served: Vec<String> = (0..100).map(|_| serve.next(t)).collect();
        let mut sendmail = QueueIds::for_process(4242);
        let a = sendmail.next(t);
        assert!(!served.contains(&a), "{a}");
        assert_eq!(&a[..13], &served[0][..13], "same microsecond, same prefix");
        assert!(sendmail.next(t) > a);
    }
}
