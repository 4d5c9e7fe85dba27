//! An accepted mail transaction, as the inbound side hands it to the queue.

use std::net::IpAddr;
use std::time::SystemTime;

/// One accepted recipient, with the next hop worked out at RCPT time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The mailbox, `user@domain`, no angle brackets.
    pub mailbox: String,
    /// The forward-path to send on, with what is left of a source route
    /// (`@TWO:user@THREE`); equal to `mailbox` when there is no route.
    pub forward_path: String,
    /// `local`, a `[routes]` target as written, or the domain to look up by MX.
    pub next_hop: String,
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
    /// The whole message as stored: our `Received:` line, then the data,
    /// unstuffed, with CRLF line ends.
    pub body: Vec<u8>,
}
