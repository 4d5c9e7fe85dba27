//! A `[routes]` table to a smarthost that demands AUTH over TLS: a second
//! mailhop with a certificate, an account and no trusted networks plays
//! the provider (STARTTLS on its plain listener, implicit TLS on another).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const USER: &str = "relay-user";
/// Distinctive, so that finding it anywhere is no accident.
const PASSWORD: &str = "Sm4rt-h0st-pa55word";

/// The provider: relays only for `relay-user` (AUTH only over TLS), keeps
/// what it accepts in its queue (its own next hop is a closed port).
/// Returns it, its STARTTLS address and its implicit-TLS address.
fn smarthost(dir: &Path) -> (Mailhop, std::net::SocketAddr, std::net::SocketAddr) {
    certificate(dir);
    std::fs::write(dir.join("users"), passwd(USER, PASSWORD)).unwrap();
    let mailhop = start_in(
        dir,
        "hostname = \"smart.test\"\nrelay_networks = []\nmaildir = \"/dev/null/mail\"\n\
         [routes]\n\"*\" = \"127.0.0.1:9\"\n[retry]\nschedule = [\"1h\"]\n\
         [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nimplicit_listen = [\"127.0.0.1:0\"]\n\
         [auth]\nusers_file = \"users\"\n",
    );
    let addrs = mailhop.listening(2);
    (mailhop, addrs[0], addrs[1])
}

/// The relay under test, routing everything through `route` (a TOML
/// table), trusting the smarthost's certificate, with `password` in its
/// password file.
fn relay(dir: &Path, smarthost_dir: &Path, route: &str, password: &str) -> Mailhop {
    std::fs::copy(smarthost_dir.join("cert.pem"), dir.join("ca.pem")).unwrap();
    std::fs::write(dir.join("smarthost.secret"), format!("{password}\n")).unwrap();
    start_in(
        dir,
        &format!(
            "hostname = \"alpha.test\"\n[routes]\n\"*\" = {route}\n[tls]\nca_file = \"ca.pem\"\n[retry]\nschedule = [\"1h\"]\n"
        ),
    )
}

/// As `relay`, logging everything (`RUST_LOG=trace`): the password must
/// not show at any level.
fn relay_traced(dir: &Path, smarthost_dir: &Path, route: &str) -> Mailhop {
    std::fs::copy(smarthost_dir.join("cert.pem"), dir.join("ca.pem")).unwrap();
    std::fs::write(dir.join("smarthost.secret"), format!("{PASSWORD}\n")).unwrap();
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\nqueue = \"queue.db\"\nhostname = \"alpha.test\"\n\
         [routes]\n\"*\" = {route}\n[tls]\nca_file = \"ca.pem\"\n[retry]\nschedule = [\"1h\"]\n\
         [dns]\nservers = [\"127.0.0.1:9\"]\n"
    );
    let file = dir.join("mailhop.toml");
    std::fs::write(&file, text).unwrap();
    spawn_logging(dir, &["serve", "--config", file.to_str().unwrap()], "trace")
}

fn send_one(mailhop: &Mailhop) -> String {
    let mut c = mailhop.connect();
    c.reply();
    c.cmd("EHLO client.test");
    expect(&c.cmd("MAIL FROM:<sender@client.test>"), "250");
    expect(&c.cmd("RCPT TO:<u@final.test>"), "250");
    expect(&c.cmd("DATA"), "354");
    c.send(b"Subject: via the smarthost\r\n\r\nhi\r\n.\r\n");
    queued_id(&c.reply())
}

