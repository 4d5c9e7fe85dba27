//! Delivery decisions that need no socket: the retry schedule and local
//! Maildir delivery.

pub mod maildir;
