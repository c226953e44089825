//! The TLS ClientHello parser behind SNI routing: pure and incremental.
//!
//! The worker reads the first bytes of a TLS passthrough connection into a buffer (it forwards
//! them unchanged once routed) and calls [`parse_client_hello`] after every read. The parser
//! looks at the whole buffer each time and answers one of three things: the hello is complete
//! ([`ClientHello`]: server name, ALPN list, versions), more bytes are needed
//! ([`ParseError::Incomplete`]), or the bytes can never become a ClientHello
//! ([`ParseError::Malformed`] with a [`Reason`] to count).
//!
//! It owns the record layer as far as a ClientHello needs it: one handshake message may be split
//! over several TLS records (RFC 8446 5.1) and any record over several TCP segments, so every
//! prefix of a valid hello is `Incomplete`, never `Malformed`. Everything is bounded by
//! [`MAX_HELLO`] bytes on the wire: a hello that would end past it is `TooLarge`, so the worker
//! never needs a buffer larger than that. No syscalls, no recursion, no panics on any input, and
//! the only allocations are bounded by the input (a copy of a multi-record hello, the names).

// Input comes off the network: every access is checked (`get`, `split_at_checked`, ...).
#![deny(clippy::indexing_slicing)]

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use super::ParseError;

/// The most bytes (records and their headers) a ClientHello may take on the wire. Real hellos
/// are a few hundred bytes; post-quantum key shares make them about 2 KiB.
pub const MAX_HELLO: usize = 16 * 1024;

const RECORD_HEADER: usize = 5;
const HANDSHAKE_HEADER: usize = 4;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// RFC 8446 5.1: a plaintext record carries at most 2^14 bytes.
const MAX_RECORD: usize = 1 << 14;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const SNI_HOST_NAME: u8 = 0;
const MAX_HOST_NAME: usize = 253;
const MAX_LABEL: usize = 63;
/// TLS 1.3 as it appears in supported_versions.
pub const TLS13: u16 = 0x0304;

reasons! {
    /// Why a buffer can never become a ClientHello.
    pub enum Reason {
        /// The first bytes are not a TLS record (plain HTTP, SSH, random bytes).
        NotTls => "not_tls",
        /// An SSLv2-style ClientHello, which no supported TLS version accepts.
        Sslv2 => "sslv2",
        /// A TLS record, but not a handshake (an alert, application data, ...).
        NotHandshake => "not_handshake",
        /// Another record type arrived before the ClientHello was complete (RFC 8446 5.1 forbids
        /// interleaving).
        Interleaved => "interleaved",
        /// A handshake message other than ClientHello came first.
        NotClientHello => "not_client_hello",
        /// A length field disagrees with the bytes around it, or a record is empty or oversized.
        BadLength => "bad_length",
        /// The hello would end past [`MAX_HELLO`] bytes.
        TooLarge => "too_large",
        /// The hello's legacy_version is not SSL 3 / TLS.
        BadVersion => "bad_version",
        /// An extension the router reads is malformed or repeated.
        BadExtension => "bad_extension",
        /// The server_name is not a DNS host name (RFC 6066 3).
        BadServerName => "bad_server_name",
    }
}

pub type HelloError = ParseError<Reason>;

/// What routing needs from a complete ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The handshake's legacy_version (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// The host name from server_name, lower-cased. `None` when the client sent none, or sent an
    /// IP literal, which RFC 6066 forbids there and which names no virtual host.
    pub server_name: Option<String>,
    /// The protocols the client offers by ALPN, in its order of preference.
    pub alpn: Alpn,
    /// The supported_versions extension as sent (GREASE values included); empty without it.
    pub supported_versions: Vec<u16>,
}

impl ClientHello {
    pub fn offers_tls13(&self) -> bool {
        self.supported_versions.contains(&TLS13)
    }
}

/// The ALPN protocol list, kept in its validated wire form: one allocation however many names.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Alpn {
    wire: Vec<u8>,
}

impl Alpn {
    /// Protocol names as bytes; ALPN names are opaque and need not be UTF-8.
    pub fn iter(&self) -> AlpnIter<'_> {
        AlpnIter { rest: &self.wire }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.iter().any(|p| p == name.as_bytes())
    }

    pub fn is_empty(&self) -> bool {
        self.wire.is_empty()
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }
}

