//! Load harness for SMTP servers (SPEC section 9), run as
//! `cargo bench --bench load -- ARGS` (see `--help`):
//!
//! - `--target HOST:PORT`: load any SMTP server and print accepted
//!   messages/s, end-of-data-to-reply latency (p50, p99, max) and errors;
//! - `--sink PORT`: an SMTP sink on 127.0.0.1:PORT that accepts and counts;
//! - `--e2e`: a release mailhop relaying to an in-process sink, loaded,
//!   until the sink has every message: accepted/s, delivered/s, peak RSS.
//!
//! `--starttls` or `--tls` put the load over TLS (handshakes/s, resumed
//! handshakes, handshake latency); `--plain-probe N` measures plain
//! sessions beside it; `--server-pid`/`--server-pid-tree` (and `--e2e` by
//! itself) report the server's CPU per message and peak RSS.
//!
//! `--json` prints one line of JSON instead. Every mode stops by itself
//! within `--max-time`. Exit code: 0 when the run happened (errors are
//! figures, not failures), 1 when it could not be set up or an end-to-end
//! run is incomplete, 2 for a bad command line.

#[path = "load/args.rs"]
mod args;
#[path = "load/client.rs"]
mod client;
#[path = "load/e2e.rs"]
mod e2e;
#[path = "load/message.rs"]
mod message;
#[path = "load/procstat.rs"]
mod procstat;
#[path = "load/sink.rs"]
mod sink;
#[path = "load/stats.rs"]
mod stats;
#[path = "load/tls.rs"]
mod tls;

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;

use args::Args;
use stats::Setup;

fn main() -> ExitCode {
    // cargo passes --bench to harness = false benches; `cargo bench` with
    // no filter runs every bench, this one with nothing to do.
    let argv: Vec<OsString> = std::env::args_os().filter(|a| a != "--bench").collect();
    if argv.len() == 1 {
        eprintln!("load: nothing to do; `cargo bench --bench load -- --help` shows how to use it");
        return ExitCode::SUCCESS;
    }
    let args = Args::parse_from(argv);
    if let Err(e) = mailhop::event_loop::raise_fd_limit() {
        eprintln!("load: could not raise the open-file limit: {e}");
    }

    if let Some(port) = args.sink {
        return sink_mode(&args, port);
    }
    let tls_mode = tls::Mode::of(&args);
    let setup = |mode, target: String, cert| Setup {
        mode,
        target,
        connections: args.connections,
        messages: args.messages,
        size: args.size,
        recipients: args.recipients,
        pipelining: args.pipelining,
        reuse: args.reuse,
        tls: tls_mode.name(),
        resumption: args.resumption == args::OnOff::On,
        cert,
        plain_probe: args.plain_probe,
    };
    if args.e2e {
        return match e2e::run(&args) {
            Ok(mut out) => {
                stats::print(
                    &setup("e2e", out.target.clone(), out.cert),
                    &mut out.load,
                    Some(&out.e2e),
                    args.json,
                );
                if out.e2e.complete {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("load: e2e: {e}");
                ExitCode::from(1)
            }
        };
    }
    let target = args.target.expect("clap requires a mode");
    if args.tls && args.plain_probe > 0 && args.probe_target.is_none() {
        eprintln!("load: --tls with --plain-probe needs --probe-target (a plain port)");
        return ExitCode::from(2);
    }
    let probe_target = args.probe_target.unwrap_or(target);
    let msgs = message::Messages::new(&args.from, &args.recipients(), args.size);
    let deadline = Instant::now() + args.max_time();
    let plan = match client::Plan::new(&args, target, probe_target, deadline) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("load: {e}");
            return ExitCode::from(1);
        }
    };
    let watch = procstat::Watch::start(&args.server_pid, &args.server_pid_tree);
    let run = client::run(&plan, &msgs);
    let server = watch.map(procstat::Watch::finish);
    match run {
        Ok(mut load) => {
            load.server = server;
            stats::print(
                &setup("target", target.to_string(), None),
                &mut load,
                None,
                args.json,
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::from(1)
        }
    }
}

fn sink_mode(args: &Args, port: u16) -> ExitCode {
    let listener = match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("load: sink: bind 127.0.0.1:{port}: {e}");
            return ExitCode::from(1);
        }
    };
    let start = Instant::now();
    let stats = Arc::new(sink::SinkStats::new(start));
    let stop = Arc::new(AtomicBool::new(false));
    if !args.json {
        println!(
            "sink: listening on 127.0.0.1:{port} for {} s",
            args.max_time
        );
    }
    let deadline = start + args.max_time();
    if let Err(e) = sink::run(listener, stats.clone(), stop, deadline, !args.json) {
        eprintln!("load: sink: {e}");
        return ExitCode::from(1);
    }
    if args.json {
        use std::sync::atomic::Ordering::Relaxed;
        let v = serde_json::json!({
            "mode": "sink",
            "port": port,
            "elapsed_s": start.elapsed().as_secs_f64(),
            "messages": stats.messages.load(Relaxed),
            "rcpts": stats.rcpts.load(Relaxed),
            "sessions": stats.sessions.load(Relaxed),
        });
        println!("{v}");
    }
    ExitCode::SUCCESS
}
