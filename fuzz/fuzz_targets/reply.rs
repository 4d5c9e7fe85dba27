//! Replies: never a panic; a prefix is incomplete or the same as the whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailhop::smtp::reply::parse;

fuzz_target!(|input: &[u8]| {
    let whole = parse(input);
    if let Ok(Some((reply, used))) = &whole {
        assert!(*used <= input.len());
        assert!((200..600).contains(&reply.code));
        assert!(!reply.to_string().contains(['\r', '\n']));
    }
    if input.len() < 4096 {
        for at in (0..input.len()).step_by(7) {
            match parse(&input[..at]) {
                Ok(None) => {}
                other => assert_eq!(other, whole, "cut at {at}"),
            }
        }
    }
});
