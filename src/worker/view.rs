//! This file is long (about 840 lines) because Hail's status is one
//! nested shape (job, tasks, steps, container status) built in one place,
//! with the report bodies derived from it and Python's `json.dumps`
//! layout for `status.json`.
//!
//! What the worker shows of an attempt: the status JSON (`GET .../status`
//! and `status.json` in the logs store) and the report bodies
//! (`job_started`, `job_complete`). Each is a function of the attempt's
//! [`AttemptView`] and the worker's [`Identity`], so it is the same before
//! and after a restart.
//!
//! The shape is Hail's (`worker.py` `Job.status`, `DockerJob.status`,
//! `Container.status`, `Container.get_container_status`; samples in
//! `tests/fixtures/samples/hail/`): `resources` as `[{name, quantity}]`,
//! `region`, a job-level `timing`, and `container_statuses.{input, main,
//! output}` with their own `timing` and `container_status`. What Hail has
//! no field for (the error kind, the exact state, the secrets' names) is
//! under one key of our own, [`EXTENSION_KEY`].
//!
//! How this worker's steps map onto Hail's tasks: `main` is the job's
//! process (its `pulling` step is the image pull of `--executor runc`);
//! `input` and `output` are the worker's own file transfers (Hail runs them
//! in copy containers), present when the spec has `input_files` /
//! `output_files`, with exit code 0 when they succeeded and 1 with an
//! `error` when they did not.

use std::sync::Arc;

use batch_worker_model::{
    AttemptView, ErrorKind, ExitStatus, JobAddress, JobState, Outcome, RunPhase, UnknownField,
};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

use crate::instance_config::{InstanceConfig, QuantifiedResource};
use crate::wire::{JobCompleteStatus, JobStartedBody, JobStartedStatus, STATUS_VERSION};

/// The key of the status JSON that holds this worker's own fields.
pub const EXTENSION_KEY: &str = "batch_worker";

/// Who the worker is, as its statuses and reports say it: Hail's worker
/// takes these from its environment (`NAME`, `REGION`, `INSTANCE_CONFIG`).
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The worker's name: status `worker`, `/healthcheck`,
    /// `X-Hail-Instance-Name`.
    pub name: String,
    /// The cloud region: status `region` (empty when not set).
    pub region: String,
    /// The instance config the driver made the VM with: each job's
    /// `resources` (what it is billed for). `None`: `resources` is `[]`.
    pub instance_config: Option<Arc<InstanceConfig>>,
}

impl Identity {
    /// A worker named `name`, without region or instance config (tests,
    /// the replay tool).
    pub fn named(name: impl Into<String>) -> Identity {
        Identity {
            name: name.into(),
            ..Identity::default()
        }
    }

    /// Hail's `instance_config.quantified_resources(cores_mcpu,
    /// memory_bytes, external storage GiB)` for the attempt: all zero
    /// before its spec is loaded, as for Hail's `FakeJob`; a job-private
    /// instance bills no external storage (`worker.py` `Job.__init__`).
    ///
    /// A spec whose resources the instance config cannot quantify (memory
    /// not a whole number of MiB) errors `spec_corrupt` when it is loaded
    /// (see [`Identity::check_resources`]), so this is `[]` only for
    /// attempts loaded by a worker without the config.
    pub fn resources(&self, view: &AttemptView) -> Vec<QuantifiedResource> {
        let Some(config) = &self.instance_config else {
            return Vec::new();
        };
        let steps = view.steps();
        // Hail's front end sends whole GiB; a fraction is billed whole.
        let storage_gib = view
            .resources()
            .and_then(|r| r.get("storage_gib"))
            .and_then(Value::as_f64)
            .filter(|gib| gib.is_finite() && *gib > 0.0)
            .map_or(0, |gib| gib.ceil() as u64);
        config
            .quantified_resources(
                steps.cores_mcpu,
                steps.memory_bytes,
                config.external_storage_gib(storage_gib),
            )
            .unwrap_or_default()
    }

