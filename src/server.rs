//! Assembling and running the sidecar: the engine's parts, the gRPC server with health and
//! reflection, and the background tasks (sweeper, snapshots, policy reload).
//!
//! `run` takes the listener and the shutdown signal as parameters (mini-redis), so tests bind
//! `127.0.0.1:0` and stop the server with a oneshot. Shutdown: health NOT_SERVING, drain the
//! streams within the grace period, write the snapshot.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

use crate::api::auth::{Auth, AuthError, Tokens};
use crate::api::engine::{Engine, Sinks};
use crate::api::oversize::OversizeLayer;
use crate::api::pb::moderation_service_server::ModerationServiceServer;
use crate::api::{ModerationApi, StreamLimits};
use crate::classify::Classifier;
use crate::classify::external::{External, Overrides};
use crate::config::{self, ConfigError, Reloader};
use crate::crisis::notifier::{Notifier, NotifierConfig, NotifierError};
use crate::crisis::{Directory, DirectoryError};
use crate::listener::{self, ConnectionLimits};
use crate::policy::Policy;
use crate::state::shared::{FailMode, SharedConfig, SharedStore};
use crate::state::{SnapshotError, StoreConfig, ThreadStore};
use crate::telemetry::Metrics;
use crate::telemetry::admin::{self, AdminState};
use crate::telemetry::decision_log::{DecisionLog, DecisionLogWriter, Sink};

/// Everything `serve` is configured with, as values (tests never touch the environment).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Policy file; the built-in policy when absent.
    pub policy_path: Option<PathBuf>,
    /// Crisis directory override file; the built-in directory when absent.
    pub directory_path: Option<PathBuf>,
    /// Snapshot file, restored at start and written periodically and at shutdown.
    pub state_file: Option<PathBuf>,
    pub snapshot_interval: Duration,
    /// How long shutdown waits for open streams to finish.
    pub grace: Duration,
    /// How often the policy file's modification time is checked.
    pub reload_poll: Duration,
    pub store: StoreConfig,
    /// Largest decoded gRPC message accepted.
    pub max_message_bytes: usize,
    /// Seed of the keyed hash that stands for thread ids in logs.
    pub hash_seed: u64,
    /// Where decision records go.
    pub decision_log: Sink,
    /// The metrics registry (shared with the OTLP exporter when there is one).
    pub metrics: Arc<Metrics>,
    /// Bearer-token file; auth is off when absent.
    pub auth_tokens: Option<PathBuf>,
    /// TLS (and, with a client CA, mTLS) for the gRPC listener.
    pub tls: Option<TlsFiles>,
    /// Limits on Moderate streams.
    pub stream_limits: StreamLimits,
    /// HTTP/2 streams one connection may open at once.
    pub max_streams_per_connection: u32,
    /// Deadline of a unary call (and of a stream's first response); clients' grpc-timeout applies
    /// when shorter.
    pub call_timeout: Duration,
    /// Crisis webhook.
    pub crisis_webhook: Option<NotifierConfig>,
    /// Open connections and the handshake deadline.
    pub connection_limits: ConnectionLimits,
    /// Thread state shared across replicas (Redis); in memory when absent. Its TTLs are the
    /// store's.
    pub state_backend: Option<SharedConfig>,
    /// The external classifier tier's settings from the command line, over the policy file's.
    pub external: Overrides,
}

/// PEM files for TLS.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With a client CA, clients must present a certificate it signed (mTLS).
    pub client_ca: Option<PathBuf>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            policy_path: None,
            directory_path: None,
            state_file: None,
            snapshot_interval: Duration::from_secs(30),
            grace: Duration::from_secs(10),
            reload_poll: Duration::from_secs(2),
            store: StoreConfig::default(),
            max_message_bytes: 4 * 1024 * 1024,
            hash_seed: 0x7468_7265_6164_7764,
            decision_log: Sink::Off,
            metrics: Arc::new(Metrics::default()),
            auth_tokens: None,
            tls: None,
            stream_limits: StreamLimits::default(),
            max_streams_per_connection: 1024,
            call_timeout: Duration::from_secs(10),
            crisis_webhook: None,
            connection_limits: ConnectionLimits::default(),
            state_backend: None,
            external: Overrides::default(),
        }
    }
}

