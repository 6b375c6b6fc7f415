//! Per-thread state: escalation counters, flags, a short per-turn history for forks, and a ring
//! of recent decisions for idempotent replay.
//!
//! Compact and fixed-size on purpose (72 bytes, no heap): a million idle threads must fit in a
//! couple of hundred megabytes. Fork snapshots are 3 packed bytes per turn; replay entries are one
//! `u64` each (a 44-bit event-id hash and a 20-bit decision); the two ring positions share a
//! byte, and the welfare model slot lives in the flags' top bits, which is what made room for
//! the exposure count. Holds no message text, ever; the state file is a dump of this type,
//! replay ring included, so retries are recognised across a restart too.

use serde::{Deserialize, Serialize};

use super::{Action, Denial, Reason, Summary, Verdict};
use crate::domain::{Category, CrisisKind};

/// How many recent event ids are remembered for idempotent replay.
pub const RECENT_EVENTS: usize = 4;
/// How many recent turns can be forked from.
pub const HISTORY_TURNS: usize = 8;
/// Counters saturate here inside fork snapshots (quotas are validated to stay below it).
pub const SNAPSHOT_MAX: u8 = 63;

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
    /// A crisis score above the suspect threshold was seen: nothing ends the thread any more.
    /// Sticky.
    pub const CRISIS_SUSPECTED: u16 = 1 << 9;
    /// The latest user turn was harmful or abusive: one more exposure of the assistant. Kept in
    /// fork snapshots, so that a branch's exposure count leaves out the turns it drops.
    pub const EXPOSED_THIS_TURN: u16 = 1 << 10;
    /// Bits 11..=15 are not flags: they hold the thread's welfare model slot
    /// (`ThreadState::model_slot`).
    const MODEL_SHIFT: u32 = 11;
    const MODEL_BITS: u16 = 0b1_1111 << Self::MODEL_SHIFT;

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

/// Model slots a thread can name (`ThreadState::model_slot`): 0 is `other`.
pub const MODEL_SLOTS: usize = 32;

/// The flags a fork snapshot keeps (the rest are cleared or taken from the parent).
const SNAPSHOT_FLAGS: [u16; 4] = [
    Flags::WARNED,
    Flags::SEVERE,
    Flags::LAST_HARMFUL,
    Flags::EXPOSED_THIS_TURN,
];

fn pack_snapshot(esc: Escalation, flags: Flags) -> [u8; 3] {
    let c = |v: u8| u32::from(v.min(SNAPSHOT_MAX));
    let mut bits = c(esc.strikes) | c(esc.redirects) << 6 | c(esc.benign_streak) << 12;
    for (i, f) in SNAPSHOT_FLAGS.iter().enumerate() {
        if flags.has(*f) {
            bits |= 1 << (18 + i);
        }
    }
    let b = bits.to_le_bytes();
    [b[0], b[1], b[2]]
}

fn unpack_snapshot(s: [u8; 3]) -> (Escalation, Flags) {
    let bits = u32::from_le_bytes([s[0], s[1], s[2], 0]);
    let esc = Escalation {
        strikes: (bits & 63) as u8,
        redirects: (bits >> 6 & 63) as u8,
        benign_streak: (bits >> 12 & 63) as u8,
    };
    let mut flags = Flags::default();
    for (i, f) in SNAPSHOT_FLAGS.iter().enumerate() {
        if bits >> (18 + i) & 1 == 1 {
            flags.set(*f);
        }
    }
    (esc, flags)
}

const ACTIONS: [Action; 3] = Action::ALL;
const REASONS: [Reason; 10] = Reason::ALL;
const DENIALS: [Denial; 5] = Denial::ALL;
const CRISES: [CrisisKind; 3] = CrisisKind::ALL;

fn index_of<T: PartialEq>(all: &[T], v: &T) -> u64 {
    all.iter().position(|x| x == v).unwrap_or(0) as u64
}

fn option_index<T: PartialEq>(all: &[T], v: &Option<T>) -> u64 {
    v.as_ref().map(|v| index_of(all, v) + 1).unwrap_or(0)
}

/// Bits of a decision in a replay entry (the low bits; the event hash takes the rest).
const DECISION_BITS: u32 = 20;

