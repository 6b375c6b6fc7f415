//! The command line: `serve`, `check`, `replay`, `policy validate`. Each flag can also come
//! from a `THREADWARDEN_*` environment variable. Exit codes: 0 success, 1 failure, 64 (EX_USAGE)
//! for a bad configuration, before any port is bound.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::api::StreamLimits;
use crate::classify::external::{Kind, Overrides, When};
use crate::crisis::notifier::NotifierConfig;
use crate::listener::ConnectionLimits;
use crate::server::{App, ServeConfig, TlsFiles};
use crate::state::StoreConfig;
use crate::state::shared::{FailMode, SharedConfig};
use crate::telemetry::decision_log::Sink;
use crate::telemetry::{self, LogTarget, OtlpConfig};

/// EX_USAGE from sysexits.h: the configuration given is wrong.
pub const EXIT_USAGE: u8 = 64;

/// Turn-by-turn conversation moderation sidecar: continue, redirect or end.
#[derive(Parser, Debug)]
#[command(name = "threadwarden", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gRPC sidecar.
    Serve(ServeArgs),
    /// Classify one text and show which rules fired (TEXT, or stdin when absent).
    Check {
        /// The text to classify.
        text: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// A lexicon file to use instead of the embedded one (to try a change without a rebuild).
        #[arg(long)]
        lexicon: Option<PathBuf>,
        /// Classify every line of the input on its own: one compact summary per line.
        #[arg(long)]
        lines: bool,
    },
    /// Run conversations from a JSONL file through the policy and print a verdict per event.
    Replay {
        /// The JSONL file (see examples/conversations/README.md for the format).
        file: PathBuf,
        /// Policy file; the built-in policy when absent.
        #[arg(long, env = "THREADWARDEN_CONFIG")]
        config: Option<PathBuf>,
        /// Print one JSON verdict per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Check a policy file; errors name the file, line and field.
    Validate {
        /// The policy file.
        file: PathBuf,
    },
    /// Print the built-in policy as YAML.
    Defaults,
}

