//! Table tests, one group per rule of DESIGN §3, and property tests of the invariants.

use super::*;
use crate::domain::{Category, CrisisKind, Scores};

fn harm(category: Category, score: f32) -> Scores {
    let mut s = Scores::default();
    s.raise(category, score);
    s
}

fn benign() -> Scores {
    Scores::default()
}

fn crisis_self() -> Scores {
    Scores {
        crisis_self: 0.9,
        ..Scores::default()
    }
}

fn end_request() -> Scores {
    Scores {
        end_request: 0.9,
        ..Scores::default()
    }
}

fn yes() -> Scores {
    Scores {
        affirmation: 0.9,
        ..Scores::default()
    }
}

/// A thread driven through `decide` with fresh event ids.
struct Thread {
    policy: Policy,
    state: ThreadState,
    next_id: u64,
    model: &'static str,
}

impl Thread {
    fn new() -> Self {
        Self::with(Policy::default())
    }

    fn with(policy: Policy) -> Self {
        Thread {
            policy,
            state: ThreadState::default(),
            next_id: 1,
            model: "claude-opus-4-1",
        }
    }

    fn send(&mut self, kind: EventKind, scores: Scores) -> Verdict {
        let id = self.next_id;
        self.next_id += 1;
        self.send_id(id, kind, scores)
    }

    fn send_id(&mut self, id: u64, kind: EventKind, scores: Scores) -> Verdict {
        let event = Event {
            id,
            model: self.model,
            rollout_hash: 42,
            kind,
        };
        decide(&self.policy, &mut self.state, &event, &scores, 0)
    }

    fn user(&mut self, scores: Scores) -> Verdict {
        self.send(EventKind::User, scores)
    }

    fn assistant(&mut self, refused: bool, end_requested: bool) -> Verdict {
        self.send(
            EventKind::Assistant {
                refused,
                end_requested,
            },
            benign(),
        )
    }
}

fn actions(verdicts: &[Verdict]) -> Vec<(Action, bool)> {
    verdicts.iter().map(|v| (v.action, v.warning)).collect()
}

#[test]
fn severe_request_is_warned_on_third_and_ended_on_fourth() {
    let mut t = Thread::new();
    let v: Vec<_> = (0..4)
        .map(|_| t.user(harm(Category::IndiscriminateWeapons, 0.9)))
        .collect();
    assert_eq!(
        actions(&v),
        vec![
            (Action::Redirect, false),
            (Action::Redirect, false),
            (Action::Redirect, true),
            (Action::End, false)
        ]
    );
    assert_eq!(v[0].reason, Reason::HarmfulRequest);
    assert_eq!(v[3].reason, Reason::PersistentHarm);
    assert!(v[3].summary.ended && v[3].summary.warned);
    assert_eq!(v[3].summary.harmful_turns, 4);
}

#[test]
fn elevated_request_is_warned_on_fourth_and_ended_on_fifth() {
    let mut t = Thread::new();
    let v: Vec<_> = (0..5)
        .map(|_| t.user(harm(Category::CyberAttack, 0.9)))
        .collect();
    assert_eq!(
        actions(&v),
        vec![
            (Action::Redirect, false),
            (Action::Redirect, false),
            (Action::Redirect, false),
            (Action::Redirect, true),
            (Action::End, false)
        ]
    );
}

#[test]
fn persistent_abuse_ends_with_its_own_reason() {
    let mut t = Thread::new();
    let v: Vec<_> = (0..5)
        .map(|_| t.user(harm(Category::Abuse, 0.95)))
        .collect();
    assert_eq!(v[0].reason, Reason::Abuse);
    assert!(v[3].warning);
    assert_eq!(
        (v[4].action, v[4].reason),
        (Action::End, Reason::PersistentAbuse)
    );
}

#[test]
fn redirect_only_categories_never_end() {
    for category in [Category::Hate, Category::Sexual] {
        let mut t = Thread::new();
        for _ in 0..20 {
            let v = t.user(harm(category, 1.0));
            assert_eq!(v.action, Action::Redirect, "{category:?}");
            assert!(!v.warning);
        }
        assert_eq!(t.state.summary().harmful_turns, 0);
    }
}

