//! Effective weights: the weight a picker gives a backend at a given moment.
//!
//! A backend's configured weight is scaled by what changes at run time — today slow start —
//! in one place, [`effective_weight`], which every picker, `/api/v1/status` and `/metrics`
//! read, so a new factor (an agent's weight percentage, say) is added there and nowhere else.
//!
//! Rules:
//!
//! - **Units.** Effective weights count [`WEIGHT_SCALE`] parts per unit of configured weight,
//!   so a ramp is exact integer math and `full_weight(w)` is `w × WEIGHT_SCALE`.
//! - **Slow start.** A backend that comes back — active health up again, a passive mark
//!   expired, enabled after a drain or disable — at `returned_at` has its weight ramp
//!   linearly from [`MIN_SLOW_START_SHARE`] to all of it over the pool's `slow_start`. Going
//!   away during the ramp and coming back restarts it. At process start, and for a backend a
//!   reload adds, there is no ramp: as HAProxy's `slowstart`, it applies only to a backend
//!   that was seen out, because ramping every backend of a starting pool together shifts
//!   nothing and only makes the first picks uneven.
//! - **Bounds.** The effective weight of a backend is never 0 (an eligible backend stays
//!   pickable, so a pool whose backends all came back at once still serves), never above its
//!   full weight, and never decreases between one return and the next.
//! - **How pickers use it.** Ramps are read per pick from `(now, returned_at, slow_start)`,
//!   the snapshot stays immutable and nothing is rebuilt on a timer. Samplers (random, the
//!   draws of power_of_two and least_time) keep a draw that lands on a ramping backend with
//!   probability effective / full, which is rejection sampling and keeps shares exactly
//!   proportional to effective weights. Round robin skips a ramping backend's turn in its
//!   precomputed cycle with that same probability, from the worker's own generator. Least
//!   connections, power_of_two and least_time compare load per *effective* weight. Maglev
//!   keeps a key on a ramping backend when a hash of the key falls below its share (see
//!   `maglev.rs`): deterministic per key, and a key that has come back stays back.

use crate::route::{BackendState, Millis, PoolView};

/// Parts of one unit of configured weight that effective weights count in.
pub const WEIGHT_SCALE: u32 = 1000;

/// Where a ramp starts, in [`WEIGHT_SCALE`] parts: 1% of the weight, as HAProxy's slowstart
/// (nginx starts from zero; a floor above it keeps a lone backend of a tier pickable).
pub const MIN_SLOW_START_SHARE: u32 = WEIGHT_SCALE / 100;

/// The share of its weight, in [`WEIGHT_SCALE`] parts, that a backend which came back at
/// `returned_at` (0: never away) has at `now` under a slow start of `window` ms (0: off).
pub fn slow_start_share(now: Millis, returned_at: Millis, window: Millis) -> u32 {
    if window == 0 || returned_at == 0 {
        return WEIGHT_SCALE;
    }
    let elapsed = now.saturating_sub(returned_at);
    if elapsed >= window {
        return WEIGHT_SCALE;
    }
    // elapsed < window, so the quotient is below WEIGHT_SCALE and fits.
    let share = u128::from(elapsed) * u128::from(WEIGHT_SCALE) / u128::from(window);
    u32::try_from(share)
        .unwrap_or(WEIGHT_SCALE)
        .max(MIN_SLOW_START_SHARE)
}

/// How long the ramp of a backend that came back at `returned_at` still runs at `now` under a
/// slow start of `window` ms: 0 when it is at full weight.
pub fn slow_start_remaining(now: Millis, returned_at: Millis, window: Millis) -> Millis {
    if window == 0 || returned_at == 0 {
        return 0;
    }
    returned_at
        .saturating_add(window)
        .saturating_sub(now)
        .min(window)
}

/// A configured weight in [`WEIGHT_SCALE`] parts (weights below 1 count as 1, as in the
/// pickers' tiers).
pub fn full_weight(weight: u32) -> u32 {
    weight.max(1).saturating_mul(WEIGHT_SCALE)
}

/// The weight pickers give a backend of configured `weight` and live `state` at `now`, under
/// a pool `slow_start` of that many ms (0: off), in [`WEIGHT_SCALE`] parts.
pub fn effective_weight(weight: u32, state: &BackendState, slow_start: Millis, now: Millis) -> u32 {
    let full = full_weight(weight);
    if slow_start == 0 {
        // No ramp to read: the atomics stay untouched on the hot path of such a pool.
        return full;
    }
    let share = slow_start_share(now, state.returned_at(), slow_start);
    let scaled = u64::from(weight.max(1)) * u64::from(share);
    u32::try_from(scaled).unwrap_or(full)
}

/// Effective and full weight of `pool.backends[index]` (for an index the pool lacks, full
/// weight 1: it is never eligible anyway).
pub(crate) fn of_backend(pool: &PoolView, index: usize, now: Millis) -> (u32, u32) {
    match pool.backends.get(index) {
        Some(b) => (
            effective_weight(b.weight, &b.state, pool.slow_start, now),
            full_weight(b.weight),
        ),
        None => (WEIGHT_SCALE, WEIGHT_SCALE),
    }
}

