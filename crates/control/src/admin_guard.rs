//! What keeps a web page in the operator's browser from using the admin API: the checks on
//! `Host`, `Origin` and the shape of mutating requests, run before any handler.
//!
//! - **DNS rebinding.** A page on `evil.example` whose name is then pointed at 127.0.0.1 talks
//!   to the admin server as a same-origin page, but its requests carry `Host: evil.example`.
//!   A host name is served only when it is `localhost` or listed in `admin.allowed_hosts`. An
//!   IP address is always served: a rebound page cannot send one, since its Host is its own
//!   name. The port is not compared: port mappings (`docker -p`, `kubectl port-forward`) change
//!   it, and it proves nothing a name does not.
//! - **Cross-site requests.** A request whose `Origin` is present must come from a page of the
//!   admin server itself (`Origin` equal to the request's `Host`) or of an allowed host name;
//!   `Origin: null` (sandboxed frames, `file:`) is refused.
//! - **Forms.** A page anywhere can submit an HTML form (a "simple" cross-origin POST, no CORS
//!   preflight) and browsers do not always send `Origin` with it. Every request that is not a
//!   read needs `Content-Type: application/json` or an `X-Ballast-Request` header, which no
//!   form can send and which a script on another origin can send only after a preflight that
//!   this server never grants (it answers no CORS headers).
//!
//! `/healthz` and `/readyz` skip the Host and Origin checks: liveness probers send whatever
//! Host they are configured with, and the answers say nothing but "alive" and "ready".

use axum::http::{header, HeaderMap, Method, StatusCode};

/// The header scripts (and the dashboard) send with mutating calls; forms cannot set it.
pub const CUSTOM_HEADER: &str = "x-ballast-request";

/// Why a request was refused before reaching its handler; always 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "Host {0:?} is not a name of this admin server; list it in admin.allowed_hosts to \
         serve it (requests under other names are refused against DNS rebinding)"
    )]
    Host(String),
    #[error(
        "Origin {0:?} is refused: only pages of this admin server, or of a name in \
         admin.allowed_hosts, may call it"
    )]
    Origin(String),
    #[error(
        "this call needs `Content-Type: application/json` or an `X-Ballast-Request: 1` header \
         (an HTML form can send neither, so a page elsewhere cannot make the call)"
    )]
    NotJson,
}

/// Checks one request; `allowed_hosts` are lower case without port.
pub fn check(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    authority: Option<&str>,
    allowed_hosts: &[String],
) -> Result<(), Refusal> {
    let probe = matches!(path, "/healthz" | "/readyz") && method == Method::GET;
    if !probe {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or(authority);
        // No Host at all is an HTTP/1.0 client or a hand-made request: never a browser.
        if let Some(host) = host {
            if !host_allowed(host_part(host), allowed_hosts) {
                return Err(Refusal::Host(host.to_string()));
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !origin_allowed(origin, host, allowed_hosts) {
                return Err(Refusal::Origin(origin.to_string()));
            }
        }
    }
    if !method.is_safe() && !json_or_custom(headers) {
        return Err(Refusal::NotJson);
    }
    Ok(())
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        StatusCode::FORBIDDEN
    }
}

/// `host` of `host:port`, `[v6]:port`, `host` or `[v6]`.
fn host_part(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

fn host_allowed(host: &str, allowed_hosts: &[String]) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    name.eq_ignore_ascii_case("localhost")
        || allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(name))
}

fn origin_allowed(origin: &str, host: Option<&str>, allowed_hosts: &[String]) -> bool {
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        // `null`, or a scheme no page of ours has.
        return false;
    };
    if host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
        return true;
    }
    let name = host_part(authority);
    let name = name.strip_suffix('.').unwrap_or(name);
    allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(name))
}

fn json_or_custom(headers: &HeaderMap) -> bool {
    if headers.contains_key(CUSTOM_HEADER) {
        return true;
    }
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    fn get(pairs: &[(&'static str, &'static str)], allowed: &[&str]) -> Result<(), Refusal> {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        check(
            &Method::GET,
            "/api/v1/status",
            &headers(pairs),
            None,
            &allowed,
        )
    }

    #[test]
    fn hosts() {
        for ok in [
            "127.0.0.1:9190",
            "[::1]:9190",
            "10.0.0.5",
            "localhost:1",
            "LocalHost.",
            "[fe80::1]",
        ] {
            assert_eq!(get(&[("host", ok)], &[]), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example:9190",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
        ] {
            assert!(
                matches!(get(&[("host", bad)], &[]), Err(Refusal::Host(_))),
                "{bad}"
            );
        }
        assert_eq!(get(&[("host", "Ballast:80")], &["ballast"]), Ok(()));
        assert_eq!(get(&[], &[]), Ok(()));
    }

    #[test]
    fn origins() {
        let same = [
            ("host", "127.0.0.1:9190"),
            ("origin", "http://127.0.0.1:9190"),
        ];
        assert_eq!(get(&same, &[]), Ok(()));
        for bad in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:9191",
            "file://",
        ] {
            let pairs = [("host", "127.0.0.1:9190"), ("origin", bad)];
            assert!(matches!(get(&pairs, &[]), Err(Refusal::Origin(_))), "{bad}");
        }
        let proxied = [
            ("host", "127.0.0.1:9190"),
            ("origin", "https://ballast.example"),
        ];
        assert_eq!(get(&proxied, &["ballast.example"]), Ok(()));
    }

    #[test]
    fn mutating_calls_need_json_or_the_header() {
        let post = |pairs: &[(&'static str, &'static str)]| {
            check(&Method::POST, "/api/v1/reload", &headers(pairs), None, &[])
        };
        assert_eq!(post(&[]), Err(Refusal::NotJson));
        assert_eq!(
            post(&[("content-type", "text/plain")]),
            Err(Refusal::NotJson)
        );
        assert_eq!(
            post(&[("content-type", "application/jsonx")]),
            Err(Refusal::NotJson)
        );
        assert_eq!(
            post(&[("content-type", "Application/JSON; charset=utf-8")]),
            Ok(())
        );
        assert_eq!(post(&[("x-ballast-request", "1")]), Ok(()));
        // Probes skip the Host check, never the form check.
        let probe = headers(&[("host", "evil.example")]);
        assert_eq!(check(&Method::GET, "/healthz", &probe, None, &[]), Ok(()));
        assert_eq!(
            check(&Method::POST, "/healthz", &probe, None, &[]),
            Err(Refusal::Host("evil.example".into()))
        );
    }
}