impl fmt::Debug for Alpn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}

pub struct AlpnIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for AlpnIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let mut r = Reader::new(self.rest);
        let name = r.vec8()?;
        self.rest = r.rest;
        Some(name)
    }
}

/// Parses the ClientHello at the start of `buf`, the bytes a client sent so far. Bytes after
/// the hello (a TLS 1.3 early-data flight) are ignored. `Incomplete` never asks for more than
/// [`MAX_HELLO`] bytes: past that the answer is `Malformed(TooLarge)`.
pub fn parse_client_hello(buf: &[u8]) -> Result<ClientHello, HelloError> {
    let body = handshake_body(buf)?;
    parse_body(&body).map_err(HelloError::Malformed)
}

fn malformed(reason: Reason) -> HelloError {
    HelloError::Malformed(reason)
}

/// "Wait until the buffer holds `len` bytes", or `TooLarge` when that is past the bound.
fn need(len: usize) -> HelloError {
    if len > MAX_HELLO {
        malformed(Reason::TooLarge)
    } else {
        HelloError::Incomplete { needed: Some(len) }
    }
}

/// Classifies the first bytes so that HTTP, SSLv2 and alerts are told apart as soon as the bytes
/// that show it arrive.
fn check_first_bytes(buf: &[u8]) -> Result<(), HelloError> {
    let Some(&first) = buf.first() else {
        return Err(need(1));
    };
    if first & 0x80 != 0 {
        // SSLv2 record: two-byte length with the high bit set, then message type 1.
        return match buf.get(2) {
            None => Err(need(3)),
            Some(&HANDSHAKE_CLIENT_HELLO) => Err(malformed(Reason::Sslv2)),
            Some(_) => Err(malformed(Reason::NotTls)),
        };
    }
    let is_tls_type = matches!(first, 20..=24);
    let major = match buf.get(1) {
        None if is_tls_type => return Err(need(2)),
        None => return Err(malformed(Reason::NotTls)),
        Some(&m) => m,
    };
    match (first, major) {
        (CONTENT_HANDSHAKE, 3) => Ok(()),
        (_, 3) if is_tls_type => Err(malformed(Reason::NotHandshake)),
        _ => Err(malformed(Reason::NotTls)),
    }
}

/// One record header as far as `buf` holds it, with the part of its payload that arrived.
struct Record<'a> {
    payload_start: usize,
    end: usize,
    payload: &'a [u8],
}

impl Record<'_> {
    fn complete(&self, buf_len: usize) -> bool {
        self.end <= buf_len
    }
}

fn record_at(buf: &[u8], off: usize, first: bool) -> Result<Record<'_>, HelloError> {
    let avail = buf.get(off..).unwrap_or_default();
    if first {
        check_first_bytes(avail)?;
    } else {
        match (avail.first(), avail.get(1)) {
            (Some(&t), _) if t != CONTENT_HANDSHAKE => return Err(malformed(Reason::Interleaved)),
            (_, Some(&major)) if major != 3 => return Err(malformed(Reason::BadVersion)),
            _ => {}
        }
    }
    let header: [u8; RECORD_HEADER] = match avail.get(..RECORD_HEADER) {
        Some(h) => h.try_into().map_err(|_| malformed(Reason::BadLength))?,
        None => return Err(need(off.saturating_add(RECORD_HEADER))),
    };
    let [_, _, _, hi, lo] = header;
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    // RFC 8446 5.1: no zero-length handshake fragments, none over 2^14.
    if len == 0 || len > MAX_RECORD {
        return Err(malformed(Reason::BadLength));
    }
    let payload_start = off.saturating_add(RECORD_HEADER);
    let end = payload_start.saturating_add(len);
    let payload = buf
        .get(payload_start..end.min(buf.len()))
        .unwrap_or_default();
    Ok(Record {
        payload_start,
        end,
        payload,
    })
}

