//! The transfer task (`StageInputs`, `UploadOutputs`): moves the job's
//! input or output files, then records the result. A cancel abandons it.

use std::path::PathBuf;
use std::sync::Arc;

use batch_worker_model::{Event, JobKey};
use tokio_util::sync::CancellationToken;

use super::super::Worker;
use crate::job_spec::JobSpec;
use crate::transfer;

/// Which files a transfer task moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::worker) enum Direction {
    /// `input_files`, before the spawn.
    Inputs,
    /// `output_files`, after an exit 0.
    Outputs,
}

impl Worker {
    /// The transfer task.
    pub(super) async fn transfer(
        self,
        key: JobKey,
        direction: Direction,
        spec: Arc<JobSpec>,
        work_dir: PathBuf,
        cancel: CancellationToken,
    ) {
        let started = std::time::Instant::now();
        let options = &self.inner.settings.store_options;
        let data_dir = &self.inner.settings.data_dir;
        let moved = async {
            match direction {
                Direction::Inputs => {
                    transfer::download_all(&spec.input_files, &work_dir, options, data_dir).await
                }
                Direction::Outputs => {
                    transfer::upload_all(&spec.output_files, &work_dir, options, data_dir).await
                }
            }
        };
        let moved = tokio::select! {
            moved = moved => moved,
            () = cancel.cancelled() => return,
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        let event = match (direction, moved) {
            (Direction::Inputs, Ok(t)) => Event::InputsStaged {
                files: t.files,
                size_bytes: t.size_bytes,
            },
            (Direction::Outputs, Ok(t)) => Event::OutputsUploaded {
                files: t.files,
                size_bytes: t.size_bytes,
            },
            (Direction::Inputs, Err(e)) => Event::InputsFailed {
                message: format!("input file {e}"),
            },
            (Direction::Outputs, Err(e)) => Event::OutputsFailed {
                message: format!("output file {e}"),
            },
        };
        tracing::debug!(%key, duration_ms, event = event.name(), "file transfer ended");
        self.record(&key, event);
    }
}
