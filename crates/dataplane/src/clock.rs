//! The data plane's monotonic clock in milliseconds, the unit pure code takes as "now"; and
//! the wall clock, for the times operators read.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds on this monotonic clock. Pure code takes the time as an argument of this type
/// instead of reading a clock. It lives here, not in `route`, so that the pure modules
/// (`proto::rate_limit`, `udp::flow_table`, `lru`) depend on the clock's unit and not on the
/// route snapshot.
pub type Millis = u64;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the first call in this process; never 0 after the first millisecond so
/// that 0 can mean "never" in atomics.
pub fn now_ms() -> Millis {
    to_millis(Instant::now())
}

pub fn to_millis(at: Instant) -> Millis {
    u64::try_from(at.saturating_duration_since(epoch()).as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch on the wall clock: for times shown to operators (the
/// status API, Prometheus timestamps), never for timers, which take [`now_ms`].
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
