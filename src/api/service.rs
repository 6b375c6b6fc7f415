//! The `ModerationService` implementation: thin, every decision is `Engine`'s.
//!
//! `Moderate` decides each request when the transport asks for the next answer, on the task that
//! writes the answers: no task or queue per stream, and answers leave in request order. A client
//! that stops reading stops being read from (HTTP/2 flow control; its sends block); if it does
//! not read for `slow_consumer_deadline`, its slot is released and the stream ends with
//! DEADLINE_EXCEEDED after the answers already sent.
//!
//! With a shared state backend (Redis) or an external classifier tier, an event may wait on a
//! round trip, so a stream keeps up to `STREAM_IN_FLIGHT` events in flight: different
//! threads' round trips overlap, an event whose thread (or fork parent) has one in flight
//! waits for it, and the answers still leave in request order. An event that needs no round
//! trip is decided on its first poll.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use std::collections::{HashMap, VecDeque};

use atomic_waker::AtomicWaker;
use futures_util::stream::FuturesOrdered;
use tokio::sync::{Notify, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::EventError;
use super::auth::Principal;
use super::pb;
use super::pb::moderation_service_server::ModerationService;
use crate::api::engine::{Decided, Engine};
use crate::state::ThreadKey;
use crate::telemetry::{self, EVENT_TARGET, Metrics};

/// The W3C trace context of a call, from its `traceparent` / `tracestate` metadata.
#[derive(Clone, Default)]
struct CallTrace {
    traceparent: String,
    tracestate: String,
}

impl CallTrace {
    /// Empty when per-event spans are off: only a span reads it.
    fn of<T>(request: &Request<T>) -> CallTrace {
        if !telemetry::event_spans() {
            return CallTrace::default();
        }
        let get = |k: &str| {
            request
                .metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        CallTrace {
            traceparent: get("traceparent"),
            tracestate: get("tracestate"),
        }
    }
}

/// The span of one event's decision, when per-event spans are on: joined to the event's (or
/// the call's) trace, with the decision recorded as attributes (`record_decision`), never text.
fn event_span(event: &pb::ConversationEvent, call: &CallTrace) -> Option<tracing::Span> {
    if !telemetry::event_spans() {
        return None;
    }
    let span = tracing::info_span!(
        target: EVENT_TARGET,
        "threadwarden.decide",
        otel.kind = "server",
        thread.hash = Empty,
        verdict.action = Empty,
        verdict.reason = Empty,
        verdict.enforced = Empty,
        verdict.shadow_action = Empty,
        verdict.warning = Empty,
        verdict.degraded = Empty,
        verdict.categories = Empty,
        crisis.kind = Empty,
        decision.latency_us = Empty,
        classification.latency_us = Empty,
        policy.version = Empty,
        error.code = Empty,
    );
    if span.is_disabled() {
        return None;
    }
    let (parent, state) = if event.traceparent.is_empty() {
        (call.traceparent.as_str(), call.tracestate.as_str())
    } else {
        (event.traceparent.as_str(), "")
    };
    if !parent.is_empty() {
        let _ = span.set_parent(telemetry::extract_context(parent, state));
    }
    Some(span)
}

fn record_decision(span: &tracing::Span, engine: &Engine, result: &Result<Decided, EventError>) {
    match result {
        Ok(d) => {
            let v = &d.decision;
            let categories: Vec<&str> = crate::domain::Category::ALL
                .into_iter()
                .filter(|c| d.scores.get(*c) > 0.0)
                .map(|c| c.name())
                .collect();
            span.record("thread.hash", engine.log_hash(d.thread_key).as_str());
            span.record("verdict.action", v.action.name());
            span.record("verdict.reason", v.reason.name());
            span.record("verdict.enforced", v.enforced);
            span.record("verdict.shadow_action", v.shadow_action.name());
            span.record("verdict.warning", v.warning);
            span.record("verdict.degraded", d.verdict.degraded);
            span.record("verdict.categories", categories.join(",").as_str());
            span.record("crisis.kind", v.crisis.map(|k| k.name()).unwrap_or("none"));
            span.record("decision.latency_us", d.decide_time.as_secs_f64() * 1e6);
            span.record(
                "classification.latency_us",
                d.classify_time.as_secs_f64() * 1e6,
            );
            span.record("policy.version", d.verdict.policy_version.as_str());
        }
        Err(e) => {
            span.record("error.code", e.code());
        }
    }
}

/// Decides one event (memory backend) inside its span.
fn decide_traced(
    engine: &Engine,
    event: &pb::ConversationEvent,
    call: &CallTrace,
) -> Result<Decided, EventError> {
    let Some(span) = event_span(event, call) else {
        return engine.decide(event);
    };
    let result = span.in_scope(|| engine.decide(event));
    record_decision(&span, engine, &result);
    result
}

/// Decides one event with `Engine::decide_async` (shared state, external tier) inside its span.
async fn decide_async_traced(
    engine: &Engine,
    event: &pb::ConversationEvent,
    call: &CallTrace,
    context: Option<&str>,
) -> Result<Decided, EventError> {
    use tracing::Instrument;
    let Some(span) = event_span(event, call) else {
        return engine.decide_async(event, context).await;
    };
    let result = engine
        .decide_async(event, context)
        .instrument(span.clone())
        .await;
    record_decision(&span, engine, &result);
    result
}

/// Limits on `Moderate` streams.
#[derive(Clone, Debug)]
pub struct StreamLimits {
    /// Open `Moderate` streams across all connections; beyond, RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// How long a stream with answers or input pending may wait for its client to read before
    /// it is ended. (Unread answers are bounded by the HTTP/2 window, not by a queue here.)
    pub slow_consumer_deadline: Duration,
    /// During shutdown, a stream idle for this long is ended with UNAVAILABLE (reconnect).
    pub drain_idle: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_streams: 10_000,
            slow_consumer_deadline: Duration::from_secs(30),
            drain_idle: Duration::from_millis(500),
        }
    }
}

