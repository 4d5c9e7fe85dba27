//! Nothing acknowledged is lost: `kill -9` in the middle of a load, then
//! every message that got its 250 is in the queue.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const CONFIG: &str =
    "hostname = \"beta.example\"\nlocal_domains = [\"beta.example\"]\nlocal_users = [\"jones\"]\n";
const CLIENTS: usize = 8;
const KILL_AFTER: usize = 3000;

#[test]
fn kill_9_during_load_loses_no_acknowledged_message() {
    let dir = tempdir();
    let mut mailhop = start_in(dir.path(), CONFIG);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = mailhop.addr;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let acked = acked.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.reply();
                c.cmd("EHLO load.test");
                let body = format!("Subject: load {n}\r\n\r\n{}.\r\n", format!("{}\r\n", "x".repeat(98)).repeat(10));
                while !stop.load(Ordering::Relaxed) {
                    // Pipelined, as a busy client would; replies read after.
                    c.send(format!("MAIL FROM:<load{n}@alpha.example>\r\nRCPT TO:<jones@beta.example>\r\nDATA\r\n").as_bytes());
                    for _ in 0..3 {
                        if c.reply().is_empty() {
                            return;
                        }
                    }
                    c.send(body.as_bytes());
                    let reply = c.reply();
                    if reply.is_empty() {
                        return; // killed
                    }
                    acked.lock().unwrap().push(queued_id(&reply));
                }
            })
        })
        .collect();
    let start = std::time::Instant::now();
    while acked.lock().unwrap().len() < KILL_AFTER && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    mailhop.child.kill().unwrap(); // SIGKILL
    mailhop.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= KILL_AFTER.min(100),
        "only {} acknowledged",
        acked.len()
    );

    // Restart on the same queue, as an operator would.
    let restarted = spawn(
        dir.path(),
        &[
            "serve",
            "--config",
            dir.path().join("mailhop.toml").to_str().unwrap(),
        ],
    );
    let db = open_queue(&restarted.queue_path());
    let stored: HashSet<String> = rows(&db, "SELECT id FROM queue UNION SELECT id FROM deliveries")
        .into_iter()
        .collect();
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!(
        "{} acknowledged, {} stored (the rest were committed but not yet acknowledged)",
        acked.len(),
        stored.len()
    );
}

/// `kill -9` while big messages are arriving and some have just been
/// acknowledged: after the restart every acknowledged one is whole (its
/// pieces add up to its size and read back as sent), and nothing is left
/// of the ones that were cut off.
#[test]
fn kill_9_in_the_middle_of_big_transfers_leaves_no_orphans_and_loses_nothing() {
    let dir = tempdir();
    // Mail to a hop that is down stays queued with its body.
    let mut mailhop = start_in(
        dir.path(),
        "hostname = \"beta.example\"\nrelay_networks = [\"127.0.0.0/8\"]\n[routes]\n\"example.org\" = \"127.0.0.1:9\"\n",
    );
    let line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n";
    let acked = Arc::new(Mutex::new(Vec::<(String, u32)>::new()));
    let addr = mailhop.addr;
    let workers: Vec<_> = (0..6u32)
        .map(|n| {
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.reply();
                c.cmd("EHLO big.test");
                for round in 0.. {
                    let tag = n * 1000 + round;
                    let head = format!("Subject: big {tag}\r\n\r\n");
                    let lines = 20_000 + 3_000 * n as usize; // 1.3 to 2.3 MB
                    let mut data = head.into_bytes();
                    for _ in 0..lines {
                        data.extend_from_slice(line);
                    }
                    let ok = c
                        .cmd(&format!("MAIL FROM:<s{n}@alpha.example>"))
                        .starts_with("250")
                        && c.cmd("RCPT TO:<u@example.org>").starts_with("250")
                        && c.cmd("DATA").starts_with("354");
                    if !ok {
                        return;
                    }
                    for piece in data.chunks(32 * 1024) {
                        if c.stream.write_all(piece).is_err() {
                            return; // killed mid-transfer
                        }
                    }
                    let reply = c.cmd(".");
                    if reply.is_empty() {
                        return;
                    }
                    acked.lock().unwrap().push((queued_id(&reply), tag));
                }
            })
        })
        .collect();
    // Kill once several are acknowledged and the pieces of unfinished
    // ones are committed (the kill then catches them half-stored).
    let db = open_queue(&mailhop.queue_path());
    let unfinished = "SELECT count(DISTINCT message_id) FROM body_chunks
                      WHERE message_id NOT IN (SELECT id FROM messages)";
    let start = std::time::Instant::now();
    while (acked.lock().unwrap().len() < 12 || rows(&db, unfinished) == ["0"])
        && start.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    mailhop.child.kill().unwrap(); // SIGKILL
    mailhop.child.wait().unwrap();
    let cut_off = rows(&db, unfinished);
    drop(db);
    for worker in workers {
        worker.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 12, "only {} acknowledged", acked.len());
    assert_ne!(cut_off, ["0"], "no transfer was cut off half-stored");

    let restarted = spawn(
        dir.path(),
        &[
            "serve",
            "--config",
            dir.path().join("mailhop.toml").to_str().unwrap(),
        ],
    );
    let db = open_queue(&restarted.queue_path());
    assert_eq!(
        rows(&db, unfinished),
        ["0"],
        "orphaned pieces after restart"
    );
    assert_eq!(
        rows(
            &db,
            "SELECT count(*) FROM body_chunks WHERE message_id NOT IN (SELECT id FROM messages)"
        ),
        ["0"]
    );
    for (id, tag) in &acked {
        let whole = rows(
            &db,
            &format!(
                "SELECT m.size = length(m.body) + (SELECT coalesce(sum(length(data)), 0)
                                                   FROM body_chunks WHERE message_id = m.id)
                 FROM messages AS m JOIN queue AS q ON q.id = m.id WHERE m.id = '{id}'"
            ),
        );
        assert_eq!(whole, ["1"], "acknowledged {id} not whole in the queue");
        // The header section, in the first piece, is the one sent.
        let subject = rows(
            &db,
            &format!(
                "SELECT instr(CASE WHEN chunks > 0 THEN (SELECT data FROM body_chunks
                                                         WHERE message_id = '{id}' AND seq = 0)
                                   ELSE body END,
                              CAST('Subject: big {tag}' || char(13) AS BLOB)) > 0
                 FROM messages WHERE id = '{id}'"
            ),
        );
        assert_eq!(subject, ["1"], "{id} is not message {tag}");
    }
    eprintln!(
        "{} big messages acknowledged before kill -9, {} cut off half-stored; none lost, no orphans",
        acked.len(),
        cut_off[0]
    );
}
