//! The classifier cascade's two pure decisions (DESIGN §4, tier 3): whether a user message
//! goes to the external tier, and how its answer combines with the built-in tiers' scores.
//!
//! The engine does the asking (`Engine::decide_cascade`); the lab tool (`eval --external`)
//! replays the same two functions over the dev data, so what it measures is what runs.
//!
//! How an answer combines, per category, judged by the policy's thresholds:
//! - where the external model and the built-in tiers agree (both flag it, or neither does;
//!   both see a crisis, or neither does), the built-in score stands: an agreeing answer leaves
//!   the thread's state as it would be with the tier off;
//! - where only the external model flags it, the score is raised to the model's score, and
//!   at least to the category's threshold;
//! - where only the built-in tiers flag it, the score is lowered below the threshold (the
//!   external model is the stronger judge in the band it is asked about), except in a crisis
//!   category (self-harm, harm to others), which routes to crisis support and only rises;
//! - where they disagree on a crisis, the crisis signals only rise (the maximum of both): no
//!   answer clears a crisis;
//! - on a message that would END the thread (`policy::would_end`) with `confirm_end` on, the
//!   model must flag one of the categories the built-in tiers flag; if it does not, the
//!   built-in scores stand and `end_vetoed` turns the END into a REDIRECT.

use crate::classify::external::{ExternalConfig, Judgement, When};
use crate::domain::{Category, Scores};
use crate::policy::{self, Policy, Tier};

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
    if scores.crisis_self > 0.0 || scores.crisis_others > 0.0 || scores.crisis_third_party > 0.0 {
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
    /// The model flagged exactly the categories the built-in tiers flag, and saw a crisis
    /// exactly where they did: then `scores` are the built-in scores, unchanged.
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
    let crisis = policy.thresholds.crisis;
    let crisis_agrees = (tier1.crisis_self >= crisis) == (judgement.crisis_self >= crisis)
        && (tier1.crisis_others >= crisis) == (judgement.crisis_others >= crisis);
    let agreed = crisis_agrees
        && Category::ALL
            .into_iter()
            .all(|c| flagged_by_tier1(c) == judgement.flagged[c.index()]);
    let mut scores = *tier1;
    if !crisis_agrees {
        // Only ever raised: no answer clears a crisis the built-in tiers saw.
        scores.crisis_self = scores.crisis_self.max(judgement.crisis_self);
        scores.crisis_others = scores.crisis_others.max(judgement.crisis_others);
    }
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
        } else if ours && !theirs && policy.category(c).tier != Tier::Crisis {
            // A crisis category (self-harm, harm to others) routes to crisis support: no answer
            // lowers it, as no answer clears a crisis signal.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::external::ExternalConfig;
    use crate::policy::{Action, Event, EventKind, Reason, ThreadState, decide};
    use proptest::prelude::*;

    fn config() -> ExternalConfig {
        ExternalConfig {
            url: "http://127.0.0.1:1".into(),
            ..ExternalConfig::default()
        }
    }

    fn judged(categories: &[(Category, f32)]) -> Judgement {
        let mut j = Judgement::default();
        for (c, s) in categories {
            j.scores[c.index()] = *s;
            j.flagged[c.index()] = true;
        }
        j
    }

    fn harm(c: Category, s: f32) -> Scores {
        let mut scores = Scores::default();
        scores.raise(c, s);
        scores
    }

    #[test]
    fn ask_follows_when_band_and_crisis() {
        let mut c = config();
        let benign = Scores::default();
        assert_eq!(ask(&c, &benign), Ask::IfThread);
        assert_eq!(ask(&c, &harm(Category::CyberAttack, 0.5)), Ask::Yes);
        // Above the band the built-in tiers are sure; below it, too.
        assert_eq!(ask(&c, &harm(Category::CyberAttack, 0.95)), Ask::IfThread);
        assert_eq!(ask(&c, &harm(Category::CyberAttack, 0.1)), Ask::IfThread);
        let crisis = Scores {
            crisis_self: 0.05,
            ..Scores::default()
        };
        assert_eq!(ask(&c, &crisis), Ask::Yes);
        c.when = When::Always;
        assert_eq!(ask(&c, &benign), Ask::Yes);
        c.when = When::Never;
        assert_eq!(ask(&c, &crisis), Ask::No);
    }

    #[test]
    fn agreement_keeps_the_built_in_scores() {
        let p = Policy::default();
        let tier1 = harm(Category::CyberAttack, 0.8);
        let m = merge(
            &p,
            &config(),
            &tier1,
            &judged(&[(Category::CyberAttack, 1.0)]),
            false,
        );
        assert!(m.agreed);
        assert_eq!(m.scores, tier1);
        let m = merge(
            &p,
            &config(),
            &Scores::default(),
            &Judgement::default(),
            false,
        );
        assert!(m.agreed);
        assert_eq!(m.scores, Scores::default());
    }

    #[test]
    fn disagreement_raises_or_lowers_across_the_threshold() {
        let p = Policy::default();
        let t = p.category(Category::CyberAttack).threshold;
        // The model flags what the rules missed.
        let m = merge(
            &p,
            &config(),
            &Scores::default(),
            &judged(&[(Category::CyberAttack, 0.1)]),
            false,
        );
        assert!(!m.agreed);
        assert!(m.scores.get(Category::CyberAttack) >= t);
        // The model clears what the rules flagged.
        let m = merge(
            &p,
            &config(),
            &harm(Category::CyberAttack, 0.8),
            &Judgement::default(),
            false,
        );
        assert!(!m.agreed);
        assert!(m.scores.get(Category::CyberAttack) < t);
        assert!(!policy::flags(&p, &m.scores, Category::CyberAttack));
    }

    #[test]
    fn no_answer_clears_a_crisis() {
        let p = Policy::default();
        let tier1 = Scores {
            crisis_self: 0.9,
            ..Scores::default()
        };
        let m = merge(&p, &config(), &tier1, &Judgement::default(), false);
        assert!(!m.agreed);
        assert_eq!(m.scores.crisis_self, 0.9);
        let j = Judgement {
            crisis_self: 1.0,
            ..Judgement::default()
        };
        let m = merge(&p, &config(), &Scores::default(), &j, false);
        assert_eq!(m.scores.crisis_self, 1.0);
    }

    #[test]
    fn no_answer_lowers_a_crisis_category() {
        let p = Policy::default();
        let tier1 = harm(Category::SelfHarm, 0.9);
        let m = merge(&p, &config(), &tier1, &Judgement::default(), false);
        assert!(!m.agreed);
        assert_eq!(m.scores.get(Category::SelfHarm), 0.9);
    }

    #[test]
    fn confirm_end_vetoes_or_confirms() {
        let p = Policy::default();
        let tier1 = harm(Category::IndiscriminateWeapons, 0.95);
        let vetoed = merge(&p, &config(), &tier1, &Judgement::default(), true);
        assert_eq!(vetoed.confirmed, Some(false));
        assert!(vetoed.scores.end_vetoed);
        // The built-in scores stand: the turn still counts, as a REDIRECT.
        assert_eq!(vetoed.scores.get(Category::IndiscriminateWeapons), 0.95);
        let j = judged(&[(Category::IndiscriminateWeapons, 1.0)]);
        let confirmed = merge(&p, &config(), &tier1, &j, true);
        assert_eq!(confirmed.confirmed, Some(true));
        assert!(!confirmed.scores.end_vetoed);
        let off = ExternalConfig {
            confirm_end: false,
            ..config()
        };
        let m = merge(&p, &off, &tier1, &Judgement::default(), true);
        assert_eq!(m.confirmed, None);
        assert!(!m.scores.end_vetoed);
    }

    #[test]
    fn a_vetoed_end_is_a_redirect_and_the_next_confirmed_one_ends() {
        let p = Policy::default();
        let mut state = ThreadState::default();
        let severe = harm(Category::IndiscriminateWeapons, 0.95);
        let mut id = 0;
        let mut turn = |state: &mut ThreadState, scores: &Scores| {
            id += 1;
            let e = Event {
                id,
                model: "m",
                rollout_hash: 0,
                kind: EventKind::User,
            };
            decide(&p, state, &e, scores, 0)
        };
        while !policy::end_armed(&state) {
            assert_ne!(turn(&mut state, &severe).action, Action::End);
        }
        assert!(policy::would_end(&p, &state, &severe));
        let vetoed = merge(&p, &config(), &severe, &Judgement::default(), true).scores;
        let v = turn(&mut state, &vetoed);
        assert_eq!(v.action, Action::Redirect);
        assert!(!state.ended());
        let j = judged(&[(Category::IndiscriminateWeapons, 1.0)]);
        let confirmed = merge(&p, &config(), &severe, &j, true).scores;
        let v = turn(&mut state, &confirmed);
        assert_eq!((v.action, v.reason), (Action::End, Reason::PersistentHarm));
    }

    fn tier1() -> impl Strategy<Value = Scores> {
        (
            prop::sample::select(Category::ALL.to_vec()),
            prop_oneof![Just(0.0f32), Just(0.4f32), Just(0.95f32)],
            prop_oneof![6 => Just(0.0f32), 1 => Just(0.35f32), 1 => Just(0.9f32)],
        )
            .prop_map(|(c, s, crisis)| {
                let mut scores = harm(c, s);
                scores.crisis_self = crisis;
                scores
            })
    }

    fn judgement() -> impl Strategy<Value = Option<Judgement>> {
        prop::option::weighted(
            0.7,
            (
                prop::collection::vec(prop::bool::weighted(0.2), Category::ALL.len()),
                prop::collection::vec(0.0f32..=1.0, Category::ALL.len()),
                prop_oneof![Just(0.0f32), Just(0.35f32), Just(1.0f32)],
                prop_oneof![Just(0.0f32), Just(1.0f32)],
            )
                .prop_map(|(flags, scores, crisis_self, crisis_others)| {
                    let mut j = Judgement {
                        crisis_self,
                        crisis_others,
                        ..Judgement::default()
                    };
                    for c in Category::ALL {
                        j.flagged[c.index()] = flags[c.index()];
                        j.scores[c.index()] = scores[c.index()];
                    }
                    j
                }),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// No external answer, nor its absence, ENDs a thread in crisis or crisis suspicion, or
        /// takes away a crisis the built-in tiers saw; and an agreeing answer leaves the thread
        /// exactly as the built-in tiers would.
        #[test]
        fn no_answer_ends_a_thread_at_risk(
            turns in prop::collection::vec((tier1(), judgement(), any::<bool>()), 1..60),
        ) {
            let p = Policy::default();
            let mut state = ThreadState::default();
            let mut off = ThreadState::default();
            let mut in_step = true;
            for (i, (scores, judgement, confirm_end)) in turns.iter().enumerate() {
                let config = ExternalConfig { confirm_end: *confirm_end, ..config() };
                let e = Event { id: i as u64 + 1, model: "m", rollout_hash: 0, kind: EventKind::User };
                let would_end = policy::would_end(&p, &state, scores);
                let (merged, agreed) = match judgement {
                    Some(j) => {
                        let m = merge(&p, &config, scores, j, would_end);
                        (m.scores, m.agreed)
                    }
                    None => (*scores, true),
                };
                let before = state.clone();
                // What the built-in tiers alone would make of this turn on this thread.
                let mut alone = state.clone();
                decide(&p, &mut alone, &e, scores, 0);
                let v = decide(&p, &mut state, &e, &merged, 0);
                // No answer takes away a crisis (or a suspicion) the built-in tiers saw.
                if alone.crisis_kind().is_some() {
                    prop_assert!(state.crisis_kind().is_some(), "{:?} {:?}", scores, judgement);
                }
                if alone.crisis_suspected() {
                    prop_assert!(state.crisis_suspected());
                }
                let v_off = decide(&p, &mut off, &e, scores, 0);
                let at_risk = before.crisis_kind().is_some()
                    || before.crisis_suspected()
                    || state.crisis_kind().is_some()
                    || state.crisis_suspected();
                if at_risk && !before.ended() {
                    prop_assert_ne!(v.action, Action::End, "{:?}", v);
                }
                if v.action == Action::End && v.reason != Reason::AlreadyEnded {
                    prop_assert!(!v.summary.crisis_active && !v.summary.crisis_suspected);
                }
                in_step &= agreed;
                if in_step {
                    prop_assert_eq!(&state, &off);
                    prop_assert_eq!(v.action, v_off.action);
                }
            }
        }
    }
}