    /// Whether the instance config can bill a job asking for these
    /// resources (mcpu, bytes, GiB); the error names what it cannot.
    ///
    /// # Errors
    /// The instance config's error (e.g. memory not a whole number of MiB).
    pub fn check_resources(
        &self,
        cores_mcpu: u64,
        memory_bytes: u64,
        storage_gib: u64,
    ) -> Result<(), crate::instance_config::InstanceConfigError> {
        match &self.instance_config {
            Some(config) => config
                .quantified_resources(
                    cores_mcpu,
                    memory_bytes,
                    config.external_storage_gib(storage_gib),
                )
                .map(drop),
            None => Ok(()),
        }
    }
}

/// The status JSON of one attempt (`GET .../status`, `status.json`):
/// Hail's `DockerJob.status()` keys in Hail's order, then
/// [`EXTENSION_KEY`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStatus {
    /// Always [`STATUS_VERSION`] (5).
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
    /// What the attempt is billed for, `[{name, quantity}]` (see
    /// [`Identity::resources`]).
    pub resources: Vec<QuantifiedResource>,
    /// The worker's region.
    pub region: String,
    /// A job-level error (its spec could not be used, it can never fit,
    /// the worker restarted under it): Hail's `Job.error`. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the job's cores were granted (its end, if it ended before),
    /// ms since the Unix epoch; `null` while it waits.
    pub start_time: Option<i64>,
    /// When the attempt ended, ms since the Unix epoch; `null` before.
    pub end_time: Option<i64>,
    /// Once the spec is loaded: the tasks (absent before, as for Hail's
    /// `FakeJob`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_statuses: Option<ContainerStatuses>,
    /// Once the spec is loaded: the job-level steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
    /// This worker's own fields.
    #[serde(rename = "batch_worker")]
    pub extension: Extension,
}

/// `container_statuses`: `main` always, `input` / `output` when the spec
/// has files to stage / upload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerStatuses {
    /// The input files' download.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<TaskStatus>,
    /// The job's process.
    pub main: TaskStatus,
    /// The output files' upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<TaskStatus>,
}

/// One task (Hail's `Container.status()`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskStatus {
    /// `batch-{batch_id}-job-{job_id}-{task}`.
    pub name: String,
    /// `pending`, `creating`, `running`, `succeeded`, `failed`, `error` or
    /// `cancelled`.
    pub state: &'static str,
    /// The task's steps.
    pub timing: Timing,
    /// Why the task errored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Hail's short reason: `timed out`, `out of memory`, `image not
    /// found`, `image cannot be pulled`, `storage exceeded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short_error: Option<String>,
    /// The process, once it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_status: Option<ContainerStatus>,
}

/// Hail's `Container.get_container_status()`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerStatus {
    /// When the process started, ms since the Unix epoch.
    pub started_at: Option<i64>,
    /// When it ended, ms since the Unix epoch; `null` while it runs.
    pub finished_at: Option<i64>,
    /// `running` or `finished`. A timed-out process reads `running` with
    /// no exit code, as in Hail (its status is taken before the kill).
    pub state: &'static str,
    /// The exit code, once finished (128 + signal for a signal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Whether the kernel's OOM killer ended it.
    pub out_of_memory: bool,
}

/// Steps in the order they ran, serialised as `{name: step}` (Hail's
/// `Timings.to_dict()`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timing(pub Vec<(&'static str, Step)>);

impl Serialize for Timing {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, step) in &self.0 {
            map.serialize_entry(name, step)?;
        }
        map.end()
    }
}

impl Timing {
    /// Adds `name` if it began: finished when `finish_ms` is known.
    fn step(&mut self, name: &'static str, start_ms: Option<i64>, finish_ms: Option<i64>) {
        if let Some(start_time) = start_ms {
            self.0.push((
                name,
                Step {
                    start_time,
                    finish_time: finish_ms,
                    duration: finish_ms.map(|f| f - start_time),
                },
            ));
        }
    }
}

/// One step: ms since the Unix epoch; a step in progress has only its
/// `start_time`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Step {
    /// When it began.
    pub start_time: i64,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<i64>,
    /// `finish_time - start_time`, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<i64>,
}

