//! Scripted dialogues (DESIGN pattern 12): a server script of expected
//! writes and replies, played with every reply fed whole, split at every
//! offset and byte by byte.

use super::*;
use crate::smtp::data::{BareLineEnds, DataReader};

enum Step {
    /// The client has written exactly this since the previous `Write`.
    Write(Vec<u8>),
    /// The server sends this.
    Read(Vec<u8>),
    /// What `waiting()` says now.
    Waiting(Option<Wait>),
    /// The loop gives up on the connection; `fail` must return the second.
    Fail(Reply, Option<Vec<Reply>>),
}

fn w(s: impl AsRef<[u8]>) -> Step {
    Step::Write(s.as_ref().to_vec())
}

fn r(s: impl AsRef<[u8]>) -> Step {
    Step::Read(s.as_ref().to_vec())
}

/// What the loop does on each `Ready`, in order; nothing once they are used.
#[derive(Clone)]
enum Action {
    Send(Transaction),
    /// Sent as soon as `may_send_next` allows (behind the final dot), or
    /// on `Ready`.
    SendNext(Transaction),
    Quit,
}

#[derive(Debug, Clone, Copy)]
enum Feed {
    Whole,
    /// Each read in two pieces, cut here (or whole when shorter).
    Split(usize),
    Bytes,
}

/// Plays the role of the event loop.
struct Driver {
    client: Client,
    actions: VecDeque<Action>,
    written: Vec<u8>,
    mark: usize,
    held: Vec<u8>,
    events: Vec<Event>,
    /// How much one socket write takes.
    write_size: usize,
}

impl Driver {
    fn new(actions: &[Action], write_size: usize) -> Driver {
        Driver::with_client(Client::new("relay.example"), actions, write_size)
    }

    fn with_client(client: Client, actions: &[Action], write_size: usize) -> Driver {
        Driver {
            client,
            actions: actions.iter().cloned().collect(),
            written: Vec::new(),
            mark: 0,
            held: Vec::new(),
            events: Vec::new(),
            write_size,
        }
    }

    /// Acts on events and writes output until nothing moves.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            while let Some(event) = self.client.poll_event() {
                if event == Event::Ready {
                    match self.actions.pop_front() {
                        Some(Action::Send(t) | Action::SendNext(t)) => self.client.send(t),
                        Some(Action::Quit) => self.client.quit(),
                        None => {}
                    }
                }
                if event == Event::StartTls {
                    // As the loop does: drop what came in clear, handshake.
                    self.held.clear();
                    self.client.tls_started();
                }
                self.events.push(event);
                moved = true;
            }
            if self.client.may_send_next() {
                if let Some(Action::SendNext(t)) = self.actions.front().cloned() {
                    self.actions.pop_front();
                    self.client.send(t);
                    moved = true;
                }
            }
            let out = self.client.output();
            assert!(out.len() <= HIGH_WATER + 4, "output grew to {}", out.len());
            if !out.is_empty() {
                let n = out.len().min(self.write_size);
                self.written.extend(out.drain(..n));
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }

    fn read(&mut self, chunk: &[u8]) {
        self.held.extend_from_slice(chunk);
        let used = self.client.receive(&self.held);
        self.held.drain(..used);
        self.settle();
    }

    fn play(&mut self, steps: &[Step], feed: Feed) {
        for (n, step) in steps.iter().enumerate() {
            self.settle();
            match step {
                Step::Write(want) => {
                    let got = &self.written[self.mark..];
                    assert!(
                        got == &want[..],
                        "step {n} ({feed:?}): wrote {:?}, want {:?}",
                        String::from_utf8_lossy(got),
                        String::from_utf8_lossy(want)
                    );
                    self.mark = self.written.len();
                }
                Step::Read(bytes) => match feed {
                    Feed::Whole => self.read(bytes),
                    Feed::Split(at) => {
                        let (a, b) = bytes.split_at(at.min(bytes.len()));
                        self.read(a);
                        self.read(b);
                    }
                    Feed::Bytes => bytes.chunks(1).for_each(|b| self.read(b)),
                },
                Step::Waiting(want) => {
                    assert_eq!(self.client.waiting(), *want, "step {n} ({feed:?})")
                }
                Step::Fail(reply, want) => {
                    assert_eq!(&self.client.fail(reply.clone()), want, "step {n}");
                }
            }
        }
        self.settle();
        let rest = &self.written[self.mark..];
        assert!(
            rest.is_empty(),
            "({feed:?}) unscripted write {:?}",
            String::from_utf8_lossy(rest)
        );
        assert!(self.held.is_empty(), "({feed:?}) input left over");
    }
}

/// Plays `steps` fed every way; all must agree. Returns the events.
fn dialogue(steps: &[Step], actions: &[Action]) -> Vec<Event> {
    dialogue_with(|| Client::new("relay.example"), steps, actions)
}

