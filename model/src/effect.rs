//! Effects: what the shell must do after an event is applied.
//!
//! The state machine never performs IO; it pushes effects. The worker's
//! supervisor performs them, in order, after the event that produced them is
//! recorded. The replay tool recomputes and discards them.

use serde::{Deserialize, Serialize};

/// One instruction for the shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Effect {
    /// Start reading the job spec (from the bunch, or the create body for
    /// format 1), then record `SpecLoadStarted` and its result.
    StartSpecLoad,
    /// Abort an in-flight spec read, if any.
    AbortSpecLoad,
    /// Queue for the job's cores and memory (the spec's `resources`), then
    /// record `ResourcesGranted`, or `ResourcesRefused` if they can never fit.
    RequestResources,
    /// Leave the resource queue (the attempt was cancelled while waiting).
    CancelResourceRequest,
    /// Pull the job's container image (`spec_loaded`'s `image`) into the
    /// image cache, or find it there, then record `ImagePulled` or
    /// `ImagePullFailed`. Cancelled by `AbortTransfers`.
    PullImage,
    /// Download the spec's `input_files` into the attempt's working
    /// directory, then record `InputsStaged` or `InputsFailed`.
    StageInputs,
    /// Upload the spec's `output_files`, then record `OutputsUploaded` or
    /// `OutputsFailed`.
    UploadOutputs,
    /// Abort an image pull, download or upload in flight (the attempt was
    /// cancelled).
    AbortTransfers,
    /// Spawn the job's process from the loaded spec, holding the granted
    /// resources until it ends.
    SpawnProcess,
    /// End the job's process (SIGTERM, then SIGKILL after a grace period).
    KillProcess,
    /// Write the attempt's `status.json` and main log to the logs store,
    /// then record `LogsUploaded` or `LogsUploadFailed`.
    UploadLogs,
    /// Send `job_started` to the driver (durably: retried until the driver
    /// acknowledges or answers 404, then `StartedDelivered` is recorded).
    ReportStarted,
    /// Send `job_complete` to the driver with the attempt's final state
    /// (retried until acknowledged or 404, then `CompleteDelivered`).
    ReportComplete,
}
