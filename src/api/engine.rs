//! The request path, once: validate → classify (pure, outside any lock) → take the thread's
//! entry → `policy::decide` → encode. Shared by `Moderate`, `Evaluate` and `replay`.
//!
//! Knows the wire types (prost structs, no tonic transport) so that replay and the gRPC service
//! produce byte-identical verdicts. Logs no text: only hashed thread keys and decisions.
//!
//! Also the welfare figures (DESIGN §7): what the assistant was put through, per model label.
//! A thread's harmful streak is its escalation episode (`esc.redirects`: harmful user turns and
//! counted refusals since the last decay); it closes when decay resets it (`turned`), when the
//! thread ENDs (`ended`), or when the store forgets the thread with it open (`idle`, through
//! the store's forget hook). The policy stays pure: the engine reads the state before and after.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;

use crate::api::cascade::{self, Ask};
use crate::api::convert::{Dress, verdict_to_pb};
use crate::api::{EventError, pb, validate};
use crate::classify::Classifier;
use crate::classify::external::{External, Failure};
use crate::crisis::Directory;
use crate::domain::{CrisisKind, Scores};
use crate::policy::{self, Action, Event, EventKind, ForkError, Policy};
use crate::state::shared::{Created, SharedStore};
use crate::state::{ThreadKey, ThreadStore};
use crate::telemetry::Metrics;
use crate::telemetry::decision_log::DecisionLog;
use crate::telemetry::metrics::{DecisionRecord, StreakOutcome};

/// Bytes of text classified from each end of an over-long message.
pub const DEFAULT_CLASSIFY_WINDOW: usize = 32 * 1024;

/// What one decided event produced, for the caller and for telemetry.
#[derive(Debug)]
pub struct Decided {
    pub verdict: pb::Verdict,
    pub decision: policy::Verdict,
    pub scores: Scores,
    /// The thread's key; `Engine::log_hash` turns it into the keyed hash telemetry may carry.
    pub thread_key: ThreadKey,
    /// Time spent classifying the text.
    pub classify_time: Duration,
    /// Time from the start of validation to the encoded verdict.
    pub decide_time: Duration,
}

/// An event validated and classified, ready to be decided on its thread's state.
struct Prepared<'e> {
    tenant_id: &'e str,
    thread_id: &'e str,
    started: Instant,
    payload: &'e pb::conversation_event::Payload,
    text: Option<&'e str>,
    scores: Scores,
    classify_time: Duration,
    policy: Arc<Policy>,
    key: ThreadKey,
    event: Event<'e>,
    now: u32,
    /// The welfare slot of the event's model, looked up only by an event that needs it.
    model_slot: OnceLock<u8>,
    /// What the external tier did (`Unspecified` while none is configured).
    external: pb::ExternalStatus,
}

/// What deciding did to the thread.
struct Applied {
    verdict: policy::Verdict,
    /// The crisis the thread entered on this event, if it was not in one.
    entered_crisis: Option<CrisisKind>,
    /// The thread became crisis-suspected (without a crisis) on this event.
    entered_suspicion: bool,
    /// A harmful streak that closed on this event, and the harmful turns it reached.
    streak: Option<(StreakOutcome, u8)>,
}