/// Why the sidecar could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A configuration file is invalid (exit code 64).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The crisis directory override is invalid (exit code 64).
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error("restoring state: {0}")]
    Restore(#[source] SnapshotError),
    #[error("writing the final snapshot: {0}")]
    Snapshot(#[source] SnapshotError),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("decision log: {0}")]
    DecisionLog(#[source] std::io::Error),
    #[error("admin listener: {0}")]
    Admin(#[source] std::io::Error),
    /// The token file is invalid (exit code 64).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A TLS file is missing or invalid (exit code 64).
    #[error("TLS: {0}")]
    Tls(String),
    /// The crisis webhook URL is invalid (exit code 64).
    #[error(transparent)]
    Notifier(#[from] NotifierError),
    /// The state backend URL or its password is invalid (exit code 64).
    #[error("state backend: {0}")]
    StateBackend(String),
    /// The external classifier tier cannot be set up, e.g. its key file (exit code 64).
    #[error("external tier: {0}")]
    External(String),
}

impl ServerError {
    /// True for errors in the configuration the operator gave (EX_USAGE).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ServerError::Config(_)
                | ServerError::Directory(_)
                | ServerError::DecisionLog(_)
                | ServerError::Auth(_)
                | ServerError::Tls(_)
                | ServerError::Notifier(_)
                | ServerError::StateBackend(_)
                | ServerError::External(_)
        )
    }
}

/// A built sidecar, ready to serve: configuration is validated before any port is bound.
pub struct App {
    pub engine: Arc<Engine>,
    policy_tx: watch::Sender<Arc<Policy>>,
    config: ServeConfig,
    decision_log: DecisionLogWriter,
    admin: Option<std::net::TcpListener>,
    health_only: Option<std::net::TcpListener>,
    tokens: Option<Tokens>,
    tls: Option<tonic::transport::ServerTlsConfig>,
}

fn read_pem(path: &std::path::Path) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|e| ServerError::Tls(format!("{}: {e}", path.display())))
}

fn tls_config(files: &TlsFiles) -> Result<tonic::transport::ServerTlsConfig, ServerError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let identity = Identity::from_pem(read_pem(&files.cert)?, read_pem(&files.key)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &files.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read_pem(ca)?));
    }
    Ok(config)
}

impl App {
    /// Loads and validates the policy, directory, tokens and TLS files, restores the state
    /// file, starts the crisis notifier. Call inside a tokio runtime.
    pub fn build(config: ServeConfig) -> Result<App, ServerError> {
        let tokens = config
            .auth_tokens
            .as_deref()
            .map(Tokens::load)
            .transpose()?;
        let tls = config.tls.as_ref().map(tls_config).transpose()?;
        let notifier = config
            .crisis_webhook
            .clone()
            .map(|c| Notifier::start(c, config.metrics.clone()))
            .transpose()?;
        let mut policy = match &config.policy_path {
            Some(p) => config::load_policy(p)?,
            None => Policy::default(),
        };
        config::with_overrides(&mut policy, &config.external)?;
        let external = policy
            .classify
            .external
            .enabled()
            .then(|| External::new(&policy.classify.external, config.metrics.clone()))
            .transpose()
            .map_err(ServerError::External)?;
        let directory = match &config.directory_path {
            Some(p) => Directory::load_file(p)?,
            None => Directory::builtin(),
        };
        let store = ThreadStore::new(config.store.clone());
        // The policy's models take the first welfare slots, in its order; a restored state's
        // slots are renumbered to this process's by the labels its file names.
        let welfare = &config.metrics.welfare;
        for label in policy.welfare_labels() {
            welfare.slot(Some(label));
        }
        if let Some(path) = config.state_file.as_ref().filter(|p| p.exists()) {
            let n = store
                .restore_from(path, |label| welfare.slot(Some(label)))
                .map_err(ServerError::Restore)?;
            tracing::info!(threads = n, "state restored");
        }
        let (policy_tx, policy_rx) = watch::channel(Arc::new(policy));
        let (decision_log, writer) =
            DecisionLog::start(&config.decision_log, config.metrics.clone())
                .map_err(ServerError::DecisionLog)?;
        let shared = match &config.state_backend {
            Some(backend) => {
                let backend = SharedConfig {
                    idle_ttl: config.store.idle_ttl,
                    locked_ttl: config.store.locked_ttl,
                    ..backend.clone()
                };
                let shared = SharedStore::connect(backend, config.metrics.clone())
                    .map_err(ServerError::StateBackend)?;
                tracing::info!(
                    backend = %crate::state::shared::redact(&shared.config().url),
                    fail = ?shared.config().fail,
                    timeout_ms = shared.config().timeout.as_millis() as u64,
                    batch = shared.config().batch,
                    "thread state shared in Redis"
                );
                Some(Arc::new(shared))
            }
            None => None,
        };
        let engine = Engine::new(
            store,
            Classifier::shared(),
            policy_rx,
            Arc::new(directory),
            Sinks {
                metrics: config.metrics.clone(),
                decision_log,
                notifier,
                hash_seed: config.hash_seed,
            },
        );
        let engine = match shared {
            Some(shared) => engine.with_shared(shared),
            None => engine,
        };
        let engine = match external {
            Some(external) => engine.with_external(external),
            None => engine,
        };
        log_classifier_pages();
        Ok(App {
            engine: Arc::new(engine),
            policy_tx,
            config,
            decision_log: writer,
            admin: None,
            health_only: None,
            tokens,
            tls,
        })
    }

