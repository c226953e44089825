//! HAProxy's agent check: a small program beside each backend, on a side port, that answers
//! one line saying what the backend wants (`up`, `down`, `drain`, `maint`, `ready`, a weight
//! such as `75%`). The agent runs beside the pool's regular check, on its own schedule, as
//! in HAProxy; it is not a `kind`, because a backend that says "drain me" still needs a check
//! that sees it die.
//!
//! This file is the pure part: [`parse_reply`] reads a reply, [`next_admin`] decides what it
//! does to the admin state, [`effective_weight`] what a percentage does to a weight. The
//! probe itself (connect, optional `send`, read one line) is in `health.rs`.
//!
//! File descriptors: none here.

use ballast_dataplane::route::AdminState;

use crate::config::MAX_WEIGHT;

/// Most bytes of a reply read: a line of words, not a transfer.
pub const MAX_REPLY_BYTES: usize = 1024;

/// What an agent asks of the admin state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAdmin {
    /// Take new sessions (ends a drain or maint the agent asked for).
    Ready,
    /// No new sessions; established ones finish.
    Drain,
    /// Out of rotation (Ballast's `disabled`).
    Maint,
}

/// What an agent says of the backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentHealth {
    Up,
    /// `down`, `fail` or `stopped`.
    Down,
}

/// One reply: each part the agent did not mention is `None` and left as it was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentReply {
    pub admin: Option<AgentAdmin>,
    pub health: Option<AgentHealth>,
    /// Of the configured weight (HAProxy: relative to the weight at start-up).
    pub weight_percent: Option<u32>,
    /// The text after `#`, for the log line.
    pub description: Option<String>,
}

/// Why an agent's reply changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentFailure {
    #[error("agent closed without a reply")]
    Empty,
    #[error("agent reply {0:?} names no state and no weight")]
    NothingKnown(String),
    #[error("agent weight {0:?} is not a percentage such as 75%")]
    BadWeight(String),
}

/// Reads one reply: the first line (up to `\n`, or all of it), words separated by spaces,
/// tabs or commas, in any order and any case; the last word of each sort wins, as in
/// HAProxy. Unknown words are skipped (newer HAProxy agents say more than these), but a reply
/// with no known word at all is a failure.
pub fn parse_reply(bytes: &[u8]) -> Result<AgentReply, AgentFailure> {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .split('\n')
        .next()
        .unwrap_or_default()
        .trim_end_matches('\r');
    let (words, description) = match line.split_once('#') {
        Some((words, rest)) => (words, Some(rest.trim().chars().take(200).collect())),
        None => (line, None),
    };
    if words.trim().is_empty() && description.is_none() {
        return Err(AgentFailure::Empty);
    }
    let mut reply = AgentReply {
        description,
        ..AgentReply::default()
    };
    let mut known = false;
    for word in words
        .split([' ', '\t', ','])
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
    {
        let mut skipped = false;
        match word.as_str() {
            "up" => reply.health = Some(AgentHealth::Up),
            "down" | "fail" | "failed" | "stopped" => reply.health = Some(AgentHealth::Down),
            "ready" => reply.admin = Some(AgentAdmin::Ready),
            "drain" => reply.admin = Some(AgentAdmin::Drain),
            "maint" => reply.admin = Some(AgentAdmin::Maint),
            other => match other.strip_suffix('%') {
                Some(number) => match number.parse::<u32>() {
                    Ok(percent) => reply.weight_percent = Some(percent),
                    Err(_) => return Err(AgentFailure::BadWeight(word.chars().take(32).collect())),
                },
                None => skipped = true,
            },
        }
        known |= !skipped;
    }
    if !known {
        return Err(AgentFailure::NothingKnown(words.chars().take(64).collect()));
    }
    Ok(reply)
}

/// The admin state a reply asks for: its own `ready`, `drain` or `maint`; `up` alone also
/// means ready, so that an agent that said `drain` and then `up` is served again (HAProxy
/// keeps the drain until `ready`; an agent that answers its whole state each time is the
/// common case, and the operator's own drain is kept apart by [`next_admin`]).
pub fn wanted_admin(reply: &AgentReply) -> Option<AgentAdmin> {
    reply.admin.or(match reply.health {
        Some(AgentHealth::Up) => Some(AgentAdmin::Ready),
        _ => None,
    })
}

/// The admin state to set when the agent wants `wanted`, the backend is at `current`, and
/// `applied` is what the agent itself set last (`None`: nothing yet). `None`: leave it.
///
/// The agent changes only what is its own: an enabled backend, or a state it set itself. A
/// drain or disable an operator set through the admin API (a `current` the agent did not
/// apply) stays until the operator lifts it.
pub fn next_admin(
    wanted: AgentAdmin,
    current: AdminState,
    applied: Option<AdminState>,
) -> Option<AdminState> {
    let target = match wanted {
        AgentAdmin::Ready => AdminState::Enabled,
        AgentAdmin::Drain => AdminState::Draining,
        AgentAdmin::Maint => AdminState::Disabled,
    };
    let ours = current == AdminState::Enabled || applied == Some(current);
    (ours && target != current).then_some(target)
}

