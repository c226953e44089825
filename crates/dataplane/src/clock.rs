//! The data plane's monotonic clock in milliseconds, the unit pure code takes as "now".

use std::sync::OnceLock;
use std::time::Instant;

use crate::route::Millis;

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
