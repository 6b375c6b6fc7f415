//! The HTTP call and the layers around it: one pooled hyper client (http and https through
//! rustls), the connect-only retry policy, the fan-out of a judgement's requests, and the
//! mapping of every layer's error onto one [`Failure`].
//!
//! Errors carry a cause and nothing else: never the URL's credentials, the key or any text.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, try_join_all};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};
use tower::util::BoxCloneService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

use super::Failure;
use super::breaker::BreakerLayer;
pub(super) use super::fail::{Fail, failure_of};

/// The pooled client every call shares.
pub(super) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The whole stack: a judgement's requests in, their bodies out (in order).
pub(super) type Stack = BoxCloneService<Vec<Post>, Vec<Bytes>, BoxError>;

/// An answer larger than this is not a guard model's; read no further.
const MAX_BODY: usize = 1 << 20;

/// The window the retry budget counts calls over.
const BUDGET_TTL: Duration = Duration::from_secs(10);

/// A client for http:// and https:// (rustls with ring and the webpki roots, as the notifier).
pub(super) fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    // Requests are small and latency-bound; do not wait to coalesce them.
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

/// One POST of a JSON body; cheap to clone (for retries).
#[derive(Clone)]
pub(super) struct Post {
    pub uri: http::Uri,
    /// `Bearer <key>`, marked sensitive.
    pub auth: Option<HeaderValue>,
    pub body: Bytes,
}

/// The knobs the stack is built from; the breaker's state lives outside it.
pub(super) struct Parts {
    pub client: HttpClient,
    pub breaker: BreakerLayer,
    pub semaphore: Arc<Semaphore>,
    pub budget: Arc<TpsBudget>,
    pub timeout: Duration,
    pub attempts: u32,
}

/// The retry budget: `percent` of recent calls, and one retry a second whatever the rate
/// (none when `percent` is 0).
pub(super) fn budget(percent: f32) -> Arc<TpsBudget> {
    let min_per_sec = u32::from(percent > 0.0);
    Arc::new(TpsBudget::new(
        BUDGET_TTL,
        min_per_sec,
        percent.clamp(0.0, 100.0) / 100.0,
    ))
}

/// The stack, outermost first.
pub(super) fn stack(parts: Parts) -> Stack {
    let service = ServiceBuilder::new()
        // Fail at once while the model is failing; one probe finds out when it is back.
        .layer(parts.breaker)
        // One deadline per call, retries included, inside the breaker so it counts as a failure.
        .timeout(parts.timeout)
        // Over the limit, fail at once: a verdict never queues behind the model.
        .load_shed()
        // Calls in flight across all streams (one semaphore, kept across reloads).
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(parts.semaphore))
        // A judgement's requests (ShieldGemma asks once per policy) go out together.
        .layer_fn(|inner| FanOut { inner })
        // Retry only what never reached the server, within a budget of recent calls.
        .retry(ConnectRetry {
            left: parts.attempts,
            first: true,
            budget: parts.budget,
        })
        .service(Http {
            client: parts.client,
        });
    BoxCloneService::new(service)
}

/// POSTs one body and reads a 2xx answer.
#[derive(Clone)]
struct Http {
    client: HttpClient,
}

impl Service<Post> for Http {
    type Response = Bytes;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Bytes, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, post: Post) -> Self::Future {
        let client = self.client.clone();
        Box::pin(async move {
            let mut request = hyper::Request::post(post.uri)
                .header(CONTENT_TYPE, "application/json")
                .header(
                    USER_AGENT,
                    concat!("threadwarden/", env!("CARGO_PKG_VERSION")),
                );
            if let Some(auth) = post.auth {
                request = request.header(AUTHORIZATION, auth);
            }
            let request = request
                .body(Full::new(post.body))
                .map_err(|_| Fail::new(Failure::Connect))?;
            let response = client.request(request).await.map_err(|e| Fail {
                failure: Failure::Connect,
                connect: e.is_connect(),
            })?;
            let status = response.status();
            if !status.is_success() {
                return Err(Fail::new(Failure::Status(status.as_u16())).into());
            }
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| {
                    Fail::new(if e.is::<http_body_util::LengthLimitError>() {
                        Failure::Parse
                    } else {
                        Failure::Connect
                    })
                })?;
            Ok(body.to_bytes())
        })
    }
}

/// Sends a judgement's requests concurrently; the first failure fails the call.
#[derive(Clone)]
struct FanOut<S> {
    inner: S,
}

impl<S> Service<Vec<Post>> for FanOut<S>
where
    S: Service<Post, Response = Bytes, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Vec<Bytes>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Vec<Bytes>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, posts: Vec<Post>) -> Self::Future {
        let calls: Vec<_> = posts
            .into_iter()
            .map(|post| self.inner.clone().oneshot(post))
            .collect();
        Box::pin(try_join_all(calls))
    }
}

/// Retries a request whose connection failed, while attempts and the budget last.
#[derive(Clone)]
struct ConnectRetry {
    left: u32,
    /// Until the first attempt has ended (which deposits into the budget).
    first: bool,
    budget: Arc<TpsBudget>,
}

impl Policy<Post, Bytes, BoxError> for ConnectRetry {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _: &mut Post,
        result: &mut Result<Bytes, BoxError>,
    ) -> Option<Self::Future> {
        if std::mem::take(&mut self.first) {
            self.budget.deposit();
        }
        let Err(error) = result else { return None };
        let connect = error.downcast_ref::<Fail>().is_some_and(|f| f.connect);
        if !connect || self.left == 0 || !self.budget.withdraw() {
            return None;
        }
        self.left -= 1;
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, request: &Post) -> Option<Post> {
        Some(request.clone())
    }
}
