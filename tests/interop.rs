//! Real clients against a real `mailhop serve`: Python's smtplib, curl,
//! swaks and the sqlite3 shell. A client that is not installed is skipped
//! with a line saying so (`.ci/run` installs them).

mod common;

use std::process::Command;

use common::*;

const CONFIG: &str = r#"
hostname = "beta.example"
local_domains = ["beta.example"]
local_users = ["jones", "brown"]
# No local delivery here: accepted mail stays in the queue for the checks.
maildir = "/dev/null/mail"
"#;

fn queued_count(mailhop: &Mailhop, recipient: &str) -> usize {
    let db = open_queue(&mailhop.queue_path());
    let n: i64 = db
        .query_row(
            "SELECT count(*) FROM queue WHERE recipient = ?1",
            [recipient],
            |r| r.get(0),
        )
        .unwrap();
    n as usize
}

#[test]
fn python_smtplib_sends_and_sees_the_refusals() {
    if !have("python3") {
        return skip(
            "python_smtplib_sends_and_sees_the_refusals",
            "python3 is not installed",
        );
    }
    let dir = tempdir();
    let mailhop = start_in(dir.path(), CONFIG);
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test")
code, _ = s.ehlo()
assert code == 250 and s.has_extn("pipelining") and s.has_extn("smtputf8"), s.esmtp_features
assert int(s.esmtp_features["size"]) == 10485760
m = EmailMessage()
m["From"] = "smith@alpha.example"
m["To"] = "jones@beta.example"
m["Subject"] = "from smtplib"
m.set_content("Hello\n.dot line\n")
refused = s.send_message(m, to_addrs=["jones@beta.example", "green@beta.example"])
assert list(refused) == ["green@beta.example"] and refused["green@beta.example"][0] == 550, refused
try:
    s.sendmail("smith@alpha.example", ["green@beta.example"], "Subject: x\r\n\r\nx\r\n")
    raise SystemExit("all-refused was accepted")
except smtplib.SMTPRecipientsRefused as e:
    assert e.recipients["green@beta.example"][0] == 550
code, msg = s.docmd("VRFY", "jones")
assert code == 252, (code, msg)
code, msg = s.docmd("EXPN", "staff")
assert code == 502, (code, msg)
s.quit()
print("ok")
"#;
    succeed(Command::new("python3").args(["-c", script, &mailhop.addr.port().to_string()]));
    assert_eq!(queued_count(&mailhop, "jones@beta.example"), 1);
}

#[test]
fn curl_sends_a_mail() {
    if !have("curl") {
        return skip("curl_sends_a_mail", "curl is not installed");
    }
    let dir = tempdir();
    let mailhop = start_in(dir.path(), CONFIG);
    let mail = dir.path().join("mail.txt");
    std::fs::write(
        &mail,
        "From: a@alpha.example\r\nSubject: curl\r\n\r\nHello from curl\r\n.\r\n",
    )
    .unwrap();
    let url = format!("smtp://127.0.0.1:{}/client.test", mailhop.addr.port());
    succeed(&mut curl_mail(
        &url,
        "a@alpha.example",
        "brown@beta.example",
        &mail,
    ));
    assert_eq!(queued_count(&mailhop, "brown@beta.example"), 1);
    // A refused recipient makes curl fail, and nothing is queued.
    let out = curl_mail(&url, "a@alpha.example", "green@beta.example", &mail)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(queued_count(&mailhop, "green@beta.example"), 0);
}

#[test]
fn swaks_sends_a_mail() {
    if !have("swaks") {
        return skip(
            "swaks_sends_a_mail",
            "swaks is not installed (apt-get install swaks)",
        );
    }
    let dir = tempdir();
    let mailhop = start_in(dir.path(), CONFIG);
    let out = Command::new("swaks")
        .args([
            "--server",
            &mailhop.addr.to_string(),
            "--helo",
            "client.test",
        ])
        .args([
            "--from",
            "a@alpha.example",
            "--to",
            "jones@beta.example",
            "--pipeline",
        ])
        .args(["--timeout", "20"])
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{transcript}");
    assert!(
        transcript.contains("<-  250 2.0.0 Ok: queued as "),
        "{transcript}"
    );
    assert_eq!(queued_count(&mailhop, "jones@beta.example"), 1);
}

#[test]
fn the_sqlite3_shell_reads_the_views_with_the_spec_columns() {
    if !have("sqlite3") {
        return skip(
            "the_sqlite3_shell_reads_the_views_with_the_spec_columns",
            "sqlite3 is not installed",
        );
    }
    let dir = tempdir();
    let mailhop = start_in(dir.path(), CONFIG);
    let mut c = mailhop.connect();
    c.reply();
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<>");
    c.cmd("RCPT TO:<jones@beta.example>");
    c.cmd("DATA");
    c.send(b"Subject: x\r\n\r\nx\r\n.\r\n");
    let id = queued_id(&c.reply());
    let run = |sql: &str| {
        let out = succeed(Command::new("sqlite3").args([
            "-header",
            mailhop.queue_path().to_str().unwrap(),
            sql,
        ]));
        String::from_utf8(out.stdout).unwrap()
    };
    let queue = run("SELECT * FROM queue");
    let mut lines = queue.lines();
    assert_eq!(
        lines.next(),
        Some(
            "id|sender|recipient|next_hop|status|attempts|next_attempt|last_reply|size|received_at"
        )
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with(&format!("{id}||jones@beta.example|local|")),
        "{row}"
    );
    let columns = run("SELECT group_concat(name, ',') FROM pragma_table_info('deliveries')");
    assert!(
        columns.contains("id,sender,recipient,next_hop,status,attempts,reply,finished_at"),
        "{columns}"
    );
}
