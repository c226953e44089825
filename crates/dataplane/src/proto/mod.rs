//! Pure protocol pieces a worker calls while it admits and routes a connection, before relaying.
//!
//! - [`client_hello`]: parses a TLS ClientHello from the bytes read so far, for SNI and ALPN
//!   routing of TLS passthrough listeners.
//! - [`proxy_protocol`]: decodes a PROXY v1/v2 header from a trusted upstream balancer and
//!   encodes one for backends (v1, v2, and v2 in front of each UDP datagram).
//! - [`acl`]: allow / deny CIDR lists (and the `trusted` list for PROXY), built once, matched by
//!   binary search.
//! - [`rate_limit`]: per-source live-connection caps and token buckets, per worker, in a table of
//!   fixed capacity that evicts the source idle longest.
//!
//! Rules for everything here: pure (no syscalls, no clock reads; time is passed in), bounded
//! (every buffer, table and loop has a stated limit), never panics on any input (no indexing
//! that input can push out of range, checked arithmetic, no recursion), and errors are typed
//! with a short `as_str()` reason the worker counts.
//!
//! The parsers share one calling convention: the worker passes everything it has read so far
//! and gets the parsed value, [`ParseError::Incomplete`] (read more, up to its bound), or
//! [`ParseError::Malformed`] (close and count the reason).

use std::fmt;

/// Declares a reason enum whose variants each carry the short name the worker counts them by.
macro_rules! reasons {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// How many reasons there are: the length of a per-reason counter array, so that
            /// every reason has its own cell by construction.
            pub const COUNT: usize = Self::ALL.len();

            /// This reason's position in [`Self::ALL`], always below [`Self::COUNT`].
            pub fn index(self) -> usize {
                self as usize
            }

            /// A short stable name, for a metric label or a log field.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::error::Error for $name {}
    };
}

pub mod acl;
pub mod client_hello;
pub mod proxy_protocol;
pub mod rate_limit;

/// The outcome of parsing a buffer that is not (yet) a complete message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError<R: fmt::Display + fmt::Debug> {
    /// Wait for more bytes. `needed` is a lower bound on the length the buffer must reach before
    /// the message can be complete; it is always more than the bytes given. A caller whose
    /// buffer cannot grow that far closes the connection.
    #[error("incomplete: more bytes needed")]
    Incomplete { needed: Option<usize> },
    /// Close the connection and count the reason.
    #[error("malformed: {0}")]
    Malformed(R),
}

#[cfg(test)]
fn assert_distinct_names<R: Copy>(all: &[R], name: impl Fn(R) -> &'static str) {
    let mut names: Vec<_> = all.iter().map(|&r| name(r)).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all.len());
}

#[cfg(test)]
mod tests {
    use super::{client_hello, proxy_protocol};
    use crate::route::ListenerState;

    /// Every reason has its own counter cell: a new reason grows the arrays with it, instead
    /// of falling off the end of a fixed-size one and counting nowhere.
    #[test]
    fn every_reject_reason_has_its_own_counter() {
        let state = ListenerState::default();
        for (i, reason) in proxy_protocol::Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        for (i, reason) in client_hello::Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        assert_eq!(
            state.rejected_proxy_malformed.len(),
            proxy_protocol::Reason::ALL.len()
        );
        assert_eq!(
            state.rejected_tls_malformed.len(),
            client_hello::Reason::ALL.len()
        );
    }
}