/// The gRPC service over an `Engine`.
#[derive(Clone)]
pub struct ModerationApi {
    engine: Arc<Engine>,
    limits: StreamLimits,
    open: Arc<AtomicUsize>,
    draining: watch::Receiver<bool>,
}

impl ModerationApi {
    /// The service for `engine`; `draining` turns true when shutdown begins.
    pub fn new(
        engine: Arc<Engine>,
        limits: StreamLimits,
        draining: watch::Receiver<bool>,
    ) -> ModerationApi {
        ModerationApi {
            engine,
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            draining,
        }
    }
}

fn principal<T>(request: &Request<T>) -> Principal {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::any)
}

/// `Ok` if `principal` may touch `tenant`'s threads; the counted PERMISSION_DENIED otherwise.
fn check_tenant(engine: &Engine, principal: &Principal, tenant: &str) -> Result<(), EventError> {
    if principal.allows(tenant) {
        Ok(())
    } else {
        Err(tenant_denied(engine, tenant))
    }
}

fn tenant_denied(engine: &Engine, tenant: &str) -> EventError {
    engine.metrics().error("PERMISSION_DENIED");
    EventError::PermissionDenied(format!(
        "tenant_id {tenant:?} is not allowed for this token"
    ))
}

/// The answer to a request with no event.
fn missing_event(engine: &Engine) -> pb::ModerateResponse {
    engine.metrics().error("INVALID_ARGUMENT");
    pb::ModerateResponse {
        event_id: String::new(),
        thread_id: String::new(),
        result: Some(pb::moderate_response::Result::Error(pb::EventError {
            code: "INVALID_ARGUMENT".into(),
            message: "event: required".into(),
        })),
    }
}