    /// Serves only `grpc.health.v1` on this (already bound) listener: for kubelet probes, which
    /// dial the pod IP while the moderation API stays on loopback.
    pub fn with_health_listener(mut self, listener: std::net::TcpListener) -> App {
        self.health_only = Some(listener);
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on this (already bound) listener.
    pub fn with_admin_listener(mut self, listener: std::net::TcpListener) -> App {
        self.admin = Some(listener);
        self
    }

    /// Serves on `listener` until `shutdown` resolves, then drains and snapshots.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let App {
            engine,
            policy_tx,
            config,
            decision_log,
            admin,
            health_only,
            tokens,
            tls,
        } = self;
        let store = engine.store().clone();
        let metrics = config.metrics.clone();
        let _sweeper = store.spawn_sweeper();
        let _state_monitor = engine.shared().map(|s| s.spawn_monitor(store.clone()));
        let _reloader = config.policy_path.clone().map(|path| {
            AbortOnDrop(tokio::spawn(
                Reloader::new(path, policy_tx.clone(), config.reload_poll)
                    .with_overrides(config.external.clone())
                    .with_metrics(metrics.clone())
                    .run(),
            ))
        });
        let _snapshotter = config.state_file.clone().map(|path| {
            AbortOnDrop(tokio::spawn(snapshot_loop(
                store.clone(),
                path,
                config.snapshot_interval,
                metrics.clone(),
            )))
        });
        let ready = Arc::new(AtomicBool::new(false));
        let _admin = match admin {
            Some(listener) => {
                let (listener, addr) = to_tokio(listener)?;
                let router = admin::router(AdminState {
                    metrics: metrics.clone(),
                    store: store.clone(),
                    ready: ready.clone(),
                });
                tracing::info!(admin = %addr, "admin endpoints: /metrics /healthz /readyz");
                Some(AbortOnDrop(tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, router).await {
                        tracing::error!(error = %e, "admin server failed");
                    }
                })))
            }
            None => None,
        };

        let (health, health_service) = tonic_health::server::health_reporter();
        // Both reflection versions: grpcurl speaks v1, Postman, Evans, older grpcurl builds and
        // grpcio-reflection still ask v1alpha. Each lists every service, both reflections too.
        let reflection = reflection_builder().build_v1()?;
        let reflection_v1alpha = reflection_builder().build_v1alpha()?;
        let auth = Auth::new(tokens, metrics.clone());
        let (draining_tx, draining_rx) = watch::channel(false);
        let moderation = tonic::service::interceptor::InterceptedService::new(
            ModerationServiceServer::new(ModerationApi::new(
                engine.clone(),
                config.stream_limits.clone(),
                draining_rx,
            ))
            .max_decoding_message_size(config.max_message_bytes),
            auth,
        );

        let _health_only = match health_only {
            Some(listener) => {
                let (listener, addr) = to_tokio(listener)?;
                let service = health_service.clone();
                Some((
                    addr,
                    AbortOnDrop(tokio::spawn(async move {
                        let served = tonic::transport::Server::builder()
                            .add_service(service)
                            .serve_with_incoming(TcpListenerStream::new(listener))
                            .await;
                        if let Err(e) = served {
                            tracing::error!(error = %e, "health listener failed");
                        }
                    })),
                ))
            }
            None => None,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut builder = tonic::transport::Server::builder()
            // A unary call's deadline. The handlers answer in their first poll; what it bounds
            // is a call whose request message never arrives (tests/security.rs). Streams are
            // bounded by their own limits instead.
            .timeout(config.call_timeout)
            .max_concurrent_streams(config.max_streams_per_connection)
            // Pings find peers that vanished without closing (a dead pod, a cut network).
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        let tls_on = tls.is_some();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        let (incoming, acceptor) = listener::accept(
            listener,
            config.connection_limits.clone(),
            tls_on,
            metrics.clone(),
        );
        let _acceptor = AbortOnDrop(acceptor);
        let server = builder
            // A request over the message-size limit: RESOURCE_EXHAUSTED, not tonic's OUT_OF_RANGE.
            .layer(OversizeLayer)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(moderation)
            .serve_with_incoming_shutdown(ReceiverStream::new(incoming), async {
                let _ = stop_rx.await;
            });
        let mut server = tokio::spawn(server);
        health
            .set_serving::<ModerationServiceServer<ModerationApi>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        ready.store(true, Ordering::Relaxed);
        // Fail closed: not serving while Redis does not answer (every event would be refused).
        let state_health = engine
            .shared()
            .filter(|s| s.config().fail == FailMode::Closed)
            .map(|shared| {
                let mut up = shared.reachable();
                let health = health.clone();
                let ready = ready.clone();
                AbortOnDrop(tokio::spawn(async move {
                    loop {
                        let ok = *up.borrow_and_update();
                        ready.store(ok, Ordering::Relaxed);
                        let status = if ok {
                            tonic_health::ServingStatus::Serving
                        } else {
                            tracing::warn!("Redis unreachable: NOT_SERVING (--state-fail closed)");
                            tonic_health::ServingStatus::NotServing
                        };
                        health
                            .set_service_status(
                                <ModerationServiceServer<ModerationApi> as tonic::server::NamedService>::NAME,
                                status,
                            )
                            .await;
                        health.set_service_status("", status).await;
                        if up.changed().await.is_err() {
                            return;
                        }
                    }
                }))
            });
        tracing::info!(listen = %addr, policy_version = %engine.policy().version, "serving");
        if let Some((health_addr, _)) = &_health_only {
            tracing::info!(health = %health_addr, "health-only gRPC listener");
        }

        tokio::select! {
            res = &mut server => {
                // The server stopped on its own: that is a fault, not a shutdown.
                return match res {
                    Ok(r) => r.map_err(ServerError::from),
                    Err(e) => panic!("server task failed: {e}"),
                };
            }
            _ = shutdown => {}
        }
        tracing::info!(
            grace_ms = config.grace.as_millis() as u64,
            "shutting down: draining streams"
        );
        drop(state_health);
        ready.store(false, Ordering::Relaxed);
        health
            .set_not_serving::<ModerationServiceServer<ModerationApi>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        // Streams answer what is still arriving, then close once idle, so the drain ends as soon
        // as clients stop sending rather than at the grace deadline.
        let _ = draining_tx.send(true);
        let _ = stop_tx.send(());
        match tokio::time::timeout(config.grace, &mut server).await {
            Ok(Ok(Ok(()))) => tracing::info!("streams drained"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server error while draining"),
            Ok(Err(e)) => tracing::warn!(error = %e, "server task failed while draining"),
            Err(_) => {
                tracing::warn!("grace period elapsed; closing the remaining streams");
                server.abort();
            }
        }
        if let Some(path) = &config.state_file {
            let store = store.clone();
            let path = path.clone();
            let labels = metrics.welfare.labels();
            let n = tokio::task::spawn_blocking(move || store.snapshot_to(&path, &labels))
                .await
                .expect("snapshot task")
                .map_err(ServerError::Snapshot)?;
            metrics.snapshot_written(unix_now());
            tracing::info!(threads = n, "snapshot written");
        }
        decision_log.close();
        Ok(())
    }
}

