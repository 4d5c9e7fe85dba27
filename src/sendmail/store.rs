//! From a whole message to the queue. The message is first held in a
//! [`Spool`] (memory up to one piece, then an unlinked temporary file), so
//! the queue's write lock is not held while a slow writer (a cron job
//! printing as it goes, a `-bs` client) is still sending; then [`store`]
//! writes it in the server's pieces and commits it with its envelope, in
//! one transaction.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::message::{Message, PIECE};
use crate::queue::Queue;

/// The data of a message being read, in memory while it fits in one
/// piece, else in a temporary file that no one else can open.
#[derive(Debug, Default)]
pub struct Spool {
    memory: Vec<u8>,
    file: Option<File>,
    len: u64,
}

impl Spool {
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() && self.memory.len() + bytes.len() <= PIECE {
            self.memory.extend_from_slice(bytes);
        } else {
            let file = match &mut self.file {
                Some(file) => file,
                None => {
                    let mut file = temporary_file()?;
                    file.write_all(&self.memory)?;
                    self.memory = Vec::new();
                    self.file.insert(file)
                }
            };
            file.write_all(bytes)?;
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Octets written.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets everything (the temporary file goes with its descriptor).
    pub fn clear(&mut self) {
        *self = Spool::default();
    }

    /// Everything written, from the start.
    pub fn reader(&mut self) -> io::Result<Box<dyn Read + '_>> {
        match &mut self.file {
            Some(file) => {
                file.seek(SeekFrom::Start(0))?;
                Ok(Box::new(io::BufReader::with_capacity(PIECE, file)))
            }
            None => Ok(Box::new(self.memory.as_slice())),
        }
    }
}

/// A new file in the temporary folder (`TMPDIR`), mode 0600, unlinked at
/// once: it disappears with the process whatever happens.
fn temporary_file() -> io::Result<File> {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir();
    let name = |n: u32| -> PathBuf {
        dir.join(format!(
            ".mailhop-sendmail.{}.{n}.{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ))
    };
    loop {
        let path = name(COUNT.fetch_add(1, Ordering::Relaxed));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => {
                std::fs::remove_file(&path)?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("temporary file in {}: {e}", dir.display()),
                ))
            }
        }
    }
}

/// Stores `message`, whose stored form is `head` then all of `rest`: its
/// pieces (the server's [`PIECE`]s in `body_chunks`), then its row and
/// recipients, in one transaction. `message.body`, `chunks` and `size` are
/// set here. On any error nothing of it stays in the queue.
pub fn store(
    queue: &mut Queue,
    message: &mut Message,
    head: &[u8],
    rest: &mut dyn Read,
) -> Result<(), String> {
    let stored = write_pieces(queue, message, head, rest)
        .and_then(|()| queue.commit(&[&*message]).map_err(|e| e.to_string()));
    if stored.is_err() {
        queue.abandon();
    }
    stored
}

fn write_pieces(
    queue: &mut Queue,
    message: &mut Message,
    mut head: &[u8],
    rest: &mut dyn Read,
) -> Result<(), String> {
    let mut piece = Vec::with_capacity(PIECE);
    let mut chunks = 0u32;
    let mut size = 0u64;
    loop {
        if !head.is_empty() {
            let n = head.len().min(PIECE - piece.len());
            piece.extend_from_slice(&head[..n]);
            head = &head[n..];
        } else {
            let start = piece.len();
            piece.resize(PIECE, 0);
            let read = rest.read(&mut piece[start..]);
            piece.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading the spooled message back: {e}")),
            }
        }
        if piece.len() == PIECE {
            queue
                .write_piece(&message.id, chunks, &piece)
                .map_err(|e| e.to_string())?;
            chunks += 1;
            size += PIECE as u64;
            piece.clear();
        }
    }
    size += piece.len() as u64;
    message.body = piece;
    message.chunks = chunks;
    message.size = size;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_reads_back_what_was_written_in_memory_or_on_disk() {
        for total in [0, 10, PIECE, PIECE + 1, 3 * PIECE + 17] {
            let mut spool = Spool::default();
            let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
            for part in data.chunks(1000) {
                spool.write(part).unwrap();
            }
            assert_eq!(spool.len(), total as u64);
            assert_eq!(spool.file.is_some(), total > PIECE);
            let mut back = Vec::new();
            spool.reader().unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "{total}");
            // Read twice (a retried commit would).
            back.clear();
            spool.reader().unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back.len(), total);
            spool.clear();
            assert!(spool.is_empty() && spool.file.is_none());
        }
    }
}