fn answer(
    event: pb::ConversationEvent,
    decided: Result<Decided, EventError>,
) -> pb::ModerateResponse {
    use pb::moderate_response::Result as R;
    let result = match decided {
        Ok(decided) => R::Verdict(decided.verdict),
        Err(e) => R::Error((&e).into()),
    };
    pb::ModerateResponse {
        event_id: event.event_id,
        thread_id: event.thread_id,
        result: Some(result),
    }
}

/// Decides one stream request; a bad event becomes an `EventError` for that event alone.
fn respond(
    engine: &Engine,
    req: pb::ModerateRequest,
    call: &CallTrace,
    principal: &Principal,
) -> pb::ModerateResponse {
    let Some(event) = req.event else {
        return missing_event(engine);
    };
    let decided = check_tenant(engine, principal, &event.tenant_id)
        .and_then(|()| decide_traced(engine, &event, call));
    answer(event, decided)
}

/// `respond` by `Engine::decide_async`: the stream answers it in request order
/// (`Moderation::poll_async`). `context` is the thread's previous assistant turn.
async fn respond_async(
    engine: Arc<Engine>,
    req: pb::ModerateRequest,
    call: CallTrace,
    principal: Principal,
    context: Option<String>,
) -> pb::ModerateResponse {
    let Some(event) = req.event else {
        return missing_event(&engine);
    };
    let decided = match check_tenant(&engine, &principal, &event.tenant_id) {
        Ok(()) => decide_async_traced(&engine, &event, &call, context.as_deref()).await,
        Err(e) => Err(e),
    };
    answer(event, decided)
}

/// How a `Moderate` stream stands with its client, shared with its watchdog and its waker.
///
/// `progress` turns even and grows each time the transport polls the stream; its low bit is set
/// when the stream hands an answer out or when new input arrives (the stream's waker). Odd and
/// unchanged means the transport has not come back for a while although there is work: it is
/// waiting for flow-control window, that is, for a client that does not read.
struct StreamShared {
    progress: AtomicU64,
    inbound_waker: AtomicWaker,
    expired: AtomicBool,
    released: AtomicBool,
    closed: Notify,
    open: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    deadline: Duration,
}

impl StreamShared {
    fn mark_pending_work(&self) {
        let p = self.progress.load(Ordering::Relaxed);
        self.progress.store(p | 1, Ordering::Release);
    }

    /// Gives the stream's place in `max_streams` and the open-streams gauge back, once.
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.metrics.stream_delta(-1);
        }
    }
}

/// The waker handed to the inbound half: notes that input is waiting, then wakes the task.
impl Wake for StreamShared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.progress.fetch_or(1, Ordering::Release);
        self.inbound_waker.wake();
    }
}

/// Ends a stream whose client stopped reading. After a whole `deadline` with work pending and no
/// poll from the transport, the stream's slot is released, DEADLINE_EXCEEDED is counted, and
/// the stream ends with that status when the client reads again (after the answers already
/// sent). Sleeps a quarter deadline at a time; returns as soon as the stream is dropped.
async fn watch_consumer(shared: Arc<StreamShared>, deadline: Duration) {
    const TICKS: u32 = 4;
    let tick = (deadline / TICKS).max(Duration::from_millis(1));
    let mut seen = u64::MAX;
    let mut stalled = 0u32;
    loop {
        tokio::select! {
            () = shared.closed.notified() => return,
            () = tokio::time::sleep(tick) => {}
        }
        let now = shared.progress.load(Ordering::Acquire);
        stalled = if now & 1 == 1 && now == seen {
            stalled + 1
        } else {
            0
        };
        seen = now;
        // `TICKS` ticks after the first sighting of the same stalled state span a deadline.
        if stalled >= TICKS {
            shared.expired.store(true, Ordering::Release);
            shared.metrics.error("DEADLINE_EXCEEDED");
            shared.release();
            return;
        }
    }
}

