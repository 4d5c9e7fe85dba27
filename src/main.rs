//! Thin: command line -> config -> queue and listeners -> pid file -> ctrlc -> run.

mod admin;

use std::process::ExitCode;

use clap::Parser;
use log::{error, warn};

use mailhop::cli::{Cli, Command, ReloadArgs, ServeArgs};
use mailhop::config::Config;
use mailhop::event_loop::{self, Listener, Secrets, Server};
use mailhop::pidfile::PidFile;
use mailhop::queue::Queue;

/// Bad command line or config (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    mailhop::logformat::init(cli.log_format);
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
        Command::Reload(args) => reload(&args),
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

fn usage_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("mailhop: {e}");
    ExitCode::from(EXIT_USAGE)
}

fn serve(args: ServeArgs) -> ExitCode {
    let mut config = match Config::load(args.config.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return usage_error(&e),
    };
    if !args.listen.is_empty() {
        config.listen = args.listen;
    }
    if let Some(queue) = args.queue {
        config.queue = queue;
    }
    if let Some(hostname) = args.hostname {
        config.hostname = hostname;
    }
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
    let tls = match mailhop::tls::load(&config) {
        Ok(tls) => tls,
        Err(e) => return usage_error(&format!("{}: {e}", config_name(&config))),
    };
    let users = match &config.auth_users_file {
        Some(path) => match mailhop::auth::Users::load(path) {
            Ok(users) => Some(users),
            Err(e) => {
                return usage_error(&format!("{}: auth.users_file: {e}", config_name(&config)))
            }
        },
        None => None,
    };
    if users.is_some() && tls.server.is_none() {
        warn!("auth.users_file is set but [tls] has no certificate: AUTH is only offered over TLS, so never");
    }
    let mut listeners = Vec::new();
    let plain = config.listen.iter().map(|a| (a, false));
    let implicit = config.tls.implicit_listen.iter().map(|a| (a, true));
    for (addr, implicit_tls) in plain.chain(implicit) {
        match event_loop::bind(*addr) {
            Ok(socket) => listeners.push(Listener {
                socket,
                implicit_tls,
            }),
            Err(e) => return fatal(&format!("cannot listen on {addr}: {e}")),
        }
    }
    // Written once bound, removed when this returns (a clean exit).
    let pid_file = args.pid_file.or(mailhop::pidfile::DEFAULT.map(Into::into));
    let _pid_file = match pid_file.as_deref().map(PidFile::create).transpose() {
        Ok(pid_file) => pid_file,
        Err(e) => return fatal(&e.to_string()),
    };
    let server = match Server::new(&config, listeners, queue, Secrets { tls, users }) {
        Ok(server) => server,
        Err(e) => return fatal(&format!("cannot start the event loop: {e}")),
    };
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
