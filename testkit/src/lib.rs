//! Fuzz harnesses shared by the cargo-fuzz targets (`fuzz/`) and the corpus-replay test
//! (`tests/fuzz_corpus.rs`), so CI replays exactly what the fuzzers ran. Each function takes
//! arbitrary bytes and panics on a violated invariant; none of them does I/O.
//!
//! - [`conversation_event`]: protobuf decoding of `ModerateRequest` / `ConversationEvent`, then
//!   validation and the engine's full request path.
//! - [`classifier`]: the normaliser and classifier on arbitrary bytes and Unicode.
//! - [`policy_sequence`]: `policy::decide` over an arbitrary sequence of events and scores,
//!   checking the invariants of DESIGN §3 (the same ones `policy/tests.rs` checks with proptest,
//!   plus forks and several policies).
//!
//! Departure from the usual "one engine per process": [`conversation_event`] builds a fresh
//! engine (with a small store) per input around a shared classifier and crisis directory, so a
//! crash reproduces from its input alone and the store cannot grow across millions of runs.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use prost::Message;
use tokio::sync::watch;

use threadwarden::api::pb;
use threadwarden::classify::Classifier;
use threadwarden::crisis::Directory;
use threadwarden::domain::{CATEGORY_COUNT, Category, Scores};
use threadwarden::engine::{Engine, Sinks};
use threadwarden::policy::{
    self, Action, Event, EventKind, ForkError, Mode, Policy, Reason, ThreadState, Verdict,
};
use threadwarden::state::{StoreConfig, ThreadStore};

/// The expensive, immutable parts of an engine, built once per process.
fn parts() -> &'static (Arc<Classifier>, Arc<Directory>) {
    static PARTS: OnceLock<(Arc<Classifier>, Arc<Directory>)> = OnceLock::new();
    PARTS.get_or_init(|| {
        (
            Arc::new(Classifier::builtin()),
            Arc::new(Directory::builtin()),
        )
    })
}

fn classifier_instance() -> &'static Classifier {
    &parts().0
}

