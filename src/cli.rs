//! The command line (SPEC section 1).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "mailhop", version, about = "A store-and-forward SMTP relay")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay in the foreground until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Parse and validate the config, print the effective settings.
    CheckConfig(ConfigArg),
}

#[derive(Debug, Args)]
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
}
