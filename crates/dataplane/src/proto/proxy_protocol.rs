//! The PROXY protocol, versions 1 and 2 (HAProxy's proxy-protocol.txt): decoding the header an
//! upstream balancer puts in front of a connection, and encoding the one Ballast puts in front
//! of a backend connection or, in the v2 DGRAM form, of each datagram to a UDP backend.
//!
//! [`parse_proxy_header`] tells v1 from v2 by the first byte and, like the ClientHello parser,
//! looks at everything read so far: a complete header with the bytes it took, `Incomplete`
//! while a valid header may still arrive, or `Malformed` with a [`Reason`] to count. A v1 line
//! is bounded by the spec at 107 bytes; a v2 header announces its length (at most 16 + 65535
//! bytes), so the caller stops waiting where its own buffer ends and closes the connection.
//! TLVs are checked for structure and skipped; nothing here keeps any of them.
//!
//! The encoders write addresses of one family as the spec wants: when client and listener
//! differ (an IPv6 client on a dual-stack listener in front of an IPv4 backend), the IPv4 side
//! is written as an IPv4-mapped IPv6 address rather than as v1 `UNKNOWN`, since the spec keeps
//! UNKNOWN for lines that cannot be filled in correctly and this one can. IPv4-mapped addresses
//! on both sides are written as plain IPv4.
//!
//! Pure: no syscalls, no allocation while parsing, no panics on any input.

// Input comes off the network: every access is checked (`get`, `split_at_checked`, ...).
#![deny(clippy::indexing_slicing)]

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::ParseError;

/// The 12 bytes that open every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line the spec allows, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// The fixed part of a v2 header.
pub const V2_HEADER_LEN: usize = 16;
/// The longest v2 header the length field can announce.
pub const V2_MAX_LEN: usize = V2_HEADER_LEN + u16::MAX as usize;

const V1_PREFIX: &[u8] = b"PROXY ";
/// "PROXY UNKNOWN\r\n": no header is shorter.
const MIN_HEADER_LEN: usize = 15;
const V2_VERSION: u8 = 2;
const CMD_LOCAL: u8 = 0;
const CMD_PROXY: u8 = 1;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 1;
const AF_INET6: u8 = 2;
const AF_UNIX: u8 = 3;
const PROTO_UNSPEC: u8 = 0;
const PROTO_STREAM: u8 = 1;
const PROTO_DGRAM: u8 = 2;
const INET_BLOCK: usize = 2 * 4 + 2 * 2;
const INET6_BLOCK: usize = 2 * 16 + 2 * 2;
const UNIX_BLOCK: usize = 2 * 108;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// The upstream opened the connection itself (a health check): use the real endpoints.
    Local,
    /// The connection was relayed for a client.
    Proxy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Stream,
    Dgram,
}

/// A decoded header. `source` and `destination` are both set or both `None`; `None` means the
/// receiver uses the connection's real endpoints (LOCAL, v1 UNKNOWN, v2 UNSPEC or AF_UNIX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    pub version: Version,
    pub command: Command,
    /// `None` when the header does not say (v1 UNKNOWN, LOCAL, v2 UNSPEC).
    pub transport: Option<Transport>,
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
}

impl ProxyHeader {
    fn without_addresses(version: Version, command: Command) -> Self {
        Self {
            version,
            command,
            transport: None,
            source: None,
            destination: None,
        }
    }

    /// (source, destination) when the header carries both.
    pub fn addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        Some((self.source?, self.destination?))
    }
}

reasons! {
    /// Why bytes can never become a PROXY header.
    pub enum Reason {
        /// Neither "PROXY " nor the v2 signature.
        BadSignature => "bad_signature",
        /// A v1 line with no CRLF in its first 107 bytes.
        LineTooLong => "line_too_long",
        /// A v1 line out of shape: missing or extra fields, not exactly one space, a lone CR
        /// or LF.
        BadLine => "bad_line",
        /// An address or port that does not parse or does not match the announced family.
        BadAddress => "bad_address",
        /// A v2 version other than 2.
        BadVersion => "bad_version",
        /// A v2 command other than LOCAL or PROXY.
        BadCommand => "bad_command",
        /// An unknown v1 protocol, or a v2 address family or transport outside the spec.
        BadFamily => "bad_family",
        /// A v2 length too short for the announced addresses.
        BadLength => "bad_length",
        /// A v2 TLV that runs past the header.
        BadTlv => "bad_tlv",
    }
}