/// Nowhere in the log, the queue files or `check-config` output.
fn password_nowhere(mailhop: &Mailhop, dir: &Path) {
    let log = mailhop.log();
    // Nor as it goes on the wire (AUTH PLAIN and LOGIN are base64).
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for wire in [b64(&format!("\0{USER}\0{PASSWORD}")), b64(PASSWORD)] {
        assert!(!log.contains(&wire), "the encoded password is in the log");
    }
    assert!(
        !log.contains(PASSWORD),
        "the password is in the log:\n{log}"
    );
    for name in ["queue.db", "queue.db-wal", "queue.db-shm"] {
        let Ok(bytes) = std::fs::read(dir.join(name)) else {
            continue;
        };
        let found = bytes
            .windows(PASSWORD.len())
            .any(|w| w == PASSWORD.as_bytes());
        assert!(!found, "the password is in {name}");
    }
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(dir.join("mailhop.toml"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "password_file = \"{}\"",
            dir.join("smarthost.secret").display()
        )),
        "{stdout}"
    );
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
}

#[test]
fn relayed_through_the_smarthost_after_starttls_and_auth() {
    let dir_s = tempdir();
    let (smart, starttls, _) = smarthost(dir_s.path());
    let dir = tempdir();
    let route = format!(
        "{{ host = \"{starttls}\", tls = \"required\", auth = \"{USER}\", password_file = \"smarthost.secret\" }}"
    );
    let alpha = relay_traced(dir.path(), dir_s.path(), &route);
    let id = send_one(&alpha);
    // The smarthost took it as a client that had authenticated over TLS:
    // with relay_networks = [] nothing else may relay there.
    let bodies = wait_rows(&smart.queue_path(), "SELECT body FROM messages");
    assert_eq!(bodies.len(), 1, "{}\n{}", alpha.log(), smart.log());
    assert!(
        bodies[0].contains("by smart.test (mailhop) with ESMTPSA id"),
        "{}",
        bodies[0]
    );
    let done = wait_rows(
        &alpha.queue_path(),
        &format!("SELECT status, next_hop FROM deliveries WHERE id = '{id}'"),
    );
    assert_eq!(done, [format!("delivered|{starttls}")], "{}", alpha.log());
    // The log is at trace level: the AUTH exchange was logged as replies.
    assert!(alpha.log().contains("<- 235"), "{}", alpha.log());
    password_nowhere(&alpha, dir.path());
}

#[test]
fn a_wrong_password_defers_and_the_hop_is_failing() {
    let dir_s = tempdir();
    let (smart, starttls, _) = smarthost(dir_s.path());
    let dir = tempdir();
    let route = format!(
        "{{ host = \"{starttls}\", tls = \"required\", auth = \"{USER}\", password_file = \"smarthost.secret\" }}"
    );
    let alpha = relay(dir.path(), dir_s.path(), &route, "not-the-password");
    let id = send_one(&alpha);
    let db = alpha.queue_path();
    let queued = wait_rows(
        &db,
        &format!("SELECT status, last_reply FROM queue WHERE id = '{id}' AND attempts > 0"),
    );
    assert_eq!(queued.len(), 1, "{}", alpha.log());
    assert!(
        queued[0].starts_with("deferred|451 4.7.0 ") && queued[0].contains("535"),
        "{queued:?}"
    );
    let attempts = wait_rows(
        &db,
        &format!("SELECT reply FROM attempts WHERE id = '{id}'"),
    );
    assert!(attempts.iter().any(|r| r.contains("535")), "{attempts:?}");
    let hosts = wait_rows(
        &db,
        &format!("SELECT state, last_error FROM hosts WHERE next_hop = '{starttls}'"),
    );
    assert_eq!(hosts.len(), 1);
    assert!(
        hosts[0].starts_with("failing|") && hosts[0].contains("535"),
        "{hosts:?}"
    );
    // No bounce: the one message is all the queue holds.
    let conn = open_queue(&db);
    assert_eq!(rows(&conn, "SELECT count(*) FROM messages"), ["1"]);
    assert_eq!(rows(&conn, "SELECT count(*) FROM deliveries"), ["0"]);
    assert_eq!(
        rows(
            &open_queue(&smart.queue_path()),
            "SELECT count(*) FROM messages"
        ),
        ["0"]
    );
    // What the wrong password was is not to be seen either.
    assert!(!alpha.log().contains("not-the-password"), "{}", alpha.log());
}

