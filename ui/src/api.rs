//! The JSON API under `/api/`, over the run history and the model registry:
//!
//! - `GET /api/runs[?experiment=E&status=S]`: runs, newest first (a trial names its sweep);
//! - `GET /api/runs/{id}`: one run, with its job and artifacts;
//! - `GET /api/runs/{id}/metrics`: every metric value, in the order logged;
//! - `GET /api/runs/{id}/log[?offset=N]`: the output log from byte N, the next offset, and
//!   whether the run has ended (the page follows a live run with it);
//! - `GET /api/runs/{id}/files/{path}`: a file under the run's `outputs/` or `logs/` (never
//!   outside them);
//! - `GET /api/models`, `/api/models/{name}/{version}`, `/api/models/{name}/{version}/files/{path}`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kiln_runs::registry::{inside, resolve_in};
use kiln_runs::{RunHistory, RunPaths, RunStatus, run_dir};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;

/// What every handler shares: where the history is, and the token (if any).
#[derive(Clone)]
pub struct State {
    home: Arc<PathBuf>,
    /// `KILN_UI_TOKEN`, when set.
    pub token: Option<Arc<str>>,
}

impl State {
    /// The state over `$KILN_HOME` = `home`.
    pub fn new(home: PathBuf, token: Option<String>) -> Self {
        Self {
            home: Arc::new(home),
            token: token.filter(|t| !t.is_empty()).map(Arc::from),
        }
    }

    /// Runs `f` on the history, off the async threads (SQLite blocks).
    async fn with_history<T: Send + 'static>(
        &self,
        f: impl FnOnce(&RunHistory) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let home = self.home.clone();
        tokio::task::spawn_blocking(move || {
            let history = RunHistory::open_to_read(&home)?;
            history.reap_lost()?;
            f(&history)
        })
        .await
        .map_err(|e| ApiError {
            status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            message: e.to_string(),
        })?
    }
}

/// The API's routes.
pub fn routes() -> Router<State> {
    Router::new()
        .route("/runs", get(runs))
        .route("/runs/{id}", get(run))
        .route("/runs/{id}/metrics", get(metrics))
        .route("/runs/{id}/log", get(log))
        .route("/runs/{id}/files/{*path}", get(run_file))
        .route("/models", get(models))
        .route("/models/{name}/{version}", get(model))
        .route("/models/{name}/{version}/files/{*path}", get(model_file))
        .fallback(not_found)
}

/// Anything else: 404 as JSON.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such page or API route: {}", uri.path()))
}

#[derive(Deserialize)]
struct RunFilter {
    experiment: Option<String>,
    status: Option<String>,
}

async fn runs(
    AxumState(state): AxumState<State>,
    Query(filter): Query<RunFilter>,
) -> Result<Json<Value>, ApiError> {
    let status = match filter.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(s.parse::<RunStatus>().map_err(ApiError::bad_request)?),
        None => None,
    };
    state
        .with_history(move |h| {
            let sweep_of = h.sweep_of_trials()?;
            let mut out = Vec::new();
            for r in h.runs(filter.experiment.as_deref().filter(|e| !e.is_empty()))? {
                if status.is_some_and(|s| s != r.status) {
                    continue;
                }
                let mut v = serde_json::to_value(&r).map_err(internal)?;
                v["sweep_id"] = sweep_of
                    .get(&r.id)
                    .map_or(Value::Null, |s| s.as_str().into());
                out.push(v);
            }
            Ok(Json(Value::Array(out)))
        })
        .await
}

async fn run(
    AxumState(state): AxumState<State>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .with_history(move |h| {
            let r = h.run(&id)?;
            let mut v = serde_json::to_value(&r).map_err(internal)?;
            v["artifacts"] = serde_json::to_value(h.artifacts(&r.id)?).map_err(internal)?;
            v["job"] = serde_json::from_str(&r.job).unwrap_or(Value::String(r.job.clone()));
            v["sweep_id"] = h
                .sweep_of_trials()?
                .get(&r.id)
                .map_or(Value::Null, |s| s.as_str().into());
            Ok(Json(v))
        })
        .await
}

async fn metrics(
    AxumState(state): AxumState<State>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .with_history(move |h| {
            let id = h.resolve(&id)?;
            Ok(Json(
                serde_json::to_value(h.metrics(&id)?).map_err(internal)?,
            ))
        })
        .await
}

