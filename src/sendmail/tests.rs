//! The parts of sendmail that meet the queue and the config, on real
//! queue files in a temporary folder.

use super::*;

fn config(extra: &str) -> Config {
    let text = format!(
        "hostname = \"host.example\"\nlocal_domains = [\"host.example\"]\nlocal_users = [\"alice\"]\nrelay_networks = []\n{extra}[routes]\n\"routed.example\" = \"127.0.0.1:2526\"\n"
    );
    Config::from_toml(&text, Path::new("/tmp"), "test.toml").unwrap()
}

fn alice() -> User {
    User {
        uid: 1000,
        name: "alice".into(),
        full_name: Some("Alice Liddell".into()),
    }
}

/// A fresh queue file made the way `serve` makes it, opened to submit.
fn queue(dir: &Path) -> Queue {
    let path = dir.join("queue.db");
    drop(Queue::open(&path).unwrap());
    Queue::open_to_submit(&path).unwrap()
}

#[test]
fn the_config_search_order() {
    let env = Some(OsString::from("/env.toml"));
    let option = Some(Path::new("/option.toml"));
    assert_eq!(
        config_file(option, env.clone(), true),
        Some(PathBuf::from("/option.toml"))
    );
    assert_eq!(
        config_file(None, env, true),
        Some(PathBuf::from("/env.toml"))
    );
    assert_eq!(
        config_file(None, Some(OsString::new()), true),
        Some(PathBuf::from(SYSTEM_CONFIG))
    );
    assert_eq!(config_file(None, None, false), None);
}

#[test]
fn addresses_are_qualified_and_routed_like_a_trusted_clients() {
    let settings = Settings::new(&config(""));
    let mut envelope = sender(None, &alice(), "host.example").unwrap();
    assert_eq!(envelope.sender, "alice@host.example");
    for address in [
        "Alice",
        "far@mx.example",
        "x@routed.example",
        "far@mx.example",
    ] {
        add_recipient(&mut envelope, address, None, &settings, EX_USAGE).unwrap();
    }
    let got: Vec<(&str, &str)> = envelope
        .recipients
        .iter()
        .map(|r| (r.mailbox.as_str(), r.next_hop.as_str()))
        .collect();
    // relay_networks is empty: a local user relays anyway. Duplicates go.
    assert_eq!(
        got,
        [
            ("Alice@host.example", "local"),
            ("far@mx.example", "mx.example"),
            ("x@routed.example", "127.0.0.1:2526"),
        ]
    );
    let unknown = add_recipient(&mut envelope, "bob", None, &settings, EX_USAGE).unwrap_err();
    assert_eq!(unknown.code, EX_NOUSER);
    assert!(unknown.message.contains("bob@host.example: no such user"));
    let bad = add_recipient(&mut envelope, "a b@@x", None, &settings, EX_DATAERR).unwrap_err();
    assert_eq!(bad.code, EX_DATAERR);
    add_recipient(
        &mut envelope,
        "jösé@bücher.example",
        None,
        &settings,
        EX_USAGE,
    )
    .unwrap();
    assert!(envelope.smtputf8);
}

#[test]
fn senders_null_given_and_default() {
    let user = alice();
    for null in ["", "<>"] {
        let e = sender(Some(null), &user, "h.example").unwrap();
        assert_eq!((e.sender.as_str(), e.reverse_path.as_str()), ("", ""));
    }
    let e = sender(Some("<b@x.example>"), &user, "h.example").unwrap();
    assert_eq!(e.sender, "b@x.example");
    assert_eq!(
        sender(Some("root"), &user, "h.example").unwrap().sender,
        "root@h.example"
    );
    assert_eq!(
        sender(Some("a b@x"), &user, "h").unwrap_err().code,
        EX_USAGE
    );
    let odd = User {
        name: "DOMAIN\\joe".into(),
        ..alice()
    };
    assert_eq!(
        default_sender(&odd, "h.example"),
        "\"DOMAIN\\\\joe\"@h.example"
    );
}