/// The weight pickers get for a backend configured with `configured` when an agent asked for
/// `percent` of it: rounded to the nearest, at least 1 unless `percent` is 0 (no new
/// sessions, as HAProxy's weight 0), at most [`MAX_WEIGHT`].
pub fn effective_weight(configured: u32, percent: u32) -> u32 {
    if percent == 0 {
        return 0;
    }
    let scaled = (u64::from(configured) * u64::from(percent) + 50) / 100;
    u32::try_from(scaled)
        .unwrap_or(u32::MAX)
        .clamp(1, MAX_WEIGHT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> AgentReply {
        parse_reply(text.as_bytes()).unwrap()
    }

    #[test]
    fn words_in_any_order_case_and_separator() {
        let r = reply("UP, 75%\tready\n");
        assert_eq!(r.health, Some(AgentHealth::Up));
        assert_eq!(r.admin, Some(AgentAdmin::Ready));
        assert_eq!(r.weight_percent, Some(75));
        assert_eq!(reply("drain").admin, Some(AgentAdmin::Drain));
        assert_eq!(reply("maint\r\n").admin, Some(AgentAdmin::Maint));
        assert_eq!(reply("50%\n").weight_percent, Some(50));
        assert_eq!(reply("50%\n").health, None);
    }

    #[test]
    fn down_fail_and_stopped_are_down_with_a_description() {
        for word in ["down", "fail", "failed", "stopped"] {
            assert_eq!(reply(word).health, Some(AgentHealth::Down), "{word}");
        }
        let r = reply("down#disk full\n");
        assert_eq!(r.health, Some(AgentHealth::Down));
        assert_eq!(r.description.as_deref(), Some("disk full"));
    }

    #[test]
    fn only_the_first_line_counts_and_the_last_word_wins() {
        let r = reply("drain up\ndown\n");
        assert_eq!(r.health, Some(AgentHealth::Up));
        assert_eq!(r.admin, Some(AgentAdmin::Drain));
        assert_eq!(reply("10% 20%").weight_percent, Some(20));
    }

    #[test]
    fn unknown_words_are_skipped_but_a_reply_needs_one_known() {
        assert_eq!(reply("up someday").health, Some(AgentHealth::Up));
        assert_eq!(parse_reply(b""), Err(AgentFailure::Empty));
        assert_eq!(parse_reply(b"\n"), Err(AgentFailure::Empty));
        assert!(matches!(
            parse_reply(b"hello there\n"),
            Err(AgentFailure::NothingKnown(_))
        ));
        assert!(matches!(
            parse_reply(b"up x%\n"),
            Err(AgentFailure::BadWeight(_))
        ));
        assert!(matches!(
            parse_reply(b"-5%"),
            Err(AgentFailure::BadWeight(_))
        ));
    }

    #[test]
    fn up_alone_means_ready_but_a_named_state_wins() {
        assert_eq!(wanted_admin(&reply("up")), Some(AgentAdmin::Ready));
        assert_eq!(wanted_admin(&reply("up drain")), Some(AgentAdmin::Drain));
        assert_eq!(wanted_admin(&reply("down")), None);
        assert_eq!(wanted_admin(&reply("75%")), None);
    }

    #[test]
    fn the_agent_changes_only_its_own_admin_state() {
        use AdminState::*;
        assert_eq!(next_admin(AgentAdmin::Drain, Enabled, None), Some(Draining));
        assert_eq!(next_admin(AgentAdmin::Maint, Enabled, None), Some(Disabled));
        assert_eq!(
            next_admin(AgentAdmin::Ready, Draining, Some(Draining)),
            Some(Enabled)
        );
        assert_eq!(
            next_admin(AgentAdmin::Maint, Draining, Some(Draining)),
            Some(Disabled)
        );
        assert_eq!(next_admin(AgentAdmin::Ready, Enabled, None), None);
        assert_eq!(
            next_admin(AgentAdmin::Drain, Draining, Some(Draining)),
            None
        );
        // An operator's drain or disable stays.
        assert_eq!(next_admin(AgentAdmin::Ready, Draining, None), None);
        assert_eq!(
            next_admin(AgentAdmin::Ready, Disabled, Some(Draining)),
            None
        );
        assert_eq!(next_admin(AgentAdmin::Drain, Disabled, None), None);
    }

    #[test]
    fn weights_scale_round_and_clamp() {
        assert_eq!(effective_weight(4, 50), 2);
        assert_eq!(effective_weight(3, 50), 2);
        assert_eq!(effective_weight(1, 10), 1);
        assert_eq!(effective_weight(1, 0), 0);
        assert_eq!(effective_weight(10, 100), 10);
        assert_eq!(effective_weight(200, 200), MAX_WEIGHT);
        assert_eq!(effective_weight(MAX_WEIGHT, u32::MAX), MAX_WEIGHT);
    }
}
