//! Thin: command line -> config -> queue and listeners -> pid file -> ctrlc -> run.

mod admin;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use log::{error, warn};

use mailhop::cli::{Cli, Command, DkimCommand, KeyAlgorithm, KeygenArgs, ReloadArgs, ServeArgs};
use mailhop::config::Config;
use mailhop::event_loop::{self, Listener, Secrets, Server};
use mailhop::pidfile::PidFile;
use mailhop::queue::Queue;

/// sendmail prints nothing on success: only warnings are logged.
const SENDMAIL_LOG: &str = "warn";

/// Bad command line or config (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // Run as `sendmail` (a symlink): every argument is sendmail's.
    if args
        .first()
        .is_some_and(|argv0| mailhop::sendmail::invoked_as_sendmail(argv0))
    {
        mailhop::logformat::init(mailhop::logformat::LogFormat::Text, SENDMAIL_LOG);
        return mailhop::sendmail::main(&args[1..]);
    }
    let cli = Cli::parse_from(args);
    let quiet = matches!(cli.command, Command::Sendmail(_));
    mailhop::logformat::init(cli.log_format, if quiet { SENDMAIL_LOG } else { "info" });
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::CheckConfig(args) => match Config::load(args.config.as_deref()) {
            Ok(config) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(&e),
        },
        Command::Queue(args) => admin::run(args.command),
        Command::Passwd(args) => passwd(&args.name),
        Command::Sendmail(args) => mailhop::sendmail::main(&args.args),
        Command::Reload(args) => reload(&args),
        Command::Dkim(args) => match args.command {
            DkimCommand::Keygen(args) => dkim_keygen(&args),
        },
    }
}