/// Finds the ClientHello handshake message over as many records as it spans and returns its
/// body (after the 4-byte handshake header): borrowed when one record holds it all, the usual
/// case, else copied together (at most [`MAX_HELLO`] bytes).
fn handshake_body(buf: &[u8]) -> Result<Cow<'_, [u8]>, HelloError> {
    let mut off = 0;
    let mut header = [0u8; HANDSHAKE_HEADER];
    let mut have = 0usize;
    let mut total: Option<usize> = None;
    let mut records = 0usize;
    loop {
        let record = record_at(buf, off, records == 0)?;
        records += 1;
        let before = have;
        for (slot, &b) in header.iter_mut().skip(before).zip(record.payload) {
            *slot = b;
        }
        have = have.saturating_add(record.payload.len());
        if have > 0 && header[0] != HANDSHAKE_CLIENT_HELLO {
            return Err(malformed(Reason::NotClientHello));
        }
        if total.is_none() && have >= HANDSHAKE_HEADER {
            let [_, a, b, c] = header;
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            let message = HANDSHAKE_HEADER.saturating_add(len);
            if message > MAX_HELLO {
                return Err(malformed(Reason::TooLarge));
            }
            total = Some(message);
        }
        let target = total.unwrap_or(HANDSHAKE_HEADER);
        // Where in `buf` the bytes this step waits for end: the hello's last byte when it lies
        // in this record, else this record's end.
        let wanted_end = record
            .payload_start
            .saturating_add(target.saturating_sub(before))
            .min(record.end);
        if wanted_end > MAX_HELLO {
            return Err(malformed(Reason::TooLarge));
        }
        if total.is_some() && have >= target {
            break;
        }
        if !record.complete(buf.len()) {
            return Err(need(wanted_end));
        }
        off = record.end;
    }
    let total = total.unwrap_or(HANDSHAKE_HEADER);
    if records == 1 {
        let start = RECORD_HEADER + HANDSHAKE_HEADER;
        let end = RECORD_HEADER.saturating_add(total);
        return buf
            .get(start..end)
            .map(Cow::Borrowed)
            .ok_or(malformed(Reason::BadLength));
    }
    let mut joined = Vec::with_capacity(total);
    let mut off = 0;
    while joined.len() < total {
        let record = record_at(buf, off, off == 0)?;
        let take = (total - joined.len()).min(record.payload.len());
        joined.extend_from_slice(record.payload.get(..take).unwrap_or_default());
        off = record.end;
    }
    joined.drain(..HANDSHAKE_HEADER.min(joined.len()));
    Ok(Cow::Owned(joined))
}

/// A cursor over TLS wire structures that never reads past its slice.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        self.rest = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.bytes(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.bytes(2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.bytes(usize::from(n))
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }
}

fn parse_body(body: &[u8]) -> Result<ClientHello, Reason> {
    let mut r = Reader::new(body);
    let legacy_version = r.u16().ok_or(Reason::BadLength)?;
    if legacy_version >> 8 != 3 {
        return Err(Reason::BadVersion);
    }
    r.bytes(32).ok_or(Reason::BadLength)?;
    let session_id = r.vec8().ok_or(Reason::BadLength)?;
    let suites = r.vec16().ok_or(Reason::BadLength)?;
    let compression = r.vec8().ok_or(Reason::BadLength)?;
    if session_id.len() > 32 || suites.is_empty() || suites.len() % 2 != 0 || compression.is_empty()
    {
        return Err(Reason::BadLength);
    }
    let mut hello = ClientHello {
        legacy_version,
        server_name: None,
        alpn: Alpn::default(),
        supported_versions: Vec::new(),
    };
    // Extensions are optional before TLS 1.3: a hello may end right after compression methods.
    if r.is_empty() {
        return Ok(hello);
    }
    let extensions = r.vec16().ok_or(Reason::BadLength)?;
    if !r.is_empty() {
        return Err(Reason::BadLength);
    }
    // A repeated extension that routing reads is refused, not resolved: the backend might pick
    // the other copy and serve a name other than the one that was routed (RFC 8446 4.2 forbids
    // repeats anyway).
    let (mut seen_sni, mut seen_alpn, mut seen_versions) = (false, false, false);
    let mut exts = Reader::new(extensions);
    while !exts.is_empty() {
        let kind = exts.u16().ok_or(Reason::BadExtension)?;
        let data = exts.vec16().ok_or(Reason::BadExtension)?;
        let seen = match kind {
            EXT_SERVER_NAME => &mut seen_sni,
            EXT_ALPN => &mut seen_alpn,
            EXT_SUPPORTED_VERSIONS => &mut seen_versions,
            _ => continue,
        };
        if std::mem::replace(seen, true) {
            return Err(Reason::BadExtension);
        }
        match kind {
            EXT_SERVER_NAME => hello.server_name = parse_server_name(data)?,
            EXT_ALPN => hello.alpn = parse_alpn(data)?,
            _ => hello.supported_versions = parse_supported_versions(data)?,
        }
    }
    Ok(hello)
}

