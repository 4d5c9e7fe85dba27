//! mailhop: a store-and-forward SMTP relay on one thread and one `mio` loop.
//!
//! The way through the house:
//!
//! - [`smtp`]: the sans-IO core (parsers, the inbound state machine);
//!   imports neither `mio` nor `rusqlite`.
//! - [`event_loop`]: the only `mio` code: sockets, deadlines, group commit.
//! - [`queue`]: the only SQL (with `schema/`).
//! - [`policy`]: who may relay where, and each recipient's next hop.
//! - [`shaping`]: limits per next hop, sans-IO: `[shaping]` keys, the token
//!   bucket, the back-off after a "slow down" reply.
//! - [`mta_sts`]: MTA-STS (RFC 8461), sans-IO: the TXT record, the policy
//!   file and its HTTP response, what to do next per domain, and the
//!   RFC 8460 names of TLS outcomes; the loop fetches and applies it.
//! - [`config`] and [`cli`]: the TOML file and the command line.
//! - [`sendmail`]: the sendmail command line, writing into the queue.
//! - [`metrics`]: what `GET /metrics` shows; [`service`], [`pidfile`] and
//!   [`reload`]: running under systemd and `mailhop reload`.

pub mod auth;
pub mod bounce;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod event_loop;
pub mod logbuf;
pub mod logformat;
pub mod message;
pub mod metrics;
pub mod mta_sts;
pub mod pidfile;
pub mod policy;
pub mod queue;
pub mod reload;
pub mod routing;
pub mod sendmail;
pub mod service;
pub mod shaping;
pub mod smtp;
pub mod tls;