#[test]
fn a_message_in_pieces_commits_whole_with_its_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let mut queue = queue(dir.path());
    let settings = Settings::new(&config(""));
    let mut envelope = sender(None, &alice(), "host.example").unwrap();
    add_recipient(&mut envelope, "far@mx.example", None, &settings, EX_USAGE).unwrap();
    let data = [
        b"Subject: big\r\n\r\n".as_slice(),
        &b"0123456789abcdef\r\n".repeat(20_000),
    ]
    .concat();
    let mut message = Message {
        id: QueueIds::for_process(1).next(SystemTime::now()),
        sender: envelope.sender,
        reverse_path: envelope.reverse_path,
        recipients: envelope.recipients,
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        helo: "localhost".into(),
        received_at: SystemTime::now(),
        eight_bit: false,
        smtputf8: false,
        ret: None,
        envid: None,
        body: Vec::new(),
        chunks: 0,
        size: 0,
    };
    let head = b"Received: by host.example\r\n";
    store(&mut queue, &mut message, head, &mut data.as_slice()).unwrap();
    let want = [head.as_slice(), &data].concat();
    assert_eq!(message.size, want.len() as u64);
    assert_eq!(message.chunks as usize, want.len() / PIECE);
    assert_eq!(queue.read_body(&message.id).unwrap(), want);
    // The same ID again is refused, and leaves nothing of itself.
    let mut again = message.clone();
    assert!(store(&mut queue, &mut again, head, &mut data.as_slice()).is_err());
    assert_eq!(queue.read_body(&message.id).unwrap(), want);
}

#[test]
fn a_queue_to_submit_to_must_exist_and_be_a_queue() {
    let dir = tempfile::tempdir().unwrap();
    let missing_dir = Queue::open_to_submit(&dir.path().join("no/such/q.db"))
        .err()
        .unwrap();
    assert!(missing_dir.0.contains("does not exist"), "{missing_dir}");
    let missing = Queue::open_to_submit(&dir.path().join("q.db"))
        .err()
        .unwrap();
    assert!(missing.0.contains("no such file"), "{missing}");
    assert!(!dir.path().join("q.db").exists(), "never created");
    std::fs::write(dir.path().join("other.db"), b"").unwrap();
    let other = Queue::open_to_submit(&dir.path().join("other.db"))
        .err()
        .unwrap();
    assert!(other.0.contains("not a mailhop queue"), "{other}");
}

#[test]
fn reading_stops_at_the_limits() {
    let settings = Settings::new(&config("max_message_size = 1000\nmax_hops = 2\n"));
    let options = Options::default();
    let big = b"a line of text\n".repeat(200);
    let too_big = read_message(&mut big.as_slice(), &options, &settings).unwrap_err();
    assert_eq!(too_big.code, EX_TEMPFAIL);
    assert!(
        too_big.message.contains("message too big"),
        "{}",
        too_big.message
    );
    let hops = b"Received: a\nReceived: b\nReceived: c\n\nx\n";
    let looped = read_message(&mut hops.as_slice(), &options, &settings).unwrap_err();
    assert_eq!(looped.code, EX_DATAERR);
    let ok = b"Received: a\nReceived: b\n\nx\n";
    let (mut spool, scanned) = read_message(&mut ok.as_slice(), &options, &settings).unwrap();
    assert_eq!(scanned.hops, 2);
    let mut back = Vec::new();
    spool.reader().unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, b"Received: a\r\nReceived: b\r\n\r\nx\r\n");
}

#[test]
fn a_bs_session_commits_before_its_250() {
    let dir = tempfile::tempdir().unwrap();
    let mut queue = queue(dir.path());
    let settings = Settings::new(&config(""));
    let mut input = b"EHLO me\r\nMAIL FROM:<alice@host.example>\r\nRCPT TO:<far@mx.example>\r\nDATA\r\nSubject: s\r\n\r\n".to_vec();
    input.extend(b"..dotted line of a big message\r\n".repeat(5000));
    input.extend_from_slice(b".\r\nMAIL FROM:<>\r\nRCPT TO:<alice@host.example>\r\nDATA\r\nsmall\r\n.\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<far@mx.example>\r\nDATA\r\ncut off");
    let mut output = Vec::new();
    let local = session::Local {
        settings: &settings,
        queue: &mut queue,
        software: "mailhop sendmail -bs, userid 1000".into(),
        verbose: false,
    };
    session::run(local, &mut input.as_slice(), &mut output).unwrap();
    let out = String::from_utf8(output).unwrap();
    let ids: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("250 2.0.0 Ok: queued as "))
        .collect();
    assert_eq!(ids.len(), 2, "{out}");
    let big = queue.read_body(ids[0]).unwrap();
    let text = String::from_utf8(big).unwrap();
    assert!(text.starts_with("Received: from me ([127.0.0.1]) by host.example (mailhop sendmail -bs, userid 1000) with ESMTP id "), "{}", &text[..200]);
    assert!(text.ends_with(".dotted line of a big message\r\n"));
    assert_eq!(text.matches("\r\n.dotted").count(), 5000);
    assert!(queue.read_body(ids[1]).unwrap().ends_with(b"\r\nsmall\r\n"));
    assert!(
        out.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"),
        "{out}"
    );
}
