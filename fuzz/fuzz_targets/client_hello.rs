//! Feeds arbitrary bytes to the ClientHello parser. Beyond "never panics", it checks the
//! contract the worker relies on: `Incomplete` asks for more than it was given and never past
//! `MAX_HELLO`, and no prefix of a buffer that parses is ever called malformed.
#![no_main]

use ballast_dataplane::proto::client_hello::{parse_client_hello, MAX_HELLO};
use ballast_dataplane::proto::ParseError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_client_hello(data) {
        Ok(hello) => {
            if let Some(name) = &hello.server_name {
                assert!(!name.is_empty() && name.len() <= 253);
                assert_eq!(&name.to_ascii_lowercase(), name);
            }
            for cut in [data.len() / 2, data.len().saturating_sub(1)] {
                let prefix = data.get(..cut).unwrap_or_default();
                assert!(!matches!(
                    parse_client_hello(prefix),
                    Err(ParseError::Malformed(_))
                ));
            }
        }
        Err(ParseError::Incomplete { needed }) => {
            let needed = needed.unwrap_or(usize::MAX);
            assert!(needed > data.len() && needed <= MAX_HELLO);
        }
        Err(ParseError::Malformed(reason)) => {
            assert!(!reason.as_str().is_empty());
        }
    }
});
