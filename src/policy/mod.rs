//! The decision: a pure function from (policy, thread state, event, scores, now) to a verdict.
//!
//! Owns the rules of DESIGN §3: severity tiers, escalation to a warning and then END, decay,
//! the crisis exemption, user- and model-requested ends, assistant-output checks, the
//! ALREADY_ENDED lock, forks, idempotent replay and the rollout gate.
//!
//! Must not: await, read a clock (the time is passed in), do I/O, or know about tonic. The
//! caller classifies the text first (outside any lock) and hands in the merged `Scores`.

mod config;
mod state;
#[cfg(test)]
mod tests;

pub use config::{Messages, Mode, Policy, PolicyError, Tier};
pub use state::{
    Flags, ForkError, HISTORY_TURNS, MODEL_SLOTS, RECENT_EVENTS, ThreadState, ThreadStateV2,
};

use crate::domain::{Category, CrisisKind, Scores};

/// What the chat server must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Action {
    #[default]
    Continue,
    Redirect,
    End,
}

/// Why the verdict is what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Reason {
    #[default]
    Benign,
    HarmfulRequest,
    Abuse,
    Crisis,
    PersistentHarm,
    PersistentAbuse,
    UserRequested,
    ModelRequested,
    AlreadyEnded,
    AssistantOutput,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: [Action; 3] = [Action::Continue, Action::Redirect, Action::End];

    /// The stable lowercase name used in logs, metrics and replay output.
    pub fn name(self) -> &'static str {
        match self {
            Action::Continue => "continue",
            Action::Redirect => "redirect",
            Action::End => "end",
        }
    }
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 10] = [
        Reason::Benign,
        Reason::HarmfulRequest,
        Reason::Abuse,
        Reason::Crisis,
        Reason::PersistentHarm,
        Reason::PersistentAbuse,
        Reason::UserRequested,
        Reason::ModelRequested,
        Reason::AlreadyEnded,
        Reason::AssistantOutput,
    ];

    /// The stable snake_case name used in logs, metrics and replay output.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Benign => "benign",
            Reason::HarmfulRequest => "harmful_request",
            Reason::Abuse => "abuse",
            Reason::Crisis => "crisis",
            Reason::PersistentHarm => "persistent_harm",
            Reason::PersistentAbuse => "persistent_abuse",
            Reason::UserRequested => "user_requested",
            Reason::ModelRequested => "model_requested",
            Reason::AlreadyEnded => "already_ended",
            Reason::AssistantOutput => "assistant_output",
        }
    }
}

/// Why a model-requested (or user-confirmed) end was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Denial {
    /// The thread is in crisis: nothing ends it.
    CrisisActive,
    /// No warning has been given on this thread.
    NotWarned,
    /// The warning was given but the user has not persisted since.
    NotPersisted,
    /// The user asked to end but has not confirmed yet.
    ConfirmationPending,
    /// A crisis score above the suspect threshold was seen on the thread: nothing ends it.
    CrisisSuspected,
}

impl Denial {
    /// Every denial, in declaration order.
    pub const ALL: [Denial; 5] = [
        Denial::CrisisActive,
        Denial::NotWarned,
        Denial::NotPersisted,
        Denial::ConfirmationPending,
        Denial::CrisisSuspected,
    ];

    /// The stable snake_case name used in metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Denial::CrisisActive => "crisis_active",
            Denial::NotWarned => "not_warned",
            Denial::NotPersisted => "not_persisted",
            Denial::ConfirmationPending => "confirmation_pending",
            Denial::CrisisSuspected => "crisis_suspected",
        }
    }

    /// The stable code sent in `Verdict.end_denied_detail`.
    pub fn code(self) -> &'static str {
        match self {
            Denial::CrisisActive => "CRISIS_ACTIVE",
            Denial::NotWarned => "NOT_WARNED",
            Denial::NotPersisted => "NOT_PERSISTED",
            Denial::ConfirmationPending => "CONFIRMATION_PENDING",
            Denial::CrisisSuspected => "CRISIS_SUSPECTED",
        }
    }
}