/// Flags of `serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on. Loopback by default: a sidecar talks to its own pod.
    #[arg(long, env = "THREADWARDEN_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Policy file (YAML); the built-in policy when absent. Reloaded on SIGHUP or change.
    #[arg(long, env = "THREADWARDEN_CONFIG")]
    pub config: Option<PathBuf>,
    /// State file: restored at start, written periodically and on SIGTERM.
    #[arg(long, env = "THREADWARDEN_STATE_FILE")]
    pub state_file: Option<PathBuf>,
    /// How often the state file is written.
    #[arg(long, env = "THREADWARDEN_SNAPSHOT_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub snapshot_interval: Duration,
    /// How long shutdown waits for open streams.
    #[arg(long, env = "THREADWARDEN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Crisis directory override (YAML, same schema as the built-in one).
    #[arg(long, env = "THREADWARDEN_CRISIS_DIRECTORY")]
    pub crisis_directory: Option<PathBuf>,
    /// Most threads held in memory; the least recently active are evicted beyond it.
    #[arg(long, env = "THREADWARDEN_MAX_THREADS", default_value_t = 1_000_000)]
    pub max_threads: usize,
    /// Threads idle for longer are forgotten.
    #[arg(long, env = "THREADWARDEN_IDLE_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idle_ttl: Duration,
    /// Ended and crisis threads idle for longer are forgotten.
    #[arg(long, env = "THREADWARDEN_LOCKED_TTL", default_value = "30d", value_parser = humantime::parse_duration)]
    pub locked_ttl: Duration,
    /// Largest decoded gRPC message, in bytes.
    #[arg(long, env = "THREADWARDEN_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Seed of the keyed hash standing for thread ids in logs (keep it secret and stable).
    #[arg(long, env = "THREADWARDEN_HASH_SEED", hide_env_values = true)]
    pub hash_seed: Option<u64>,
    /// Admin HTTP address for /metrics (Prometheus), /healthz and /readyz; off when absent.
    #[arg(long, env = "THREADWARDEN_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Address serving only grpc.health.v1, for kubelet probes (which dial the pod IP).
    #[arg(long, env = "THREADWARDEN_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Decision log sink: `stdout`, `off`, or a file path (JSON lines, appended).
    #[arg(long, env = "THREADWARDEN_DECISION_LOG", default_value = "stdout")]
    pub decision_log: String,
    /// Bearer tokens (YAML: `tokens: [{token, tenants}]`); auth is off when absent.
    #[arg(long, env = "THREADWARDEN_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) for the gRPC listener; needs --tls-key.
    #[arg(long, env = "THREADWARDEN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "THREADWARDEN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to: turns on mTLS.
    #[arg(long, env = "THREADWARDEN_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Open Moderate streams across all connections; beyond, RESOURCE_EXHAUSTED.
    #[arg(long, env = "THREADWARDEN_MAX_STREAMS", default_value_t = 10_000)]
    pub max_streams: usize,
    /// HTTP/2 streams one connection may have open at once.
    #[arg(
        long,
        env = "THREADWARDEN_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 1024
    )]
    pub max_streams_per_connection: u32,
    /// How long a stream may wait for a client that stopped reading before it is ended.
    #[arg(long, env = "THREADWARDEN_SLOW_CONSUMER_DEADLINE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub slow_consumer_deadline: Duration,
    /// During shutdown, a stream idle for this long is closed with UNAVAILABLE (reconnect).
    #[arg(long, env = "THREADWARDEN_DRAIN_IDLE", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub drain_idle: Duration,
    /// Open gRPC connections; beyond, new ones are closed at once.
    #[arg(long, env = "THREADWARDEN_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// A new connection must send its HTTP/2 preface (or TLS ClientHello) within this.
    #[arg(long, env = "THREADWARDEN_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Deadline of a unary call (a client's shorter grpc-timeout wins).
    #[arg(long, env = "THREADWARDEN_CALL_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,
    /// Put the classifier's automata (~38 MB) on transparent huge pages, where the kernel's THP
    /// mode is `always` or `madvise`: fewer TLB misses per message at low rates. No extra memory.
    #[arg(long, env = "THREADWARDEN_HUGE_PAGES", default_value_t = true, action = clap::ArgAction::Set)]
    pub huge_pages: bool,
    /// Webhook (http:// or https://) notified when a thread enters crisis: hashed thread, kind,
    /// locale; never text.
    #[arg(long, env = "THREADWARDEN_CRISIS_WEBHOOK")]
    pub crisis_webhook: Option<String>,
    /// Where thread state lives: `memory` (this process), or `redis://HOST:PORT[/DB]` /
    /// `rediss://…` (TLS) to share it with every replica. The password comes from
    /// --state-password-file or THREADWARDEN_STATE_PASSWORD, never from this URL in a manifest.
    #[arg(long, env = "THREADWARDEN_STATE_BACKEND", default_value = "memory")]
    pub state_backend: String,
    /// With Redis, when it is down or slow: `open` decides from the local copy (verdicts say
    /// degraded), `closed` answers UNAVAILABLE and health turns NOT_SERVING.
    #[arg(long, env = "THREADWARDEN_STATE_FAIL", default_value = "open")]
    pub state_fail: FailMode,
    /// Deadline of one Redis operation; past it the event is decided as --state-fail says.
    #[arg(long, env = "THREADWARDEN_STATE_TIMEOUT", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub state_timeout: Duration,
    /// Redis connections (each multiplexes and pipelines every request sent on it).
    #[arg(long, env = "THREADWARDEN_STATE_CONNECTIONS", default_value_t = 4)]
    pub state_connections: usize,
    /// Most events' compare-and-sets in one Redis script call (the events waiting while every
    /// connection has a call in flight go together). 1: a call per event, for a Redis Cluster
    /// (or its proxy), which refuses a script over keys of several slots; the sidecar also
    /// falls back to 1 by itself at the first such refusal.
    #[arg(long, env = "THREADWARDEN_STATE_BATCH", default_value_t = crate::state::shared::DEFAULT_BATCH as u64,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub state_batch: u64,
    /// File holding the Redis password (trailing newline ignored).
    #[arg(long, env = "THREADWARDEN_STATE_PASSWORD_FILE")]
    pub state_password_file: Option<PathBuf>,
    /// CA certificate (PEM) that a `rediss://` server must chain to (a private CA); without it,
    /// the system's and the webpki roots.
    #[arg(long, env = "THREADWARDEN_STATE_TLS_CA")]
    pub state_tls_ca: Option<PathBuf>,
    /// The external classifier tier's API: `openai-moderation` (`/v1/moderations`),
    /// `llama-guard` or `shieldgemma` (`/v1/chat/completions`). Overrides the policy file's
    /// `classify.external.kind`.
    #[arg(long, env = "THREADWARDEN_EXTERNAL_KIND", value_parser = parse_kind)]
    pub external_kind: Option<Kind>,
    /// The external model server's base URL (e.g. `http://127.0.0.1:8000`); setting it opts in
    /// to sending message text there. Overrides `classify.external.url`.
    #[arg(long, env = "THREADWARDEN_EXTERNAL_URL")]
    pub external_url: Option<String>,
    /// The `model` field sent to the external server. Overrides `classify.external.model`.
    #[arg(long, env = "THREADWARDEN_EXTERNAL_MODEL")]
    pub external_model: Option<String>,
    /// When the external tier is asked: `always`, `uncertain` (the default), `never`.
    #[arg(long, env = "THREADWARDEN_EXTERNAL_WHEN", value_parser = parse_when)]
    pub external_when: Option<When>,
    /// Deadline of one external call, retries included (default 250ms).
    #[arg(long, env = "THREADWARDEN_EXTERNAL_TIMEOUT", value_parser = humantime::parse_duration)]
    pub external_timeout: Option<Duration>,
    /// File holding the external API key (else THREADWARDEN_EXTERNAL_API_KEY); never a flag.
    #[arg(long, env = "THREADWARDEN_EXTERNAL_API_KEY_FILE")]
    pub external_api_key_file: Option<PathBuf>,
    /// OTLP/gRPC collector endpoint for traces and metrics; nothing is exported when absent.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// OTLP metric export interval in milliseconds (the OpenTelemetry variable's unit).
    #[arg(long, env = "OTEL_METRIC_EXPORT_INTERVAL")]
    pub otlp_metrics_interval_ms: Option<u64>,
}

