//! Socket addresses as written in the file: listener and admin addresses (`IP:port`), backend
//! addresses (`IP:port` or `host:port`, resolved at load), and which addresses overlap.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

pub(super) const ADDRESS_EXAMPLE: &str = "expected IP:port, e.g. 10.0.0.1:5432 or [::1]:5432";

/// Parses `IP:port` / `[v6]:port`, explaining what is wrong when it is not one.
pub(super) fn parse_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => return Err(format!("{text:?}: missing port; {ADDRESS_EXAMPLE}")),
        // `::1:5432` is itself a valid IPv6 address, so the port may well be in there.
        Ok(IpAddr::V6(_)) => {
            return Err(format!(
                "{text:?}: missing port (IPv6 addresses need brackets); {ADDRESS_EXAMPLE}"
            ))
        }
        Err(_) => {}
    }
    if let Some((host, port)) = text.rsplit_once(':') {
        let port_ok = port.parse::<u16>().is_ok();
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        if bare_host.parse::<std::net::Ipv6Addr>().is_ok() && !host.starts_with('[') {
            return Err(format!(
                "{text:?}: IPv6 addresses need brackets; {ADDRESS_EXAMPLE}"
            ));
        }
        if bare_host.parse::<IpAddr>().is_ok() && !port_ok {
            return Err(format!(
                "{text:?}: invalid port {port:?} (0-65535); {ADDRESS_EXAMPLE}"
            ));
        }
        if port_ok && looks_like_hostname(host) {
            return Err(format!(
                "{text:?}: a host name is not taken here (only backend addresses may be \
                 names); {ADDRESS_EXAMPLE}"
            ));
        }
    } else if looks_like_hostname(text) {
        return Err(format!(
            "{text:?}: a host name needs a port, and only backend addresses may be names; \
             {ADDRESS_EXAMPLE}"
        ));
    }
    Err(format!("{text:?}: {ADDRESS_EXAMPLE}"))
}

pub(super) fn parse_backend_address(text: &str) -> Result<SocketAddr, String> {
    parse_backend_address_with(text, resolve_host)
}

/// A backend's host name through getaddrinfo(3): /etc/hosts, then the system's DNS, which in
/// Docker and Kubernetes answers service names. Only the loader calls it (start, `check`,
/// reload), never the data plane.
fn resolve_host(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    (host, port).to_socket_addrs().map(Iterator::collect)
}

/// `IP:port`, or `host:port` resolved with `resolve` the way HAProxy's `init-addr libc` and
/// nginx do it: once, when the config is loaded, so a reload picks up a changed address and
/// a name that does not resolve fails the load (the running config keeps serving). Of several
/// addresses the first IPv4 one is taken, else the first: `localhost` then means 127.0.0.1,
/// where most test and sidecar backends listen, whatever order the resolver returns.
fn parse_backend_address_with(
    text: &str,
    resolve: impl FnOnce(&str, u16) -> io::Result<Vec<SocketAddr>>,
) -> Result<SocketAddr, String> {
    let address = match parse_address(text) {
        Ok(address) => address,
        Err(message) => {
            let Some((host, port)) = host_and_port(text) else {
                return Err(message);
            };
            let addresses = resolve(host, port)
                .map_err(|e| format!("{text:?}: cannot resolve host name {host:?}: {e}"))?;
            let first_v4 = addresses.iter().find(|a| a.is_ipv4()).copied();
            first_v4
                .or_else(|| addresses.first().copied())
                .ok_or_else(|| format!("{text:?}: host name {host:?} has no address"))?
        }
    };
    if address.port() == 0 {
        return Err(format!("{text:?}: port 0 cannot be connected to"));
    }
    if address.ip().is_unspecified() {
        return Err(format!(
            "{text:?}: {} is a wildcard address and cannot be connected to",
            address.ip()
        ));
    }
    Ok(address)
}

/// A backend name that is looked up again in the background: `host:port` (A/AAAA), or an SRV
/// name `_service._proto.domain` with no port (its records carry the ports). `None` for an
/// IP address or anything that is not a name.
pub(super) fn discovery_name(text: &str) -> Option<(&str, Option<u16>)> {
    if let Some((host, port)) = host_and_port(text) {
        return Some((host, Some(port)));
    }
    let srv = text.starts_with('_')
        && text.contains('.')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    srv.then_some((text, None))
}

/// `host:port` with a host name and a valid port. A host name has a letter and no `:`, so
/// it is never an IP address.
fn host_and_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    looks_like_hostname(host).then_some((host, port))
}

