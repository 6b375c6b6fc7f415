//! Per-thread state: escalation counters, flags, a short per-turn history for forks, and a ring
//! of recent verdicts for idempotent replay.
//!
//! Compact and fixed-size on purpose (no heap): a million idle threads must stay cheap. Holds no
//! message text, ever; the state file is a dump of this type.

use serde::{Deserialize, Serialize};

use super::{Summary, Verdict};
use crate::domain::CrisisKind;

/// How many recent event ids are remembered for idempotent replay.
pub const RECENT_EVENTS: usize = 4;
/// How many recent turns can be forked from.
pub const HISTORY_TURNS: usize = 16;

/// Bit flags of a thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Flags(pub u16);

impl Flags {
    /// The thread is locked.
    pub const ENDED: u16 = 1 << 0;
    /// The user has been warned in the current escalation.
    pub const WARNED: u16 = 1 << 1;
    /// The warning was issued on the latest user turn (so that turn is not yet persistence).
    pub const WARNED_THIS_TURN: u16 = 1 << 2;
    /// The current escalation includes a severe-tier turn (the shorter quota applies).
    pub const SEVERE: u16 = 1 << 3;
    /// The latest user turn was counted as harmful (a refusal of it is not counted again).
    pub const LAST_HARMFUL: u16 = 1 << 4;
    /// The user asked to end; the next user message may confirm.
    pub const END_PENDING: u16 = 1 << 5;
    /// The latest user message answered a pending end request.
    pub const CONFIRM_WINDOW: u16 = 1 << 6;
    /// Crisis: self-harm signal seen on the thread. Sticky.
    pub const CRISIS_SELF: u16 = 1 << 7;
    /// Crisis: harm-to-others signal seen on the thread. Sticky.
    pub const CRISIS_OTHERS: u16 = 1 << 8;

    /// True if every bit of `bits` is set.
    pub fn has(self, bits: u16) -> bool {
        self.0 & bits == bits
    }

    /// Sets `bits`.
    pub fn set(&mut self, bits: u16) {
        self.0 |= bits;
    }

    /// Clears `bits`.
    pub fn clear(&mut self, bits: u16) {
        self.0 &= !bits;
    }
}

/// Escalation counters of the current episode; reset by decay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Escalation {
    /// END-eligible harmful user turns, plus counted assistant refusals.
    pub strikes: u8,
    /// Redirection attempts.
    pub redirects: u8,
    /// Benign user turns in a row.
    pub benign_streak: u8,
}

/// The state of a thread as of the end of one turn, kept for forks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Snapshot {
    pub turn: u32,
    pub esc: Escalation,
    pub flags: Flags,
}

/// Why a fork could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForkError {
    #[error("after_turn {after} is beyond the parent's latest turn {latest}")]
    FutureTurn { after: u32, latest: u32 },
    #[error(
        "after_turn {after} is older than the parent's retained history (oldest retained turn: {oldest})"
    )]
    TooOld { after: u32, oldest: u32 },
}

/// Everything the policy keeps about one thread.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ThreadState {
    /// User turns seen.
    pub turn: u32,
    pub esc: Escalation,
    pub flags: Flags,
    /// Seconds since the store's epoch at the latest event (for idle TTL and LRU eviction).
    pub last_active: u32,
    history: [Snapshot; HISTORY_TURNS],
    #[serde(skip)]
    recent: [(u64, Verdict); RECENT_EVENTS],
    #[serde(skip)]
    recent_next: u8,
}

// The replay ring is not persisted: a restart forgets recent event ids, never ENDs.
impl Eq for ThreadState {}

impl ThreadState {
    /// The summary exposed to callers.
    pub fn summary(&self) -> Summary {
        Summary {
            turn: self.turn,
            harmful_turns: self.esc.strikes,
            redirects: self.esc.redirects,
            warned: self.flags.has(Flags::WARNED),
            ended: self.flags.has(Flags::ENDED),
            crisis_active: self.crisis_kind().is_some(),
        }
    }

    /// True once the thread is locked.
    pub fn ended(&self) -> bool {
        self.flags.has(Flags::ENDED)
    }

    /// The thread's sticky crisis, if any (self-harm takes precedence).
    pub fn crisis_kind(&self) -> Option<CrisisKind> {
        if self.flags.has(Flags::CRISIS_SELF) {
            Some(CrisisKind::SelfHarm)
        } else if self.flags.has(Flags::CRISIS_OTHERS) {
            Some(CrisisKind::HarmToOthers)
        } else {
            None
        }
    }

    /// True if this event id was decided recently on the thread.
    pub fn has_event(&self, id: u64) -> bool {
        self.recall(id).is_some()
    }

    /// The stored verdict of a recently seen event id.
    pub(super) fn recall(&self, id: u64) -> Option<Verdict> {
        self.recent.iter().find(|(k, _)| *k == id && id != 0).map(|(_, v)| *v)
    }

    pub(super) fn remember(&mut self, id: u64, verdict: Verdict) {
        let slot = self.recent_next as usize % RECENT_EVENTS;
        self.recent[slot] = (id, verdict);
        self.recent_next = ((slot + 1) % RECENT_EVENTS) as u8;
    }

    /// Records the state as of the current turn, for later forks.
    pub(super) fn checkpoint(&mut self) {
        self.history[self.turn as usize % HISTORY_TURNS] = Snapshot {
            turn: self.turn,
            esc: self.esc,
            flags: self.flags,
        };
    }

    /// A new branch from this thread's state as of `after_turn`, unended, inheriting crisis.
    pub fn fork(&self, after_turn: u32) -> Result<ThreadState, ForkError> {
        if after_turn > self.turn {
            return Err(ForkError::FutureTurn {
                after: after_turn,
                latest: self.turn,
            });
        }
        let base = if after_turn == 0 {
            Snapshot::default()
        } else {
            let slot = self.history[after_turn as usize % HISTORY_TURNS];
            if slot.turn != after_turn {
                return Err(ForkError::TooOld {
                    after: after_turn,
                    oldest: self.turn.saturating_sub(HISTORY_TURNS as u32 - 1).max(1),
                });
            }
            slot
        };
        let mut flags = base.flags;
        flags.clear(
            Flags::ENDED | Flags::END_PENDING | Flags::CONFIRM_WINDOW | Flags::WARNED_THIS_TURN,
        );
        // Crisis is inherited from the parent as it is now, whatever the fork point.
        flags.set(self.flags.0 & (Flags::CRISIS_SELF | Flags::CRISIS_OTHERS));
        let mut branch = ThreadState {
            turn: after_turn,
            esc: base.esc,
            flags,
            last_active: self.last_active,
            ..ThreadState::default()
        };
        for snap in self.history.iter().filter(|s| s.turn <= after_turn && s.turn > 0) {
            branch.history[snap.turn as usize % HISTORY_TURNS] = *snap;
        }
        Ok(branch)
    }
}
