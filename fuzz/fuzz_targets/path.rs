//! Forward and reverse paths: never a panic, and whatever parses shows
//! itself in a form that parses back to the same path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailhop::smtp::address::{parse_forward_path, parse_reverse_path, ForwardPath, ReversePath};

fuzz_target!(|input: &[u8]| {
    if let Ok((ForwardPath::Path(p), rest)) = parse_forward_path(input) {
        assert!(input.ends_with(rest));
        let shown = format!("<{p}>");
        assert!(!shown.contains(['\r', '\n', '\0']));
        let (again, rest) = parse_forward_path(shown.as_bytes()).expect("shown path parses");
        assert_eq!(again, ForwardPath::Path(p));
        assert!(rest.is_empty());
    }
    if let Ok((ReversePath::Path(p), rest)) = parse_reverse_path(input) {
        assert!(input.ends_with(rest));
        let shown = format!("<{p}>");
        let (again, _) = parse_reverse_path(shown.as_bytes()).expect("shown path parses");
        assert_eq!(again, ReversePath::Path(p));
    }
});
