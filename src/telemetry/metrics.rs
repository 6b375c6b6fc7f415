//! Every metric instrument, in one file.
//!
//! Label sets are small and closed (actions × reasons, crisis kinds, error codes), so each
//! metric is a fixed array of atomics indexed by enum: recording is one relaxed `fetch_add`,
//! with no hashing and no lock on the hot path. The same atomics are rendered as Prometheus text
//! (`/metrics`) and read by OpenTelemetry observable instruments (OTLP). No label ever carries
//! a thread id, a tenant id or text.
//!
//! The welfare figures ([`Welfare`]) are labelled by `model`, a closed set too: the models the
//! policy names (at most 31, registered once each and never freed, so their `&'static str`
//! costs a bounded leak) plus `other`. Each label is a slot of fixed atomics; only a welfare
//! event (a harmful turn, a closed streak, an end, a model's end request) looks a slot up.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use crate::classify::external::Failure;
use crate::domain::{CATEGORY_COUNT, Category, CrisisKind};
use crate::policy::{Action, Denial, MODEL_SLOTS, Reason};
use crate::state::shared::Cause;

const ACTIONS: [Action; 3] = Action::ALL;
const REASONS: [Reason; 10] = Reason::ALL;
const CRISIS: [CrisisKind; 3] = CrisisKind::ALL;
/// Event kinds, as labelled.
pub const EVENT_KINDS: [&str; 4] = ["user_message", "assistant_message", "fork", "confirm_end"];
/// Error codes, as labelled (`EventError::code` plus transport-level ones).
pub const ERROR_CODES: [&str; 9] = [
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "FAILED_PRECONDITION",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED",
    "UNAVAILABLE",
];
const RATINGS: [&str; 2] = ["thumbs_up", "thumbs_down"];
const NOTIFICATION_RESULTS: [&str; 4] = ["sent", "retried", "failed", "dropped"];
const CONNECTION_REJECTIONS: [&str; 2] = ["limit", "handshake_timeout"];

/// Every counter's name (series with zero values may be omitted from a render, names never are).
pub const COUNTER_NAMES: [&str; 16] = [
    "threadwarden_events_total",
    "threadwarden_verdicts_total",
    "threadwarden_ends_total",
    "threadwarden_warnings_total",
    "threadwarden_crisis_suspected_total",
    "threadwarden_crisis_routings_total",
    "threadwarden_feedback_total",
    "threadwarden_errors_total",
    "threadwarden_evictions_total",
    "threadwarden_decision_log_dropped_total",
    "threadwarden_policy_reloads_total",
    "threadwarden_crisis_notifications_total",
    "threadwarden_connections_rejected_total",
    "threadwarden_welfare_exposures_total",
    "threadwarden_welfare_model_end_requests_total",
    "threadwarden_welfare_ends_total",
];

/// The welfare streak histogram's name.
pub const STREAK_HISTOGRAM: &str = "threadwarden_welfare_harmful_streak_turns";

fn action_index(a: Action) -> usize {
    a as usize
}

fn reason_index(r: Reason) -> usize {
    r as usize
}

fn crisis_index(k: CrisisKind) -> usize {
    CRISIS.iter().position(|c| *c == k).unwrap_or(0)
}

/// Upper bounds of the latency buckets, in seconds (1 µs to 100 ms).
const BUCKETS: [f64; 15] = [
    1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3,
    25e-3, 100e-3,
];

/// Bucket bounds (seconds) of a remote call's latency: the external tier's 1 ms to 10 s.
pub const CALL_BUCKETS: [f64; 15] = [
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 75e-3, 100e-3, 150e-3, 250e-3, 400e-3, 600e-3, 1.0,
    2.5, 10.0,
];

/// A fixed-bucket latency histogram (by default microseconds to 100 ms, `BUCKETS`).
pub struct Histogram {
    bounds: &'static [f64; 15],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::with_bounds(&BUCKETS)
    }
}

impl Histogram {
    /// A histogram over other bucket bounds (`CALL_BUCKETS`).
    pub fn with_bounds(bounds: &'static [f64; 15]) -> Histogram {
        Histogram {
            bounds,
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The sum of observations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos.load(Relaxed) as f64 / 1e9
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count());
        let _ = writeln!(out, "{name}_sum {}", self.sum_seconds());
        let _ = writeln!(out, "{name}_count {}", self.count());
    }
}

/// How a thread's harmful streak (its escalation episode) closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreakOutcome {
    /// The user turned benign for `decay_benign_turns` turns: the redirects took hold.
    Turned,
    /// The thread was ENDed.
    Ended,
    /// The store forgot the thread (idle TTL or capacity) with the streak still open.
    Idle,
}

impl StreakOutcome {
    const ALL: [StreakOutcome; 3] = [
        StreakOutcome::Turned,
        StreakOutcome::Ended,
        StreakOutcome::Idle,
    ];

