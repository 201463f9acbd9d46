//! The statechart of one job attempt, built with `statig`.
//!
//! ```text
//! live ─┬─ pending ─┬─ accepted
//!       │           └─ loading_spec
//!       └─ running ─┬─ waiting_for_resources
//!                   ├─ initializing        (image pull, input files)
//!                   ├─ starting
//!                   ├─ executing {pid}
//!                   ├─ uploading_outputs   (output files, after exit 0)
//!                   └─ cancelling
//! terminal ─┬─ done {outcome}
//!           └─ errored {kind, message}
//! ```
//!
//! Handlers only decide: they push [`Effect`]s into the [`Decision`]
//! context and name the next state. An event no state of the current branch
//! handles reaches `live` and is marked rejected.
//!
//! Entering `terminal` asks for the logs upload; its result (uploaded or
//! failed) asks for `job_complete`, except for a cancelled attempt. So the
//! driver hears of a job only once its status and log are in the logs store
//! (or could not be put there). Delivery events are taken without a change
//! of state; every other event reaching `terminal` is absorbed.
#![allow(missing_docs)]

use statig::prelude::*;

use crate::effect::Effect;
use crate::event::{Event, ExitStatus, ProcessKind};
use crate::state::{ErrorKind, JobState, Outcome as JobOutcome, RunPhase};

/// What applying one event decided.
#[derive(Debug, Default)]
pub(crate) struct Decision {
    pub(crate) effects: Vec<Effect>,
    pub(crate) disposition: Disposition,
}

/// Whether the event moved the machine, was absorbed, or was illegal.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    #[default]
    Applied,
    Absorbed,
    Rejected,
}

/// The statig machine. Its shared storage is what `spec_loaded` said about
/// the image and files, which decides later transitions; all else is
/// state-local.
#[derive(Debug, Default, Clone)]
pub(crate) struct JobChart {
    /// The spec names an image the worker must still pull before the
    /// spawn (cleared once it is pulled).
    pull_image: bool,
    /// The spec has `input_files`: stage them before the spawn.
    stage_inputs: bool,
    /// The spec has `output_files`: upload them after an exit 0.
    upload_outputs: bool,
}

#[state_machine(
    initial = "State::accepted()",
    state(derive(Debug, Clone, PartialEq, Eq)),
    superstate(derive(Debug))
)]
impl JobChart {
    #[state(superstate = "pending", entry_action = "enter_accepted")]
    fn accepted(event: &Event) -> Outcome<State> {
        match event {
            Event::SpecLoadStarted => Transition(State::loading_spec()),
            _ => Super,
        }
    }

    #[action]
    fn enter_accepted(context: &mut Decision) {
        context.effects.push(Effect::StartSpecLoad);
    }

    #[state(superstate = "pending")]
    fn loading_spec(&mut self, context: &mut Decision, event: &Event) -> Outcome<State> {
        match event {
            Event::SpecLoaded {
                process: ProcessKind::Docker,
                unsupported,
                input_files,
                output_files,
                image,
                ..
            } if unsupported.is_empty() => {
                self.pull_image = image.is_some();
                self.stage_inputs = *input_files > 0;
                self.upload_outputs = *output_files > 0;
                context.effects.push(Effect::RequestResources);
                Transition(State::waiting_for_resources())
            }
            Event::SpecLoaded {
                process: ProcessKind::Other { name },
                ..
            } => errored(
                ErrorKind::Unsupported,
                format!(
                    "process.type {name:?} is not supported: this worker runs \
                     process.type \"docker\" jobs only"
                ),
            ),
            Event::SpecLoaded { unsupported, .. } if !unsupported.is_empty() => errored(
                ErrorKind::Unsupported,
                format!(
                    "the spec uses {} which this worker cannot honour yet; \
                     running the job without them would lose its data",
                    unsupported.join(" and ")
                ),
            ),
            Event::SpecLoadFailed { kind, message } if kind.is_spec_error() => {
                errored(*kind, message.clone())
            }
            _ => Super,
        }
    }

    /// Before the process exists, a cancel just stops the spec read.
    #[superstate(superstate = "live")]
    fn pending(context: &mut Decision, event: &Event) -> Outcome<State> {
        match event {
            Event::CancelRequested => {
                context.effects.push(Effect::AbortSpecLoad);
                Transition(State::done(JobOutcome::Cancelled))
            }
            _ => Super,
        }
    }

