//! Never an open relay: address tricks from a client outside
//! `relay_networks` (loopback, with `relay_networks = []`), under both
//! `source_routes` modes. Whatever the reply, nothing may be queued for a
//! next hop the policy does not serve (only `local` and relay domains').

mod common;

use std::collections::HashSet;

use common::*;

const CONFIG: &str = r#"
hostname = "mx.local.test"
local_domains = ["local.test"]
local_users = ["user"]
relay_domains = ["relay.test"]
relay_networks = []
# No local delivery: accepted mail stays in the queue to be inspected.
maildir = "/dev/null/mail"
"#;

/// The forward-path, then the expected reply with `honor` and with `strip`.
#[rustfmt::skip]
const CASES: &[(&str, &str, &str)] = &[
    // The percent hack, quoted addresses, double @.
    ("user%evil.test@local.test", "550 5.1.1", "550 5.1.1"),
    ("\"user@evil.test\"@local.test", "550 5.1.1", "550 5.1.1"),
    ("\"user%evil.test\"@local.test", "550 5.1.1", "550 5.1.1"),
    ("user@evil.test@local.test", "501 5.5.4", "501 5.5.4"),
    ("user%evil.test@relay.test", "250", "250"),
    ("\"user@evil.test\"@relay.test", "250", "250"),
    // Source routes through us, through served and foreign hops.
    ("@local.test:user@evil.test", "554 5.7.1", "554 5.7.1"),
    ("@mx.local.test:user@evil.test", "554 5.7.1", "554 5.7.1"),
    ("@evil.test:user@local.test", "554 5.7.1", "250"),
    ("@evil.test:user@relay.test", "554 5.7.1", "250"),
    ("@relay.test:user@evil.test", "554 5.7.1", "554 5.7.1"),
    ("@relay.test:user@local.test", "250", "250"),
    ("@local.test,@evil.test:user@local.test", "554 5.7.1", "250"),
    ("@local.test,@relay.test:user@local.test", "250", "250"),
    ("@LOCAL.TEST,@EVIL.TEST:user@relay.test", "554 5.7.1", "250"),
    ("@local.test:user@local.test", "250", "250"),
    ("@[127.0.0.1]:user@local.test", "501 5.5.4", "501 5.5.4"),
    // Address literals are never ours.
    ("user@[127.0.0.1]", "554 5.7.1", "554 5.7.1"),
    ("user@[IPv6:::1]", "554 5.7.1", "554 5.7.1"),
    ("user@[IPv6:::ffff:127.0.0.1]", "554 5.7.1", "554 5.7.1"),
    ("@relay.test:user@[127.0.0.1]", "554 5.7.1", "554 5.7.1"),
    // Trailing dots and look-alike domains.
    ("user@local.test.", "501 5.5.4", "501 5.5.4"),
    ("user@relay.test.", "501 5.5.4", "501 5.5.4"),
    ("user@evil.test.", "501 5.5.4", "501 5.5.4"),
    ("user@sub.relay.test", "554 5.7.1", "554 5.7.1"),
    ("user@relay.test.evil.test", "554 5.7.1", "554 5.7.1"),
    ("user@notrelay.test", "554 5.7.1", "554 5.7.1"),
    ("user@local.test.evil.test", "554 5.7.1", "554 5.7.1"),
    // Case.
    ("USER@LOCAL.TEST", "250", "250"),
    ("user@Relay.Test", "250", "250"),
    ("user@EVIL.TEST", "554 5.7.1", "554 5.7.1"),
    ("\"user\"@local.test", "250", "250"),
    // Plain cases for contrast.
    ("user@evil.test", "554 5.7.1", "554 5.7.1"),
    ("nobody@local.test", "550 5.1.1", "550 5.1.1"),
    ("postmaster", "250", "250"),
];

#[test]
fn address_tricks_never_queue_mail_for_a_foreign_next_hop() {
    let mut failures = Vec::new();
    for (mode, column) in [("honor", 1), ("strip", 2)] {
        let dir = tempdir();
        let mailhop = start_in(dir.path(), &format!("{CONFIG}source_routes = \"{mode}\"\n"));
        for case in CASES {
            let (rcpt, want) = (case.0, if column == 1 { case.1 } else { case.2 });
            let mut c = mailhop.connect();
            expect(&c.reply(), "220");
            expect(&c.cmd("EHLO outside.test"), "250");
            expect(&c.cmd("MAIL FROM:<someone@outside.test>"), "250");
            let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"));
            eprintln!("{mode:5} RCPT TO:<{rcpt}> -> {reply}");
            if !reply.starts_with(want) {
                failures.push(format!("{mode} <{rcpt}>: want {want}, got {reply}"));
            }
            if reply.starts_with("250") {
                expect(&c.cmd("DATA"), "354");
                c.send(format!("Subject: {rcpt}\r\n\r\ntrick\r\n.\r\n").as_bytes());
                queued_id(&c.reply());
            }
            expect(&c.cmd("QUIT"), "221");
        }
        // Every queued recipient goes where the policy serves, nowhere else.
        let db = open_queue(&mailhop.queue_path());
        let allowed: HashSet<&str> = ["local", "relay.test"].into();
        let queued = rows(
            &db,
            // Bounces we make (from <>) go back to senders, as they must.
            "SELECT recipient, next_hop FROM queue WHERE sender <> ''
             UNION ALL SELECT recipient, next_hop FROM deliveries WHERE sender <> ''",
        );
        let accepted = CASES
            .iter()
            .filter(|c| (if column == 1 { c.1 } else { c.2 }) == "250")
            .count();
        assert_eq!(queued.len(), accepted, "{mode}: {queued:?}");
        for row in &queued {
            let (recipient, next_hop) = row.split_once('|').unwrap();
            assert!(
                allowed.contains(next_hop),
                "{mode}: OPEN RELAY: {recipient} queued for next hop {next_hop}"
            );
            let domain = recipient.rsplit('@').next().unwrap().to_ascii_lowercase();
            assert!(
                domain == "local.test" || domain == "relay.test" || domain == "mx.local.test",
                "{mode}: queued for a foreign mailbox {recipient} via {next_hop}"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "unexpected replies:\n{}",
        failures.join("\n")
    );
}