/// As `dialogue`, with a client made by `client` for each run.
fn dialogue_with(client: impl Fn() -> Client, steps: &[Step], actions: &[Action]) -> Vec<Event> {
    let run = |feed| {
        let mut driver = Driver::with_client(client(), actions, usize::MAX);
        driver.play(steps, feed);
        driver.events
    };
    let whole = run(Feed::Whole);
    let longest = steps
        .iter()
        .map(|s| match s {
            Step::Read(b) => b.len(),
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    for at in 0..=longest {
        assert_eq!(run(Feed::Split(at)), whole, "split at {at}");
    }
    assert_eq!(run(Feed::Bytes), whole, "byte by byte");
    whole
}

fn reply(s: &str) -> Reply {
    let text = format!("{s}\r\n");
    reply::parse(text.as_bytes()).unwrap().unwrap().0
}

fn replies(list: &[&str]) -> Vec<Reply> {
    list.iter().map(|s| reply(s)).collect()
}

fn txn(recipients: &[&str], body: &[u8]) -> Transaction {
    Transaction {
        reverse_path: "a@x.example".into(),
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
        body: body.into(),
        eight_bit: false,
        smtputf8: false,
        dsn: Dsn::default(),
    }
}

fn send(t: &Transaction) -> Action {
    Action::Send(t.clone())
}

const BODY: &[u8] = b"Subject: hi\r\n\r\nHello\r\n";
const GREETING: &str = "220 mx.example ESMTP\r\n";
const EHLO: &str = "EHLO relay.example\r\n";
const EHLO_PLAIN: &str = "250-mx.example\r\n250-SIZE 1000\r\n250 8BITMIME\r\n";
const EHLO_PIPE: &str = "250-mx.example hello\r\n250-pipelining\r\n250-Size 1000\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 SMTPUTF8\r\n";

/// Greeting and EHLO with the given extensions; then `Ready`.
fn hello(ehlo_reply: &str) -> Vec<Step> {
    vec![
        w(""),
        Step::Waiting(Some(Wait::Command)),
        r(GREETING),
        w(EHLO),
        r(ehlo_reply),
    ]
}

fn script(ehlo_reply: &str, rest: Vec<Step>) -> Vec<Step> {
    let mut steps = hello(ehlo_reply);
    steps.extend(rest);
    steps
}

#[test]
fn plain_transaction_without_pipelining() {
    let t = txn(&["b@y.example", "c@y.example"], BODY);
    let steps = script(
        EHLO_PLAIN,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=22\r\n"),
            Step::Waiting(Some(Wait::Command)),
            r("250 2.1.0 Ok\r\n"),
            w("RCPT TO:<b@y.example>\r\n"),
            r("250 2.1.5 Ok\r\n"),
            w("RCPT TO:<c@y.example>\r\n"),
            r("250 2.1.5 Ok\r\n"),
            w("DATA\r\n"),
            Step::Waiting(Some(Wait::DataInit)),
            r("354 End data with <CR><LF>.<CR><LF>\r\n"),
            w("Subject: hi\r\n\r\nHello\r\n.\r\n"),
            Step::Waiting(Some(Wait::DataDone)),
            r("250 2.0.0 Ok: queued as 1234\r\n"),
            Step::Waiting(None),
        ],
    );
    let queued = reply("250 2.0.0 Ok: queued as 1234");
    assert_eq!(
        dialogue(&steps, &[send(&t)]),
        [
            Event::Ready,
            Event::Finished(vec![queued.clone(), queued]),
            Event::Ready
        ]
    );
}

#[test]
fn extensions_from_ehlo() {
    let ext = |s: &str| Extensions::from_ehlo(&reply::parse(s.as_bytes()).unwrap().unwrap().0);
    assert_eq!(
        ext(EHLO_PIPE),
        Extensions {
            pipelining: true,
            size: Some(1000),
            eight_bit_mime: true,
            smtputf8: true,
            starttls: true,
            chunking: false,
            dsn: false,
            auth_plain: false,
            auth_login: false,
        }
    );
    let auth = ext("250-mx\r\n250 AUTH LOGIN PLAIN CRAM-MD5\r\n");
    assert!(auth.auth_plain && auth.auth_login);
    let old = ext("250-mx\r\n250 AUTH=LOGIN\r\n");
    assert!(old.auth_login && !old.auth_plain);
    assert!(ext("250-mx\r\n250 chunking\r\n").chunking);
    assert_eq!(ext("250-mx\r\n250 SIZE\r\n").size, Some(0));
    assert_eq!(ext("250-mx\r\n250 size x\r\n").size, Some(0));
    // The first line is the greeting, whatever it says.
    assert_eq!(ext("250 PIPELINING\r\n"), Extensions::default());
    assert_eq!(ext("250-mx\r\n250 PIPELININGX\r\n"), Extensions::default());
}

#[test]
fn pipelined_in_one_write_with_one_recipient_refused() {
    let t = txn(&["b@y.example", "c@y.example"], BODY);
    let steps = script(
        EHLO_PIPE,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=22\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n"),
            Step::Waiting(Some(Wait::Command)),
            r("250 2.1.0 Ok\r\n550-5.1.1 <b@y.example>: no such user\r\n550 5.1.1 try another\r\n250 2.1.5 Ok\r\n354 go\r\n"),
            w("Subject: hi\r\n\r\nHello\r\n.\r\n"),
            r("250 2.0.0 queued\r\n"),
        ],
    );
    let events = dialogue(&steps, &[send(&t)]);
    let refused = reply("550 5.1.1 <b@y.example>: no such user try another");
    assert_eq!(refused.lines.len(), 1);
    assert_eq!(
        events,
        [
            Event::Ready,
            Event::Finished(vec![
                reply("550-5.1.1 <b@y.example>: no such user\r\n550 5.1.1 try another"),
                reply("250 2.0.0 queued")
            ]),
            Event::Ready
        ]
    );
    let Event::Finished(got) = &events[1] else {
        unreachable!()
    };
    assert_eq!(
        got[0].to_string(),
        "550 5.1.1 <b@y.example>: no such user try another"
    );
}

#[test]
fn waiting_for_pipelined_replies() {
    let t = txn(&["b@y.example"], BODY);
    let steps = script(
        EHLO_PIPE,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=22\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"),
            Step::Waiting(Some(Wait::Command)),
            r("250 ok\r\n250 ok\r\n"),
            Step::Waiting(Some(Wait::DataInit)),
            r("354 go\r\n"),
            w("Subject: hi\r\n\r\nHello\r\n.\r\n"),
            Step::Waiting(Some(Wait::DataDone)),
            r("250 ok\r\n"),
            Step::Waiting(None),
        ],
    );
    dialogue(&steps, &[send(&t)]);
}

#[test]
fn all_recipients_refused() {
    let t = txn(&["b@y.example", "c@y.example"], BODY);
    let want = |rset: &str| {
        vec![
            Event::Ready,
            Event::Finished(replies(&["550 5.1.1 no", "450 4.2.1 later"])),
            Event::Ready,
        ]
        .into_iter()
        .take(if rset.starts_with('2') { 3 } else { 2 })
        .collect::<Vec<_>>()
    };
    // Pipelined: the DATA reply is consumed, no body is sent.
    let steps = script(
        EHLO_PIPE,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=22\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n"),
            r("250 ok\r\n550 5.1.1 no\r\n450 4.2.1 later\r\n554 5.5.1 Error: no valid recipients\r\n"),
            w("RSET\r\n"),
            Step::Waiting(Some(Wait::Command)),
            r("250 2.0.0 Ok\r\n"),
            Step::Waiting(None),
        ],
    );
    assert_eq!(dialogue(&steps, &[send(&t)]), want("250"));
    // Not pipelined: DATA is not sent.
    let steps = script(
        EHLO_PLAIN,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=22\r\n"),
            r("250 ok\r\n"),
            w("RCPT TO:<b@y.example>\r\n"),
            r("550 5.1.1 no\r\n"),
            w("RCPT TO:<c@y.example>\r\n"),
            r("450 4.2.1 later\r\n"),
            w("RSET\r\n"),
            r("250 2.0.0 Ok\r\n"),
        ],
    );
    assert_eq!(dialogue(&steps, &[send(&t)]), want("250"));
    // A server that says 354 anyway gets an empty message, then RSET.
    let steps = script(
        EHLO_PIPE,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=22\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n"),
            r("250 ok\r\n550 5.1.1 no\r\n450 4.2.1 later\r\n354 go\r\n"),
            w(".\r\n"),
            r("554 5.5.1 no recipients\r\n"),
            w("RSET\r\n"),
            r("250 2.0.0 Ok\r\n"),
        ],
    );
    assert_eq!(dialogue(&steps, &[send(&t)]), want("250"));
    // A refused RSET ends the connection; the outcomes are already out.
    let steps = script(
        EHLO_PLAIN,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=22\r\n"),
            r("250 ok\r\n"),
            w("RCPT TO:<b@y.example>\r\n"),
            r("550 5.1.1 no\r\n"),
            w("RCPT TO:<c@y.example>\r\n"),
            r("450 4.2.1 later\r\n"),
            w("RSET\r\n"),
            r("502 5.5.1 no RSET for you\r\n"),
            Step::Waiting(None),
        ],
    );
    let mut events = want("5");
    events.push(Event::Failed {
        reply: reply("502 5.5.1 no RSET for you"),
        recipients: None,
    });
    assert_eq!(dialogue(&steps, &[send(&t)]), events);
}

#[test]
fn mail_refused() {
    let t = txn(&["b@y.example", "c@y.example"], BODY);
    let finished = Event::Finished(replies(&["451 4.3.0 try later", "451 4.3.0 try later"]));
    let steps = script(
        EHLO_PLAIN,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=22\r\n"),
            r("451 4.3.0 try later\r\n"),
            w("RSET\r\n"),
            r("250 ok\r\n"),
        ],
    );
    assert_eq!(
        dialogue(&steps, &[send(&t)]),
        [Event::Ready, finished.clone(), Event::Ready]
    );
    // Pipelined: RCPT and DATA replies (even odd ones) are consumed first.
    let steps = script(
        EHLO_PIPE,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=22\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n"),
            r("451 4.3.0 try later\r\n503 5.5.1 need MAIL\r\n250 ok?\r\n503 5.5.1 need RCPT\r\n"),
            w("RSET\r\n"),
            r("250 ok\r\n"),
        ],
    );
    assert_eq!(
        dialogue(&steps, &[send(&t)]),
        [Event::Ready, finished, Event::Ready]
    );
}

