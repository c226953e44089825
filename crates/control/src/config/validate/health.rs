//! A pool's active `health_check`: probe kind, timing, rise and fall, the probe payloads, and
//! probes that could never reach the backends' listeners.

use super::common::{parsed_items, resolve_choice, resolve_duration};
use crate::config::diagnostic::{Checked, Diagnostics, Reported};
use crate::config::locate::{child_index, child_key};
use crate::config::model::*;
use crate::config::raw::{Document, RawDuration, RawHealthCheck};

const PROBE_KINDS: [(&str, ProbeKind); 2] = [("tcp", ProbeKind::Tcp), ("udp", ProbeKind::Udp)];

pub(super) fn resolve_health_check(
    path: &str,
    raw: &RawHealthCheck,
    diag: &mut Diagnostics<'_>,
) -> Checked<HealthCheck> {
    let kind = resolve_choice(
        raw.kind.as_deref(),
        &child_key(path, "kind"),
        "health check kind",
        &PROBE_KINDS,
        diag,
    );
    let interval = resolve_duration(
        raw.interval.as_ref(),
        &child_key(path, "interval"),
        DEFAULT_HEALTH_INTERVAL,
        false,
        diag,
    );
    // Without a `timeout`, a short interval brings the default down with it rather than
    // failing a config that never mentioned a timeout.
    let default_timeout = match &interval {
        Ok(interval) => DEFAULT_HEALTH_TIMEOUT.min(*interval),
        Err(Reported) => DEFAULT_HEALTH_TIMEOUT,
    };
    let timeout_path = child_key(path, "timeout");
    let timeout = resolve_duration(
        raw.timeout.as_ref(),
        &timeout_path,
        default_timeout,
        false,
        diag,
    );
    if let (Ok(interval), Ok(timeout), Some(RawDuration(text))) =
        (&interval, &timeout, &raw.timeout)
    {
        if timeout > interval {
            diag.error(
                &timeout_path,
                format!(
                    "{text:?} is longer than the interval ({interval:?}); a probe must end \
                     before the next one starts"
                ),
            );
        }
    }
    let rise = resolve_count(raw.rise, DEFAULT_RISE, &child_key(path, "rise"), diag);
    let fall = resolve_count(raw.fall, DEFAULT_FALL, &child_key(path, "fall"), diag);
    let send = resolve_payload(
        path,
        "send",
        raw.send.as_deref(),
        raw.send_hex.as_deref(),
        diag,
    );
    let expect = resolve_payload(
        path,
        "expect",
        raw.expect.as_deref(),
        raw.expect_hex.as_deref(),
        diag,
    );
    if matches!(kind, Ok(ProbeKind::Udp)) && raw.send.is_none() && raw.send_hex.is_none() {
        diag.error(
            path,
            "a udp health check needs `send` or `send_hex`: the datagram that asks for a reply",
        );
        return Err(Reported);
    }
    let (interval, timeout) = (interval?, timeout?);
    if timeout > interval {
        return Err(Reported);
    }
    Ok(HealthCheck {
        kind: kind?,
        interval,
        timeout,
        rise: rise?,
        fall: fall?,
        send: send?,
        expect: expect?,
    })
}

/// `rise` or `fall`: consecutive probe results, 1..=MAX_RISE_FALL.
fn resolve_count(
    raw: Option<u32>,
    default: u32,
    path: &str,
    diag: &mut Diagnostics<'_>,
) -> Checked<u32> {
    match raw.unwrap_or(default) {
        n if (1..=MAX_RISE_FALL).contains(&n) => Ok(n),
        n => {
            diag.error(
                path,
                format!("must be between 1 and {MAX_RISE_FALL} consecutive probes, got {n}"),
            );
            Err(Reported)
        }
    }
}

/// A probe payload given as text (`send`) or as hex bytes (`send_hex`), never both.
fn resolve_payload(
    path: &str,
    key: &str,
    text: Option<&str>,
    hex: Option<&str>,
    diag: &mut Diagnostics<'_>,
) -> Checked<Option<Vec<u8>>> {
    let hex_key = format!("{key}_hex");
    let (bytes, at) = match (text, hex) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            diag.error(
                child_key(path, &hex_key),
                format!("give `{key}` (text) or `{hex_key}` (bytes), not both"),
            );
            return Err(Reported);
        }
        (Some(text), None) => (text.as_bytes().to_vec(), child_key(path, key)),
        (None, Some(hex)) => {
            let at = child_key(path, &hex_key);
            match parse_hex(hex) {
                Ok(bytes) => (bytes, at),
                Err(message) => {
                    diag.error(at, message);
                    return Err(Reported);
                }
            }
        }
    };
    if bytes.is_empty() {
        diag.error(at, format!("empty; leave `{key}` out instead"));
        return Err(Reported);
    }
    if bytes.len() > MAX_PROBE_BYTES {
        diag.error(
            at,
            format!(
                "{} bytes is too long for a probe; at most {MAX_PROBE_BYTES}",
                bytes.len()
            ),
        );
        return Err(Reported);
    }
    Ok(Some(bytes))
}

/// Hex digits, two per byte; whitespace between bytes is ignored (`"2b 50 4f 4e 47"`).
fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(text.len() / 2);
    let mut high: Option<u8> = None;
    for (position, c) in text.chars().enumerate() {
        if c.is_ascii_whitespace() && high.is_none() {
            continue;
        }
        let Some(digit) = c.to_digit(16).and_then(|d| u8::try_from(d).ok()) else {
            return Err(format!(
                "{text:?}: {c:?} at character {} is not a hex digit (0-9, a-f)",
                position + 1
            ));
        };
        match high.take() {
            None => high = Some(digit),
            Some(h) => bytes.push(h << 4 | digit),
        }
    }
    if high.is_some() {
        return Err(format!(
            "{text:?}: odd number of hex digits; each byte takes two"
        ));
    }
    Ok(bytes)
}

/// A UDP probe sent to a backend that only TCP listeners use asks a port that is not there:
/// every backend would be marked down.
pub(super) fn check_probe_protocols(doc: &Document, diag: &mut Diagnostics<'_>) {
    for (index, pool) in parsed_items(&doc.pools) {
        let udp_probe = pool
            .health_check
            .as_ref()
            .is_some_and(|check| check.kind.as_deref() == Some("udp"));
        let Some(name) = pool.name.as_deref() else {
            continue;
        };
        if !udp_probe {
            continue;
        }
        let protocols: Vec<&str> = parsed_items(&doc.listeners)
            .filter(|(_, l)| l.pool.as_deref() == Some(name))
            .map(|(_, l)| l.protocol.as_deref().unwrap_or("tcp"))
            .collect();
        if !protocols.is_empty() && !protocols.contains(&"udp") {
            diag.error(
                child_key(
                    &child_key(&child_index("pools", index), "health_check"),
                    "kind",
                ),
                format!(
                    "pool {name:?} serves only TCP listeners, so a udp probe would find no \
                     one at its backends' ports; use `kind: tcp`"
                ),
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hex_payloads() {
        assert_eq!(parse_hex("2b504f4e47").unwrap(), b"+PONG");
        assert_eq!(parse_hex("2B 50 4f\t4E 47\n").unwrap(), b"+PONG");
        assert_eq!(parse_hex("").unwrap(), b"");
        assert!(parse_hex("2b5").unwrap_err().contains("odd number"));
        let message = parse_hex("2bzz").unwrap_err();
        assert!(message.contains("'z' at character 3"), "{message}");
        // Whitespace inside a byte is a typo, not a separator.
        assert!(parse_hex("2 b").is_err());
    }
}