/// A fresh engine over the built-in policy with a small store (see the module header).
fn fresh_engine() -> Engine {
    let (classifier, directory) = parts();
    let (_tx, rx) = watch::channel(Arc::new(Policy::default()));
    let store = ThreadStore::new(StoreConfig {
        capacity: 1024,
        ..StoreConfig::default()
    });
    Engine::new(
        store,
        classifier.clone(),
        rx,
        directory.clone(),
        Sinks::quiet(0),
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Protobuf decoding, validation and the request path.
// ---------------------------------------------------------------------------------------------

/// Decodes `data` as a `ModerateRequest`, as a `ConversationEvent`, and as a stream of
/// length-delimited `ModerateRequest`s (one engine for the whole stream, so forks can find their
/// parents), and decides every event through the engine.
///
/// Invariants: no panic; an Ok verdict has an action in {CONTINUE, REDIRECT, END} and names the
/// event's thread; an Err has a non-empty stable code (`UPPER_SNAKE`) and agrees with
/// `validate::event`; deciding the same event again straight away gives the same action and
/// reason (idempotent replay); the response encodes and decodes back unchanged.
pub fn conversation_event(data: &[u8]) {
    if let Ok(pb::ModerateRequest { event: Some(event) }) = pb::ModerateRequest::decode(data) {
        check_event(&fresh_engine(), &event);
    }
    if let Ok(event) = pb::ConversationEvent::decode(data) {
        check_event(&fresh_engine(), &event);
    }
    let engine = fresh_engine();
    let mut buf = data;
    // Bounded: each message consumes at least its one-byte length prefix.
    while !buf.is_empty() {
        match pb::ModerateRequest::decode_length_delimited(&mut buf) {
            Ok(req) => {
                if let Some(event) = req.event {
                    check_event(&engine, &event);
                }
            }
            Err(_) => break,
        }
    }
}

fn is_stable_code(code: &str) -> bool {
    !code.is_empty()
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit())
}

fn check_event(engine: &Engine, event: &pb::ConversationEvent) {
    let valid = threadwarden::api::validate::event(event);
    let first = engine.decide(event);
    match &first {
        Ok(decided) => {
            assert!(
                valid.is_ok(),
                "the engine decided an event validation rejects"
            );
            let v = &decided.verdict;
            assert!(
                (1..=3).contains(&v.action),
                "verdict action {} is not CONTINUE, REDIRECT or END",
                v.action
            );
            assert!(
                (1..=3).contains(&v.shadow_action),
                "shadow_action {}",
                v.shadow_action
            );
            assert_ne!(v.reason, 0, "verdict reason is UNSPECIFIED");
            assert_eq!(v.thread_id, event.thread_id, "verdict names another thread");
            for c in &v.categories {
                assert!(
                    c.score.is_finite() && (0.0..=1.0).contains(&c.score),
                    "score {}",
                    c.score
                );
            }
            if v.action == pb::Action::End as i32 {
                assert!(
                    !v.thread.as_ref().is_some_and(|t| t.crisis_active)
                        || v.reason == pb::Reason::AlreadyEnded as i32,
                    "END on a thread in crisis"
                );
            }
            let response = pb::ModerateResponse {
                event_id: event.event_id.clone(),
                thread_id: event.thread_id.clone(),
                result: Some(pb::moderate_response::Result::Verdict(v.clone())),
            };
            let bytes = response.encode_to_vec();
            assert_eq!(
                pb::ModerateResponse::decode(bytes.as_slice()).as_ref(),
                Ok(&response),
                "the response does not round-trip"
            );
        }
        Err(e) => {
            assert!(
                is_stable_code(e.code()),
                "unstable error code {:?}",
                e.code()
            );
            assert!(!e.to_string().is_empty(), "error without a message");
            if let Err(v) = &valid {
                assert_eq!(v.code(), e.code(), "validation and engine disagree");
            }
            let wire: pb::EventError = e.into();
            assert!(is_stable_code(&wire.code));
        }
    }
    // A client retry after a reconnect: the same event again.
    let again = engine.decide(event);
    match (&first, &again) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                (a.verdict.action, a.verdict.reason),
                (b.verdict.action, b.verdict.reason),
                "a retried event changed its verdict"
            );
            assert_eq!(
                a.verdict.thread, b.verdict.thread,
                "a retried event changed the thread"
            );
        }
        (Err(a), Err(b)) => assert_eq!(a.code(), b.code(), "a retried event changed its error"),
        (a, b) => panic!(
            "a retried event flipped between verdict and error: {:?} then {:?}",
            a.as_ref().map(|d| d.verdict.action).map_err(|e| e.code()),
            b.as_ref().map(|d| d.verdict.action).map_err(|e| e.code())
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The normaliser and classifier.
// ---------------------------------------------------------------------------------------------

/// Classifies `data` read as UTF-8 when it is valid, and otherwise as lossy UTF-8 and as
/// UTF-16LE (which turns arbitrary bytes into arbitrary Unicode, surrogates replaced).
///
/// Invariants: no panic; every score finite and in [0, 1]; `explain(t).scores == classify(t)`
/// and `explain(t).normalized == normalize(t)`; normalising never blows the text up by more than
/// a constant factor; every hit's span lies on character boundaries inside the normalised text;
/// `classify_bounded(t, w)` is `classify(t)` when `t` fits in `w` bytes, keeps every score in
/// range and is marked truncated only when `t` is longer than `w`.
pub fn classifier(data: &[u8]) {
    match std::str::from_utf8(data) {
        Ok(text) => classify_text(text),
        Err(_) => {
            classify_text(&String::from_utf8_lossy(data));
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|p| u16::from_le_bytes([p[0], p[1]]))
                .collect();
            classify_text(&String::from_utf16_lossy(&units));
        }
    }
}

fn check_scores(what: &str, s: &Scores) {
    let named = [
        ("crisis_self", s.crisis_self),
        ("crisis_others", s.crisis_others),
        ("crisis_third_party", s.crisis_third_party),
        ("end_request", s.end_request),
        ("affirmation", s.affirmation),
    ];
    for (name, v) in named {
        assert!(
            v.is_finite() && (0.0..=1.0).contains(&v),
            "{what}: {name} = {v}"
        );
    }
    for c in Category::ALL {
        let v = s.get(c);
        assert!(
            v.is_finite() && (0.0..=1.0).contains(&v),
            "{what}: {} = {v}",
            c.name()
        );
    }
}