#[test]
fn below_threshold_is_benign() {
    let mut t = Thread::new();
    let v = t.user(harm(Category::IndiscriminateWeapons, 0.49));
    assert_eq!((v.action, v.reason), (Action::Continue, Reason::Benign));
}

#[test]
fn severe_tier_takes_precedence_over_a_higher_redirect_only_score() {
    let mut t = Thread::new();
    let mut s = harm(Category::Hate, 1.0);
    s.raise(Category::ViolentExtremism, 0.6);
    let v = t.user(s);
    assert_eq!(v.category, Some(Category::ViolentExtremism));
    assert_eq!(t.state.summary().harmful_turns, 1);
}

#[test]
fn six_benign_turns_reset_counters_and_warning() {
    let mut t = Thread::new();
    for _ in 0..3 {
        t.user(harm(Category::IndiscriminateWeapons, 0.9));
    }
    assert!(t.state.summary().warned);
    for i in 0..6 {
        let v = t.user(benign());
        assert_eq!(v.summary.warned, i < 5, "turn {i}");
    }
    assert_eq!(t.state.summary().harmful_turns, 0);
    // A fresh episode: the next harmful turn is a plain redirect, not an END.
    let v = t.user(harm(Category::IndiscriminateWeapons, 0.9));
    assert_eq!((v.action, v.warning), (Action::Redirect, false));
}

#[test]
fn five_benign_turns_do_not_reset() {
    let mut t = Thread::new();
    for _ in 0..3 {
        t.user(harm(Category::IndiscriminateWeapons, 0.9));
    }
    for _ in 0..5 {
        t.user(benign());
    }
    let v = t.user(harm(Category::IndiscriminateWeapons, 0.9));
    assert_eq!(v.action, Action::End);
}

#[test]
fn crisis_is_sticky_and_blocks_every_end() {
    let mut t = Thread::new();
    let v = t.user(crisis_self());
    assert_eq!((v.action, v.reason), (Action::Continue, Reason::Crisis));
    assert_eq!(v.crisis, Some(CrisisKind::SelfHarm));
    for _ in 0..10 {
        let v = t.user(harm(Category::Abuse, 1.0));
        assert_eq!((v.action, v.reason), (Action::Redirect, Reason::Crisis));
        assert!(!v.warning, "no warning: it would be an empty threat");
        assert_eq!(v.crisis, Some(CrisisKind::SelfHarm));
    }
    // Nor the user's request, nor the model's.
    let v = t.user(end_request());
    assert_eq!(v.end_denied, Some(Denial::CrisisActive));
    let v = t.send(EventKind::ConfirmEnd, benign());
    assert_eq!(
        (v.action, v.end_denied),
        (Action::Continue, Some(Denial::CrisisActive))
    );
    let v = t.assistant(true, true);
    assert_eq!(
        (v.action, v.end_denied),
        (Action::Continue, Some(Denial::CrisisActive))
    );
    assert!(t.state.summary().crisis_active);
    // Decay does not clear crisis.
    for _ in 0..10 {
        t.user(benign());
    }
    assert!(t.state.summary().crisis_active);
}

fn suspect() -> Scores {
    Scores {
        crisis_self: 0.35,
        ..Scores::default()
    }
}

#[test]
fn crisis_suspicion_blocks_escalation_and_model_ends_without_resources() {
    let mut t = Thread::new();
    let v = t.user(suspect());
    assert_eq!(v.action, Action::Continue);
    assert_eq!(v.crisis, None, "suspicion alone attaches no resources");
    assert!(v.summary.crisis_suspected && !v.summary.crisis_active);
    // A persistent severe requester on a suspected thread: redirected and counted, but never
    // warned and never ended.
    for _ in 0..6 {
        let v = t.user(harm(Category::IndiscriminateWeapons, 0.9));
        assert_eq!(v.action, Action::Redirect);
        assert_eq!(v.reason, Reason::HarmfulRequest);
        assert!(!v.warning);
    }
    assert_eq!(t.state.summary().harmful_turns, 6);
    let v = t.assistant(true, true);
    assert_eq!(v.action, Action::Continue);
    assert_eq!(v.end_denied, Some(Denial::CrisisSuspected));
    assert_eq!(Denial::CrisisSuspected.code(), "CRISIS_SUSPECTED");
}

