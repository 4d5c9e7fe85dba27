//! Nothing acknowledged is lost: `kill -9` in the middle of a load, then
//! every message that got its 250 is in the queue.

mod common;

use std::collections::HashSet;
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
