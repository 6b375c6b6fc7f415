//! The circuit breaker: a tower layer that fails calls at once while the external model is
//! failing, and lets one probe through when `open_for` has passed.
//!
//! Written here rather than taken from a crate: the maintained breakers for tower 0.5 count
//! consecutive failures or error rates, and none has the window-count-then-one-probe shape the
//! config names, nor a hook for the state gauge. The state sits behind a std mutex: nothing
//! awaits while it is held.
//!
//! Only what says the server is unwell counts as a failure: a timeout, a connect error, a
//! non-2xx status. A shed call (`overloaded`) and a well-answered call are not failures; the
//! answer's shape is checked outside the stack, so a 2xx with a bad body counts as a success
//! here (the server is up; `parse` is counted by `judge`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

use super::Failure;
use super::config::Breaker;
use super::fail::{Fail, failure_of};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::BreakerState;

/// The breaker's shared state: one per `External`, kept across config reloads.
pub(super) struct Shared {
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

struct State {
    params: Breaker,
    phase: Phase,
    /// Times of the failures within `params.window`, oldest first (closed phase only).
    failures: VecDeque<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// `probing` while the one probe call is out.
    HalfOpen {
        probing: bool,
    },
}

/// How a call that went through ended, for the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    /// Says nothing about the server (shed, or the caller gave up).
    Neutral,
}

impl Shared {
    /// A closed breaker with `params`; sets the gauge.
    pub(super) fn new(params: Breaker, metrics: Arc<Metrics>) -> Arc<Shared> {
        metrics.external.set_breaker(BreakerState::Closed);
        Arc::new(Shared {
            metrics,
            state: Mutex::new(State {
                params,
                phase: Phase::Closed,
                failures: VecDeque::new(),
            }),
        })
    }

    /// New thresholds from a reloaded config; the state is kept.
    pub(super) fn set_params(&self, params: Breaker) {
        self.lock().params = params;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gauge(&self, phase: Phase) {
        self.metrics.external.set_breaker(match phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        });
    }

    /// Whether a call may go out now: `Some(is_probe)`, or `None` to fail fast.
    fn admit(&self, now: Instant) -> Option<bool> {
        let mut s = self.lock();
        match s.phase {
            Phase::Closed => Some(false),
            Phase::Open { until } if now < until => None,
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {
                s.phase = Phase::HalfOpen { probing: true };
                self.gauge(s.phase);
                Some(true)
            }
            Phase::HalfOpen { probing: true } => None,
        }
    }

    fn finish(&self, probe: bool, outcome: Outcome, now: Instant) {
        let mut s = self.lock();
        let before = s.phase;
        if probe {
            s.phase = match outcome {
                Outcome::Success => Phase::Closed,
                Outcome::Failure => Phase::Open {
                    until: now + s.params.open_for,
                },
                Outcome::Neutral => Phase::HalfOpen { probing: false },
            };
            s.failures.clear();
        } else if outcome == Outcome::Failure && s.phase == Phase::Closed {
            // A call admitted while closed that fails after the breaker opened says nothing new.
            let window = s.params.window;
            while s.failures.front().is_some_and(|t| now - *t >= window) {
                s.failures.pop_front();
            }
            s.failures.push_back(now);
            if s.failures.len() >= s.params.failures as usize {
                s.failures.clear();
                s.phase = Phase::Open {
                    until: now + s.params.open_for,
                };
            }
        }
        if s.phase != before {
            self.gauge(s.phase);
            if matches!(s.phase, Phase::Open { .. }) {
                tracing::warn!(
                    open_for = ?s.params.open_for,
                    "external classifier failing: breaker open"
                );
            } else if s.phase == Phase::Closed {
                tracing::info!("external classifier answering again: breaker closed");
            }
        }
    }
}

/// Wraps a service in the breaker over `Shared`.
#[derive(Clone)]
pub(super) struct BreakerLayer {
    shared: Arc<Shared>,
}

impl BreakerLayer {
    pub(super) fn new(shared: Arc<Shared>) -> BreakerLayer {
        BreakerLayer { shared }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;

    fn layer(&self, inner: S) -> BreakerService<S> {
        BreakerService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The breaker around one service.
#[derive(Clone)]
pub(super) struct BreakerService<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl<S, R> Service<R> for BreakerService<S>
where
    S: Service<R, Error = BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The inner stack is always ready at once (load shedding), so an open breaker need not
        // short-cut readiness.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let Some(probe) = self.shared.admit(Instant::now()) else {
            return Box::pin(std::future::ready(Err(
                Fail::new(Failure::BreakerOpen).into()
            )));
        };
        let mut ticket = Ticket {
            shared: self.shared.clone(),
            probe,
            done: false,
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            let outcome = match &result {
                Ok(_) => Outcome::Success,
                Err(e) => match failure_of(e) {
                    Failure::Timeout | Failure::Connect | Failure::Status(_) => Outcome::Failure,
                    Failure::Overloaded | Failure::BreakerOpen | Failure::Parse => Outcome::Neutral,
                },
            };
            ticket.done = true;
            ticket.shared.finish(ticket.probe, outcome, Instant::now());
            result
        })
    }
}

/// An admitted call; a probe dropped unfinished (the caller gave up) frees the half-open slot.
struct Ticket {
    shared: Arc<Shared>,
    probe: bool,
    done: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.shared
                .finish(self.probe, Outcome::Neutral, Instant::now());
        }
    }
}