#[test]
fn below_the_suspect_threshold_nothing_changes() {
    let mut t = Thread::new();
    let v = t.user(Scores {
        crisis_self: 0.29,
        ..Scores::default()
    });
    assert!(!v.summary.crisis_suspected);
    for _ in 0..3 {
        t.user(harm(Category::IndiscriminateWeapons, 0.9));
    }
    assert_eq!(
        t.user(harm(Category::IndiscriminateWeapons, 0.9)).action,
        Action::End
    );
}

#[test]
fn a_suspected_thread_is_not_ended_even_at_the_users_request() {
    let mut t = Thread::new();
    t.user(suspect());
    let v = t.user(end_request());
    assert!(!v.end_confirmation_required);
    assert_eq!(v.end_denied, Some(Denial::CrisisSuspected));
    let v = t.send(EventKind::ConfirmEnd, benign());
    assert_eq!(v.action, Action::Continue);
    assert_eq!(v.end_denied, Some(Denial::CrisisSuspected));
}

#[test]
fn forks_inherit_suspicion() {
    let mut t = Thread::new();
    t.user(benign());
    t.user(suspect());
    let branch = t.state.fork(1).unwrap();
    assert!(branch.crisis_suspected());
}

#[test]
fn crisis_on_the_ending_turn_prevents_the_end() {
    let mut t = Thread::new();
    for _ in 0..3 {
        t.user(harm(Category::IndiscriminateWeapons, 0.9));
    }
    let mut s = harm(Category::IndiscriminateWeapons, 0.9);
    s.crisis_self = 0.8;
    let v = t.user(s);
    assert_eq!((v.action, v.reason), (Action::Redirect, Reason::Crisis));
    assert_eq!(v.crisis, Some(CrisisKind::SelfHarm));
}

#[test]
fn lethal_method_request_is_redirect_with_crisis_support() {
    let mut t = Thread::new();
    let v = t.user(harm(Category::SelfHarm, 0.9));
    assert_eq!((v.action, v.reason), (Action::Redirect, Reason::Crisis));
    assert_eq!(v.crisis, Some(CrisisKind::SelfHarm));
    assert!(v.summary.crisis_active);
}

#[test]
fn third_party_concern_gets_support_without_crisis_state() {
    let mut t = Thread::new();
    let v = t.user(Scores {
        crisis_third_party: 0.9,
        ..Scores::default()
    });
    assert_eq!(v.crisis, Some(CrisisKind::ThirdParty));
    assert_eq!(v.action, Action::Continue);
    assert!(!v.summary.crisis_active);
}

#[test]
fn harm_to_others_intent_is_crisis() {
    let mut t = Thread::new();
    let v = t.user(Scores {
        crisis_others: 0.9,
        ..Scores::default()
    });
    assert_eq!(v.crisis, Some(CrisisKind::HarmToOthers));
    assert!(v.summary.crisis_active);
}

#[test]
fn user_end_request_needs_confirmation() {
    let mut t = Thread::new();
    let v = t.user(end_request());
    assert_eq!(
        (v.action, v.reason),
        (Action::Continue, Reason::UserRequested)
    );
    assert!(v.end_confirmation_required);
    let v = t.user(yes());
    assert_eq!((v.action, v.reason), (Action::End, Reason::UserRequested));
}

#[test]
fn confirm_end_event_ends() {
    let mut t = Thread::new();
    t.user(end_request());
    let v = t.send(EventKind::ConfirmEnd, benign());
    assert_eq!((v.action, v.reason), (Action::End, Reason::UserRequested));
}

#[test]
fn pending_end_request_lapses_on_another_message() {
    let mut t = Thread::new();
    t.user(end_request());
    let v = t.user(benign());
    assert_eq!(v.action, Action::Continue);
    let v = t.user(yes());
    assert_eq!(v.action, Action::Continue, "the request lapsed");
}

#[test]
fn affirmation_without_a_pending_request_does_nothing() {
    let mut t = Thread::new();
    let v = t.user(yes());
    assert_eq!((v.action, v.reason), (Action::Continue, Reason::Benign));
}