/// The state summary exposed to callers. Holds no text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Summary {
    pub turn: u32,
    pub harmful_turns: u8,
    pub redirects: u8,
    pub warned: bool,
    pub ended: bool,
    pub crisis_active: bool,
    /// Crisis active, or a crisis score above the suspect threshold seen: never ended by
    /// escalation or by the model.
    pub crisis_suspected: bool,
    /// Harmful and abusive user turns the assistant was exposed to on the thread; never reset.
    pub exposures: u16,
}

/// The decision for one event, before `api` adds text (guidance, notices, resources).
///
/// Small and `Copy`. The idempotency ring keeps its decision (everything but the summary and
/// `truncated`), so a replay returns the same decision with the thread's current summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Verdict {
    pub action: Action,
    pub reason: Reason,
    /// What enforcement would have done; equals `action` when `enforced`.
    pub shadow_action: Action,
    pub enforced: bool,
    /// The redirect that completes the quota: the model must say that continuing may end the chat.
    pub warning: bool,
    pub end_confirmation_required: bool,
    pub end_denied: Option<Denial>,
    /// Crisis support to attach, and of which kind.
    pub crisis: Option<CrisisKind>,
    /// The category that drove a REDIRECT or END, if any.
    pub category: Option<Category>,
    pub summary: Summary,
    pub truncated: bool,
    /// Set only on the copy returned for a replayed event id.
    pub replayed: bool,
}

/// What happened on the thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A user message; its text was classified into the scores.
    User,
    /// An assistant reply; its text was classified into the scores.
    Assistant { refused: bool, end_requested: bool },
    /// The first event of a branch created by `ThreadState::fork`.
    Fork,
    /// The user pressed "yes, end this chat".
    ConfirmEnd,
}

/// One event, reduced to what the decision needs.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    /// A hash of the event id (never 0), for idempotent replay.
    pub id: u64,
    /// The model serving the thread, for per-model enablement.
    pub model: &'a str,
    /// A stable hash of the thread key, for percentage rollout.
    pub rollout_hash: u64,
    pub kind: EventKind,
}

/// How the policy applies to one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    Enforce,
    Shadow,
    Off,
}

/// Decides one event and updates the thread's state.
///
/// A replayed event id returns the stored verdict and changes nothing. An ended thread answers
/// `END`/`ALREADY_ENDED` and changes nothing.
pub fn decide(
    policy: &Policy,
    state: &mut ThreadState,
    event: &Event<'_>,
    scores: &Scores,
    now: u32,
) -> Verdict {
    if let Some(mut verdict) = state.recall(event.id) {
        verdict.replayed = true;
        verdict.truncated = scores.truncated;
        return verdict;
    }
    state.last_active = now;
    if state.flags.has(Flags::ENDED) {
        let verdict = Verdict {
            action: Action::End,
            reason: Reason::AlreadyEnded,
            shadow_action: Action::End,
            enforced: true,
            summary: state.summary(),
            ..Verdict::default()
        };
        return gate(policy, event, scores, verdict);
    }
    let mut verdict = match event.kind {
        EventKind::User => user_turn(policy, state, scores),
        EventKind::Assistant {
            refused,
            end_requested,
        } => assistant_turn(policy, state, scores, refused, end_requested),
        EventKind::Fork => Verdict {
            reason: if state.crisis_kind().is_some() {
                Reason::Crisis
            } else {
                Reason::Benign
            },
            ..Verdict::default()
        },
        EventKind::ConfirmEnd => confirm_end(state),
    };
    if verdict.action == Action::End {
        state.flags.set(Flags::ENDED);
    }
    verdict.truncated = scores.truncated;
    verdict.summary = state.summary();
    verdict.shadow_action = verdict.action;
    verdict.enforced = true;
    let verdict = gate(policy, event, scores, verdict);
    state.checkpoint(event.kind == EventKind::User);
    state.remember(event.id, &verdict);
    verdict
}