    /// Loaded, queued for cores and memory. No process exists yet, so a
    /// cancel only leaves the queue.
    #[state(superstate = "running")]
    fn waiting_for_resources(&self, context: &mut Decision, event: &Event) -> Outcome<State> {
        match event {
            Event::ResourcesGranted if self.pull_image => {
                context.effects.push(Effect::PullImage);
                Transition(State::initializing())
            }
            Event::ResourcesGranted if self.stage_inputs => {
                context.effects.push(Effect::StageInputs);
                Transition(State::initializing())
            }
            Event::ResourcesGranted => {
                context.effects.push(Effect::SpawnProcess);
                Transition(State::starting())
            }
            Event::ResourcesRefused { message } => {
                errored(ErrorKind::InsufficientResources, message.clone())
            }
            Event::CancelRequested => {
                context.effects.push(Effect::CancelResourceRequest);
                Transition(State::done(JobOutcome::Cancelled))
            }
            _ => Super,
        }
    }

    /// Resources held; the image is being pulled, then the input files
    /// downloaded. No process exists yet, so a cancel only stops the pull
    /// or the downloads.
    #[state(superstate = "running")]
    fn initializing(&mut self, context: &mut Decision, event: &Event) -> Outcome<State> {
        match event {
            Event::ImagePulled { .. } if self.pull_image => {
                self.pull_image = false;
                if self.stage_inputs {
                    context.effects.push(Effect::StageInputs);
                    Handled
                } else {
                    context.effects.push(Effect::SpawnProcess);
                    Transition(State::starting())
                }
            }
            Event::ImagePullFailed { image, message } if self.pull_image => errored(
                ErrorKind::ImagePullFailed,
                format!("cannot pull image {image:?}: {message}"),
            ),
            Event::InputsStaged { .. } if !self.pull_image => {
                context.effects.push(Effect::SpawnProcess);
                Transition(State::starting())
            }
            Event::InputsFailed { message } if !self.pull_image => {
                errored(ErrorKind::InputFailed, message.clone())
            }
            Event::CancelRequested => {
                context.effects.push(Effect::AbortTransfers);
                Transition(State::done(JobOutcome::Cancelled))
            }
            _ => Super,
        }
    }

    #[state(superstate = "running")]
    fn starting(context: &mut Decision, event: &Event) -> Outcome<State> {
        match event {
            Event::ProcessStarted { pid, .. } => {
                context.effects.push(Effect::ReportStarted);
                Transition(State::executing(*pid))
            }
            Event::LaunchFailed { message } => errored(ErrorKind::LaunchFailed, message.clone()),
            _ => Super,
        }
    }

    #[state(superstate = "running")]
    #[allow(unused_variables)]
    fn executing(&self, context: &mut Decision, pid: &u32, event: &Event) -> Outcome<State> {
        match event {
            Event::StartedDelivered => Handled,
            Event::ProcessExited {
                exit:
                    ExitStatus::StorageExceeded {
                        limit_bytes,
                        used_bytes,
                    },
                ..
            } => errored(
                ErrorKind::StorageExceeded,
                format!(
                    "the job's files took {used_bytes} bytes, over its storage bound of {limit_bytes} bytes (resources.storage_gib); it was ended"
                ),
            ),
            Event::ProcessExited { exit, .. } if exit.is_success() && self.upload_outputs => {
                context.effects.push(Effect::UploadOutputs);
                Transition(State::uploading_outputs())
            }
            Event::ProcessExited { exit, .. } => {
                if exit.is_success() {
                    Transition(State::done(JobOutcome::Succeeded))
                } else {
                    Transition(State::done(JobOutcome::Failed { exit: *exit }))
                }
            }
            _ => Super,
        }
    }

    /// The process exited 0; its outputs are on their way. Only then is
    /// the job `succeeded`. A cancel stops the uploads.
    #[state(superstate = "running")]
    fn uploading_outputs(context: &mut Decision, event: &Event) -> Outcome<State> {
        match event {
            Event::StartedDelivered => Handled,
            Event::OutputsUploaded { .. } => Transition(State::done(JobOutcome::Succeeded)),
            Event::OutputsFailed { message } => errored(ErrorKind::OutputFailed, message.clone()),
            Event::CancelRequested => {
                context.effects.push(Effect::AbortTransfers);
                Transition(State::done(JobOutcome::Cancelled))
            }
            _ => Super,
        }
    }