/// `Incomplete` is exact once a v2 header's fixed part has arrived (16 + its length field), and
/// never more than [`V2_MAX_LEN`].
pub type ProxyError = ParseError<Reason>;

fn malformed(reason: Reason) -> ProxyError {
    ProxyError::Malformed(reason)
}

fn need(len: usize) -> ProxyError {
    ProxyError::Incomplete { needed: Some(len) }
}

/// Decodes the PROXY header (v1 or v2) at the start of `buf`. On success, returns the header and
/// how many bytes it took; the bytes after it belong to the client's stream (or datagram).
pub fn parse_proxy_header(buf: &[u8]) -> Result<(ProxyHeader, usize), ProxyError> {
    match buf.first() {
        None => Err(need(MIN_HEADER_LEN)),
        Some(b'\r') => parse_v2(buf),
        Some(_) => parse_v1(buf),
    }
}

/// True when `buf` is a prefix of `expected` or starts with all of it.
fn matches_prefix(buf: &[u8], expected: &[u8]) -> bool {
    buf.iter().zip(expected).all(|(a, b)| a == b)
}

fn parse_v1(buf: &[u8]) -> Result<(ProxyHeader, usize), ProxyError> {
    if !matches_prefix(buf, V1_PREFIX) {
        return Err(malformed(Reason::BadSignature));
    }
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        // A CR must be followed by LF; one followed by anything else can be refused now.
        let lone_cr = window
            .iter()
            .position(|&b| b == b'\r')
            .is_some_and(|cr| cr + 1 < window.len());
        return Err(if lone_cr {
            malformed(Reason::BadLine)
        } else if window.len() >= V1_MAX_LEN {
            malformed(Reason::LineTooLong)
        } else {
            need(MIN_HEADER_LEN.max(buf.len() + 1))
        });
    };
    let consumed = lf + 1;
    let line = match window.get(..lf) {
        Some([line @ .., b'\r']) => line,
        _ => return Err(malformed(Reason::BadLine)),
    };
    if line.contains(&b'\r') {
        return Err(malformed(Reason::BadLine));
    }
    let mut fields = line.split(|&b| b == b' ');
    let _proxy = fields.next();
    let family = fields.next().ok_or(malformed(Reason::BadLine))?;
    let ipv6 = match family {
        // The spec has the receiver ignore whatever follows UNKNOWN up to the CRLF.
        b"UNKNOWN" => {
            return Ok((
                ProxyHeader::without_addresses(Version::V1, Command::Proxy),
                consumed,
            ))
        }
        b"TCP4" => false,
        b"TCP6" => true,
        _ => return Err(malformed(Reason::BadFamily)),
    };
    let mut field = || match fields.next() {
        Some(f) if !f.is_empty() => Ok(f),
        _ => Err(malformed(Reason::BadLine)),
    };
    let (src, dst, sport, dport) = (field()?, field()?, field()?, field()?);
    if fields.next().is_some() {
        return Err(malformed(Reason::BadLine));
    }
    let source = SocketAddr::new(v1_ip(src, ipv6)?, v1_port(sport)?);
    let destination = SocketAddr::new(v1_ip(dst, ipv6)?, v1_port(dport)?);
    let header = ProxyHeader {
        version: Version::V1,
        command: Command::Proxy,
        transport: Some(Transport::Stream),
        source: Some(source),
        destination: Some(destination),
    };
    Ok((header, consumed))
}

fn v1_ip(field: &[u8], ipv6: bool) -> Result<IpAddr, ProxyError> {
    let text = std::str::from_utf8(field).map_err(|_| malformed(Reason::BadAddress))?;
    // std's IPv4 parser already refuses leading zeros, as the spec asks.
    let ip = if ipv6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    ip.map_err(|_| malformed(Reason::BadAddress))
}