impl Prepared<'_> {
    fn model_slot(&self, welfare: &crate::telemetry::metrics::Welfare) -> u8 {
        *self
            .model_slot
            .get_or_init(|| welfare.slot(self.policy.welfare_label(self.event.model)))
    }

    /// Decides the event on `state` (pure but for the model's welfare slot; the shared backend
    /// may run it more than once, on newer states, until its write wins).
    fn step(
        &self,
        state: &mut policy::ThreadState,
        welfare: &crate::telemetry::metrics::Welfare,
    ) -> Applied {
        let before = state.crisis_kind();
        let suspected_before = state.crisis_suspected();
        let streak_before = state.esc.redirects;
        let verdict = policy::decide(&self.policy, state, &self.event, &self.scores, self.now);
        let mut streak = None;
        if !verdict.replayed {
            let streak_after = state.esc.redirects;
            if streak_after > streak_before {
                // The streak is the latest model's to carry if the store forgets it.
                state.set_model_slot(self.model_slot(welfare));
            }
            if streak_before > 0 && streak_after == 0 {
                streak = Some((StreakOutcome::Turned, streak_before));
            }
            if ends(&verdict) && streak_after > 0 {
                streak = Some((StreakOutcome::Ended, streak_after));
            }
        }
        Applied {
            verdict,
            entered_crisis: before.is_none().then(|| state.crisis_kind()).flatten(),
            entered_suspicion: !suspected_before
                && state.crisis_suspected()
                && state.crisis_kind().is_none(),
            streak,
        }
    }
}

/// A thread the request names is unknown.
fn unknown_thread(thread_id: &str) -> EventError {
    EventError::NotFound(format!("thread_id {thread_id:?} is not a known thread"))
}

/// A fork's branch id is taken.
fn branch_taken(thread_id: &str) -> EventError {
    EventError::AlreadyExists(format!(
        "thread_id {thread_id:?} already exists; a fork must name a new branch"
    ))
}

/// A fork's parent is unknown.
fn unknown_parent(fork: &pb::ForkThread) -> EventError {
    EventError::NotFound(format!(
        "fork.parent_thread_id {:?} is not a known thread",
        fork.parent_thread_id
    ))
}

/// The key of a fork's parent (same tenant).
fn parent_key(prep: &Prepared<'_>, fork: &pb::ForkThread) -> ThreadKey {
    ThreadKey::new(prep.tenant_id, &fork.parent_thread_id)
}

/// The branch a fork starts from, or the error that `after_turn` earns.
fn branch_of(
    parent: &policy::ThreadState,
    after_turn: u32,
) -> Result<policy::ThreadState, EventError> {
    parent.fork(after_turn).map_err(|e| match e {
        ForkError::FutureTurn { .. } => EventError::invalid("fork.after_turn", e.to_string()),
        ForkError::TooOld { .. } => EventError::FailedPrecondition(format!("fork.after_turn: {e}")),
    })
}

/// The engine's telemetry sinks.
#[derive(Clone)]
pub struct Sinks {
    pub metrics: Arc<Metrics>,
    pub decision_log: DecisionLog,
    /// Crisis webhook, when configured.
    pub notifier: Option<crate::crisis::notifier::Notifier>,
    /// Seed of the keyed hash that stands for thread ids in telemetry.
    pub hash_seed: u64,
}

impl Sinks {
    /// Metrics only: no decision log.
    pub fn quiet(hash_seed: u64) -> Sinks {
        let metrics = Arc::new(Metrics::default());
        Sinks {
            decision_log: DecisionLog::off(metrics.clone()),
            metrics,
            notifier: None,
            hash_seed,
        }
    }
}

/// The decision engine: store, classifier, policy and crisis directory.
pub struct Engine {
    store: ThreadStore,
    classifier: Arc<Classifier>,
    policy: watch::Receiver<Arc<Policy>>,
    directory: Arc<Directory>,
    classify_window: usize,
    sinks: Sinks,
    /// Thread state shared with other replicas (Redis); `store` is then the local copy.
    shared: Option<Arc<SharedStore>>,
    /// Whether the store forgetting a thread closes its harmful streak as `idle` (not with a
    /// shared backend).
    idle_closes: Arc<AtomicBool>,
    /// The external tier's client, built at start (or at first use after a reload turned the
    /// tier on).
    external: OnceLock<External>,
    /// Building the client after a reload failed (and was logged).
    external_unbuilt: AtomicBool,
}

