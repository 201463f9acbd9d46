//! [`WorkerClient`]: the worker's HTTP API from the other side, for the
//! `jobs` and `submit` subcommands (one worker at a time).
//!
//! Hail's calls (create, status, events, log, delete) are sent as Hail's
//! driver and front end send them; the job list and the worker's
//! description are our own calls ([`crate::api::extension`]).

use std::time::Duration;

use batch_worker_model::WireState;
use reqwest::{header, Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use crate::api::extension::{JOBS_PATH, WORKER_PATH};
use crate::api::{ApiToken, CREATE_PATH};
use crate::worker::{JobPage, WorkerInfo};

/// How long one call may take, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A call to the worker failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The worker could not be reached, or did not answer in time.
    #[error("cannot reach the worker at {url}: {cause}; is `batch-worker serve` running there (see --worker)?")]
    Unreachable {
        /// The worker's base URL.
        url: String,
        /// The cause in words (`connection refused`, `timed out after 10 s`).
        cause: String,
    },
    /// The worker refused the call (its `{"error": {...}}` envelope's
    /// message, or the body's start).
    #[error("the worker answered {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// What the worker said.
        message: String,
    },
    /// The call was not made: an earlier one found the worker unreachable.
    #[error("not tried: the worker stopped answering")]
    NotTried,
    /// The answer was not what this client expects (another program on the
    /// port, or a worker of another version).
    #[error("the worker's answer to {path} is not what batch-worker expects: {detail}")]
    Unexpected {
        /// The call's path.
        path: String,
        /// What did not parse.
        detail: String,
    },
}

impl ClientError {
    /// The HTTP status the worker answered, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One recorded event as the events call shows it
/// ([`batch_worker_model::EventRecord`]); the event is kept as JSON
/// (`{"type": "spec_loaded", ...}`) so that a client reads the events of a
/// newer worker too.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EventLine {
    /// The record's journal sequence number.
    pub seq: u64,
    /// When it was recorded, ms since the Unix epoch.
    pub time_ms: i64,
    /// The event, `{"type": name, ...fields}`.
    pub event: serde_json::Value,
    /// The attempt's state after it (`running.executing`).
    pub state_after: String,
}

/// A client of one worker's API.
#[derive(Debug, Clone)]
pub struct WorkerClient {
    base: Url,
    http: reqwest::Client,
    token: Option<ApiToken>,
}

impl WorkerClient {
    /// A client of the worker at `base` (`http://127.0.0.1:5000`), sending
    /// `token` as a bearer token when given.
    pub fn new(base: Url, token: Option<ApiToken>) -> WorkerClient {
        // CALL_TIMEOUT bounds each call (RequestBuilder::timeout) but a
        // log's, which only may not pause for longer between reads.
        let http = reqwest::Client::builder()
            .read_timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("a reqwest client with rustls builds");
        WorkerClient { base, http, token }
    }

    /// The worker's base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    fn unreachable(&self, error: &reqwest::Error) -> ClientError {
        let cause = crate::driver_client::call_cause(error, &self.base, CALL_TIMEOUT);
        ClientError::Unreachable {
            url: crate::store::redact_url(&self.base),
            cause: format!("{} ({})", cause.words, cause.detail),
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        // A base with a path (a worker behind a proxy's prefix) keeps it.
        let mut url = self.base.clone();
        url.set_path(&format!("{}{path}", self.base.path().trim_end_matches('/')));
        let request = self.http.request(method, url).timeout(CALL_TIMEOUT);
        match &self.token {
            Some(token) => request.header(header::AUTHORIZATION, token.header_value()),
            None => request,
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let answer = request.send().await.map_err(|e| self.unreachable(&e))?;
        if answer.status().is_success() || answer.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            return Ok(answer);
        }
        let status = answer.status();
        let body = answer.bytes().await.unwrap_or_default();
        Err(ClientError::Refused {
            status,
            message: envelope_message(&body),
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        let answer = self.send(self.request(method, path).query(query)).await?;
        let body = answer.bytes().await.map_err(|e| self.unreachable(&e))?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Unexpected {
            path: path.to_owned(),
            detail: e.to_string(),
        })
    }

    /// `GET /batch-worker/v1/jobs`: one page of the worker's attempts.
    /// `states` empty: every state; `after`: the previous page's `next`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn list(
        &self,
        batch_id: Option<i64>,
        states: &[WireState],
        after: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, ClientError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(b) = batch_id {
            query.push(("batch_id", b.to_string()));
        }
        if !states.is_empty() {
            let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
            query.push(("state", names.join(",")));
        }
        if let Some(after) = after {
            query.push(("after", after.to_owned()));
        }
        self.json(Method::GET, JOBS_PATH, &query).await
    }