fn v1_port(field: &[u8]) -> Result<u16, ProxyError> {
    let digits = field.iter().all(u8::is_ascii_digit);
    let leading_zero = field.len() > 1 && field.first() == Some(&b'0');
    if !digits || leading_zero || field.len() > 5 {
        return Err(malformed(Reason::BadAddress));
    }
    std::str::from_utf8(field)
        .ok()
        .and_then(|t| t.parse::<u16>().ok())
        .ok_or(malformed(Reason::BadAddress))
}

fn parse_v2(buf: &[u8]) -> Result<(ProxyHeader, usize), ProxyError> {
    if !matches_prefix(buf, &V2_SIGNATURE) {
        return Err(malformed(Reason::BadSignature));
    }
    let fixed: [u8; V2_HEADER_LEN] = match buf.get(..V2_HEADER_LEN) {
        Some(h) => h.try_into().map_err(|_| malformed(Reason::BadLength))?,
        None => return Err(need(V2_HEADER_LEN)),
    };
    let [.., ver_cmd, fam, hi, lo] = fixed;
    if ver_cmd >> 4 != V2_VERSION {
        return Err(malformed(Reason::BadVersion));
    }
    let command = match ver_cmd & 0x0f {
        CMD_LOCAL => Command::Local,
        CMD_PROXY => Command::Proxy,
        _ => return Err(malformed(Reason::BadCommand)),
    };
    let total = V2_HEADER_LEN + usize::from(u16::from_be_bytes([hi, lo]));
    let Some(block) = buf.get(V2_HEADER_LEN..total) else {
        return Err(need(total));
    };
    // LOCAL: the spec has the receiver skip the block, family included, whatever it holds.
    if command == Command::Local {
        return Ok((ProxyHeader::without_addresses(Version::V2, command), total));
    }
    let (family, protocol) = (fam >> 4, fam & 0x0f);
    let transport = match protocol {
        PROTO_UNSPEC => None,
        PROTO_STREAM => Some(Transport::Stream),
        PROTO_DGRAM => Some(Transport::Dgram),
        _ => return Err(malformed(Reason::BadFamily)),
    };
    let address_len = match family {
        AF_UNSPEC => None,
        AF_INET => Some(INET_BLOCK),
        AF_INET6 => Some(INET6_BLOCK),
        AF_UNIX => Some(UNIX_BLOCK),
        _ => return Err(malformed(Reason::BadFamily)),
    };
    let mut header = ProxyHeader {
        transport,
        ..ProxyHeader::without_addresses(Version::V2, command)
    };
    // UNSPEC: nothing says where addresses end, so the whole block is skipped unread.
    let Some(address_len) = address_len else {
        return Ok((header, total));
    };
    let (addresses, tlvs) = block
        .split_at_checked(address_len)
        .ok_or(malformed(Reason::BadLength))?;
    check_tlvs(tlvs)?;
    // The spec lets a receiver treat families it does not carry (AF_UNIX here) as UNSPEC, and
    // ports only exist for stream and datagram transports.
    if transport.is_some() {
        let (source, destination) = match family {
            AF_INET => v2_inet(addresses),
            AF_INET6 => v2_inet6(addresses),
            _ => None,
        }
        .unzip();
        header.source = source;
        header.destination = destination;
    }
    Ok((header, total))
}

fn v2_inet(block: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let b: [u8; INET_BLOCK] = block.try_into().ok()?;
    let [s0, s1, s2, s3, d0, d1, d2, d3, sp0, sp1, dp0, dp1] = b;
    Some((
        SocketAddr::from(([s0, s1, s2, s3], u16::from_be_bytes([sp0, sp1]))),
        SocketAddr::from(([d0, d1, d2, d3], u16::from_be_bytes([dp0, dp1]))),
    ))
}

fn v2_inet6(block: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let src: [u8; 16] = block.get(..16)?.try_into().ok()?;
    let dst: [u8; 16] = block.get(16..32)?.try_into().ok()?;
    let ports: [u8; 4] = block.get(32..36)?.try_into().ok()?;
    let [sp0, sp1, dp0, dp1] = ports;
    Some((
        SocketAddr::from((Ipv6Addr::from(src), u16::from_be_bytes([sp0, sp1]))),
        SocketAddr::from((Ipv6Addr::from(dst), u16::from_be_bytes([dp0, dp1]))),
    ))
}