    /// A cancel arrived while running: whatever the process does next, the
    /// attempt ends cancelled. A restart ends it cancelled too: the driver
    /// asked for it, so it is not reported.
    #[state(superstate = "running")]
    fn cancelling(event: &Event) -> Outcome<State> {
        match event {
            Event::ProcessStarted { .. } | Event::CancelRequested | Event::StartedDelivered => {
                Handled
            }
            Event::LaunchFailed { .. } | Event::ProcessExited { .. } | Event::WorkerRestarted => {
                Transition(State::done(JobOutcome::Cancelled))
            }
            _ => Super,
        }
    }

    /// Once the process may exist, a cancel must end it.
    #[superstate(superstate = "live")]
    fn running(context: &mut Decision, event: &Event) -> Outcome<State> {
        match event {
            Event::CancelRequested => {
                context.effects.push(Effect::KillProcess);
                Transition(State::cancelling())
            }
            _ => Super,
        }
    }

    /// Shared by every non-terminal state: a restart errors the attempt,
    /// anything else unhandled is illegal here.
    #[superstate]
    fn live(context: &mut Decision, event: &Event) -> Outcome<State> {
        match event {
            Event::WorkerRestarted => errored(
                ErrorKind::WorkerRestarted,
                "the worker restarted while the job was live; the attempt cannot go on \
                 (a process it had started was ended at shutdown, or abandoned by a crash)"
                    .to_owned(),
            ),
            _ => {
                context.disposition = Disposition::Rejected;
                Handled
            }
        }
    }

    /// A cancelled attempt is not reported: the driver asked for it.
    #[state(superstate = "terminal")]
    fn done(context: &mut Decision, outcome: &JobOutcome, event: &Event) -> Outcome<State> {
        match event {
            Event::LogsUploaded | Event::LogsUploadFailed { .. } => {
                if *outcome != JobOutcome::Cancelled {
                    context.effects.push(Effect::ReportComplete);
                }
                Handled
            }
            _ => Super,
        }
    }

    #[state(superstate = "terminal")]
    #[allow(unused_variables, clippy::ptr_arg)] // statig passes state-local storage by reference
    fn errored(
        context: &mut Decision,
        kind: &ErrorKind,
        message: &String,
        event: &Event,
    ) -> Outcome<State> {
        match event {
            Event::LogsUploaded | Event::LogsUploadFailed { .. } => {
                context.effects.push(Effect::ReportComplete);
                Handled
            }
            _ => Super,
        }
    }

    /// Terminal states take the delivery of their reports without a change;
    /// they absorb every other event.
    #[superstate(entry_action = "enter_terminal")]
    fn terminal(context: &mut Decision, event: &Event) -> Outcome<State> {
        if !matches!(event, Event::CompleteDelivered | Event::StartedDelivered) {
            context.disposition = Disposition::Absorbed;
        }
        Handled
    }

    #[action]
    fn enter_terminal(context: &mut Decision) {
        context.effects.push(Effect::UploadLogs);
    }
}

/// Moves to `Errored{kind, message}` (entering `terminal` asks for the
/// logs upload, then the report).
fn errored(kind: ErrorKind, message: String) -> Outcome<State> {
    Transition(State::errored(kind, message))
}

impl From<&State> for JobState {
    fn from(state: &State) -> JobState {
        match state {
            State::Accepted {} => JobState::Accepted,
            State::LoadingSpec {} => JobState::LoadingSpec,
            State::WaitingForResources {} => JobState::Running {
                phase: RunPhase::WaitingForResources,
            },
            State::Initializing {} => JobState::Running {
                phase: RunPhase::Initializing,
            },
            State::UploadingOutputs {} => JobState::Running {
                phase: RunPhase::UploadingOutputs,
            },
            State::Starting {} => JobState::Running {
                phase: RunPhase::Starting,
            },
            State::Executing { pid } => JobState::Running {
                phase: RunPhase::Executing { pid: *pid },
            },
            State::Cancelling {} => JobState::Running {
                phase: RunPhase::Cancelling,
            },
            State::Done { outcome } => JobState::Done {
                outcome: outcome.clone(),
            },
            State::Errored { kind, message } => JobState::Errored {
                kind: *kind,
                message: message.clone(),
            },
        }
    }
}