/// RFC 6066 3: a ServerNameList with at most one host_name.
fn parse_server_name(data: &[u8]) -> Result<Option<String>, Reason> {
    let mut r = Reader::new(data);
    let list = r.vec16().ok_or(Reason::BadExtension)?;
    if !r.is_empty() || list.is_empty() {
        return Err(Reason::BadExtension);
    }
    let mut names = Reader::new(list);
    let mut host: Option<&[u8]> = None;
    while !names.is_empty() {
        let kind = names.u8().ok_or(Reason::BadExtension)?;
        let name = names.vec16().ok_or(Reason::BadExtension)?;
        if kind != SNI_HOST_NAME {
            continue;
        }
        if host.replace(name).is_some() {
            return Err(Reason::BadServerName);
        }
    }
    match host {
        Some(name) => host_name(name),
        None => Ok(None),
    }
}

/// Validates a host name as RFC 6066 asks (ASCII, no trailing dot, no IP literal) and lowers
/// its case. Underscores are let through: they occur in real internal names and cannot widen
/// what a route matches, since routes compare whole labels.
fn host_name(name: &[u8]) -> Result<Option<String>, Reason> {
    if name.is_empty() || name.len() > MAX_HOST_NAME {
        return Err(Reason::BadServerName);
    }
    let text = std::str::from_utf8(name).map_err(|_| Reason::BadServerName)?;
    if text.parse::<IpAddr>().is_ok() {
        return Ok(None);
    }
    for label in text.split('.') {
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if label.is_empty()
            || label.len() > MAX_LABEL
            || !ok_chars
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(Reason::BadServerName);
        }
    }
    Ok(Some(text.to_ascii_lowercase()))
}

/// RFC 7301 3.1: a non-empty list of non-empty names.
fn parse_alpn(data: &[u8]) -> Result<Alpn, Reason> {
    let mut r = Reader::new(data);
    let list = r.vec16().ok_or(Reason::BadExtension)?;
    if !r.is_empty() || list.is_empty() {
        return Err(Reason::BadExtension);
    }
    let mut names = Reader::new(list);
    while !names.is_empty() {
        match names.vec8() {
            Some(name) if !name.is_empty() => {}
            _ => return Err(Reason::BadExtension),
        }
    }
    Ok(Alpn {
        wire: list.to_vec(),
    })
}