impl Engine {
    /// An engine over its parts.
    pub fn new(
        store: ThreadStore,
        classifier: Arc<Classifier>,
        policy: watch::Receiver<Arc<Policy>>,
        directory: Arc<Directory>,
        sinks: Sinks,
    ) -> Engine {
        // The policy's models take the first slots, in its order (`App::build` registers them
        // before restoring a state file; this covers engines built without one).
        for label in policy.borrow().welfare_labels() {
            sinks.metrics.welfare.slot(Some(label));
        }
        let idle_closes = Arc::new(AtomicBool::new(true));
        store.on_forget(forget_hook(&sinks, idle_closes.clone()));
        Engine {
            store,
            classifier,
            policy,
            directory,
            classify_window: DEFAULT_CLASSIFY_WINDOW,
            sinks,
            shared: None,
            idle_closes,
            external: OnceLock::new(),
            external_unbuilt: AtomicBool::new(false),
        }
    }

    /// Asks the external tier through `external` (built from the policy's section at start).
    pub fn with_external(self, external: External) -> Engine {
        let _ = self.external.set(external);
        self
    }

    /// Whether events must be decided by `decide_async`: a shared state backend, or an
    /// external tier in the running policy.
    pub fn is_async(&self) -> bool {
        self.shared.is_some() || self.policy.borrow().classify.external.enabled()
    }

    /// Keeps thread state in the shared backend; the engine's own store becomes its local copy.
    pub fn with_shared(mut self, shared: Arc<SharedStore>) -> Engine {
        // The local copy forgetting a thread says nothing of the thread, which may go on at
        // another replica; Redis expires idle threads unseen. No `idle` streak closes here.
        self.idle_closes.store(false, Ordering::Relaxed);
        self.shared = Some(shared);
        self
    }

