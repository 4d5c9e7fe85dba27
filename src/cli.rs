//! The command line (SPEC section 1).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "mailhop", version, about = "A store-and-forward SMTP relay")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text, or as one JSON object per line (for log shippers).
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        env = "MAILHOP_LOG_FORMAT",
        default_value_t
    )]
    pub log_format: crate::logformat::LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay in the foreground until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Parse and validate the config, print the effective settings.
    CheckConfig(ConfigArg),
    /// Look at and manage the queue (also while `serve` runs).
    Queue(QueueArgs),
    /// Read a password on stdin, print a `name:hash` line for `[auth] users_file`.
    Passwd(PasswdArgs),
    /// Queue a message like sendmail(1): `-t`, `-i`, `-f`, `-F`, `-bs`, ...
    /// (also run as `sendmail` through a symlink).
    #[command(disable_help_flag = true)]
    Sendmail(SendmailArgs),
    /// Check the config, then tell the running `serve` to reload it (SIGHUP).
    Reload(ReloadArgs),
    /// DKIM keys: `mailhop dkim keygen DOMAIN SELECTOR`.
    Dkim(DkimArgs),
}

#[derive(Debug, Args)]
pub struct DkimArgs {
    #[command(subcommand)]
    pub command: DkimCommand,
}

#[derive(Debug, Subcommand)]
pub enum DkimCommand {
    /// Make a signing key, write it to a new file (mode 0600), and print
    /// the DNS TXT record to publish and the config table that uses it.
    Keygen(KeygenArgs),
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The domain that signs (`d=`): mail whose From is in it.
    pub domain: String,
    /// The selector (`s=`): the record goes at SELECTOR._domainkey.DOMAIN.
    pub selector: String,
    /// `rsa` (what every verifier knows) or `ed25519` (RFC 8463, short).
    #[arg(long, value_enum, default_value_t = KeyAlgorithm::Rsa)]
    pub algorithm: KeyAlgorithm,
    /// RSA key size.
    #[arg(long, default_value_t = 2048)]
    pub bits: usize,
    /// Where to write the private key; an existing file is never overwritten.
    /// Default: SELECTOR.DOMAIN.pem in the current directory.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyAlgorithm {
    Rsa,
    Ed25519,
}

#[derive(Debug, Args)]
pub struct SendmailArgs {
    /// sendmail's own options and the recipients, read by `mailhop::sendmail`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Check this config first (as `serve` would load it); if it is invalid, nothing is sent.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The pid file `serve --pid-file` wrote.
    #[arg(long, value_name = "PATH", env = "MAILHOP_PID_FILE")]
    pub pid_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// The account name (what clients give to AUTH).
    pub name: String,
}

#[derive(Debug, Args, Clone)]
pub struct ConfigArg {
    /// The TOML config file; without it the embedded default applies.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Listen here instead of the config's `listen` (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Use this queue file instead of the config's `queue`.
    #[arg(long, value_name = "PATH")]
    pub queue: Option<PathBuf>,
    /// Use this host name instead of the config's `hostname`.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Write the process ID here once listening; refuse to start while it names a running mailhop.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    pub command: QueueCommand,
}

/// Which queue file: `--queue`, else the config's `queue`, else the
/// embedded default's (`./mailhop.db`).
#[derive(Debug, Args, Clone)]
pub struct QueueTarget {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Use this queue file instead of the config's `queue`.
    #[arg(long, value_name = "PATH")]
    pub queue: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Pending messages and their recipients, like `mailq`.
    List {
        /// One JSON array instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: QueueTarget,
    },
    /// One message: envelope, recipients, attempt history, headers.
    Show {
        id: String,
        #[command(flatten)]
        target: QueueTarget,
    },
    /// Make deferred recipients due now (and their failing next hops).
    #[command(override_usage = "mailhop queue retry <ID|--all> [OPTIONS]")]
    Retry {
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Every waiting message.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[command(flatten)]
        target: QueueTarget,
    },
    /// Park a message: it is not attempted until released.
    Hold {
        id: String,
        #[command(flatten)]
        target: QueueTarget,
    },
    /// Unpark a held message; it is due at once.
    Release {
        id: String,
        #[command(flatten)]
        target: QueueTarget,
    },
    /// Remove a message (recorded as `deleted` in `deliveries`).
    Delete {
        id: String,
        #[command(flatten)]
        target: QueueTarget,
    },
    /// Counts by status, by next hop, and by age (like `qshape`).
    Stats {
        #[command(flatten)]
        target: QueueTarget,
    },
}

impl QueueCommand {
    pub fn target(&self) -> &QueueTarget {
        match self {
            QueueCommand::List { target, .. }
            | QueueCommand::Show { target, .. }
            | QueueCommand::Retry { target, .. }
            | QueueCommand::Hold { target, .. }
            | QueueCommand::Release { target, .. }
            | QueueCommand::Delete { target, .. }
            | QueueCommand::Stats { target } => target,
        }
    }
}