impl ServeArgs {
    /// The decision-log sink these flags describe.
    pub fn decision_log_sink(&self) -> Sink {
        match self.decision_log.as_str() {
            "stdout" | "-" => Sink::Stdout,
            "off" | "" => Sink::Off,
            path => Sink::File(PathBuf::from(path)),
        }
    }

    /// The shared state backend these flags describe (`None` for memory); the password from
    /// the file or THREADWARDEN_STATE_PASSWORD.
    pub fn state_backend(&self) -> Result<Option<SharedConfig>, String> {
        let url = self.state_backend.trim();
        if url == "memory" || url.is_empty() {
            return Ok(None);
        }
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(format!(
                "--state-backend {:?}: expected memory, redis://HOST:PORT[/DB] or rediss://…",
                crate::state::shared::redact(url)
            ));
        }
        let password = match &self.state_password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("--state-password-file {}: {e}", path.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            None => std::env::var("THREADWARDEN_STATE_PASSWORD").ok(),
        };
        let tls_ca = match &self.state_tls_ca {
            Some(_) if !url.starts_with("rediss://") => {
                return Err("--state-tls-ca needs a rediss:// backend".into());
            }
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("--state-tls-ca {}: {e}", path.display()))?,
            ),
            None => None,
        };
        Ok(Some(SharedConfig {
            password,
            tls_ca,
            fail: self.state_fail,
            timeout: self.state_timeout,
            connections: self.state_connections,
            batch: self.state_batch as usize,
            ..SharedConfig::new(url)
        }))
    }

    /// The server configuration these flags describe.
    pub fn to_config(&self) -> ServeConfig {
        let defaults = ServeConfig::default();
        ServeConfig {
            policy_path: self.config.clone(),
            directory_path: self.crisis_directory.clone(),
            state_file: self.state_file.clone(),
            snapshot_interval: self.snapshot_interval,
            grace: self.grace,
            store: StoreConfig {
                idle_ttl: self.idle_ttl,
                locked_ttl: self.locked_ttl,
                capacity: self.max_threads,
                ..StoreConfig::default()
            },
            max_message_bytes: self.max_message_bytes,
            hash_seed: self.hash_seed.unwrap_or(defaults.hash_seed),
            decision_log: self.decision_log_sink(),
            auth_tokens: self.auth_token_file.clone(),
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.client_ca.clone(),
                }),
                _ => None,
            },
            stream_limits: StreamLimits {
                max_streams: self.max_streams,
                slow_consumer_deadline: self.slow_consumer_deadline,
                drain_idle: self.drain_idle,
            },
            max_streams_per_connection: self.max_streams_per_connection,
            call_timeout: self.call_timeout,
            crisis_webhook: self.crisis_webhook.clone().map(NotifierConfig::new),
            connection_limits: ConnectionLimits {
                max_connections: self.max_connections,
                handshake_timeout: self.handshake_timeout,
            },
            external: Overrides {
                kind: self.external_kind,
                url: self.external_url.clone(),
                model: self.external_model.clone(),
                when: self.external_when,
                timeout: self.external_timeout,
                api_key_file: self.external_api_key_file.clone(),
            },
            ..defaults
        }
    }
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    Kind::from_name(s)
        .ok_or_else(|| format!("{s:?}: expected openai-moderation, llama-guard or shieldgemma"))
}