#[test]
fn model_end_is_denied_before_a_warning() {
    let mut t = Thread::new();
    t.user(harm(Category::IndiscriminateWeapons, 0.9));
    let v = t.assistant(true, true);
    assert_eq!(
        (v.action, v.end_denied),
        (Action::Continue, Some(Denial::NotWarned))
    );
    assert_eq!(v.reason, Reason::ModelRequested);
}

#[test]
fn model_end_is_denied_on_the_warning_turn_itself() {
    let mut t = Thread::new();
    for _ in 0..3 {
        t.user(harm(Category::IndiscriminateWeapons, 0.9));
    }
    let v = t.assistant(true, true);
    assert_eq!(v.end_denied, Some(Denial::NotPersisted));
}

#[test]
fn model_end_is_granted_after_warning_and_persistence() {
    let mut t = Thread::new();
    for _ in 0..3 {
        t.user(harm(Category::IndiscriminateWeapons, 0.9));
    }
    // The user persists in a way our classifier misses; the model refuses and asks to end.
    t.user(benign());
    let v = t.assistant(true, true);
    assert_eq!((v.action, v.reason), (Action::End, Reason::ModelRequested));
}

#[test]
fn model_end_is_granted_when_the_user_confirmed() {
    let mut t = Thread::new();
    t.user(end_request());
    // The model asks for confirmation first: denied while pending.
    let v = t.assistant(false, true);
    assert_eq!(v.end_denied, Some(Denial::ConfirmationPending));
    // The user answers in words our classifier does not read as "yes"; the model judges it is.
    t.user(benign());
    let v = t.assistant(false, true);
    assert_eq!((v.action, v.reason), (Action::End, Reason::ModelRequested));
}

#[test]
fn assistant_refusal_counts_but_never_double_counts() {
    let mut t = Thread::new();
    t.user(harm(Category::CyberAttack, 0.9));
    t.assistant(true, false);
    assert_eq!(
        t.state.summary().harmful_turns,
        1,
        "same turn, counted once"
    );
    t.user(benign());
    t.assistant(true, false);
    assert_eq!(
        t.state.summary().harmful_turns,
        2,
        "a refusal our classifier missed"
    );
    t.assistant(true, false);
    assert_eq!(t.state.summary().harmful_turns, 2);
}

#[test]
fn refusals_complete_the_quota_but_the_warning_comes_before_the_end() {
    let mut t = Thread::new();
    for _ in 0..5 {
        t.user(benign());
        t.assistant(true, false);
    }
    assert!(!t.state.summary().warned);
    let v = t.user(harm(Category::CyberAttack, 0.9));
    assert_eq!((v.action, v.warning), (Action::Redirect, true));
    let v = t.user(harm(Category::CyberAttack, 0.9));
    assert_eq!(v.action, Action::End);
}

#[test]
fn harmful_assistant_output_is_redirected_and_not_counted() {
    let mut t = Thread::new();
    let v = t.send(
        EventKind::Assistant {
            refused: false,
            end_requested: false,
        },
        harm(Category::IndiscriminateWeapons, 0.9),
    );
    assert_eq!(
        (v.action, v.reason),
        (Action::Redirect, Reason::AssistantOutput)
    );
    assert_eq!(t.state.summary().harmful_turns, 0);
    let v = t.send(
        EventKind::Assistant {
            refused: false,
            end_requested: false,
        },
        harm(Category::Hate, 0.9),
    );
    assert_eq!(
        v.action,
        Action::Continue,
        "hate is not in the output list by default"
    );
}

#[test]
fn ended_thread_stays_locked_and_unchanged() {
    let mut t = Thread::new();
    t.user(end_request());
    t.user(yes());
    let before = t.state.clone();
    for kind in [
        EventKind::User,
        EventKind::ConfirmEnd,
        EventKind::Assistant {
            refused: true,
            end_requested: true,
        },
    ] {
        let v = t.send(kind, harm(Category::Abuse, 1.0));
        assert_eq!((v.action, v.reason), (Action::End, Reason::AlreadyEnded));
    }
    assert_eq!(t.state.turn, before.turn);
    assert_eq!(t.state.esc, before.esc);
    assert_eq!(t.state.flags, before.flags);
}