#[test]
fn implicit_tls_to_port_465_style_listener() {
    let dir_s = tempdir();
    let (smart, _, implicit) = smarthost(dir_s.path());
    let dir = tempdir();
    let route = format!(
        "{{ host = \"{implicit}\", tls = \"implicit\", auth = \"{USER}\", password_file = \"smarthost.secret\" }}"
    );
    let alpha = relay(dir.path(), dir_s.path(), &route, PASSWORD);
    let id = send_one(&alpha);
    let bodies = wait_rows(&smart.queue_path(), "SELECT body FROM messages");
    assert_eq!(bodies.len(), 1, "{}\n{}", alpha.log(), smart.log());
    assert!(bodies[0].contains("with ESMTPSA id"), "{}", bodies[0]);
    let done = wait_rows(
        &alpha.queue_path(),
        &format!("SELECT status FROM deliveries WHERE id = '{id}'"),
    );
    assert_eq!(done, ["delivered"], "{}", alpha.log());
    password_nowhere(&alpha, dir.path());
}

#[test]
fn implicit_tls_to_an_ipv6_literal() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        return skip("implicit_tls_to_an_ipv6_literal", "no IPv6 loopback");
    }
    let dir_s = tempdir();
    certificate(dir_s.path());
    std::fs::write(dir_s.path().join("users"), passwd(USER, PASSWORD)).unwrap();
    let smart = start_in(
        dir_s.path(),
        "hostname = \"smart.test\"\nrelay_networks = []\nmaildir = \"/dev/null/mail\"\n\
         [routes]\n\"*\" = \"127.0.0.1:9\"\n[retry]\nschedule = [\"1h\"]\n\
         [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nimplicit_listen = [\"[::1]:0\"]\n\
         [auth]\nusers_file = \"users\"\n",
    );
    let implicit = smart.listening(2)[1];
    assert!(implicit.is_ipv6(), "{implicit}");
    let dir = tempdir();
    // The certificate names 127.0.0.1 and localhost, not ::1.
    let route = format!(
        "{{ host = \"{implicit}\", tls = \"implicit\", auth = \"{USER}\", password_file = \"smarthost.secret\", verify = false }}"
    );
    let alpha = relay(dir.path(), dir_s.path(), &route, PASSWORD);
    let id = send_one(&alpha);
    let done = wait_rows(
        &alpha.queue_path(),
        &format!("SELECT status FROM deliveries WHERE id = '{id}'"),
    );
    assert_eq!(done, ["delivered"], "{}", alpha.log());
}

#[test]
fn an_unverified_certificate_is_refused_when_verify_is_on() {
    // The relay trusts another certificate: with auth, verify is on by
    // default, so the credentials never go to this server.
    let dir_s = tempdir();
    let (smart, starttls, _) = smarthost(dir_s.path());
    let dir = tempdir();
    let other = tempdir();
    certificate(other.path());
    let route = format!(
        "{{ host = \"{starttls}\", tls = \"required\", auth = \"{USER}\", password_file = \"smarthost.secret\" }}"
    );
    let alpha = relay(dir.path(), other.path(), &route, PASSWORD);
    let id = send_one(&alpha);
    let queued = wait_rows(
        &alpha.queue_path(),
        &format!("SELECT status, last_reply FROM queue WHERE id = '{id}' AND attempts > 0"),
    );
    assert_eq!(queued.len(), 1, "{}", alpha.log());
    assert!(
        queued[0].starts_with("deferred|451 4.7.5 TLS handshake with")
            && queued[0].contains("certificate"),
        "{queued:?}"
    );
    assert_eq!(
        rows(
            &open_queue(&smart.queue_path()),
            "SELECT count(*) FROM messages"
        ),
        ["0"]
    );
}

