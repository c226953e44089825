//! Pure protocol pieces a worker calls while it admits and routes a connection, before relaying.
//!
//! - [`client_hello`]: parses a TLS ClientHello from the bytes read so far, for SNI and ALPN
//!   routing of TLS passthrough listeners.
//!
//! Rules for everything here: pure (no syscalls, no clock reads; time is passed in), bounded
//! (every buffer, table and loop has a stated limit), never panics on any input (no indexing
//! that input can push out of range, checked arithmetic, no recursion), and errors are typed
//! with a short `as_str()` reason the worker counts.

pub mod client_hello;