/// Packs the decision of a verdict: action 2, shadow 2, reason 4, enforced, warning, end
/// confirmation, denial 3, crisis 2, category 4 = 20 bits.
fn pack_decision(v: &Verdict) -> u64 {
    index_of(&ACTIONS, &v.action)
        | index_of(&ACTIONS, &v.shadow_action) << 2
        | index_of(&REASONS, &v.reason) << 4
        | u64::from(v.enforced) << 8
        | u64::from(v.warning) << 9
        | u64::from(v.end_confirmation_required) << 10
        | option_index(&DENIALS, &v.end_denied) << 11
        | option_index(&CRISES, &v.crisis) << 14
        | option_index(&Category::ALL, &v.category) << 16
}

fn unpack_decision(bits: u64, summary: Summary) -> Verdict {
    let get = |shift: u32, width: u32| ((bits >> shift) & ((1 << width) - 1)) as usize;
    let opt = |shift, width, len: usize| match get(shift, width) {
        0 => None,
        i if i <= len => Some(i - 1),
        _ => None,
    };
    Verdict {
        action: ACTIONS[get(0, 2).min(2)],
        shadow_action: ACTIONS[get(2, 2).min(2)],
        reason: REASONS[get(4, 4).min(9)],
        enforced: get(8, 1) == 1,
        warning: get(9, 1) == 1,
        end_confirmation_required: get(10, 1) == 1,
        end_denied: opt(11, 3, DENIALS.len()).map(|i| DENIALS[i]),
        crisis: opt(14, 2, CRISES.len()).map(|i| CRISES[i]),
        category: opt(16, 4, Category::ALL.len()).map(|i| Category::ALL[i]),
        summary,
        truncated: false,
        replayed: false,
    }
}

fn hash_bits(id: u64) -> u64 {
    // A bijective mix first, so that ids differing only in low bits still differ in the high
    // bits kept here; a zero word marks an empty slot.
    let mixed = id.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    (mixed >> DECISION_BITS << DECISION_BITS).max(1 << DECISION_BITS)
}

/// Everything the policy keeps about one thread.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadState {
    /// User turns seen.
    pub turn: u32,
    /// Seconds since the store's epoch at the latest event (for idle TTL and LRU eviction).
    pub last_active: u32,
    pub flags: Flags,
    pub esc: Escalation,
    /// Harmful and abusive user turns on the thread (and on its parent up to the fork point):
    /// what the assistant was exposed to. Never reset by decay; saturates.
    pub exposures: u16,
    /// Low 4 bits: how many consecutive turns ending at `turn` have a fork snapshot. Bits 4-5:
    /// the next replay slot.
    cursor: u8,
    /// Fork snapshots, indexed by turn modulo `HISTORY_TURNS`.
    history: [[u8; 3]; HISTORY_TURNS],
    /// Replay entries: event-id hash (high 44 bits) and packed decision (low 20 bits).
    recent: [u64; RECENT_EVENTS],
}

impl ThreadState {
    fn history_len(&self) -> u8 {
        self.cursor & 0x0f
    }

    fn set_history_len(&mut self, len: u8) {
        self.cursor = (self.cursor & !0x0f) | (len & 0x0f);
    }

    fn recent_next(&self) -> u8 {
        self.cursor >> 4 & 0x03
    }

    fn set_recent_next(&mut self, next: u8) {
        self.cursor = (self.cursor & 0x0f) | (next & 0x03) << 4;
    }

    /// The thread's welfare model slot: which model label its welfare figures go to when the
    /// store forgets it (0: `other`). The slot numbers are the metrics registry's.
    pub fn model_slot(&self) -> u8 {
        ((self.flags.0 & Flags::MODEL_BITS) >> Flags::MODEL_SHIFT) as u8
    }

    /// Sets the welfare model slot (`slot` below [`MODEL_SLOTS`]; larger ones become 0).
    pub fn set_model_slot(&mut self, slot: u8) {
        let slot = if usize::from(slot) < MODEL_SLOTS {
            u16::from(slot)
        } else {
            0
        };
        self.flags.0 = (self.flags.0 & !Flags::MODEL_BITS) | slot << Flags::MODEL_SHIFT;
    }

    /// The summary exposed to callers.
    pub fn summary(&self) -> Summary {
        Summary {
            exposures: self.exposures,
            turn: self.turn,
            harmful_turns: self.esc.strikes,
            redirects: self.esc.redirects,
            warned: self.flags.has(Flags::WARNED),
            ended: self.flags.has(Flags::ENDED),
            crisis_active: self.crisis_kind().is_some(),
            crisis_suspected: self.crisis_suspected(),
        }
    }