/// The fields Hail has no place for, under [`EXTENSION_KEY`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Extension {
    /// The exact state-machine state.
    pub worker_state: JobState,
    /// The error kind (`spec_missing`, `storage_exceeded`, ...), when the
    /// attempt errored.
    pub error_kind: Option<ErrorKind>,
    /// The names (never values) of the secrets the attempt carries.
    pub secrets: Vec<String>,
    /// The spec's `resources` object as sent, once loaded.
    pub spec_resources: Option<Value>,
    /// The spec's fields that neither this worker nor Hail knows, ignored
    /// (`spec_loaded.unknown_fields`, at most 16). Absent when there are
    /// none, so the status of a good spec has Hail's shape and ours as
    /// before. Clients print each `message`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spec_warnings: Vec<SpecWarning>,
    /// How many more unknown fields the spec had than `spec_warnings`
    /// shows. Absent when none.
    #[serde(skip_serializing_if = "is_zero")]
    pub spec_warnings_omitted: u32,
    /// The job's own network once its process started (`--container-network
    /// namespace`): `{"mode": "public", "ip": "172.21.0.11", "port": 8080,
    /// "host_port": 46572}` (`port` and `host_port` only when the spec has
    /// a `port`). Absent otherwise. Kept after the job ends: the address it
    /// had, though the port is no longer published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<JobAddress>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One warning about an attempt's spec (`batch_worker.spec_warnings[]`):
/// `{"field": "timout", "suggestion": "timeout", "message": "unknown field
/// `timout` ignored; did you mean `timeout`?"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecWarning {
    /// The unknown field's path in the spec (`timout`, `process.comand`,
    /// `input_files[2].form`).
    pub field: String,
    /// The known field it may be a typo of, as a path; `null` when none is
    /// near.
    pub suggestion: Option<String>,
    /// The warning for a person.
    pub message: String,
}

impl SpecWarning {
    /// The warning about one unknown field.
    pub fn of(field: &UnknownField) -> SpecWarning {
        SpecWarning {
            field: field.path.clone(),
            suggestion: field.suggestion.clone(),
            message: field.message(),
        }
    }
}

/// The status JSON of `view` on the worker `identity`: what `GET
/// .../status` answers and `status.json` holds; the replay tool computes
/// the same from its views.
pub fn status(view: &AttemptView, identity: &Identity) -> JobStatus {
    let state = view.state();
    let key = view.key();
    let (job_error, error_kind) = match &state {
        JobState::Errored { kind, message } => {
            ((!task_error(*kind)).then(|| message.clone()), Some(*kind))
        }
        _ => (None, None),
    };
    let loaded = view.steps().spec_loaded_ms.is_some();
    JobStatus {
        version: STATUS_VERSION,
        worker: identity.name.clone(),
        batch_id: key.batch_id,
        job_id: key.job_id,
        attempt_id: key.attempt_id.clone(),
        job_group_id: view.job_group_id(),
        user: view.user().to_owned(),
        state: state.wire_state().as_str(),
        format_version: view.format_version(),
        resources: identity.resources(view),
        region: identity.region.clone(),
        error: job_error,
        start_time: view.start_time_ms(),
        end_time: view.ended_at_ms(),
        container_statuses: loaded.then(|| container_statuses(view, &state)),
        timing: loaded.then(|| job_timing(view)),
        extension: Extension {
            worker_state: state,
            error_kind,
            secrets: view.secret_names().to_vec(),
            spec_resources: view.resources().cloned(),
            spec_warnings: view
                .steps()
                .unknown_fields
                .fields()
                .iter()
                .map(SpecWarning::of)
                .collect(),
            spec_warnings_omitted: view.steps().unknown_fields.omitted(),
            network: view.steps().network.as_deref().cloned(),
        },
    }
}

/// Whether an error of `kind` belongs to one task (shown there) rather
/// than to the job.
fn task_error(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::LaunchFailed
            | ErrorKind::ImagePullFailed
            | ErrorKind::InputFailed
            | ErrorKind::OutputFailed
            | ErrorKind::StorageExceeded
    )
}