    /// The stable label value.
    pub fn name(self) -> &'static str {
        match self {
            StreakOutcome::Turned => "turned",
            StreakOutcome::Ended => "ended",
            StreakOutcome::Idle => "idle",
        }
    }
}

/// Upper bounds of the streak buckets, in harmful turns.
pub const STREAK_BUCKETS: [u64; 10] = [1, 2, 3, 4, 5, 6, 8, 10, 15, 25];
/// The ENDs counted per model, by reason.
const WELFARE_END_REASONS: [Reason; 4] = [
    Reason::PersistentHarm,
    Reason::PersistentAbuse,
    Reason::ModelRequested,
    Reason::UserRequested,
];

/// A histogram of harmful-turn counts.
#[derive(Default)]
struct StreakHistogram {
    buckets: [AtomicU64; STREAK_BUCKETS.len()],
    count: AtomicU64,
    sum: AtomicU64,
}

/// One model label's welfare figures.
#[derive(Default)]
struct ModelWelfare {
    exposures: [AtomicU64; CATEGORY_COUNT],
    streaks: [StreakHistogram; 3],
    /// Granted, then one per denial in `Denial::ALL` order.
    end_requests: [AtomicU64; 1 + Denial::ALL.len()],
    ends: [AtomicU64; WELFARE_END_REASONS.len()],
}

/// What the assistant was put through, per model label. Slot 0 is `other`.
#[derive(Default)]
pub struct Welfare {
    /// Labels of slots 1.., in order of registration; append-only.
    labels: RwLock<Vec<&'static str>>,
    slots: [ModelWelfare; MODEL_SLOTS],
    /// The OTLP histogram, once an exporter is set up.
    otel_streaks: OnceLock<opentelemetry::metrics::Histogram<u64>>,
}

impl Welfare {
    /// The slot of a welfare label (`None`: `other`), registering it on first use while there
    /// is room (then `other`).
    pub fn slot(&self, label: Option<&str>) -> u8 {
        let Some(label) = label.filter(|l| *l != "other") else {
            return 0;
        };
        let find = |labels: &[&'static str]| labels.iter().position(|l| *l == label);
        let labels = self.labels.read().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = find(&labels) {
            return i as u8 + 1;
        }
        drop(labels);
        let mut labels = self.labels.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = find(&labels) {
            return i as u8 + 1;
        }
        if labels.len() + 1 >= MODEL_SLOTS {
            return 0;
        }
        labels.push(Box::leak(label.to_owned().into_boxed_str()));
        labels.len() as u8
    }

    /// The label of a slot (`other` for 0 or an unknown slot).
    pub fn label(&self, slot: u8) -> &'static str {
        let labels = self.labels.read().unwrap_or_else(|e| e.into_inner());
        match usize::from(slot).checked_sub(1) {
            Some(i) => labels.get(i).copied().unwrap_or("other"),
            None => "other",
        }
    }

    /// The labels of slots 1.., in slot order (what a state file stores beside the slots).
    pub fn labels(&self) -> Vec<&'static str> {
        self.labels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every label, `other` first, with its slot.
    fn labelled(&self) -> Vec<(&'static str, usize)> {
        let labels = self.labels.read().unwrap_or_else(|e| e.into_inner());
        std::iter::once("other")
            .chain(labels.iter().copied())
            .enumerate()
            .map(|(i, l)| (l, i))
            .collect()
    }

    fn of(&self, slot: u8) -> &ModelWelfare {
        &self.slots[usize::from(slot).min(MODEL_SLOTS - 1)]
    }

    /// Counts one harmful or abusive user turn the assistant was exposed to.
    pub fn exposure(&self, slot: u8, category: Category) {
        self.of(slot).exposures[category.index()].fetch_add(1, Relaxed);
    }

    /// Records the harmful turns a streak reached when it closed.
    pub fn streak(&self, slot: u8, outcome: StreakOutcome, harmful_turns: u64) {
        let h = &self.of(slot).streaks[outcome as usize];
        if let Some(i) = STREAK_BUCKETS.iter().position(|b| harmful_turns <= *b) {
            h.buckets[i].fetch_add(1, Relaxed);
        }
        h.count.fetch_add(1, Relaxed);
        h.sum.fetch_add(harmful_turns, Relaxed);
        if let Some(otel) = self.otel_streaks.get() {
            otel.record(
                harmful_turns,
                &[
                    opentelemetry::KeyValue::new("model", self.label(slot)),
                    opentelemetry::KeyValue::new("outcome", outcome.name()),
                ],
            );
        }
    }

    /// Counts one of the model's own end requests: granted (`None`) or denied, and why.
    pub fn end_request(&self, slot: u8, denied: Option<Denial>) {
        let i = denied.map_or(0, |d| {
            1 + Denial::ALL.iter().position(|x| *x == d).unwrap_or(0)
        });
        self.of(slot).end_requests[i].fetch_add(1, Relaxed);
    }