/// RFC 8446 4.2.1: a list of 1 to 127 versions.
fn parse_supported_versions(data: &[u8]) -> Result<Vec<u16>, Reason> {
    let mut r = Reader::new(data);
    let list = r.vec8().ok_or(Reason::BadExtension)?;
    if !r.is_empty() || list.is_empty() || list.len() % 2 != 0 {
        return Err(Reason::BadExtension);
    }
    let mut versions = Reader::new(list);
    let mut out = Vec::with_capacity(list.len() / 2);
    while let Some(v) = versions.u16() {
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    /// ClientHellos `openssl s_client` sent, captured by `testdata/capture.sh`.
    const CAPTURES: [(&str, &str); 6] = [
        (
            "tls12_sni_alpn",
            include_str!("testdata/tls12_sni_alpn.hex"),
        ),
        (
            "tls13_sni_alpn",
            include_str!("testdata/tls13_sni_alpn.hex"),
        ),
        ("tls12_no_sni", include_str!("testdata/tls12_no_sni.hex")),
        ("tls13_no_sni", include_str!("testdata/tls13_no_sni.hex")),
        (
            "tls13_upper_sni",
            include_str!("testdata/tls13_upper_sni.hex"),
        ),
        (
            "tls13_fragmented",
            include_str!("testdata/tls13_fragmented.hex"),
        ),
    ];

    fn capture(name: &str) -> Vec<u8> {
        let (_, text) = CAPTURES.iter().find(|(n, _)| *n == name).unwrap();
        hex(text)
    }

    fn captures() -> Vec<Vec<u8>> {
        CAPTURES.iter().map(|(_, text)| hex(text)).collect()
    }

    /// The handshake bytes of a capture, records stripped.
    fn handshake_of(wire: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = wire;
        while rest.len() >= 5 {
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            out.extend_from_slice(&rest[5..5 + len]);
            rest = &rest[5 + len..];
        }
        out
    }

    /// Wraps handshake bytes in records of at most `size` bytes each.
    fn records(handshake: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in handshake.chunks(size.max(1)) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    /// A ClientHello with the given extensions, in one record.
    fn hello_with(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        let mut exts = Vec::new();
        for (kind, data) in extensions {
            exts.extend_from_slice(&kind.to_be_bytes());
            exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
            exts.extend_from_slice(data);
        }
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        records(&hs, MAX_RECORD)
    }

    fn sni(names: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (kind, name) in names {
            list.push(*kind);
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        data
    }

    fn alpn(names: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for name in names {
            list.push(name.len() as u8);
            list.extend_from_slice(name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        data
    }

    fn reason(buf: &[u8]) -> Reason {
        match parse_client_hello(buf) {
            Err(HelloError::Malformed(r)) => r,
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    fn alpn_names(hello: &ClientHello) -> Vec<String> {
        hello
            .alpn
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    #[test]
    fn openssl_tls12_hello_with_sni_and_alpn() {
        let hello = parse_client_hello(&capture("tls12_sni_alpn")).unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("a.example.test"));
        assert_eq!(alpn_names(&hello), ["h2", "http/1.1"]);
        assert!(hello.alpn.contains("h2"));
        assert!(!hello.alpn.contains("h3"));
        assert_eq!(hello.legacy_version, 0x0303);
        assert!(!hello.offers_tls13());
    }

    #[test]
    fn openssl_tls13_hello_with_sni_and_alpn() {
        let hello = parse_client_hello(&capture("tls13_sni_alpn")).unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("a.example.test"));
        assert_eq!(alpn_names(&hello), ["h2", "http/1.1"]);
        assert_eq!(hello.legacy_version, 0x0303);
        assert_eq!(hello.supported_versions, [TLS13]);
        assert!(hello.offers_tls13());
    }

    #[test]
    fn openssl_hellos_without_sni() {
        for wire in [capture("tls12_no_sni"), capture("tls13_no_sni")] {
            let hello = parse_client_hello(&wire).unwrap();
            assert_eq!(hello.server_name, None);
            assert!(hello.alpn.is_empty());
            assert_eq!(hello.alpn.len(), 0);
        }
    }

    #[test]
    fn server_name_is_lower_cased() {
        let hello = parse_client_hello(&capture("tls13_upper_sni")).unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("api.example.test"));
    }

    #[test]
    fn hello_that_openssl_split_over_three_records() {
        let wire = capture("tls13_fragmented");
        // The capture really is several records: 512 + 512 + the rest.
        assert_eq!(&wire[..5], &[22, 3, 1, 2, 0]);
        assert!(handshake_of(&wire).len() > 2 * 512);
        let hello = parse_client_hello(&wire).unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("frag.example.test"));
        assert_eq!(hello.alpn.len(), 22);
        assert!(hello.alpn.contains("http/1.1"));
        assert!(hello.offers_tls13());
    }

    #[test]
    fn any_record_split_gives_the_same_hello() {
        for wire in captures() {
            let whole = parse_client_hello(&wire).unwrap();
            let handshake = handshake_of(&wire);
            for size in [1, 2, 3, 4, 5, 7, 64, 100, 511, 4096] {
                let split = records(&handshake, size);
                assert_eq!(
                    parse_client_hello(&split).unwrap(),
                    whole,
                    "records of {size}"
                );
            }
        }
    }

    #[test]
    fn every_prefix_is_incomplete_with_a_sound_hint() {
        let mut cases = captures();
        cases.push(records(&handshake_of(&capture("tls13_sni_alpn")), 7));
        for wire in cases {
            for k in 0..wire.len() {
                match parse_client_hello(&wire[..k]) {
                    Err(HelloError::Incomplete { needed: Some(n) }) => {
                        assert!(n > k && n <= wire.len(), "prefix {k}: needed {n}")
                    }
                    other => panic!("prefix {k} of {}: {other:?}", wire.len()),
                }
            }
        }
    }

    #[test]
    fn bytes_after_the_hello_are_ignored() {
        let mut wire = capture("tls13_sni_alpn");
        // A TLS 1.3 client may send change_cipher_spec and early data right behind the hello.
        wire.extend_from_slice(&[20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 2, 0xde]);
        let hello = parse_client_hello(&wire).unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("a.example.test"));
    }

    #[test]
    fn first_bytes_that_are_not_tls() {
        assert_eq!(reason(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Reason::NotTls);
        assert_eq!(reason(b"G"), Reason::NotTls);
        assert_eq!(reason(b"SSH-2.0-OpenSSH_9.6\r\n"), Reason::NotTls);
        assert_eq!(
            reason(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            Reason::NotTls
        );
        assert_eq!(reason(&[22, 4, 0]), Reason::NotTls);
        assert_eq!(reason(&[0x80, 0x2e, 0x02]), Reason::NotTls);
    }

    #[test]
    fn sslv2_hello_is_told_apart() {
        // An SSLv2-compatible ClientHello offering SSL 3.0/TLS 1.0, as old clients sent it.
        let v2 = [
            0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
        ];
        assert_eq!(reason(&v2), Reason::Sslv2);
        assert_eq!(
            parse_client_hello(&v2[..2]),
            Err(HelloError::Incomplete { needed: Some(3) })
        );
    }

    #[test]
    fn other_tls_records_first() {
        assert_eq!(reason(&[21, 3, 3, 0, 2, 2, 40]), Reason::NotHandshake);
        assert_eq!(reason(&[23, 3, 3]), Reason::NotHandshake);
        assert_eq!(
            parse_client_hello(&[23]),
            Err(HelloError::Incomplete { needed: Some(2) })
        );
        // A ServerHello where a ClientHello belongs.
        assert_eq!(
            reason(&[22, 3, 3, 0, 4, 2, 0, 0, 0]),
            Reason::NotClientHello
        );
        assert_eq!(reason(&[22, 3, 3, 0, 1, 2]), Reason::NotClientHello);
    }

    #[test]
    fn records_interleaved_into_the_hello() {
        let handshake = handshake_of(&capture("tls13_sni_alpn"));
        let mut wire = records(&handshake[..50], 50);
        wire.extend_from_slice(&[21, 3, 3, 0, 2, 1, 0]);
        wire.extend_from_slice(&records(&handshake[50..], 500));
        assert_eq!(reason(&wire), Reason::Interleaved);
        assert_eq!(reason(&wire[..56]), Reason::Interleaved);
    }

    #[test]
    fn record_lengths_out_of_bounds() {
        assert_eq!(reason(&[22, 3, 1, 0, 0]), Reason::BadLength);
        assert_eq!(reason(&[22, 3, 1, 0x40, 0x01]), Reason::BadLength);
        // A later empty record is refused as well.
        let handshake = handshake_of(&capture("tls13_sni_alpn"));
        let mut wire = records(&handshake[..10], 10);
        wire.extend_from_slice(&[22, 3, 1, 0, 0]);
        assert_eq!(reason(&wire), Reason::BadLength);
    }

    #[test]
    fn too_large_is_known_from_the_headers() {
        // The handshake header alone announces a message past the bound.
        assert_eq!(
            reason(&[22, 3, 1, 0x40, 0, 1, 0, 0x40, 0]),
            Reason::TooLarge
        );
        // Within the bound as a message, but tiny records push it past the bound on the wire.
        let mut hs = vec![1, 0, 0x20, 0];
        hs.extend(std::iter::repeat_n(0u8, 0x2000));
        let wire = records(&hs, 3);
        assert!(wire.len() > MAX_HELLO);
        assert_eq!(reason(&wire), Reason::TooLarge);
        assert_eq!(reason(&wire[..MAX_HELLO]), Reason::TooLarge);
        // The largest hello that fits is accepted; one byte more is not.
        let base = handshake_of(&hello_with(&[(21, vec![])])).len();
        let pad = MAX_HELLO - RECORD_HEADER - base;
        let biggest = hello_with(&[(21, vec![0; pad])]);
        assert_eq!(biggest.len(), MAX_HELLO);
        assert!(parse_client_hello(&biggest).is_ok());
        let over = hello_with(&[(21, vec![0; pad + 1])]);
        assert_eq!(reason(&over), Reason::TooLarge);
        assert_eq!(reason(&over[..100]), Reason::TooLarge);
    }

    #[test]
    fn server_names_are_validated() {
        let name = |n: &[u8]| parse_client_hello(&hello_with(&[(0, sni(&[(0, n)]))]));
        assert_eq!(
            name(b"Foo-1.Example.COM").unwrap().server_name.as_deref(),
            Some("foo-1.example.com")
        );
        assert_eq!(
            name(b"_svc.internal").unwrap().server_name.as_deref(),
            Some("_svc.internal")
        );
        // IP literals are not names: routed as if no SNI was sent.
        assert_eq!(name(b"192.0.2.1").unwrap().server_name, None);
        assert_eq!(name(b"2001:db8::1").unwrap().server_name, None);
        let long_label = [b'a'; 64];
        let long_name = [b"a.".as_slice(); 127].concat();
        for bad in [
            b"a..b".as_slice(),
            b"a.example.",
            b".a",
            b"a b",
            b"a/b",
            b"*.example.com",
            b"-a.example",
            b"a-.example",
            b"caf\xc3\xa9.example",
            b"\xff",
            b"[::1]",
            &long_label,
            &long_name,
        ] {
            assert_eq!(
                name(bad),
                Err(HelloError::Malformed(Reason::BadServerName)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn server_name_list_rules() {
        let parse = |data: Vec<u8>| parse_client_hello(&hello_with(&[(0, data)]));
        let two = sni(&[(0, b"a.test"), (0, b"b.test")]);
        assert_eq!(
            parse(two),
            Err(HelloError::Malformed(Reason::BadServerName))
        );
        // Unknown name types are skipped.
        let other = sni(&[(7, b"whatever"), (0, b"b.test")]);
        assert_eq!(parse(other).unwrap().server_name.as_deref(), Some("b.test"));
        assert_eq!(parse(sni(&[(7, b"x")])).unwrap().server_name, None);
        for bad in [
            vec![],
            vec![0, 0],
            vec![0, 5, 0, 0, 1, b'a'],
            sni(&[(0, b"")]),
        ] {
            assert!(parse(bad).is_err());
        }
        let mut trailing = sni(&[(0, b"a.test")]);
        trailing.push(0);
        assert_eq!(
            parse(trailing),
            Err(HelloError::Malformed(Reason::BadExtension))
        );
    }

    #[test]
    fn repeated_routing_extensions_are_refused() {
        let twice = hello_with(&[(0, sni(&[(0, b"a.test")])), (0, sni(&[(0, b"b.test")]))]);
        assert_eq!(reason(&twice), Reason::BadExtension);
        let twice = hello_with(&[(16, alpn(&[b"h2"])), (16, alpn(&[b"h2"]))]);
        assert_eq!(reason(&twice), Reason::BadExtension);
        // Extensions routing does not read may repeat; that is the backend's business.
        assert!(parse_client_hello(&hello_with(&[(99, vec![]), (99, vec![])])).is_ok());
    }

    #[test]
    fn alpn_rules() {
        let parse = |data: Vec<u8>| parse_client_hello(&hello_with(&[(16, data)]));
        let hello = parse(alpn(&[b"h2", b"\xff\x00", b"x"])).unwrap();
        assert_eq!(hello.alpn.len(), 3);
        assert_eq!(hello.alpn.iter().nth(1), Some(b"\xff\x00".as_slice()));
        assert!(format!("{:?}", hello.alpn).starts_with(r#"["h2", "#));
        for bad in [vec![], vec![0, 0], alpn(&[b""]), vec![0, 3, 2, b'h']] {
            assert_eq!(parse(bad), Err(HelloError::Malformed(Reason::BadExtension)));
        }
    }

    #[test]
    fn supported_versions_rules() {
        let parse = |data: Vec<u8>| parse_client_hello(&hello_with(&[(43, data)]));
        let hello = parse(vec![4, 0x0a, 0x0a, 3, 4]).unwrap();
        assert_eq!(hello.supported_versions, [0x0a0a, TLS13]);
        for bad in [vec![], vec![0], vec![3, 3, 4, 3], vec![2, 3, 4, 0]] {
            assert_eq!(parse(bad), Err(HelloError::Malformed(Reason::BadExtension)));
        }
    }

    #[test]
    fn body_lengths_must_agree() {
        let good = hello_with(&[(0, sni(&[(0, b"a.test")]))]);
        let hs = handshake_of(&good);
        let body = &hs[4..];
        let rewrap = |body: &[u8]| {
            let mut hs = vec![1];
            hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            hs.extend_from_slice(body);
            records(&hs, MAX_RECORD)
        };
        // Extensions block longer than what follows it.
        let mut b = body.to_vec();
        b.pop();
        assert_eq!(reason(&rewrap(&b)), Reason::BadLength);
        // Trailing bytes after the extensions.
        let mut b = body.to_vec();
        b.push(0);
        assert_eq!(reason(&rewrap(&b)), Reason::BadLength);
        // An extension whose length runs past the block.
        let mut b = body.to_vec();
        let ext_len_at = 2 + 32 + 1 + 4 + 2 + 2 + 2;
        b[ext_len_at + 1] += 1;
        assert_eq!(reason(&rewrap(&b)), Reason::BadExtension);
        // Session id over 32 bytes.
        let mut b = body.to_vec();
        b[34] = 33;
        assert_eq!(reason(&rewrap(&b)), Reason::BadLength);
        // Not SSL 3 / TLS.
        let mut b = body.to_vec();
        b[0] = 2;
        assert_eq!(reason(&rewrap(&b)), Reason::BadVersion);
        // An old hello with no extensions at all is fine.
        let short = &body[..2 + 32 + 1 + 4 + 2];
        let hello = parse_client_hello(&rewrap(short)).unwrap();
        assert_eq!(hello.server_name, None);
        // Cut inside the fixed fields.
        assert_eq!(reason(&rewrap(&body[..20])), Reason::BadLength);
    }

    #[test]
    fn reasons_have_distinct_names() {
        crate::proto::assert_distinct_names(Reason::ALL, Reason::as_str);
        assert_eq!(Reason::TooLarge.to_string(), "too_large");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..2048)) {
            check_invariants(&buf)?;
        }

        #[test]
        fn random_bytes_behind_a_record_header_never_panic(
            len in 1u16..3000,
            body in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            let mut buf = vec![22, 3, 1];
            buf.extend_from_slice(&len.to_be_bytes());
            buf.push(1);
            buf.extend_from_slice(&body);
            check_invariants(&buf)?;
        }

        #[test]
        fn mutated_real_hellos_never_panic(
            which in 0usize..6,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut buf = captures().swap_remove(which);
            for (at, byte) in edits {
                let i = at % buf.len();
                buf[i] = byte;
            }
            check_invariants(&buf)?;
            let cut = cut % (buf.len() + 1);
            check_invariants(&buf[..cut])?;
        }

        #[test]
        fn random_record_splits_parse_alike(which in 0usize..6, sizes in proptest::collection::vec(1usize..300, 1..40)) {
            let wire = captures().swap_remove(which);
            let expected = parse_client_hello(&wire).unwrap();
            let handshake = handshake_of(&wire);
            let mut split = Vec::new();
            let mut rest = handshake.as_slice();
            let mut sizes = sizes.into_iter().cycle();
            while !rest.is_empty() {
                let n = sizes.next().unwrap_or(1).min(rest.len());
                split.extend_from_slice(&records(&rest[..n], n));
                rest = &rest[n..];
            }
            prop_assert_eq!(parse_client_hello(&split), Ok(expected));
        }
    }

    fn check_invariants(buf: &[u8]) -> Result<(), TestCaseError> {
        match parse_client_hello(buf) {
            Ok(hello) => {
                if let Some(name) = &hello.server_name {
                    prop_assert!(!name.is_empty() && name.len() <= MAX_HOST_NAME);
                    prop_assert_eq!(name.to_ascii_lowercase(), name.clone());
                }
            }
            Err(HelloError::Incomplete { needed }) => {
                let n = needed.unwrap_or(usize::MAX);
                prop_assert!(n > buf.len() && n <= MAX_HELLO);
            }
            Err(HelloError::Malformed(_)) => {}
        }
        Ok(())
    }
}
