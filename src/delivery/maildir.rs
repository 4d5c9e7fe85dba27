//! Local delivery to Maildir (SPEC section 7): write into `tmp`, fsync,
//! rename into `new`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Delivers one message to `<root>/<user>/new`, creating `tmp`, `new` and
/// `cur` as needed. `user` is the lowercased mailbox name (checked here to
/// be a safe single path component). The file starts with
/// `Return-Path: <reverse_path>` and `Delivered-To: <delivered_to>`, then the
/// stored message with its CRLF line ends turned into LF, as Maildir readers
/// expect. The file name is unique (`<secs>.M<micros>P<pid>Q<seq>.<hostname>`).
/// After the rename the `new` folder is fsynced too. Returns the final path.
pub fn deliver(
    root: &Path,
    user: &str,
    return_path: &str,
    delivered_to: &str,
    message: &[u8],
    hostname: &str,
    now: SystemTime,
) -> io::Result<PathBuf> {
    todo!()
}
