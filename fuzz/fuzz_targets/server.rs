//! The inbound session fed arbitrary bytes in arbitrary pieces, the way
//! the event loop does it: never a panic, output always whole reply lines,
//! and every accepted message passes the DATA checks.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use mailhop::config::Config;
use mailhop::message::QueueIds;
use mailhop::smtp::server::{Env, Session, Settings};

fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let text = "hostname = \"beta.test\"\nlocal_domains = [\"beta.test\"]\n\
                    local_users = [\"jones\"]\nrelay_domains = [\"example.org\"]\n\
                    relay_networks = []\nmax_message_size = 4096\nmax_recipients = 5\n";
        let config = Config::from_toml(text, std::path::Path::new("/tmp"), "fuzz.toml")
            .expect("fuzz config");
        Settings::new(&config)
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&shape, input)) = input.split_first() else {
        return;
    };
    let settings = settings();
    let chunk = usize::from(shape) + 1;
    let mut ids = QueueIds::default();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut failures = mailhop::auth::Failures::default();
    let mut session = Session::new(settings, "192.0.2.9".parse().unwrap(), false);
    let mut held = Vec::new();
    let mut written = Vec::new();
    let mut commits = 0u32;
    for piece in input.chunks(chunk) {
        held.extend_from_slice(piece);
        loop {
            if session.is_closed() {
                break;
            }
            let mut env = Env {
                settings,
                now,
                ids: &mut ids,
                auth_failures: &mut failures,
            };
            let used = session.receive(&held, &mut env);
            assert!(used <= held.len());
            held.drain(..used);
            if let Some((_, _, piece)) = session.piece() {
                assert!(piece.len() <= mailhop::message::PIECE);
                session.piece_written();
                continue;
            }
            let _ = session.take_discarded();
            if let Some(message) = session.take_accepted() {
                assert!(!message.recipients.is_empty());
                assert!(message.body.len() <= 4096 + 1024);
                commits += 1;
                // Every other commit fails, as a full disk would.
                let id = message.id.clone();
                let result = if commits % 2 == 0 {
                    Err(())
                } else {
                    Ok(id.as_str())
                };
                session.committed(result, settings);
                continue;
            }
            // The loop writes output when the client reads it; stop
            // reading when the session says so (here: drain and go on).
            written.extend(session.output().drain(..));
            if used == 0 || !session.wants_input() {
                break;
            }
        }
        written.extend(session.output().drain(..));
        // Bounded buffering whatever the client sends.
        assert!(held.len() <= input.len());
    }
    written.extend(session.output().drain(..));
    // Replies are whole CRLF lines, each with a code.
    assert!(written.is_empty() || written.ends_with(b"\r\n"));
    for line in written.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.ends_with(b"\r"), "{:?}", String::from_utf8_lossy(line));
        assert!(line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit));
    }
});
