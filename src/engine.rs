//! The request path, once: validate → classify (pure, outside any lock) → take the thread's
//! entry → `policy::decide` → encode. Shared by `Moderate`, `Evaluate` and `replay`.
//!
//! Knows the wire types (prost structs, no tonic transport) so that replay and the gRPC service
//! produce byte-identical verdicts. Logs no text: only hashed thread keys and decisions.

use std::sync::Arc;

use tokio::sync::watch;

use crate::api::convert::{Dress, verdict_to_pb};
use crate::api::{EventError, pb, validate};
use crate::classify::Classifier;
use crate::crisis::Directory;
use crate::domain::Scores;
use crate::policy::{self, Action, Event, EventKind, ForkError, Policy};
use crate::state::{ThreadKey, ThreadStore};

/// Bytes of text classified from each end of an over-long message.
pub const DEFAULT_CLASSIFY_WINDOW: usize = 32 * 1024;

/// What one decided event produced, for the caller and for telemetry.
#[derive(Debug)]
pub struct Decided {
    pub verdict: pb::Verdict,
    pub decision: policy::Verdict,
    pub scores: Scores,
}

/// The decision engine: store, classifier, policy and crisis directory.
pub struct Engine {
    store: ThreadStore,
    classifier: Arc<Classifier>,
    policy: watch::Receiver<Arc<Policy>>,
    directory: Arc<Directory>,
    classify_window: usize,
    hash_seed: u64,
}

impl Engine {
    /// An engine over its parts. `hash_seed` keys the thread hashes written to logs.
    pub fn new(
        store: ThreadStore,
        classifier: Arc<Classifier>,
        policy: watch::Receiver<Arc<Policy>>,
        directory: Arc<Directory>,
        hash_seed: u64,
    ) -> Engine {
        Engine {
            store,
            classifier,
            policy,
            directory,
            classify_window: DEFAULT_CLASSIFY_WINDOW,
            hash_seed,
        }
    }

    /// The thread store.
    pub fn store(&self) -> &ThreadStore {
        &self.store
    }

