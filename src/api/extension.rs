//! Calls of our own, for operators and `batch-worker jobs` / `submit`,
//! under [`EXTENSION_PREFIX`]: Hail's driver and client never call them,
//! and none of Hail's endpoints change for them.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/batch-worker/v1/jobs?batch_id=B&state=S[,S]&after=B:J&limit=N` | [`JobPage`]; 400 naming a bad parameter |
//! | GET | `/batch-worker/v1/worker` | [`crate::worker::WorkerInfo`] |

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use batch_worker_model::WireState;
use serde::Deserialize;

use super::ApiError;
use crate::wire::FieldError;
use crate::worker::{JobPage, ListFilter, Worker, WorkerInfo, DEFAULT_PAGE_JOBS, MAX_PAGE_JOBS};

/// The path prefix of our own calls.
pub const EXTENSION_PREFIX: &str = "/batch-worker/v1";

/// Path of the job list.
pub const JOBS_PATH: &str = "/batch-worker/v1/jobs";

/// Path of the worker's description.
pub const WORKER_PATH: &str = "/batch-worker/v1/worker";

/// The list's query parameters, as sent; checked by [`ListQuery::filter`].
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// Only this batch.
    batch_id: Option<String>,
    /// Comma-separated Hail state names.
    state: Option<String>,
    /// `BATCH:JOB` cursor.
    after: Option<String>,
    /// Page size.
    limit: Option<String>,
}

fn bad(field: &str, message: String) -> ApiError {
    ApiError::BadRequest(FieldError {
        field: field.to_owned(),
        message,
    })
}

impl ListQuery {
    /// The filter these parameters ask for.
    ///
    /// # Errors
    /// 400 naming the parameter: a `batch_id` that is not a non-negative
    /// integer, an unknown state (the message lists the known ones), an
    /// `after` that is not `BATCH:JOB`, a `limit` outside 1 to
    /// [`MAX_PAGE_JOBS`].
    pub fn filter(&self) -> Result<ListFilter, ApiError> {
        let id = |field: &str, text: &str| {
            text.trim()
                .parse::<i64>()
                .ok()
                .filter(|v| *v >= 0)
                .ok_or_else(|| {
                    bad(
                        field,
                        format!(
                            "expected a non-negative integer, got {:?}",
                            crate::wire::truncate(text, 40)
                        ),
                    )
                })
        };
        let batch_id = self
            .batch_id
            .as_deref()
            .map(|b| id("batch_id", b))
            .transpose()?;
        let states = match self.state.as_deref() {
            None | Some("") => Vec::new(),
            Some(text) => text
                .split(',')
                .map(|name| parse_state(name.trim()))
                .collect::<Result<_, _>>()?,
        };
        let after = match self.after.as_deref() {
            None | Some("") => None,
            Some(text) => {
                let (b, j) = text.split_once(':').ok_or_else(|| {
                    bad(
                        "after",
                        format!(
                            "expected BATCH:JOB (a page's `next`), got {:?}",
                            crate::wire::truncate(text, 40)
                        ),
                    )
                })?;
                Some((id("after", b)?, id("after", j)?))
            }
        };
        let limit = match self.limit.as_deref() {
            None => DEFAULT_PAGE_JOBS,
            Some(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE_JOBS).contains(n))
                .ok_or_else(|| {
                    bad(
                        "limit",
                        format!(
                            "expected an integer from 1 to {MAX_PAGE_JOBS}, got {:?}",
                            crate::wire::truncate(text, 40)
                        ),
                    )
                })?,
        };
        Ok(ListFilter {
            batch_id,
            states,
            after,
            limit,
        })
    }
}

/// Every Hail state name, in the order a job goes through them.
pub const STATE_NAMES: [WireState; 7] = [
    WireState::Pending,
    WireState::Initializing,
    WireState::Running,
    WireState::Succeeded,
    WireState::Failed,
    WireState::Error,
    WireState::Cancelled,
];

/// A Hail state name (`running`), as the status JSON's `state` spells it.
///
/// # Errors
/// 400 on `state`, listing the names.
pub fn parse_state(name: &str) -> Result<WireState, ApiError> {
    STATE_NAMES
        .into_iter()
        .find(|s| s.as_str() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = STATE_NAMES.iter().map(|s| s.as_str()).collect();
            bad(
                "state",
                format!(
                    "unknown state {:?}; expected one or more of {}, comma-separated",
                    crate::wire::truncate(name, 40),
                    names.join(", ")
                ),
            )
        })
}

/// `GET /batch-worker/v1/jobs`.
pub async fn list(
    State(worker): State<Worker>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let Query(query) = query.map_err(|e| bad("query", e.body_text()))?;
    Ok(Json(worker.list(&query.filter()?)))
}

/// `GET /batch-worker/v1/worker`.
pub async fn about(State(worker): State<Worker>) -> Json<WorkerInfo> {
    Json(worker.about())
}