/// Applies per-model enablement, the rollout percentage and shadow mode.
fn gate(policy: &Policy, event: &Event<'_>, scores: &Scores, mut verdict: Verdict) -> Verdict {
    let gate = if !policy.model_enabled(event.model) || !policy.in_rollout(event.rollout_hash) {
        Gate::Off
    } else if policy.mode == Mode::Shadow {
        Gate::Shadow
    } else {
        Gate::Enforce
    };
    if gate == Gate::Enforce {
        return verdict;
    }
    verdict.enforced = false;
    verdict.shadow_action = verdict.action;
    verdict.action = match (gate, verdict.action, verdict.reason) {
        (Gate::Off, _, _) => Action::Continue,
        // Shadow caps at REDIRECT: a would-be END on a harmful turn is still steered away.
        (_, Action::End, Reason::PersistentHarm | Reason::PersistentAbuse) => Action::Redirect,
        // A thread locked in shadow keeps being judged turn by turn on its own content.
        (_, Action::End, Reason::AlreadyEnded) if harmful(policy, scores).is_some() => {
            Action::Redirect
        }
        (_, Action::End, _) => Action::Continue,
        (_, action, _) => action,
    };
    verdict
}

/// Whether a user turn with `scores` would END this thread for persistent harm or abuse: the
/// thread is warned, not ended, in no crisis and not suspected, and the turn is harmful in a
/// severe or elevated category. (The external tier confirms exactly these ENDs.)
pub fn would_end(policy: &Policy, state: &ThreadState, scores: &Scores) -> bool {
    end_armed(state)
        && matches!(
            harmful(policy, scores),
            Some((_, Tier::Severe | Tier::Elevated))
        )
}

/// Whether the thread is one step from an END: the next severe or elevated harmful user turn
/// ENDs it.
pub fn end_armed(state: &ThreadState) -> bool {
    state.flags.has(Flags::WARNED)
        && !state.flags.has(Flags::ENDED)
        && state.crisis_kind().is_none()
        && !state.crisis_suspected()
}

/// Whether `scores` flag `category`: at or above its rule's threshold.
pub fn flags(policy: &Policy, scores: &Scores, category: Category) -> bool {
    scores.get(category) >= policy.category(category).threshold
}

/// The most severe category over its threshold, with its tier.
fn harmful(policy: &Policy, scores: &Scores) -> Option<(Category, Tier)> {
    Category::ALL
        .into_iter()
        .filter_map(|c| {
            let rule = policy.category(c);
            (scores.get(c) >= rule.threshold).then_some((c, rule.tier, scores.get(c)))
        })
        // Severe before elevated before crisis before redirect-only; then the higher score.
        .max_by(|a, b| a.1.rank().cmp(&b.1.rank()).then(a.2.total_cmp(&b.2)))
        .map(|(c, t, _)| (c, t))
}

/// The crisis signal carried by this message, if any.
fn crisis_signal(policy: &Policy, scores: &Scores) -> Option<CrisisKind> {
    let t = &policy.thresholds;
    let method = policy.category(Category::SelfHarm);
    if scores.crisis_self >= t.crisis
        || (method.tier == Tier::Crisis && scores.get(Category::SelfHarm) >= method.threshold)
    {
        Some(CrisisKind::SelfHarm)
    } else if scores.crisis_others >= t.crisis {
        Some(CrisisKind::HarmToOthers)
    } else if scores.crisis_third_party >= t.third_party {
        Some(CrisisKind::ThirdParty)
    } else {
        None
    }
}