    /// Counts a thread ENDed (or that shadow mode would have ended), by reason.
    pub fn end(&self, slot: u8, reason: Reason) {
        if let Some(i) = WELFARE_END_REASONS.iter().position(|r| *r == reason) {
            self.of(slot).ends[i].fetch_add(1, Relaxed);
        }
    }

    /// The count of one streak outcome (for tests and the dashboard's sanity).
    pub fn streak_count(&self, slot: u8, outcome: StreakOutcome) -> u64 {
        self.of(slot).streaks[outcome as usize].count.load(Relaxed)
    }

    /// Sets the OTLP histogram the streaks are also recorded into.
    pub fn export_streaks(&self, histogram: opentelemetry::metrics::Histogram<u64>) {
        let _ = self.otel_streaks.set(histogram);
    }

    fn counters(&self, f: &mut impl FnMut(&'static str, Vec<(&'static str, &'static str)>, u64)) {
        let labelled = self.labelled();
        for (model, slot) in &labelled {
            for c in Category::ALL {
                f(
                    "threadwarden_welfare_exposures_total",
                    vec![("model", model), ("category", c.name())],
                    self.slots[*slot].exposures[c.index()].load(Relaxed),
                );
            }
        }
        for (model, slot) in &labelled {
            let requests = &self.slots[*slot].end_requests;
            f(
                "threadwarden_welfare_model_end_requests_total",
                vec![("model", model), ("outcome", "granted"), ("reason", "none")],
                requests[0].load(Relaxed),
            );
            for (i, d) in Denial::ALL.iter().enumerate() {
                f(
                    "threadwarden_welfare_model_end_requests_total",
                    vec![
                        ("model", model),
                        ("outcome", "denied"),
                        ("reason", d.name()),
                    ],
                    requests[1 + i].load(Relaxed),
                );
            }
        }
        for (model, slot) in &labelled {
            for (i, r) in WELFARE_END_REASONS.iter().enumerate() {
                f(
                    "threadwarden_welfare_ends_total",
                    vec![("model", model), ("reason", r.name())],
                    self.slots[*slot].ends[i].load(Relaxed),
                );
            }
        }
    }

    fn render(&self, out: &mut String) {
        let name = STREAK_HISTOGRAM;
        let _ = writeln!(
            out,
            "# HELP {name} Harmful user turns a thread's streak reached when it closed, by model and outcome (turned, ended, idle).\n# TYPE {name} histogram"
        );
        for (model, slot) in self.labelled() {
            let model = escape(model);
            for outcome in StreakOutcome::ALL {
                let h = &self.slots[slot].streaks[outcome as usize];
                let o = outcome.name();
                let mut cumulative = 0;
                for (bound, n) in STREAK_BUCKETS.iter().zip(&h.buckets) {
                    cumulative += n.load(Relaxed);
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{model=\"{model}\",outcome=\"{o}\",le=\"{bound}\"}} {cumulative}"
                    );
                }
                let count = h.count.load(Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{model=\"{model}\",outcome=\"{o}\",le=\"+Inf\"}} {count}"
                );
                let _ = writeln!(
                    out,
                    "{name}_sum{{model=\"{model}\",outcome=\"{o}\"}} {}",
                    h.sum.load(Relaxed)
                );
                let _ = writeln!(
                    out,
                    "{name}_count{{model=\"{model}\",outcome=\"{o}\"}} {count}"
                );
            }
        }
    }
}

/// Escapes a label value for the text exposition (policy-written model labels may hold `"`).
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

/// All of threadwarden's metrics. Shared as `Arc<Metrics>`.
#[derive(Default)]
pub struct Metrics {
    events: [AtomicU64; 4],
    verdicts: [[[AtomicU64; 2]; 10]; 3],
    ends: [AtomicU64; 10],
    warnings: AtomicU64,
    suspected: AtomicU64,
    crisis: [AtomicU64; 3],
    feedback: [AtomicU64; 2],
    errors: [AtomicU64; ERROR_CODES.len()],
    /// Time to decide one event (classification included), end to end inside the engine.
    pub decision: Histogram,
    /// Time to classify one message.
    pub classification: Histogram,
    open_streams: AtomicI64,
    active_threads: AtomicI64,
    evictions: AtomicU64,
    /// Unix seconds of the last successful snapshot; 0 if none yet.
    snapshot_unix: AtomicU64,
    decision_log_dropped: AtomicU64,
    reloads: [AtomicU64; 2],
    notifications: [AtomicU64; 4],
    connections_rejected: [AtomicU64; 2],
    /// The shared state backend (Redis); zero with the memory backend.
    pub backend: BackendMetrics,
    /// What the assistant was put through, per model.
    pub welfare: Welfare,
    /// The external classifier tier (zero while none is configured).
    pub external: ExternalMetrics,
}

/// The external tier's instruments (`--external-url`).
pub struct ExternalMetrics {
    /// Time of one external call, answered or failed (retries included).
    pub latency: Histogram,
    /// Calls made, by result (`ok`, `failed`).
    calls: [AtomicU64; 2],
    /// User messages the tier was not asked about (`when` said no, or a replay).
    skipped: AtomicU64,
    /// Failed or refused calls, by cause (`Failure::CAUSES`).
    errors: [AtomicU64; Failure::CAUSES.len()],
    /// Answered calls whose flagged categories matched the built-in tiers' (`agree`) or not.
    agreement: [AtomicU64; 2],
    /// ENDs the external model was asked to confirm, by outcome (`confirmed`, `vetoed`).
    confirmations: [AtomicU64; 2],
    /// Category codes in answers that no mapping names.
    unknown_codes: AtomicU64,
    /// 0 closed, 1 open, 2 half-open; -1 while no external tier is configured.
    breaker: AtomicI64,
}

/// The external tier's counter names.
pub const EXTERNAL_COUNTER_NAMES: [&str; 6] = [
    "threadwarden_external_calls_total",
    "threadwarden_external_skipped_total",
    "threadwarden_external_errors_total",
    "threadwarden_external_agreement_total",
    "threadwarden_external_end_confirmations_total",
    "threadwarden_external_unknown_codes_total",
];

impl Default for ExternalMetrics {
    fn default() -> Self {
        ExternalMetrics {
            latency: Histogram::with_bounds(&CALL_BUCKETS),
            calls: Default::default(),
            skipped: AtomicU64::new(0),
            errors: Default::default(),
            agreement: Default::default(),
            confirmations: Default::default(),
            unknown_codes: AtomicU64::new(0),
            breaker: AtomicI64::new(-1),
        }
    }
}

/// The breaker's state, as the gauge reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl ExternalMetrics {
    /// One call finished: its latency, and its failure if it failed.
    pub fn call(&self, latency: Duration, failure: Option<Failure>) {
        self.latency.observe(latency);
        self.calls[usize::from(failure.is_some())].fetch_add(1, Relaxed);
        if let Some(f) = failure {
            self.refused(f);
        }
    }

    /// A call that was not made (breaker open, overloaded), by cause.
    pub fn refused(&self, failure: Failure) {
        self.errors[failure.index()].fetch_add(1, Relaxed);
    }

    /// A user message the tier was not asked about.
    pub fn skipped(&self) {
        self.skipped.fetch_add(1, Relaxed);
    }

    /// An answer agreed (or not) with the built-in tiers on the flagged categories.
    pub fn agreement(&self, agreed: bool) {
        self.agreement[usize::from(!agreed)].fetch_add(1, Relaxed);
    }

    /// An END the model was asked to confirm: confirmed, or vetoed (REDIRECT instead).
    pub fn confirmation(&self, confirmed: bool) {
        self.confirmations[usize::from(!confirmed)].fetch_add(1, Relaxed);
    }

    /// Category codes no mapping names.
    pub fn unknown_codes(&self, n: u32) {
        self.unknown_codes.fetch_add(u64::from(n), Relaxed);
    }

    /// The breaker's state now.
    pub fn set_breaker(&self, state: BreakerState) {
        self.breaker.store(state as i64, Relaxed);
    }

    /// Failures counted for `cause` so far (tests and the lab tool).
    pub fn errors(&self, cause: &str) -> u64 {
        Failure::CAUSES
            .iter()
            .position(|c| *c == cause)
            .map_or(0, |i| self.errors[i].load(Relaxed))
    }

    /// Calls made so far, answered and failed.
    pub fn calls(&self) -> u64 {
        self.calls.iter().map(|c| c.load(Relaxed)).sum()
    }

    fn counters(&self, f: &mut impl FnMut(&'static str, Vec<(&'static str, &'static str)>, u64)) {
        let [calls, skipped, errors, agreement, confirmations, unknown] = EXTERNAL_COUNTER_NAMES;
        for (i, r) in ["ok", "failed"].into_iter().enumerate() {
            f(calls, vec![("result", r)], self.calls[i].load(Relaxed));
        }
        f(skipped, vec![], self.skipped.load(Relaxed));
        for (i, c) in Failure::CAUSES.into_iter().enumerate() {
            f(errors, vec![("cause", c)], self.errors[i].load(Relaxed));
        }
        for (i, r) in ["agree", "disagree"].into_iter().enumerate() {
            f(
                agreement,
                vec![("result", r)],
                self.agreement[i].load(Relaxed),
            );
        }
        for (i, r) in ["confirmed", "vetoed"].into_iter().enumerate() {
            f(
                confirmations,
                vec![("outcome", r)],
                self.confirmations[i].load(Relaxed),
            );
        }
        f(unknown, vec![], self.unknown_codes.load(Relaxed));
    }
}

/// The shared state backend's instruments (`--state-backend redis://…`).
pub struct BackendMetrics {
    /// Time of one Redis call (a batch of compare-and-sets, a read, a ping).
    pub latency: Histogram,
    conflicts: AtomicU64,
    degraded: AtomicU64,
    errors: [AtomicU64; Cause::ALL.len()],
    written_back: AtomicU64,
    cached_ended: AtomicU64,
    cas_calls: AtomicU64,
    cas_keys: AtomicU64,
    /// 1 while Redis answers, 0 while it does not, -1 with the memory backend.
    up: AtomicI64,
}

/// The backend's counter names.
pub const BACKEND_COUNTER_NAMES: [&str; 7] = [
    "threadwarden_state_conflicts_total",
    "threadwarden_state_degraded_total",
    "threadwarden_state_errors_total",
    "threadwarden_state_written_back_total",
    "threadwarden_state_cached_ended_total",
    "threadwarden_state_cas_calls_total",
    "threadwarden_state_cas_total",
];

impl Default for BackendMetrics {
    fn default() -> Self {
        BackendMetrics {
            latency: Histogram::default(),
            conflicts: AtomicU64::new(0),
            degraded: AtomicU64::new(0),
            errors: Default::default(),
            written_back: AtomicU64::new(0),
            cached_ended: AtomicU64::new(0),
            cas_calls: AtomicU64::new(0),
            cas_keys: AtomicU64::new(0),
            up: AtomicI64::new(-1),
        }
    }
}

impl BackendMetrics {
    /// A compare-and-set lost to another writer; the event is decided again.
    pub fn conflict(&self) {
        self.conflicts.fetch_add(1, Relaxed);
    }
    /// A verdict (or read) served from the local copy because Redis was away.
    pub fn degraded(&self) {
        self.degraded.fetch_add(1, Relaxed);
    }
    /// An operation that failed, by cause.
    pub fn error(&self, cause: Cause) {
        let i = Cause::ALL.iter().position(|c| *c == cause).unwrap_or(0);
        self.errors[i].fetch_add(1, Relaxed);
    }
    /// A lock learned while Redis was away, written back.
    pub fn written_back(&self) {
        self.written_back.fetch_add(1, Relaxed);
    }
    /// An event on an ENDed thread answered from the local copy.
    pub fn cached_ended(&self) {
        self.cached_ended.fetch_add(1, Relaxed);
    }
    /// One script call to Redis carrying `keys` compare-and-sets.
    pub fn batch(&self, keys: usize) {
        self.cas_calls.fetch_add(1, Relaxed);
        self.cas_keys.fetch_add(keys as u64, Relaxed);
    }
    /// Whether Redis answered the latest check.
    pub fn set_up(&self, up: bool) {
        self.up.store(i64::from(up), Relaxed);
    }

    fn counters(&self, f: &mut impl FnMut(&'static str, Vec<(&'static str, &'static str)>, u64)) {
        let [
            conflicts,
            degraded,
            errors,
            written_back,
            cached_ended,
            cas_calls,
            cas_keys,
        ] = BACKEND_COUNTER_NAMES;
        f(conflicts, vec![], self.conflicts.load(Relaxed));
        f(degraded, vec![], self.degraded.load(Relaxed));
        for (i, c) in Cause::ALL.iter().enumerate() {
            f(
                errors,
                vec![("cause", c.name())],
                self.errors[i].load(Relaxed),
            );
        }
        f(written_back, vec![], self.written_back.load(Relaxed));
        f(cached_ended, vec![], self.cached_ended.load(Relaxed));
        f(cas_calls, vec![], self.cas_calls.load(Relaxed));
        f(cas_keys, vec![], self.cas_keys.load(Relaxed));
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("decisions", &self.decision.count())
            .finish_non_exhaustive()
    }
}

/// What one decision contributes to the metrics.
pub struct DecisionRecord {
    pub kind: usize,
    pub action: Action,
    pub reason: Reason,
    pub enforced: bool,
    pub shadow_action: Action,
    pub warning: bool,
    pub crisis: Option<CrisisKind>,
    pub replayed: bool,
}

impl Metrics {
    /// Counts one decided event.
    pub fn decided(&self, r: &DecisionRecord) {
        self.events[r.kind.min(3)].fetch_add(1, Relaxed);
        self.verdicts[action_index(r.action)][reason_index(r.reason)][usize::from(r.enforced)]
            .fetch_add(1, Relaxed);
        // ENDs, warnings and crisis routings count decisions, not retries of them.
        if r.replayed {
            return;
        }
        if r.shadow_action == Action::End && r.reason != Reason::AlreadyEnded {
            self.ends[reason_index(r.reason)].fetch_add(1, Relaxed);
        }
        if r.warning {
            self.warnings.fetch_add(1, Relaxed);
        }
        if let Some(k) = r.crisis {
            self.crisis[crisis_index(k)].fetch_add(1, Relaxed);
        }
    }

    /// Counts a thread that became crisis-suspected (not yet crisis-active) on this event.
    pub fn crisis_suspected(&self) {
        self.suspected.fetch_add(1, Relaxed);
    }

    /// Counts an error by its stable code.
    pub fn error(&self, code: &str) {
        if let Some(i) = ERROR_CODES.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts one piece of feedback.
    pub fn feedback(&self, thumbs_up: bool) {
        self.feedback[usize::from(!thumbs_up)].fetch_add(1, Relaxed);
    }

    /// A Moderate stream opened (+1) or closed (-1).
    pub fn stream_delta(&self, delta: i64) {
        self.open_streams.fetch_add(delta, Relaxed);
    }

    /// Open Moderate streams.
    pub fn open_streams(&self) -> i64 {
        self.open_streams.load(Relaxed)
    }

    /// Sets the store gauges (refreshed at scrape and export time).
    pub fn set_store(&self, threads: usize, evictions: u64) {
        self.active_threads.store(threads as i64, Relaxed);
        self.evictions.store(evictions, Relaxed);
    }

    /// Notes a successful snapshot at `unix_secs`.
    pub fn snapshot_written(&self, unix_secs: u64) {
        self.snapshot_unix.store(unix_secs, Relaxed);
    }

    /// Counts a decision-log record dropped because the sink could not keep up.
    pub fn decision_log_dropped(&self) {
        self.decision_log_dropped.fetch_add(1, Relaxed);
    }

    /// Counts a crisis-webhook outcome: `sent`, `retried`, `failed` (retries exhausted) or
    /// `dropped` (queue full).
    pub fn notification(&self, result: &str) {
        if let Some(i) = NOTIFICATION_RESULTS.iter().position(|r| *r == result) {
            self.notifications[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts a connection closed by the listener: `limit` (too many open) or
    /// `handshake_timeout` (its opening bytes did not arrive in time).
    pub fn connection_rejected(&self, reason: &str) {
        if let Some(i) = CONNECTION_REJECTIONS.iter().position(|r| *r == reason) {
            self.connections_rejected[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts a policy reload, accepted or rejected.
    pub fn reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].fetch_add(1, Relaxed);
    }

    fn snapshot_age(&self) -> f64 {
        let at = self.snapshot_unix.load(Relaxed);
        if at == 0 {
            return -1.0;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(at);
        now.saturating_sub(at) as f64
    }

    /// Visits every counter sample as (metric, labels, value); gauges via `gauges`.
    pub fn counters(
        &self,
        mut f: impl FnMut(&'static str, Vec<(&'static str, &'static str)>, u64),
    ) {
        for (i, k) in EVENT_KINDS.iter().enumerate() {
            f(
                "threadwarden_events_total",
                vec![("kind", k)],
                self.events[i].load(Relaxed),
            );
        }
        for a in ACTIONS {
            for r in REASONS {
                for enforced in [true, false] {
                    let v = self.verdicts[action_index(a)][reason_index(r)][usize::from(enforced)]
                        .load(Relaxed);
                    if v > 0 {
                        f(
                            "threadwarden_verdicts_total",
                            vec![
                                ("action", a.name()),
                                ("reason", r.name()),
                                ("enforced", if enforced { "true" } else { "false" }),
                            ],
                            v,
                        );
                    }
                }
            }
        }
        for r in REASONS {
            let v = self.ends[reason_index(r)].load(Relaxed);
            if v > 0
                || matches!(
                    r,
                    Reason::PersistentHarm
                        | Reason::PersistentAbuse
                        | Reason::UserRequested
                        | Reason::ModelRequested
                )
            {
                f("threadwarden_ends_total", vec![("reason", r.name())], v);
            }
        }
        f(
            "threadwarden_warnings_total",
            vec![],
            self.warnings.load(Relaxed),
        );
        f(
            "threadwarden_crisis_suspected_total",
            vec![],
            self.suspected.load(Relaxed),
        );
        for k in CRISIS {
            f(
                "threadwarden_crisis_routings_total",
                vec![("kind", k.name())],
                self.crisis[crisis_index(k)].load(Relaxed),
            );
        }
        for (i, r) in RATINGS.iter().enumerate() {
            f(
                "threadwarden_feedback_total",
                vec![("rating", r)],
                self.feedback[i].load(Relaxed),
            );
        }
        for (i, c) in ERROR_CODES.iter().enumerate() {
            f(
                "threadwarden_errors_total",
                vec![("code", c)],
                self.errors[i].load(Relaxed),
            );
        }
        f(
            "threadwarden_evictions_total",
            vec![],
            self.evictions.load(Relaxed),
        );
        f(
            "threadwarden_decision_log_dropped_total",
            vec![],
            self.decision_log_dropped.load(Relaxed),
        );
        f(
            "threadwarden_policy_reloads_total",
            vec![("result", "ok")],
            self.reloads[0].load(Relaxed),
        );
        f(
            "threadwarden_policy_reloads_total",
            vec![("result", "rejected")],
            self.reloads[1].load(Relaxed),
        );
        for (i, r) in CONNECTION_REJECTIONS.iter().enumerate() {
            f(
                "threadwarden_connections_rejected_total",
                vec![("reason", r)],
                self.connections_rejected[i].load(Relaxed),
            );
        }
        for (i, r) in NOTIFICATION_RESULTS.iter().enumerate() {
            f(
                "threadwarden_crisis_notifications_total",
                vec![("result", r)],
                self.notifications[i].load(Relaxed),
            );
        }
        self.backend.counters(&mut f);
        self.external.counters(&mut f);
        self.welfare.counters(&mut f);
    }

    /// Visits every gauge sample as (metric, value).
    pub fn gauges(&self, mut f: impl FnMut(&'static str, f64)) {
        f(
            "threadwarden_state_backend_up",
            self.backend.up.load(Relaxed) as f64,
        );
        f(
            "threadwarden_external_breaker_state",
            self.external.breaker.load(Relaxed) as f64,
        );
        f(
            "threadwarden_active_threads",
            self.active_threads.load(Relaxed) as f64,
        );
        f(
            "threadwarden_open_streams",
            self.open_streams.load(Relaxed) as f64,
        );
        f("threadwarden_snapshot_age_seconds", self.snapshot_age());
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let mut last = "";
        self.counters(|name, labels, value| {
            if name != last {
                let help = help(name);
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                last = name;
            }
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
            }
        });
        self.gauges(|name, value| {
            let _ = writeln!(
                out,
                "# HELP {name} {}\n# TYPE {name} gauge\n{name} {value}",
                help(name)
            );
        });
        self.decision.render(
            &mut out,
            "threadwarden_decision_duration_seconds",
            "Time to decide one event, classification included.",
        );
        self.classification.render(
            &mut out,
            "threadwarden_classification_duration_seconds",
            "Time to classify one message.",
        );
        self.backend.latency.render(
            &mut out,
            "threadwarden_state_backend_duration_seconds",
            "Time of one shared-state (Redis) call: a batch of compare-and-sets, a read or a ping.",
        );
        self.external.latency.render(
            &mut out,
            "threadwarden_external_duration_seconds",
            "Time of one external classifier call, answered or failed, retries included.",
        );
        self.welfare.render(&mut out);
        let _ = writeln!(
            out,
            "# HELP threadwarden_build_info Build information.\n# TYPE threadwarden_build_info gauge\nthreadwarden_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out
    }
}

fn help(name: &str) -> &'static str {
    match name {
        "threadwarden_events_total" => "Events received, by kind.",
        "threadwarden_verdicts_total" => "Verdicts sent, by action, reason and whether enforced.",
        "threadwarden_ends_total" => {
            "Threads ended (or that shadow mode would have ended), by reason."
        }
        "threadwarden_warnings_total" => "Redirects that carried the warning.",
        "threadwarden_crisis_routings_total" => "Verdicts that carried crisis support, by kind.",
        "threadwarden_crisis_suspected_total" => {
            "Threads marked crisis-suspected (never ended any more) without a crisis signal."
        }
        "threadwarden_feedback_total" => "Feedback received, by rating.",
        "threadwarden_errors_total" => "Events or calls rejected, by stable reason code.",
        "threadwarden_evictions_total" => "Threads evicted (idle TTL or capacity).",
        "threadwarden_decision_log_dropped_total" => {
            "Decision-log records dropped because the sink fell behind."
        }
        "threadwarden_policy_reloads_total" => "Policy reloads, by result.",
        "threadwarden_connections_rejected_total" => {
            "Connections closed by the listener, by reason (limit, handshake_timeout)."
        }
        "threadwarden_crisis_notifications_total" => {
            "Crisis webhook notices, by result (sent, retried, failed, dropped)."
        }
        "threadwarden_state_conflicts_total" => {
            "Compare-and-set conflicts on the shared state: events decided again."
        }
        "threadwarden_state_degraded_total" => {
            "Events and reads served from the local copy because Redis was away (fail open)."
        }
        "threadwarden_state_errors_total" => "Shared-state operations that failed, by cause.",
        "threadwarden_state_written_back_total" => {
            "Locks learned while Redis was away, written back when it returned."
        }
        "threadwarden_state_cached_ended_total" => {
            "Events on ENDed threads answered without a round trip to Redis."
        }
        "threadwarden_state_cas_calls_total" => {
            "Compare-and-set script calls to Redis (each carries a batch of events)."
        }
        "threadwarden_state_cas_total" => {
            "Compare-and-sets sent to Redis; divided by the calls, the mean batch."
        }
        "threadwarden_state_backend_up" => {
            "1 while the shared state store answers, 0 while not, -1 for the memory backend."
        }
        "threadwarden_external_calls_total" => {
            "Calls to the external classifier, by result (ok, failed)."
        }
        "threadwarden_external_skipped_total" => {
            "User messages the external classifier was not asked about (when, replays)."
        }
        "threadwarden_external_errors_total" => {
            "External classifier calls failed or not made, by cause; the built-in tiers decided."
        }
        "threadwarden_external_agreement_total" => {
            "External answers whose flagged categories matched the built-in tiers', by result."
        }
        "threadwarden_external_end_confirmations_total" => {
            "ENDs the external classifier was asked to confirm, by outcome (confirmed, vetoed)."
        }
        "threadwarden_external_unknown_codes_total" => {
            "Category codes in external answers that no mapping names (dropped)."
        }
        "threadwarden_external_breaker_state" => {
            "The external classifier's breaker: 0 closed, 1 open, 2 half-open, -1 not configured."
        }
        "threadwarden_welfare_exposures_total" => {
            "Harmful and abusive user turns the assistant was exposed to, by model and category."
        }
        "threadwarden_welfare_model_end_requests_total" => {
            "The model's own end requests, by model, outcome (granted, denied) and denial reason."
        }
        "threadwarden_welfare_ends_total" => {
            "Threads ended (or that shadow mode would have ended), by model and reason."
        }
        "threadwarden_active_threads" => "Threads held in memory.",
        "threadwarden_open_streams" => "Open Moderate streams.",
        "threadwarden_snapshot_age_seconds" => {
            "Seconds since the last state snapshot (-1: none yet)."
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rendered_counter_is_listed() {
        let m = Metrics::default();
        m.decided(&DecisionRecord {
            kind: 0,
            action: Action::Redirect,
            reason: Reason::Abuse,
            enforced: false,
            shadow_action: Action::Redirect,
            warning: true,
            crisis: Some(CrisisKind::ThirdParty),
            replayed: false,
        });
        m.counters(|name, _, _| {
            assert!(
                COUNTER_NAMES.contains(&name)
                    || BACKEND_COUNTER_NAMES.contains(&name)
                    || EXTERNAL_COUNTER_NAMES.contains(&name),
                "{name}"
            )
        });
    }

    #[test]
    fn welfare_labels_are_bounded_and_escaped() {
        let m = Metrics::default();
        assert_eq!(m.welfare.slot(None), 0);
        assert_eq!(m.welfare.slot(Some("other")), 0, "`other` is slot 0");
        assert_eq!(m.welfare.slot(Some("we\"ird")), 1);
        for i in 2..MODEL_SLOTS {
            assert_eq!(usize::from(m.welfare.slot(Some(&format!("m{i}")))), i);
        }
        assert_eq!(m.welfare.slot(Some("one-too-many")), 0, "full: other");
        assert_eq!(
            m.welfare.slot(Some("m7")),
            7,
            "a known label keeps its slot"
        );
        assert_eq!(m.welfare.label(7), "m7");
        assert_eq!(m.welfare.label(0), "other");
        m.welfare.exposure(1, Category::Abuse);
        m.welfare.streak(1, StreakOutcome::Idle, 30);
        let text = m.render();
        assert!(
            text.contains(
                "threadwarden_welfare_exposures_total{model=\"we\\\"ird\",category=\"abuse\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains(
            "threadwarden_welfare_harmful_streak_turns_bucket{model=\"we\\\"ird\",outcome=\"idle\",le=\"25\"} 0"
        ));
        assert!(text.contains(
            "threadwarden_welfare_harmful_streak_turns_count{model=\"we\\\"ird\",outcome=\"idle\"} 1"
        ));
        assert!(!text.contains("one-too-many"));
    }

    #[test]
    fn counters_render_and_move() {
        let m = Metrics::default();
        let r = DecisionRecord {
            kind: 0,
            action: Action::End,
            reason: Reason::PersistentHarm,
            enforced: true,
            shadow_action: Action::End,
            warning: false,
            crisis: None,
            replayed: false,
        };
        m.decided(&r);
        m.decided(&DecisionRecord {
            replayed: true,
            ..r
        });
        m.error("NOT_FOUND");
        m.decision.observe(Duration::from_micros(3));
        let text = m.render();
        assert!(text.contains("threadwarden_verdicts_total{action=\"end\",reason=\"persistent_harm\",enforced=\"true\"} 2"), "{text}");
        assert!(
            text.contains("threadwarden_ends_total{reason=\"persistent_harm\"} 1"),
            "replays are not new ENDs"
        );
        assert!(text.contains("threadwarden_errors_total{code=\"NOT_FOUND\"} 1"));
        assert!(
            text.contains("threadwarden_decision_duration_seconds_bucket{le=\"0.000005\"} 1"),
            "{text}"
        );
        assert!(text.contains("threadwarden_decision_duration_seconds_count 1"));
    }
}