/// The job-level steps: reading the spec, waiting for cores, and the end's
/// uploads (Hail's `post-job finally block`: status and logs).
fn job_timing(view: &AttemptView) -> Timing {
    let steps = view.steps();
    let mut timing = Timing::default();
    let load_began = view
        .spec_load_ms()
        .and_then(|ms| steps.spec_loaded_ms.map(|t| t - ms));
    timing.step("loading spec", load_began, steps.spec_loaded_ms);
    timing.step(
        "waiting for resources",
        steps.spec_loaded_ms,
        steps.granted_ms.or(view.ended_at_ms()),
    );
    timing.step(
        "post-job finally block",
        view.ended_at_ms(),
        steps.logs_done_ms,
    );
    timing
}

fn container_statuses(view: &AttemptView, state: &JobState) -> ContainerStatuses {
    let steps = view.steps();
    let key = view.key();
    let name = |task: &str| format!("batch-{}-job-{}-{task}", key.batch_id, key.job_id);
    let ended = view.ended_at_ms();
    let cancelled = matches!(
        state,
        JobState::Done {
            outcome: Outcome::Cancelled
        }
    );
    let (error_kind, error_message) = match state {
        JobState::Errored { kind, message } => (Some(*kind), Some(message.as_str())),
        _ => (None, None),
    };
    let error_of = |kind: ErrorKind| {
        (error_kind == Some(kind))
            .then(|| error_message.map(str::to_owned))
            .flatten()
    };
    // Every task that ran uploads in the end's logs step.
    let uploads = |timing: &mut Timing| {
        timing.step("uploading_log", ended, steps.logs_done_ms);
        timing.step("uploading_resource_usage", ended, steps.logs_done_ms);
    };

    // The image pull, then the inputs, then the process, then the outputs.
    let inputs_began = if steps.image {
        steps
            .image_done_ms
            .filter(|_| error_kind != Some(ErrorKind::ImagePullFailed))
    } else {
        steps.granted_ms
    };
    // One transfer task: `running` from `began` to `done` (or the end),
    // then the end's uploads.
    let transfer = |task: &str, files: u32, began: Option<i64>, done: Option<i64>, kind| {
        (files > 0).then(|| {
            let mut timing = Timing::default();
            timing.step("running", began, done.or(ended.filter(|_| began.is_some())));
            if began.is_some() {
                uploads(&mut timing);
            }
            transfer_task(name(task), began, done, error_of(kind), timing, cancelled)
        })
    };
    let input = transfer(
        "input",
        steps.input_files,
        inputs_began,
        steps.inputs_done_ms,
        ErrorKind::InputFailed,
    );
    let outputs_began = steps
        .exited_ms
        .filter(|_| steps.output_files > 0 && view.exit().is_some_and(|e| e.is_success()));
    let output = transfer(
        "output",
        steps.output_files,
        outputs_began,
        steps.outputs_done_ms,
        ErrorKind::OutputFailed,
    );

    ContainerStatuses {
        input,
        main: main_task(view, state, name("main"), error_of, uploads),
        output,
    }
}

/// An `input` or `output` task: the worker's own transfer, from `began` to
/// `done`, errored with `failed`.
fn transfer_task(
    name: String,
    began: Option<i64>,
    done: Option<i64>,
    failed: Option<String>,
    timing: Timing,
    cancelled: bool,
) -> TaskStatus {
    let state = match (began, done, &failed) {
        (_, _, Some(_)) => "error",
        (Some(_), Some(_), None) => "succeeded",
        (Some(_), None, None) if cancelled => "cancelled",
        (Some(_), None, None) => "running",
        (None, _, None) if cancelled => "cancelled",
        (None, _, None) => "pending",
    };
    let container_status = began.map(|started_at| ContainerStatus {
        started_at: Some(started_at),
        finished_at: done,
        state: if done.is_some() {
            "finished"
        } else {
            "running"
        },
        exit_code: done.map(|_| if failed.is_some() { 1 } else { 0 }),
        out_of_memory: false,
    });
    TaskStatus {
        name,
        state,
        timing,
        error: failed,
        short_error: None,
        container_status,
    }
}

