//! Snapshots of a job attempt's state, and the vocabulary of outcomes.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::event::ExitStatus;

/// Where one job attempt is. `Done` and `Errored` are terminal.
///
/// Serialised as `{"state": "running", "phase": {...}}` and so on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    /// The create call was accepted; the spec load has not begun.
    Accepted,
    /// The job spec is being read.
    LoadingSpec,
    /// The spec is loaded: the job waits for resources, or its process is
    /// being started, runs, or is being ended after a cancel.
    Running {
        /// Which part of running.
        phase: RunPhase,
    },
    /// Finished: the process ran to an exit, or the attempt was cancelled.
    Done {
        /// How it finished.
        outcome: Outcome,
    },
    /// The attempt could not run: a bad spec, a launch failure, a restart.
    Errored {
        /// The error's kind, e.g. `spec_missing`.
        kind: ErrorKind,
        /// What went wrong, for a person.
        message: String,
    },
}

impl JobState {
    /// Whether the state is `Done` or `Errored` (absorbs every later event).
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobState::Done { .. } | JobState::Errored { .. })
    }

    /// The snake_case name of this state (`"loading_spec"`), with the running
    /// phase where there is one (`"running.executing"`).
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Accepted => "accepted",
            JobState::LoadingSpec => "loading_spec",
            JobState::Running {
                phase: RunPhase::WaitingForResources,
            } => "running.waiting_for_resources",
            JobState::Running {
                phase: RunPhase::Initializing,
            } => "running.initializing",
            JobState::Running {
                phase: RunPhase::Starting,
            } => "running.starting",
            JobState::Running {
                phase: RunPhase::UploadingOutputs,
            } => "running.uploading_outputs",
            JobState::Running {
                phase: RunPhase::Executing { .. },
            } => "running.executing",
            JobState::Running {
                phase: RunPhase::Cancelling,
            } => "running.cancelling",
            JobState::Done { .. } => "done",
            JobState::Errored { .. } => "errored",
        }
    }

    /// The state for a person, in words: `"succeeded (exit 0)"`,
    /// `"failed (exit 3)"`, `"timed out after 1.5 s"`, `"errored:
    /// spec_missing: ..."`, `"running (pid 4242)"`, `"waiting for cores and
    /// memory"`. Used by `jobs list`, `jobs status` and `replay`.
    pub fn in_words(&self) -> String {
        match self {
            JobState::Accepted => "accepted (its spec read has not begun)".to_owned(),
            JobState::LoadingSpec => "loading its spec".to_owned(),
            JobState::Running { phase } => match phase {
                RunPhase::WaitingForResources => "waiting for cores and memory".to_owned(),
                RunPhase::Initializing => {
                    "initializing (pulling its image, staging its inputs)".to_owned()
                }
                RunPhase::Starting => "starting its process".to_owned(),
                RunPhase::Executing { pid } => format!("running (pid {pid})"),
                RunPhase::UploadingOutputs => "uploading its outputs".to_owned(),
                RunPhase::Cancelling => "cancelling (ending its process)".to_owned(),
            },
            JobState::Done { outcome } => match outcome {
                Outcome::Succeeded => "succeeded (exit 0)".to_owned(),
                Outcome::Cancelled => "cancelled".to_owned(),
                Outcome::Failed { exit } => match *exit {
                    ExitStatus::Code { code } => format!("failed (exit {code})"),
                    ExitStatus::Signal { signal } => {
                        format!("failed (killed by signal {signal}, exit {})", 128 + signal)
                    }
                    ExitStatus::TimedOut { timeout_ms } => {
                        format!("timed out after {:.1} s", timeout_ms as f64 / 1000.0)
                    }
                    ExitStatus::StorageExceeded {
                        limit_bytes,
                        used_bytes,
                    } => format!(
                        "ended: its files took {used_bytes} bytes, over its storage bound of {limit_bytes} bytes"
                    ),
                    ExitStatus::OutOfMemory {
                        code,
                        memory_limit_bytes,
                    } => format!(
                        "out of memory (over its limit of {memory_limit_bytes} bytes, exit {code})"
                    ),
                },
            },
            JobState::Errored { kind, message } => format!("errored: {kind}: {message}"),
        }
    }

    /// The state as Hail's status JSON and the driver see it.
    pub fn wire_state(&self) -> WireState {
        match self {
            // Hail's worker lists a job whose spec is being read as
            // `pending` (its FakeJob), until its cores are granted.
            JobState::Accepted
            | JobState::LoadingSpec
            | JobState::Running {
                phase: RunPhase::WaitingForResources,
            } => WireState::Pending,
            JobState::Running {
                phase: RunPhase::Initializing | RunPhase::Starting,
            } => WireState::Initializing,
            JobState::Running { .. } => WireState::Running,
            JobState::Done {
                outcome: Outcome::Succeeded,
            } => WireState::Succeeded,
            // Hail's container raises a timeout error: the job is `error`
            // (`short_error` "timed out"), not `failed`.
            JobState::Done {
                outcome:
                    Outcome::Failed {
                        exit: ExitStatus::TimedOut { .. },
                    },
            } => WireState::Error,
            JobState::Done {
                outcome: Outcome::Failed { .. },
            } => WireState::Failed,
            JobState::Done {
                outcome: Outcome::Cancelled,
            } => WireState::Cancelled,
            JobState::Errored { .. } => WireState::Error,
        }
    }
}

