//! The worker's HTTP API (axum): thin handlers that extract, validate,
//! hand one call to the [`Worker`], and answer.
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | `/api/v1alpha/batches/jobs/create` | 200 empty; 400, 403, 413, 503 |
//! | DELETE | `/api/v1alpha/batches/{batch_id}/jobs/{job_id}/delete` | 200 `{"state": ...}`; 404 |
//! | GET | `/api/v1alpha/batches/{batch_id}/jobs/{job_id}/status` | status JSON; 404 |
//! | GET | `/api/v1alpha/batches/{batch_id}/jobs/{job_id}/events` | event history; 404 |
//! | GET | `/api/v1alpha/batches/{batch_id}/jobs/{job_id}/log/{task}` | `input`, `main` or `output` log; 404 |
//! | GET | `/api/v1alpha/batches/{batch_id}/jobs/{job_id}/resource_usage` | `{task: base64}`; 404 |
//! | GET | `/healthcheck` | `{"name": worker}`; 503 before activation and while shutting down |
//! | GET | `/metrics` | Prometheus text format 0.0.4 (see [`crate::metrics`]) |
//! | POST | `/api/v1alpha/kill` | 200; the worker begins shutdown |
//! | GET | `/batch-worker/v1/jobs`, `/batch-worker/v1/worker` | our own calls, for operators: see [`extension`] |
//!
//! The log call honours `Range: bytes=N-` (206 with the bytes from `N`,
//! 416 past the end), which `jobs log -f` follows a log with.
//!
//! With an API token ([`ApiConfig::api_token`]), every path but
//! `/healthcheck` and `/metrics` answers 401 without `Authorization:
//! Bearer <token>` (see [`auth`]).
//!
//! No handler touches the spec store: a create answers from memory.

pub mod auth;
mod body_guard;
mod error;
pub mod extension;

use std::collections::HashMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::trace::TraceLayer;

pub use auth::{ApiToken, TokenFileError};
pub use body_guard::{BodyBudgetExhausted, BodyDeadlineExceeded, BodyGuard};
pub use error::{ApiError, RETRY_AFTER_SECONDS};

use crate::server::BODY_READ_TIMEOUT;
use crate::wire::{CreateJob, FieldError};
use crate::worker::Worker;

/// Path of the create call.
pub const CREATE_PATH: &str = "/api/v1alpha/batches/jobs/create";

/// What the API is built with.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest create body, in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// The bearer token every request but `/healthcheck` and `/metrics`
    /// must carry; `None`: no authentication.
    pub api_token: Option<ApiToken>,
    /// How long a request's whole body may take to arrive once its headers
    /// have (then 408), however it trickles in; [`BODY_READ_TIMEOUT`] by
    /// default. Headers themselves must arrive within
    /// [`crate::server::HEADER_READ_TIMEOUT`].
    pub body_read_timeout: Duration,
    /// Most bytes of request bodies held at once, over every connection
    /// (then 503 for the body whose bytes do not fit);
    /// [`DEFAULT_MAX_BUFFERED_BODY_BYTES`] by default.
    pub max_buffered_body_bytes: usize,
}

/// Default bound on the body bytes held at once (256 MiB): fifteen
/// largest create bodies.
pub const DEFAULT_MAX_BUFFERED_BODY_BYTES: usize = 256 * 1024 * 1024;

impl ApiConfig {
    /// Bodies up to `max_body_bytes`, no authentication.
    pub fn new(max_body_bytes: usize) -> ApiConfig {
        ApiConfig {
            max_body_bytes,
            api_token: None,
            body_read_timeout: BODY_READ_TIMEOUT,
            max_buffered_body_bytes: DEFAULT_MAX_BUFFERED_BODY_BYTES,
        }
    }
}

/// The API's router over `worker`: the routes below, behind the token
/// check when `config` has a token, on [`stack`].
pub fn router(worker: Worker, config: &ApiConfig) -> Router {
    let routes = Router::new()
        .route(CREATE_PATH, post(create))
        .route(
            "/api/v1alpha/batches/{batch_id}/jobs/{job_id}/delete",
            delete(cancel),
        )
        .route(
            "/api/v1alpha/batches/{batch_id}/jobs/{job_id}/status",
            get(status),
        )
        .route(
            "/api/v1alpha/batches/{batch_id}/jobs/{job_id}/events",
            get(events),
        )
        .route(
            "/api/v1alpha/batches/{batch_id}/jobs/{job_id}/log/{container}",
            get(log),
        )
        .route(
            "/api/v1alpha/batches/{batch_id}/jobs/{job_id}/resource_usage",
            get(resource_usage),
        )
        .route(extension::JOBS_PATH, get(extension::list))
        .route(extension::WORKER_PATH, get(extension::about))
        .route("/healthcheck", get(healthcheck))
        .route("/metrics", get(metrics))
        .route("/api/v1alpha/kill", post(kill))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(worker);
    stack(routes, config)
}

