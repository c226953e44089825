//! What a `mio::Token` names: the waker, a listening socket, one side of a TCP session, or a
//! UDP flow. Pure: encoding and decoding only, no sockets.
//!
//! A session's slab key is reused as soon as the session closes, possibly within the same
//! batch of events. An event still queued for the old session's socket must not reach the
//! new one (it could make a connect look finished: no retry, no passive failure counted), so
//! a session token also carries a generation, the low bits of the session's serial, and the
//! worker delivers an event only when the generation matches the session in the slot.
//!
//! Layout of a session token, above `SESSION_BASE`: bit 0 the side, bits 1–32 the slab
//! key, bits 33–60 the generation. Every session token stays below `FLOW_BIT` (bit 62).

use mio::Token;

use crate::relay::Side;

pub(crate) const WAKER: Token = Token(0);
/// Tokens with this bit set are UDP flows: (listener slot << 32) | flow id.
pub(super) const FLOW_BIT: usize = 1 << 62;
const LISTENER_BASE: usize = 1;
pub(super) const MAX_LISTENERS: usize = 1 << 16;
const SESSION_BASE: usize = LISTENER_BASE + MAX_LISTENERS;
const KEY_BITS: u32 = 32;
/// Sessions per worker that tokens can tell apart; far above what the fd limit allows.
pub(super) const MAX_SESSIONS: usize = 1 << KEY_BITS;
const GENERATION_BITS: u32 = 28;
const GENERATION_MASK: u64 = (1 << GENERATION_BITS) - 1;

/// What an event's token refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Waker,
    Listener(usize),
    Session {
        key: usize,
        side: Side,
        generation: u64,
    },
    /// A UDP flow: the token without [`FLOW_BIT`].
    Flow(usize),
}

pub(super) fn listener(index: usize) -> Token {
    Token(LISTENER_BASE + index)
}

/// The generation a session with this serial carries in its tokens.
pub(super) fn generation(serial: u64) -> u64 {
    serial & GENERATION_MASK
}

/// The token of one side of the session in slot `key` (below [`MAX_SESSIONS`]).
pub(super) fn session(key: usize, side: Side, serial: u64) -> Token {
    let side = match side {
        Side::Client => 0,
        Side::Backend => 1,
    };
    let generation = usize::try_from(generation(serial)).unwrap_or(0);
    Token(SESSION_BASE + ((generation << (KEY_BITS + 1)) | (key << 1) | side))
}

pub(super) fn decode(token: Token) -> Target {
    let token = token.0;
    if token == WAKER.0 {
        Target::Waker
    } else if token & FLOW_BIT != 0 {
        Target::Flow(token & !FLOW_BIT)
    } else if token < SESSION_BASE {
        Target::Listener(token - LISTENER_BASE)
    } else {
        let value = token - SESSION_BASE;
        Target::Session {
            key: (value >> 1) & (MAX_SESSIONS - 1),
            side: if value & 1 == 0 {
                Side::Client
            } else {
                Side::Backend
            },
            generation: (value >> (KEY_BITS + 1)) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_waker_listeners_and_flows_decode_as_themselves() {
        assert_eq!(decode(WAKER), Target::Waker);
        assert_eq!(decode(listener(0)), Target::Listener(0));
        assert_eq!(
            decode(listener(MAX_LISTENERS - 1)),
            Target::Listener(MAX_LISTENERS - 1)
        );
        assert_eq!(
            decode(Token(FLOW_BIT | (3 << 32) | 7)),
            Target::Flow((3 << 32) | 7)
        );
    }

    #[test]
    fn a_reused_slot_gets_tokens_of_its_own() {
        let old = session(5, Side::Backend, 41);
        let new = session(5, Side::Backend, 42);
        assert_ne!(old, new);
        match decode(old) {
            Target::Session {
                key, generation: g, ..
            } => {
                assert_eq!(key, 5);
                assert_ne!(g, generation(42));
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn session_tokens_round_trip_and_stay_below_the_flow_bit(
            key in 0usize..MAX_SESSIONS,
            backend in any::<bool>(),
            serial in any::<u64>(),
        ) {
            let side = if backend { Side::Backend } else { Side::Client };
            let token = session(key, side, serial);
            prop_assert!(token.0 & FLOW_BIT == 0);
            prop_assert!(token.0 >= SESSION_BASE);
            prop_assert_eq!(
                decode(token),
                Target::Session { key, side, generation: generation(serial) }
            );
        }
    }
}