/// The reflection builder both versions are built from: our API, health, and both reflections.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(crate::api::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// Logs whether the classifier's tables got transparent huge pages (see [`crate::huge_pages`]):
/// under THP `never`, or from a build without the binary's allocator, they did not, and each
/// message costs more at low rates. Only logs: the pages are an optimisation.
fn log_classifier_pages() {
    let thp = crate::huge_pages::thp_mode();
    let huge_mib = crate::huge_pages::anon_huge_bytes().map(|b| b >> 20);
    tracing::info!(
        thp = thp.as_deref().unwrap_or("unknown"),
        anon_huge_pages_mib = huge_mib,
        "classifier ready"
    );
}

/// A listener bound by the caller, moved onto the runtime, with its address for the logs.
fn to_tokio(listener: std::net::TcpListener) -> Result<(TcpListener, String), ServerError> {
    listener.set_nonblocking(true).map_err(ServerError::Admin)?;
    let listener = TcpListener::from_std(listener).map_err(ServerError::Admin)?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    Ok((listener, addr))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn snapshot_loop(store: ThreadStore, path: PathBuf, every: Duration, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (s, p) = (store.clone(), path.clone());
        let labels = metrics.welfare.labels();
        match tokio::task::spawn_blocking(move || s.snapshot_to(&p, &labels)).await {
            Ok(Ok(n)) => {
                metrics.snapshot_written(unix_now());
                tracing::debug!(threads = n, "snapshot written");
            }
            Ok(Err(e)) => tracing::error!(error = %e, "snapshot failed"),
            Err(e) => tracing::error!(error = %e, "snapshot task failed"),
        }
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