#[test]
fn verify_false_takes_any_certificate_even_with_verify_outbound() {
    let dir_s = tempdir();
    let (smart, starttls, _) = smarthost(dir_s.path());
    let dir = tempdir();
    let other = tempdir();
    certificate(other.path());
    let route = format!(
        "{{ host = \"{starttls}\", tls = \"required\", auth = \"{USER}\", password_file = \"smarthost.secret\", verify = false }}"
    );
    std::fs::copy(other.path().join("cert.pem"), dir.path().join("ca.pem")).unwrap();
    std::fs::write(dir.path().join("smarthost.secret"), format!("{PASSWORD}\n")).unwrap();
    let alpha = start_in(
        dir.path(),
        &format!(
            "hostname = \"alpha.test\"\n[routes]\n\"*\" = {route}\n[tls]\nca_file = \"ca.pem\"\nverify_outbound = true\n"
        ),
    );
    let id = send_one(&alpha);
    let done = wait_rows(
        &alpha.queue_path(),
        &format!("SELECT status FROM deliveries WHERE id = '{id}'"),
    );
    assert_eq!(done, ["delivered"], "{}", alpha.log());
    let bodies = wait_rows(&smart.queue_path(), "SELECT body FROM messages");
    assert!(bodies[0].contains("with ESMTPSA id"), "{}", bodies[0]);
}

/// `check-config` on `routes`; its exit code and stderr.
fn check(dir: &Path, routes: &str) -> (i32, String) {
    let file = dir.join("m.toml");
    std::fs::write(&file, format!("[routes]\n{routes}\n")).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempdir();
    std::fs::write(dir.path().join("smarthost.secret"), format!("{PASSWORD}\n")).unwrap();
    let cases = [
        (
            "\"*\" = { host = \"smtp.example:587\", tls = \"opportunistic\", auth = \"u\", password_file = \"smarthost.secret\" }",
            "routes.\"*\".tls: auth needs tls",
        ),
        (
            "\"*\" = { host = \"smtp.example:587\", tls = \"required\", auth = \"u\", password_file = \"missing.secret\" }",
            "routes.\"*\".password_file: cannot read",
        ),
        (
            "\"*\" = { host = \"smtp.example:587\", tls = \"required\", user = \"u\" }",
            "routes.\"*\".user: unknown key",
        ),
    ];
    for (routes, needle) in cases {
        let (code, err) = check(dir.path(), routes);
        assert_eq!(code, 2, "{routes}: {err}");
        assert!(err.contains(needle), "{routes}: {err}");
        assert!(!err.contains(PASSWORD), "{err}");
    }
    // The string form keeps working.
    let (code, err) = check(dir.path(), "\"example.org\" = \"127.0.0.1:2526\"");
    assert_eq!(code, 0, "{err}");
}

#[test]
fn reload_reads_the_password_file_again() {
    let dir_s = tempdir();
    let (_smart, starttls, _) = smarthost(dir_s.path());
    let dir = tempdir();
    let route = format!(
        "{{ host = \"{starttls}\", tls = \"required\", auth = \"{USER}\", password_file = \"smarthost.secret\" }}"
    );
    let alpha = relay(dir.path(), dir_s.path(), &route, PASSWORD);
    let first = send_one(&alpha);
    let db = alpha.queue_path();
    let done = wait_rows(
        &db,
        &format!("SELECT status FROM deliveries WHERE id = '{first}'"),
    );
    assert_eq!(done, ["delivered"], "{}", alpha.log());
    // Gone: the reload is refused, naming the key and the file.
    let secret = dir.path().join("smarthost.secret");
    std::fs::remove_file(&secret).unwrap();
    alpha.hangup();
    alpha.wait_log("reload refused", 1);
    let log = alpha.log();
    assert!(
        log.contains("routes.\"*\".password_file: cannot read") && log.contains("smarthost.secret"),
        "{log}"
    );
    // Another password: the next connection uses it (and is refused).
    std::fs::write(&secret, "changed-and-wrong\n").unwrap();
    alpha.hangup();
    alpha.wait_log("reloaded", 1);
    // A connection already open keeps the session it authenticated (idle
    // ones are kept 5 s): the new password is for new connections.
    std::thread::sleep(Duration::from_secs(6));
    let second = send_one(&alpha);
    let queued = wait_rows(
        &db,
        &format!("SELECT status, last_reply FROM queue WHERE id = '{second}' AND attempts > 0"),
    );
    assert_eq!(queued.len(), 1, "{}", alpha.log());
    assert!(
        queued[0].starts_with("deferred|451 4.7.0 ") && queued[0].contains("535"),
        "{queued:?}"
    );
    assert!(!alpha.log().contains(PASSWORD) && !alpha.log().contains("changed-and-wrong"));
}

