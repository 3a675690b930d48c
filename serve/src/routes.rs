//! The routes: the Open Inference Protocol's health, metadata and infer, plain
//! `POST /predictions/{name}` for curl, and `GET /metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kiln_engine::data::decode::decode_rgb_bytes;
use kiln_engine::infer;
use serde::Deserialize;
use serde_json::json;

use crate::App;
use crate::batcher::Job;
use crate::error::Fault;
use crate::protocol::{self, INPUT, Input, OUTPUT};

type Shared = State<Arc<App>>;

/// Most bytes decoding one request image may allocate: a 4096 x 4096 RGBA image.
const MAX_DECODE_BYTES: u64 = 64 << 20;

/// `GET /v2/health/live`: the process answers.
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "live": true }))
}

/// `GET /v2/health/ready`: 200 once the model is loaded and warmed, 503 before.
pub async fn ready(State(app): Shared) -> Response {
    ready_answer(&app, false)
}

fn ready_answer(app: &App, model: bool) -> Response {
    let ready = app.metrics.ready.load(Ordering::Acquire);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = if model {
        json!({ "name": app.name, "ready": ready })
    } else {
        json!({ "ready": ready })
    };
    (status, Json(body)).into_response()
}

/// `GET /v2`: the server's metadata.
pub async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": "kiln",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "classification"],
    }))
}

/// `{name}` or `{name}/versions/{version}` in a model route.
#[derive(Deserialize)]
pub struct ModelPath {
    name: String,
    #[serde(default)]
    version: Option<String>,
}

impl App {
    fn check_model(&self, path: &ModelPath) -> Result<(), Fault> {
        let right_version = path.version.as_deref().is_none_or(|v| v == self.version);
        if path.name == self.name && right_version {
            return Ok(());
        }
        let asked = match &path.version {
            Some(v) => format!("{} version {v}", path.name),
            None => path.name.clone(),
        };
        Err(Fault::not_found(format!(
            "no model {asked} here; this server serves {} version {}",
            self.name, self.version
        )))
    }

    fn check_ready(&self) -> Result<(), Fault> {
        if self.metrics.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Fault::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "model {} is still loading; try again when /v2/health/ready answers 200",
                    self.name
                ),
            ))
        }
    }
}

/// `GET /v2/models/{name}[/versions/{version}]`: inputs, outputs, datatypes, shapes.
pub async fn model_metadata(
    State(app): Shared,
    path: Result<Path<ModelPath>, PathRejection>,
) -> Result<Response, Fault> {
    let path = rejected(path)?.0;
    app.check_model(&path)?;
    let s = app.info.image_size;
    Ok(Json(json!({
        "name": app.name,
        "versions": [app.version],
        "platform": "kiln",
        "inputs": [{ "name": INPUT, "datatype": "FP32", "shape": [-1, 3, s, s] }],
        "outputs": [{ "name": OUTPUT, "datatype": "FP32", "shape": [-1, app.info.classes.len()] }],
        "parameters": {
            "arch": app.info.arch,
            "classes": app.info.classes,
            "image_size": s,
            "mean": app.info.mean,
            "std": app.info.std,
            "max_batch_size": app.limits.max_batch_size,
        },
    }))
    .into_response())
}

/// `GET /v2/models/{name}[/versions/{version}]/ready`.
pub async fn model_ready(
    State(app): Shared,
    path: Result<Path<ModelPath>, PathRejection>,
) -> Result<Response, Fault> {
    let path = rejected(path)?.0;
    app.check_model(&path)?;
    Ok(ready_answer(&app, true))
}

/// `POST /v2/models/{name}[/versions/{version}]/infer`.
pub async fn infer(
    State(app): Shared,
    path: Result<Path<ModelPath>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Fault> {
    let path = rejected(path)?.0;
    app.check_model(&path)?;
    let body = body.map_err(|r| app.rejected(r))?;
    app.check_ready()?;
    let header_length = headers
        .get(protocol::HEADER_LENGTH)
        .map(|v| v.to_str().unwrap_or("?").to_string());
    let size = app.info.image_size as usize;
    let request = protocol::parse(
        &body,
        header_length.as_deref(),
        size,
        app.max_request_images(),
    )?;
    drop(body);
    let n = request.input.len();
    let inputs = match request.input {
        Input::Floats { values, .. } => values,
        Input::Images(images) => app.clone().preprocess(images, false).await?,
    };
    let logits = app.score(inputs, n).await?;
    let response = protocol::respond(
        &app.name,
        &app.version,
        request.id,
        request.output,
        &logits,
        &app.info.classes,
    );
    Ok(match response.binary {
        None => ([(header::CONTENT_TYPE, "application/json")], response.json).into_response(),
        Some(binary) => {
            let length = HeaderValue::from(response.json.len());
            let mut body = response.json;
            body.extend(binary);
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    ),
                    (
                        header::HeaderName::from_static(protocol::HEADER_LENGTH),
                        length,
                    ),
                ],
                body,
            )
                .into_response()
        }
    })
}

/// `?top_k=N` on `/predictions/{name}`.
#[derive(Deserialize)]
pub struct TopK {
    top_k: Option<String>,
}

