//! The HTTP port (`http.listen`): `/healthz`, `/readyz` and `/metrics`.
//!
//! The server runs on a current-thread tokio runtime on a thread of its own (`cordon-http`).
//! The engine's poll loop stays synchronous on its own thread and no rdkafka call ever runs on
//! a tokio thread: the loop publishes what the endpoints report through [`Health`] (atomics
//! and small mutex-guarded snapshots, updated at most once per batch or tick) and through the
//! [`Metrics`] registry, and the handlers only read those.
//!
//! - `GET /healthz`: `200 ok` while the process is alive. It answers from the moment the port
//!   is bound, before Kafka is reachable, so a liveness probe never restarts an engine that is
//!   waiting for its brokers.
//! - `GET /readyz`: `200` when the engine is consuming (subscribed, poll loop running, a rule
//!   set loaded), `503` otherwise; the body is JSON detail, see [`Readiness`]. An instance
//!   that owns no partitions (more replicas than partitions) is ready.
//! - `GET /metrics`: the Prometheus text format.
//!
//! The listener is bound before the server thread starts, so a port in use or a bad address
//! is a start-up error that names `http.listen`. [`HttpServer::stop`] (or dropping the server)
//! stops it after the engine loop has returned.

use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The poll loop counts as stalled (not consuming) when an iteration has not finished for this
/// long, e.g. while a flush waits for an unreachable broker.
pub const LOOP_STALL_AFTER: Duration = Duration::from_secs(60);

/// How long the server waits at shutdown for open requests before it closes them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A failure to start the HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound (in use, not local, not permitted) or parsed.
    #[error("config key `http.listen`: cannot listen on {listen}: {source}")]
    Bind {
        /// The configured address.
        listen: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server's runtime or thread could not be started.
    #[error("cannot start the HTTP server: {0}")]
    Start(#[source] std::io::Error),
}

/// What the engine loop tells `/readyz`. Shared through an `Arc`; every method is cheap.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    consuming: AtomicBool,
    /// Milliseconds after `started` when the loop last finished an iteration.
    heartbeat_ms: AtomicU64,
    /// Milliseconds after `started` of the last non-empty batch, plus one (0: none yet).
    last_batch_ms: AtomicU64,
    /// Milliseconds after `started` as of which every owned partition's state on disk was
    /// current, plus one (0: none yet).
    last_checkpoint_ms: AtomicU64,
    rules: Mutex<RulesHealth>,
    assigned: Mutex<Vec<i32>>,
    /// The repartition stage's own health, with `repartition.topic` ([`Health::attach`]).
    repartition: std::sync::OnceLock<Arc<Health>>,
}

#[derive(Debug, Default, Clone)]
struct RulesHealth {
    loaded: Option<usize>,
    error: Option<String>,
}