/// A `Moderate` stream. Each answer is decided when the transport asks for the next one, on
/// the task that writes it: no task or queue of its own, so nothing is decided that the client
/// cannot take, and a client that does not read is not read from (HTTP/2 flow control).
struct Moderation {
    engine: Arc<Engine>,
    call: CallTrace,
    principal: Principal,
    inbound: Streaming<pb::ModerateRequest>,
    /// `shared` as a waker for `inbound`.
    inbound_waker: Waker,
    draining: WatchStream<bool>,
    is_draining: bool,
    drain_idle: Duration,
    /// Runs while draining and idle; when it fires the stream ends with UNAVAILABLE.
    drain_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    shared: Arc<StreamShared>,
    done: bool,
    /// With a shared state backend or an external tier: the events being decided, answered
    /// in request order, and the threads each touches with its sequence number (same order).
    in_flight: FuturesOrdered<Pin<Box<dyn Future<Output = pb::ModerateResponse> + Send>>>,
    in_flight_threads: VecDeque<(u64, [Option<ThreadKey>; 2])>,
    /// Per thread with an event in flight: the latest such event (its sequence number) and a
    /// future that resolves when it is decided. The thread's next event waits on it, so one
    /// thread's events are decided in order while other threads' go ahead.
    thread_tails: HashMap<ThreadKey, (u64, Settled)>,
    /// Sequence number of the next event started on this stream.
    next_seq: u64,
    /// Events started and not yet decided (answers waiting for their turn excluded).
    unsettled: Arc<AtomicUsize>,
    /// The inbound half ended (cleanly, or with this status): finish once all is answered.
    ended: Option<Option<Status>>,
    /// With an external tier that takes context: each thread's latest assistant turn on this
    /// stream, sent with the thread's next user message, then dropped.
    contexts: Contexts,
}

/// Resolves once an event is decided (its sender is dropped then, or if it is cancelled).
type Settled = futures_util::future::Shared<tokio::sync::oneshot::Receiver<()>>;

/// Threads whose latest assistant turn a stream holds at most (beyond, the oldest go).
const CONTEXT_THREADS: usize = 256;

/// The previous assistant turn per thread, on one stream: held in memory for the next user
/// message and never stored (threadwarden keeps no text).
#[derive(Default)]
struct Contexts {
    texts: HashMap<ThreadKey, String>,
    order: VecDeque<ThreadKey>,
}

impl Contexts {
    /// Notes an assistant turn, or takes the context of a user message; `None` otherwise.
    fn exchange(&mut self, req: &pb::ModerateRequest, max_chars: usize) -> Option<String> {
        use pb::conversation_event::Payload;
        let event = req.event.as_ref()?;
        let key = ThreadKey::new(&event.tenant_id, &event.thread_id);
        match &event.payload {
            Some(Payload::AssistantMessage(m)) => {
                let text = crate::classify::external::head(&m.text, max_chars).to_string();
                if self.texts.insert(key, text).is_none() {
                    self.order.push_back(key);
                }
                while self.texts.len() > CONTEXT_THREADS {
                    if let Some(old) = self.order.pop_front() {
                        self.texts.remove(&old);
                    }
                }
                None
            }
            Some(Payload::UserMessage(_)) => {
                let text = self.texts.remove(&key)?;
                self.order.retain(|k| *k != key);
                Some(text)
            }
            _ => None,
        }
    }
}

/// Events of one `Moderate` stream being decided at once with a shared state backend or an
/// external tier (each may wait on a round trip; different threads' trips overlap).
pub const STREAM_IN_FLIGHT: usize = 32;

/// Events of one stream started and not yet answered at most: those being decided, and decided
/// ones waiting behind an earlier, slower one for their turn to be answered.
pub const STREAM_WINDOW: usize = 4 * STREAM_IN_FLIGHT;

/// Where reading a stream's input stopped.
// Returned once per read, by value, and unpacked at once: boxing the answer would cost an
// allocation per event on the path that must cost nothing.
#[allow(clippy::large_enum_variant)]
enum Intake {
    /// An event decided at once with nothing ahead of it: its answer, to send now.
    Answer(pb::ModerateResponse),
    /// No room for more events in flight.
    Capped,
    /// No input waiting (or the input ended).
    Waiting,
}

