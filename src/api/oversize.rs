//! The status of a request over the message-size limit: RESOURCE_EXHAUSTED, as grpc-core,
//! grpc-go and grpc-java send it, where tonic's decoder says OUT_OF_RANGE.
//!
//! tonic rejects a message longer than `max_decoding_message_size` before any handler runs:
//! a unary call gets a trailers-only response (the status in the headers), a stream gets it in
//! its trailers. This layer rewrites that one status, wherever it is, for every service of the
//! server (moderation, health, reflection); every other status passes untouched. The message
//! keeps both sizes, in grpc-core's words: "Received message larger than max (N vs. M)".
//!
//! Departs from "one mapping in `error.rs`": the status is made inside tonic, below any code of
//! ours, so the only place to map it is on its way out.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http::header::HeaderValue;

/// tonic's message for a decoded message over the limit (`codec/decode.rs`).
const TONIC_PREFIX: &str = "Error, decoded message length too large: found ";
const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

/// The message sent instead of tonic's, if `message` is tonic's over-the-limit message.
pub fn resource_exhausted_message(message: &str) -> Option<String> {
    let rest = message.strip_prefix(TONIC_PREFIX)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    let (found, limit): (u64, u64) = (found.parse().ok()?, limit.parse().ok()?);
    Some(format!(
        "Received message larger than max ({found} vs. {limit}): the request is {found} bytes, \
         the server accepts at most {limit} (--max-message-bytes)"
    ))
}

/// Rewrites an OUT_OF_RANGE over-the-limit status in `headers` (headers or trailers).
fn rewrite(headers: &mut HeaderMap) {
    if headers.get("grpc-status").map(HeaderValue::as_bytes) != Some(OUT_OF_RANGE.as_bytes()) {
        return;
    }
    let Some(message) = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
    else {
        return;
    };
    let Some(replacement) = resource_exhausted_message(&message) else {
        return;
    };
    headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
    // The message is ASCII digits and words: a valid header value as it is.
    if let Ok(v) = HeaderValue::from_str(&replacement) {
        headers.insert("grpc-message", v);
    }
}

/// Decodes the `%XX` escapes of a `grpc-message` (tonic escapes spaces and more).
fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The layer: `Server::builder().layer(OversizeLayer)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct OversizeLayer;

impl<S> tower::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize(inner)
    }
}

/// The service of [`OversizeLayer`].
#[derive(Clone, Debug)]
pub struct Oversize<S>(S);

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Oversize<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Unpin,
{
    type Response = http::Response<OversizeBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let call = self.0.call(req);
        Box::pin(async move {
            let mut response = call.await?;
            rewrite(response.headers_mut());
            Ok(response.map(OversizeBody))
        })
    }
}

/// A response body whose trailers go through the same rewrite.
#[derive(Debug)]
pub struct OversizeBody<B>(B);

impl<B> http_body::Body for OversizeBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.0).poll_frame(cx);
        if let Poll::Ready(Some(Ok(mut frame))) = polled {
            if let Some(trailers) = frame.trailers_mut() {
                rewrite(trailers);
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonics_message_becomes_grpc_cores() {
        let m = resource_exhausted_message(
            "Error, decoded message length too large: found 8388621 bytes, the limit is: 4194304 bytes",
        )
        .unwrap();
        assert!(
            m.starts_with("Received message larger than max (8388621 vs. 4194304)"),
            "{m}"
        );
        assert_eq!(resource_exhausted_message("some other range error"), None);
    }

    #[test]
    fn only_that_status_is_rewritten() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static(
                "Error,%20decoded%20message%20length%20too%20large:%20found%2010%20bytes,%20the%20limit%20is:%205%20bytes",
            ),
        );
        rewrite(&mut h);
        assert_eq!(h["grpc-status"], "8");
        assert!(
            h["grpc-message"]
                .to_str()
                .unwrap()
                .starts_with("Received message larger than max (10 vs. 5)")
        );
        let mut other = HeaderMap::new();
        other.insert("grpc-status", HeaderValue::from_static("11"));
        other.insert(
            "grpc-message",
            HeaderValue::from_static("turn%20out%20of%20range"),
        );
        rewrite(&mut other);
        assert_eq!(other["grpc-status"], "11");
    }
}
