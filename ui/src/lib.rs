//! `kiln ui`: a page over the run history, served by the kiln binary itself: the runs table, a
//! run's page (details, artifacts, its log followed live, its charts), a comparison of runs'
//! curves, the model registry, and the JSON API under `/api/` the page is built on. The page is
//! one HTML file compiled in; nothing is fetched from the network.
//!
//! - [`api`]: the JSON API's routes and handlers.
//! - [`auth`]: the bearer token (or login cookie) required beyond localhost.
//! - [`error`]: [`ApiError`], every failure as `{"error": ...}` with its status.

pub mod api;
pub mod auth;
pub mod error;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use axum::Router;
use axum::response::Html;
use axum::routing::{get, post};

pub use error::ApiError;

/// The page: HTML, CSS and JavaScript in one file.
const INDEX: &str = include_str!("../assets/index.html");

/// Where `kiln ui` listens and who may look.
#[derive(Debug, Clone)]
pub struct UiOptions {
    /// The address to bind (default 127.0.0.1).
    pub host: IpAddr,
    /// The port (default 5000; 0 picks a free one).
    pub port: u16,
    /// Required beyond localhost: `KILN_UI_TOKEN`.
    pub token: Option<String>,
}

/// What `kiln ui` can fail with before it serves.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// Bound beyond localhost without a token.
    #[error(
        "--host {0} is reachable from other machines: set KILN_UI_TOKEN to a secret (clients \
         send it as 'Authorization: Bearer <token>' or sign in on the page), or bind 127.0.0.1"
    )]
    NoToken(IpAddr),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("kiln ui: {0}")]
    Serve(std::io::Error),
}

/// The app: the page, the login form and the API over the run history in `home`.
pub fn router(home: PathBuf, token: Option<String>) -> Router {
    let state = api::State::new(home, token);
    Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route("/login", post(auth::login))
        .nest("/api", api::routes())
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .with_state(state)
}

/// Binds `options`' address, calls `ready` with the bound address, and serves until Ctrl-C
/// or SIGTERM.
pub fn run(
    home: PathBuf,
    options: UiOptions,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), UiError> {
    if !options.host.is_loopback() && options.token.as_deref().is_none_or(str::is_empty) {
        return Err(UiError::NoToken(options.host));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(UiError::Serve)?;
    runtime.block_on(async move {
        let addr = SocketAddr::new(options.host, options.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|error| UiError::Bind { addr, error })?;
        ready(listener.local_addr().map_err(UiError::Serve)?);
        axum::serve(listener, router(home, options.token))
            .with_graceful_shutdown(shutdown())
            .await
            .map_err(UiError::Serve)
    })
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