/// Classifies one text and checks the classifier's invariants.
pub fn classify_text(text: &str) {
    let c = classifier_instance();
    let scores = c.classify(text);
    check_scores("classify", &scores);
    let explained = c.explain(text);
    assert_eq!(
        explained.scores, scores,
        "explain(t).scores differs from classify(t)"
    );
    let normalized = threadwarden::classify::normalize(text);
    assert_eq!(
        explained.normalized, normalized,
        "explain(t).normalized differs from normalize(t)"
    );
    // NFKC expands one character to at most 18; lowercasing and mapping add little.
    assert!(
        normalized.len() <= 64 * text.len() + 64,
        "normalize blew {} bytes up to {}",
        text.len(),
        normalized.len()
    );
    let n = &explained.normalized;
    for hit in &explained.hits {
        let (start, end) = hit.span;
        assert!(
            hit.weight.is_finite(),
            "hit {} has weight {}",
            hit.rule,
            hit.weight
        );
        assert!(
            start <= end && end <= n.len() && n.is_char_boundary(start) && n.is_char_boundary(end),
            "hit {} has span {:?} in a normalised text of {} bytes",
            hit.rule,
            hit.span,
            n.len()
        );
    }
    // Windows that cut inside multi-byte characters, and the engine's own.
    let len = text.len();
    for window in [
        1,
        3,
        16,
        len / 3 + 1,
        threadwarden::engine::DEFAULT_CLASSIFY_WINDOW,
    ] {
        let bounded = c.classify_bounded(text, window);
        check_scores("classify_bounded", &bounded);
        if len <= window {
            assert_eq!(
                bounded, scores,
                "classify_bounded(t, {window}) differs though t fits"
            );
        }
        if bounded.truncated {
            assert!(
                len > window,
                "truncated at window {window} though t is {len} bytes"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The policy over arbitrary event sequences.
// ---------------------------------------------------------------------------------------------

/// Score levels around the default thresholds (0.5, 0.6, 0.7).
const LEVELS: [f32; 8] = [0.0, 0.3, 0.49, 0.5, 0.55, 0.7, 0.95, 1.0];

/// The policies a sequence may run under, chosen by its first byte.
fn policy_for(selector: u8) -> Policy {
    let mut policy = Policy::default();
    match selector % 4 {
        0 => {}
        1 => policy.mode = Mode::Shadow,
        2 => {
            policy.escalation.severe_warning_turn = 1;
            policy.escalation.warning_turn = 2;
            policy.escalation.decay_benign_turns = 1;
        }
        // The harness's model is "m": the policy is off for it.
        _ => policy.models = vec!["claude-*".into()],
    }
    policy.compile().expect("harness policies are valid")
}

/// Event ids this recent are surely still in the thread's replay ring.
const RING: usize = 4;

/// What a policy sequence reached, so that tests can tell a harness that checks nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reached {
    pub ends: usize,
    pub already_ended: usize,
    pub warnings: usize,
    pub crisis_verdicts: usize,
    pub replays: usize,
    pub forks: usize,
}

impl std::ops::AddAssign for Reached {
    fn add_assign(&mut self, o: Reached) {
        self.ends += o.ends;
        self.already_ended += o.already_ended;
        self.warnings += o.warnings;
        self.crisis_verdicts += o.crisis_verdicts;
        self.replays += o.replays;
        self.forks += o.forks;
    }
}

/// Reads bytes one at a time, yielding 0 once exhausted.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Two bytes of scores: a category with a level, and a bit set of signals.
fn read_scores(b: &mut Bytes<'_>) -> Scores {
    let head = b.next();
    let bits = b.next();
    let mut s = Scores::default();
    let category = Category::ALL[usize::from(head & 0x0f) % CATEGORY_COUNT];
    s.raise(category, LEVELS[usize::from(head >> 4) & 7]);
    let level = |on: bool, high: bool| match (on, high) {
        (false, _) => 0.0,
        (true, false) => 0.55,
        (true, true) => 0.95,
    };
    let high = bits & 0x80 != 0;
    s.crisis_self = level(bits & 0x01 != 0 && bits & 0x40 != 0, high);
    // Without 0x40 but with 0x80: a score between the suspect and the crisis thresholds.
    if bits & 0x01 != 0 && bits & 0x40 == 0 && high {
        s.crisis_self = 0.35;
    }
    s.crisis_others = level(bits & 0x02 != 0 && bits & 0x40 != 0, high);
    s.crisis_third_party = level(bits & 0x04 != 0, high);
    s.end_request = level(bits & 0x08 != 0, high);
    s.affirmation = level(bits & 0x10 != 0, high);
    s.truncated = bits & 0x20 != 0;
    s
}

/// The crisis exemption, the END lock, idempotent replay and warning-before-END, checked on
/// `decide` over the sequence of events `data` describes.
///
/// Byte 0 picks the policy (default, shadow, short quotas, or off for the model). Then each
/// step is an opcode byte: user message, assistant message (refused / end-requested bits),
/// ConfirmEnd, a retry of a recent event id, a retry of an old id, or a fork of the thread at
/// some turn (the sequence goes on on the branch); most take two bytes of scores.
///
/// The invariants are checked on `shadow_action` (what enforcement does), plus: outside enforce
/// mode the action is never END; in enforce mode `action == shadow_action`.
pub fn policy_sequence(data: &[u8]) -> Reached {
    let mut reached = Reached::default();
    let mut b = Bytes(data);
    let policy = policy_for(b.next());
    let enforcing = policy.mode == Mode::Enforce && policy.model_enabled("m");
    let mut state = ThreadState::default();
    // Every event sent on the current branch: (id, kind, scores), and each id's latest verdict.
    let mut sent: Vec<(u64, EventKind, Scores)> = Vec::new();
    let mut verdicts: HashMap<u64, Verdict> = HashMap::new();
    let mut next_id = 1u64;
    // Whether a warning REDIRECT was issued since the thread was last unwarned.
    let mut warned_since_reset = false;
    let mut now = 0u32;

    for _ in 0..512 {
        if b.is_empty() {
            break;
        }
        let op = b.next();
        now = now.wrapping_add(u32::from(op & 1));
        let fresh = |next_id: &mut u64| {
            let id = *next_id;
            *next_id += 1;
            id
        };
        let (id, kind, scores, retry) = match op % 16 {
            0..=6 => (
                fresh(&mut next_id),
                EventKind::User,
                read_scores(&mut b),
                false,
            ),
            7..=10 => {
                let flags = b.next();
                let kind = EventKind::Assistant {
                    refused: flags & 1 != 0,
                    end_requested: flags & 2 != 0,
                };
                (fresh(&mut next_id), kind, read_scores(&mut b), false)
            }
            11 => (
                fresh(&mut next_id),
                EventKind::ConfirmEnd,
                Scores::default(),
                false,
            ),
            12 | 13 if !sent.is_empty() => {
                // 12: one of the last few events (in the replay ring); 13: any earlier one.
                let back = usize::from(b.next());
                let window = if op % 16 == 12 {
                    sent.len().min(RING)
                } else {
                    sent.len()
                };
                let (id, kind, scores) = sent[sent.len() - 1 - back % window];
                (id, kind, scores, true)
            }
            14 => {
                let after = u32::from(b.next()) % (state.turn.saturating_add(2));
                match state.fork(after) {
                    Ok(branch) => {
                        assert!(!branch.ended(), "a fork is never ended");
                        assert_eq!(branch.turn, after, "a fork starts at after_turn");
                        assert_eq!(
                            branch.crisis_kind(),
                            state.crisis_kind(),
                            "a fork inherits the parent's crisis"
                        );
                        state = branch;
                        reached.forks += 1;
                        sent.clear();
                        verdicts.clear();
                        // A warned branch inherits a warning issued earlier in its lineage.
                        warned_since_reset = state.summary().warned;
                    }
                    Err(ForkError::FutureTurn { .. }) => {
                        assert!(
                            after > state.turn,
                            "FutureTurn for turn {after} of {}",
                            state.turn
                        );
                        continue;
                    }
                    Err(ForkError::TooOld { .. }) => {
                        assert!(after > 0 && after <= state.turn, "TooOld for turn {after}");
                        continue;
                    }
                }
                (
                    fresh(&mut next_id),
                    EventKind::Fork,
                    Scores::default(),
                    false,
                )
            }
            _ => continue,
        };

        let before = state.clone();
        let ringed = before.has_event(id);
        let event = Event {
            id,
            model: "m",
            rollout_hash: u64::from(op),
            kind,
        };
        let verdict = policy::decide(&policy, &mut state, &event, &scores, now);
        let after = &state;

        // Idempotency: an id in the ring is answered from it, with nothing changed.
        assert_eq!(
            verdict.replayed, ringed,
            "replayed iff the id was in the ring"
        );
        if verdict.replayed {
            assert_eq!(&before, after, "a replayed event changed the state");
            let original = verdicts
                .get(&id)
                .expect("a ringed id was sent on this branch");
            // The decision is the original one; the summary is the thread's as it is now, and
            // `truncated` describes the retried text.
            assert_eq!(
                Verdict {
                    replayed: false,
                    summary: original.summary,
                    truncated: original.truncated,
                    ..verdict
                },
                *original,
                "a replayed event got another decision"
            );
            assert_eq!(
                verdict.summary,
                after.summary(),
                "a replayed verdict's summary is stale"
            );
            reached.replays += 1;
            continue;
        }

        let shadow = verdict.shadow_action;
        if enforcing {
            assert_eq!(
                verdict.action, shadow,
                "enforced action differs from shadow_action"
            );
            assert!(verdict.enforced);
        } else {
            assert_ne!(verdict.action, Action::End, "END outside enforcement");
            assert!(!verdict.enforced);
        }

        // Never END while crisis is active.
        if before.crisis_kind().is_some() && !before.ended() {
            assert_ne!(
                shadow,
                Action::End,
                "END while crisis is active: {verdict:?}"
            );
        }
        if shadow == Action::End && verdict.reason != Reason::AlreadyEnded {
            assert!(
                !verdict.summary.crisis_active,
                "END with crisis active: {verdict:?}"
            );
        }

        // Never END while crisis is suspected; never warn then.
        if before.crisis_suspected() && !before.ended() && !verdict.replayed {
            assert_ne!(
                shadow,
                Action::End,
                "END while crisis is suspected: {verdict:?}"
            );
            assert!(
                !verdict.warning,
                "a warning once an END is impossible: {verdict:?}"
            );
        }

        // END is sticky, and an ended thread does not change (but for its activity time).
        if before.ended() {
            assert!(after.ended(), "an ended thread was unended");
            assert_eq!(
                (shadow, verdict.reason),
                (Action::End, Reason::AlreadyEnded),
                "an ended thread answered otherwise"
            );
            let mut unchanged = before.clone();
            unchanged.last_active = after.last_active;
            assert_eq!(&unchanged, after, "an ended thread changed");
        }
        assert_eq!(
            after.ended(),
            shadow == Action::End || before.ended(),
            "ENDED flag vs END"
        );

        // A warning REDIRECT precedes every PERSISTENT_HARM / PERSISTENT_ABUSE END.
        if !before.summary().warned {
            warned_since_reset = false;
        }
        if verdict.warning {
            assert_eq!(
                shadow,
                Action::Redirect,
                "a warning on a non-REDIRECT verdict"
            );
            warned_since_reset = true;
        }
        if !before.summary().warned && after.summary().warned {
            assert!(
                verdict.warning,
                "the thread became warned without a warning verdict"
            );
        }
        if shadow == Action::End
            && matches!(
                verdict.reason,
                Reason::PersistentHarm | Reason::PersistentAbuse
            )
        {
            assert!(
                warned_since_reset,
                "END {:?} without a prior warning",
                verdict.reason
            );
        }

        assert_eq!(
            verdict.summary,
            after.summary(),
            "the verdict's summary is stale"
        );
        if !retry || !verdicts.contains_key(&id) {
            sent.push((id, kind, scores));
        }
        verdicts.insert(id, verdict);
        reached.ends +=
            usize::from(shadow == Action::End && verdict.reason != Reason::AlreadyEnded);
        reached.already_ended += usize::from(verdict.reason == Reason::AlreadyEnded);
        reached.warnings += usize::from(verdict.warning);
        reached.crisis_verdicts += usize::from(verdict.crisis.is_some());
    }
    reached
}