/// `POST /predictions/{name}` with an image as the body: the top-k classes, in the shape
/// `kiln predict --format json` prints (`"path": "-"` stands for the request body).
pub async fn predictions(
    State(app): Shared,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<TopK>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Fault> {
    let (name, query) = (rejected(name)?.0, rejected(query)?.0);
    app.check_model(&ModelPath {
        name,
        version: None,
    })?;
    let body = body.map_err(|r| app.rejected(r))?;
    let k = match query.top_k.as_deref() {
        None => 5,
        Some(text) => match text.parse::<usize>() {
            Ok(k) if k >= 1 => k,
            _ => {
                return Err(Fault::bad(format!(
                    "top_k '{text}' is out of range; expected a whole number, at least 1"
                )));
            }
        },
    };
    if body.is_empty() {
        return Err(Fault::bad(
            "the request body is empty; send an encoded image (png, jpeg, bmp, gif or webp)",
        ));
    }
    app.check_ready()?;
    let inputs = app.clone().preprocess(vec![body.to_vec()], true).await?;
    let logits = app.score(inputs, 1).await?;
    let probs = infer::softmax(&logits);
    let predictions: Vec<_> = infer::top_k(&probs, k)
        .into_iter()
        .map(|c| json!({ "class": app.info.classes[c], "probability": probs[c] }))
        .collect();
    Ok(Json(json!([{ "path": "-", "predictions": predictions }])).into_response())
}

/// An extractor's rejection (a path that is not UTF-8, a repeated query key) as JSON.
fn rejected<T, R: IntoResponse + std::fmt::Display>(extracted: Result<T, R>) -> Result<T, Fault> {
    extracted.map_err(|r| {
        let text = r.to_string();
        Fault::new(r.into_response().status(), text)
    })
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(app): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// Anything else: 404 as JSON.
pub async fn not_found(request: Request) -> Fault {
    Fault::not_found(format!(
        "no route {} {}; kiln serve answers the Open Inference Protocol under /v2, POST \
         /predictions/NAME and GET /metrics",
        request.method(),
        request.uri().path()
    ))
}

/// A known route with the wrong method.
pub async fn wrong_method(request: Request) -> Fault {
    Fault::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Answers 503 when a request (reading its body, decoding, waiting for the model) takes longer
/// than `--timeout-ms`.
pub async fn deadline(State(app): Shared, request: Request, next: Next) -> Response {
    match tokio::time::timeout(app.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Fault::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request took longer than {} ms (--timeout-ms)",
                app.timeout.as_millis()
            ),
        )
        .into_response(),
    }
}

/// Counts every request by route and status, and times inference.
pub async fn count(State(app): Shared, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let route = if path.starts_with("/v2/models/") && path.ends_with("/infer") {
        "infer"
    } else if path.starts_with("/predictions/") {
        "predictions"
    } else if path.starts_with("/v2/health/") {
        "health"
    } else if path.starts_with("/v2") {
        "metadata"
    } else if path == "/metrics" {
        "metrics"
    } else {
        "other"
    };
    let started = Instant::now();
    let response = next.run(request).await;
    app.metrics
        .request(route, response.status().as_u16(), started.elapsed());
    response
}

impl App {
    fn rejected(&self, rejection: BytesRejection) -> Fault {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Fault::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than the {}-byte limit (--max-body-mb)",
                    self.max_body_bytes
                ),
            )
        } else {
            Fault::new(rejection.status(), rejection.body_text())
        }
    }

    /// Decodes and preprocesses encoded images off the async threads; `body` names a lone
    /// image "the request body" in errors, else each is `inputs[0] element I`.
    async fn preprocess(
        self: Arc<Self>,
        images: Vec<Vec<u8>>,
        body: bool,
    ) -> Result<Vec<f32>, Fault> {
        let _permit = self
            .decoders
            .acquire()
            .await
            .expect("the decoder semaphore stays open");
        let app = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut inputs = Vec::with_capacity(images.len() * infer::input_len(&app.info));
            for (i, bytes) in images.iter().enumerate() {
                let name = if body {
                    "the request body".to_string()
                } else {
                    format!("inputs[0] element {i}")
                };
                let image = decode_rgb_bytes(bytes, &name, MAX_DECODE_BYTES)
                    .map_err(|e| Fault::bad(e.to_string()))?;
                infer::preprocess(&app.info, &image, &mut inputs)
                    .map_err(|why| Fault::bad(format!("{name}: {why}")))?;
            }
            Ok(inputs)
        })
        .await
        .map_err(|_| {
            Fault::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "decoding failed (a kiln bug)",
            )
        })?
    }

    /// Queues `n` inputs for the model and waits for their logits, at most the timeout.
    async fn score(&self, inputs: Vec<f32>, n: usize) -> Result<Vec<f32>, Fault> {
        // Bounded work: past the queue's capacity a request is turned away, not queued.
        let Ok(_queued) = self.queued.try_acquire_many(n as u32) else {
            return Err(Fault::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the server is at capacity ({} images queued or being scored); retry",
                    self.queue_capacity
                ),
            ));
        };
        let (reply, logits) = tokio::sync::oneshot::channel();
        if !self.batcher.submit(Job { inputs, n, reply }) {
            return Err(Fault::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is stopping",
            ));
        }
        match tokio::time::timeout(self.timeout, logits).await {
            Ok(Ok(Ok(logits))) => Ok(logits),
            Ok(Ok(Err(why))) => Err(Fault::new(StatusCode::INTERNAL_SERVER_ERROR, why)),
            Ok(Err(_)) => Err(Fault::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is stopping",
            )),
            Err(_) => Err(Fault::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the model did not answer within {} ms (--timeout-ms); the server is \
                     overloaded",
                    self.timeout.as_millis()
                ),
            )),
        }
    }
}