/// One event counted in its stream's `unsettled` until dropped (decided, or cancelled).
struct Unsettled(Arc<AtomicUsize>);

impl Unsettled {
    fn count(counter: &Arc<AtomicUsize>) -> Unsettled {
        counter.fetch_add(1, Ordering::Relaxed);
        Unsettled(counter.clone())
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The threads an event touches: its own, and a fork's parent.
fn threads_of(req: &pb::ModerateRequest) -> [Option<ThreadKey>; 2] {
    let Some(e) = &req.event else {
        return [None, None];
    };
    let parent = match &e.payload {
        Some(pb::conversation_event::Payload::Fork(f)) => {
            Some(ThreadKey::new(&e.tenant_id, &f.parent_thread_id))
        }
        _ => None,
    };
    [Some(ThreadKey::new(&e.tenant_id, &e.thread_id)), parent]
}

type Answer = Result<pb::ModerateResponse, Status>;

impl Moderation {
    fn finish(&mut self, last: Option<Status>) -> Poll<Option<Answer>> {
        self.done = true;
        self.shared.release();
        Poll::Ready(last.map(Err))
    }

    /// Called when no input is waiting: ends the stream once it has been idle for `drain_idle`
    /// during a shutdown.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        if !self.is_draining {
            // `WatchStream` yields the current value first, then each change; a closed watch
            // means the server is gone: drain as if shutting down.
            while let Poll::Ready(next) = Pin::new(&mut self.draining).poll_next(cx) {
                if next.unwrap_or(true) {
                    self.is_draining = true;
                    break;
                }
            }
        }
        if !self.is_draining {
            return Poll::Pending;
        }
        let idle = self.drain_idle;
        let timer = self
            .drain_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Every event received was answered; the client reconnects elsewhere.
        self.finish(Some(Status::unavailable(
            "the server is shutting down; every event sent so far was answered: reconnect to continue",
        )))
    }
}

