//! SNI routing for TLS passthrough listeners: from a ClientHello's server name (and ALPN list)
//! to a pool. Pure: built once by the control plane, read by workers; owns no descriptor.
//!
//! Names match case-insensitively (the ClientHello parser lower-cases them and the table is
//! built lower-case). `*.example.com` matches every name that ends in `.example.com`, at any
//! depth, as nginx's `server_name` does, but not `example.com` itself. The most specific route
//! wins: an exact name before any wildcard, a longer wildcard suffix before a shorter one, and
//! for the same name a route with an `alpn` condition (met) before one without.

use std::sync::Arc;
use std::time::Duration;

use crate::route::PoolView;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniPattern {
    /// An exact host name, lower-case.
    Exact(String),
    /// `*.suffix`: stores `.suffix`, lower-case.
    Wildcard(String),
}

impl SniPattern {
    /// Parses `api.example.com` or `*.example.com`; `None` for anything else with a `*`.
    pub fn parse(text: &str) -> Option<Self> {
        let lower = text.trim().to_ascii_lowercase();
        if let Some(suffix) = lower.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return None;
            }
            return Some(SniPattern::Wildcard(format!(".{suffix}")));
        }
        if lower.is_empty() || lower.contains('*') {
            return None;
        }
        Some(SniPattern::Exact(lower))
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            SniPattern::Exact(exact) => exact == name,
            SniPattern::Wildcard(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
        }
    }

    /// Sort key: lower is more specific.
    fn rank(&self) -> (u8, usize) {
        match self {
            SniPattern::Exact(_) => (0, 0),
            SniPattern::Wildcard(suffix) => (1, usize::MAX - suffix.len()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SniRoute {
    pub pattern: SniPattern,
    /// The route applies only when the client offers one of these protocols (empty: always).
    pub alpn: Vec<String>,
    pub pool: Arc<PoolView>,
}

/// The routes of one TLS passthrough listener.
#[derive(Debug, Clone)]
pub struct SniTable {
    routes: Vec<SniRoute>,
    default_pool: Option<Arc<PoolView>>,
    /// How long a client may take to send its ClientHello.
    pub peek_timeout: Duration,
}

impl SniTable {
    pub fn new(
        mut routes: Vec<SniRoute>,
        default_pool: Option<Arc<PoolView>>,
        peek_timeout: Duration,
    ) -> Self {
        // Stable sort: among equals the configuration's order decides.
        routes.sort_by_key(|r| (r.pattern.rank(), r.alpn.is_empty()));
        Self {
            routes,
            default_pool,
            peek_timeout,
        }
    }

    /// The pool for a ClientHello with this server name whose ALPN list `offers` a protocol;
    /// the default pool when nothing matches (or no SNI was sent); `None` to close.
    pub fn route(
        &self,
        server_name: Option<&str>,
        offers: impl Fn(&str) -> bool,
    ) -> Option<&Arc<PoolView>> {
        if let Some(name) = server_name {
            let name = name.to_ascii_lowercase();
            let hit = self.routes.iter().find(|r| {
                r.pattern.matches(&name) && (r.alpn.is_empty() || r.alpn.iter().any(|p| offers(p)))
            });
            if let Some(route) = hit {
                return Some(&route.pool);
            }
        }
        self.default_pool.as_ref()
    }

    /// Every pool this table can route to (for building and status).
    pub fn pools(&self) -> impl Iterator<Item = &Arc<PoolView>> {
        self.routes
            .iter()
            .map(|r| &r.pool)
            .chain(self.default_pool.iter())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::balance::{self, Algorithm};

    fn pool(name: &str) -> Arc<PoolView> {
        Arc::new(PoolView {
            name: name.into(),
            backends: Vec::new().into(),
            picker: balance::build(Algorithm::RoundRobin, &[]),
            retries: 0,
            passive: None,
            send_proxy: None,
            slow_start: 0,
            queue: None,
            waiting: Default::default(),
            backend_tcp: Default::default(),
        })
    }

    fn table(default: bool) -> SniTable {
        let route = |p: &str, alpn: &[&str], name: &str| SniRoute {
            pattern: SniPattern::parse(p).unwrap(),
            alpn: alpn.iter().map(|s| s.to_string()).collect(),
            pool: pool(name),
        };
        SniTable::new(
            vec![
                route("*.example.com", &[], "wild"),
                route("*.b.example.com", &[], "deeper-wild"),
                route("api.example.com", &[], "api"),
                route("api.example.com", &["h2"], "api-h2"),
            ],
            default.then(|| pool("default")),
            Duration::from_secs(5),
        )
    }

    fn routed(t: &SniTable, name: Option<&str>, alpn: &[&str]) -> Option<String> {
        t.route(name, |p| alpn.contains(&p))
            .map(|p| p.name.to_string())
    }

    #[test]
    fn most_specific_route_wins() {
        let t = table(true);
        assert_eq!(routed(&t, Some("api.example.com"), &[]).unwrap(), "api");
        assert_eq!(routed(&t, Some("API.Example.COM"), &[]).unwrap(), "api");
        assert_eq!(
            routed(&t, Some("api.example.com"), &["h2"]).unwrap(),
            "api-h2"
        );
        assert_eq!(routed(&t, Some("www.example.com"), &[]).unwrap(), "wild");
        assert_eq!(routed(&t, Some("x.y.example.com"), &[]).unwrap(), "wild");
        assert_eq!(
            routed(&t, Some("x.b.example.com"), &[]).unwrap(),
            "deeper-wild"
        );
        assert_eq!(routed(&t, Some("example.com"), &[]).unwrap(), "default");
        assert_eq!(routed(&t, None, &[]).unwrap(), "default");
    }

    #[test]
    fn no_match_and_no_default_closes() {
        let t = table(false);
        assert!(routed(&t, Some("other.test"), &[]).is_none());
        assert!(routed(&t, None, &[]).is_none());
    }

    #[test]
    fn patterns_parse_strictly() {
        assert_eq!(
            SniPattern::parse("*.A.com"),
            Some(SniPattern::Wildcard(".a.com".into()))
        );
        assert_eq!(
            SniPattern::parse("a.com"),
            Some(SniPattern::Exact("a.com".into()))
        );
        for bad in ["*", "*.", "a.*.com", "**.a.com", ""] {
            assert_eq!(SniPattern::parse(bad), None, "{bad}");
        }
    }
}