#[derive(Deserialize)]
struct LogFrom {
    offset: Option<u64>,
}

/// The folders of a run whose files are served.
const RUN_FILES: [&str; 2] = ["outputs", "logs"];

/// At most this much of a log per request; the page asks again from the new offset.
const LOG_CHUNK: u64 = 1 << 20;

async fn log(
    AxumState(state): AxumState<State>,
    Path(id): Path<String>,
    Query(from): Query<LogFrom>,
) -> Result<Json<Value>, ApiError> {
    state
        .with_history(move |h| {
            let run = h.run(&id)?;
            let path = RunPaths::new(h.home(), &run.id).output_log();
            let offset = from.offset.unwrap_or(0);
            let bytes = match std::fs::File::open(&path) {
                Ok(mut f) => {
                    use std::io::{Read, Seek, SeekFrom};
                    f.seek(SeekFrom::Start(offset)).map_err(internal)?;
                    let mut buf = Vec::new();
                    f.take(LOG_CHUNK).read_to_end(&mut buf).map_err(internal)?;
                    buf
                }
                Err(_) => Vec::new(),
            };
            // A character cut by the chunk's end waits for the next request.
            let whole = match std::str::from_utf8(&bytes) {
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                _ => bytes.len(),
            };
            let bytes = &bytes[..whole];
            Ok(Json(json!({
                "text": String::from_utf8_lossy(bytes),
                "offset": offset + bytes.len() as u64,
                "ended": run.status.is_final(),
                "status": run.status,
            })))
        })
        .await
}

async fn run_file(
    AxumState(state): AxumState<State>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    state
        .with_history(move |h| {
            let id = h.resolve(&id)?;
            // What a run made, not its snapshot of the user's source tree.
            if !RUN_FILES
                .iter()
                .any(|dir| path.starts_with(&format!("{dir}/")))
            {
                return Err(ApiError::not_found(format!(
                    "'{path}': a run's files are under {}",
                    RUN_FILES.map(|d| format!("{d}/")).join(" and ")
                )));
            }
            file_in(&run_dir(h.home(), &id), &path)
        })
        .await
}

async fn models(AxumState(state): AxumState<State>) -> Result<Json<Value>, ApiError> {
    state
        .with_history(|h| Ok(Json(serde_json::to_value(h.models()?).map_err(internal)?)))
        .await
}

async fn model(
    AxumState(state): AxumState<State>,
    Path((name, version)): Path<(String, i64)>,
) -> Result<Json<Value>, ApiError> {
    state
        .with_history(move |h| {
            let Some((version, files)) = h.model_files(&name, Some(version))? else {
                return Err(ApiError::not_found(format!("no model {name}:{version}")));
            };
            let record = h
                .models()?
                .into_iter()
                .find(|m| m.name == name && m.version == version);
            Ok(Json(json!({ "model": record, "files": files })))
        })
        .await
}

async fn model_file(
    AxumState(state): AxumState<State>,
    Path((name, version, path)): Path<(String, i64, String)>,
) -> Result<Response, ApiError> {
    state
        .with_history(move |h| {
            if h.model_files(&name, Some(version))?.is_none() {
                return Err(ApiError::not_found(format!("no model {name}:{version}")));
            }
            let dir = h
                .home()
                .join("models")
                .join(&name)
                .join(version.to_string());
            file_in(&dir, &path)
        })
        .await
}

/// The file at `rel` inside `root`: refused (404) when the path climbs out, is absolute, or
/// leads out through a symbolic link.
fn file_in(root: &std::path::Path, rel: &str) -> Result<Response, ApiError> {
    let rel_path = inside(rel).map_err(|e| ApiError::not_found(e.to_string()))?;
    let Some(path) = resolve_in(root, &rel_path).filter(|p| p.is_file()) else {
        return Err(ApiError::not_found(format!("no file '{rel}' here")));
    };
    let bytes = std::fs::read(&path).map_err(internal)?;
    let name = path
        .file_name()
        .map_or("file".into(), |n| n.to_string_lossy().into_owned());
    let kind = match path.extension().and_then(|e| e.to_str()) {
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("log" | "txt" | "jsonl" | "toml") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    Ok((
        [
            (header::CONTENT_TYPE, kind.to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{}\"", name.replace('"', "")),
            ),
        ],
        bytes,
    )
        .into_response())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        message: e.to_string(),
    }
}
