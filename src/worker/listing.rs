//! The job list: one line per attempt the worker holds, filtered by batch
//! and state and paged by job, for `GET /batch-worker/v1/jobs` and `jobs
//! list`. An extension of our own: Hail's worker has no such call, and
//! none of Hail's endpoints change for it.

use batch_worker_model::{AttemptView, WireState};
use serde::{Deserialize, Serialize};

/// Most jobs one page holds, whatever `limit` asks.
pub const MAX_PAGE_JOBS: usize = 1000;

/// Jobs per page when `limit` is not given.
pub const DEFAULT_PAGE_JOBS: usize = 100;

/// Which attempts a list call wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this batch's jobs.
    pub batch_id: Option<i64>,
    /// Only attempts in one of these states (Hail's names, as in the status
    /// JSON's `state`); empty: every state.
    pub states: Vec<WireState>,
    /// Only jobs after this `(batch_id, job_id)`, exclusive: the previous
    /// page's [`JobPage::next`].
    pub after: Option<(i64, i64)>,
    /// At most this many jobs (1 to [`MAX_PAGE_JOBS`]).
    pub limit: usize,
}

/// One attempt in the list.
///
/// Shape: `{"batch_id": 1, "job_id": 3, "attempt_id": "Xq3T9b", "user":
/// "alice", "state": "failed", "worker_state": "done", "exit_code": 3,
/// "error_kind": null, "summary": "failed (exit 3)", "accepted_at_ms": ...,
/// "started_at_ms": ..., "ended_at_ms": ...}`; times in ms since the Unix
/// epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    /// The batch's id.
    pub batch_id: i64,
    /// The job's id.
    pub job_id: i64,
    /// The attempt's id.
    pub attempt_id: String,
    /// The user the job runs for.
    pub user: String,
    /// Hail's state name (`pending`, `running`, `succeeded`, ...).
    pub state: WireState,
    /// The worker's own state name (`loading_spec`,
    /// `running.waiting_for_resources`, `done`, ...).
    pub worker_state: String,
    /// The process's exit code, once it has one.
    pub exit_code: Option<i32>,
    /// Why the attempt errored (`spec_missing`, ...), if it did.
    pub error_kind: Option<String>,
    /// The state in words (`"failed (exit 3)"`).
    pub summary: String,
    /// When the create call was accepted, ms since the Unix epoch.
    pub accepted_at_ms: i64,
    /// When its process started, ms since the Unix epoch.
    pub started_at_ms: Option<i64>,
    /// When it ended, ms since the Unix epoch.
    pub ended_at_ms: Option<i64>,
}

impl JobSummary {
    /// The line of `view`.
    pub fn of(view: &AttemptView) -> JobSummary {
        let key = view.key();
        let state = view.state_ref();
        JobSummary {
            batch_id: key.batch_id,
            job_id: key.job_id,
            attempt_id: key.attempt_id.clone(),
            user: view.user().to_owned(),
            state: state.wire_state(),
            worker_state: state.name().to_owned(),
            exit_code: view.exit().and_then(|e| e.exit_code()),
            error_kind: match state {
                batch_worker_model::JobState::Errored { kind, .. } => Some(kind.to_string()),
                _ => None,
            },
            summary: state.in_words(),
            accepted_at_ms: view.accepted_at_ms(),
            started_at_ms: view.started_at_ms(),
            ended_at_ms: view.ended_at_ms(),
        }
    }
}

/// One page of the list.
///
/// Shape: `{"jobs": [JobSummary, ...], "matched": 240, "next": "1:101"}`;
/// `next` is `null` on the last page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobPage {
    /// The page's attempts, by `(batch_id, job_id)`.
    pub jobs: Vec<JobSummary>,
    /// How many attempts match the filter over every page (after the
    /// `after` cursor too).
    pub matched: usize,
    /// The cursor of the next page (`"BATCH:JOB"`, for `after`), if there
    /// are more.
    pub next: Option<String>,
}

impl ListFilter {
    /// Whether `view` passes the batch and state filters (not the cursor).
    fn admits(&self, view: &AttemptView) -> bool {
        let key = view.key();
        self.batch_id.is_none_or(|b| key.batch_id == b)
            && self
                .after
                .is_none_or(|after| (key.batch_id, key.job_id) > after)
            && (self.states.is_empty() || self.states.contains(&view.state_ref().wire_state()))
    }
}

/// The page of `views` that `filter` asks for.
pub fn page<'a>(views: impl Iterator<Item = &'a AttemptView>, filter: &ListFilter) -> JobPage {
    let mut matching: Vec<&AttemptView> = views.filter(|v| filter.admits(v)).collect();
    let matched = matching.len();
    let limit = filter.limit.clamp(1, MAX_PAGE_JOBS);
    let order = |v: &AttemptView| (v.key().batch_id, v.key().job_id);
    if matching.len() > limit {
        // Only the first `limit` need sorting.
        matching.select_nth_unstable_by_key(limit, |v| order(v));
        matching.truncate(limit);
    }
    matching.sort_unstable_by_key(|v| order(v));
    let next = (matched > limit)
        .then(|| {
            matching
                .last()
                .map(|v| format!("{}:{}", v.key().batch_id, v.key().job_id))
        })
        .flatten();
    JobPage {
        jobs: matching.into_iter().map(JobSummary::of).collect(),
        matched,
        next,
    }
}

/// What a worker is, for operators and `submit` (`GET
/// /batch-worker/v1/worker`).
///
/// Shape: `{"name": "w1", "version": "0.1.0", "spec_store":
/// "file:///srv/w/specs", "cores_mcpu": 2000, "memory_bytes": ...,
/// "free_cores_mcpu": 1000, "free_memory_bytes": ..., "attempts": 12,
/// "taking_jobs": true}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The worker's name (as in `/healthcheck`).
    pub name: String,
    /// This program's version.
    pub version: String,
    /// Where it reads job specs (credentials redacted), if known.
    pub spec_store: Option<String>,
    /// Cores jobs may reserve in all, in mcpu.
    pub cores_mcpu: u64,
    /// Memory jobs may reserve in all, in bytes.
    pub memory_bytes: u64,
    /// Cores not reserved now, in mcpu.
    pub free_cores_mcpu: u64,
    /// Memory not reserved now, in bytes (reservations count in whole
    /// MiB; an idle worker shows `memory_bytes`).
    pub free_memory_bytes: u64,
    /// Attempts the worker holds (running, waiting, and finished ones kept).
    pub attempts: usize,
    /// Whether it takes creates now (activated, not shutting down, journal
    /// writable).
    pub taking_jobs: bool,
}