#[test]
fn final_reply_after_the_dot() {
    for (final_reply, code) in [
        ("250 2.0.0 queued", 250),
        ("452 4.3.1 insufficient storage", 452),
        ("554-5.7.1 spam\r\n554 5.7.1 go away", 554),
    ] {
        let t = txn(&["b@y.example", "c@y.example", "d@y.example"], BODY);
        let steps = script(
            EHLO_PIPE,
            vec![
                w("MAIL FROM:<a@x.example> SIZE=22\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nRCPT TO:<d@y.example>\r\nDATA\r\n"),
                r("250 ok\r\n250 ok\r\n551 5.1.6 moved\r\n250 ok\r\n354 go\r\n"),
                w("Subject: hi\r\n\r\nHello\r\n.\r\n"),
                r(format!("{final_reply}\r\n")),
            ],
        );
        let last = reply(final_reply);
        assert_eq!(last.code, code);
        assert_eq!(
            dialogue(&steps, &[send(&t)]),
            [
                Event::Ready,
                Event::Finished(vec![last.clone(), reply("551 5.1.6 moved"), last]),
                Event::Ready
            ],
            "{final_reply}"
        );
    }
}

#[test]
fn data_refused() {
    let t = txn(&["b@y.example", "c@y.example"], BODY);
    let steps = script(
        EHLO_PLAIN,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=22\r\n"),
            r("250 ok\r\n"),
            w("RCPT TO:<b@y.example>\r\n"),
            r("250 ok\r\n"),
            w("RCPT TO:<c@y.example>\r\n"),
            r("550 5.1.1 no\r\n"),
            w("DATA\r\n"),
            r("451 4.3.0 not now\r\n"),
            w("RSET\r\n"),
            r("250 ok\r\n"),
        ],
    );
    assert_eq!(
        dialogue(&steps, &[send(&t)]),
        [
            Event::Ready,
            Event::Finished(replies(&["451 4.3.0 not now", "550 5.1.1 no"])),
            Event::Ready
        ]
    );
}

#[test]
fn helo_fallback() {
    let mut t = txn(&["b@y.example"], BODY);
    t.eight_bit = true;
    for refusal in [
        "502 5.5.1 command not implemented",
        "500 what?",
        "550 no ESMTP",
    ] {
        let steps = vec![
            r(GREETING),
            w(EHLO),
            r(format!("{refusal}\r\n")),
            w("HELO relay.example\r\n"),
            Step::Waiting(Some(Wait::Command)),
            r("250 mx.example\r\n"),
            // No SIZE, no BODY, one command at a time.
            w("MAIL FROM:<a@x.example>\r\n"),
            r("250 ok\r\n"),
            w("RCPT TO:<b@y.example>\r\n"),
            r("250 ok\r\n"),
            w("DATA\r\n"),
            r("354 go\r\n"),
            w("Subject: hi\r\n\r\nHello\r\n.\r\n"),
            r("250 ok\r\n"),
        ];
        assert_eq!(
            dialogue(&steps, &[send(&t)]),
            [
                Event::Ready,
                Event::Finished(replies(&["250 ok"])),
                Event::Ready
            ]
        );
    }
    // A 4xx to EHLO, or a refused HELO, ends it.
    let steps = vec![r(GREETING), w(EHLO), r("451 4.3.0 busy\r\n")];
    assert_eq!(
        dialogue(&steps, &[]),
        [Event::Failed {
            reply: reply("451 4.3.0 busy"),
            recipients: None
        }]
    );
    let steps = vec![
        r(GREETING),
        w(EHLO),
        r("502 no\r\n"),
        w("HELO relay.example\r\n"),
        r("550 5.7.1 not you\r\n"),
        Step::Waiting(None),
    ];
    assert_eq!(
        dialogue(&steps, &[]),
        [Event::Failed {
            reply: reply("550 5.7.1 not you"),
            recipients: None
        }]
    );
}

#[test]
fn size_limit_refused_locally() {
    let big = txn(&["b@y.example", "c@y.example"], &[b'x'; 1001]);
    let fits = txn(&["b@y.example"], &[b'x'; 1000]);
    let steps = script(
        EHLO_PLAIN,
        vec![
            // Nothing written for the big one; the next goes ahead.
            w("MAIL FROM:<a@x.example> SIZE=1000\r\n"),
            r("250 ok\r\n"),
            w("RCPT TO:<b@y.example>\r\n"),
            r("250 ok\r\n"),
            w("DATA\r\n"),
            r("354 go\r\n"),
            w([&[b'x'; 1000][..], b"\r\n.\r\n"].concat()),
            r("250 ok\r\n"),
        ],
    );
    let events = dialogue(&steps, &[send(&big), send(&fits)]);
    let Event::Finished(refused) = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[0], refused[1]);
    assert_eq!(
        (refused[0].code, refused[0].status()),
        (552, "5.3.4".into())
    );
    assert_eq!(
        &events[2..],
        [
            Event::Ready,
            Event::Finished(replies(&["250 ok"])),
            Event::Ready
        ]
    );
    // SIZE 0: offered, no limit.
    let steps = script(
        "250-mx\r\n250 SIZE 0\r\n",
        vec![
            w("MAIL FROM:<a@x.example> SIZE=1001\r\n"),
            r("451 4.3.0 later\r\n"),
            w("RSET\r\n"),
            r("250 ok\r\n"),
        ],
    );
    dialogue(&steps, &[send(&big)]);
}

#[test]
fn smtputf8_and_8bitmime_parameters() {
    let mut t = txn(&["b@y.example"], BODY);
    t.smtputf8 = true;
    t.eight_bit = true;
    // Not offered: refused without a word to the server.
    let steps = script(EHLO_PLAIN, vec![w("")]);
    let events = dialogue(&steps, &[send(&t)]);
    let Event::Finished(refused) = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(
        (refused[0].code, refused[0].status()),
        (553, "5.6.7".into())
    );
    assert_eq!(events.len(), 3);
    // Offered.
    let steps = script(
        EHLO_PIPE,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=22 BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"),
            r("250 ok\r\n250 ok\r\n354 go\r\n"),
            w("Subject: hi\r\n\r\nHello\r\n.\r\n"),
            r("250 ok\r\n"),
        ],
    );
    dialogue(&steps, &[send(&t)]);
    // 8-bit without 8BITMIME offered: no BODY parameter.
    t.smtputf8 = false;
    let steps = script(
        "250-mx\r\n250 PIPELINING\r\n",
        vec![
            w("MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"),
            r("250 ok\r\n250 ok\r\n354 go\r\n"),
            w("Subject: hi\r\n\r\nHello\r\n.\r\n"),
            r("250 ok\r\n"),
        ],
    );
    dialogue(&steps, &[send(&t)]);
}

#[test]
fn two_transactions_then_quit() {
    let one = txn(&["b@y.example"], b"one\r\n");
    let mut two = txn(&["c@z.example"], b"two");
    two.reverse_path = String::new();
    let steps = script(
        EHLO_PIPE,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=5\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"),
            r("250 ok\r\n250 ok\r\n354 go\r\n"),
            w("one\r\n.\r\n"),
            r("250 one\r\n"),
            w("MAIL FROM:<> SIZE=3\r\nRCPT TO:<c@z.example>\r\nDATA\r\n"),
            r("250 ok\r\n250 ok\r\n354 go\r\n"),
            w("two\r\n.\r\n"),
            r("250 two\r\n"),
            w("QUIT\r\n"),
            Step::Waiting(Some(Wait::Command)),
            r("221 2.0.0 Bye\r\n"),
            Step::Waiting(None),
        ],
    );
    assert_eq!(
        dialogue(&steps, &[send(&one), send(&two), Action::Quit]),
        [
            Event::Ready,
            Event::Finished(replies(&["250 one"])),
            Event::Ready,
            Event::Finished(replies(&["250 two"])),
            Event::Ready,
            Event::Closed
        ]
    );
}