/// The middleware every route runs under, outermost first: tower-http's
/// trace layer, the [`BodyGuard`] (the whole body within
/// `config.body_read_timeout` of its headers, else 408; at most
/// `config.max_buffered_body_bytes` of bodies held at once, else 503), the
/// API token check when `config` has a token (401, before anything about
/// the body), the 413 for a declared `Content-Length` over
/// `config.max_body_bytes`, and axum's body limit for bodies that grow
/// past it. Public so that benchmarks can put other handlers on the same
/// stack.
///
/// There is no timeout on a handler's own time: the one handler that waits
/// is create, for its `Created` record to be written, and answering before
/// that would leave a job that may still start after the driver was told
/// it failed.
pub fn stack(routes: Router, config: &ApiConfig) -> Router {
    let max_body_bytes = config.max_body_bytes;
    let guard = BodyGuard::new(config.body_read_timeout, config.max_buffered_body_bytes);
    routes
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                refuse_declared_oversize(request, next, max_body_bytes)
            },
        ))
        .layer(axum::middleware::from_fn_with_state(
            config.api_token.clone(),
            auth::require_token,
        ))
        .layer(axum::middleware::from_fn_with_state(
            guard,
            BodyGuard::layer,
        ))
        // 5xx answers here are 503s (not activated, shutting down, journal
        // unwritable), expected in a fleet's life: a warning, not an error.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::WARN)),
        )
}

async fn create(
    State(worker): State<Worker>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let started = std::time::Instant::now();
    let answer = async {
        let body = body.map_err(ApiError::from_body_rejection)?;
        // As Hail's worker: a worker not taking jobs says so first (503),
        // whatever the body.
        if let Err(not_taking) = worker.taking_jobs() {
            wipe(body);
            return Err(not_taking.into());
        }
        let job = CreateJob::parse(&body);
        wipe(body);
        let job = job?;
        worker.create(job).await?;
        Ok(StatusCode::OK)
    }
    .await;
    worker.metrics().observe_create(started.elapsed());
    answer
}

/// Overwrites a create body (it holds the job's secrets) with zeros once
/// it is parsed, when no one else holds its buffer.
fn wipe(body: Bytes) {
    if let Ok(mut owned) = body.try_into_mut() {
        zeroize::Zeroize::zeroize(&mut owned[..]);
    }
}

/// Answers 413 before reading a body whose `Content-Length` is over the
/// limit (the body limit alone would wait for the bytes to arrive).
async fn refuse_declared_oversize(request: Request, next: Next, max_body_bytes: usize) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > max_body_bytes as u64 => ApiError::PayloadTooLarge(format!(
            "Content-Length is {length} bytes; the limit is {max_body_bytes}"
        ))
        .into_response(),
        _ => next.run(request).await,
    }
}

/// The `{batch_id}` and `{job_id}` (and `{container}`) of a job path.
struct JobPath {
    batch_id: i64,
    job_id: i64,
    container: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiError::BadRequest(FieldError {
                    field: "path".into(),
                    message: e.body_text(),
                })
            })?;
        let param = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
        let (batch_id, job_id) = ids(param("batch_id"), param("job_id"))?;
        Ok(JobPath {
            batch_id,
            job_id,
            container: params.get("container").cloned(),
        })
    }
}

async fn cancel(
    State(worker): State<Worker>,
    JobPath {
        batch_id, job_id, ..
    }: JobPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    let state = worker.cancel(batch_id, job_id)?;
    Ok(Json(
        json!({ "state": state.wire_state(), "worker_state": state }),
    ))
}

async fn status(
    State(worker): State<Worker>,
    JobPath {
        batch_id, job_id, ..
    }: JobPath,
) -> Result<Response, ApiError> {
    Ok(Json(worker.status(batch_id, job_id)?).into_response())
}

async fn events(
    State(worker): State<Worker>,
    JobPath {
        batch_id, job_id, ..
    }: JobPath,
) -> Result<Response, ApiError> {
    Ok(Json(worker.events(batch_id, job_id)?).into_response())
}