/// An aiosmtpd smarthost (another implementation): STARTTLS required,
/// AUTH only over TLS; it records each AUTH (mechanism, user, password,
/// whether TLS was on) and each message in files of `dir`.
const AIOSMTPD: &str = r#"
import ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

d, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(d + "/cert.pem", d + "/key.pem")

class Handler:
    async def handle_DATA(self, server, session, envelope):
        with open(d + "/messages", "a") as f:
            f.write("%s %s %s\n" % (envelope.mail_from, ",".join(envelope.rcpt_tos), session.authenticated))
        return "250 2.0.0 OK"

def authenticator(server, session, envelope, mechanism, auth_data):
    login = auth_data.login.decode()
    secret = auth_data.password.decode()
    with open(d + "/auths", "a") as f:
        f.write("%s %s %s tls=%s\n" % (mechanism, login, secret, session.ssl is not None))
    return AuthResult(success=(login == user and secret == password))

c = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=ctx,
               require_starttls=True, auth_required=True, auth_require_tls=True,
               authenticator=authenticator)
c.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"#;

struct Python(std::process::Child);

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `file` until it has a line, for up to 30 s.
fn wait_file(file: &Path) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains('\n') || start.elapsed() > Duration::from_secs(30) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn aiosmtpd_smarthost_sees_auth_plain_over_tls() {
    let test = "aiosmtpd_smarthost_sees_auth_plain_over_tls";
    let have_it = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_it {
        return skip(
            test,
            "aiosmtpd not installed (python3 -m pip install aiosmtpd)",
        );
    }
    let dir_s = tempdir();
    certificate(dir_s.path());
    let port = free_port();
    let _server = Python(
        Command::new("python3")
            .args(["-c", AIOSMTPD])
            .arg(dir_s.path())
            .args([&port.to_string(), USER, PASSWORD])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_listening(addr, Duration::from_secs(20)),
        "aiosmtpd did not start"
    );
    let dir = tempdir();
    let route = format!(
        "{{ host = \"{addr}\", tls = \"required\", auth = \"{USER}\", password_file = \"smarthost.secret\" }}"
    );
    let alpha = relay(dir.path(), dir_s.path(), &route, PASSWORD);
    let id = send_one(&alpha);
    let messages = wait_file(&dir_s.path().join("messages"));
    assert_eq!(
        messages,
        "sender@client.test u@final.test True\n",
        "{}",
        alpha.log()
    );
    // Both offered, PLAIN chosen; the right account; TLS already on.
    let auths = std::fs::read_to_string(dir_s.path().join("auths")).unwrap();
    assert_eq!(auths, format!("PLAIN {USER} {PASSWORD} tls=True\n"));
    let done = wait_rows(
        &alpha.queue_path(),
        &format!("SELECT status FROM deliveries WHERE id = '{id}'"),
    );
    assert_eq!(done, ["delivered"], "{}", alpha.log());
    password_nowhere(&alpha, dir.path());
}
