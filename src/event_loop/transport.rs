//! A nonblocking TCP stream, in clear or wrapped in TLS (rustls), read and
//! written as plaintext. `WouldBlock` means what it means for the socket.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

pub(super) struct Transport {
    pub(super) stream: TcpStream,
    tls: Option<Connection>,
}

impl Transport {
    pub(super) fn plain(stream: TcpStream) -> Transport {
        Transport { stream, tls: None }
    }

    /// Starts the server side of a handshake (after STARTTLS, or at once on
    /// an implicit-TLS listener).
    pub(super) fn start_server(&mut self, config: Arc<ServerConfig>) -> io::Result<()> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        self.tls = Some(conn.into());
        Ok(())
    }

    pub(super) fn start_client(
        &mut self,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<()> {
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        self.tls = Some(conn.into());
        self.flush_records()?;
        Ok(())
    }

    /// No TLS (yet): reads and writes go straight to the socket.
    pub(super) fn is_plain(&self) -> bool {
        self.tls.is_none()
    }

    /// What a read that began during a handshake did to it: `Some(true)`
    /// it finished, `Some(false)` it failed (EOF, an error other than
    /// "later"), `None` no change (or there was no handshake).
    pub(super) fn handshake_outcome(
        &self,
        was_handshaking: bool,
        read: &io::Result<usize>,
    ) -> Option<bool> {
        if !was_handshaking {
            return None;
        }
        if !self.is_handshaking() {
            return Some(true);
        }
        let failed = match read {
            Ok(n) => *n == 0,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ),
        };
        failed.then_some(false)
    }

    /// Queues plaintext in rustls, to go out once the handshake is done
    /// (a request sent right after connecting); nothing is written here.
    pub(super) fn queue_plaintext(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => tls.writer().write_all(data),
            None => Err(io::Error::other("no TLS session")),
        }
    }

    /// The certificates the TLS peer presented (end entity first).
    pub(super) fn peer_certificates(
        &self,
    ) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.tls.as_ref()?.peer_certificates()
    }

    /// A TLS handshake is under way: the next read may do its expensive part.
    pub(super) fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|c| c.is_handshaking())
    }

    /// TLS records are waiting to be written.
    pub(super) fn wants_flush(&self) -> bool {
        self.tls.as_ref().is_some_and(|c| c.wants_write())
    }

    /// Writes pending TLS records; true when the socket would block.
    pub(super) fn flush_records(&mut self) -> io::Result<bool> {
        let Some(tls) = &mut self.tls else {
            return Ok(false);
        };
        while tls.wants_write() {
            match tls.write_tls(&mut self.stream) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}

impl Read for Transport {
    /// Plaintext; `Ok(0)` at the end of the stream (a TLS close_notify or
    /// the peer closing the socket).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &mut self.tls else {
            return self.stream.read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if tls.read_tls(&mut self.stream)? == 0 {
                return Ok(0);
            }
            if let Err(e) = tls.process_new_packets() {
                // Tell the peer why (an alert), then give up on it.
                let _ = tls.write_tls(&mut self.stream);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // The handshake answers as it goes.
            while tls.wants_write() {
                match tls.write_tls(&mut self.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

impl Write for Transport {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.stream.write(data);
        }
        // Keep rustls's buffer short: push out what it holds first.
        if self.flush_records()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let tls = self.tls.as_mut().expect("checked above");
        let n = tls.writer().write(data)?;
        self.flush_records()?;
        if n == 0 && !data.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.flush_records()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    }
}