    /// `GET /batch-worker/v1/worker`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn about(&self) -> Result<WorkerInfo, ClientError> {
        self.json(Method::GET, WORKER_PATH, &[]).await
    }

    /// Hail's status call: the job's status JSON (Hail's shape, our
    /// fields under `batch_worker`).
    ///
    /// # Errors
    /// [`ClientError`]; 404 for a job the worker does not hold.
    pub async fn status(
        &self,
        batch_id: i64,
        job_id: i64,
    ) -> Result<serde_json::Value, ClientError> {
        let path = format!("/api/v1alpha/batches/{batch_id}/jobs/{job_id}/status");
        self.json(Method::GET, &path, &[]).await
    }

    /// The job's recorded events, oldest first.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn events(&self, batch_id: i64, job_id: i64) -> Result<Vec<EventLine>, ClientError> {
        let path = format!("/api/v1alpha/batches/{batch_id}/jobs/{job_id}/events");
        self.json(Method::GET, &path, &[]).await
    }

    /// Hail's delete call: cancels the job; the answer is `{"state": ...,
    /// "worker_state": ...}`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn cancel(
        &self,
        batch_id: i64,
        job_id: i64,
    ) -> Result<serde_json::Value, ClientError> {
        let path = format!("/api/v1alpha/batches/{batch_id}/jobs/{job_id}/delete");
        self.json(Method::DELETE, &path, &[]).await
    }

    /// Writes task `task`'s log (`input`, `main`, `output`) from byte
    /// `offset` on (`Range: bytes=offset-`) to `out` as it arrives (never
    /// held whole), and returns how many bytes were written: 0 when there
    /// is nothing past `offset` yet. No bound on the whole call, only
    /// [`CALL_TIMEOUT`] between reads, so a log of gigabytes arrives.
    ///
    /// # Errors
    /// [`ClientError`]; `Unexpected` when `out` cannot be written.
    pub async fn log_to(
        &self,
        batch_id: i64,
        job_id: i64,
        task: &str,
        offset: u64,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, ClientError> {
        let path = format!("/api/v1alpha/batches/{batch_id}/jobs/{job_id}/log/{task}");
        let mut request = self
            .request(Method::GET, &path)
            .timeout(Duration::from_secs(24 * 3600));
        if offset > 0 {
            request = request.header(header::RANGE, format!("bytes={offset}-"));
        }
        let mut answer = self.send(request).await?;
        if answer.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            return Ok(0);
        }
        // A 200 to a range request is the whole log: skip what was seen.
        let mut skip = if answer.status() == StatusCode::PARTIAL_CONTENT {
            0
        } else {
            offset
        };
        let mut written = 0u64;
        while let Some(chunk) = answer.chunk().await.map_err(|e| self.unreachable(&e))? {
            let from = (skip as usize).min(chunk.len());
            skip -= from as u64;
            out.write_all(&chunk[from..])
                .map_err(|e| ClientError::Unexpected {
                    path: path.clone(),
                    detail: format!("cannot write the log out: {e}"),
                })?;
            written += (chunk.len() - from) as u64;
        }
        Ok(written)
    }

    /// Hail's create call with `body` (a create body as the driver sends
    /// it, see `tests/fixtures/samples/create-v7.json`).
    ///
    /// # Errors
    /// [`ClientError`]: 400 names the field, 403 a job already present,
    /// 503 a worker not taking jobs.
    pub async fn create(&self, body: &serde_json::Value) -> Result<(), ClientError> {
        self.send(self.request(Method::POST, CREATE_PATH).json(body))
            .await
            .map(drop)
    }
}

/// The message of the API's error envelope
/// (`{"error": {"message": ...}}`), else the body's start.
fn envelope_message(body: &[u8]) -> String {
    let from_envelope = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let error = v.get("error")?;
            let message = error.get("message")?.as_str()?.to_owned();
            Some(match error.get("field").and_then(|f| f.as_str()) {
                Some(field) => format!("{field}: {message}"),
                None => message,
            })
        });
    from_envelope
        .unwrap_or_else(|| crate::wire::truncate(String::from_utf8_lossy(body).trim(), 200))
}