fn user_turn(policy: &Policy, state: &mut ThreadState, scores: &Scores) -> Verdict {
    state.turn = state.turn.saturating_add(1);
    let flags = &mut state.flags;
    let pending = flags.has(Flags::END_PENDING);
    flags.clear(
        Flags::END_PENDING
            | Flags::WARNED_THIS_TURN
            | Flags::CONFIRM_WINDOW
            | Flags::EXPOSED_THIS_TURN,
    );
    if pending {
        flags.set(Flags::CONFIRM_WINDOW);
    }

    let signal = crisis_signal(policy, scores);
    match signal {
        Some(CrisisKind::SelfHarm) => flags.set(Flags::CRISIS_SELF),
        Some(CrisisKind::HarmToOthers) => flags.set(Flags::CRISIS_OTHERS),
        Some(CrisisKind::ThirdParty) | None => {}
    }
    let t = &policy.thresholds;
    if scores.crisis_self.max(scores.crisis_others) >= t.crisis_suspect {
        flags.set(Flags::CRISIS_SUSPECTED);
    }
    let in_crisis = state.crisis_kind().is_some();
    let suspected = state.crisis_suspected();
    let support = signal.or(state.crisis_kind());
    let harm = harmful(policy, scores);

    let mut verdict = Verdict {
        crisis: signal,
        ..Verdict::default()
    };
    let esc = &mut state.esc;
    let flags = &mut state.flags;

    if pending && harm.is_none() && scores.affirmation >= t.affirmation {
        if in_crisis {
            verdict.reason = Reason::Crisis;
            verdict.end_denied = Some(Denial::CrisisActive);
            verdict.crisis = support;
        } else if suspected {
            verdict.reason = Reason::UserRequested;
            verdict.end_denied = Some(Denial::CrisisSuspected);
        } else {
            verdict.action = Action::End;
            verdict.reason = Reason::UserRequested;
        }
        return verdict;
    }

    let Some((category, tier)) = harm else {
        flags.clear(Flags::LAST_HARMFUL);
        esc.benign_streak = esc.benign_streak.saturating_add(1);
        if esc.benign_streak >= policy.escalation.decay_benign_turns {
            esc.strikes = 0;
            esc.redirects = 0;
            flags.clear(Flags::WARNED | Flags::SEVERE);
        }
        if scores.end_request >= t.end_request {
            if in_crisis {
                verdict.reason = Reason::Crisis;
                verdict.end_denied = Some(Denial::CrisisActive);
                verdict.crisis = support;
            } else if suspected {
                // An END must be certain that nobody is at risk: not even the user's own.
                verdict.reason = Reason::UserRequested;
                verdict.end_denied = Some(Denial::CrisisSuspected);
            } else {
                verdict.reason = Reason::UserRequested;
                verdict.end_confirmation_required = true;
                flags.set(Flags::END_PENDING);
            }
        } else if signal.is_some() {
            verdict.reason = Reason::Crisis;
        }
        return verdict;
    };

    esc.benign_streak = 0;
    esc.redirects = esc.redirects.saturating_add(1);
    flags.set(Flags::LAST_HARMFUL | Flags::EXPOSED_THIS_TURN);
    // Every harmful turn exposes the assistant, whatever its tier or the crisis state.
    state.exposures = state.exposures.saturating_add(1);
    verdict.action = Action::Redirect;
    verdict.category = Some(category);
    let base_reason = if category == Category::Abuse {
        Reason::Abuse
    } else {
        Reason::HarmfulRequest
    };
    match tier {
        Tier::RedirectOnly => {
            verdict.reason = base_reason;
            verdict.crisis = signal;
        }
        Tier::Crisis => {
            verdict.reason = Reason::Crisis;
            verdict.crisis = support;
        }
        Tier::Severe | Tier::Elevated => {
            if tier == Tier::Severe {
                flags.set(Flags::SEVERE);
            }
            if in_crisis {
                // Counted, but never warned or ended: the warning would be a false threat.
                esc.strikes = esc.strikes.saturating_add(1);
                verdict.reason = Reason::Crisis;
                verdict.crisis = support;
            } else if suspected {
                // The same, without resources: an END must be certain that nobody is at risk.
                esc.strikes = esc.strikes.saturating_add(1);
                verdict.reason = base_reason;
            } else if flags.has(Flags::WARNED) && scores.end_vetoed {
                // The external tier, asked to confirm this END, disagreed: steer away, count it.
                esc.strikes = esc.strikes.saturating_add(1);
                verdict.reason = base_reason;
            } else if flags.has(Flags::WARNED) {
                esc.strikes = esc.strikes.saturating_add(1);
                verdict.action = Action::End;
                verdict.reason = if category == Category::Abuse {
                    Reason::PersistentAbuse
                } else {
                    Reason::PersistentHarm
                };
            } else {
                esc.strikes = esc.strikes.saturating_add(1);
                let quota = if flags.has(Flags::SEVERE) {
                    policy.escalation.severe_warning_turn
                } else {
                    policy.escalation.warning_turn
                };
                if esc.strikes >= quota {
                    verdict.warning = true;
                    flags.set(Flags::WARNED | Flags::WARNED_THIS_TURN);
                }
                verdict.reason = base_reason;
            }
        }
    }
    verdict
}