    /// The running policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.borrow().clone()
    }

    /// A keyed hash of a thread key, safe to log (never the raw ids).
    pub fn log_hash(&self, key: ThreadKey) -> String {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(&key.0.to_le_bytes(), self.hash_seed);
        format!("{h:016x}")
    }

    /// Decides one event.
    pub fn decide(&self, event: &pb::ConversationEvent) -> Result<Decided, EventError> {
        use pb::conversation_event::Payload;
        let payload = validate::event(event)?;
        let (kind, text) = match payload {
            Payload::UserMessage(m) => (EventKind::User, Some(m.text.as_str())),
            Payload::AssistantMessage(m) => (
                EventKind::Assistant {
                    refused: m.refused,
                    end_requested: m.end_conversation_requested,
                },
                Some(m.text.as_str()),
            ),
            Payload::Fork(_) => (EventKind::Fork, None),
            Payload::ConfirmEnd(_) => (EventKind::ConfirmEnd, None),
        };
        let mut scores = match text {
            Some(t) => self.classifier.classify_bounded(t, self.classify_window),
            None => Scores::default(),
        };
        validate::merge_signals(&mut scores, &event.signals);

        let policy = self.policy();
        let key = ThreadKey::new(&event.tenant_id, &event.thread_id);
        let domain_event = Event {
            id: event_id_hash(&event.event_id),
            model: &event.model,
            rollout_hash: key.rollout_hash(),
            kind,
        };
        let now = self.store.now();
        let decide = |state: &mut policy::ThreadState| {
            policy::decide(&policy, state, &domain_event, &scores, now)
        };
        let decision = match payload {
            Payload::Fork(fork) => self.fork(key, event, fork, decide)?,
            _ => self.store.with_thread(key, decide),
        };
        let verdict = verdict_to_pb(
            &decision,
            &Dress {
                policy: &policy,
                directory: &self.directory,
                thread_id: &event.thread_id,
                locale: &event.locale,
                scores: &scores,
            },
        );
        self.log_decision(key, event, &decision, &policy);
        Ok(Decided {
            verdict,
            decision,
            scores,
        })
    }

    fn fork(
        &self,
        key: ThreadKey,
        event: &pb::ConversationEvent,
        fork: &pb::ForkThread,
        decide: impl FnOnce(&mut policy::ThreadState) -> policy::Verdict,
    ) -> Result<policy::Verdict, EventError> {
        let id = event_id_hash(&event.event_id);
        // A retried fork finds its own branch: answer it as a replay.
        let mut decide = Some(decide);
        match self.store.with_existing(key, |state| {
            state
                .has_event(id)
                .then(|| (decide.take().expect("called once"))(state))
        }) {
            Some(Some(verdict)) => return Ok(verdict),
            Some(None) => {
                return Err(EventError::AlreadyExists(format!(
                    "thread_id {:?} already exists; a fork must name a new branch",
                    event.thread_id
                )));
            }
            None => {}
        }
        // Read the parent first and release it: holding two entries could deadlock on a shard.
        let parent_key = ThreadKey::new(&event.tenant_id, &fork.parent_thread_id);
        let parent = self.store.get(parent_key).ok_or_else(|| {
            EventError::NotFound(format!(
                "fork.parent_thread_id {:?} is not a known thread",
                fork.parent_thread_id
            ))
        })?;
        let branch = parent.fork(fork.after_turn).map_err(|e| match e {
            ForkError::FutureTurn { .. } => EventError::invalid("fork.after_turn", e.to_string()),
            ForkError::TooOld { .. } => EventError::FailedPrecondition(format!("fork.after_turn: {e}")),
        })?;
        self.store
            .insert_new(key, branch, decide.take().expect("not yet called"))
            .map_err(|_| {
                EventError::AlreadyExists(format!("thread_id {:?} already exists", event.thread_id))
            })
    }

    /// The summary of a known thread.
    pub fn thread(&self, tenant_id: &str, thread_id: &str) -> Result<pb::ThreadSummary, EventError> {
        validate::thread_ref(tenant_id, thread_id)?;
        let state = self
            .store
            .get(ThreadKey::new(tenant_id, thread_id))
            .ok_or_else(|| EventError::NotFound(format!("thread_id {thread_id:?} is not a known thread")))?;
        Ok(crate::api::convert::summary_to_pb(&state.summary()))
    }

    /// Records feedback on a known thread.
    pub fn feedback(&self, req: &pb::SubmitFeedbackRequest) -> Result<(), EventError> {
        let rating = validate::feedback(req)?;
        let key = ThreadKey::new(&req.tenant_id, &req.thread_id);
        let summary = self
            .store
            .with_existing(key, |s| s.summary())
            .ok_or_else(|| {
                EventError::NotFound(format!("thread_id {:?} is not a known thread", req.thread_id))
            })?;
        tracing::info!(
            target: "threadwarden::decision",
            record = "feedback",
            event_id = %req.event_id,
            thread = %self.log_hash(key),
            rating = rating.as_str_name(),
            has_comment = !req.comment.is_empty(),
            ended = summary.ended,
            policy_version = %self.policy().version,
        );
        Ok(())
    }

    fn log_decision(
        &self,
        key: ThreadKey,
        event: &pb::ConversationEvent,
        v: &policy::Verdict,
        policy: &Policy,
    ) {
        let notable = v.shadow_action == Action::End
            || v.warning
            || v.crisis.is_some()
            || v.end_denied.is_some();
        if !notable || v.replayed {
            return;
        }
        tracing::info!(
            target: "threadwarden::decision",
            record = "decision",
            event_id = %event.event_id,
            thread = %self.log_hash(key),
            action = v.action.name(),
            shadow_action = v.shadow_action.name(),
            reason = v.reason.name(),
            warning = v.warning,
            crisis = v.crisis.map(|k| k.name()).unwrap_or(""),
            end_denied = v.end_denied.map(|d| d.code()).unwrap_or(""),
            category = v.category.map(|c| c.name()).unwrap_or(""),
            turn = v.summary.turn,
            policy_version = %policy.version,
        );
    }
}

/// The replay-ring id of an event id (never 0, which marks an empty slot).
pub fn event_id_hash(event_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(event_id.as_bytes()).max(1)
}