    /// The metrics this engine records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.sinks.metrics
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
        log_hash(self.sinks.hash_seed, key)
    }

    /// Decides one event; counts it, and logs notable decisions.
    pub fn decide(&self, event: &pb::ConversationEvent) -> Result<Decided, EventError> {
        self.counted(self.decide_inner(event))
    }

    fn decide_inner(&self, event: &pb::ConversationEvent) -> Result<Decided, EventError> {
        let prep = self.prepare(event)?;
        let applied = self.apply_local(&prep)?;
        Ok(self.finish(event, prep, applied, false))
    }

    /// Decides a prepared event on the local store.
    fn apply_local(&self, prep: &Prepared<'_>) -> Result<Applied, EventError> {
        use pb::conversation_event::Payload;
        let welfare = &self.sinks.metrics.welfare;
        let step = |state: &mut policy::ThreadState| prep.step(state, welfare);
        match prep.payload {
            Payload::Fork(fork) => self.fork(prep, fork, step),
            _ => Ok(self.store.with_thread(prep.key, step)),
        }
    }

    /// Decides one event, asking the external tier when the running policy says so, against
    /// the shared state backend when there is one. `context` is the thread's previous
    /// assistant turn, when the caller's stream carried it (sent only with a user message).
    pub async fn decide_async(
        &self,
        event: &pb::ConversationEvent,
        context: Option<&str>,
    ) -> Result<Decided, EventError> {
        self.counted(self.decide_async_inner(event, context).await)
    }

    async fn decide_async_inner(
        &self,
        event: &pb::ConversationEvent,
        context: Option<&str>,
    ) -> Result<Decided, EventError> {
        use pb::conversation_event::Payload;
        let mut prep = self.prepare(event)?;
        self.consult(&mut prep, context).await;
        let Some(shared) = self.shared.as_ref() else {
            let applied = self.apply_local(&prep)?;
            return Ok(self.finish(event, prep, applied, false));
        };
        let welfare = &self.sinks.metrics.welfare;
        let step = |state: &mut policy::ThreadState| prep.step(state, welfare);
        let (applied, degraded) = match prep.payload {
            Payload::Fork(fork) => self.fork_shared(shared, &prep, fork, step).await?,
            _ => shared.update(&self.store, prep.key, step).await?,
        };
        Ok(self.finish(event, prep, applied, degraded))
    }

    /// The external tier's client for the running policy, built at first use if the tier was
    /// turned on by a reload; `None` if it cannot be built (logged, counted as a connect error).
    fn external_client(&self) -> Option<&External> {
        if let Some(e) = self.external.get() {
            return Some(e);
        }
        let policy = self.policy();
        match External::new(&policy.classify.external, self.sinks.metrics.clone()) {
            Ok(e) => Some(self.external.get_or_init(|| e)),
            Err(e) => {
                // Tried again on the next event (a fixed key file is picked up); logged once.
                if !self.external_unbuilt.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "external tier: the client cannot be built; the built-in tiers decide");
                }
                None
            }
        }
    }

    /// The external tier (DESIGN §4, tier 3): asks it about a user message when `when` says
    /// so (`api::cascade::ask`, then the thread's local state) and combines its answer into
    /// the prepared scores. Any failure leaves the built-in scores; it is counted by cause.
    async fn consult(&self, prep: &mut Prepared<'_>, context: Option<&str>) {
        let policy = prep.policy.clone();
        let config = &policy.classify.external;
        let (EventKind::User, Some(text)) = (prep.event.kind, prep.text) else {
            return;
        };
        if !config.enabled() {
            return;
        }
        let metrics = &self.sinks.metrics.external;
        prep.external = pb::ExternalStatus::Skipped;
        let mut ask = cascade::ask(config, &prep.scores);
        if ask == Ask::No {
            metrics.skipped();
            return;
        }
        // The thread as this replica knows it: a replay is never sent (it must change
        // nothing), and `uncertain` looks at crisis suspicion and at one step from END.
        let (id, scores) = (prep.event.id, &prep.scores);
        let seen = self.store.with_existing(prep.key, |state| {
            (
                state.has_event(id),
                policy::would_end(&policy, state, scores),
                cascade::ask_on_thread(state, scores),
            )
        });
        let mut would_end = false;
        if let Some((replay, ends, on_thread)) = seen {
            if replay {
                ask = Ask::No;
            }
            would_end = ends;
            if ask == Ask::IfThread && on_thread {
                ask = Ask::Yes;
            }
        }
        if ask != Ask::Yes {
            metrics.skipped();
            return;
        }
        let Some(external) = self.external_client() else {
            metrics.refused(Failure::Connect);
            prep.external = pb::ExternalStatus::ConnectError;
            return;
        };
        let context = context.filter(|_| config.context);
        match external.judge(config, text, context).await {
            Ok(judgement) => {
                metrics.unknown_codes(judgement.unknown_codes);
                let merged = cascade::merge(&policy, config, &prep.scores, &judgement, would_end);
                metrics.agreement(merged.agreed);
                if let Some(confirmed) = merged.confirmed {
                    metrics.confirmation(confirmed);
                }
                prep.scores = merged.scores;
                prep.external = match (merged.confirmed, merged.agreed) {
                    (Some(false), _) => pb::ExternalStatus::EndVetoed,
                    (_, true) => pb::ExternalStatus::Agreed,
                    (_, false) => pb::ExternalStatus::Disagreed,
                };
            }
            Err(failure) => prep.external = external_status(failure),
        }
    }

    /// The shared state backend, when the engine has one.
    pub fn shared(&self) -> Option<&Arc<SharedStore>> {
        self.shared.as_ref()
    }

    /// Validates and classifies an event: everything before the thread's state is touched.
    fn prepare<'e>(&self, event: &'e pb::ConversationEvent) -> Result<Prepared<'e>, EventError> {
        use pb::conversation_event::Payload;
        let started = Instant::now();
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
        let author = match kind {
            EventKind::Assistant { .. } => crate::classify::Author::Assistant,
            _ => crate::classify::Author::User,
        };
        let mut scores = match text {
            Some(t) => self
                .classifier
                .classify_bounded_by(t, self.classify_window, author),
            None => Scores::default(),
        };
        let classify_time = started.elapsed();
        validate::merge_signals(&mut scores, &event.signals);
        let key = ThreadKey::new(&event.tenant_id, &event.thread_id);
        Ok(Prepared {
            tenant_id: &event.tenant_id,
            thread_id: &event.thread_id,
            started,
            payload,
            text,
            scores,
            classify_time,
            policy: self.policy(),
            key,
            event: Event {
                id: event_id_hash(&event.event_id),
                model: &event.model,
                rollout_hash: key.rollout_hash(),
                kind,
            },
            now: self.store.now(),
            model_slot: OnceLock::new(),
            external: pb::ExternalStatus::Unspecified,
        })
    }

    /// Dresses, counts and logs a decision.
    fn finish(
        &self,
        event: &pb::ConversationEvent,
        prep: Prepared<'_>,
        applied: Applied,
        degraded: bool,
    ) -> Decided {
        use pb::conversation_event::Payload;
        let welfare = &self.sinks.metrics.welfare;
        let model_slot = || prep.model_slot(welfare);
        let kind = prep.event.kind;
        let Prepared {
            started,
            payload,
            text,
            scores,
            classify_time,
            ref policy,
            key,
            ..
        } = prep;
        let Applied {
            verdict: decision,
            entered_crisis,
            entered_suspicion,
            streak,
        } = applied;
        let mut verdict = verdict_to_pb(
            &decision,
            &Dress {
                policy,
                directory: &self.directory,
                thread_id: &event.thread_id,
                locale: &event.locale,
                scores: &scores,
            },
        );
        verdict.degraded = degraded;
        if text.is_some() {
            verdict.tiers.push(pb::ClassifierTier::Rules as i32);
            if scores.semantic {
                verdict.tiers.push(pb::ClassifierTier::Semantic as i32);
            }
            if matches!(
                prep.external,
                pb::ExternalStatus::Agreed
                    | pb::ExternalStatus::Disagreed
                    | pb::ExternalStatus::EndVetoed
            ) {
                verdict.tiers.push(pb::ClassifierTier::External as i32);
            }
        }
        verdict.external = prep.external as i32;
        let decide_time = started.elapsed();
        let m = &self.sinks.metrics;
        if text.is_some() {
            m.classification.observe(classify_time);
        }
        m.decision.observe(decide_time);
        m.decided(&DecisionRecord {
            kind: match payload {
                Payload::UserMessage(_) => 0,
                Payload::AssistantMessage(_) => 1,
                Payload::Fork(_) => 2,
                Payload::ConfirmEnd(_) => 3,
            },
            action: decision.action,
            reason: decision.reason,
            enforced: decision.enforced,
            shadow_action: decision.shadow_action,
            warning: decision.warning,
            crisis: decision.crisis,
            replayed: decision.replayed,
        });
        if entered_suspicion {
            m.crisis_suspected();
        }
        if !decision.replayed {
            if let (Payload::UserMessage(_), Some(category)) = (payload, decision.category) {
                welfare.exposure(model_slot(), category);
            }
            if let Some((outcome, turns)) = streak {
                welfare.streak(model_slot(), outcome, u64::from(turns));
            }
            if let EventKind::Assistant {
                end_requested: true,
                ..
            } = kind
            {
                if let Some(denial) = decision.end_denied {
                    welfare.end_request(model_slot(), Some(denial));
                } else if ends(&decision) && decision.reason == policy::Reason::ModelRequested {
                    welfare.end_request(model_slot(), None);
                }
            }
            if ends(&decision) {
                welfare.end(model_slot(), decision.reason);
            }
        }
        if let (Some(kind), Some(notifier)) = (entered_crisis, &self.sinks.notifier) {
            notifier.notify(crate::crisis::notifier::Notice {
                thread: self.log_hash(key),
                kind,
                locale: event.locale.clone(),
                policy_version: policy.version.clone(),
            });
        }
        let welfare_log = Welfare {
            model: prep.model_slot.get().map(|s| welfare.label(*s)),
            streak,
        };
        let decided = Decided {
            verdict,
            decision,
            scores,
            thread_key: key,
            classify_time,
            decide_time,
        };
        self.log_decision(event, text, &decided, policy, &welfare_log);
        decided
    }

    fn fork(
        &self,
        prep: &Prepared<'_>,
        fork: &pb::ForkThread,
        decide: impl FnOnce(&mut policy::ThreadState) -> Applied,
    ) -> Result<Applied, EventError> {
        let (key, id) = (prep.key, prep.event.id);
        // A retried fork finds its own branch: answer it as a replay.
        let mut decide = Some(decide);
        match self.store.with_existing(key, |state| {
            state
                .has_event(id)
                .then(|| (decide.take().expect("called once"))(state))
        }) {
            Some(Some(verdict)) => return Ok(verdict),
            Some(None) => return Err(branch_taken(prep.thread_id)),
            None => {}
        }
        // Read the parent first and release it: holding two entries could deadlock on a shard.
        let parent = self
            .store
            .get(parent_key(prep, fork))
            .ok_or_else(|| unknown_parent(fork))?;
        let branch = branch_of(&parent, fork.after_turn)?;
        self.store
            .insert_new(key, branch, decide.take().expect("not yet called"))
            .map_err(|_| branch_taken(prep.thread_id))
    }

    /// `fork` against the shared state: the parent may have been written by any replica.
    async fn fork_shared(
        &self,
        shared: &SharedStore,
        prep: &Prepared<'_>,
        fork: &pb::ForkThread,
        decide: impl Fn(&mut policy::ThreadState) -> Applied,
    ) -> Result<(Applied, bool), EventError> {
        let (key, id) = (prep.key, prep.event.id);
        // A retried fork finds its own branch: answer it as a replay.
        if let (Some(branch), _) = shared.read(&self.store, key).await? {
            return if branch.has_event(id) {
                shared.update(&self.store, key, decide).await
            } else {
                Err(branch_taken(prep.thread_id))
            };
        }
        let (parent, _) = shared.read(&self.store, parent_key(prep, fork)).await?;
        let parent = parent.ok_or_else(|| unknown_parent(fork))?;
        let branch = branch_of(&parent, fork.after_turn)?;
        match shared.create(&self.store, key, branch, &decide).await? {
            Created::Done(applied, degraded) => Ok((applied, degraded)),
            Created::Exists(state) if state.has_event(id) => {
                shared.update(&self.store, key, decide).await
            }
            Created::Exists(_) => Err(branch_taken(prep.thread_id)),
        }
    }

    /// The summary of a known thread.
    pub fn thread(
        &self,
        tenant_id: &str,
        thread_id: &str,
    ) -> Result<pb::ThreadSummary, EventError> {
        self.counted(self.thread_inner(tenant_id, thread_id))
    }

    /// Records feedback on a known thread.
    pub fn feedback(&self, req: &pb::SubmitFeedbackRequest) -> Result<(), EventError> {
        self.counted(self.feedback_inner(req))
    }

    /// `thread`, reading the shared backend when there is one.
    pub async fn thread_shared(
        &self,
        tenant_id: &str,
        thread_id: &str,
    ) -> Result<pb::ThreadSummary, EventError> {
        let Some(shared) = self.shared.as_ref() else {
            return self.thread(tenant_id, thread_id);
        };
        let result = async {
            validate::thread_ref(tenant_id, thread_id)?;
            let key = ThreadKey::new(tenant_id, thread_id);
            let (state, _) = shared.read(&self.store, key).await?;
            let state = state.ok_or_else(|| unknown_thread(thread_id))?;
            Ok(crate::api::convert::summary_to_pb(&state.summary()))
        }
        .await;
        self.counted(result)
    }

    /// `feedback`, reading the shared backend when there is one.
    pub async fn feedback_shared(&self, req: &pb::SubmitFeedbackRequest) -> Result<(), EventError> {
        let Some(shared) = self.shared.as_ref() else {
            return self.feedback(req);
        };
        let result = async {
            let rating = validate::feedback(req)?;
            let key = ThreadKey::new(&req.tenant_id, &req.thread_id);
            let (state, _) = shared.read(&self.store, key).await?;
            let state = state.ok_or_else(|| unknown_thread(&req.thread_id))?;
            self.record_feedback(req, rating, key, state.ended());
            Ok(())
        }
        .await;
        self.counted(result)
    }

    fn counted<T>(&self, result: Result<T, EventError>) -> Result<T, EventError> {
        if let Err(e) = &result {
            self.sinks.metrics.error(e.code());
        }
        result
    }

    fn thread_inner(
        &self,
        tenant_id: &str,
        thread_id: &str,
    ) -> Result<pb::ThreadSummary, EventError> {
        validate::thread_ref(tenant_id, thread_id)?;
        let state = self
            .store
            .get(ThreadKey::new(tenant_id, thread_id))
            .ok_or_else(|| unknown_thread(thread_id))?;
        Ok(crate::api::convert::summary_to_pb(&state.summary()))
    }

    fn feedback_inner(&self, req: &pb::SubmitFeedbackRequest) -> Result<(), EventError> {
        let rating = validate::feedback(req)?;
        let key = ThreadKey::new(&req.tenant_id, &req.thread_id);
        let ended = self
            .store
            .with_existing(key, |s| s.ended())
            .ok_or_else(|| unknown_thread(&req.thread_id))?;
        self.record_feedback(req, rating, key, ended);
        Ok(())
    }

    /// Counts and logs feedback on a known thread.
    fn record_feedback(
        &self,
        req: &pb::SubmitFeedbackRequest,
        rating: pb::Rating,
        key: ThreadKey,
        thread_ended: bool,
    ) {
        let thumbs_up = rating == pb::Rating::ThumbsUp;
        self.sinks.metrics.feedback(thumbs_up);
        if self.sinks.decision_log.enabled() {
            let policy = self.policy();
            let mut record = json!({
                "ts": unix_seconds(),
                "record": "feedback",
                "event_id": req.event_id,
                "thread": self.log_hash(key),
                "rating": if thumbs_up { "thumbs_up" } else { "thumbs_down" },
                "has_comment": !req.comment.is_empty(),
                "thread_ended": thread_ended,
                "policy_version": policy.version,
            });
            if policy.log_content && !req.comment.is_empty() {
                record["comment"] = json!(req.comment);
            }
            self.sinks.decision_log.record(&record);
        }
    }

    fn log_decision(
        &self,
        event: &pb::ConversationEvent,
        text: Option<&str>,
        decided: &Decided,
        policy: &Policy,
        welfare: &Welfare,
    ) {
        let (key, v, scores) = (decided.thread_key, &decided.decision, &decided.scores);
        let degraded = decided.verdict.degraded;
        let external = decided.verdict.external();
        let notable = ends(v)
            || external == pb::ExternalStatus::EndVetoed
            || v.warning
            || v.crisis.is_some()
            || v.end_denied.is_some()
            || welfare.streak.is_some();
        if !notable || v.replayed || !self.sinks.decision_log.enabled() {
            return;
        }
        let categories: serde_json::Map<String, serde_json::Value> = crate::domain::Category::ALL
            .into_iter()
            .filter(|c| scores.get(*c) > 0.0)
            .map(|c| (c.name().to_string(), json!(scores.get(c))))
            .collect();
        let mut record = json!({
            "ts": unix_seconds(),
            "record": "decision",
            "event_id": event.event_id,
            "thread": self.log_hash(key),
            "action": v.action.name(),
            "shadow_action": v.shadow_action.name(),
            "enforced": v.enforced,
            "reason": v.reason.name(),
            "warning": v.warning,
            "crisis": v.crisis.map(|k| k.name()),
            "end_denied": v.end_denied.map(|d| d.code()),
            "category": v.category.map(|c| c.name()),
            "categories": categories,
            "turn": v.summary.turn,
            "harmful_turns": v.summary.harmful_turns,
            "exposures": v.summary.exposures,
            "policy_version": policy.version,
            "degraded": degraded,
        });
        if external != pb::ExternalStatus::Unspecified {
            record["external"] = json!(external_name(external));
        }
        // Welfare: the model's bounded label (never the event's own string) and a closed streak.
        let model = welfare.model.unwrap_or_else(|| {
            let w = &self.sinks.metrics.welfare;
            w.label(w.slot(policy.welfare_label(&event.model)))
        });
        record["model"] = json!(model);
        if let Some((outcome, turns)) = welfare.streak {
            record["streak"] = json!({ "outcome": outcome.name(), "harmful_turns": turns });
        }
        if let Some(t) = text.filter(|_| policy.log_content) {
            record["text"] = json!(t);
        }
        self.sinks.decision_log.record(&record);
    }
}