fn assistant_turn(
    policy: &Policy,
    state: &mut ThreadState,
    scores: &Scores,
    refused: bool,
    end_requested: bool,
) -> Verdict {
    let mut verdict = Verdict::default();
    if refused && !state.flags.has(Flags::LAST_HARMFUL) {
        // The model refused a turn our classifier passed: one more redirection attempt. It never
        // warns or ends by itself; the next harmful user turn does, after the warning.
        state.esc.strikes = state.esc.strikes.saturating_add(1);
        state.esc.redirects = state.esc.redirects.saturating_add(1);
        state.esc.benign_streak = 0;
        state.flags.set(Flags::LAST_HARMFUL);
        verdict.reason = Reason::HarmfulRequest;
    }
    if end_requested {
        let flags = state.flags;
        let denial = if state.crisis_kind().is_some() {
            Some(Denial::CrisisActive)
        } else if state.crisis_suspected() {
            Some(Denial::CrisisSuspected)
        } else if flags.has(Flags::CONFIRM_WINDOW) {
            None
        } else if flags.has(Flags::END_PENDING) {
            Some(Denial::ConfirmationPending)
        } else if !flags.has(Flags::WARNED) {
            Some(Denial::NotWarned)
        } else if flags.has(Flags::WARNED_THIS_TURN) || !(refused || flags.has(Flags::LAST_HARMFUL))
        {
            Some(Denial::NotPersisted)
        } else {
            None
        };
        match denial {
            None => {
                verdict.action = Action::End;
                verdict.reason = Reason::ModelRequested;
                return verdict;
            }
            Some(d) => {
                verdict.end_denied = Some(d);
                verdict.reason = if d == Denial::CrisisActive {
                    verdict.crisis = state.crisis_kind();
                    Reason::Crisis
                } else {
                    Reason::ModelRequested
                };
            }
        }
    }
    let output = &policy.assistant_output;
    let unsafe_output = output
        .categories
        .iter()
        .filter(|c| scores.get(**c) >= output.threshold)
        .max_by(|a, b| scores.get(**a).total_cmp(&scores.get(**b)));
    if let Some(&category) = unsafe_output {
        // Harmful output is the model's fault: it is suppressed, never counted against the user.
        verdict.action = Action::Redirect;
        verdict.reason = Reason::AssistantOutput;
        verdict.category = Some(category);
    }
    verdict
}

fn confirm_end(state: &mut ThreadState) -> Verdict {
    if let Some(kind) = state.crisis_kind() {
        return Verdict {
            reason: Reason::Crisis,
            end_denied: Some(Denial::CrisisActive),
            crisis: Some(kind),
            ..Verdict::default()
        };
    }
    if state.crisis_suspected() {
        return Verdict {
            reason: Reason::UserRequested,
            end_denied: Some(Denial::CrisisSuspected),
            ..Verdict::default()
        };
    }
    Verdict {
        action: Action::End,
        reason: Reason::UserRequested,
        ..Verdict::default()
    }
}
