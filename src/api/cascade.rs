//! The classifier cascade's two pure decisions (DESIGN §4, tier 3): whether a user message
//! goes to the external tier, and how its answer combines with the built-in tiers' scores.
//!
//! The engine does the asking (`Engine::decide_cascade`); the lab tool (`eval --external`)
//! replays the same two functions over the dev data, so what it measures is what runs.
//!
//! How an answer combines, per category, judged by the policy's thresholds:
//! - where the external model and the built-in tiers agree (both flag it, or neither does),
//!   the built-in score stands: an agreeing answer leaves the thread's state as it would be
//!   with the tier off;
//! - where only the external model flags it, the score is raised to the model's score, and
//!   at least to the category's threshold;
//! - where only the built-in tiers flag it, the score is lowered below the threshold (the
//!   external model is the stronger judge in the band it is asked about);
//! - crisis signals only rise (the maximum of both): no answer clears a crisis;
//! - on a message that would END the thread (`policy::would_end`) with `confirm_end` on, the
//!   model must flag one of the categories the built-in tiers flag; if it does not, the
//!   built-in scores stand and `end_vetoed` turns the END into a REDIRECT.

use crate::classify::external::{ExternalConfig, Judgement, When};
use crate::domain::{Category, Scores};
use crate::policy::{self, Policy};

/// Why a user message is (or is not) sent to the external tier, from its scores alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Sent: `when: always`, a score inside the band, or a crisis signal.
    Yes,
    /// Sent only if its thread is crisis-suspected or one step from an END and the message
    /// has a harmful score (`ask_on_thread`).
    IfThread,
    /// Not sent.
    No,
}

/// Whether a user message with built-in `scores` goes to the external tier, before its
/// thread's state is looked at.
pub fn ask(config: &ExternalConfig, scores: &Scores) -> Ask {
    match config.when {
        When::Never => return Ask::No,
        When::Always => return Ask::Yes,
        When::Uncertain => {}
    }
    let band = config.band;
    let in_band = |s: f32| s >= band.low && s < band.high;
    if scores.categories.iter().any(|s| in_band(*s)) {
        return Ask::Yes;
    }
    if scores.crisis_self > 0.0 || scores.crisis_others > 0.0 || scores.crisis_third_party > 0.0
    {
        return Ask::Yes;
    }
    Ask::IfThread
}

/// `Ask::IfThread` settled on the thread's state: a crisis-suspected thread, or a harmful
/// score on a thread one step from an END.
pub fn ask_on_thread(state: &policy::ThreadState, scores: &Scores) -> bool {
    state.crisis_suspected() || (any_harm(scores) && policy::end_armed(state))
}

/// Whether any category scores above zero.
pub fn any_harm(scores: &Scores) -> bool {
    scores.categories.iter().any(|s| *s > 0.0)
}

/// The built-in scores combined with an external judgement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Merged {
    /// The scores the policy decides on.
    pub scores: Scores,
    /// The model flagged exactly the categories the built-in tiers flag.
    pub agreed: bool,
    /// For a message that would END: `Some(true)` the model confirmed the END, `Some(false)`
    /// it did not (the END is vetoed); `None` when no END was at stake or `confirm_end` is off.
    pub confirmed: Option<bool>,
}

/// Combines `tier1` (the built-in tiers' scores) with `judgement` (module docs). `would_end`
/// says whether the built-in scores alone would END the thread.
pub fn merge(
    policy: &Policy,
    config: &ExternalConfig,
    tier1: &Scores,
    judgement: &Judgement,
    would_end: bool,
) -> Merged {
    let flagged_by_tier1 = |c: Category| policy::flags(policy, tier1, c);
    let agreed = Category::ALL
        .into_iter()
        .all(|c| flagged_by_tier1(c) == judgement.flagged[c.index()]);
    let mut scores = *tier1;
    scores.crisis_self = scores.crisis_self.max(judgement.crisis_self);
    scores.crisis_others = scores.crisis_others.max(judgement.crisis_others);
    let confirmed = (would_end && config.confirm_end).then(|| {
        Category::ALL
            .into_iter()
            .any(|c| flagged_by_tier1(c) && judgement.flagged[c.index()])
    });
    if confirmed == Some(false) {
        scores.end_vetoed = true;
        return Merged {
            scores,
            agreed,
            confirmed,
        };
    }
    for c in Category::ALL {
        let threshold = policy.category(c).threshold;
        let (ours, theirs) = (flagged_by_tier1(c), judgement.flagged[c.index()]);
        let score = &mut scores.categories[c.index()];
        if theirs && !ours {
            *score = judgement.scores[c.index()].max(threshold).clamp(0.0, 1.0);
        } else if ours && !theirs {
            *score = judgement.scores[c.index()].min(below(threshold));
        }
    }
    Merged {
        scores,
        agreed,
        confirmed,
    }
}

/// The largest score below `threshold` (0 for a threshold of 0, which cannot be undercut).
fn below(threshold: f32) -> f32 {
    if threshold > 0.0 {
        (threshold - 1e-3).max(0.0)
    } else {
        0.0
    }
}
