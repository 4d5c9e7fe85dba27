//! `sendmail -bs`: the server's own SMTP state machine over standard input
//! and output, driven as `event_loop::inbound` drives it but blocking, for
//! one local user: full body pieces go to a [`Spool`], and each accepted
//! message is committed to the queue before its reply is written.

use std::io::{self, Read, Write};
use std::time::SystemTime;

use super::store::{store, Spool};
use crate::auth::Failures;
use crate::message::{QueueIds, PIECE};
use crate::queue::Queue;
use crate::smtp::server::{Env, Session, Settings};

/// What a session needs besides its input and output.
pub struct Local<'a> {
    pub settings: &'a Settings,
    pub queue: &'a mut Queue,
    /// `mailhop sendmail -bs, userid 1000`, for the `Received:` line.
    pub software: String,
    /// `-v`: each queue ID on stderr.
    pub verbose: bool,
}

/// Runs the session until QUIT or the end of the input.
pub fn run(local: Local<'_>, input: &mut dyn Read, output: &mut dyn Write) -> io::Result<()> {
    let Local {
        settings,
        queue,
        software,
        verbose,
    } = local;
    let mut session = Session::local(settings, software);
    let mut driver = Driver {
        ids: QueueIds::for_process(std::process::id()),
        failures: Failures::default(),
        spool: Spool::default(),
        spool_error: None,
        queue,
        verbose,
    };
    let mut held = Vec::new();
    let mut buf = vec![0u8; PIECE];
    let mut eof = false;
    loop {
        let used = driver.feed(&mut session, &held, settings);
        held.drain(..used);
        let out = session.output();
        if !out.is_empty() {
            output.write_all(out)?;
            output.flush()?;
            out.clear();
        }
        // Nobody counts replies here (the loop does, for its metrics).
        session.take_sent().for_each(drop);
        if session.is_closed() {
            return Ok(());
        }
        if used > 0 && !held.is_empty() {
            continue;
        }
        if eof {
            // A message cut off inside its data is dropped with the spool.
            return Ok(());
        }
        match input.read(&mut buf) {
            Ok(0) => eof = true,
            Ok(n) => held.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

struct Driver<'a> {
    ids: QueueIds,
    failures: Failures,
    spool: Spool,
    /// The spool lost data of the message being received: it gets 451.
    spool_error: Option<String>,
    queue: &'a mut Queue,
    verbose: bool,
}

impl Driver<'_> {
    /// Feeds `input`, taking each full piece into the spool so the session
    /// can go on, and committing each message it accepts; returns how much
    /// it consumed.
    fn feed(&mut self, session: &mut Session, input: &[u8], settings: &Settings) -> usize {
        let mut used = 0;
        loop {
            let mut env = Env {
                settings,
                now: SystemTime::now(),
                ids: &mut self.ids,
                auth_failures: &mut self.failures,
            };
            used += session.receive(&input[used..], &mut env);
            let mut moved = false;
            if let Some((_, _, data)) = session.piece() {
                if let Err(e) = self.spool.write(data) {
                    self.spool_error.get_or_insert(e.to_string());
                }
                session.piece_written();
                moved = true;
            }
            if session.take_discarded().is_some() {
                self.forget();
            }
            if let Some(mut message) = session.take_accepted() {
                let tail = std::mem::take(&mut message.body);
                let stored = match self.spool_error.take() {
                    Some(e) => Err(e),
                    None => self
                        .spool
                        .reader()
                        .map_err(|e| e.to_string())
                        .and_then(|r| {
                            store(self.queue, &mut message, b"", &mut r.chain(tail.as_slice()))
                        }),
                };
                self.forget();
                match stored {
                    Ok(()) => {
                        if self.verbose {
                            eprintln!("sendmail: queued as {}", message.id);
                        }
                        session.committed(Ok(&message.id), settings);
                    }
                    Err(e) => {
                        eprintln!("sendmail: cannot queue the message: {e}");
                        session.committed(Err(()), settings);
                    }
                }
                moved = true;
            }
            if !moved || used == input.len() {
                return used;
            }
        }
    }

    fn forget(&mut self) {
        self.spool.clear();
        self.spool_error = None;
    }
}