/// Whether a pick that landed on a backend keeps it: always at full weight, otherwise when
/// `ticket`, called with `full` and uniform below it, falls below `effective`. The ticket is
/// drawn only for a ramping backend, so a pool without slow start pays nothing.
pub(crate) fn keeps(effective: u32, full: u32, ticket: impl FnOnce(u64) -> u64) -> bool {
    effective >= full || ticket(u64::from(full)) < u64::from(effective)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WINDOW: Millis = 30_000;
    const BACK: Millis = 5_000_000;

    #[test]
    fn the_ramp_starts_small_grows_linearly_and_ends_full() {
        assert_eq!(slow_start_share(BACK, BACK, WINDOW), MIN_SLOW_START_SHARE);
        assert_eq!(slow_start_share(BACK + WINDOW / 2, BACK, WINDOW), 500);
        assert_eq!(slow_start_share(BACK + WINDOW / 4, BACK, WINDOW), 250);
        assert_eq!(slow_start_share(BACK + WINDOW - 1, BACK, WINDOW), 999);
        assert_eq!(slow_start_share(BACK + WINDOW, BACK, WINDOW), WEIGHT_SCALE);
        assert_eq!(slow_start_share(u64::MAX, BACK, WINDOW), WEIGHT_SCALE);
    }

    #[test]
    fn the_remaining_ramp_counts_down_to_zero() {
        assert_eq!(slow_start_remaining(BACK, BACK, WINDOW), WINDOW);
        assert_eq!(
            slow_start_remaining(BACK + 1_000, BACK, WINDOW),
            WINDOW - 1_000
        );
        assert_eq!(slow_start_remaining(BACK + WINDOW, BACK, WINDOW), 0);
        assert_eq!(slow_start_remaining(BACK, 0, WINDOW), 0);
        assert_eq!(slow_start_remaining(BACK, BACK, 0), 0);
        // Still passively down: the whole ramp is ahead.
        assert_eq!(slow_start_remaining(BACK, BACK + 5, WINDOW), WINDOW);
    }

    #[test]
    fn no_ramp_without_a_window_or_a_return() {
        assert_eq!(slow_start_share(BACK, BACK, 0), WEIGHT_SCALE);
        // Never away since start: full at once, even within the first window of the process.
        assert_eq!(slow_start_share(10, 0, WINDOW), WEIGHT_SCALE);
        // A passive mark that ends in the future (the backend is out meanwhile).
        assert_eq!(
            slow_start_share(BACK, BACK + 10, WINDOW),
            MIN_SLOW_START_SHARE
        );
    }

    #[test]
    fn every_kind_of_return_starts_a_ramp_and_going_away_restarts_it() {
        use crate::route::{AdminState, ConnectError, PassivePolicy};
        let weight = 4;
        let state = BackendState::new();
        let at = |now| effective_weight(weight, &state, WINDOW, now);
        assert_eq!(at(BACK), full_weight(weight), "never away: full");

        state.set_healthy_at(false, BACK);
        state.set_healthy_at(true, BACK + 1_000);
        assert_eq!(at(BACK + 1_000), weight * MIN_SLOW_START_SHARE);
        assert_eq!(at(BACK + 1_000 + WINDOW / 2), weight * 500);
        // Already up: a repeated verdict does not restart the ramp.
        state.set_healthy_at(true, BACK + 1_000 + WINDOW / 2);
        assert_eq!(at(BACK + 1_000 + WINDOW / 2), weight * 500);

        // Down mid-ramp, up again: from the bottom.
        let again = BACK + 20_000;
        state.set_healthy_at(false, again - 1);
        state.set_healthy_at(true, again);
        assert_eq!(at(again), weight * MIN_SLOW_START_SHARE);

        // Drained, then enabled.
        let enabled = BACK + 100_000;
        state.set_admin_at(AdminState::Draining, enabled - 5);
        state.set_admin_at(AdminState::Enabled, enabled);
        assert_eq!(at(enabled + WINDOW / 4), weight * 250);
        state.set_admin_at(AdminState::Enabled, enabled + WINDOW / 4);
        assert_eq!(at(enabled + WINDOW / 4), weight * 250, "enabled twice");

        // Passively down for 10 s: the ramp starts when the mark ends.
        let failed = BACK + 200_000;
        let policy = PassivePolicy {
            max_fails: 1,
            fail_timeout: std::time::Duration::from_secs(10),
        };
        state.record_connect_failure(ConnectError::Refused, failed, Some(policy));
        assert!(state.is_passively_down(failed + 9_999));
        assert_eq!(state.returned_at(), failed + 10_000);
        assert_eq!(at(failed + 10_000 + WINDOW / 2), weight * 500);
        assert_eq!(at(failed + 10_000 + WINDOW), full_weight(weight));
    }

    #[test]
    fn keeps_draws_a_ticket_only_while_ramping() {
        assert!(keeps(4_000, 4_000, |_| unreachable!()));
        assert!(keeps(1_000, 4_000, |full| {
            assert_eq!(full, 4_000);
            999
        }));
        assert!(!keeps(1_000, 4_000, |_| 1_000));
    }

    proptest! {
        #[test]
        fn the_share_is_monotone_bounded_and_never_zero(
            window in 1u64..10_000_000,
            returned_at in 1u64..u64::MAX / 2,
            a in any::<u64>(),
            b in any::<u64>(),
            weight in 1u32..=256,
        ) {
            let (early, late) = (a.min(b), a.max(b));
            let (s1, s2) = (
                slow_start_share(early, returned_at, window),
                slow_start_share(late, returned_at, window),
            );
            prop_assert!(s1 <= s2);
            prop_assert!((MIN_SLOW_START_SHARE..=WEIGHT_SCALE).contains(&s1));
            prop_assert!((MIN_SLOW_START_SHARE..=WEIGHT_SCALE).contains(&s2));
            let state = BackendState::new();
            state.set_healthy_at(false, returned_at - 1);
            state.set_healthy_at(true, returned_at);
            let (w1, w2) = (
                effective_weight(weight, &state, window, early),
                effective_weight(weight, &state, window, late),
            );
            prop_assert!(0 < w1 && w1 <= w2 && w2 <= full_weight(weight));
            prop_assert_eq!(w2, weight * s2);
        }
    }
}
