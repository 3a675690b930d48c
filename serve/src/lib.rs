//! `kiln serve`: a trained model behind HTTP, speaking the Open Inference Protocol (KServe v2,
//! also spoken by Triton and Seldon) so existing clients work, with dynamic batching, API
//! keys, limits, Prometheus metrics and a graceful stop on SIGTERM.
//!
//! - [`protocol`]: the inference request and response, JSON and binary.
//! - [`routes`]: the HTTP routes.
//! - [`batcher`]: the queue that gathers requests into batches for the model workers.
//! - [`auth`]: the API keys.
//! - [`metrics`]: what `GET /metrics` reports.
//! - [`error`]: [`Fault`], every failure as `{"error": ...}` with its status.

pub mod auth;
pub mod batcher;
pub mod error;
pub mod metrics;
pub mod protocol;
pub mod routes;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use kiln_engine::config::DeviceKind;
use kiln_engine::model_dir::{self, ModelInfo};
use kiln_engine::train::threads::available_cores;
use tokio::sync::{Notify, Semaphore};

pub use auth::Keys;
pub use batcher::BatchLimits;
pub use error::Fault;

use auth::Auth;
use batcher::Batcher;
use metrics::Metrics;

/// The model a server serves.
#[derive(Debug, Clone)]
pub struct ServedModel {
    /// The model directory (`model.safetensors` + `kiln.json`).
    pub dir: PathBuf,
    /// The name clients address it by.
    pub name: String,
    /// Its version ("1" for a model directory outside the registry).
    pub version: String,
}

/// The most model copies one service runs.
pub const MAX_WORKERS: usize = 64;

/// How `kiln serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The address to bind.
    pub host: IpAddr,
    /// The port (0 picks a free one).
    pub port: u16,
    /// Where the model runs.
    pub device: DeviceKind,
    /// Batching.
    pub limits: BatchLimits,
    /// Model copies, each on its own thread (1 to [`MAX_WORKERS`]).
    pub workers: usize,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// Longest a request waits for the model.
    pub timeout: Duration,
    /// The keys requests must present; `None` serves without (`--no-auth`, loopback only).
    pub keys: Option<Keys>,
    /// A file the keys are re-read from on SIGHUP.
    pub keys_file: Option<PathBuf>,
}

/// What a server reports as it runs (the command line prints these).
#[derive(Debug)]
pub enum Notice {
    /// Listening; the model is loading.
    Listening(SocketAddr),
    /// Every model worker is loaded and warmed: ready.
    Ready {
        /// How long the slowest worker took.
        took: Duration,
    },
    /// SIGHUP: the keys were reloaded, or why not.
    Keys(Result<String, String>),
    /// SIGTERM or Ctrl-C: finishing requests in flight.
    Draining,
}

/// What `kiln serve` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The model directory is not one.
    #[error(transparent)]
    Model(#[from] kiln_engine::EngineError),
    /// An option is out of range.
    #[error("{0}")]
    Option(String),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The model could not be loaded.
    #[error("cannot load the model from {dir}: {why}")]
    Load {
        /// The directory.
        dir: String,
        /// Why.
        why: String,
    },
    /// The server stopped with an error.
    #[error("kiln serve: {0}")]
    Serve(std::io::Error),
}

/// The state every route shares.
pub struct App {
    name: String,
    version: String,
    info: ModelInfo,
    limits: BatchLimits,
    max_body_bytes: usize,
    timeout: Duration,
    batcher: Batcher,
    metrics: Arc<Metrics>,
    auth: Auth,
    decoders: Semaphore,
    /// One permit per image queued or being scored.
    queued: Semaphore,
    queue_capacity: usize,
}

impl App {
    /// The most images one request may hold.
    fn max_request_images(&self) -> usize {
        (8 * self.limits.max_batch_size).max(64)
    }
}

/// The routes over `app`.
pub fn router(app: Arc<App>) -> Router {
    let model = "/v2/models/{name}";
    let version = "/v2/models/{name}/versions/{version}";
    Router::new()
        .route("/v2", get(routes::server_metadata))
        .route("/v2/health/live", get(routes::live))
        .route("/v2/health/ready", get(routes::ready))
        .route(model, get(routes::model_metadata))
        .route(version, get(routes::model_metadata))
        .route(&format!("{model}/ready"), get(routes::model_ready))
        .route(&format!("{version}/ready"), get(routes::model_ready))
        .route(&format!("{model}/infer"), post(routes::infer))
        .route(&format!("{version}/infer"), post(routes::infer))
        .route("/predictions/{name}", post(routes::predictions))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(DefaultBodyLimit::max(app.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::require_key,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            routes::count,
        ))
        .with_state(app)
}

/// Checks the options and the model directory, binds the address, loads the model in the
/// background (ready once every worker is warmed), and serves until SIGTERM or Ctrl-C, then
/// finishes the requests in flight.
pub fn run(
    model: ServedModel,
    options: ServeOptions,
    notify: impl Fn(Notice) + Send + Sync + 'static,
) -> Result<(), ServeError> {
    serve_until(model, options, notify, terminated())
}

