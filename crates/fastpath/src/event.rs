//! The end of a steered TCP session, as the sock_ops program reports it (`struct event` in
//! `bpf/sock_lb.c`). Pure: [`SessionEvent::parse`] decodes the record's bytes and refuses any
//! that do not have the layout, so a kernel object of another version cannot be misread.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Size of `struct event`.
pub const EVENT_BYTES: usize = 80;

/// How a steered session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Established, then closed (by either side, or reset).
    Closed,
    /// Never established: the backend refused, the SYN timed out, or the client gave up first
    /// (the kernel does not say which to sock_ops).
    ConnectFailed,
}

/// One finished steered session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionEvent {
    /// The kernel's id of the service (see [`crate::SocketLb::service_of`]).
    pub service_id: u32,
    /// The backend's counter index.
    pub counter: u16,
    pub end: SessionEnd,
    /// The client's own address (its socket's local address).
    pub client: SocketAddr,
    pub backend: SocketAddr,
    /// From connect() to the close.
    pub duration: Duration,
    /// From connect() to established; `None` when it never was.
    pub connect_time: Option<Duration>,
    /// Bytes the client sent that the backend acknowledged. TCP counts sequence space: the
    /// SYN is taken off here, a FIN (when the client sent one) is still in it, so the figure
    /// is the payload or one more.
    pub bytes_to_backend: u64,
    /// Bytes the client received from the backend, with the same caveat for its FIN.
    pub bytes_from_backend: u64,
}

fn u64_at(record: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(record.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(record: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(record.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(record: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(record.get(at..at + 2)?.try_into().ok()?))
}

/// An address field: four words in network byte order, IPv4 in the first.
fn ip_at(record: &[u8], at: usize, v6: bool) -> Option<IpAddr> {
    let bytes: [u8; 16] = record.get(at..at + 16)?.try_into().ok()?;
    Some(if v6 {
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    })
}

impl SessionEvent {
    /// Decodes one ring-buffer record; `None` for a record of another size or kind.
    pub fn parse(record: &[u8]) -> Option<Self> {
        if record.len() != EVENT_BYTES {
            return None;
        }
        let end = match *record.get(38)? {
            1 => SessionEnd::Closed,
            2 => SessionEnd::ConnectFailed,
            _ => return None,
        };
        let v6 = match *record.get(39)? {
            4 => false,
            6 => true,
            _ => return None,
        };
        let connect_ns = u64_at(record, 8)?;
        Some(Self {
            service_id: u32_at(record, 32)?,
            counter: u16_at(record, 36)?,
            end,
            client: SocketAddr::new(ip_at(record, 40, v6)?, u16_at(record, 72)?),
            backend: SocketAddr::new(ip_at(record, 56, v6)?, u16_at(record, 74)?),
            duration: Duration::from_nanos(u64_at(record, 0)?),
            connect_time: (end == SessionEnd::Closed).then(|| Duration::from_nanos(connect_ns)),
            // The SYN is acknowledged sequence space too.
            bytes_to_backend: u64_at(record, 16)?.saturating_sub(1),
            bytes_from_backend: u64_at(record, 24)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, family: u8) -> Vec<u8> {
        let mut r = vec![0u8; EVENT_BYTES];
        r[0..8].copy_from_slice(&2_000_000u64.to_ne_bytes());
        r[8..16].copy_from_slice(&50_000u64.to_ne_bytes());
        r[16..24].copy_from_slice(&1234u64.to_ne_bytes());
        r[24..32].copy_from_slice(&99u64.to_ne_bytes());
        r[32..36].copy_from_slice(&7u32.to_ne_bytes());
        r[36..38].copy_from_slice(&3u16.to_ne_bytes());
        r[38] = kind;
        r[39] = family;
        r[40..44].copy_from_slice(&[127, 0, 0, 1]);
        r[56..60].copy_from_slice(&[127, 0, 0, 2]);
        r[72..74].copy_from_slice(&40000u16.to_ne_bytes());
        r[74..76].copy_from_slice(&6379u16.to_ne_bytes());
        r
    }

    #[test]
    fn a_closed_session_decodes_field_by_field() {
        let event = SessionEvent::parse(&record(1, 4)).unwrap();
        assert_eq!(event.service_id, 7);
        assert_eq!(event.counter, 3);
        assert_eq!(event.end, SessionEnd::Closed);
        assert_eq!(event.client, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(event.backend, "127.0.0.2:6379".parse().unwrap());
        assert_eq!(event.duration, Duration::from_millis(2));
        assert_eq!(event.connect_time, Some(Duration::from_micros(50)));
        assert_eq!(
            (event.bytes_to_backend, event.bytes_from_backend),
            (1233, 99)
        );
    }

    #[test]
    fn a_failed_connect_has_no_connect_time_and_v6_addresses_decode() {
        let mut r = record(2, 6);
        r[40..56].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        let event = SessionEvent::parse(&r).unwrap();
        assert_eq!(event.end, SessionEnd::ConnectFailed);
        assert_eq!(event.connect_time, None);
        assert_eq!(event.client.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn records_of_another_layout_are_refused() {
        assert!(SessionEvent::parse(&[0u8; 12]).is_none());
        assert!(SessionEvent::parse(&record(9, 4)).is_none());
        assert!(SessionEvent::parse(&record(1, 5)).is_none());
    }
}