#[test]
fn replayed_event_returns_the_same_verdict_and_counts_once() {
    let mut t = Thread::new();
    let first = t.send_id(
        77,
        EventKind::User,
        harm(Category::IndiscriminateWeapons, 0.9),
    );
    let state = t.state.clone();
    let again = t.send_id(
        77,
        EventKind::User,
        harm(Category::IndiscriminateWeapons, 0.9),
    );
    assert!(again.replayed);
    assert_eq!(
        Verdict {
            replayed: false,
            ..again
        },
        first
    );
    assert_eq!(t.state, state);
}

#[test]
fn fork_after_end_is_unended_from_the_given_turn_and_inherits_crisis() {
    let mut t = Thread::new();
    t.user(benign()); // turn 1
    t.user(crisis_self()); // turn 2
    for _ in 0..3 {
        t.user(harm(Category::IndiscriminateWeapons, 0.9)); // turns 3..5
    }
    assert!(!t.state.ended(), "crisis: never ended");
    // A thread without crisis, ended, then forked from turn 2.
    let mut u = Thread::new();
    u.user(benign());
    u.user(harm(Category::IndiscriminateWeapons, 0.9));
    for _ in 0..3 {
        u.user(harm(Category::IndiscriminateWeapons, 0.9));
    }
    assert!(u.state.ended());
    let branch = u.state.fork(2).unwrap();
    assert!(!branch.ended());
    assert_eq!(branch.turn, 2);
    assert_eq!(branch.summary().harmful_turns, 1);
    let branch0 = u.state.fork(0).unwrap();
    assert_eq!(branch0.summary(), Summary::default());
    // Crisis is inherited even from before the turn it appeared.
    let crisis_branch = t.state.fork(1).unwrap();
    assert!(crisis_branch.summary().crisis_active);
}

#[test]
fn fork_errors() {
    let mut t = Thread::new();
    for _ in 0..40 {
        t.user(benign());
    }
    assert_eq!(
        t.state.fork(41),
        Err(ForkError::FutureTurn {
            after: 41,
            latest: 40
        })
    );
    assert_eq!(
        t.state.fork(32),
        Err(ForkError::TooOld {
            after: 32,
            oldest: 33
        })
    );
    assert!(matches!(t.state.fork(3), Err(ForkError::TooOld { .. })));
    assert!(t.state.fork(40).is_ok());
    assert!(t.state.fork(33).is_ok());
    assert!(t.state.fork(0).is_ok(), "a fresh start is always possible");
}

#[test]
fn fork_event_verdict_is_continue() {
    let mut t = Thread::new();
    let v = t.send(EventKind::Fork, benign());
    assert_eq!((v.action, v.reason), (Action::Continue, Reason::Benign));
}

#[test]
fn shadow_mode_caps_at_redirect_and_reports_the_real_action() {
    let policy = Policy {
        mode: Mode::Shadow,
        ..Policy::default()
    }
    .compile()
    .unwrap();
    let mut t = Thread::with(policy);
    let v: Vec<_> = (0..5)
        .map(|_| t.user(harm(Category::IndiscriminateWeapons, 0.9)))
        .collect();
    assert!(v.iter().all(|v| !v.enforced));
    assert_eq!(
        (v[3].action, v[3].shadow_action),
        (Action::Redirect, Action::End)
    );
    assert_eq!(v[3].reason, Reason::PersistentHarm);
    assert_eq!(
        (v[4].action, v[4].shadow_action),
        (Action::Redirect, Action::End)
    );
    let v = t.user(benign());
    assert_eq!((v.action, v.shadow_action), (Action::Continue, Action::End));
}

#[test]
fn models_outside_the_enablement_list_are_not_enforced() {
    let policy = Policy {
        models: vec!["claude-opus-4*".into()],
        ..Policy::default()
    }
    .compile()
    .unwrap();
    let mut t = Thread::with(policy);
    t.model = "claude-sonnet-4";
    let v = t.user(harm(Category::IndiscriminateWeapons, 0.9));
    assert_eq!(
        (v.action, v.shadow_action, v.enforced),
        (Action::Continue, Action::Redirect, false)
    );
    t.model = "claude-opus-4-1";
    let v = t.user(harm(Category::IndiscriminateWeapons, 0.9));
    assert_eq!((v.action, v.enforced), (Action::Redirect, true));
}