#[test]
fn quit_answered_by_eof_or_anything() {
    for step in [
        Step::Fail(Reply::local(421, "4.4.2", "connection closed"), None),
        r("500 whatever\r\n"),
        r("garbage\r\n"),
    ] {
        let steps = script(EHLO_PLAIN, vec![w("QUIT\r\n"), step]);
        assert_eq!(
            dialogue(&steps, &[Action::Quit]),
            [Event::Ready, Event::Closed]
        );
    }
}

#[test]
fn greeting_refused() {
    let steps = vec![
        r("554-5.3.2 no service\r\n554 5.3.2 here\r\n"),
        w("QUIT\r\n"),
        Step::Waiting(None),
    ];
    assert_eq!(
        dialogue(&steps, &[]),
        [Event::Failed {
            reply: reply("554-5.3.2 no service\r\n554 5.3.2 here"),
            recipients: None
        }]
    );
    // Nothing sent after other refusals; a non-refusal is a protocol error.
    for (greeting, code) in [("421 4.3.2 busy", 421), ("450 later", 450), ("250 hi", 451)] {
        let steps = vec![r(format!("{greeting}\r\n")), Step::Waiting(None)];
        let events = dialogue(&steps, &[]);
        let [Event::Failed {
            reply,
            recipients: None,
        }] = events.as_slice()
        else {
            panic!("{events:?}")
        };
        assert_eq!(reply.code, code, "{greeting}");
    }
}

#[test]
fn reply_421_mid_transaction() {
    let t = txn(&["b@y.example", "c@y.example", "d@y.example"], BODY);
    let steps = script(
        EHLO_PIPE,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=22\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nRCPT TO:<d@y.example>\r\nDATA\r\n"),
            r("250 ok\r\n550 5.1.1 no\r\n250 ok\r\n421 4.3.2 shutting down\r\n"),
            Step::Waiting(None),
        ],
    );
    let down = reply("421 4.3.2 shutting down");
    assert_eq!(
        dialogue(&steps, &[send(&t)]),
        [
            Event::Ready,
            Event::Failed {
                reply: down.clone(),
                recipients: Some(vec![reply("550 5.1.1 no"), down.clone(), down])
            }
        ]
    );
    // After the dot; and between transactions.
    let steps = script(
        EHLO_PIPE,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=22\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nRCPT TO:<d@y.example>\r\nDATA\r\n"),
            r("250 ok\r\n250 ok\r\n450 4.2.2 full\r\n250 ok\r\n354 go\r\n"),
            w("Subject: hi\r\n\r\nHello\r\n.\r\n"),
            r("421 4.4.2 timeout\r\n"),
        ],
    );
    let timeout = reply("421 4.4.2 timeout");
    assert_eq!(
        dialogue(&steps, &[send(&t)]),
        [
            Event::Ready,
            Event::Failed {
                reply: timeout.clone(),
                recipients: Some(vec![timeout.clone(), reply("450 4.2.2 full"), timeout])
            }
        ]
    );
    let steps = script(EHLO_PLAIN, vec![r("421 4.4.2 idle too long\r\n")]);
    assert_eq!(
        dialogue(&steps, &[]),
        [
            Event::Ready,
            Event::Failed {
                reply: reply("421 4.4.2 idle too long"),
                recipients: None
            }
        ]
    );
}

#[test]
fn send_on_a_ready_that_went_stale() {
    let t = txn(&["b@y.example"], BODY);
    let steps = vec![
        r(GREETING),
        w(EHLO),
        r("250 mx\r\n421 4.3.2 bye\r\n"),
        Step::Waiting(None),
    ];
    // Only in one read: split, the MAIL would go out before the 421.
    let mut driver = Driver::new(&[send(&t)], usize::MAX);
    driver.play(&steps, Feed::Whole);
    let events = driver.events;
    let [Event::Ready, Event::Failed {
        reply: bye,
        recipients: None,
    }, Event::Finished(got)] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert_eq!(bye.code, 421);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].code, got[0].status()), (451, "4.4.2".into()));
}

#[test]
fn garbage_and_unexpected_replies() {
    let t = txn(&["b@y.example", "c@y.example"], BODY);
    let steps = script(
        EHLO_PIPE,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=22\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n"),
            // Whatever follows the garbage is not looked at.
            r("250 ok\r\n552 5.2.2 full\r\nHTTP/1.1 400 Bad Request\r\n250 ok\r\n"),
            Step::Waiting(None),
        ],
    );
    let events = dialogue(&steps, &[send(&t)]);
    let [Event::Ready, Event::Failed {
        reply: bad,
        recipients: Some(got),
    }] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert_eq!((bad.code, bad.status()), (451, "4.5.0".into()));
    assert!(bad.to_string().contains("invalid reply"), "{bad}");
    assert_eq!(got, &[reply("552 5.2.2 full"), bad.clone()]);

    // A reply nobody asked for, when idle.
    let steps = script(EHLO_PLAIN, vec![r("250 surprise\r\n")]);
    let events = dialogue(&steps, &[]);
    let [Event::Ready, Event::Failed {
        reply: bad,
        recipients: None,
    }] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert_eq!(
        bad.to_string(),
        "451 4.5.0 unexpected reply from the next hop: 250 surprise"
    );

    // 2xx to DATA: not a licence to skip the body.
    let steps = script(
        EHLO_PLAIN,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=22\r\n"),
            r("250 ok\r\n"),
            w("RCPT TO:<b@y.example>\r\n"),
            r("250 ok\r\n"),
            w("RCPT TO:<c@y.example>\r\n"),
            r("250 ok\r\n"),
            w("DATA\r\n"),
            r("250 sure\r\n"),
        ],
    );
    let events = dialogue(&steps, &[send(&t)]);
    let Event::Failed {
        reply: bad,
        recipients: Some(got),
    } = &events[1]
    else {
        panic!("{events:?}")
    };
    assert_eq!(got, &[bad.clone(), bad.clone()]);
    assert_eq!(bad.class(), Class::Transient);
}

#[test]
fn fail_keeps_final_replies() {
    let t = txn(&["b@y.example", "c@y.example"], BODY);
    let timeout = Reply::local(451, "4.4.2", "timeout waiting for the DATA reply");
    let steps = script(
        EHLO_PLAIN,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=22\r\n"),
            r("250 ok\r\n"),
            w("RCPT TO:<b@y.example>\r\n"),
            r("550 5.1.1 no\r\n"),
            w("RCPT TO:<c@y.example>\r\n"),
            r("250 ok\r\n"),
            w("DATA\r\n"),
            Step::Fail(
                timeout.clone(),
                Some(vec![reply("550 5.1.1 no"), timeout.clone()]),
            ),
            Step::Waiting(None),
            // Closed: nothing more is read or written.
            r("354 late\r\n"),
            Step::Fail(timeout.clone(), None),
        ],
    );
    assert_eq!(dialogue(&steps, &[send(&t)]), [Event::Ready]);
    // Idle: nothing in flight.
    let steps = script(EHLO_PLAIN, vec![Step::Fail(timeout, None)]);
    assert_eq!(dialogue(&steps, &[]), [Event::Ready]);
}

#[test]
fn quit_outside_ready_abandons() {
    let t = txn(&["b@y.example"], BODY);
    let mut driver = Driver::new(&[send(&t)], usize::MAX);
    driver.play(
        &script(
            EHLO_PIPE,
            vec![w(
                "MAIL FROM:<a@x.example> SIZE=22\r\nRCPT TO:<b@y.example>\r\nDATA\r\n",
            )],
        ),
        Feed::Whole,
    );
    driver.client.quit();
    assert!(driver.client.output().is_empty());
    let abandoned = Reply::local(451, "4.3.2", "delivery abandoned");
    assert_eq!(
        driver.client.poll_event(),
        Some(Event::Failed {
            reply: abandoned.clone(),
            recipients: Some(vec![abandoned])
        })
    );
    assert_eq!(driver.client.poll_event(), Some(Event::Closed));
    assert_eq!(driver.client.waiting(), None);
}

