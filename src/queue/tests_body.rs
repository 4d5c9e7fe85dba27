//! Bodies in pieces: written before their message, invisible until it is
//! committed, read back piece by piece, gone with a failed session or a
//! crash.

use super::tests::{count, message, other, temp};
use super::*;

/// A message whose first `pieces.len()` pieces went to the queue as they
/// arrived, ending in `tail`.
fn streamed(q: &mut Queue, id: &str, pieces: &[&[u8]], tail: &[u8]) -> Message {
    for (seq, piece) in pieces.iter().enumerate() {
        q.write_piece(id, seq as u32, piece).unwrap();
    }
    let mut m = message(id, "a@b.example", &["c@d.example"], tail);
    m.chunks = pieces.len() as u32;
    m.size = (pieces.iter().map(|p| p.len()).sum::<usize>() + tail.len()) as u64;
    m
}

#[test]
fn pieces_are_invisible_until_their_message_commits_then_read_back_in_order() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    let m = streamed(
        &mut q,
        "BIG1",
        &[b"Subject: big\r\n\r\none\r\n", b"two\r\n"],
        b"three\r\n",
    );
    // Pieces of this turn are committed with the turn, message or not;
    // the views do not see them.
    q.commit_open().unwrap();
    let c = other(&path);
    assert_eq!(count(&c, "SELECT count(*) FROM body_chunks"), 2);
    assert_eq!(count(&c, "SELECT count(*) FROM queue"), 0);

    q.commit(&[&m]).unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM queue WHERE id = 'BIG1'"), 1);
    assert_eq!(
        count(&c, "SELECT size FROM queue WHERE id = 'BIG1'"),
        "Subject: big\r\n\r\none\r\ntwo\r\nthree\r\n".len() as i64
    );
    let stored = q.message("BIG1").unwrap();
    assert_eq!((stored.chunks, stored.size), (2, m.size));
    assert_eq!(
        q.read_body("BIG1").unwrap(),
        b"Subject: big\r\n\r\none\r\ntwo\r\nthree\r\n"
    );
    // `queue show` finds the header section in the first piece.
    let detail = Admin::open(&path).unwrap().show("BIG1").unwrap();
    assert_eq!(detail.header.as_deref(), Some(&b"Subject: big\r\n"[..]));
}

#[test]
fn a_discarded_body_leaves_nothing_and_a_crash_leaves_nothing_after_restart() {
    let (_dir, path) = temp();
    {
        let mut q = Queue::open(&path).unwrap();
        streamed(&mut q, "GONE", &[b"aaaa", b"bbbb"], b"");
        q.commit_open().unwrap();
        q.discard_body("GONE");
        q.commit_open().unwrap();
        let c = other(&path);
        assert_eq!(count(&c, "SELECT count(*) FROM body_chunks"), 0);

        // A session still receiving when the process dies: its pieces are
        // committed, its message never is.
        streamed(&mut q, "CUT", &[b"cccc"], b"");
        let kept = streamed(&mut q, "KEPT", &[b"dddd"], b"end");
        q.commit(&[&kept]).unwrap();
        assert_eq!(count(&c, "SELECT count(*) FROM body_chunks"), 2);
    }
    let q = Queue::open(&path).unwrap();
    let c = other(&path);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM body_chunks WHERE message_id = 'CUT'"
        ),
        0
    );
    assert_eq!(q.read_body("KEPT").unwrap(), b"ddddend");
}

#[test]
fn a_rolled_back_transaction_loses_the_pieces_in_it() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    streamed(&mut q, "EARLY", &[b"first"], b"");
    q.commit_open().unwrap();
    let dup = message("DUP", "a@b.example", &["c@d.example"], b"x");
    q.commit(&[&dup]).unwrap();
    q.write_piece("EARLY", 1, b"second").unwrap();
    q.write_piece("OTHER", 0, b"x").unwrap();
    // A batch that cannot be stored (a duplicate queue ID) fails the
    // whole transaction, pieces of unfinished messages included.
    assert!(q.commit(&[&dup]).is_err());
    assert!(q.is_lost("EARLY") && q.is_lost("OTHER"));
    // Later pieces of a lost message are not written; it must not be
    // committed, and discarding it removes what an earlier turn stored.
    q.write_piece("EARLY", 2, b"third").unwrap();
    q.discard_body("EARLY");
    q.discard_body("OTHER");
    q.commit_open().unwrap();
    assert!(!q.is_lost("EARLY"));
    let c = other(&path);
    assert_eq!(count(&c, "SELECT count(*) FROM body_chunks"), 0);
}

#[test]
fn a_finished_message_drops_its_pieces_too() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    let m = streamed(&mut q, "DONE", &[b"aaaa", b"bbbb"], b"cc");
    let leases = q.commit_and_lease(
        &Batch {
            messages: vec![&m],
            ..Batch::default()
        },
        true,
    );
    let lease = &leases.unwrap()[0];
    let now = SystemTime::now();
    let outcome = Outcome {
        row: lease.recipients[0].row,
        message_id: "DONE".into(),
        recipient: "c@d.example".into(),
        next_hop: lease.next_hop.clone(),
        state: RecipientState::Delivered,
        reply: "250 ok".into(),
        attempt: None,
        at: now,
    };
    q.commit_turn(&Batch {
        outcomes: vec![outcome],
        ..Batch::default()
    })
    .unwrap();
    let c = other(&path);
    assert_eq!(count(&c, "SELECT count(*) FROM body_chunks"), 0);
    assert_eq!(
        count(&c, "SELECT chunks FROM messages WHERE id = 'DONE'"),
        0
    );
    assert!(q.read_body("DONE").unwrap().is_empty());
    assert_eq!(
        count(&c, "SELECT count(*) FROM deliveries WHERE id = 'DONE'"),
        1
    );
}