fn looks_like_hostname(text: &str) -> bool {
    !text.is_empty()
        && text.chars().any(|c| c.is_ascii_alphabetic())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// True when binding both addresses would fail: the same address, or a wildcard of the same
/// family and port as the other.
pub(super) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.is_ipv4() != b.is_ipv4() {
        return false;
    }
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(parse_address("10.0.0.1:5432").is_ok());
        assert!(parse_address("[::1]:5432").is_ok());
        let cases = [
            ("10.0.0.1", "missing port"),
            ("::1", "missing port"),
            ("::1:5432", "IPv6 addresses need brackets"),
            ("fe80::1::2:80", ADDRESS_EXAMPLE),
            ("10.0.0.1:99999", "invalid port"),
            ("db.internal:5432", "only backend addresses may be names"),
            ("localhost", "a host name needs a port"),
            ("10.0.0.1:", "invalid port"),
            ("", ADDRESS_EXAMPLE),
            ("10.0.0.300:80", ADDRESS_EXAMPLE),
        ];
        for (text, expected) in cases {
            let message = parse_address(text).unwrap_err();
            assert!(message.contains(expected), "{text}: {message}");
            assert!(message.contains(ADDRESS_EXAMPLE), "{text}: {message}");
        }
        assert!(parse_backend_address("10.0.0.1:0")
            .unwrap_err()
            .contains("port 0"));
        assert!(parse_backend_address("0.0.0.0:80")
            .unwrap_err()
            .contains("wildcard"));
    }

    #[test]
    fn backend_host_names_resolve_at_load_preferring_ipv4() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let both = |host: &str, port: u16| {
            assert_eq!(host, "db.internal");
            Ok(vec![
                SocketAddr::new("fd00::5".parse().unwrap(), port),
                SocketAddr::new("10.0.0.5".parse().unwrap(), port),
            ])
        };
        assert_eq!(
            parse_backend_address_with("db.internal:5432", both),
            Ok(a("10.0.0.5:5432"))
        );
        let v6 = |_: &str, port: u16| Ok(vec![SocketAddr::new("fd00::5".parse().unwrap(), port)]);
        assert_eq!(
            parse_backend_address_with("db.internal:5432", v6),
            Ok(a("[fd00::5]:5432"))
        );
        let unknown = |_: &str, _: u16| Err(io::Error::other("Name or service not known"));
        let message = parse_backend_address_with("nope.internal:5432", unknown).unwrap_err();
        assert!(
            message.contains("cannot resolve host name \"nope.internal\"")
                && message.contains("Name or service not known"),
            "{message}"
        );
        let none = |_: &str, _: u16| Ok(Vec::new());
        assert!(parse_backend_address_with("db.internal:5432", none)
            .unwrap_err()
            .contains("has no address"));
        let never = |_: &str, _: u16| -> io::Result<Vec<SocketAddr>> {
            panic!("an IP address or a bad port is never resolved")
        };
        assert_eq!(
            parse_backend_address_with("10.0.0.1:5432", never),
            Ok(a("10.0.0.1:5432"))
        );
        for bad in [
            "db.internal",
            "db.internal:99999",
            "db.internal:",
            "db internal:80",
        ] {
            assert!(parse_backend_address_with(bad, never).is_err(), "{bad}");
        }
        assert!(parse_backend_address_with("db.internal:0", both)
            .unwrap_err()
            .contains("port 0"));
        // /etc/hosts, no DNS: the system resolver on any Linux machine.
        assert_eq!(
            parse_backend_address("localhost:5432"),
            Ok(a("127.0.0.1:5432"))
        );
    }

    #[test]
    fn discovery_names() {
        assert_eq!(
            discovery_name("app.internal:80"),
            Some(("app.internal", Some(80)))
        );
        assert_eq!(
            discovery_name("_redis._tcp.example.test"),
            Some(("_redis._tcp.example.test", None))
        );
        for not_a_name in [
            "10.0.0.1:80",
            "[::1]:80",
            "app.internal",
            "_srv",
            "app:99999",
        ] {
            assert_eq!(discovery_name(not_a_name), None, "{not_a_name}");
        }
    }

    #[test]
    fn overlapping_addresses() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("0.0.0.0:80"), a("10.0.0.1:80")));
        assert!(overlaps(a("10.0.0.1:80"), a("0.0.0.0:80")));
        assert!(overlaps(a("[::]:80"), a("[::1]:80")));
        assert!(!overlaps(a("0.0.0.0:80"), a("[::]:80")));
        assert!(!overlaps(a("0.0.0.0:80"), a("0.0.0.0:81")));
        assert!(!overlaps(a("10.0.0.1:80"), a("10.0.0.2:80")));
    }
}
