//! `slow_start` through the real binary: a backend enabled after a disable (admin API), one
//! back from an active-health down and one back from a passive mark (each killed, then
//! restarted) take a share of new connections that grows over the window and ends at their
//! weight's share; with round robin, Maglev and random respectively.
//!
//! Windows are placed on Ballast's own clock: `/api/v1/status` says how much of the ramp is
//! left, which dates its start to within one status request. Shares are compared between an
//! early and a late window with wide margins, and nothing is asserted about speed: a loaded
//! machine only makes fewer samples per window, and each window needs only a few dozen.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "slow-start-token";
const WINDOW: Duration = Duration::from_secs(4);
/// Sampled past the window's end, to see the full share.
const AFTER: Duration = Duration::from_millis(1500);
/// Fewest connections a window needs for its share to mean anything.
const MIN_SAMPLES: usize = 20;

fn config(algorithm: &str, a: SocketAddr, b: SocketAddr, extra: &str) -> String {
    let token_file = write_config(&format!("{TOKEN}\n"));
    format!(
        "admin: {{ listen: 127.0.0.1:0, token_file: \"{}\" }}
listeners:
  - {{ name: front, listen: 127.0.0.1:0, pool: p }}
pools:
  - name: p
    algorithm: {algorithm}
    slow_start: {}ms
{extra}    backends:
      - {{ address: \"{a}\" }}
      - {{ address: \"{b}\" }}
",
        token_file.display(),
        WINDOW.as_millis()
    )
}

/// When the ramp of `backend` started, by our clock, from what the status says is left of it.
fn ramp_started(lb: &Ballast, backend: SocketAddr) -> Instant {
    let asked = Instant::now();
    let entry = lb.backend("p", backend);
    let remaining = entry["slow_start_remaining_ms"].as_u64().unwrap();
    assert!(
        remaining > 0 && entry["effective_weight"].as_f64().unwrap() < 1.0,
        "not ramping: {entry}"
    );
    asked - (WINDOW - Duration::from_millis(remaining))
}

/// New connections through `front` until `WINDOW + AFTER` past `start` (at most 30 000, and
/// at most a minute): when each was opened, after `start`, and who answered.
fn sample(front: SocketAddr, start: Instant) -> Vec<(Duration, String)> {
    let end = WINDOW + AFTER;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    for i in 0..30_000 {
        let at = start.elapsed();
        if at >= end || Instant::now() > deadline {
            break;
        }
        seen.push((at, ask(front, &format!("ramp {i}"))));
    }
    seen
}

/// The share of `name` among the connections opened in `from..to`.
fn share(seen: &[(Duration, String)], name: &str, from: Duration, to: Duration) -> f64 {
    let window: Vec<&String> = seen
        .iter()
        .filter(|(at, _)| (from..to).contains(at))
        .map(|(_, who)| who)
        .collect();
    assert!(
        window.len() >= MIN_SAMPLES,
        "{} connections in {from:?}..{to:?}, too few to judge",
        window.len()
    );
    window.iter().filter(|who| **who == name).count() as f64 / window.len() as f64
}

/// The ramp of backend `a` of equal weight with `b`, as clients see it: 1% → ½ of the
/// weight over the first quarter, so about a tenth of the connections in it; a third
/// halfway; half once the window is over.
fn assert_ramps(lb: &Ballast, a: SocketAddr, start: Instant) {
    let seen = sample(lb.addr("front"), start);
    let quarter = WINDOW / 4;
    let early = share(&seen, "a", Duration::ZERO, quarter);
    let middle = share(
        &seen,
        "a",
        WINDOW / 2 - quarter / 2,
        WINDOW / 2 + quarter / 2,
    );
    let late = share(
        &seen,
        "a",
        WINDOW + Duration::from_millis(200),
        WINDOW + AFTER,
    );
    let shares = format!("early {early:.2}, middle {middle:.2}, late {late:.2}");
    assert!(early < 0.25, "{shares}");
    assert!(early + 0.1 < middle && middle < late + 0.1, "{shares}");
    assert!((0.35..=0.65).contains(&late), "{shares}");
    let entry = lb.backend("p", a);
    assert_eq!(
        (
            entry["effective_weight"].as_f64(),
            entry["slow_start_remaining_ms"].as_u64()
        ),
        (Some(1.0), Some(0)),
        "{entry}"
    );
}

#[test]
fn a_backend_enabled_after_a_disable_ramps_up_to_its_share() {
    let a = named_backend("a", Duration::ZERO);
    let b = named_backend("b", Duration::ZERO);
    let passive_off = "    passive: { max_fails: 0 }\n";
    let lb = Ballast::run(&config("round_robin", a.addr, b.addr, passive_off));
    // At start nothing ramps: both serve at once, as in HAProxy.
    let entry = lb.backend("p", a.addr);
    assert_eq!(entry["effective_weight"].as_f64(), Some(1.0), "{entry}");
    assert_eq!(lb.status()["pools"][0]["slow_start_ms"], 4000);

    let action = |what: &str| {
        let path = format!("/api/v1/pools/p/backends/{}/{what}", a.addr);
        let (code, body) = http(lb.admin(), "POST", &path, Some(TOKEN));
        assert_eq!(code, 200, "{what}: {body}");
    };
    action("disable");
    assert!((0..4).all(|i| ask(lb.addr("front"), &format!("disabled {i}")) == "b"));
    action("enable");
    let start = ramp_started(&lb, a.addr);
    assert_ramps(&lb, a.addr, start);
}

#[test]
fn a_backend_back_from_a_health_check_down_ramps_up_to_its_share() {
    let mut a = KillableBackend::start("a", "127.0.0.1:0".parse().unwrap());
    let b = named_backend("b", Duration::ZERO);
    let extra = "    hash_key: five_tuple
    passive: { max_fails: 0 }
    health_check: { interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }
";
    // Maglev on the five-tuple: each new connection is a new key, and the ramp admits the
    // recovering backend's keys a growing fraction at a time.
    let lb = Ballast::run(&config("maglev", a.addr, b.addr, extra));
    let addr = a.addr;
    a.kill();
    let down = lb.wait_backend("p", addr, Duration::from_secs(10), |e| e["state"] == "down");
    assert!(down.is_some(), "{}", lb.log_text());
    let _a = KillableBackend::start("a", addr);
    let up = lb.wait_backend("p", addr, Duration::from_secs(10), |e| e["state"] == "up");
    assert!(up.is_some(), "{}", lb.log_text());
    let start = ramp_started(&lb, addr);
    assert_ramps(&lb, addr, start);
}

#[test]
fn a_backend_back_from_a_passive_mark_ramps_up_to_its_share() {
    let mut a = KillableBackend::start("a", "127.0.0.1:0".parse().unwrap());
    let b = named_backend("b", Duration::ZERO);
    let extra = "    passive: { max_fails: 1, fail_timeout: 1s }\n    retries: 1\n";
    let lb = Ballast::run(&config("random", a.addr, b.addr, extra));
    let addr = a.addr;
    a.kill();
    // A refused connect marks it down; the retry serves the client from b.
    let front = lb.addr("front");
    let marked = wait_until(Duration::from_secs(10), || {
        ask(front, "probe") == "b" && lb.backend("p", addr)["state"] == "down"
    });
    assert!(marked, "{}", lb.log_text());
    let _a = KillableBackend::start("a", addr);
    // The ramp starts when fail_timeout ends.
    let up = lb.wait_backend("p", addr, Duration::from_secs(10), |e| e["state"] == "up");
    assert!(up.is_some(), "{}", lb.log_text());
    let start = ramp_started(&lb, addr);
    assert_ramps(&lb, addr, start);
}