/// Walks the TLVs after the addresses; each is type (1), length (2), value.
fn check_tlvs(mut rest: &[u8]) -> Result<(), ProxyError> {
    while !rest.is_empty() {
        let len = match rest {
            [_, hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
            _ => return Err(malformed(Reason::BadTlv)),
        };
        rest = rest
            .get(3usize.saturating_add(len)..)
            .ok_or(malformed(Reason::BadTlv))?;
    }
    Ok(())
}

/// Both addresses in one family: plain IPv4 when both are IPv4 (or IPv4-mapped), else IPv6
/// with any IPv4 side mapped.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (s, d) = (canonical(source), canonical(destination));
    if s.is_ipv4() && d.is_ipv4() {
        return (s, d);
    }
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    (v6(s), v6(d))
}

/// Appends a v1 line for a TCP connection from `source` to `destination`; returns its length.
pub fn encode_v1(source: SocketAddr, destination: SocketAddr, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    let (s, d) = same_family(source, destination);
    out.extend_from_slice(if s.is_ipv4() {
        b"PROXY TCP4 "
    } else {
        b"PROXY TCP6 "
    });
    // Writing to a Vec cannot fail.
    let _ = write!(
        VecWriter(out),
        "{} {} {} {}\r\n",
        V1Ip(s.ip()),
        V1Ip(d.ip()),
        s.port(),
        d.port()
    );
    out.len() - start
}

/// Appends a v2 PROXY header; returns its length. For `Transport::Dgram` it goes in front of
/// every datagram sent to the backend.
pub fn encode_v2(
    source: SocketAddr,
    destination: SocketAddr,
    transport: Transport,
    out: &mut Vec<u8>,
) -> usize {
    let start = out.len();
    let (s, d) = same_family(source, destination);
    let protocol = match transport {
        Transport::Stream => PROTO_STREAM,
        Transport::Dgram => PROTO_DGRAM,
    };
    out.extend_from_slice(&V2_SIGNATURE);
    out.push((V2_VERSION << 4) | CMD_PROXY);
    match (s.ip(), d.ip()) {
        (IpAddr::V4(sip), IpAddr::V4(dip)) => {
            out.push((AF_INET << 4) | protocol);
            out.extend_from_slice(&(INET_BLOCK as u16).to_be_bytes());
            out.extend_from_slice(&sip.octets());
            out.extend_from_slice(&dip.octets());
        }
        (sip, dip) => {
            out.push((AF_INET6 << 4) | protocol);
            out.extend_from_slice(&(INET6_BLOCK as u16).to_be_bytes());
            out.extend_from_slice(&ipv6_octets(sip));
            out.extend_from_slice(&ipv6_octets(dip));
        }
    }
    out.extend_from_slice(&s.port().to_be_bytes());
    out.extend_from_slice(&d.port().to_be_bytes());
    out.len() - start
}

/// Appends the v1 line for a connection that speaks for no client, `PROXY UNKNOWN\r\n` (a
/// health check's, as v2's LOCAL); the receiver uses the connection's own endpoints. Returns
/// its length.
pub fn encode_v1_unknown(out: &mut Vec<u8>) -> usize {
    let line = b"PROXY UNKNOWN\r\n";
    out.extend_from_slice(line);
    line.len()
}

/// Appends a v2 LOCAL header (for a connection Ballast makes on its own, like a health check);
/// returns its length.
pub fn encode_v2_local(out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(&V2_SIGNATURE);
    out.push((V2_VERSION << 4) | CMD_LOCAL);
    out.push((AF_UNSPEC << 4) | PROTO_UNSPEC);
    out.extend_from_slice(&0u16.to_be_bytes());
    V2_HEADER_LEN
}

fn ipv6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// An address as v1 writes it: std's text, except that IPv4-mapped IPv6 is written in hex
/// groups, since the spec's IPv6 form has no dotted tail.
struct V1Ip(IpAddr);