fn main_task(
    view: &AttemptView,
    state: &JobState,
    name: String,
    error_of: impl Fn(ErrorKind) -> Option<String>,
    uploads: impl Fn(&mut Timing),
) -> TaskStatus {
    let steps = view.steps();
    let started = view.started_at_ms();
    let ended = view.ended_at_ms();
    let mut timing = Timing::default();
    if steps.image {
        timing.step(
            "pulling",
            steps.granted_ms,
            steps
                .image_done_ms
                .or(ended.filter(|_| steps.granted_ms.is_some())),
        );
    }
    timing.step(
        "running",
        started,
        steps.exited_ms.or(ended.filter(|_| started.is_some())),
    );
    let pull_failed = error_of(ErrorKind::ImagePullFailed);
    if started.is_some() || pull_failed.is_some() {
        uploads(&mut timing);
    }
    let exit = view.exit();
    let (mut error, mut short_error) = (None, None);
    let main_state = match (exit, state) {
        (Some(ExitStatus::TimedOut { timeout_ms }), _) => {
            short_error = Some("timed out");
            error = Some(format!(
                "the job ran past its timeout of {} s and was ended (SIGTERM, then SIGKILL after the grace period if it had not exited)",
                timeout_ms as f64 / 1000.0
            ));
            "error"
        }
        (Some(ExitStatus::StorageExceeded { .. }), _) => {
            short_error = Some("storage exceeded");
            error = error_of(ErrorKind::StorageExceeded);
            "error"
        }
        (
            Some(ExitStatus::OutOfMemory {
                memory_limit_bytes,
                code,
            }),
            _,
        ) => {
            short_error = Some("out of memory");
            let _ = (memory_limit_bytes, code);
            "failed"
        }
        (Some(e), _) if e.is_success() => "succeeded",
        (
            Some(_),
            JobState::Done {
                outcome: Outcome::Cancelled,
            },
        ) => "cancelled",
        (Some(_), _) => "failed",
        (None, _) => {
            if let Some(message) = pull_failed {
                short_error = Some(pull_short_error(&message));
                error = Some(message);
                "error"
            } else if let Some(message) = error_of(ErrorKind::LaunchFailed) {
                error = Some(message);
                "error"
            } else if matches!(
                state,
                JobState::Done {
                    outcome: Outcome::Cancelled
                }
            ) {
                "cancelled"
            } else if started.is_some() {
                "running"
            } else if steps.image
                && steps.granted_ms.is_some()
                && steps.image_done_ms.is_none()
                && !state.is_terminal()
            {
                "creating"
            } else {
                "pending"
            }
        }
    };
    let container_status = started.map(|started_at| {
        let running = matches!(
            state,
            JobState::Running {
                phase: RunPhase::Executing { .. } | RunPhase::Cancelling
            }
        );
        match exit {
            // Hail takes a timed-out container's status before killing it.
            Some(ExitStatus::TimedOut { .. }) => ContainerStatus {
                started_at: Some(started_at),
                finished_at: steps.exited_ms,
                state: "running",
                exit_code: None,
                out_of_memory: false,
            },
            Some(exit) => ContainerStatus {
                started_at: Some(started_at),
                finished_at: steps.exited_ms,
                state: "finished",
                exit_code: exit.exit_code(),
                out_of_memory: matches!(exit, ExitStatus::OutOfMemory { .. }),
            },
            None => ContainerStatus {
                started_at: Some(started_at),
                finished_at: if running { None } else { ended },
                state: if running { "running" } else { "finished" },
                exit_code: None,
                out_of_memory: false,
            },
        }
    });
    TaskStatus {
        name,
        state: main_state,
        timing,
        error,
        short_error: short_error.map(str::to_owned),
        container_status,
    }
}