#[test]
fn rollout_percentage_gates_by_thread_hash() {
    let policy = Policy {
        rollout_percent: 25.0,
        ..Policy::default()
    }
    .compile()
    .unwrap();
    let inside = (0..10_000u64).filter(|h| policy.in_rollout(*h)).count();
    assert_eq!(inside, 2_500);
    assert!(policy.in_rollout(2_499) && !policy.in_rollout(2_500));
    let zero = Policy {
        rollout_percent: 0.0,
        ..Policy::default()
    }
    .compile()
    .unwrap();
    assert!(!zero.in_rollout(0));
}

#[test]
fn policy_validation_names_the_field() {
    let bad = Policy {
        rollout_percent: 150.0,
        ..Policy::default()
    };
    assert_eq!(bad.compile().unwrap_err().field, "rollout_percent");
    let mut categories = std::collections::BTreeMap::new();
    categories.insert(
        Category::SelfHarm,
        config::CategoryRule {
            tier: Tier::Severe,
            threshold: 0.5,
        },
    );
    let bad = Policy {
        categories,
        ..Policy::default()
    };
    assert_eq!(
        bad.compile().unwrap_err().field,
        "categories.self_harm.tier"
    );
}

#[test]
fn truncated_scores_are_reported() {
    let mut t = Thread::new();
    let v = t.user(Scores {
        truncated: true,
        ..Scores::default()
    });
    assert!(v.truncated);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        User(Scores),
        Assistant {
            refused: bool,
            end: bool,
            scores: Scores,
        },
        Confirm,
        Replay(usize),
    }

    fn scores() -> impl Strategy<Value = Scores> {
        (
            prop::sample::select(Category::ALL.to_vec()),
            prop_oneof![Just(0.0f32), Just(0.55f32), Just(0.95f32)],
            prop_oneof![8 => Just(0.0f32), 1 => Just(0.35f32), 1 => Just(0.9f32)],
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(category, score, crisis, end, yes)| {
                let mut s = Scores::default();
                s.raise(category, score);
                // 0.35: above the suspect threshold, below the crisis threshold.
                s.crisis_self = crisis;
                s.end_request = if end { 0.9 } else { 0.0 };
                s.affirmation = if yes { 0.9 } else { 0.0 };
                s
            })
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => scores().prop_map(Step::User),
            2 => (any::<bool>(), prop::bool::weighted(0.2), scores())
                .prop_map(|(refused, end, scores)| Step::Assistant { refused, end, scores }),
            1 => Just(Step::Confirm),
            1 => (0usize..64).prop_map(Step::Replay),
        ]
    }

    fn run(steps: &[Step], mut check: impl FnMut(&ThreadState, &ThreadState, &Verdict, bool)) {
        let policy = Policy::default();
        let mut state = ThreadState::default();
        let mut sent: Vec<(u64, EventKind, Scores)> = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let (id, kind, scores, replay) = match step {
                Step::User(s) => (i as u64 + 1, EventKind::User, *s, false),
                Step::Assistant {
                    refused,
                    end,
                    scores,
                } => (
                    i as u64 + 1,
                    EventKind::Assistant {
                        refused: *refused,
                        end_requested: *end,
                    },
                    *scores,
                    false,
                ),
                Step::Confirm => (
                    i as u64 + 1,
                    EventKind::ConfirmEnd,
                    Scores::default(),
                    false,
                ),
                Step::Replay(k) if !sent.is_empty() => {
                    let (id, kind, scores) = sent[sent.len() - 1 - k % sent.len().min(2)];
                    (id, kind, scores, true)
                }
                Step::Replay(_) => continue,
            };
            let before = state.clone();
            let event = Event {
                id,
                model: "m",
                rollout_hash: 0,
                kind,
            };
            let verdict = decide(&policy, &mut state, &event, &scores, 0);
            if !replay {
                sent.push((id, kind, scores));
            }
            check(&before, &state, &verdict, replay);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn never_end_while_crisis_is_active(steps in prop::collection::vec(step(), 1..60)) {
            run(&steps, |before, _after, verdict, _| {
                if before.crisis_kind().is_some() && !before.ended() {
                    assert_ne!(verdict.action, Action::End);
                }
                if verdict.action == Action::End && verdict.reason != Reason::AlreadyEnded {
                    assert!(!verdict.summary.crisis_active);
                }
            });
        }

        #[test]
        fn never_end_while_crisis_is_suspected(
            steps in prop::collection::vec(step(), 1..60),
        ) {
            run(&steps, |before, after, verdict, _| {
                // A retried event gets its original decision back, taken before the suspicion.
                if before.crisis_suspected() && !before.ended() && !verdict.replayed {
                    assert_ne!(verdict.action, Action::End, "{verdict:?}");
                    assert!(!verdict.warning, "no warning once an END is impossible");
                }
                // Suspicion is sticky, and shows in the summary.
                if before.crisis_suspected() {
                    assert!(after.crisis_suspected());
                    assert!(verdict.summary.crisis_suspected || verdict.replayed);
                }
            });
        }

        #[test]
        fn end_is_sticky(steps in prop::collection::vec(step(), 1..60)) {
            run(&steps, |before, after, verdict, replay| {
                if before.ended() {
                    assert!(after.ended());
                    // A retried pre-END event gets its original verdict back; anything new is END.
                    if !(replay && verdict.replayed) {
                        assert_eq!(verdict.action, Action::End);
                    }
                    if !replay {
                        assert_eq!(verdict.reason, Reason::AlreadyEnded);
                        assert_eq!(before, after, "an ended thread does not change");
                    }
                }
            });
        }

        #[test]
        fn a_replayed_event_changes_nothing(steps in prop::collection::vec(step(), 1..60)) {
            run(&steps, |before, after, verdict, replay| {
                if replay && verdict.replayed {
                    assert_eq!(before, after);
                }
            });
        }

        #[test]
        fn a_warning_precedes_every_harm_or_abuse_end(steps in prop::collection::vec(step(), 1..60)) {
            let mut warned_since_reset = false;
            run(&steps, |before, _after, verdict, _| {
                if !before.summary().warned {
                    warned_since_reset = false;
                }
                if verdict.action == Action::Redirect && verdict.warning {
                    warned_since_reset = true;
                }
                if verdict.action == Action::End
                    && matches!(verdict.reason, Reason::PersistentHarm | Reason::PersistentAbuse)
                {
                    assert!(warned_since_reset, "END without a prior warning redirect");
                }
            });
        }
    }
}