/// The sub-state of `Running`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum RunPhase {
    /// The spec is loaded; the job waits in the worker's queue until its
    /// cores and memory are free.
    WaitingForResources,
    /// The job's container image is being pulled, then its input files
    /// downloaded (resources are held).
    Initializing,
    /// The process is being spawned.
    Starting,
    /// The process runs.
    Executing {
        /// Its host process id.
        pid: u32,
    },
    /// A cancel arrived; the worker is ending the process and waits for it
    /// to exit.
    Cancelling,
    /// The process exited 0; its output files are being uploaded.
    UploadingOutputs,
}

/// How a `Done` attempt finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The process exited with code 0.
    Succeeded,
    /// The process exited non-zero, was killed by a signal, timed out, or
    /// ran out of memory.
    Failed {
        /// How the process ended.
        exit: ExitStatus,
    },
    /// The attempt was cancelled; it is not reported to the driver.
    Cancelled,
}

/// Why an attempt is `Errored`. Serialised in snake_case (`"spec_missing"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A spec object (`specs` or `specs.idx`) does not exist.
    SpecMissing,
    /// The spec bytes are unusable: short or garbled index, offsets reversed
    /// or past the end, empty, not UTF-8, not a JSON object, wrong `job_id`,
    /// no usable `process.command`, or larger than the cap.
    SpecCorrupt,
    /// Reading the spec took longer than the overall deadline.
    SpecTimeout,
    /// The store kept failing with transient errors until retries ran out.
    SpecUnavailable,
    /// The process could not be spawned.
    LaunchFailed,
    /// The spec asks for something this worker cannot run (a `process.type`
    /// other than `docker`).
    Unsupported,
    /// The worker restarted while the attempt was live.
    WorkerRestarted,
    /// The job asks for more cores or memory than the worker has in all.
    InsufficientResources,
    /// An input file could not be downloaded.
    InputFailed,
    /// An output file could not be uploaded.
    OutputFailed,
    /// The job's container image could not be pulled (missing, refused,
    /// registry down through the retries, damaged or unusable layers).
    ImagePullFailed,
    /// The job's files took more than its storage bound; it was ended.
    StorageExceeded,
}

impl ErrorKind {
    /// All kinds, in declaration order.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::SpecMissing,
        ErrorKind::SpecCorrupt,
        ErrorKind::SpecTimeout,
        ErrorKind::SpecUnavailable,
        ErrorKind::LaunchFailed,
        ErrorKind::Unsupported,
        ErrorKind::WorkerRestarted,
        ErrorKind::InsufficientResources,
        ErrorKind::InputFailed,
        ErrorKind::OutputFailed,
        ErrorKind::ImagePullFailed,
        ErrorKind::StorageExceeded,
    ];

    /// The snake_case name, as serialised.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::SpecMissing => "spec_missing",
            ErrorKind::SpecCorrupt => "spec_corrupt",
            ErrorKind::SpecTimeout => "spec_timeout",
            ErrorKind::SpecUnavailable => "spec_unavailable",
            ErrorKind::LaunchFailed => "launch_failed",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::WorkerRestarted => "worker_restarted",
            ErrorKind::InsufficientResources => "insufficient_resources",
            ErrorKind::InputFailed => "input_failed",
            ErrorKind::OutputFailed => "output_failed",
            ErrorKind::ImagePullFailed => "image_pull_failed",
            ErrorKind::StorageExceeded => "storage_exceeded",
        }
    }

    /// Whether this kind is one a spec load can fail with.
    pub fn is_spec_error(&self) -> bool {
        matches!(
            self,
            ErrorKind::SpecMissing
                | ErrorKind::SpecCorrupt
                | ErrorKind::SpecTimeout
                | ErrorKind::SpecUnavailable
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's state as Hail's status JSON and `job_complete` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireState {
    /// Accepted, spec not yet being read; or loaded and waiting for the
    /// worker's cores and memory.
    Pending,
    /// Spec being read or process being started.
    Initializing,
    /// Process running.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, by a signal, or by timeout.
    Failed,
    /// Could not run (`Errored`).
    Error,
    /// Cancelled.
    Cancelled,
}

impl WireState {
    /// The snake_case name, as serialised.
    pub fn as_str(&self) -> &'static str {
        match self {
            WireState::Pending => "pending",
            WireState::Initializing => "initializing",
            WireState::Running => "running",
            WireState::Succeeded => "succeeded",
            WireState::Failed => "failed",
            WireState::Error => "error",
            WireState::Cancelled => "cancelled",
        }
    }
}