/// Hail's `short_error` for a failed pull, from the pull's message.
fn pull_short_error(message: &str) -> &'static str {
    let lower = message.to_ascii_lowercase();
    if lower.contains("not found")
        || lower.contains("unknown manifest")
        || lower.contains("manifest unknown")
    {
        "image not found"
    } else if lower.contains("invalid reference")
        || lower.contains("repository") && lower.contains("invalid")
    {
        "image repository is invalid"
    } else {
        "image cannot be pulled"
    }
}

/// hailtop's `Job.exit_code` of a status: `None` with a job-level error or
/// without tasks; else over `input`, `main`, `output` (those present), the
/// first task without a code (an error, or no process), else the first
/// code > 0, else 0.
pub fn hail_exit_code(status: &JobStatus) -> Option<i32> {
    if status.error.is_some() {
        return None;
    }
    let tasks = status.container_statuses.as_ref()?;
    let codes = [
        tasks.input.as_ref(),
        Some(&tasks.main),
        tasks.output.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|task| {
        if task.error.is_some() {
            return None;
        }
        task.container_status.as_ref()?.exit_code
    });
    for code in codes {
        match code {
            None => return None,
            Some(c) if c > 0 => return Some(c),
            Some(_) => {}
        }
    }
    Some(0)
}

/// The `job_started` body of `view` (its process just started).
pub(super) fn started_body(view: &AttemptView, identity: &Identity) -> JobStartedBody {
    let key = view.key();
    JobStartedBody {
        status: JobStartedStatus {
            version: STATUS_VERSION,
            batch_id: key.batch_id,
            job_id: key.job_id,
            attempt_id: key.attempt_id.clone(),
            start_time: view
                .start_time_ms()
                .unwrap_or_else(|| view.accepted_at_ms()),
            resources: identity.resources(view),
        },
    }
}

/// The `job_complete` status of `view` (terminal); `now` (ms since the Unix
/// epoch) stands for an end the view does not have. `status.status` is
/// Hail's `BatchFormatVersion.db_status`: the whole status for format 1,
/// else `[exit code, end_time - start_time]`.
pub(super) fn complete_status(
    view: &AttemptView,
    identity: &Identity,
    now: i64,
) -> JobCompleteStatus {
    let full = status(view, identity);
    let end = full.end_time.unwrap_or(now);
    let start = full.start_time.unwrap_or(end);
    let key = view.key();
    let db_status = if view.format_version() == 1 {
        serde_json::to_value(&full).unwrap_or(Value::Null)
    } else {
        let duration = (start != 0 && end != 0).then_some(end - start);
        serde_json::json!([hail_exit_code(&full), duration])
    };
    JobCompleteStatus {
        version: STATUS_VERSION,
        batch_id: key.batch_id,
        job_id: key.job_id,
        attempt_id: key.attempt_id.clone(),
        job_group_id: view.job_group_id(),
        state: full.state.to_owned(),
        start_time: start,
        end_time: end,
        resources: full.resources,
        status: db_status,
    }
}

/// `status.json` as Hail's worker writes it to the logs store
/// (`json.dumps(status)`: `", "` and `": "` separators, every non-ASCII
/// character as `\uXXXX`; sample `hail/status-succeeded.store.json`).
pub fn status_file(status: &JobStatus) -> Vec<u8> {
    python_json(status)
}

/// `value` serialised as Python's `json.dumps` with its default arguments.
pub fn python_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    // Serialising our own types into memory cannot fail.
    if value.serialize(&mut serializer).is_err() {
        out.clear();
    }
    out
}

/// Python's `json.dumps` layout: `", "`, `": "`, ASCII only.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                writer.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_files_are_laid_out_as_pythons_json_dumps() {
        let value = serde_json::json!({
            "a": [1, {"b": "é 😀 \n \u{1b}"}, null],
            "c": true,
        });
        // python3 -c 'import json; print(json.dumps({"a": [1, {"b": "é 😀 \n \x1b"}, None], "c": True}))'
        assert_eq!(
            String::from_utf8(python_json(&value)).unwrap(),
            r#"{"a": [1, {"b": "\u00e9 \ud83d\ude00 \n \u001b"}, null], "c": true}"#
        );
    }
}
