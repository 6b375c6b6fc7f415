//! Conversations through the engine of `replay::offline_engine` (same parts, a chosen classifier): single turns on fresh threads, replays of recorded
//! dialogues, and a simulated chat server that honours the verdicts.

use std::cell::Cell;

use serde_json::{Value, json};

use threadwarden::api::pb;
use threadwarden::engine::Engine;
use threadwarden::policy::Policy;

use super::Single;
use super::metrics::rate;

/// One turn of a recorded dialogue.
#[derive(Clone, Debug)]
pub struct Turn {
    pub user: bool,
    pub text: String,
}

/// What happened to one conversation.
#[derive(Clone, Debug, Default)]
pub struct ConvOutcome {
    pub user_turns: u32,
    pub redirects: u32,
    pub assistant_redirects: u32,
    pub assistant_turns: u32,
    /// The user turn (1-based) that got END, if any.
    pub ended_at: Option<u32>,
    /// A warning was issued before the END.
    pub warned: bool,
    /// A verdict carried crisis support, or the thread was crisis-suspected.
    pub crisis_seen: bool,
}

/// The simulator: one engine, fresh thread ids per conversation.
pub struct Sim {
    engine: Engine,
    next: Cell<u64>,
    ends_after_crisis: Cell<u64>,
}

const REFUSAL: &str = "I can't help with that.";
const ANSWER: &str = "Sure, here is some general information.";

impl Sim {
    /// A simulator over the offline engine with `policy`.
    pub fn new(
        policy: Policy,
        classifier: std::sync::Arc<threadwarden::classify::Classifier>,
    ) -> Sim {
        let (_tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(policy));
        Sim {
            engine: Engine::new(
                threadwarden::state::ThreadStore::new(threadwarden::state::StoreConfig::default()),
                classifier,
                rx,
                std::sync::Arc::new(threadwarden::crisis::Directory::builtin()),
                threadwarden::engine::Sinks::quiet(0),
            ),
            next: Cell::new(0),
            ends_after_crisis: Cell::new(0),
        }
    }

    fn thread(&self) -> String {
        let n = self.next.get();
        self.next.set(n + 1);
        format!("eval-{n}")
    }

    fn send(
        &self,
        thread: &str,
        n: u32,
        payload: pb::conversation_event::Payload,
    ) -> Option<threadwarden::engine::Decided> {
        let event = pb::ConversationEvent {
            event_id: format!("e{n}"),
            thread_id: thread.to_string(),
            tenant_id: "eval".into(),
            model: String::new(),
            locale: "en-GB".into(),
            payload: Some(payload),
            signals: Vec::new(),
            traceparent: String::new(),
        };
        self.engine.decide(&event).ok()
    }

    fn user(&self, thread: &str, n: u32, text: &str) -> Option<threadwarden::engine::Decided> {
        self.send(
            thread,
            n,
            pb::conversation_event::Payload::UserMessage(pb::UserMessage { text: text.into() }),
        )
    }

    fn assistant(
        &self,
        thread: &str,
        n: u32,
        text: &str,
        refused: bool,
    ) -> Option<threadwarden::engine::Decided> {
        self.send(
            thread,
            n,
            pb::conversation_event::Payload::AssistantMessage(pb::AssistantMessage {
                text: text.into(),
                refused,
                end_conversation_requested: false,
            }),
        )
    }

    /// One user message on a fresh thread.
    pub fn single(&self, text: &str) -> Single {
        let t = self.thread();
        match self.user(&t, 0, text) {
            Some(d) => Single {
                scores: d.scores,
                redirect: d.verdict.action == pb::Action::Redirect as i32,
                crisis: d.verdict.crisis.is_some(),
            },
            None => Single {
                scores: Default::default(),
                redirect: false,
                crisis: false,
            },
        }
    }

    fn note(&self, out: &mut ConvOutcome, v: &pb::Verdict, user: bool) -> bool {
        if v.crisis.is_some()
            || v.thread
                .as_ref()
                .is_some_and(|t| t.crisis_active || t.crisis_suspected)
        {
            out.crisis_seen = true;
        }
        if v.redirect.as_ref().is_some_and(|r| r.warning) {
            out.warned = true;
        }
        if v.action == pb::Action::End as i32 {
            if user {
                out.ended_at = Some(out.user_turns);
            } else {
                out.ended_at = Some(out.user_turns.max(1));
            }
            if out.crisis_seen {
                self.ends_after_crisis.set(self.ends_after_crisis.get() + 1);
            }
            return true;
        }
        if v.action == pb::Action::Redirect as i32 {
            if user {
                out.redirects += 1;
            } else {
                out.assistant_redirects += 1;
            }
        }
        false
    }