async fn log(
    State(worker): State<Worker>,
    JobPath {
        batch_id,
        job_id,
        container,
    }: JobPath,
    request: Request,
) -> Result<Response, ApiError> {
    let (tasks, dir) = worker.tasks(batch_id, job_id)?;
    let task = container.unwrap_or_default();
    // `main` always (empty before it runs); `input` / `output` when the
    // job has them, as Hail's containers.
    if task != "main" && !tasks.contains(&task.as_str()) {
        return Err(ApiError::NotFound(format!(
            "job {batch_id}:{job_id} has no task {:?}; it has {tasks:?} (input and output exist when its spec has input_files / output_files)",
            crate::wire::truncate(&task, 40)
        )));
    }
    let path = dir.task_log(&task);
    match tokio::fs::metadata(&path).await {
        // tower-http's file service: the whole log (200), or from a
        // `Range: bytes=N-` on (206; 416 once `N` is the log's length).
        Ok(_) => {
            let file = tower_http::services::ServeFile::new_with_mime(
                &path,
                &"text/plain; charset=utf-8"
                    .parse()
                    .expect("a valid mime type"),
            );
            match tower::ServiceExt::oneshot(file, request).await {
                // Its refusals in our envelope (with the log's length,
                // from Content-Range, when it gives one).
                Ok(answer) if answer.status() == StatusCode::RANGE_NOT_SATISFIABLE => {
                    let length = answer
                        .headers()
                        .get(header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("bytes */"))
                        .map(str::to_owned);
                    Err(ApiError::RangeNotSatisfiable(match length {
                        Some(length) => format!(
                            "the log of job {batch_id}:{job_id} is {length} bytes; a Range must start before its end (one range, bytes=N-)"
                        ),
                        None => "one range only, such as bytes=N-".to_owned(),
                    }))
                }
                Ok(answer) => Ok(answer.map(Body::new)),
                Err(e) => Err(ApiError::Unavailable(format!(
                    "cannot read the log of job {batch_id}:{job_id}: {e}"
                ))),
            }
        }
        // The task has not run (yet): an empty log.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            Body::empty(),
        )
            .into_response()),
        Err(e) => Err(ApiError::Unavailable(format!(
            "cannot read the log of job {batch_id}:{job_id}: {e}"
        ))),
    }
}

/// Hail's `get_job_resource_usage`: `{task: base64 of its resource-usage
/// file}` for each task the job has (Hail's version 2 format, see
/// [`crate::resource_usage`]); a task that has not started (or whose file
/// is gone) gives the header alone, Hail's `no_data()`.
async fn resource_usage(
    State(worker): State<Worker>,
    JobPath {
        batch_id, job_id, ..
    }: JobPath,
) -> Result<Response, ApiError> {
    let (tasks, dir) = worker.tasks(batch_id, job_id)?;
    let mut answer = serde_json::Map::new();
    for task in tasks {
        let bytes = match tokio::fs::read(dir.task_resource_usage(task)).await {
            Ok(bytes) if bytes.len() >= crate::resource_usage::HEADER_BYTES => bytes,
            _ => crate::resource_usage::no_data(),
        };
        answer.insert(
            task.to_owned(),
            crate::resource_usage::to_base64(&bytes).into(),
        );
    }
    // Hail's order: input, main, output.
    let ordered: Vec<(String, serde_json::Value)> = crate::logs_store::TASKS
        .iter()
        .filter_map(|t| answer.remove(*t).map(|v| ((*t).to_owned(), v)))
        .collect();
    Ok(Json(OrderedMap(ordered)).into_response())
}

/// A JSON object whose keys keep their order.
struct OrderedMap(Vec<(String, serde_json::Value)>);

impl serde::Serialize for OrderedMap {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Hail's `healthcheck`: 200 `{"name": worker}` while the worker takes
/// jobs; 503 before it has activated and once it is shutting down (the
/// driver's health check then counts it as unhealthy, as it does Hail's).
async fn healthcheck(State(worker): State<Worker>) -> Result<Json<serde_json::Value>, ApiError> {
    match worker.phase() {
        crate::worker::Phase::Active if worker.is_activated() => {
            Ok(Json(json!({ "name": worker.name() })))
        }
        crate::worker::Phase::Starting | crate::worker::Phase::Active => Err(
            ApiError::Unavailable("the worker has not activated with its driver yet".into()),
        ),
        _ => Err(ApiError::Unavailable("the worker is shutting down".into())),
    }
}

async fn metrics(State(worker): State<Worker>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        worker.metrics_text(),
    )
        .into_response()
}

async fn kill(State(worker): State<Worker>) -> StatusCode {
    worker.begin_shutdown();
    StatusCode::OK
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on this endpoint"))
}

/// Parses the path's ids, naming the bad one.
fn ids(batch_id: &str, job_id: &str) -> Result<(i64, i64), ApiError> {
    let parse = |field: &str, text: &str| {
        text.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
            ApiError::BadRequest(FieldError {
                field: field.to_owned(),
                message: format!(
                    "expected a non-negative integer in the path, got {:?}",
                    crate::wire::truncate(text, 40)
                ),
            })
        })
    };
    Ok((parse("batch_id", batch_id)?, parse("job_id", job_id)?))
}
