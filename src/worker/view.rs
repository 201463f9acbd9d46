//! What the worker shows of an attempt: the status JSON (`GET .../status`
//! and `status.json` in the logs store) and the report bodies
//! (`job_started`, `job_complete`). Each is a function of the attempt's
//! [`AttemptView`] (and the worker's name), so it is the same before and
//! after a restart.

use batch_worker_model::{AttemptView, ErrorKind, ExitStatus, JobState, Outcome, RunPhase};
use serde::Serialize;
use serde_json::{json, Value};

use crate::wire::{JobCompleteStatus, JobStartedBody, JobStartedStatus, STATUS_VERSION};

/// The status JSON of one attempt (`GET .../status`), a superset of Hail's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStatus {
    /// Always [`STATUS_VERSION`].
    pub version: u32,
    /// The worker's name.
    pub worker: String,
    /// The batch.
    pub batch_id: i64,
    /// The job.
    pub job_id: i64,
    /// The attempt.
    pub attempt_id: String,
    /// The job group.
    pub job_group_id: i64,
    /// The user.
    pub user: String,
    /// `pending`, `initializing`, `running`, `succeeded`, `failed`, `error`
    /// or `cancelled`.
    pub state: &'static str,
    /// The create body's `format_version`.
    pub format_version: u32,
    /// The error message, when `state` is `error`, or the reason of a
    /// timeout or out-of-memory failure.
    pub error: Option<String>,
    /// The error kind (`spec_missing`, ...), when `state` is `error`.
    pub error_kind: Option<ErrorKind>,
    /// When the process started (else when the attempt was accepted), ms
    /// since the Unix epoch.
    pub start_time: i64,
    /// When the attempt ended, ms since the Unix epoch.
    pub end_time: Option<i64>,
    /// The spec's `resources` as sent, once loaded (`null` before).
    pub resources: Value,
    /// `{"main": {...}}` once a process was started, else `{}`.
    pub container_statuses: Value,
    /// The exact state-machine state.
    pub worker_state: JobState,
    /// The names (never values) of the secrets the attempt carries.
    pub secrets: Vec<String>,
}

/// The status JSON of `view` on the worker named `worker`: what `GET
/// .../status` answers and `status.json` holds; the replay tool computes
/// the same from its views.
pub fn status(view: &AttemptView, worker: &str) -> JobStatus {
    let state = view.state();
    let (error, error_kind) = match &state {
        JobState::Errored { kind, message } => (Some(message.clone()), Some(*kind)),
        JobState::Done {
            outcome:
                Outcome::Failed {
                    exit: ExitStatus::TimedOut { timeout_ms },
                },
        } => (
            Some(format!(
                "the job ran past its timeout of {} s and was ended (SIGTERM, then SIGKILL after the grace period if it had not exited)",
                *timeout_ms as f64 / 1000.0
            )),
            None,
        ),
        JobState::Done {
            outcome:
                Outcome::Failed {
                    exit:
                        ExitStatus::OutOfMemory {
                            code,
                            memory_limit_bytes,
                        },
                },
        } => (
            Some(format!(
                "out of memory: the container used more than its memory limit of {memory_limit_bytes} bytes (resources.memory_bytes) and the kernel's OOM killer ended it (exit code {code})"
            )),
            None,
        ),
        _ => (None, None),
    };
    let container_statuses = match view.started_at_ms() {
        None => json!({}),
        Some(started) => {
            let running = matches!(
                state,
                JobState::Running {
                    phase: RunPhase::Executing { .. } | RunPhase::Cancelling
                }
            );
            json!({"main": {
                "name": "main",
                "state": if running { "running" } else { "completed" },
                "start_time": started,
                "end_time": view.ended_at_ms(),
                "exit_code": view.exit().and_then(|e| e.exit_code()),
                "out_of_memory": matches!(view.exit(), Some(ExitStatus::OutOfMemory { .. })),
                "duration_ms": view.exit_duration_ms(),
            }})
        }
    };
    let key = view.key();
    JobStatus {
        version: STATUS_VERSION,
        worker: worker.to_owned(),
        batch_id: key.batch_id,
        job_id: key.job_id,
        attempt_id: key.attempt_id.clone(),
        job_group_id: view.job_group_id(),
        user: view.user().to_owned(),
        state: state.wire_state().as_str(),
        format_version: view.format_version(),
        error,
        error_kind,
        start_time: view.start_time_ms(),
        end_time: view.ended_at_ms(),
        resources: view.resources().cloned().unwrap_or(Value::Null),
        container_statuses,
        worker_state: state,
        secrets: view.secret_names().to_vec(),
    }
}

/// The `job_started` body of `view` (its process just started).
pub(super) fn started_body(view: &AttemptView) -> JobStartedBody {
    let key = view.key();
    JobStartedBody {
        status: JobStartedStatus {
            version: STATUS_VERSION,
            batch_id: key.batch_id,
            job_id: key.job_id,
            attempt_id: key.attempt_id.clone(),
            start_time: view.start_time_ms(),
            resources: Vec::new(),
        },
    }
}

/// The `job_complete` status of `view` (terminal); `now` (ms since the Unix
/// epoch) stands for an end the view does not have.
pub(super) fn complete_status(view: &AttemptView, now: i64) -> JobCompleteStatus {
    let state = view.state();
    let exit_code = match &state {
        JobState::Done {
            outcome: Outcome::Succeeded,
        } => Some(0),
        JobState::Done {
            outcome: Outcome::Failed { exit },
        } => exit.exit_code(),
        _ => None,
    };
    let start = view.start_time_ms();
    let end = view.ended_at_ms().unwrap_or(now);
    let key = view.key();
    JobCompleteStatus {
        version: STATUS_VERSION,
        batch_id: key.batch_id,
        job_id: key.job_id,
        attempt_id: key.attempt_id.clone(),
        job_group_id: view.job_group_id(),
        state: state.wire_state().as_str().to_owned(),
        start_time: start,
        end_time: end,
        resources: Vec::new(),
        status: (
            exit_code,
            Some(
                view.exit_duration_ms()
                    .unwrap_or((end - start).max(0) as u64),
            ),
        ),
    }
}