/// What one decision adds to its decision-log record for the welfare figures.
struct Welfare {
    /// The model's welfare label, if the decision looked it up.
    model: Option<&'static str>,
    /// A harmful streak that closed on this event, and the harmful turns it reached.
    streak: Option<(StreakOutcome, u8)>,
}

/// The decision log's name of an external status (`end_vetoed`, `timeout`...).
fn external_name(status: pb::ExternalStatus) -> String {
    status
        .as_str_name()
        .trim_start_matches("EXTERNAL_STATUS_")
        .to_ascii_lowercase()
}

/// The verdict's account of an external call that gave no judgement.
fn external_status(failure: Failure) -> pb::ExternalStatus {
    match failure {
        Failure::Timeout => pb::ExternalStatus::Timeout,
        Failure::BreakerOpen => pb::ExternalStatus::BreakerOpen,
        Failure::Overloaded => pb::ExternalStatus::Overloaded,
        Failure::Connect => pb::ExternalStatus::ConnectError,
        Failure::Status(_) => pb::ExternalStatus::HttpError,
        Failure::Parse => pb::ExternalStatus::ParseError,
    }
}

/// True if the verdict ENDs the thread (or would have, in shadow mode), for the first time.
fn ends(v: &policy::Verdict) -> bool {
    v.shadow_action == Action::End && v.reason != policy::Reason::AlreadyEnded
}

