//! One command line: never a panic; a parsed path shows no line break.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailhop::smtp::address::{ForwardPath, ReversePath};
use mailhop::smtp::command::{parse, Command};

fuzz_target!(|line: &[u8]| {
    match parse(line) {
        Ok(Command::Mail {
            path: ReversePath::Path(p),
            ..
        }) => assert!(!p.to_string().contains(['\r', '\n'])),
        Ok(Command::Rcpt {
            path: ForwardPath::Path(p),
            ..
        }) => assert!(!p.to_string().contains(['\r', '\n'])),
        _ => {}
    }
});