impl Moderation {
    /// `poll_next` with a shared state backend or an external tier: up to `STREAM_IN_FLIGHT`
    /// events decided at once, one thread's events one after another, answers in request
    /// order. An event that needs no round trip is decided on its first poll.
    fn poll_async(&mut self, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        loop {
            let capped = match self.take_input(cx) {
                Intake::Answer(answer) => {
                    self.shared.mark_pending_work();
                    return Poll::Ready(Some(Ok(answer)));
                }
                Intake::Capped => true,
                Intake::Waiting => false,
            };
            match Pin::new(&mut self.in_flight).poll_next(cx) {
                Poll::Ready(Some(answer)) => {
                    if let Some((seq, threads)) = self.in_flight_threads.pop_front() {
                        for key in threads.iter().flatten() {
                            if self.thread_tails.get(key).is_some_and(|(s, _)| *s == seq) {
                                self.thread_tails.remove(key);
                            }
                        }
                    }
                    self.shared.mark_pending_work();
                    return Poll::Ready(Some(Ok(answer)));
                }
                Poll::Ready(None) => {
                    return match self.ended.take() {
                        Some(last) => self.finish(last),
                        None => self.poll_drain(cx),
                    };
                }
                // Events decided out of turn freed room under the cap: read on.
                Poll::Pending if capped && self.has_room() => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Whether another event may start: fewer than `STREAM_IN_FLIGHT` being decided and fewer
    /// than `STREAM_WINDOW` unanswered.
    fn has_room(&self) -> bool {
        self.unsettled.load(Ordering::Relaxed) < STREAM_IN_FLIGHT
            && self.in_flight.len() < STREAM_WINDOW
    }

    /// Starts the requests waiting in the inbound half while there is room.
    fn take_input(&mut self, cx: &mut Context<'_>) -> Intake {
        let waker = self.inbound_waker.clone();
        let mut inbound_cx = Context::from_waker(&waker);
        while self.ended.is_none() {
            if !self.has_room() {
                return Intake::Capped;
            }
            match Pin::new(&mut self.inbound).poll_next(&mut inbound_cx) {
                Poll::Ready(Some(Ok(req))) => {
                    self.drain_timer = None;
                    if let Some(answer) = self.start(req, cx) {
                        return Intake::Answer(answer);
                    }
                }
                // A transport or decode error ends the call after the answers owed.
                Poll::Ready(Some(Err(status))) => self.ended = Some(Some(status)),
                Poll::Ready(None) => self.ended = Some(None),
                Poll::Pending => return Intake::Waiting,
            }
        }
        Intake::Waiting
    }

    /// Starts deciding `req`: at once, or once the events in flight on its threads (its own,
    /// a fork's parent) are decided. An event on no busy thread is polled once here: most need
    /// no round trip and are decided on that poll, and if nothing is ahead of it its answer is
    /// returned for the stream to send at once, with no bookkeeping.
    fn start(
        &mut self,
        req: pb::ModerateRequest,
        cx: &mut Context<'_>,
    ) -> Option<pb::ModerateResponse> {
        use futures_util::FutureExt;
        let threads = threads_of(&req);
        let busy = threads
            .iter()
            .flatten()
            .any(|k| self.thread_tails.contains_key(k));
        let policy = self.engine.policy();
        let external = &policy.classify.external;
        let context = if external.enabled() && external.context {
            self.contexts.exchange(&req, external.max_chars)
        } else {
            None
        };
        let mut respond = Box::pin(respond_async(
            self.engine.clone(),
            req,
            self.call.clone(),
            self.principal.clone(),
            context,
        ));
        if !busy && let Poll::Ready(answer) = respond.as_mut().poll(cx) {
            if self.in_flight.is_empty() {
                return Some(answer);
            }
            self.in_flight_threads.push_back((u64::MAX, [None, None]));
            self.in_flight
                .push_back(Box::pin(std::future::ready(answer)));
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let (decided, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = rx.shared();
        let mut waits = Vec::new();
        for key in threads.iter().flatten() {
            if let Some((_, before)) = self.thread_tails.insert(*key, (seq, rx.clone())) {
                waits.push(before);
            }
        }
        self.in_flight_threads.push_back((seq, threads));
        let unsettled = Unsettled::count(&self.unsettled);
        self.in_flight.push_back(Box::pin(async move {
            for before in waits {
                // Ok or cancelled: either way that event is no longer being decided.
                let _ = before.await;
            }
            let answer = respond.await;
            drop((decided, unsettled));
            answer
        }));
        None
    }
}

impl Stream for Moderation {
    type Item = Answer;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.shared.expired.load(Ordering::Acquire) {
            return this.finish(Some(Status::deadline_exceeded(format!(
                "the client did not read its answers for {:?}; stream ended",
                this.shared.deadline
            ))));
        }
        let p = this.shared.progress.load(Ordering::Relaxed);
        this.shared.progress.store((p | 1) + 1, Ordering::Release);
        this.shared.inbound_waker.register(cx.waker());
        // Events in flight keep the ordered path until answered, even if a reload turned the
        // external tier off meanwhile.
        if this.engine.is_async() || !this.in_flight.is_empty() {
            return this.poll_async(cx);
        }
        let mut inbound_cx = Context::from_waker(&this.inbound_waker);
        match Pin::new(&mut this.inbound).poll_next(&mut inbound_cx) {
            Poll::Ready(Some(Ok(req))) => {
                this.drain_timer = None;
                let answer = respond(&this.engine, req, &this.call, &this.principal);
                this.shared.mark_pending_work();
                Poll::Ready(Some(Ok(answer)))
            }
            // A transport or decode error ends the call: nothing can be attributed.
            Poll::Ready(Some(Err(status))) => this.finish(Some(status)),
            Poll::Ready(None) => this.finish(None),
            Poll::Pending => this.poll_drain(cx),
        }
    }
}

impl Drop for Moderation {
    fn drop(&mut self) {
        self.shared.release();
        self.shared.closed.notify_one();
    }
}

#[tonic::async_trait]
impl ModerationService for ModerationApi {
    type ModerateStream = Pin<Box<dyn Stream<Item = Result<pb::ModerateResponse, Status>> + Send>>;

    async fn moderate(
        &self,
        request: Request<Streaming<pb::ModerateRequest>>,
    ) -> Result<Response<Self::ModerateStream>, Status> {
        let limits = self.limits.clone();
        if self.open.fetch_add(1, Ordering::Relaxed) >= limits.max_streams {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.engine.metrics().error("RESOURCE_EXHAUSTED");
            return Err(Status::resource_exhausted(format!(
                "too many open Moderate streams (limit {}); retry with backoff or multiplex more threads per stream",
                limits.max_streams
            )));
        }
        let shared = Arc::new(StreamShared {
            progress: AtomicU64::new(0),
            inbound_waker: AtomicWaker::new(),
            expired: AtomicBool::new(false),
            released: AtomicBool::new(false),
            closed: Notify::new(),
            open: self.open.clone(),
            metrics: self.engine.metrics().clone(),
            deadline: limits.slow_consumer_deadline,
        });
        shared.metrics.stream_delta(1);
        tokio::spawn(watch_consumer(
            shared.clone(),
            limits.slow_consumer_deadline,
        ));
        let call = CallTrace::of(&request);
        let principal = principal(&request);
        Ok(Response::new(Box::pin(Moderation {
            engine: self.engine.clone(),
            call,
            principal,
            inbound: request.into_inner(),
            inbound_waker: Waker::from(shared.clone()),
            draining: WatchStream::new(self.draining.clone()),
            is_draining: false,
            drain_idle: limits.drain_idle,
            drain_timer: None,
            shared,
            done: false,
            in_flight: FuturesOrdered::new(),
            in_flight_threads: VecDeque::new(),
            thread_tails: HashMap::new(),
            next_seq: 0,
            unsettled: Arc::new(AtomicUsize::new(0)),
            ended: None,
            contexts: Contexts::default(),
        })))
    }

    async fn evaluate(
        &self,
        request: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        let call = CallTrace::of(&request);
        let principal = principal(&request);
        let event = request.into_inner().event.ok_or_else(|| {
            self.engine.metrics().error("INVALID_ARGUMENT");
            Status::invalid_argument("event: required")
        })?;
        check_tenant(&self.engine, &principal, &event.tenant_id)?;
        let decided = if self.engine.is_async() {
            decide_async_traced(&self.engine, &event, &call, None).await?
        } else {
            decide_traced(&self.engine, &event, &call)?
        };
        Ok(Response::new(pb::EvaluateResponse {
            verdict: Some(decided.verdict),
        }))
    }

    async fn get_thread(
        &self,
        request: Request<pb::GetThreadRequest>,
    ) -> Result<Response<pb::GetThreadResponse>, Status> {
        let principal = principal(&request);
        let req = request.into_inner();
        check_tenant(&self.engine, &principal, &req.tenant_id)?;
        let thread = self
            .engine
            .thread_shared(&req.tenant_id, &req.thread_id)
            .await?;
        Ok(Response::new(pb::GetThreadResponse {
            thread: Some(thread),
        }))
    }

    async fn submit_feedback(
        &self,
        request: Request<pb::SubmitFeedbackRequest>,
    ) -> Result<Response<pb::SubmitFeedbackResponse>, Status> {
        let principal = principal(&request);
        let req = request.into_inner();
        check_tenant(&self.engine, &principal, &req.tenant_id)?;
        self.engine.feedback_shared(&req).await?;
        Ok(Response::new(pb::SubmitFeedbackResponse {}))
    }
}
