use super::*;
use crate::config::DkimDomain;

/// Keys made by `keygen`, written where `Signers::load` reads them.
fn signers(dir: &Path, tables: &[(&str, &str, Algorithm, bool)]) -> Arc<Signers> {
    let tables: Vec<DkimDomain> = tables
        .iter()
        .map(|(domain, selector, algorithm, subdomains)| {
            let key = dir.join(format!("{selector}.{domain}.pem"));
            std::fs::write(&key, keygen(*algorithm).unwrap().private_pem).unwrap();
            DkimDomain {
                domain: domain.to_string(),
                selector: selector.to_string(),
                key,
                subdomains: *subdomains,
            }
        })
        .collect();
    Arc::new(Signers::load(&tables).unwrap().unwrap())
}

use std::sync::Arc;

/// A tag's value, folding whitespace removed.
fn tag(field: &str, name: &str) -> String {
    let body = field.split_once(':').unwrap().1;
    body.split(';')
        .find_map(|t| t.trim().strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {field}"))
        .split_whitespace()
        .collect()
}

fn sign(signers: &Arc<Signers>, message: &[u8], piece: usize) -> Outcome {
    let mut signing = Signing::new(signers.clone());
    for part in message.chunks(piece) {
        signing.feed(part);
    }
    signing.finish()
}

const MESSAGE: &[u8] =
    b"From: A <a@example.com>\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody  line \r\n\r\n\r\n";

#[test]
fn the_key_is_the_from_domains_or_a_parent_that_allows_subdomains() {
    let dir = tempfile::tempdir().unwrap();
    let s = signers(
        dir.path(),
        &[
            ("example.com", "a", Algorithm::Ed25519, false),
            ("corp.example", "b", Algorithm::Ed25519, true),
        ],
    );
    let domain = |d: &str| s.for_domain(d).map(|i| s.keys()[i].domain.as_str());
    assert_eq!(domain("Example.COM"), Some("example.com"));
    assert_eq!(domain("mail.example.com"), None, "subdomains not allowed");
    assert_eq!(domain("a.b.corp.example"), Some("corp.example"));
    assert_eq!(domain("notcorp.example"), None);
    assert_eq!(domain("example.org"), None);
}

#[test]
fn a_message_fed_in_any_pieces_gets_the_same_signature() {
    let dir = tempfile::tempdir().unwrap();
    let s = signers(
        dir.path(),
        &[("example.com", "s", Algorithm::Ed25519, false)],
    );
    let whole = sign(&s, MESSAGE, MESSAGE.len());
    let Outcome::Signed {
        field,
        domain,
        selector,
    } = &whole
    else {
        panic!("{whole:?}")
    };
    assert_eq!((domain.as_str(), selector.as_str()), ("example.com", "s"));
    assert!(
        field.starts_with("DKIM-Signature: ") && field.ends_with("\r\n"),
        "{field}"
    );
    assert!(field.lines().all(|l| l.len() <= 998));
    assert_eq!(tag(field, "a"), "ed25519-sha256");
    assert_eq!(tag(field, "c"), "relaxed/relaxed");
    // Byte by byte, so the empty line and every CRLF are split.
    for piece in [1, 2, 3, 7] {
        let Outcome::Signed { field: other, .. } = sign(&s, MESSAGE, piece) else {
            panic!("unsigned in pieces of {piece}")
        };
        assert_eq!(tag(&other, "bh"), tag(field, "bh"), "pieces of {piece}");
        assert_eq!(tag(&other, "h"), tag(field, "h"));
    }
    let h = tag(field, "h");
    // The fields present (bottom up), then the listed ones absent, From
    // among them again.
    assert!(h.starts_with("Subject:To:From:From:"), "{h}");
}

#[test]
fn mail_without_a_usable_from_or_with_huge_headers_is_left_unsigned() {
    let dir = tempfile::tempdir().unwrap();
    let s = signers(
        dir.path(),
        &[("example.com", "s", Algorithm::Rsa(2048), false)],
    );
    let unsigned = |m: &[u8]| match sign(&s, m, 4096) {
        Outcome::Unsigned(why) => why,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        unsigned(b"To: b@example.net\r\n\r\nx\r\n"),
        "no From address"
    );
    assert_eq!(unsigned(b"\r\nonly a body\r\n"), "no header section");
    assert_eq!(
        unsigned(b"From: a@example.org\r\n\r\nx\r\n"),
        "no key for From domain example.org"
    );
    let mut huge = b"From: a@example.com\r\n".to_vec();
    while huge.len() <= MAX_HEADER_SECTION {
        huge.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
    }
    huge.extend_from_slice(b"\r\nbody\r\n");
    assert_eq!(unsigned(&huge), "header section over 100 KiB");
    // RSA works as well, and a message without a body is still signed.
    assert!(matches!(
        sign(&s, b"From: a@example.com\r\nSubject: x\r\n", 5),
        Outcome::Signed { .. }
    ));
}

#[test]
fn keygen_records_load_back_and_split_into_dns_strings() {
    let rsa = keygen(Algorithm::Rsa(2048)).unwrap();
    let line = rsa.zone_line("example.com.", "s1");
    assert!(line.starts_with("s1._domainkey.example.com. IN TXT ( \"v=DKIM1; k=rsa; p=MII"));
    let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
    assert!(
        strings.len() >= 2 && strings.iter().all(|s| s.len() <= 255),
        "{line}"
    );
    assert_eq!(strings.concat(), rsa.record());
    let ed = keygen(Algorithm::Ed25519).unwrap();
    // The raw 32-octet key, base64 (RFC 8463 4.2).
    assert_eq!(ed.public.len(), 44);
    assert!(
        keygen(Algorithm::Rsa(1024)).is_err(),
        "ring signs with 2048 bits or more"
    );
    let dir = tempfile::tempdir().unwrap();
    for (name, pair) in [("rsa", &rsa), ("ed", &ed)] {
        let key = dir.path().join(format!("{name}.pem"));
        std::fs::write(&key, &pair.private_pem).unwrap();
        let table = DkimDomain {
            domain: "example.com".into(),
            selector: name.into(),
            key,
            subdomains: false,
        };
        let loaded = DomainKey::load(&table).unwrap();
        let want = if name == "rsa" {
            "rsa-sha256"
        } else {
            "ed25519-sha256"
        };
        assert_eq!(loaded.algorithm, want);
    }
}