impl fmt::Display for V1Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                let [.., a, b] = v6.segments();
                write!(f, "::ffff:{a:x}:{b:x}")
            }
            ip => write!(f, "{ip}"),
        }
    }
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn reason(buf: &[u8]) -> Reason {
        match parse_proxy_header(buf) {
            Err(ProxyError::Malformed(r)) => r,
            other => panic!("expected malformed for {buf:?}, got {other:?}"),
        }
    }

    fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(fam);
        out.extend_from_slice(&(block.len() as u16).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    const INET_BLOCK_EXAMPLE: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 7, 0x30, 0x39, 0, 80];

    #[test]
    fn v1_example_from_the_spec() {
        let buf = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let (h, n) = parse_proxy_header(buf).unwrap();
        assert_eq!(&buf[n..], b"GET / HTTP/1.1\r\n");
        assert_eq!(h.version, Version::V1);
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.transport, Some(Transport::Stream));
        assert_eq!(
            h.addresses(),
            Some((addr("192.168.0.1:56324"), addr("192.168.0.11:443")))
        );
    }

    #[test]
    fn v1_longest_lines_the_spec_allows() {
        let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let tcp6 = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
        assert_eq!(tcp6.len(), 104);
        let (h, n) = parse_proxy_header(tcp6.as_bytes()).unwrap();
        assert_eq!(n, 104);
        assert_eq!(h.source.unwrap().port(), 65535);
        let unknown = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
        assert_eq!(unknown.len(), V1_MAX_LEN);
        let (h, n) = parse_proxy_header(unknown.as_bytes()).unwrap();
        assert_eq!((h.source, h.transport, n), (None, None, V1_MAX_LEN));
        let (h, n) = parse_proxy_header(b"PROXY UNKNOWN\r\n").unwrap();
        assert_eq!((h.addresses(), n), (None, 15));
        // One byte more and no CRLF in reach: refused rather than waited for.
        let too_long = format!("PROXY UNKNOWN {f} {f} 65535 655355\r\n");
        assert_eq!(reason(too_long.as_bytes()), Reason::LineTooLong);
        assert_eq!(
            reason(&too_long.as_bytes()[..V1_MAX_LEN]),
            Reason::LineTooLong
        );
    }

    #[test]
    fn v1_malformed_lines() {
        let cases: &[(&[u8], Reason)] = &[
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", Reason::BadLine),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n", Reason::BadLine),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", Reason::BadLine),
            (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", Reason::BadLine),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", Reason::BadLine),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", Reason::BadLine),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", Reason::BadLine),
            (b"PROXY \r\n", Reason::BadFamily),
            (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", Reason::BadFamily),
            (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", Reason::BadFamily),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", Reason::BadAddress),
            (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", Reason::BadAddress),
            (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", Reason::BadAddress),
            (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", Reason::BadAddress),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", Reason::BadAddress),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
                Reason::BadAddress,
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 +2\r\n", Reason::BadAddress),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 0000002\r\n",
                Reason::BadAddress,
            ),
            (b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n", Reason::BadAddress),
            (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", Reason::BadSignature),
            (b"PROXX", Reason::BadSignature),
            (b"PROXYTCP4", Reason::BadSignature),
            (b"GET / HTTP/1.1\r\n", Reason::BadSignature),
            (b"\x16\x03\x01", Reason::BadSignature),
        ];
        for (buf, expected) in cases {
            assert_eq!(reason(buf), *expected, "{}", String::from_utf8_lossy(buf));
        }
        // Port 0 is allowed.
        let (h, _) = parse_proxy_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n").unwrap();
        assert_eq!(h.source.unwrap().port(), 0);
    }

    #[test]
    fn v2_as_haproxy_sends_it() {
        // HAProxy's send-proxy-v2 for a TCP connection 172.19.0.1:42578 -> 172.19.0.3:80.
        let mut buf = vec![
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11,
            0x00, 0x0c, 0xac, 0x13, 0x00, 0x01, 0xac, 0x13, 0x00, 0x03, 0xa6, 0x52, 0x00, 0x50,
        ];
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (h, n) = parse_proxy_header(&buf).unwrap();
        assert_eq!(n, 28);
        assert_eq!(h.version, Version::V2);
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.transport, Some(Transport::Stream));
        assert_eq!(
            h.addresses(),
            Some((addr("172.19.0.1:42578"), addr("172.19.0.3:80")))
        );
        let mut ours = Vec::new();
        encode_v2(
            addr("172.19.0.1:42578"),
            addr("172.19.0.3:80"),
            Transport::Stream,
            &mut ours,
        );
        assert_eq!(ours, buf[..28]);
    }

    #[test]
    fn v2_families() {
        let (h, _) = parse_proxy_header(&v2(0x21, 0x12, &INET_BLOCK_EXAMPLE)).unwrap();
        assert_eq!(h.transport, Some(Transport::Dgram));
        assert_eq!(
            h.addresses(),
            Some((addr("192.0.2.1:12345"), addr("198.51.100.7:80")))
        );
        let mut block6 = Vec::new();
        block6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        block6.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        block6.extend_from_slice(&[0, 1, 0, 2]);
        let (h, n) = parse_proxy_header(&v2(0x21, 0x21, &block6)).unwrap();
        assert_eq!(n, 16 + 36);
        assert_eq!(
            h.addresses(),
            Some((addr("[2001:db8::1]:1"), addr("[2001:db8::2]:2")))
        );
        // AF_UNIX and UNSPEC: accepted, the real endpoints stand.
        for (fam, block) in [
            (0x31, vec![7; 216]),
            (0x32, vec![0; 216]),
            (0x00, vec![]),
            (0x01, vec![1; 5]),
        ] {
            let (h, n) = parse_proxy_header(&v2(0x21, fam, &block)).unwrap();
            assert_eq!((h.addresses(), n), (None, 16 + block.len()), "fam {fam:#x}");
        }
        // An address family with an UNSPEC transport carries no ports: no addresses either.
        let (h, _) = parse_proxy_header(&v2(0x21, 0x10, &INET_BLOCK_EXAMPLE)).unwrap();
        assert_eq!((h.transport, h.addresses()), (None, None));
    }

    #[test]
    fn v2_local_is_accepted_without_addresses() {
        let mut out = Vec::new();
        assert_eq!(encode_v2_local(&mut out), 16);
        let (h, n) = parse_proxy_header(&out).unwrap();
        assert_eq!(n, 16);
        assert_eq!(
            h,
            ProxyHeader::without_addresses(Version::V2, Command::Local)
        );
        // LOCAL with an address block (and even an unknown family): skipped, not read.
        let buf = v2(0x20, 0xf1, &INET_BLOCK_EXAMPLE);
        let (h, n) = parse_proxy_header(&buf).unwrap();
        assert_eq!((h.command, h.addresses(), n), (Command::Local, None, 28));
    }

    #[test]
    fn v1_unknown_parses_back_without_addresses() {
        let mut out = Vec::new();
        assert_eq!(encode_v1_unknown(&mut out), MIN_HEADER_LEN);
        let (h, n) = parse_proxy_header(&out).unwrap();
        assert_eq!(
            (h.version, h.addresses(), n),
            (Version::V1, None, MIN_HEADER_LEN)
        );
    }

    #[test]
    fn v2_tlvs_are_skipped_but_must_fit() {
        let mut block = INET_BLOCK_EXAMPLE.to_vec();
        block.extend_from_slice(&[0x04, 0, 3, 0, 0, 0]); // NOOP
        block.extend_from_slice(&[0x02, 0, 5]); // AUTHORITY
        block.extend_from_slice(b"a.com");
        block.extend_from_slice(&[0x05, 0, 0]); // empty UNIQUE_ID
        let (h, n) = parse_proxy_header(&v2(0x21, 0x11, &block)).unwrap();
        assert_eq!(n, 16 + block.len());
        assert_eq!(h.source, Some(addr("192.0.2.1:12345")));
        for bad_tail in [&[0x04][..], &[0x04, 0], &[0x04, 0, 4, 0, 0, 0]] {
            let mut block = INET_BLOCK_EXAMPLE.to_vec();
            block.extend_from_slice(bad_tail);
            assert_eq!(reason(&v2(0x21, 0x11, &block)), Reason::BadTlv);
        }
    }

    #[test]
    fn v2_malformed_headers() {
        let mut wrong_sig = v2(0x21, 0x11, &INET_BLOCK_EXAMPLE);
        wrong_sig[11] = b'X';
        assert_eq!(reason(&wrong_sig), Reason::BadSignature);
        assert_eq!(reason(b"\r\n\r\n\r"), Reason::BadSignature);
        let cases: &[(u8, u8, &[u8], Reason)] = &[
            (0x11, 0x11, &INET_BLOCK_EXAMPLE, Reason::BadVersion),
            (0x31, 0x11, &INET_BLOCK_EXAMPLE, Reason::BadVersion),
            (0x22, 0x11, &INET_BLOCK_EXAMPLE, Reason::BadCommand),
            (0x2f, 0x11, &INET_BLOCK_EXAMPLE, Reason::BadCommand),
            (0x21, 0x41, &INET_BLOCK_EXAMPLE, Reason::BadFamily),
            (0x21, 0x13, &INET_BLOCK_EXAMPLE, Reason::BadFamily),
            (0x21, 0x11, &INET_BLOCK_EXAMPLE[..11], Reason::BadLength),
            (0x21, 0x21, &[0; 35], Reason::BadLength),
            (0x21, 0x31, &[0; 215], Reason::BadLength),
        ];
        for &(ver_cmd, fam, block, expected) in cases {
            assert_eq!(
                reason(&v2(ver_cmd, fam, block)),
                expected,
                "{ver_cmd:#x} {fam:#x}"
            );
        }
    }

    #[test]
    fn v2_waits_for_the_announced_length() {
        // Truncated is not malformed: the announced length says how much is still to come.
        let mut buf = v2(0x21, 0x11, &INET_BLOCK_EXAMPLE);
        buf[15] = 200;
        buf.truncate(28);
        assert_eq!(
            parse_proxy_header(&buf),
            Err(ProxyError::Incomplete { needed: Some(216) })
        );
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(
            parse_proxy_header(&big),
            Err(ProxyError::Incomplete {
                needed: Some(V2_MAX_LEN)
            })
        );
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        let mut headers = vec![
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2(0x21, 0x31, &[1; 216]),
        ];
        let mut tlvs = INET_BLOCK_EXAMPLE.to_vec();
        tlvs.extend_from_slice(&[0x04, 0, 2, 0, 0]);
        headers.push(v2(0x21, 0x11, &tlvs));
        let mut out = Vec::new();
        encode_v1(addr("[2001:db8::1]:1"), addr("[::1]:2"), &mut out);
        headers.push(std::mem::take(&mut out));
        encode_v2(
            addr("[2001:db8::1]:1"),
            addr("[::1]:2"),
            Transport::Dgram,
            &mut out,
        );
        headers.push(out);
        for h in headers {
            assert_eq!(parse_proxy_header(&h).unwrap().1, h.len());
            for k in 0..h.len() {
                match parse_proxy_header(&h[..k]) {
                    Err(ProxyError::Incomplete { needed: Some(n) }) => {
                        assert!(n > k && n <= h.len(), "prefix {k} of {h:?}: needed {n}")
                    }
                    other => panic!("prefix {k} of {h:?}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn encoders_write_what_the_spec_shows() {
        let mut out = Vec::new();
        let n = encode_v1(
            addr("192.168.0.1:56324"),
            addr("192.168.0.11:443"),
            &mut out,
        );
        assert_eq!(out, b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
        assert_eq!(n, out.len());
        out.clear();
        encode_v1(addr("[2001:db8::1]:5"), addr("[fe80::2]:6"), &mut out);
        assert_eq!(out, b"PROXY TCP6 2001:db8::1 fe80::2 5 6\r\n");
        // Mixed families: the IPv4 side mapped into IPv6, in hex groups.
        out.clear();
        encode_v1(addr("[2001:db8::1]:5"), addr("192.0.2.1:6"), &mut out);
        assert_eq!(out, b"PROXY TCP6 2001:db8::1 ::ffff:c000:201 5 6\r\n");
        // IPv4-mapped on both sides (a dual-stack listener): plain IPv4.
        out.clear();
        encode_v1(
            addr("[::ffff:192.0.2.1]:5"),
            addr("[::ffff:192.0.2.2]:6"),
            &mut out,
        );
        assert_eq!(out, b"PROXY TCP4 192.0.2.1 192.0.2.2 5 6\r\n");
        // Appends, never clears.
        out.clear();
        out.extend_from_slice(b"xy");
        let n = encode_v2(
            addr("192.0.2.1:1"),
            addr("192.0.2.2:2"),
            Transport::Dgram,
            &mut out,
        );
        assert_eq!(n, 28);
        assert_eq!(&out[..2], b"xy");
        assert_eq!(out[2 + 13], 0x12);
        out.clear();
        let n = encode_v2(
            addr("192.0.2.1:1"),
            addr("[::1]:2"),
            Transport::Stream,
            &mut out,
        );
        assert_eq!((n, out[13]), (52, 0x21));
    }

    #[test]
    fn reasons_have_distinct_names() {
        crate::proto::assert_distinct_names(Reason::ALL, Reason::as_str);
        assert_eq!(
            ProxyError::Malformed(Reason::BadTlv).to_string(),
            "malformed: bad_tlv"
        );
    }

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::from((Ipv6Addr::from(ip), p))),
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::from((Ipv4Addr::from(ip).to_ipv6_mapped(), p))),
        ]
    }

    /// What a receiver should see for a pair after encoding.
    fn expected(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
        same_family(src, dst)
    }

    proptest! {
        #[test]
        fn v1_round_trips(src in any_addr(), dst in any_addr(), tail in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut buf = Vec::new();
            let n = encode_v1(src, dst, &mut buf);
            prop_assert!(n <= V1_MAX_LEN);
            buf.extend_from_slice(&tail);
            let (h, used) = parse_proxy_header(&buf).unwrap();
            prop_assert_eq!(used, n);
            prop_assert_eq!(h.addresses(), Some(expected(src, dst)));
            prop_assert_eq!(h.transport, Some(Transport::Stream));
            let (s, d) = expected(src, dst);
            prop_assert_eq!(s.ip().to_canonical(), src.ip().to_canonical());
            prop_assert_eq!((s.port(), d.port()), (src.port(), dst.port()));
        }

        #[test]
        fn v2_round_trips(src in any_addr(), dst in any_addr(), dgram in any::<bool>(), tail in proptest::collection::vec(any::<u8>(), 0..32)) {
            let transport = if dgram { Transport::Dgram } else { Transport::Stream };
            let mut buf = Vec::new();
            let n = encode_v2(src, dst, transport, &mut buf);
            buf.extend_from_slice(&tail);
            let (h, used) = parse_proxy_header(&buf).unwrap();
            prop_assert_eq!(used, n);
            prop_assert_eq!(h.version, Version::V2);
            prop_assert_eq!(h.transport, Some(transport));
            prop_assert_eq!(h.addresses(), Some(expected(src, dst)));
            prop_assert_eq!(&buf[used..], tail.as_slice());
        }

        #[test]
        fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            check_invariants(&buf)?;
        }

        #[test]
        fn random_bytes_after_a_signature_never_panic(
            v2_sig in any::<bool>(),
            rest in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut buf = if v2_sig { V2_SIGNATURE.to_vec() } else { V1_PREFIX.to_vec() };
            buf.extend_from_slice(&rest);
            check_invariants(&buf)?;
        }

        #[test]
        fn mutated_headers_never_panic(
            src in any_addr(),
            dst in any_addr(),
            v2_form in any::<bool>(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let mut buf = Vec::new();
            if v2_form {
                encode_v2(src, dst, Transport::Stream, &mut buf);
            } else {
                encode_v1(src, dst, &mut buf);
            }
            for (at, byte) in edits {
                let i = at % buf.len();
                buf[i] = byte;
            }
            check_invariants(&buf)?;
        }
    }

    fn check_invariants(buf: &[u8]) -> Result<(), TestCaseError> {
        match parse_proxy_header(buf) {
            Ok((h, used)) => {
                prop_assert!(used <= buf.len());
                prop_assert_eq!(h.source.is_some(), h.destination.is_some());
            }
            Err(ProxyError::Incomplete { needed }) => {
                let n = needed.unwrap_or(usize::MAX);
                prop_assert!(n > buf.len() && n <= V2_MAX_LEN);
            }
            Err(ProxyError::Malformed(_)) => {}
        }
        Ok(())
    }
}
