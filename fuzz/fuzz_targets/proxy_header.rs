//! Feeds arbitrary bytes to the PROXY header parser. Beyond "never panics", it checks that a
//! decoded header takes no more than it was given, that no prefix of it is called malformed,
//! that `Incomplete` asks for more, and that the addresses it decodes survive our own v1 and v2
//! encoders.
#![no_main]

use std::net::SocketAddr;

use ballast_dataplane::proto::proxy_protocol::{
    encode_v1, encode_v2, parse_proxy_header, Transport, V2_MAX_LEN,
};
use ballast_dataplane::proto::ParseError;
use libfuzzer_sys::fuzz_target;

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fuzz_target!(|data: &[u8]| {
    match parse_proxy_header(data) {
        Ok((header, used)) => {
            assert!(used <= data.len());
            assert_eq!(header.source.is_some(), header.destination.is_some());
            // Shorter reads of the same header are never refused, only waited for.
            for cut in [used / 2, used.saturating_sub(1)] {
                let prefix = data.get(..cut).unwrap_or_default();
                assert!(!matches!(
                    parse_proxy_header(prefix),
                    Err(ParseError::Malformed(_))
                ));
            }
            if let Some((src, dst)) = header.addresses() {
                let transport = header.transport.unwrap_or(Transport::Stream);
                let mut out = Vec::new();
                encode_v2(src, dst, transport, &mut out);
                let (again, n) = parse_proxy_header(&out).expect("own v2 header parses");
                assert_eq!(n, out.len());
                let (s, d) = again.addresses().expect("addresses survive v2");
                assert_eq!(
                    (canonical(s), canonical(d)),
                    (canonical(src), canonical(dst))
                );
                out.clear();
                encode_v1(src, dst, &mut out);
                let (again, _) = parse_proxy_header(&out).expect("own v1 header parses");
                let (s, d) = again.addresses().expect("addresses survive v1");
                assert_eq!(
                    (canonical(s), canonical(d)),
                    (canonical(src), canonical(dst))
                );
            }
        }
        Err(ParseError::Incomplete { needed }) => {
            let needed = needed.unwrap_or(usize::MAX);
            assert!(needed > data.len() && needed <= V2_MAX_LEN);
        }
        Err(ParseError::Malformed(reason)) => {
            assert!(!reason.as_str().is_empty());
        }
    }
});
