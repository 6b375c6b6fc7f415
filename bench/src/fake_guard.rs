//! `threadwarden-bench fake-guard`: a stand-in guard model for the cascade's benchmarks
//! (scripts/bench-external.sh). Speaks Llama Guard over `/v1/chat/completions` and the
//! moderation API over `/v1/moderations`, answers `safe` (nothing flagged) after a fixed delay,
//! and counts the calls it served (printed at SIGTERM/SIGINT, and at `GET /calls`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};

/// Options of `fake-guard`.
#[derive(clap::Args, Debug)]
pub struct FakeGuardArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Time each answer takes.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub delay: Duration,
}

struct Fake {
    delay: Duration,
    calls: AtomicU64,
}

const CHAT: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"safe"},"finish_reason":"stop"}]}"#;
const MODERATION: &str = r#"{"id":"modr-bench","model":"bench","results":[{"flagged":false,"categories":{},"category_scores":{}}]}"#;

async fn answer(
    fake: &Fake,
    body: &'static str,
) -> ([(&'static str, &'static str); 1], &'static str) {
    fake.calls.fetch_add(1, Ordering::Relaxed);
    // A thread's sleep keeps to the delay within tens of µs; tokio's timer rounds up to its
    // next 1 ms tick, which would make a 5 ms fake answer in up to 6 ms.
    let delay = fake.delay;
    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(delay)).await;
    ([("content-type", "application/json")], body)
}

/// Serves until SIGTERM or SIGINT; prints `listening on ADDR` first, `calls N` last.
pub fn main(args: FakeGuardArgs) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let fake = Arc::new(Fake {
            delay: args.delay,
            calls: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .route(
                "/v1/chat/completions",
                post(|State(f): State<Arc<Fake>>| async move { answer(&f, CHAT).await }),
            )
            .route(
                "/v1/moderations",
                post(|State(f): State<Arc<Fake>>| async move { answer(&f, MODERATION).await }),
            )
            .route(
                "/calls",
                get(|State(f): State<Arc<Fake>>| async move {
                    f.calls.load(Ordering::Relaxed).to_string()
                }),
            )
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .expect("bind");
        println!(
            "listening on {}",
            listener.local_addr().expect("an address")
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await;
        println!("calls {}", fake.calls.load(Ordering::Relaxed));
    });
    ExitCode::SUCCESS
}
