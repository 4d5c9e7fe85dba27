//! mailhop: a store-and-forward SMTP relay on one thread and one `mio` loop.

pub mod config;
pub mod message;
pub mod queue;
pub mod smtp;