/// The body of `/readyz`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Readiness {
    /// `consuming` and a rule set loaded: the status is 200 exactly when this is true.
    pub ready: bool,
    /// Subscribed and the poll loop running (an iteration finished within
    /// [`LOOP_STALL_AFTER`]).
    pub consuming: bool,
    /// Enabled rules in the running rule set (0 before one is loaded).
    pub rules_loaded: usize,
    /// Input partitions this instance owns; empty is fine (more replicas than partitions).
    pub assigned_partitions: Vec<i32>,
    /// Seconds since the last batch with messages; `null` before the first.
    pub last_batch_age_seconds: Option<f64>,
    /// Seconds since the state on disk was last current for every owned partition (the oldest
    /// partition's checkpoint; with no partition owned, 0); `null` until the loop first reports.
    pub last_checkpoint_age_seconds: Option<f64>,
    /// Why the last rule reload was refused (the running set stays); `null` if it was not.
    pub rules_error: Option<String>,
    /// With `repartition.topic`, the repartition stage's own readiness (its partitions are
    /// the repartition topic's); `ready` above needs it ready too. `null` without.
    pub repartition: Option<Box<Readiness>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Not consuming, no rules, no partitions.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            consuming: AtomicBool::new(false),
            heartbeat_ms: AtomicU64::new(0),
            last_batch_ms: AtomicU64::new(0),
            last_checkpoint_ms: AtomicU64::new(0),
            rules: Mutex::default(),
            assigned: Mutex::default(),
            repartition: std::sync::OnceLock::new(),
        }
    }

    /// Makes `/readyz` report the repartition stage's health beside this (the input stage's),
    /// and be ready only when both are. Only the first call counts.
    pub fn attach(&self, repartition: Arc<Health>) {
        let _ = self.repartition.set(repartition);
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// Milliseconds from `started` to `at` (0 for an earlier `at`).
    fn ms_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    /// The loop is (or is no longer) consuming: subscribed and polling.
    pub fn set_consuming(&self, consuming: bool) {
        self.heartbeat();
        self.consuming.store(consuming, Ordering::Relaxed);
    }

    /// The loop finished an iteration.
    pub fn heartbeat(&self) {
        self.heartbeat_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A batch with messages was processed and written.
    pub fn batch_done(&self) {
        self.last_batch_ms
            .store(self.now_ms().saturating_add(1), Ordering::Relaxed);
    }

    /// Every owned partition's state on disk is current as of `as_of` (see
    /// [`Metrics::checkpoint_current`](crate::metrics::Metrics::checkpoint_current)).
    pub fn checkpoint_current(&self, as_of: Instant) {
        self.last_checkpoint_ms
            .store(self.ms_at(as_of).saturating_add(1), Ordering::Relaxed);
    }

    /// A rule set with `enabled` rules is running.
    pub fn set_rules_loaded(&self, enabled: usize) {
        if let Ok(mut r) = self.rules.lock() {
            r.loaded = Some(enabled);
        }
    }

    /// A rule reload was refused (`Some`), or the last one succeeded (`None`).
    pub fn set_rules_error(&self, error: Option<String>) {
        if let Ok(mut r) = self.rules.lock() {
            r.error = error;
        }
    }

    /// The input partitions this instance owns now.
    pub fn set_assigned(&self, partitions: Vec<i32>) {
        if let Ok(mut a) = self.assigned.lock() {
            *a = partitions;
        }
    }

    /// What `/readyz` reports now.
    pub fn readiness(&self) -> Readiness {
        let now = self.now_ms();
        let age = |ms: u64| Duration::from_millis(now.saturating_sub(ms));
        let consuming = self.consuming.load(Ordering::Relaxed)
            && age(self.heartbeat_ms.load(Ordering::Relaxed)) <= LOOP_STALL_AFTER;
        let rules = self.rules.lock().map(|r| r.clone()).unwrap_or_default();
        let last_batch = match self.last_batch_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(age(ms - 1).as_secs_f64()),
        };
        let last_checkpoint = match self.last_checkpoint_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(age(ms - 1).as_secs_f64()),
        };
        let repartition = self.repartition.get().map(|h| Box::new(h.readiness()));
        Readiness {
            ready: consuming
                && rules.loaded.is_some()
                && repartition.as_ref().is_none_or(|r| r.ready),
            consuming,
            rules_loaded: rules.loaded.unwrap_or(0),
            assigned_partitions: self.assigned.lock().map(|a| a.clone()).unwrap_or_default(),
            last_batch_age_seconds: last_batch,
            last_checkpoint_age_seconds: last_checkpoint,
            rules_error: rules.error,
            repartition,
        }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.health.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    match serde_json::to_string(&readiness) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The running server. Dropping it stops it, like [`HttpServer::stop`].
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `listen` (`http.listen`, e.g. `0.0.0.0:9464`; port 0 picks a free port) and
    /// serves on a thread of its own until stopped.
    pub fn start(
        listen: &str,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, HttpError> {
        let bind_error = |source| HttpError::Bind {
            listen: listen.to_owned(),
            source,
        };
        let addr: SocketAddr = listen
            .parse()
            .map_err(|e| bind_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(HttpError::Start)?;
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(self::metrics))
            .with_state(AppState { metrics, health });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("cordon-http".into())
            .spawn(move || serve(runtime, listener, app, stopped))
            .map_err(HttpError::Start)?;
        tracing::info!(address = %addr, "http server listening (/metrics, /healthz, /readyz)");
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address (with the real port when `http.listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open requests finish (at most a few seconds), and waits for the
    /// server thread to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the http server thread panicked");
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The server thread: serves until `stopped` resolves (or its sender is dropped), then shuts
/// down gracefully within [`SHUTDOWN_GRACE`].
fn serve(
    runtime: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    app: Router,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "the http server cannot use its socket; /metrics, /healthz and /readyz are down");
                return;
            }
        };
        let drain = Arc::new(tokio::sync::Notify::new());
        let drain_signal = drain.clone();
        let server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { drain_signal.notified().await })
                .into_future(),
        );
        let _ = stopped.await;
        // `notify_one` keeps a permit if the server is not waiting yet.
        drain.notify_one();
        match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "http server error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "http server task failed"),
            Err(_) => tracing::warn!("http requests still open at shutdown were closed"),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        let (head, body) = answer.split_once("\r\n\r\n").expect("a response");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status");
        (status, body.to_owned())
    }

    fn server() -> (HttpServer, Arc<Health>) {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let health = Arc::new(Health::new());
        let server =
            HttpServer::start("127.0.0.1:0", metrics, health.clone()).expect("server starts");
        (server, health)
    }

    #[test]
    fn endpoints_answer_and_readiness_follows_the_loop() {
        let (server, health) = server();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(get(addr, "/healthz"), (200, "ok".to_owned()));

        let (status, body) = get(addr, "/readyz");
        assert_eq!(status, 503, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"ready": false, "consuming": false, "rules_loaded": 0,
                "assigned_partitions": [], "last_batch_age_seconds": null,
                "last_checkpoint_age_seconds": null, "rules_error": null, "repartition": null})
        );

        health.set_rules_loaded(3);
        health.set_consuming(true);
        let (status, body) = get(addr, "/readyz");
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(json["ready"], true);
        assert_eq!(json["rules_loaded"], 3);
        assert_eq!(json["assigned_partitions"], serde_json::json!([]));

        health.set_assigned(vec![0, 2]);
        health.batch_done();
        health.set_rules_error(Some("rules/x.yaml:3:1: unknown key".into()));
        let (status, body) = get(addr, "/readyz");
        assert_eq!(
            status, 200,
            "a refused reload keeps the running set: {body}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(json["assigned_partitions"], serde_json::json!([0, 2]));
        assert!(json["last_batch_age_seconds"].as_f64().is_some(), "{body}");
        assert_eq!(json["rules_error"], "rules/x.yaml:3:1: unknown key");

        health.set_consuming(false);
        assert_eq!(get(addr, "/readyz").0, 503);

        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        assert!(
            body.contains("# TYPE cordon_events_consumed_total counter"),
            "{body}"
        );
        assert_eq!(get(addr, "/nope").0, 404);

        server.stop();
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
            "still listening after stop"
        );
    }

    #[test]
    fn with_a_repartition_stage_both_stages_must_be_ready() {
        let first = Health::new();
        first.set_rules_loaded(2);
        first.set_consuming(true);
        assert!(first.readiness().ready);
        let second = Arc::new(Health::new());
        second.set_rules_loaded(2);
        first.attach(second.clone());
        let r = first.readiness();
        assert!(!r.ready, "the second stage is not consuming yet: {r:?}");
        assert!(r.consuming, "the first is");
        second.set_consuming(true);
        second.set_assigned(vec![1]);
        let r = first.readiness();
        assert!(r.ready, "{r:?}");
        assert_eq!(
            r.repartition.map(|s| (s.ready, s.assigned_partitions)),
            Some((true, vec![1]))
        );
        second.set_consuming(false);
        assert!(!first.readiness().ready, "a stopped second stage");
    }

    #[test]
    fn a_port_in_use_is_an_error_naming_http_listen() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr").to_string();
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let err = HttpServer::start(&addr, metrics.clone(), Arc::new(Health::new()))
            .expect_err("the port is taken");
        let msg = err.to_string();
        assert!(msg.starts_with("config key `http.listen`"), "{msg}");
        assert!(msg.contains(&addr), "{msg}");
        let err = HttpServer::start("not-an-address", metrics, Arc::new(Health::new()))
            .expect_err("bad address");
        assert!(err.to_string().contains("http.listen"), "{err}");
    }

    #[test]
    fn a_stalled_loop_is_not_consuming() {
        let health = Health::new();
        health.set_rules_loaded(1);
        health.set_consuming(true);
        assert!(health.readiness().ready);
        health.heartbeat_ms.store(0, Ordering::Relaxed);
        let stalled = Health {
            started: Instant::now() - LOOP_STALL_AFTER - Duration::from_secs(1),
            ..health
        };
        assert!(!stalled.readiness().consuming);
    }
}