/// The body as the next hop must see it: CRLF for every line end, dots
/// stuffed, a final CRLF, the end line.
fn model(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut line_start = true;
    let mut i = 0;
    while i < body.len() {
        if line_start && body[i] == b'.' {
            out.push(b'.');
        }
        line_start = false;
        match body[i] {
            b'\r' if body.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                line_start = true;
                i += 2;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                line_start = true;
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    if !line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The body with every line end made CRLF and a final one added: what
/// the next hop must store.
fn normalised(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                i += if body[i..].starts_with(b"\r\n") { 2 } else { 1 };
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Checks what the next hop would see: no bare CR or LF, the end line
/// exactly once and at the end, and what the inbound DATA reader makes of
/// it is the normalised body.
fn check_wire(wire: &[u8], body: &[u8]) {
    for (i, &b) in wire.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(wire.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            b'\n' => assert!(i > 0 && wire[i - 1] == b'\r', "bare LF at {i}"),
            _ => {}
        }
    }
    assert!(wire.ends_with(b"\r\n.\r\n") || wire == b".\r\n");
    assert!(memchr::memmem::find_iter(wire, b"\r\n.\r\n").count() <= 1);
    let mut reader = DataReader::new(usize::MAX, BareLineEnds::Reject);
    let mut seen = Vec::new();
    assert_eq!(reader.feed(wire, &mut seen), (wire.len(), true));
    assert!(seen == normalised(body), "unstuffed body differs");
}

/// Sends `body` in a one-recipient transaction, writing `write_size`
/// bytes at a time; returns the bytes after the 354.
fn send_body(body: &[u8], write_size: usize) -> Vec<u8> {
    let t = txn(&["b@y.example"], body);
    let mut driver = Driver::new(&[send(&t)], write_size);
    driver.play(
        &script(
            "250-mx\r\n250 PIPELINING\r\n",
            vec![
                w("MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"),
                r("250 ok\r\n250 ok\r\n"),
            ],
        ),
        Feed::Whole,
    );
    driver.read(b"354 go\r\n");
    let wire = driver.written[driver.mark..].to_vec();
    assert_eq!(driver.client.waiting(), Some(Wait::DataDone));
    driver.read(b"250 ok\r\n");
    assert_eq!(
        driver.events[1..],
        [Event::Finished(replies(&["250 ok"])), Event::Ready]
    );
    wire
}

#[test]
fn dot_stuffing_and_line_ends() {
    #[rustfmt::skip]
    let cases: &[(&[u8], &[u8])] = &[
        (b".a\r\n..b\r\nc\nd\re\r\n.\r\n", b"..a\r\n...b\r\nc\r\nd\r\ne\r\n..\r\n.\r\n"),
        (b"", b".\r\n"),
        (b"abc", b"abc\r\n.\r\n"),
        (b"a\r", b"a\r\n.\r\n"),
        (b"a\n", b"a\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b"\r\n", b"\r\n.\r\n"),
        (b"\n.\n", b"\r\n..\r\n.\r\n"),
        (b"a\r\r\n", b"a\r\n\r\n.\r\n"),
        (b"a\n\r", b"a\r\n\r\n.\r\n"),
        (b"a\r\n.", b"a\r\n..\r\n.\r\n"),
        (b"a.\r\n .\r\n", b"a.\r\n .\r\n.\r\n"),
        (b"x\r\n.\r\nMAIL FROM:<evil>\r\n", b"x\r\n..\r\nMAIL FROM:<evil>\r\n.\r\n"),
        (b"x\n.\nMAIL FROM:<evil>\n", b"x\r\n..\r\nMAIL FROM:<evil>\r\n.\r\n"),
        (b"x\r.\ry", b"x\r\n..\r\ny\r\n.\r\n"),
    ];
    for &(body, want) in cases {
        let shown = String::from_utf8_lossy(body);
        assert_eq!(model(body), want, "model of {shown:?}");
        for write_size in [usize::MAX, 1, 3] {
            let wire = send_body(body, write_size);
            assert_eq!(
                String::from_utf8_lossy(&wire),
                String::from_utf8_lossy(want),
                "{shown:?}"
            );
            check_wire(&wire, body);
        }
    }
}

#[test]
fn stuffing_matches_model_exhaustively() {
    const ALPHABET: &[u8] = b".\r\na";
    for len in 0..=6u32 {
        for mut code in 0..ALPHABET.len().pow(len) {
            let mut body = Vec::new();
            for _ in 0..len {
                body.push(ALPHABET[code % ALPHABET.len()]);
                code /= ALPHABET.len();
            }
            // Tiny limits put every edge at a piece boundary.
            for limit in [1, 2, 3, 1 << 16] {
                let mut stuffer = Stuffer::new();
                let mut wire = Vec::new();
                let mut out = Vec::new();
                while !stuffer.done {
                    stuffer.fill(&body, &mut out, limit);
                    // One more input byte than fits (4 out at most), and the end line.
                    assert!(out.len() <= limit + 9);
                    wire.append(&mut out);
                }
                assert_eq!(wire, model(&body), "{body:?} limit {limit}");
                check_wire(&wire, &body);
            }
        }
    }
}

#[test]
fn large_body_in_bounded_pieces() {
    // Some 6 MiB: ordinary lines, dots, bare LF and CR, one 1 MiB line,
    // and no final line end.
    let mut body = Vec::new();
    let mut n = 0u32;
    while body.len() < 5 << 20 {
        n += 1;
        match n % 7 {
            0 => body.extend_from_slice(b".starts with a dot\r\n"),
            1 => body.extend_from_slice(b"bare lf\n"),
            2 => body.extend_from_slice(b"bare cr\r"),
            3 => body.extend_from_slice(b"..two dots\n"),
            4 => body.extend_from_slice(b".\r\n"),
            _ => body
                .extend_from_slice(b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n"),
        }
        if n == 5000 {
            body.extend(std::iter::repeat_n(b'y', 1 << 20));
        }
    }
    body.extend_from_slice(b"the end.");

    let t = txn(&["b@y.example"], &body);
    let mut driver = Driver::new(&[send(&t)], 7_000);
    driver.play(
        &script(
            "250-mx\r\n250 PIPELINING\r\n",
            vec![
                w("MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"),
                r("250 ok\r\n250 ok\r\n"),
            ],
        ),
        Feed::Whole,
    );
    // Written in pieces by hand, to watch the buffer.
    let mut client = driver.client;
    assert_eq!(client.receive(b"354 go\r\n"), 8);
    let mut wire = Vec::new();
    let mut writes = 0;
    loop {
        let waiting = client.waiting();
        let out = client.output();
        if out.is_empty() {
            break;
        }
        assert_eq!(waiting, Some(Wait::DataBlock));
        assert!(out.len() <= HIGH_WATER + 4, "{}", out.len());
        let n = out.len().min(10_000);
        wire.extend(out.drain(..n));
        writes += 1;
    }
    assert!(writes > 500, "{writes}");
    assert_eq!(client.waiting(), Some(Wait::DataDone));
    assert!(wire.ends_with(b"the end.\r\n.\r\n"));
    assert_eq!(wire, model(&body));
    check_wire(&wire, &body);
    assert_eq!(client.receive(b"250 ok\r\n"), 8);
    assert_eq!(
        client.poll_event(),
        Some(Event::Finished(replies(&["250 ok"])))
    );
}

#[test]
fn reply_while_data_is_still_being_written() {
    let t = txn(&["b@y.example"], &vec![b'z'; 1 << 20]);
    let mut driver = Driver::new(&[send(&t)], usize::MAX);
    driver.play(
        &script(
            "250-mx\r\n250 PIPELINING\r\n",
            vec![
                w("MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"),
                r("250 ok\r\n250 ok\r\n"),
            ],
        ),
        Feed::Whole,
    );
    let mut client = driver.client;
    client.receive(b"354 go\r\n");
    client.output().drain(..1000);
    assert_eq!(client.waiting(), Some(Wait::DataBlock));
    assert_eq!(client.receive(b"552 5.3.4 too big\r\n"), 19);
    let Some(Event::Failed {
        reply,
        recipients: Some(got),
    }) = client.poll_event()
    else {
        panic!()
    };
    assert_eq!(reply.class(), Class::Transient);
    assert_eq!(got, [reply]);
    assert_eq!(client.waiting(), None);
    // Closed: input is swallowed.
    assert_eq!(client.receive(b"221 x"), 5);
}

#[test]
fn line_breaks_in_addresses_never_reach_the_wire() {
    let t = txn(&["b@y.example\r\nRSET"], BODY);
    let steps = script(EHLO_PIPE, vec![w("")]);
    let events = dialogue(&steps, &[send(&t)]);
    let Event::Finished(got) = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(got[0].code, 501);
}

#[test]
fn a_trickled_reply_is_found() {
    // Fed the way the loop does, a byte at a time, with the unconsumed
    // rest fed again: the line end in the last byte must still be seen.
    let mut client = Client::new("relay.example");
    let mut held = Vec::new();
    for &b in b"220-mx.example\r\n220 ESMTP\r\n" {
        held.push(b);
        let used = client.receive(&held);
        held.drain(..used);
    }
    assert!(held.is_empty());
    assert_eq!(client.output(), b"EHLO relay.example\r\n");
    // A very long unterminated reply is refused once over the limit.
    let mut client = Client::new("relay.example");
    let mut held = b"220 ".to_vec();
    while client.poll_event().is_none() {
        held.extend_from_slice(&[b'x'; 1000]);
        let used = client.receive(&held);
        held.drain(..used);
        assert!(held.len() < 70_000);
    }
}

#[test]
fn next_transaction_pipelined_behind_the_dot() {
    let one = txn(&["b@y.example"], b"one\r\n");
    let mut two = txn(&["c@z.example", "d@z.example"], b"two\r\n");
    two.reverse_path = String::new();
    let steps = script(
        EHLO_PIPE,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=5\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"),
            r("250 ok\r\n250 ok\r\n354 go\r\n"),
            // One write: the dot, then the next envelope (RFC 2920 3.1).
            w("one\r\n.\r\nMAIL FROM:<> SIZE=5\r\nRCPT TO:<c@z.example>\r\nRCPT TO:<d@z.example>\r\nDATA\r\n"),
            Step::Waiting(Some(Wait::DataDone)),
            r("250 one\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n"),
            Step::Waiting(Some(Wait::DataInit)),
            r("354 go\r\n"),
            w("two\r\n.\r\n"),
            r("451 4.3.0 try later\r\n"),
            w("QUIT\r\n"),
            r("221 bye\r\n"),
        ],
    );
    assert_eq!(
        dialogue(&steps, &[send(&one), Action::SendNext(two), Action::Quit]),
        [
            Event::Ready,
            // No Ready in between: the next transaction was already sent.
            Event::Finished(replies(&["250 one"])),
            Event::Finished(replies(&["550 5.1.1 no", "451 4.3.0 try later"])),
            Event::Ready,
            Event::Closed
        ]
    );
}

#[test]
fn nothing_is_pipelined_without_pipelining_or_accepted_recipients() {
    let one = txn(&["b@y.example"], b"one\r\n");
    let two = txn(&["c@z.example"], b"two\r\n");
    // Without PIPELINING the next MAIL waits for the dot's reply.
    let steps = script(
        EHLO_PLAIN,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=5\r\n"),
            r("250 ok\r\n"),
            w("RCPT TO:<b@y.example>\r\n"),
            r("250 ok\r\n"),
            w("DATA\r\n"),
            r("354 go\r\n"),
            w("one\r\n.\r\n"),
            r("250 one\r\n"),
            w("MAIL FROM:<a@x.example> SIZE=5\r\n"),
        ],
    );
    let mut driver = Driver::new(&[send(&one), Action::SendNext(two.clone())], usize::MAX);
    driver.play(&steps, Feed::Whole);
    // A 354 with every recipient refused: the empty message's dot is
    // answered and an RSET follows before anything else goes out.
    let steps = script(
        EHLO_PIPE,
        vec![
            w("MAIL FROM:<a@x.example> SIZE=5\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"),
            r("250 ok\r\n550 5.1.1 no\r\n354 go\r\n"),
            w(".\r\n"),
            r("250 empty\r\n"),
            w("RSET\r\n"),
            r("250 ok\r\n"),
            w("MAIL FROM:<a@x.example> SIZE=5\r\nRCPT TO:<c@z.example>\r\nDATA\r\n"),
        ],
    );
    let mut driver = Driver::new(&[send(&one), Action::SendNext(two)], usize::MAX);
    driver.play(&steps, Feed::Whole);
}

#[test]
fn failure_before_the_dot_is_answered_reports_only_the_first() {
    let one = txn(&["b@y.example"], b"one\r\n");
    let two = txn(&["c@z.example"], b"two\r\n");
    let sent = || {
        vec![
            w("MAIL FROM:<a@x.example> SIZE=5\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"),
            r("250 ok\r\n250 ok\r\n354 go\r\n"),
            w("one\r\n.\r\nMAIL FROM:<a@x.example> SIZE=5\r\nRCPT TO:<c@z.example>\r\nDATA\r\n"),
        ]
    };
    // A 421 instead of the dot's reply.
    let mut steps = sent();
    steps.push(r("421 4.3.2 going down\r\n"));
    let down = reply("421 4.3.2 going down");
    assert_eq!(
        dialogue(
            &script(EHLO_PIPE, steps),
            &[send(&one), Action::SendNext(two.clone())]
        ),
        [
            Event::Ready,
            Event::Failed {
                reply: down.clone(),
                recipients: Some(vec![down])
            }
        ]
    );
    // The connection breaks: `fail` decides the first only.
    let lost = Reply::local(451, "4.4.2", "lost");
    let mut steps = sent();
    steps.push(Step::Fail(lost.clone(), Some(vec![lost])));
    dialogue(
        &script(EHLO_PIPE, steps),
        &[send(&one), Action::SendNext(two)],
    );
}

/// A client past its 354 with the next transaction queued behind the dot,
/// nothing of either written yet.
fn dot_and_next_unwritten() -> Client {
    let mut client = Client::new("relay.example");
    client.receive(format!("{GREETING}{EHLO_PIPE}").as_bytes());
    client.output().clear();
    assert_eq!(client.poll_event(), Some(Event::Ready));
    client.send(txn(&["b@y.example"], b"one\r\n"));
    client.output().clear();
    client.receive(b"250 ok\r\n250 ok\r\n354 go\r\n");
    assert!(client.may_send_next());
    client.send(txn(&["c@z.example"], b"two\r\n"));
    assert!(!client.may_send_next());
    assert_eq!(
        client.output(),
        b"one\r\n.\r\nMAIL FROM:<a@x.example> SIZE=5\r\nRCPT TO:<c@z.example>\r\nDATA\r\n"
    );
    client
}

#[test]
fn the_dot_is_answered_only_once_it_is_written() {
    // A reply before the dot is on the wire answers nothing we asked.
    let mut client = dot_and_next_unwritten();
    assert_eq!(client.waiting(), Some(Wait::DataBlock));
    client.receive(b"250 one\r\n");
    let Some(Event::Failed { reply, .. }) = client.poll_event() else {
        panic!("a reply before the dot was written was taken")
    };
    assert_eq!(reply.status(), "4.5.0");
    // The dot written, the next envelope not yet: the reply is the dot's.
    let mut client = dot_and_next_unwritten();
    client.output().drain(..b"one\r\n.\r\n".len());
    assert_eq!(client.waiting(), Some(Wait::DataDone));
    client.receive(b"250 one\r\n");
    assert_eq!(
        client.poll_event(),
        Some(Event::Finished(replies(&["250 one"])))
    );
    assert_eq!(client.poll_event(), None);
    assert_eq!(client.waiting(), Some(Wait::Command));
}

/// The body as `Body::Pieces`, handed over in pieces of `piece` bytes
/// whenever the client asks: the wire is the same as for the whole body.
fn send_in_pieces(body: &[u8], piece: usize) -> Vec<u8> {
    let mut client = Client::new("relay.example");
    client.receive(b"220 mx\r\n250-mx\r\n250 PIPELINING\r\n");
    assert_eq!(client.poll_event(), Some(Event::Ready));
    client.send(Transaction {
        reverse_path: "a@x.example".into(),
        recipients: vec!["b@y.example".into()],
        body: Body::Pieces {
            size: body.len() as u64,
        },
        eight_bit: false,
        smtputf8: false,
        dsn: Dsn::default(),
    });
    client.output().clear();
    assert!(!client.wants_body(), "no body before the 354");
    client.receive(b"250 ok\r\n250 ok\r\n354 go\r\n");
    let mut wire = Vec::new();
    let mut pieces = body.chunks(piece.max(1)).peekable();
    loop {
        if client.wants_body() {
            let next = pieces.next().unwrap_or(b"");
            client.push_body(next, pieces.peek().is_none());
            assert!(client.output().len() < LOW_WATER + 2 * piece + 9);
            continue;
        }
        let out = std::mem::take(client.output());
        if out.is_empty() {
            break;
        }
        wire.extend(out);
    }
    assert_eq!(client.waiting(), Some(Wait::DataDone));
    wire
}

#[test]
fn a_body_in_pieces_goes_out_as_the_whole_would() {
    const ALPHABET: &[u8] = b".\r\na";
    for len in 0..=6u32 {
        for mut code in 0..ALPHABET.len().pow(len) {
            let mut body = Vec::new();
            for _ in 0..len {
                body.push(ALPHABET[code % ALPHABET.len()]);
                code /= ALPHABET.len();
            }
            for piece in [1, 2, 3, 7] {
                let wire = send_in_pieces(&body, piece);
                assert_eq!(wire, model(&body), "{body:?} in pieces of {piece}");
            }
        }
    }
    let mut big = Vec::new();
    while big.len() < 1 << 20 {
        big.extend_from_slice(b"..dot\r\nbare\nline\rLorem ipsum dolor sit amet\r\n");
    }
    assert_eq!(send_in_pieces(&big, 65_536), model(&big));
    assert_eq!(send_in_pieces(&big, 65_537), model(&big));
}

/// A client that has greeted a server offering PIPELINING and CHUNKING.
fn chunking_client() -> Client {
    let mut client = Client::new("relay.example");
    client.receive(b"220 mx\r\n250-mx\r\n250-PIPELINING\r\n250-SIZE 100000000\r\n250 CHUNKING\r\n");
    assert_eq!(client.poll_event(), Some(Event::Ready));
    client.output().clear();
    client
}

/// Everything the client writes until it stops, answering nothing.
fn drain(client: &mut Client) -> Vec<u8> {
    let mut wire = Vec::new();
    loop {
        let out = std::mem::take(client.output());
        if out.is_empty() {
            return wire;
        }
        wire.extend(out);
    }
}

/// The body of a BDAT stream: chunk sizes checked, content joined.
fn unchunk(wire: &[u8]) -> (Vec<u8>, usize, bool) {
    let (mut body, mut chunks, mut last) = (Vec::new(), 0, false);
    let mut rest = wire;
    while !rest.is_empty() {
        let end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let line = std::str::from_utf8(&rest[..end]).unwrap();
        let mut words = line.split(' ');
        assert_eq!(words.next(), Some("BDAT"), "{line}");
        let n: usize = words.next().unwrap().parse().unwrap();
        assert!(!last, "a chunk after LAST");
        last = words.next() == Some("LAST");
        body.extend_from_slice(&rest[end + 2..end + 2 + n]);
        rest = &rest[end + 2 + n..];
        chunks += 1;
    }
    (body, chunks, last)
}

#[test]
fn bdat_to_a_chunking_server_without_stuffing_and_never_a_bare_line_end() {
    for (body, pieces) in [
        (b"Subject: x\r\n\r\n.dot\r\n..\r\n.\r\nend".to_vec(), false),
        (b"bare\nlf and bare\r cr\r".to_vec(), true),
        (Vec::new(), false),
        ([b"..line\r\n".as_slice(); 30_000].concat(), true),
    ] {
        let mut client = chunking_client();
        let size = body.len() as u64;
        client.send(Transaction {
            reverse_path: "a@x.example".into(),
            recipients: vec!["b@y.example".into(), "c@y.example".into()],
            body: if pieces {
                Body::Pieces { size }
            } else {
                body.clone().into()
            },
            eight_bit: false,
            smtputf8: false,
            dsn: Dsn::default(),
        });
        assert_eq!(
            drain(&mut client),
            b"MAIL FROM:<a@x.example> SIZE="
                .iter()
                .copied()
                .chain(size.to_string().into_bytes())
                .chain(
                    b"\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\n"
                        .iter()
                        .copied()
                )
                .collect::<Vec<u8>>(),
            "no chunk before the envelope is answered"
        );
        client.receive(b"250 ok\r\n250 ok\r\n550 no such user\r\n");
        let mut wire = Vec::new();
        let mut fed = body.chunks(7_000).peekable();
        loop {
            if client.wants_body() {
                let piece = fed.next().unwrap_or(b"");
                client.push_body(piece, fed.peek().is_none());
                continue;
            }
            let out = drain(&mut client);
            if out.is_empty() {
                break;
            }
            wire.extend(out);
        }
        let (sent, chunks, last) = unchunk(&wire);
        assert!(last, "ends with LAST");
        assert_eq!(
            sent,
            normalised(&body),
            "content as stored, line ends made CRLF"
        );
        for _ in 1..chunks {
            assert_eq!(client.waiting(), Some(Wait::DataDone));
            client.receive(b"250 2.0.0 chunk ok\r\n");
            assert_eq!(client.poll_event(), None);
        }
        client.receive(b"250 2.0.0 queued\r\n");
        assert_eq!(
            client.poll_event(),
            Some(Event::Finished(replies(&[
                "250 2.0.0 queued",
                "550 no such user"
            ])))
        );
        assert_eq!(client.poll_event(), Some(Event::Ready));
    }
}

#[test]
fn a_refused_middle_chunk_fails_the_transaction_and_stops_the_chunks() {
    let mut client = chunking_client();
    let body = vec![b'x'; 1 << 20];
    client.send(Transaction {
        reverse_path: "a@x.example".into(),
        recipients: vec!["b@y.example".into()],
        body: Body::Pieces {
            size: body.len() as u64 + 2,
        },
        eight_bit: false,
        smtputf8: false,
        dsn: Dsn::default(),
    });
    drain(&mut client);
    client.receive(b"250 ok\r\n250 ok\r\n");
    let mut pieces = body.chunks(65_536);
    assert!(client.wants_body());
    client.push_body(pieces.next().unwrap(), false);
    let first = drain(&mut client);
    assert_eq!(unchunk(&first).1, 1);
    // The server refuses the first chunk while the second is being sent.
    client.push_body(pieces.next().unwrap(), false);
    client.receive(b"552 5.3.4 too big\r\n");
    assert!(!client.wants_body(), "no chunk after a refusal");
    // The chunk already framed still goes out whole, then RSET follows
    // once its reply is in.
    let second = drain(&mut client);
    assert_eq!(unchunk(&second), (vec![b'x'; 65_536], 1, false));
    client.receive(b"503 5.5.1 no transaction\r\n");
    assert_eq!(
        client.poll_event(),
        Some(Event::Finished(replies(&["552 5.3.4 too big"])))
    );
    assert_eq!(drain(&mut client), b"RSET\r\n");
    client.receive(b"250 ok\r\n");
    assert_eq!(client.poll_event(), Some(Event::Ready));
}

// Outbound AUTH (RFC 4954) to a smarthost, only ever over TLS.

const SECRET: &str = "s3cret";
/// base64 of "\0relay-user\0s3cret".
const PLAIN_TOKEN: &str = "AHJlbGF5LXVzZXIAczNjcmV0";
const EHLO_TLS_AUTH: &str =
    "250-mx.example\r\n250-SIZE 1000\r\n250-STARTTLS\r\n250 AUTH LOGIN PLAIN\r\n";

fn auth_client(tls: TlsPolicy) -> Client {
    let mut client = Client::with_tls("relay.example", tls);
    client.set_auth("relay-user", &Secret::new(SECRET.to_string()));
    client
}

/// Greeting, EHLO in clear, STARTTLS, and the EHLO over TLS answered
/// with `after_tls`.
fn over_tls(after_tls: &str, rest: Vec<Step>) -> Vec<Step> {
    let mut steps = script(
        EHLO_TLS_AUTH,
        vec![
            w("STARTTLS\r\n"),
            r("220 2.0.0 Ready to start TLS\r\n"),
            w(EHLO),
            r(after_tls),
        ],
    );
    steps.extend(rest);
    steps
}

/// MAIL to the final dot and its 250, without pipelining.
fn plain_mail() -> Vec<Step> {
    vec![
        w("MAIL FROM:<a@x.example> SIZE=22\r\n"),
        r("250 2.1.0 Ok\r\n"),
        w("RCPT TO:<b@y.example>\r\n"),
        r("250 2.1.5 Ok\r\n"),
        w("DATA\r\n"),
        r("354 go\r\n"),
        w("Subject: hi\r\n\r\nHello\r\n.\r\n"),
        r("250 2.0.0 queued\r\n"),
    ]
}

#[test]
fn auth_plain_after_starttls_then_mail() {
    let t = txn(&["b@y.example"], BODY);
    let mut rest = vec![
        w(format!("AUTH PLAIN {PLAIN_TOKEN}\r\n")),
        Step::Waiting(Some(Wait::Command)),
        r("235 2.7.0 Authentication successful\r\n"),
    ];
    rest.extend(plain_mail());
    // Both offered: PLAIN, in one round trip.
    let steps = over_tls(
        "250-mx.example\r\n250-SIZE 1000\r\n250 AUTH LOGIN PLAIN\r\n",
        rest,
    );
    let events = dialogue_with(|| auth_client(TlsPolicy::Required), &steps, &[send(&t)]);
    assert_eq!(
        events,
        [
            Event::StartTls,
            Event::Ready,
            Event::Finished(replies(&["250 2.0.0 queued"])),
            Event::Ready
        ]
    );
}

#[test]
fn auth_login_when_only_login_is_offered() {
    let t = txn(&["b@y.example"], BODY);
    let mut rest = vec![
        w("AUTH LOGIN\r\n"),
        r("334 VXNlcm5hbWU6\r\n"),
        w("cmVsYXktdXNlcg==\r\n"),
        r("334 UGFzc3dvcmQ6\r\n"),
        w("czNjcmV0\r\n"),
        r("235 2.7.0 ok\r\n"),
    ];
    rest.extend(plain_mail());
    let steps = over_tls(
        "250-mx.example\r\n250-SIZE 1000\r\n250 AUTH LOGIN\r\n",
        rest,
    );
    let events = dialogue_with(|| auth_client(TlsPolicy::Required), &steps, &[send(&t)]);
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[2], Event::Finished(replies(&["250 2.0.0 queued"])));
}

/// The session failed with a 4xx (a deferral, never a bounce) saying `text`.
fn deferred_with(events: &[Event], text: &str) {
    let [.., Event::Failed { reply, recipients }] = events else {
        panic!("no failure: {events:?}");
    };
    assert_eq!(reply.class(), Class::Transient, "{reply}");
    assert!(reply.to_string().contains(text), "{reply}");
    assert_eq!(recipients, &None);
}

#[test]
fn auth_refused_defers_quoting_the_server() {
    let steps = over_tls(
        "250-mx.example\r\n250 AUTH PLAIN\r\n",
        vec![
            w(format!("AUTH PLAIN {PLAIN_TOKEN}\r\n")),
            r("535 5.7.8 Authentication credentials invalid\r\n"),
            w("QUIT\r\n"),
        ],
    );
    let events = dialogue_with(|| auth_client(TlsPolicy::Required), &steps, &[]);
    deferred_with(&events, "451 4.7.0 ");
    deferred_with(&events, "535 5.7.8 Authentication credentials invalid");
    // A LOGIN refused at the password: the same.
    let steps = over_tls(
        "250-mx.example\r\n250 AUTH LOGIN\r\n",
        vec![
            w("AUTH LOGIN\r\n"),
            r("334 VXNlcm5hbWU6\r\n"),
            w("cmVsYXktdXNlcg==\r\n"),
            r("334 UGFzc3dvcmQ6\r\n"),
            w("czNjcmV0\r\n"),
            r("454 4.7.0 Temporary authentication failure\r\n"),
            w("QUIT\r\n"),
        ],
    );
    let events = dialogue_with(|| auth_client(TlsPolicy::Required), &steps, &[]);
    deferred_with(&events, "454 4.7.0 Temporary authentication failure");
}

#[test]
fn auth_not_offered_defers() {
    let steps = over_tls("250-mx.example\r\n250 SIZE 1000\r\n", vec![w("QUIT\r\n")]);
    let events = dialogue_with(|| auth_client(TlsPolicy::Required), &steps, &[]);
    deferred_with(&events, "451 4.7.0 AUTH not offered");
}

#[test]
fn credentials_never_go_in_clear() {
    // No STARTTLS offered, AUTH is: no AUTH, the TLS requirement defers.
    let steps = script("250-mx.example\r\n250 AUTH PLAIN LOGIN\r\n", vec![]);
    let events = dialogue_with(|| auth_client(TlsPolicy::Required), &steps, &[]);
    deferred_with(&events, "451 4.7.10 ");
    // Even if asked for with no TLS at all (the config never allows it).
    let events = dialogue_with(|| auth_client(TlsPolicy::Off), &steps, &[]);
    deferred_with(&events, "451 4.7.10 AUTH needs TLS");
    // STARTTLS refused: no AUTH either.
    let steps = script(
        EHLO_TLS_AUTH,
        vec![w("STARTTLS\r\n"), r("454 4.7.0 TLS not available\r\n")],
    );
    let events = dialogue_with(|| auth_client(TlsPolicy::Required), &steps, &[]);
    deferred_with(&events, "454 4.7.0 TLS not available");
    // The password is not in the client's Debug either.
    assert!(!format!("{:?}", auth_client(TlsPolicy::Required)).contains(SECRET));
}

#[test]
fn implicit_tls_greets_then_auth_without_starttls() {
    let t = txn(&["b@y.example"], BODY);
    let mut rest = vec![
        w(format!("AUTH PLAIN {PLAIN_TOKEN}\r\n")),
        r("235 2.7.0 ok\r\n"),
    ];
    rest.extend(plain_mail());
    // Whatever the EHLO says, TLS is on: no STARTTLS.
    let steps = script(EHLO_TLS_AUTH, rest);
    let client = || {
        let mut client = auth_client(TlsPolicy::Required);
        client.set_implicit_tls();
        client
    };
    let events = dialogue_with(client, &steps, &[send(&t)]);
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0], Event::Ready);
}