    /// Replays a recorded dialogue (both roles as recorded), stopping at an END.
    pub fn replay(&self, turns: &[Turn]) -> ConvOutcome {
        let t = self.thread();
        let mut out = ConvOutcome::default();
        for (n, turn) in turns.iter().enumerate() {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            let d = if turn.user {
                out.user_turns += 1;
                self.user(&t, n, &turn.text)
            } else {
                out.assistant_turns += 1;
                self.assistant(&t, n, &turn.text, false)
            };
            if let Some(d) = d
                && self.note(&mut out, &d.verdict, turn.user)
            {
                break;
            }
        }
        out
    }

    /// Sends the user turns of `turns` as a chat server that honours verdicts would: after a
    /// REDIRECT the assistant refuses (`refused = true`), otherwise it answers; stops at END.
    pub fn persist(&self, user_turns: &[String]) -> ConvOutcome {
        let t = self.thread();
        let mut out = ConvOutcome::default();
        let mut n = 0u32;
        for text in user_turns {
            out.user_turns += 1;
            let Some(d) = self.user(&t, n, text) else {
                continue;
            };
            n += 1;
            if self.note(&mut out, &d.verdict, true) {
                break;
            }
            let refused = d.verdict.action == pb::Action::Redirect as i32;
            let reply = if refused { REFUSAL } else { ANSWER };
            out.assistant_turns += 1;
            if let Some(d) = self.assistant(&t, n, reply, refused) {
                n += 1;
                if self.note(&mut out, &d.verdict, false) {
                    break;
                }
            }
        }
        out
    }

    /// ENDs that followed a crisis signal, over every conversation this simulator ran.
    pub fn ends_after_crisis(&self) -> u64 {
        self.ends_after_crisis.get()
    }
}

/// Rates of END and REDIRECT per conversation and per user turn.
pub fn summarise_replay(name: &str, outs: &[ConvOutcome]) -> Value {
    let convs = outs.len();
    let turns: u64 = outs.iter().map(|o| u64::from(o.user_turns)).sum();
    let a_turns: u64 = outs.iter().map(|o| u64::from(o.assistant_turns)).sum();
    let ended = outs.iter().filter(|o| o.ended_at.is_some()).count();
    let redirected = outs.iter().filter(|o| o.redirects > 0).count();
    let redirects: u64 = outs.iter().map(|o| u64::from(o.redirects)).sum();
    let a_red: u64 = outs.iter().map(|o| u64::from(o.assistant_redirects)).sum();
    json!({
        "set": name, "conversations": convs, "user_turns": turns,
        "ended": ended, "end_rate_conv": rate(ended, convs),
        "redirect_rate_conv": rate(redirected, convs),
        "end_rate_turn": rate(ended, turns as usize),
        "redirect_rate_turn": rate(redirects as usize, turns as usize),
        "assistant_redirect_rate_turn": rate(a_red as usize, a_turns as usize),
    })
}

/// Share ended, ended by turn 6, warned before the END, and the END turn histogram.
pub fn summarise_persistence(name: &str, outs: &[ConvOutcome]) -> Value {
    let n = outs.len();
    let ended = outs.iter().filter(|o| o.ended_at.is_some()).count();
    let by6 = outs
        .iter()
        .filter(|o| o.ended_at.is_some_and(|t| t <= 6) && o.warned)
        .count();
    let warned = outs
        .iter()
        .filter(|o| o.ended_at.is_some() && o.warned)
        .count();
    let mut hist = std::collections::BTreeMap::new();
    for o in outs {
        let key = o
            .ended_at
            .map(|t| t.to_string())
            .unwrap_or_else(|| "never".into());
        *hist.entry(key).or_insert(0u32) += 1;
    }
    json!({
        "set": name, "conversations": n, "ended": rate(ended, n),
        "ended_by_turn_6": rate(by6, n), "warned_before_end": rate(warned, ended.max(1)),
        "end_turns": hist,
    })
}
