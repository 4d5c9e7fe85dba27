//! DKIM signing end to end: keys made by `mailhop dkim keygen`, mail
//! relayed through a real mailhop to a sink, and the signatures checked by
//! an independent verifier (Python's dkimpy, given the keygen's TXT
//! records through its `dnsfunc` hook).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::sink::{Sink, Transaction};
use common::*;

/// Runs `mailhop dkim keygen`; returns the TXT record's text (strings joined).
fn keygen(dir: &Path, domain: &str, selector: &str, algorithm: &str) -> String {
    let out = succeed(
        Command::new(BIN)
            .args(["dkim", "keygen", domain, selector, "--algorithm", algorithm])
            .current_dir(dir),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{selector}._domainkey.{domain}. IN TXT")))
        .unwrap_or_else(|| panic!("no record in {text}"));
    // ( "v=DKIM1; k=rsa; p=..." "..." ): the strings, joined.
    let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
    assert!(strings.iter().all(|s| s.len() <= 255), "{line}");
    let mode = std::fs::metadata(dir.join(format!("{selector}.{domain}.pem")))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600, "the key file is private");
    strings.concat()
}

fn have_dkimpy() -> bool {
    Command::new("python3")
        .args(["-c", "import dkim, nacl"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// dkimpy's verdict on each message: "pass d=... s=... a=..." or "fail ...".
const VERIFY: &str = r#"
import json, sys, dkim
records = json.load(open(sys.argv[1]))
def dns(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    return records.get(name.rstrip('.').lower(), '').encode()
for path in sys.argv[2:]:
    msg = open(path, 'rb').read()
    d = dkim.DKIM(msg)
    try:
        ok = d.verify(dnsfunc=dns)
    except Exception as e:
        ok = False
        d.domain, d.selector = '?', str(e)
    sig = [l for l in msg.split(b'\r\n\r\n')[0].split(b'\r\n') if l.lower().startswith(b'dkim-signature')]
    fields = getattr(d, 'signature_fields', None) or {}
    a = fields.get(b'a', b'')
    text = lambda v: v.decode() if isinstance(v, bytes) else str(v or '')
    print(('pass' if ok else 'fail'), 'd=' + text(d.domain), 's=' + text(d.selector), 'a=' + text(a), 'signatures=%d' % len(sig))
"#;

fn verify(dir: &Path, records: &BTreeMap<String, String>, messages: &[Vec<u8>]) -> Vec<String> {
    std::fs::write(
        dir.join("records.json"),
        serde_json::to_string(records).unwrap(),
    )
    .unwrap();
    let mut args = vec![dir.join("records.json")];
    for (i, m) in messages.iter().enumerate() {
        let path = dir.join(format!("message{i}.eml"));
        std::fs::write(&path, m).unwrap();
        args.push(path);
    }
    let out = succeed(Command::new("python3").arg("-c").arg(VERIFY).args(&args));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A message with everything that can go wrong in canonicalization: a
/// dot-stuffed line, trailing blanks, folded headers, empty lines at the end.
fn message(from: &str, subject: &str, body_lines: usize) -> String {
    let mut m = format!(
        "From: Sender <{from}>\r\nTo: someone@partner.example\r\nSubject: {subject}\r\n \
         folded on\r\nDate: Thu, 03 Dec 2026 18:00:00 +0000\r\nMessage-ID: <{subject}@example.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
    );
    m.push_str("..a line that starts with a dot\r\ntrailing blanks   \r\n");
    for i in 0..body_lines {
        m.push_str(&format!(
            "line {i} of the body, with some text to make it longer\r\n"
        ));
    }
    m.push_str("\r\n\r\n");
    m
}

fn send(client: &mut Client, from: &str, data: &str) -> String {
    expect(&client.cmd(&format!("MAIL FROM:<{from}>")), "250");
    expect(&client.cmd("RCPT TO:<someone@partner.example>"), "250");
    expect(&client.cmd("DATA"), "354");
    client.send(data.as_bytes());
    client.cmd(".")
}

/// The message as the next hop got it, keyed by its Subject.
fn by_subject(received: &[Transaction]) -> BTreeMap<String, Vec<u8>> {
    received
        .iter()
        .map(|t| {
            let text = String::from_utf8_lossy(&t.data);
            let subject = text
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or("")
                .to_string();
            (subject, t.data.clone())
        })
        .collect()
}

#[test]
fn trusted_mail_is_signed_and_verifies_with_dkimpy_strangers_mail_is_not() {
    let test = "trusted_mail_is_signed_and_verifies_with_dkimpy_strangers_mail_is_not";
    let dir = tempdir();
    let mut records = BTreeMap::new();
    records.insert(
        "s1._domainkey.example.com".to_string(),
        keygen(dir.path(), "example.com", "s1", "rsa"),
    );
    records.insert(
        "ed._domainkey.ed.example".to_string(),
        keygen(dir.path(), "ed.example", "ed", "ed25519"),
    );
    let sink = Sink::start();
    // 127.0.0.2 is trusted; 127.0.0.1 is a stranger, who may still send
    // to partner.example (a relay domain).
    let config = format!(
        "relay_networks = [\"127.0.0.2/32\"]\nrelay_domains = [\"partner.example\"]\n\
         [routes]\n\"*\" = \"{}\"\n\
         [dkim.\"example.com\"]\nselector = \"s1\"\nkey = \"s1.example.com.pem\"\n\
         [dkim.\"ed.example\"]\nselector = \"ed\"\nkey = \"ed.ed.example.pem\"\nsubdomains = true\n",
        sink.addr
    );
    let mailhop = start_in(dir.path(), &config);
    let addr = mailhop.listening(1)[0];

    let mut trusted = connect_from("127.0.0.2", addr).unwrap();
    expect(&trusted.reply(), "220");
    expect(&trusted.cmd("EHLO trusted.example"), "250");
    // Small (kept whole), and 300 KiB (stored in pieces, piece 0 last).
    expect(
        &send(
            &mut trusted,
            "a@example.com",
            &message("a@example.com", "rsa-small", 3),
        ),
        "250",
    );
    expect(
        &send(
            &mut trusted,
            "a@example.com",
            &message("a@example.com", "rsa-large", 6000),
        ),
        "250",
    );
    expect(
        &send(
            &mut trusted,
            "b@ed.example",
            &message("b@ed.example", "ed-small", 3),
        ),
        "250",
    );
    // A subdomain of a domain with `subdomains = true`: d=ed.example.
    expect(
        &send(
            &mut trusted,
            "c@mail.ed.example",
            &message("c@mail.ed.example", "ed-sub-large", 6000),
        ),
        "250",
    );
    // No key for this From domain (nor a parent allowing subdomains).
    expect(
        &send(
            &mut trusted,
            "d@sub.example.com",
            &message("d@sub.example.com", "no-key", 3),
        ),
        "250",
    );
    // BDAT (CHUNKING) in three chunks, the body split mid-line.
    let bdat = message("e@example.com", "rsa-bdat", 2000);
    expect(&trusted.cmd("MAIL FROM:<e@example.com>"), "250");
    expect(&trusted.cmd("RCPT TO:<someone@partner.example>"), "250");
    let (one, rest) = bdat.as_bytes().split_at(100);
    let (two, three) = rest.split_at(70_000);
    for (chunk, last) in [(one, false), (two, false), (three, true)] {
        let verb = if last { " LAST" } else { "" };
        trusted.send(format!("BDAT {}{verb}\r\n", chunk.len()).as_bytes());
        trusted.send(chunk);
        expect(&trusted.reply(), "250");
    }
    expect(&trusted.cmd("QUIT"), "221");

    let mut stranger = connect_from("127.0.0.1", addr).unwrap();
    expect(&stranger.reply(), "220");
    expect(&stranger.cmd("EHLO stranger.example"), "250");
    expect(
        &send(
            &mut stranger,
            "a@example.com",
            &message("a@example.com", "stranger", 3),
        ),
        "250",
    );
    expect(&stranger.cmd("QUIT"), "221");

    let got = by_subject(&sink.wait_for(7, Duration::from_secs(30)));
    assert_eq!(got.len(), 7, "{:?}", got.keys());
    let has_signature = |m: &[u8]| {
        String::from_utf8_lossy(m)
            .to_ascii_lowercase()
            .contains("\r\ndkim-signature:")
    };
    assert!(
        !has_signature(&got["stranger"]),
        "a stranger's mail is never signed"
    );
    assert!(!has_signature(&got["no-key"]));
    for subject in [
        "rsa-small",
        "rsa-large",
        "ed-small",
        "ed-sub-large",
        "rsa-bdat",
    ] {
        let text = String::from_utf8_lossy(&got[subject]);
        // Our Received line first, then the signature, then the client's.
        assert!(text.starts_with("Received: "), "{subject}");
        let sig = text
            .find("\r\nDKIM-Signature:")
            .unwrap_or_else(|| panic!("{subject} unsigned"));
        assert!(sig < text.find("\r\nFrom:").unwrap(), "{subject}");
        assert!(text.contains("c=relaxed/relaxed"), "{subject}");
        let h = text[sig..]
            .split("h=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        let h: String = h.split_whitespace().collect();
        assert_eq!(
            h.split(':')
                .filter(|f| f.eq_ignore_ascii_case("from"))
                .count(),
            2,
            "From is oversigned: {h}"
        );
    }
    let log = mailhop.log();
    assert!(log.contains("dkim signed d=example.com s=s1"), "{log}");
    assert!(
        log.contains("dkim not signed: no key for From domain sub.example.com"),
        "{log}"
    );

    if !have_dkimpy() {
        return skip(test, "dkimpy or PyNaCl not installed (python3 -m pip install dkimpy pynacl); the signatures were not verified");
    }
    let subjects = [
        "rsa-small",
        "rsa-large",
        "ed-small",
        "ed-sub-large",
        "rsa-bdat",
        "stranger",
    ];
    let messages: Vec<Vec<u8>> = subjects.iter().map(|s| got[*s].clone()).collect();
    let verdicts = verify(dir.path(), &records, &messages);
    let expected = [
        "pass d=example.com s=s1 a=rsa-sha256 signatures=1",
        "pass d=example.com s=s1 a=rsa-sha256 signatures=1",
        "pass d=ed.example s=ed a=ed25519-sha256 signatures=1",
        "pass d=ed.example s=ed a=ed25519-sha256 signatures=1",
        "pass d=example.com s=s1 a=rsa-sha256 signatures=1",
    ];
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&verdicts[i], want, "{}", subjects[i]);
    }
    assert!(
        verdicts[5].starts_with("fail") && verdicts[5].ends_with("signatures=0"),
        "{}",
        verdicts[5]
    );

    // A signature that verifies is one that breaks when the body changes.
    let mut tampered = got["rsa-large"].clone();
    let at = tampered.len() - 100;
    tampered[at] ^= 1;
    let verdict = verify(dir.path(), &records, &[tampered]);
    assert!(verdict[0].starts_with("fail"), "{verdict:?}");
}

#[test]
fn bad_keys_stop_start_up_with_the_file_named() {
    let dir = tempdir();
    std::fs::write(dir.path().join("junk.pem"), "not a key\n").unwrap();
    for (key, says) in [
        ("missing.pem", "missing.pem"),
        ("junk.pem", "junk.pem: not a PEM private key"),
    ] {
        let text = format!(
            "listen = [\"127.0.0.1:0\"]\nqueue = \"queue.db\"\n[dkim.\"example.com\"]\nselector = \"s1\"\nkey = \"{key}\"\n"
        );
        std::fs::write(dir.path().join("mailhop.toml"), text).unwrap();
        let out = Command::new(BIN)
            .args(["serve", "--config", "mailhop.toml"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("dkim.\"example.com\".key") && err.contains(says),
            "{err}"
        );
    }
    // check-config names the table, never reads the key.
    let out = Command::new(BIN)
        .args(["check-config", "--config", "mailhop.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[dkim.\"example.com\"]\nselector = \"s1\""),
        "{text}"
    );
}

/// Python's smtplib: STARTTLS, AUTH PLAIN, one message; prints the reply.
const SMTPLIB: &str = r#"
import smtplib, ssl, sys
host, port, ca, user, password, sender, rcpt, path = sys.argv[1:9]
ctx = ssl.create_default_context(cafile=ca)
with smtplib.SMTP(host, int(port), timeout=20) as s:
    s.starttls(context=ctx)
    s.login(user, password)
    s.sendmail(sender, [rcpt], open(path, 'rb').read())
print('sent')
"#;

#[test]
fn an_authenticated_client_is_trusted_to_be_signed_from_any_address() {
    let test = "an_authenticated_client_is_trusted_to_be_signed_from_any_address";
    let dir = tempdir();
    let mut records = BTreeMap::new();
    records.insert(
        "s1._domainkey.example.com".to_string(),
        keygen(dir.path(), "example.com", "s1", "rsa"),
    );
    certificate(dir.path());
    std::fs::write(dir.path().join("users"), passwd("alice", "pa55word")).unwrap();
    let sink = Sink::start();
    // Nobody is trusted by address: only AUTH makes a client trusted.
    let config = format!(
        "hostname = \"localhost\"\nrelay_networks = []\n[routes]\n\"*\" = \"{}\"\n\
         [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[auth]\nusers_file = \"users\"\n\
         [dkim.\"example.com\"]\nselector = \"s1\"\nkey = \"s1.example.com.pem\"\n",
        sink.addr
    );
    let mailhop = start_in(dir.path(), &config);
    let addr = mailhop.listening(1)[0];
    let path = dir.path().join("submitted.eml");
    // smtplib sends bytes as they are (CRLF) and dot-stuffs them itself.
    std::fs::write(&path, message("a@example.com", "authenticated", 50)).unwrap();
    succeed(
        Command::new("python3")
            .arg("-c")
            .arg(SMTPLIB)
            .args(["localhost", &addr.port().to_string()])
            .arg(dir.path().join("cert.pem"))
            .args(["alice", "pa55word", "a@example.com", "someone@far.example"])
            .arg(&path),
    );
    let got = sink.wait_for(1, Duration::from_secs(30));
    let data = got[0].data.clone();
    let text = String::from_utf8_lossy(&data);
    assert!(text.contains("with ESMTPSA"), "{text}");
    assert!(text.contains("\r\nDKIM-Signature: "), "{text}");
    if !have_dkimpy() {
        return skip(
            test,
            "dkimpy or PyNaCl not installed; the signature was not verified",
        );
    }
    let verdict = verify(dir.path(), &records, &[data]);
    assert_eq!(
        verdict[0],
        "pass d=example.com s=s1 a=rsa-sha256 signatures=1"
    );
}

#[test]
fn a_reload_adds_a_key_and_a_bad_key_changes_nothing() {
    let test = "a_reload_adds_a_key_and_a_bad_key_changes_nothing";
    let dir = tempdir();
    let mut records = BTreeMap::new();
    records.insert(
        "s1._domainkey.example.com".to_string(),
        keygen(dir.path(), "example.com", "s1", "ed25519"),
    );
    records.insert(
        "s2._domainkey.example.com".to_string(),
        keygen(dir.path(), "example.com", "s2", "rsa"),
    );
    std::fs::write(dir.path().join("junk.pem"), "not a key\n").unwrap();
    let sink = Sink::start();
    let base = format!(
        "relay_networks = [\"127.0.0.1/32\"]\n[routes]\n\"*\" = \"{}\"\n",
        sink.addr
    );
    let mailhop = start_in(dir.path(), &base);
    let addr = mailhop.listening(1)[0];
    let reload = |selector: &str, key: &str, reloads: usize| {
        std::fs::write(
            dir.path().join("mailhop.toml"),
            format!(
                "listen = [\"127.0.0.1:0\"]\nqueue = \"queue.db\"\n{base}\
                 [dkim.\"example.com\"]\nselector = \"{selector}\"\nkey = \"{key}\"\n"
            ),
        )
        .unwrap();
        mailhop.hangup();
        mailhop.wait_log("SIGHUP: reloading", reloads);
    };
    let send_one = |subject: &str| {
        let mut c = Client::connect(addr);
        expect(&c.reply(), "220");
        expect(&c.cmd("EHLO trusted.example"), "250");
        expect(
            &send(
                &mut c,
                "a@example.com",
                &message("a@example.com", subject, 3),
            ),
            "250",
        );
        c.cmd("QUIT");
    };

    send_one("before");
    // A key that cannot be read: the reload is refused, nothing is signed.
    reload("s1", "junk.pem", 1);
    mailhop.wait_log("reload refused", 1);
    assert!(mailhop.log().contains("junk.pem"), "{}", mailhop.log());
    send_one("refused");
    // A good key: the next message is signed with it.
    reload("s1", "s1.example.com.pem", 2);
    mailhop.wait_log("reloaded:", 1);
    send_one("ed25519");
    // Rotating to another selector and key.
    reload("s2", "s2.example.com.pem", 3);
    mailhop.wait_log("reloaded:", 2);
    send_one("rsa");

    let got = by_subject(&sink.wait_for(4, Duration::from_secs(30)));
    let signed = |s: &str| String::from_utf8_lossy(&got[s]).contains("\r\nDKIM-Signature: ");
    assert!(!signed("before") && !signed("refused"));
    assert!(signed("ed25519") && signed("rsa"));
    if !have_dkimpy() {
        return skip(
            test,
            "dkimpy or PyNaCl not installed; the signatures were not verified",
        );
    }
    let verdicts = verify(
        dir.path(),
        &records,
        &[got["ed25519"].clone(), got["rsa"].clone()],
    );
    assert_eq!(
        verdicts,
        [
            "pass d=example.com s=s1 a=ed25519-sha256 signatures=1",
            "pass d=example.com s=s2 a=rsa-sha256 signatures=1"
        ]
    );
}
