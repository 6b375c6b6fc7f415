//! Telemetry, wired once: JSON logs with an `EnvFilter`, OpenTelemetry traces and metrics over
//! OTLP/gRPC, the W3C trace-context propagator, the Prometheus admin port, the decision log.
//!
//! Never logs message text or raw thread ids: the engine hands in keyed hashes. Per-event spans
//! use the target `threadwarden::event`; they are exported over OTLP but never written to the
//! logs, and when no OTLP endpoint is set nothing subscribes to them, so they cost nothing.

pub mod admin;
pub mod decision_log;
pub mod metrics;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use metrics::Metrics;

/// The target of per-event spans (exported, never logged).
pub const EVENT_TARGET: &str = "threadwarden::event";

static EVENT_SPANS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True when per-event spans have a subscriber (OTLP export is on). Checked before building a
/// span: with per-layer filters, a span no layer wants still costs a registry slot.
pub fn event_spans() -> bool {
    EVENT_SPANS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Where logs go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// The server's own output.
    Stdout,
    /// For commands whose stdout is their result (`check`, `replay`).
    Stderr,
}

/// OTLP export settings; export is on only when an endpoint is given.
#[derive(Clone, Debug, Default)]
pub struct OtlpConfig {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, e.g. `http://127.0.0.1:4317`.
    pub endpoint: Option<String>,
    /// How often metrics are exported.
    pub metrics_interval: Option<Duration>,
}

/// Flushes and shuts down the exporters when dropped (at the end of `main`). Must be dropped
/// while the tokio runtime that built it is still alive.
pub struct TelemetryGuard {
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    meter: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(t) = self.tracer.take() {
            let _ = t.force_flush();
            let _ = t.shutdown();
        }
        if let Some(m) = self.meter.take() {
            let _ = m.force_flush();
            let _ = m.shutdown();
        }
    }
}

/// The default filter: our own info, the transport stack's warnings.
pub const DEFAULT_FILTER: &str = "info,h2=warn,hyper=warn,tower=warn,tonic=warn";

fn log_filter() -> EnvFilter {
    let base = std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_FILTER.to_string());
    // Event spans are for traces only.
    EnvFilter::try_new(format!("{base},{EVENT_TARGET}=off"))
        .unwrap_or_else(|_| EnvFilter::new(format!("{DEFAULT_FILTER},{EVENT_TARGET}=off")))
}

fn resource() -> opentelemetry_sdk::Resource {
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    let builder = opentelemetry_sdk::Resource::builder();
    let builder = if named {
        builder
    } else {
        builder.with_service_name("threadwarden")
    };
    builder
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build()
}

/// Installs logging and, with an endpoint, OTLP export. Call inside a tokio runtime when OTLP
/// is configured (the exporter's channel lives on it). `metrics` feeds the OTLP metrics.
pub fn init(target: LogTarget, otlp: &OtlpConfig, metrics: Option<Arc<Metrics>>) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let writer = match target {
        LogTarget::Stdout => BoxMakeWriter::new(std::io::stdout),
        LogTarget::Stderr => BoxMakeWriter::new(std::io::stderr),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(writer)
        .with_filter(log_filter());

    let mut guard = TelemetryGuard {
        tracer: None,
        meter: None,
    };
    let otel_layer = match otlp.endpoint.as_deref().filter(|e| !e.is_empty()) {
        None => None,
        Some(endpoint) => match build_otlp(endpoint, otlp, metrics) {
            Ok((tracer, meter)) => {
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(tracer.tracer("threadwarden"))
                    .with_filter(EnvFilter::new(format!("{EVENT_TARGET}=info")));
                guard.tracer = Some(tracer);
                guard.meter = Some(meter);
                EVENT_SPANS.store(true, std::sync::atomic::Ordering::Relaxed);
                Some(layer)
            }
            Err(e) => {
                eprintln!("warning: OTLP export disabled: {e}");
                None
            }
        },
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel_layer)
        .try_init();
    if let Some(endpoint) = &otlp.endpoint {
        tracing::info!(endpoint = %endpoint, "exporting traces and metrics over OTLP");
    }
    guard
}

fn build_otlp(
    endpoint: &str,
    otlp: &OtlpConfig,
    metrics: Option<Arc<Metrics>>,
) -> Result<
    (
        opentelemetry_sdk::trace::SdkTracerProvider,
        opentelemetry_sdk::metrics::SdkMeterProvider,
    ),
    String,
> {
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| e.to_string())?;
    let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource())
        .build();
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| e.to_string())?;
    let mut reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter);
    if let Some(every) = otlp.metrics_interval {
        reader = reader.with_interval(every);
    }
    let meter = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(reader.build())
        .with_resource(resource())
        .build();
    if let Some(m) = metrics {
        register_observables(&meter, m);
    }
    Ok((tracer, meter))
}

/// Bridges the atomics of `Metrics` to OTLP. Counter names drop Prometheus' `_total` suffix,
/// which the Collector's Prometheus exporter adds back, so dashboards see the same names.
fn register_observables(provider: &opentelemetry_sdk::metrics::SdkMeterProvider, m: Arc<Metrics>) {
    use opentelemetry::KeyValue;
    use opentelemetry::metrics::MeterProvider as _;
    let meter = provider.meter("threadwarden");
    for name in metrics::COUNTER_NAMES
        .into_iter()
        .chain(metrics::BACKEND_COUNTER_NAMES)
        .chain(metrics::EXTERNAL_COUNTER_NAMES)
    {
        let m = m.clone();
        let otel_name = name.trim_end_matches("_total");
        let _counter = meter
            .u64_observable_counter(otel_name)
            .with_callback(move |obs| {
                m.counters(|n, labels, value| {
                    if n == name {
                        let attrs: Vec<KeyValue> =
                            labels.iter().map(|(k, v)| KeyValue::new(*k, *v)).collect();
                        obs.observe(value, &attrs);
                    }
                });
            })
            .build();
    }
    // The welfare streaks are a real OTLP histogram, recorded as they close (an observable
    // instrument cannot carry buckets).
    m.welfare.export_streaks(
        meter
            .u64_histogram(metrics::STREAK_HISTOGRAM)
            .with_description("Harmful user turns a thread's streak reached when it closed.")
            .with_boundaries(metrics::STREAK_BUCKETS.iter().map(|b| *b as f64).collect())
            .build(),
    );
    let mut gauges: Vec<&'static str> = Vec::new();
    m.gauges(|name, _| gauges.push(name));
    for name in gauges {
        let m = m.clone();
        let _gauge = meter
            .f64_observable_gauge(name)
            .with_callback(move |obs| {
                m.gauges(|n, v| {
                    if n == name {
                        obs.observe(v, &[]);
                    }
                });
            })
            .build();
    }
}

/// Extracts a W3C trace context from `traceparent` / `tracestate` values.
pub fn extract_context(traceparent: &str, tracestate: &str) -> opentelemetry::Context {
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    if !tracestate.is_empty() {
        carrier.insert("tracestate".to_string(), tracestate.to_string());
    }
    TraceContextPropagator::new().extract(&carrier)
}