fn parse_when(s: &str) -> Result<When, String> {
    When::from_name(s).ok_or_else(|| format!("{s:?}: expected always, uncertain or never"))
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check {
            text,
            json,
            lexicon,
            lines,
        } => {
            let text = match text {
                Some(t) => t,
                None => {
                    let mut t = String::new();
                    if let Err(e) = std::io::stdin().read_to_string(&mut t) {
                        eprintln!("error: reading stdin: {e}");
                        return ExitCode::FAILURE;
                    }
                    t
                }
            };
            let classifier = match crate::check::classifier_with(lexicon.as_deref(), false, true) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if lines {
                crate::check::run_lines(&classifier, &text);
            } else {
                crate::check::run(&classifier, &text, json);
            }
            ExitCode::SUCCESS
        }
        Command::Replay { file, config, json } => {
            let _telemetry = telemetry::init(LogTarget::Stderr, &OtlpConfig::default(), None);
            match crate::replay::run(&file, config.as_deref(), json) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(if e.is_usage() { EXIT_USAGE } else { 1 })
                }
            }
        }
        Command::Policy {
            command: PolicyCommand::Validate { file },
        } => match crate::config::load_policy(&file) {
            Ok(p) => {
                println!("{}: ok (version {})", file.display(), p.version);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Policy {
            command: PolicyCommand::Defaults,
        } => {
            let yaml = serde_yaml::to_string(&crate::policy::Policy::default())
                .expect("the built-in policy serialises");
            print!("{yaml}");
            ExitCode::SUCCESS
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    // Before anything builds the classifier.
    crate::huge_pages::set_enabled(args.huge_pages);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut config = args.to_config();
    match args.state_backend() {
        Ok(backend) => config.state_backend = backend,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    // The OTLP exporter's channel lives on the runtime: build telemetry inside it.
    let otlp = OtlpConfig {
        endpoint: args.otlp_endpoint.clone(),
        metrics_interval: args.otlp_metrics_interval_ms.map(Duration::from_millis),
    };
    let telemetry = {
        let _rt = runtime.enter();
        telemetry::init(LogTarget::Stdout, &otlp, Some(config.metrics.clone()))
    };
    let code = runtime.block_on(serve_on(args, config));
    // Flush spans and metrics while the runtime still drives the exporter.
    drop(telemetry);
    code
}

async fn serve_on(args: ServeArgs, config: ServeConfig) -> ExitCode {
    // Validate everything before binding: a bad configuration never takes the port.
    let mut app = match App::build(config) {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            eprintln!("error: {e}");
            return ExitCode::from(if e.is_usage() { EXIT_USAGE } else { 1 });
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: binding {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    if !args.listen.ip().is_loopback() && args.tls_cert.is_none() && args.auth_token_file.is_none()
    {
        tracing::warn!(
            listen = %args.listen,
            "listening on a non-loopback address without TLS or a token: any host that can reach it can read and end threads"
        );
    }
    if let Some(addr) = args.admin_listen {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => app = app.with_admin_listener(l),
            Err(e) => {
                eprintln!("error: binding the admin address {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(addr) = args.health_listen {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => app = app.with_health_listener(l),
            Err(e) => {
                eprintln!("error: binding the health address {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match app.run(listener, crate::server::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