    /// True once a crisis score above the suspect threshold was seen (or a crisis signal):
    /// nothing ends the thread any more.
    pub fn crisis_suspected(&self) -> bool {
        self.flags.0 & (Flags::CRISIS_SUSPECTED | Flags::CRISIS_SELF | Flags::CRISIS_OTHERS) != 0
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

    /// Takes on `other`'s locks (END and the crisis flags), which are sticky: what the shared
    /// backend writes back after an outage, so that no replica's lock is lost. Returns true if
    /// anything changed.
    pub fn absorb_locks(&mut self, other: &ThreadState) -> bool {
        const LOCKS: u16 =
            Flags::ENDED | Flags::CRISIS_SELF | Flags::CRISIS_OTHERS | Flags::CRISIS_SUSPECTED;
        let before = self.flags;
        self.flags.set(other.flags.0 & LOCKS);
        self.flags != before
    }

    /// True if this event id was decided recently on the thread.
    pub fn has_event(&self, id: u64) -> bool {
        self.recall(id).is_some()
    }

    /// The decision of a recently seen event id, reported with the thread's current summary.
    pub(super) fn recall(&self, id: u64) -> Option<Verdict> {
        let key = hash_bits(id);
        self.recent
            .iter()
            .find(|w| **w != 0 && **w >> DECISION_BITS << DECISION_BITS == key)
            .map(|w| unpack_decision(w & ((1 << DECISION_BITS) - 1), self.summary()))
    }

    pub(super) fn remember(&mut self, id: u64, verdict: &Verdict) {
        let slot = self.recent_next() as usize % RECENT_EVENTS;
        self.recent[slot] = hash_bits(id) | pack_decision(verdict);
        self.set_recent_next(((slot + 1) % RECENT_EVENTS) as u8);
    }

    /// Records the state as of the current turn, for later forks; `new_turn` after a user turn.
    pub(super) fn checkpoint(&mut self, new_turn: bool) {
        self.history[self.turn as usize % HISTORY_TURNS] = pack_snapshot(self.esc, self.flags);
        if new_turn || self.history_len() == 0 {
            self.set_history_len((self.history_len() + 1).min(HISTORY_TURNS as u8));
        }
    }

    /// The oldest turn a fork can start from (0 is always possible).
    fn oldest_forkable(&self) -> u32 {
        (self.turn + 1)
            .saturating_sub(u32::from(self.history_len()))
            .max(1)
    }

    /// A new branch from this thread's state as of `after_turn`, unended, inheriting crisis
    /// and crisis suspicion, the model slot, and the exposures of the turns it keeps.
    pub fn fork(&self, after_turn: u32) -> Result<ThreadState, ForkError> {
        if after_turn > self.turn {
            return Err(ForkError::FutureTurn {
                after: after_turn,
                latest: self.turn,
            });
        }
        let mut branch = ThreadState {
            turn: after_turn,
            last_active: self.last_active,
            ..ThreadState::default()
        };
        if after_turn > 0 {
            let retained = u32::from(self.history_len());
            if self.turn - after_turn >= retained {
                return Err(ForkError::TooOld {
                    after: after_turn,
                    oldest: self.oldest_forkable(),
                });
            }
            let (esc, flags) = unpack_snapshot(self.history[after_turn as usize % HISTORY_TURNS]);
            branch.esc = esc;
            branch.flags = flags;
            // The snapshots of turns up to `after_turn` carry over; the slots are the same.
            branch.history = self.history;
            branch.set_history_len((retained - (self.turn - after_turn)) as u8);
            // The turns after the fork point are all retained (checked above): drop theirs.
            let dropped = (after_turn + 1..=self.turn)
                .filter(|t| {
                    let (_, f) = unpack_snapshot(self.history[*t as usize % HISTORY_TURNS]);
                    f.has(Flags::EXPOSED_THIS_TURN)
                })
                .count() as u16;
            branch.exposures = self.exposures.saturating_sub(dropped);
        }
        branch.set_model_slot(self.model_slot());
        // Crisis is inherited from the parent as it is now, whatever the fork point.
        branch.flags.set(
            self.flags.0 & (Flags::CRISIS_SELF | Flags::CRISIS_OTHERS | Flags::CRISIS_SUSPECTED),
        );
        Ok(branch)
    }
}

/// `ThreadState` as state files of format 2 (`TWSNAP02`) hold it, before the exposure count.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ThreadStateV2 {
    pub turn: u32,
    pub last_active: u32,
    pub flags: Flags,
    pub esc: Escalation,
    pub history_len: u8,
    pub recent_next: u8,
    pub history: [[u8; 3]; HISTORY_TURNS],
    pub recent: [u64; RECENT_EVENTS],
}

