//! The outbound client fed arbitrary server bytes in arbitrary pieces:
//! never a panic, and each transaction gets exactly one outcome with one
//! reply per recipient (one sent behind the dot is the caller's to decide
//! when the session fails before the dot is answered).
#![no_main]

use std::collections::VecDeque;

use libfuzzer_sys::fuzz_target;
use mailhop::smtp::client::{Client, Event, Transaction};
use mailhop::smtp::reply::Reply;

fuzz_target!(|input: &[u8]| {
    let Some((&shape, input)) = input.split_first() else {
        return;
    };
    let n = usize::from(shape % 4) + 1;
    let chunk = usize::from(shape >> 3) + 1;
    let behind_the_dot = shape & 4 != 0;
    let mut client = Client::new("relay.example");
    let mut owed: VecDeque<usize> = VecDeque::new();
    let mut sent = 0;
    let mut held = Vec::new();
    let outcome = |owed: &mut VecDeque<usize>, replies: Vec<Reply>| {
        let want = owed.pop_front().expect("an outcome nobody was owed");
        assert_eq!(replies.len(), want);
    };
    // A failure reports the first transaction; the next, if any, is ours.
    let failed = |owed: &mut VecDeque<usize>, replies: Vec<Reply>| {
        outcome(owed, replies);
        assert!(owed.len() <= 1);
        owed.clear();
    };
    let transaction = || Transaction {
        reverse_path: "s@a.example".into(),
        recipients: (0..n).map(|i| format!("r{i}@b.example")).collect(),
        body: b"Subject: x\r\n\r\n.dot\r\nbare\nlf\r".to_vec().into(),
        eight_bit: shape & 1 == 1,
        smtputf8: false,
        dsn: Default::default(),
    };
    for piece in input.chunks(chunk) {
        held.extend_from_slice(piece);
        let used = client.receive(&held);
        assert!(used <= held.len());
        held.drain(..used);
        while !client.output().is_empty() {
            client.output().clear();
        }
        while let Some(event) = client.poll_event() {
            match event {
                Event::Ready if sent < 3 => {
                    sent += 1;
                    owed.push_back(n);
                    client.send(transaction());
                }
                Event::Ready => client.quit(),
                Event::Finished(replies) => outcome(&mut owed, replies),
                Event::Failed {
                    recipients: Some(replies),
                    ..
                } => failed(&mut owed, replies),
                Event::Failed { .. } | Event::Closed | Event::StartTls => {}
            }
        }
        if behind_the_dot && sent < 3 && client.may_send_next() {
            assert_eq!(owed.len(), 1);
            sent += 1;
            owed.push_back(n);
            client.send(transaction());
        }
    }
    if let Some(replies) = client.fail(Reply::local(451, "4.4.2", "lost")) {
        failed(&mut owed, replies);
    }
    while let Some(event) = client.poll_event() {
        if let Event::Finished(replies)
        | Event::Failed {
            recipients: Some(replies),
            ..
        } = event
        {
            outcome(&mut owed, replies);
        }
    }
    assert!(owed.is_empty(), "recipients left without a reply");
});
