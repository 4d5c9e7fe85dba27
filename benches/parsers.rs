//! Micro-benchmarks of the hot paths: command lines, paths, DATA framing
//! with dot-unstuffing (inbound); reply parsing and dot-stuffing by the
//! client machine (outbound). `cargo bench --bench parsers`.

use std::rc::Rc;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use mailhop::smtp::address::{parse_forward_path, parse_reverse_path};
use mailhop::smtp::client::{Body, Client, Event, Transaction};
use mailhop::smtp::command::parse;
use mailhop::smtp::data::{BareLineEnds, DataReader};
use mailhop::smtp::reply;

fn commands(c: &mut Criterion) {
    let mut group = c.benchmark_group("command");
    for (name, line) in [
        (
            "mail",
            &b"MAIL FROM:<smith@alpha.example> SIZE=1024 BODY=8BITMIME"[..],
        ),
        ("rcpt", b"RCPT TO:<jones@beta.example>"),
        (
            "rcpt_route_literal",
            b"RCPT TO:<@one.example,@two.example:\"quoted user\"@[IPv6:2001:db8::1]>",
        ),
        ("noop", b"NOOP"),
    ] {
        group.bench_function(name, |b| b.iter(|| parse(black_box(line))));
    }
    group.finish();
}

fn data(c: &mut Criterion) {
    // 64 KiB of 78-octet lines, one in ten dot-stuffed, then the end.
    let mut input = Vec::new();
    for i in 0..840 {
        if i % 10 == 0 {
            input.push(b'.');
        }
        input.extend_from_slice(&[b'x'; 76]);
        input.extend_from_slice(b"\r\n");
    }
    input.extend_from_slice(b".\r\n");
    let mut group = c.benchmark_group("data");
    group.throughput(Throughput::Bytes(input.len() as u64));
    let mut body = Vec::with_capacity(input.len());
    for chunk in [input.len(), 4096] {
        group.bench_function(format!("unstuff/{chunk}"), |b| {
            b.iter(|| {
                body.clear();
                let mut reader = DataReader::new(10 << 20, BareLineEnds::Reject);
                for piece in input.chunks(chunk) {
                    reader.feed(black_box(piece), &mut body);
                }
                reader.finish()
            })
        });
    }
    group.finish();
}

fn paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("path");
    for (name, input) in [
        ("forward/plain", &b"<jones@beta.example>"[..]),
        (
            "forward/long_domain",
            b"<first.last+tag@mail.eu-west-1.internal.corp.example.co.uk>",
        ),
        (
            "forward/quoted",
            b"<\"quoted \\\"user\\\" name\"@beta.example>",
        ),
        ("forward/ipv4_literal", b"<jones@[192.0.2.17]>"),
        (
            "forward/ipv6_literal",
            b"<jones@[IPv6:2001:db8:85a3::8a2e:370:7334]>",
        ),
        (
            "forward/source_route",
            b"<@one.example,@two.example,@three.example:jones@beta.example>",
        ),
        ("forward/utf8", "<j\u{f6}rg@m\u{fc}ller.example>".as_bytes()),
        ("forward/postmaster", b"<Postmaster>"),
    ] {
        group.bench_function(name, |b| b.iter(|| parse_forward_path(black_box(input))));
    }
    for (name, input) in [
        ("reverse/null", &b"<>"[..]),
        (
            "reverse/params",
            b"<smith@alpha.example> SIZE=1024 BODY=8BITMIME",
        ),
    ] {
        group.bench_function(name, |b| b.iter(|| parse_reverse_path(black_box(input))));
    }
    group.finish();
}

fn replies(c: &mut Criterion) {
    let ehlo = b"250-mx.beta.example Hello alpha.example [192.0.2.1]\r\n\
250-PIPELINING\r\n250-SIZE 10485760\r\n250-ETRN\r\n250-STARTTLS\r\n\
250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250 SMTPUTF8\r\n";
    let mut group = c.benchmark_group("reply");
    for (name, input) in [
        ("single", &b"250 2.0.0 Ok: queued as 4Jx1Yq0Zf2z9t\r\n"[..]),
        (
            "single_no_enhanced",
            b"354 End data with <CR><LF>.<CR><LF>\r\n",
        ),
        (
            "refusal",
            b"550 5.1.1 <nobody@beta.example>: Recipient address rejected: User unknown\r\n",
        ),
        ("multi_ehlo", &ehlo[..]),
        // What a client sees most while a reply trickles in: not yet whole.
        ("multi_partial", &ehlo[..ehlo.len() - 12]),
    ] {
        group.bench_function(name, |b| b.iter(|| reply::parse(black_box(input))));
    }
    // Pipelined replies in one read: MAIL, 3 x RCPT, DATA.
    let batch = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 Go ahead\r\n";
    group.bench_function("pipelined_batch", |b| {
        b.iter(|| {
            let mut input = &batch[..];
            let mut n = 0;
            while let Ok(Some((reply, used))) = reply::parse(black_box(input)) {
                n += reply.code as usize;
                input = &input[used..];
            }
            n
        })
    });
    group.finish();
}

/// The client machine writing a 64 KiB body: dot-stuffing in bounded
/// pieces, measured from `send` to the last byte drained from `output`.
fn stuffing(c: &mut Criterion) {
    let mut dotted = Vec::new();
    let mut plain = Vec::new();
    for i in 0..840 {
        if i % 10 == 0 {
            dotted.push(b'.');
        }
        dotted.extend_from_slice(&[b'x'; 76][..76 - usize::from(i % 10 == 0)]);
        dotted.extend_from_slice(b"\r\n");
        plain.extend_from_slice(&[b'y'; 76]);
        plain.extend_from_slice(b"\r\n");
    }
    let mut group = c.benchmark_group("client");
    for (name, body) in [("stuff_64k/dotted", dotted), ("stuff_64k/plain", plain)] {
        let body: Rc<[u8]> = Rc::from(body);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter_batched(
                ready_client,
                |mut client| {
                    client.send(Transaction {
                        reverse_path: "smith@alpha.example".into(),
                        recipients: vec!["jones@beta.example".into()],
                        body: Body::Whole(body.clone()),
                        eight_bit: false,
                        smtputf8: false,
                        dsn: Default::default(),
                    });
                    client.output().clear();
                    client.receive(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 Go ahead\r\n");
                    let mut written = 0;
                    loop {
                        let out = client.output();
                        if out.is_empty() {
                            break;
                        }
                        written += out.len();
                        black_box(&out[..]);
                        out.clear();
                    }
                    assert!(written > body.len(), "the body was written");
                    (client, written)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// A client greeted and past EHLO (with PIPELINING), ready for `send`.
fn ready_client() -> Client {
    let mut client = Client::new("alpha.example");
    client.receive(b"220 beta.example ESMTP\r\n");
    client.output().clear();
    client.receive(b"250-beta.example\r\n250-PIPELINING\r\n250-SIZE 0\r\n250 8BITMIME\r\n");
    client.output().clear();
    assert_eq!(client.poll_event(), Some(Event::Ready));
    client
}

criterion_group!(benches, commands, paths, data, replies, stuffing);
criterion_main!(benches);
