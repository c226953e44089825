//! The socket options of one side of a TCP session: `keepalive` and `user_timeout`, on a
//! listener (the client's side) or a pool (the backends' side).

use std::time::Duration;

use super::common::resolve_duration;
use crate::config::diagnostic::{Checked, Diagnostics, Reported};
use crate::config::locate::child_key;
use crate::config::model::*;
use crate::config::raw::{RawDuration, RawKeepalive, RawTimeouts};

/// `keepalive` (each key defaulted from [`DEFAULT_KEEPALIVE`]) and `user_timeout` under
/// `path`.
pub(super) fn resolve_tcp_options(
    path: &str,
    keepalive: Option<&RawKeepalive>,
    user_timeout: Option<&RawDuration>,
    diag: &mut Diagnostics<'_>,
) -> Checked<TcpOptions> {
    let keepalive = match keepalive {
        None => Ok(None),
        Some(raw) => resolve_keepalive(&child_key(path, "keepalive"), raw, diag).map(Some),
    };
    let user_timeout = match user_timeout {
        None => Ok(None),
        Some(raw) => {
            let at = child_key(path, "user_timeout");
            match resolve_duration(Some(raw), &at, Duration::ZERO, false, diag) {
                // The kernel takes an unsigned int of milliseconds.
                Ok(d) if d.as_millis() > u128::from(u32::MAX) => {
                    diag.error(at, "is too long; at most 49 days (2^32 - 1 ms)");
                    Err(Reported)
                }
                Ok(d) if d < Duration::from_millis(1) => {
                    diag.error(at, "must be at least 1ms");
                    Err(Reported)
                }
                other => other.map(Some),
            }
        }
    };
    Ok(TcpOptions {
        keepalive: keepalive?,
        user_timeout: user_timeout?,
    })
}

fn resolve_keepalive(
    path: &str,
    raw: &RawKeepalive,
    diag: &mut Diagnostics<'_>,
) -> Checked<Keepalive> {
    let seconds = |raw: Option<&RawDuration>,
                   key: &str,
                   default: Duration,
                   diag: &mut Diagnostics<'_>| {
        let at = child_key(path, key);
        let d = resolve_duration(raw, &at, default, false, diag)?;
        if d.subsec_nanos() != 0 || d.as_secs() > MAX_KEEPALIVE_SECONDS {
            diag.error(
                at,
                format!("must be whole seconds, from 1s to {MAX_KEEPALIVE_SECONDS}s (the kernel counts in seconds)"),
            );
            return Err(Reported);
        }
        Ok(d)
    };
    let idle = seconds(raw.idle.as_ref(), "idle", DEFAULT_KEEPALIVE.idle, diag);
    let interval = seconds(
        raw.interval.as_ref(),
        "interval",
        DEFAULT_KEEPALIVE.interval,
        diag,
    );
    let count = match raw.count {
        None => Ok(DEFAULT_KEEPALIVE.count),
        Some(n) if (1..=MAX_KEEPALIVE_COUNT).contains(&n) => Ok(u32::try_from(n).unwrap_or(1)),
        Some(n) => {
            diag.error(
                child_key(path, "count"),
                format!("must be between 1 and {MAX_KEEPALIVE_COUNT}, got {n}"),
            );
            Err(Reported)
        }
    };
    Ok(Keepalive {
        idle: idle?,
        interval: interval?,
        count: count?,
    })
}

/// `timeouts.max_lifetime` and `timeouts.max_lifetime_jitter` (a tenth of the lifetime
/// unless written; at most the lifetime).
pub(super) fn resolve_max_lifetime(
    timeouts_path: &str,
    timeouts: Option<&RawTimeouts>,
    diag: &mut Diagnostics<'_>,
) -> Checked<Option<MaxLifetime>> {
    let Some(timeouts) = timeouts else {
        return Ok(None);
    };
    let jitter_path = child_key(timeouts_path, "max_lifetime_jitter");
    let Some(raw) = timeouts.max_lifetime.as_ref() else {
        if timeouts.max_lifetime_jitter.is_some() {
            diag.error(jitter_path, "has no effect without `max_lifetime`");
            return Err(Reported);
        }
        return Ok(None);
    };
    let lifetime = resolve_duration(
        Some(raw),
        &child_key(timeouts_path, "max_lifetime"),
        Duration::ZERO,
        false,
        diag,
    )?;
    let jitter = resolve_duration(
        timeouts.max_lifetime_jitter.as_ref(),
        &jitter_path,
        lifetime / 10,
        true,
        diag,
    )?;
    if jitter > lifetime {
        diag.error(
            jitter_path,
            "must not be longer than `max_lifetime`: the jitter shortens each session's lifetime",
        );
        return Err(Reported);
    }
    Ok(Some(MaxLifetime { lifetime, jitter }))
}

/// A UDP listener has no TCP connection to keep alive.
pub(super) fn refuse_on_udp(
    path: &str,
    keepalive: bool,
    user_timeout: bool,
    max_lifetime: bool,
    diag: &mut Diagnostics<'_>,
) -> bool {
    let mut ok = true;
    let keys = [
        ("keepalive", keepalive),
        ("user_timeout", user_timeout),
        ("timeouts.max_lifetime", max_lifetime),
    ];
    for (key, present) in keys {
        if present {
            diag.error(
                child_key(path, key),
                "applies only to TCP listeners: a UDP flow has no connection to keep alive",
            );
            ok = false;
        }
    }
    ok
}
