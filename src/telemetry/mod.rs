//! Telemetry, wired once: JSON logs with an `EnvFilter` that quiets h2, tower and tonic.
//!
//! Never logs message text or raw thread ids: the engine logs keyed hashes, and nothing here
//! adds request content.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Where logs go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// The server's own output.
    Stdout,
    /// For commands whose stdout is their result (`check`, `replay`).
    Stderr,
}

/// Flushes telemetry when dropped (at the end of `main`).
pub struct TelemetryGuard {
    _private: (),
}

/// The default filter: our own info, the transport stack's warnings.
pub const DEFAULT_FILTER: &str = "info,h2=warn,hyper=warn,tower=warn,tonic=warn";

/// Installs the global subscriber. `RUST_LOG` overrides the default filter.
pub fn init(target: LogTarget) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let writer = match target {
        LogTarget::Stdout => BoxMakeWriter::new(std::io::stdout),
        LogTarget::Stderr => BoxMakeWriter::new(std::io::stderr),
    };
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(writer)
        .try_init();
    TelemetryGuard { _private: () }
}
