//! The transfer task (`StageInputs`, `UploadOutputs`): moves the job's
//! input or output files, then records the result. A cancel abandons it.
//!
//! These are Hail's `input` and `output` tasks: each writes its log
//! (`input.log` / `output.log` in the attempt directory: what was moved
//! where, and how it ended), served by `GET .../log/input|output` and
//! uploaded with the main log, and a resource-usage file holding Hail's
//! "no data" (the transfers run inside the worker, which has no cgroup per
//! transfer to measure).

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
        let task = match direction {
            Direction::Inputs => "input",
            Direction::Outputs => "output",
        };
        let files = match direction {
            Direction::Inputs => &spec.input_files,
            Direction::Outputs => &spec.output_files,
        };
        let dir = crate::runner::AttemptDir::new(&self.inner.settings.data_dir, &key);
        let mut log = TaskLog::open(&dir, task);
        for file in files {
            let local = file.local.display();
            let url = crate::store::redact_url(&file.url);
            match direction {
                Direction::Inputs => log.line(format_args!("downloading {url} to {local}")),
                Direction::Outputs => log.line(format_args!("uploading {local} to {url}")),
            }
        }
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
        match &moved {
            Ok(t) => log.line(format_args!(
                "done: {} files, {} bytes in {duration_ms} ms",
                t.files, t.size_bytes
            )),
            Err(e) => log.line(format_args!("failed after {duration_ms} ms: {e}")),
        }
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

/// A transfer task's log: lines appended to `{task}.log` (each stamped
/// with the UTC time), and its resource-usage file written with Hail's
/// "no data". A log that cannot be written is given up (warned once); the
/// transfer goes on.
struct TaskLog {
    file: Option<std::fs::File>,
}

impl TaskLog {
    fn open(dir: &crate::runner::AttemptDir, task: &str) -> TaskLog {
        let opened = std::fs::create_dir_all(&dir.root).and_then(|()| {
            std::fs::write(
                dir.task_resource_usage(task),
                crate::resource_usage::no_data(),
            )?;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.task_log(task))
        });
        match opened {
            Ok(file) => TaskLog { file: Some(file) },
            Err(e) => {
                tracing::warn!(task, error = %e, "the task's log cannot be written");
                TaskLog { file: None }
            }
        }
    }

    fn line(&mut self, text: std::fmt::Arguments<'_>) {
        use std::io::Write;
        if let Some(file) = &mut self.file {
            let now = time_stamp();
            if writeln!(file, "{now} {text}").is_err() {
                self.file = None;
            }
        }
    }
}

/// The time now as RFC 3339 with ms, UTC.
fn time_stamp() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