impl From<ThreadStateV2> for ThreadState {
    /// Exposures start at 0: a format-2 file never counted them.
    fn from(v2: ThreadStateV2) -> ThreadState {
        let mut s = ThreadState {
            turn: v2.turn,
            last_active: v2.last_active,
            flags: Flags(v2.flags.0 & (Flags::EXPOSED_THIS_TURN - 1)),
            esc: v2.esc,
            history: v2.history,
            recent: v2.recent,
            ..ThreadState::default()
        };
        s.set_history_len(v2.history_len.min(HISTORY_TURNS as u8));
        s.set_recent_next(v2.recent_next % RECENT_EVENTS as u8);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_state_fits_a_shared_value() {
        let longest = ThreadState {
            turn: u32::MAX,
            last_active: 0,
            flags: Flags(u16::MAX),
            esc: Escalation {
                strikes: u8::MAX,
                redirects: u8::MAX,
                benign_streak: u8::MAX,
            },
            exposures: u16::MAX,
            cursor: u8::MAX,
            history: [[u8::MAX; 3]; HISTORY_TURNS],
            recent: [u64::MAX; RECENT_EVENTS],
        };
        let bytes = postcard::to_allocvec(&longest).unwrap();
        assert!(
            bytes.len() <= crate::state::shared::MAX_STATE_BYTES,
            "{} bytes",
            bytes.len()
        );
    }

    #[test]
    fn cursor_and_model_slot_keep_their_bits() {
        let mut s = ThreadState::default();
        s.flags
            .set(Flags::CRISIS_SUSPECTED | Flags::EXPOSED_THIS_TURN);
        s.set_model_slot(31);
        s.set_history_len(8);
        s.set_recent_next(3);
        assert_eq!(
            (s.model_slot(), s.history_len(), s.recent_next()),
            (31, 8, 3)
        );
        assert!(
            s.flags
                .has(Flags::CRISIS_SUSPECTED | Flags::EXPOSED_THIS_TURN)
        );
        s.set_model_slot(5);
        s.set_history_len(2);
        assert_eq!(
            (s.model_slot(), s.history_len(), s.recent_next()),
            (5, 2, 3)
        );
        s.set_model_slot(32);
        assert_eq!(s.model_slot(), 0, "out of range: other");
        assert!(
            s.flags
                .has(Flags::CRISIS_SUSPECTED | Flags::EXPOSED_THIS_TURN)
        );
    }

    #[test]
    fn thread_state_stays_compact() {
        assert!(
            std::mem::size_of::<ThreadState>() <= 72,
            "{}",
            std::mem::size_of::<ThreadState>()
        );
    }

    #[test]
    fn snapshots_round_trip() {
        let esc = Escalation {
            strikes: 3,
            redirects: 200,
            benign_streak: 5,
        };
        let mut flags = Flags::default();
        flags.set(Flags::WARNED | Flags::LAST_HARMFUL | Flags::ENDED);
        let (e, f) = unpack_snapshot(pack_snapshot(esc, flags));
        assert_eq!(
            e,
            Escalation {
                redirects: SNAPSHOT_MAX,
                ..esc
            }
        );
        assert_eq!(f, Flags(Flags::WARNED | Flags::LAST_HARMFUL));
    }

    #[test]
    fn decisions_round_trip_for_every_value() {
        for action in ACTIONS {
            for reason in REASONS {
                for denial in [
                    None,
                    Some(Denial::ConfirmationPending),
                    Some(Denial::CrisisActive),
                ] {
                    for crisis in [
                        None,
                        Some(CrisisKind::ThirdParty),
                        Some(CrisisKind::SelfHarm),
                    ] {
                        for category in [
                            None,
                            Some(Category::HarmToOthers),
                            Some(Category::ChildSexualExploitation),
                        ] {
                            let v = Verdict {
                                action,
                                shadow_action: Action::End,
                                reason,
                                enforced: true,
                                warning: true,
                                end_confirmation_required: false,
                                end_denied: denial,
                                crisis,
                                category,
                                ..Verdict::default()
                            };
                            let bits = pack_decision(&v);
                            assert!(bits < 1 << DECISION_BITS);
                            assert_eq!(unpack_decision(bits, Summary::default()), v);
                        }
                    }
                }
            }
        }
    }
}