/// A keyed hash of a thread key, safe to log (never the raw ids).
fn log_hash(seed: u64, key: ThreadKey) -> String {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(&key.to_u128().to_le_bytes(), seed);
    format!("{h:016x}")
}

/// The store's forget hook: a thread forgotten with its harmful streak open closes it `idle`
/// (exposure that no END relieved), in the metrics and the decision log.
fn forget_hook(sinks: &Sinks, active: Arc<AtomicBool>) -> crate::state::ForgetHook {
    let metrics = sinks.metrics.clone();
    let log = sinks.decision_log.clone();
    let seed = sinks.hash_seed;
    Box::new(move |key, state| {
        let turns = state.esc.redirects;
        if state.ended() || turns == 0 || !active.load(Ordering::Relaxed) {
            return;
        }
        let slot = state.model_slot();
        metrics
            .welfare
            .streak(slot, StreakOutcome::Idle, u64::from(turns));
        if log.enabled() {
            log.record(&json!({
                "ts": unix_seconds(),
                "record": "welfare",
                "thread": log_hash(seed, key),
                "model": metrics.welfare.label(slot),
                "streak": { "outcome": StreakOutcome::Idle.name(), "harmful_turns": turns },
                "exposures": state.exposures,
                "turn": state.turn,
            }));
        }
    })
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The replay-ring id of an event id (never 0, which marks an empty slot).
pub fn event_id_hash(event_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(event_id.as_bytes()).max(1)
}