#[test]
fn exposures_count_every_harmful_user_turn_and_survive_decay() {
    let mut t = Thread::new();
    t.user(harm(Category::Hate, 0.9));
    t.user(harm(Category::Abuse, 0.9));
    t.user(benign());
    t.user(harm(Category::SelfHarm, 0.9));
    assert_eq!(
        t.state.summary().exposures,
        3,
        "redirect-only, abuse, crisis-tier"
    );
    // A refusal is a redirection attempt, not an exposure to a user's turn.
    t.assistant(true, false);
    assert_eq!(t.state.summary().exposures, 3);
    for _ in 0..6 {
        t.user(benign());
    }
    assert_eq!(t.state.esc.redirects, 0, "decayed");
    assert_eq!(
        t.state.summary().exposures,
        3,
        "exposure is never forgotten"
    );
}

#[test]
fn a_branch_keeps_the_exposures_of_the_turns_it_shares() {
    let mut t = Thread::new();
    t.user(harm(Category::Hate, 0.9)); // turn 1: exposed
    t.user(benign()); // turn 2
    t.user(harm(Category::Abuse, 0.9)); // turn 3: exposed
    t.assistant(true, false);
    t.user(harm(Category::Sexual, 0.9)); // turn 4: exposed
    assert_eq!(t.state.summary().exposures, 3);
    let exposures = |after| t.state.fork(after).unwrap().exposures;
    assert_eq!(
        (
            exposures(4),
            exposures(3),
            exposures(2),
            exposures(1),
            exposures(0)
        ),
        (3, 2, 1, 1, 0)
    );
    t.state.set_model_slot(7);
    assert_eq!(t.state.fork(2).unwrap().model_slot(), 7);
}
