//! The outbound SMTP session as a pure state machine: the event loop feeds
//! it the server's bytes and writes what it outputs; it reports per-recipient
//! replies. No socket, clock or SQL here.

use super::reply::Reply;

/// One mail transaction to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Without angle brackets; `""` for the null reverse-path.
    pub reverse_path: String,
    /// Forward paths without angle brackets (may carry a source route).
    pub recipients: Vec<String>,
    /// As stored: CRLF line ends, not dot-stuffed (the client stuffs).
    pub body: std::rc::Rc<[u8]>,
    pub eight_bit: bool,
    pub smtputf8: bool,
}

/// What the loop must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Greeting and EHLO/HELO done, or the previous transaction is finished:
    /// call `send` with the next transaction, or `quit`.
    Ready,
    /// The transaction ended: the reply that decided each recipient, in the
    /// order of `Transaction::recipients`.
    Finished(Vec<Reply>),
    /// The connection cannot be used further (greeting refused, 421,
    /// garbage, server closed). When a transaction was in flight, the reply
    /// for each of its recipients: what the server already said where that
    /// was final (a 5xx to RCPT), else the reply that ended the connection.
    Failed { reply: Reply, recipients: Option<Vec<Reply>> },
    /// QUIT answered (or not needed): close the socket.
    Closed,
}

/// Which RFC 5321 4.5.3.2 timeout applies to what we wait for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Greeting, EHLO, MAIL, RCPT, RSET, QUIT replies.
    Command,
    /// The reply to DATA.
    DataInit,
    /// Writing the data (the loop applies it while output is pending).
    DataBlock,
    /// The reply after the final dot.
    DataDone,
}

#[derive(Debug)]
pub struct Client {
    // private
}

impl Client {
    /// `helo_name`: our host name for EHLO/HELO. The session starts by
    /// waiting for the greeting.
    pub fn new(helo_name: &str) -> Client {
        todo!()
    }

    /// Feeds bytes from the server; returns how many were consumed (the rest,
    /// an incomplete reply, must be fed again with more).
    pub fn receive(&mut self, input: &[u8]) -> usize {
        todo!()
    }

    /// Bytes to write to the server; the caller drains what it wrote. While
    /// data is being sent this is topped up from the body (dot-stuffed, bare
    /// CR and LF turned into CRLF) in bounded pieces, so a large message is
    /// never copied whole.
    pub fn output(&mut self) -> &mut Vec<u8> {
        todo!()
    }

    /// The next thing to act on, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        todo!()
    }

    /// Starts a transaction; only after `Event::Ready`.
    pub fn send(&mut self, transaction: Transaction) {
        todo!()
    }

    /// Ends the session politely (QUIT), after `Event::Ready`.
    pub fn quit(&mut self) {
        todo!()
    }

    /// The connection failed from outside (reset, EOF, timeout): like
    /// `Event::Failed`, returned directly; the session is over.
    pub fn fail(&mut self, reply: Reply) -> Option<Vec<Reply>> {
        todo!()
    }

    /// What we are waiting for, for the loop's timer; `None` when idle
    /// between transactions (the loop's connection cache decides) or closed.
    pub fn waiting(&self) -> Option<Wait> {
        todo!()
    }
}