/// `mailhop reload`: config checked, then SIGHUP to the pid file's mailhop.
fn reload(args: &ReloadArgs) -> ExitCode {
    match mailhop::reload::reload(args.config.as_deref(), args.pid_file.as_deref()) {
        Ok(pid) => {
            println!("reload: sent SIGHUP to mailhop (pid {pid})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailhop: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `mailhop passwd NAME`: one line of password from stdin (not echoed when
/// it is a terminal is the shell's business), a `name:hash` line out.
fn passwd(name: &str) -> ExitCode {
    if name.is_empty() || name.contains([':', '\n', '\r']) {
        return usage_error(&format!(
            "passwd: {name:?} cannot be an account name (no ':' or line breaks)"
        ));
    }
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("mailhop: passwd: cannot read the password: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return usage_error(&"passwd: empty password");
    }
    println!("{name}:{}", mailhop::auth::hash_password(password));
    ExitCode::SUCCESS
}

/// `mailhop dkim keygen`: the key goes to a new file only this user can
/// read; the record and the config table go to stdout.
fn dkim_keygen(args: &KeygenArgs) -> ExitCode {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let domain = args.domain.trim_end_matches('.').to_ascii_lowercase();
    for (what, name) in [("domain", &domain), ("selector", &args.selector)] {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return usage_error(&format!(
                "dkim keygen: {name:?} is not a {what} (ASCII labels; IDNs in xn-- form)"
            ));
        }
    }
    let algorithm = match args.algorithm {
        KeyAlgorithm::Rsa => mailhop::dkim::Algorithm::Rsa(args.bits),
        KeyAlgorithm::Ed25519 => mailhop::dkim::Algorithm::Ed25519,
    };
    let pair = match mailhop::dkim::keygen(algorithm) {
        Ok(pair) => pair,
        Err(e) => return usage_error(&format!("dkim keygen: {e}")),
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from(format!("{}.{domain}.pem", args.selector)));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&out)
        .and_then(|mut f| {
            f.write_all(pair.private_pem.as_bytes())
                .and_then(|()| f.sync_all())
        });
    if let Err(e) = written {
        eprintln!("mailhop: dkim keygen: cannot write {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    let key = std::path::absolute(&out).unwrap_or(out);
    println!("; the private key is in {} (keep it secret)", key.display());
    println!("; publish this record, then add the table to mailhop's config:");
    println!("{}", pair.zone_line(&domain, &args.selector));
    println!();
    println!("[dkim.\"{domain}\"]");
    println!("selector = \"{}\"", args.selector);
    println!("key = {:?}", key.display().to_string());
    ExitCode::SUCCESS
}

fn usage_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("mailhop: {e}");
    ExitCode::from(EXIT_USAGE)
}

/// The config with `serve`'s overrides, and what it names (certificates,
/// users): at start and again on each reload.
fn load_all(args: &ServeArgs) -> Result<(Config, Secrets), String> {
    let mut config = Config::load(args.config.config.as_deref()).map_err(|e| e.to_string())?;
    if !args.listen.is_empty() {
        config.listen = args.listen.clone();
    }
    if let Some(queue) = &args.queue {
        config.queue = queue.clone();
    }
    if let Some(hostname) = &args.hostname {
        config.hostname = hostname.clone();
    }
    let tls = mailhop::tls::load(&config).map_err(|e| format!("{}: {e}", config_name(&config)))?;
    let users = match &config.auth_users_file {
        Some(path) => Some(
            mailhop::auth::Users::load(path)
                .map_err(|e| format!("{}: auth.users_file: {e}", config_name(&config)))?,
        ),
        None => None,
    };
    if users.is_some() && tls.server.is_none() {
        warn!("auth.users_file is set but [tls] has no certificate: AUTH is only offered over TLS, so never");
    }
    let dkim = mailhop::dkim::Signers::load(&config.dkim)
        .map_err(|e| format!("{}: {e}", config_name(&config)))?
        .map(std::sync::Arc::new);
    Ok((config, Secrets { tls, users, dkim }))
}

fn serve(args: ServeArgs) -> ExitCode {
    let (config, secrets) = match load_all(&args) {
        Ok(loaded) => loaded,
        Err(e) => return usage_error(&e),
    };
    if let Err(e) = event_loop::raise_fd_limit() {
        warn!("cannot raise the open file limit: {e}");
    }
    event_loop::ignore_file_size_signal();
    let queue = match Queue::open(&config.queue) {
        Ok(queue) => queue,
        Err(e) => {
            return fatal(&format!(
                "cannot open queue {}: {e}",
                config.queue.display()
            ))
        }
    };
    let mut listeners = Vec::new();
    for (addr, implicit_tls) in event_loop::listen_addrs(&config) {
        match event_loop::bind(addr) {
            Ok(socket) => listeners.push(Listener {
                socket,
                implicit_tls,
                configured: addr,
            }),
            Err(e) => return fatal(&format!("cannot listen on {addr}: {e}")),
        }
    }
    // Written once bound, removed when this returns (a clean exit).
    let pid_file = args.pid_file.clone().or(config.pid_file.clone());
    let _pid_file = match pid_file.as_deref().map(PidFile::create).transpose() {
        Ok(pid_file) => pid_file,
        Err(e) => return fatal(&e.to_string()),
    };
    let mut server = match Server::new(&config, listeners, queue, secrets) {
        Ok(server) => server,
        Err(e) => return fatal(&format!("cannot start the event loop: {e}")),
    };
    server.set_reloader(Box::new(move || load_all(&args)));
    let handle = server.shutdown_handle();
    let installed = ctrlc::set_handler(move || {
        if handle.signal() > 0 {
            // Second signal: leave now. Every 250 given was committed first.
            eprintln!("mailhop: second signal, exiting at once");
            std::process::exit(130);
        }
    });
    if let Err(e) = installed {
        return fatal(&format!("cannot install the signal handler: {e}"));
    }
    // SIGTERM: the loop stops gracefully on the first; a second one ends
    // the process at once, even with the loop busy.
    let terminated = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let term = signal_hook::consts::SIGTERM;
    let registered =
        signal_hook::flag::register_conditional_shutdown(term, 130, terminated.clone())
            .and_then(|_| signal_hook::flag::register(term, terminated));
    if let Err(e) = registered {
        return fatal(&format!("cannot install the SIGTERM handler: {e}"));
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(&format!("event loop failed: {e}")),
    }
}

/// The config file, for messages about what it names.
fn config_name(config: &Config) -> String {
    config.file.as_ref().map_or_else(
        || "the embedded default".to_string(),
        |f| f.display().to_string(),
    )
}

fn fatal(message: &str) -> ExitCode {
    error!("{message}");
    ExitCode::FAILURE
}
