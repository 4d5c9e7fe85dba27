//! SMTP smuggling (CVE-2023-51764), both ways: inbound, no bare CR / bare
//! LF variant of the end-of-data line ends DATA; outbound, mailhop never
//! writes a bare CR or LF to a next hop, whatever it accepted.

mod common;

use std::time::Duration;

use common::sink::Sink;
use common::*;

const BETA: &str = r#"
hostname = "beta.test"
local_domains = ["beta.test"]
local_users = ["jones", "brown"]
relay_networks = []
# No local delivery here: accepted mail stays in the queue to be counted.
maildir = "/dev/null/mail"
"#;

const VARIANTS: [&str; 7] = [
    "\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r", "\r\n.\r", "\r.\r\n", "\n..\n",
];

fn shown(s: &str) -> String {
    s.replace('\r', "\\r").replace('\n', "\\n")
}

#[test]
fn no_bare_cr_or_lf_variant_ends_data_inbound() {
    for mode in ["reject", "normalize"] {
        let dir = tempdir();
        let mailhop = start_in(dir.path(), &format!("{BETA}bare_lf = \"{mode}\"\n"));
        let mut accepted = 0;
        for variant in VARIANTS {
            let mut c = mailhop.connect();
            expect(&c.reply(), "220");
            expect(&c.cmd("EHLO client.test"), "250");
            // One write: a message whose text, after the smuggled "end",
            // holds a whole second transaction and a QUIT.
            let smuggled = format!(
                "MAIL FROM:<s@a.test>\r\nRCPT TO:<jones@beta.test>\r\nDATA\r\nSubject: first\r\n\r\nhello{variant}MAIL FROM:<evil@a.test>\r\nRCPT TO:<brown@beta.test>\r\nDATA\r\nsmuggled\r\nQUIT\r\n.\r\nNOOP\r\n"
            );
            c.send(smuggled.as_bytes());
            expect(&c.reply(), "250 2.1.0");
            expect(&c.reply(), "250 2.1.5");
            expect(&c.reply(), "354");
            let end = c.reply();
            match mode {
                "reject" => assert!(
                    end.starts_with("550 5.6.0") || end.starts_with("550 5.5.2"),
                    "{mode} {}: {end:?}",
                    shown(variant)
                ),
                _ => {
                    queued_id(&end);
                    accepted += 1;
                }
            }
            // The smuggled commands were data: the next reply answers NOOP.
            assert_eq!(
                c.reply(),
                "250 2.0.0 Ok",
                "{mode} {}: out of sync",
                shown(variant)
            );
            expect(&c.cmd("QUIT"), "221");
            assert!(c.closed());
        }
        let db = open_queue(&mailhop.queue_path());
        assert_eq!(
            rows(&db, "SELECT count(*) FROM messages"),
            [accepted.to_string()],
            "{mode}"
        );
        let recipients = rows(
            &db,
            "SELECT DISTINCT recipient FROM queue UNION SELECT recipient FROM deliveries",
        );
        if accepted > 0 {
            assert_eq!(
                recipients,
                ["jones@beta.test"],
                "{mode}: a smuggled message got in"
            );
            // The would-be commands are in the one message's text.
            let bodies = rows(&db, "SELECT body FROM messages");
            for body in &bodies {
                assert!(body.contains("MAIL FROM:<evil@a.test>"), "{body:?}");
                assert!(body.contains("smuggled\r\nQUIT\r\n"), "{body:?}");
            }
        } else {
            assert!(recipients.is_empty(), "{mode}: {recipients:?}");
        }
    }
}

/// Bytes with a bare CR or LF at `i`, or None.
fn bare_at(raw: &[u8]) -> Option<usize> {
    raw.iter().enumerate().position(|(i, &b)| {
        (b == b'\n' && (i == 0 || raw[i - 1] != b'\r'))
            || (b == b'\r' && raw.get(i + 1) != Some(&b'\n'))
    })
}

#[test]
fn mailhop_never_sends_a_bare_cr_or_lf_to_the_next_hop() {
    let sink = Sink::start();
    let dir = tempdir();
    let mailhop = start_in(
        dir.path(),
        &format!(
            "hostname = \"alpha.test\"\nbare_lf = \"normalize\"\n[routes]\n\"example.org\" = \"{}\"\n[retry]\nschedule = [\"1s\"]\n",
            sink.addr
        ),
    );
    let mut bodies: Vec<String> = VARIANTS
        .iter()
        .map(|v| format!("Subject: v\r\n\r\nbefore{v}MAIL FROM:<x@y>\r\n.\rafter\n\rend\r"))
        .collect();
    bodies.push("Subject: lf only\n\nline\n.\nline\n..\n".to_string());
    bodies.push("Subject: cr only\r\rline\r.\rline\r".to_string());
    bodies.push("Subject: mixed\r\n\r\n\r\r\n\n\r.\r\n.\n.\r".to_string());
    for (i, body) in bodies.iter().enumerate() {
        let mut c = mailhop.connect();
        expect(&c.reply(), "220");
        expect(&c.cmd("EHLO client.test"), "250");
        expect(&c.cmd("MAIL FROM:<s@sender.test>"), "250");
        expect(&c.cmd(&format!("RCPT TO:<u{i}@example.org>")), "250");
        expect(&c.cmd("DATA"), "354");
        c.send(body.as_bytes());
        c.send(b"\r\n.\r\n");
        queued_id(&c.reply());
        expect(&c.cmd("QUIT"), "221");
    }
    let n = bodies.len();
    let got = sink.wait_for(n, Duration::from_secs(30));
    // Give an extra (smuggled) transaction time to show up.
    std::thread::sleep(Duration::from_millis(1500));
    let got_all = sink.received.lock().unwrap().clone();
    assert_eq!(got.len(), n, "{}", mailhop.log());
    assert_eq!(got_all.len(), n, "exactly one transaction per message");
    for t in &got_all {
        assert_eq!(t.rcpt_to.len(), 1);
        assert!(
            t.mail_from.starts_with("<s@sender.test>"),
            "{}",
            t.mail_from
        );
        if let Some(at) = bare_at(&t.raw) {
            panic!(
                "bare CR/LF at {at} of {:?}",
                String::from_utf8_lossy(&t.raw)
            );
        }
    }
    let mut rcpts: Vec<String> = got_all.iter().map(|t| t.rcpt_to[0].clone()).collect();
    rcpts.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("<u{i}@example.org>")).collect();
    want.sort();
    assert_eq!(rcpts, want);
}
