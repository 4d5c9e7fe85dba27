//! MTA-STS in the queue: cached policies through the `policies` view, a
//! failed fetch keeping the good one, and TLS results in `attempts`.

use rusqlite::Connection;

use super::tests::{message, temp};
use super::tests_delivery::{at, outcome, rows};
use super::*;
use crate::mta_sts::tracker::Cached;
use crate::mta_sts::{Mode, Policy};
use RecipientState::*;

fn cached(id: &str, mode: Mode) -> Cached {
    Cached {
        id: id.into(),
        policy: Policy {
            mode,
            mx: vec!["mx.b.example".into(), "*.b.example".into()],
            max_age: 86_400,
        },
        expires: at(86_400),
    }
}

#[test]
fn a_fetched_policy_is_cached_and_a_failed_fetch_keeps_it() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    assert_eq!(q.sts_policy("b.example").unwrap(), None);
    let fetched = PolicyUpdate::Fetched {
        domain: "b.example".into(),
        cached: cached("1", Mode::Enforce),
        at: at(0),
    };
    q.commit_turn(&Batch {
        policies: vec![fetched],
        ..Batch::default()
    })
    .unwrap();
    assert_eq!(
        q.sts_policy("b.example").unwrap(),
        Some(cached("1", Mode::Enforce))
    );
    let failed = PolicyUpdate::Failed {
        domain: "b.example".into(),
        id: "2".into(),
        error: "HTTP 500".into(),
        at: at(60),
    };
    // A failure for a domain never fetched makes a row without a policy.
    let never = PolicyUpdate::Failed {
        domain: "c.example".into(),
        id: "x".into(),
        error: "timeout".into(),
        at: at(60),
    };
    q.commit_turn(&Batch {
        policies: vec![failed, never],
        ..Batch::default()
    })
    .unwrap();
    assert_eq!(q.sts_policy("b.example").unwrap().unwrap().id, "1");
    assert_eq!(q.sts_policy("c.example").unwrap(), None);
    let c = Connection::open(&path).unwrap();
    assert_eq!(
        rows(
            &c,
            "SELECT domain, id, mode, mx, max_age, fetched_at, expires_at, expired,
                    last_attempt, last_id, last_error
             FROM policies ORDER BY domain"
        ),
        [
            vec![
                "b.example",
                "1",
                "enforce",
                "mx.b.example *.b.example",
                "86400",
                "2023-11-14T22:13:20Z",
                "2023-11-15T22:13:20Z",
                "1",
                "2023-11-14T22:14:20Z",
                "2",
                "HTTP 500"
            ],
            vec![
                "c.example",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
                "2023-11-14T22:14:20Z",
                "x",
                "timeout"
            ]
        ]
    );
    // The next good fetch replaces it and clears the error.
    q.commit_turn(&Batch {
        policies: vec![PolicyUpdate::Fetched {
            domain: "b.example".into(),
            cached: cached("2", Mode::Testing),
            at: at(120),
        }],
        ..Batch::default()
    })
    .unwrap();
    assert_eq!(
        rows(
            &c,
            "SELECT id, mode, last_id, last_error FROM policies WHERE domain = 'b.example'"
        ),
        [["2", "testing", "2", "NULL"]]
    );
}

#[test]
fn tls_results_go_to_the_attempts_of_their_outcomes() {
    let (_dir, path) = temp();
    let mut q = Queue::open(&path).unwrap();
    let m = message(
        "T1",
        "",
        &["a@b.example", "b@b.example", "c@b.example"],
        b"x\r\n",
    );
    q.commit(&[&m]).unwrap();
    let l = q.lease_due(at(0), 10).unwrap();
    q.commit_turn(&Batch {
        outcomes: vec![
            outcome(&l, "a@b.example", Delivered, true),
            outcome(&l, "b@b.example", Delivered, true),
            outcome(&l, "c@b.example", Delivered, true),
        ],
        tls: vec![
            AttemptTls {
                outcome: 0,
                mode: "enforce",
                result: "success",
            },
            AttemptTls {
                outcome: 2,
                mode: "testing",
                result: "starttls-not-supported",
            },
        ],
        ..Batch::default()
    })
    .unwrap();
    let c = Connection::open(&path).unwrap();
    assert_eq!(
        rows(
            &c,
            "SELECT recipient, sts_mode, tls_result FROM attempts ORDER BY recipient"
        ),
        [
            ["a@b.example", "enforce", "success"],
            ["b@b.example", "NULL", "NULL"],
            ["c@b.example", "testing", "starttls-not-supported"]
        ]
    );
}