/// [`run`], stopping when `stop` completes instead of on a signal (for embedding and tests).
pub fn serve_until(
    model: ServedModel,
    options: ServeOptions,
    notify: impl Fn(Notice) + Send + Sync + 'static,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    check(&options)?;
    let (info, _) = model_dir::read_info(&model.dir)?;
    let notify = Arc::new(notify);
    let metrics = Arc::new(Metrics::default());
    let (loaded_tx, loaded) = std::sync::mpsc::channel();
    let cores = available_cores();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.min(4))
        .max_blocking_threads(cores)
        .enable_all()
        .build()
        .map_err(ServeError::Serve)?;
    runtime.block_on(async move {
        let addr = SocketAddr::new(options.host, options.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|error| ServeError::Bind { addr, error })?;
        // Enough for every worker's next few batches and the largest request.
        let max_batch = options.limits.max_batch_size;
        let queue_capacity = (4 * options.workers * max_batch)
            .max(8 * max_batch)
            .max(512);
        let batcher = Batcher::start(
            model.dir.clone(),
            options.device,
            options.workers,
            options.limits,
            metrics.clone(),
            loaded_tx,
        );
        let app = Arc::new(App {
            name: model.name,
            version: model.version,
            info,
            limits: options.limits,
            max_body_bytes: options.max_body_bytes,
            timeout: options.timeout,
            batcher,
            metrics: metrics.clone(),
            auth: Auth::new(options.keys, options.keys_file),
            decoders: Semaphore::new(cores),
            queued: Semaphore::new(queue_capacity),
            queue_capacity,
        });
        notify(Notice::Listening(
            listener.local_addr().map_err(ServeError::Serve)?,
        ));
        let failed = Arc::new(Notify::new());
        let load_error = Arc::new(std::sync::Mutex::new(None));
        {
            let (notify, failed, load_error, metrics) = (
                notify.clone(),
                failed.clone(),
                load_error.clone(),
                metrics.clone(),
            );
            let dir = model.dir.display().to_string();
            let workers = options.workers;
            tokio::task::spawn_blocking(move || {
                let mut slowest = Duration::ZERO;
                for _ in 0..workers {
                    match loaded.recv() {
                        Ok(Ok(took)) => slowest = slowest.max(took),
                        Ok(Err(why)) => {
                            *load_error.lock().expect("lock") = Some(ServeError::Load { dir, why });
                            failed.notify_one();
                            return;
                        }
                        Err(_) => {
                            let why = "a model worker stopped while loading".to_string();
                            *load_error.lock().expect("lock") = Some(ServeError::Load { dir, why });
                            failed.notify_one();
                            return;
                        }
                    }
                }
                metrics.ready.store(true, Ordering::Release);
                notify(Notice::Ready { took: slowest });
            });
        }
        let hup = {
            let (app, notify) = (app.clone(), notify.clone());
            tokio::spawn(async move {
                let Ok(mut hup) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                else {
                    return;
                };
                while hup.recv().await.is_some() {
                    notify(Notice::Keys(app.auth.reload()));
                }
            })
        };
        let stopping = Arc::new(Notify::new());
        let stop = {
            let (notify, stopping, metrics) = (notify.clone(), stopping.clone(), metrics.clone());
            async move {
                tokio::select! {
                    _ = stop => notify(Notice::Draining),
                    _ = failed.notified() => {}
                }
                metrics.ready.store(false, Ordering::Release);
                stopping.notify_one();
            }
        };
        // Requests in flight get their timeout and a little more to finish; a client that
        // holds a connection open longer does not hold the stop.
        let grace = options.timeout + Duration::from_secs(2);
        let served = tokio::select! {
            served = axum::serve(listener, router(app.clone())).with_graceful_shutdown(stop) => {
                served.map_err(ServeError::Serve)
            }
            _ = async { stopping.notified().await; tokio::time::sleep(grace).await } => Ok(()),
        };
        hup.abort();
        let batcher_app = app.clone();
        tokio::task::spawn_blocking(move || batcher_app.batcher.close())
            .await
            .ok();
        if let Some(error) = load_error.lock().expect("lock").take() {
            return Err(error);
        }
        served
    })
}

fn check(options: &ServeOptions) -> Result<(), ServeError> {
    let bad = |option: &str, value: String, expected: &str| {
        Err(ServeError::Option(format!(
            "--{option} {value} is out of range; expected {expected}"
        )))
    };
    if !(1..=1024).contains(&options.limits.max_batch_size) {
        return bad(
            "max-batch-size",
            options.limits.max_batch_size.to_string(),
            "1 to 1024",
        );
    }
    if options.limits.max_batch_delay > Duration::from_secs(10) {
        return bad(
            "max-batch-delay-ms",
            options.limits.max_batch_delay.as_millis().to_string(),
            "0 to 10000",
        );
    }
    if !(1..=MAX_WORKERS).contains(&options.workers) {
        return bad(
            "workers",
            options.workers.to_string(),
            &format!("1 to {MAX_WORKERS} model copies"),
        );
    }
    if options.keys.is_none() && !options.host.is_loopback() {
        return Err(ServeError::Option(format!(
            "--no-auth with --host {}: a server without keys may only listen on a loopback \
             address (127.0.0.1 or ::1)",
            options.host
        )));
    }
    Ok(())
}

async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
