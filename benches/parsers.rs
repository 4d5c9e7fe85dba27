//! Micro-benchmarks of the inbound hot paths: command lines, paths, and
//! DATA framing with dot-unstuffing. `cargo bench --bench parsers`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use mailhop::smtp::address::parse_forward_path;
use mailhop::smtp::command::parse;
use mailhop::smtp::data::{BareLineEnds, DataReader};

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
    group.bench_function("path", |b| {
        b.iter(|| parse_forward_path(black_box(b"<jones@beta.example>")))
    });
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

criterion_group!(benches, commands, data);
criterion_main!(benches);
