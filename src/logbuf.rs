//! Log output for a busy loop: while the event loop runs, log lines are
//! gathered and written to stderr in one `write` per loop turn (before the
//! loop sleeps in `poll`), instead of one `write` per line. Two lines per
//! message were two system calls per message, a few percent of the work.
//!
//! Outside the loop (and in every other command) lines go out at once. A
//! panic flushes what is gathered before its own message. Only `kill -9`
//! can lose lines: those of the turn it interrupts.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Gathered lines go out early past this size, so a turn that logs a lot
/// does not hold much memory.
const MAX_GATHERED: usize = 64 * 1024;

static GATHERING: AtomicBool = AtomicBool::new(false);
static GATHERED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// The writer `env_logger` gets (`Target::Pipe`). It calls `flush` after
/// every line, so the real flush is [`flush`].
pub struct Writer;

impl Write for Writer {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        if !GATHERING.load(Ordering::Relaxed) {
            return io::stderr().write_all(line).map(|()| line.len());
        }
        let mut gathered = GATHERED.lock().unwrap_or_else(|e| e.into_inner());
        gathered.extend_from_slice(line);
        if gathered.len() >= MAX_GATHERED {
            write_gathered(&mut gathered);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Starts gathering (the loop calls this once, at start) and makes a panic
/// flush first, so the lines before it are not lost or out of order.
pub fn start_gathering() {
    if GATHERING.swap(true, Ordering::SeqCst) {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        flush();
        previous(info);
    }));
}

/// Writes out what was gathered; the loop calls this before it sleeps and
/// when it stops.
pub fn flush() {
    let mut gathered = GATHERED.lock().unwrap_or_else(|e| e.into_inner());
    if !gathered.is_empty() {
        write_gathered(&mut gathered);
    }
}

/// Stops gathering, after writing out what was gathered.
pub fn stop_gathering() {
    GATHERING.store(false, Ordering::SeqCst);
    flush();
}

fn write_gathered(gathered: &mut Vec<u8>) {
    // Nowhere left to report a failed log write.
    let _ = io::stderr().write_all(gathered);
    gathered.clear();
}
