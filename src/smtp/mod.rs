//! The sans-IO SMTP core: parsers and state machines that take bytes and
//! give replies and actions. Nothing here touches a socket, a clock or SQL.

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod dsn;
pub mod reply;
pub mod server;
