//! The work an attempt's effects ask for, and the tasks that do it: one
//! file per kind. Each task does its IO, then records what happened as an
//! event through [`Worker::record`] (the only way back into the table).
//!
//! [`Worker::perform`] starts the tasks in the order the effects came, once
//! their event is journaled.

mod admission;
mod image_pull;
mod logs;
mod process;
mod reports;
mod spec_load;
mod transfer;
mod usage;

use std::path::PathBuf;
use std::sync::Arc;

use batch_worker_model::JobKey;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Worker;
use crate::admission::{Grant, Request};
use crate::image::PulledImage;
use crate::job_spec::JobSpec;
use crate::wire::{CreateJob, JobCompleteStatus, JobStartedBody};

pub(super) use transfer::Direction;

/// An effect with the data needed to perform it, taken under the table lock.
pub(super) enum Work {
    /// Read the spec (`StartSpecLoad`).
    LoadSpec {
        key: JobKey,
        request: Arc<CreateJob>,
        cancel: CancellationToken,
    },
    /// Queue for the spec's resources (`RequestResources`).
    Admit {
        key: JobKey,
        request: Request,
        cancel: CancellationToken,
    },
    /// Move input or output files (`StageInputs`, `UploadOutputs`).
    Transfer {
        key: JobKey,
        direction: Direction,
        spec: Arc<JobSpec>,
        work_dir: PathBuf,
        cancel: CancellationToken,
    },
    /// Pull the spec's image (`PullImage`).
    PullImage {
        key: JobKey,
        image: String,
        cancel: CancellationToken,
    },
    /// Spawn and wait for the process (`SpawnProcess`), holding the grant.
    Spawn {
        key: JobKey,
        spec: Arc<JobSpec>,
        kill: CancellationToken,
        grant: Option<Grant>,
        image: Option<Arc<PulledImage>>,
    },
    /// Wait for a process re-attached at start, holding the grant.
    Reattached {
        key: JobKey,
        process: Box<dyn crate::runner::Process>,
        timeout: Option<std::time::Duration>,
        kill: CancellationToken,
        grant: Option<Grant>,
    },
    /// Upload `status.json` and the tasks' logs and resource usage
    /// (`UploadLogs`).
    UploadLogs {
        key: JobKey,
        format_version: u32,
        status: Vec<u8>,
    },
    /// Send `job_started` (`ReportStarted`).
    ReportStarted { key: JobKey, body: JobStartedBody },
    /// Send `job_complete` (`ReportComplete`), once the attempt's
    /// `job_started` task has ended.
    ReportComplete {
        key: JobKey,
        status: JobCompleteStatus,
        started: Option<JoinHandle<()>>,
    },
}

impl Work {
    /// The attempt the work is for.
    fn key(&self) -> &JobKey {
        match self {
            Work::LoadSpec { key, .. }
            | Work::Admit { key, .. }
            | Work::Transfer { key, .. }
            | Work::PullImage { key, .. }
            | Work::Spawn { key, .. }
            | Work::Reattached { key, .. }
            | Work::UploadLogs { key, .. }
            | Work::ReportStarted { key, .. }
            | Work::ReportComplete { key, .. } => key,
        }
    }
}

/// The span every task of attempt `key` runs in: `attempt{batch_id,
/// job_id, attempt_id}`, so that each log line of the attempt's life
/// carries them.
pub fn attempt_span(key: &JobKey) -> tracing::Span {
    tracing::info_span!(
        "attempt",
        batch_id = key.batch_id,
        job_id = key.job_id,
        attempt_id = %key.attempt_id
    )
}

impl Worker {
    /// Starts a task for each piece of work, in order.
    pub(super) fn perform(&self, work: Vec<Work>) {
        for item in work {
            let span = attempt_span(item.key());
            match item {
                Work::LoadSpec {
                    key,
                    request,
                    cancel,
                } => {
                    tokio::spawn(
                        self.clone()
                            .load_spec(key, request, cancel)
                            .instrument(span),
                    );
                }
                Work::Admit {
                    key,
                    request,
                    cancel,
                } => {
                    tokio::spawn(self.clone().admit(key, request, cancel).instrument(span));
                }
                Work::Transfer {
                    key,
                    direction,
                    spec,
                    work_dir,
                    cancel,
                } => {
                    tokio::spawn(
                        self.clone()
                            .transfer(key, direction, spec, work_dir, cancel)
                            .instrument(span),
                    );
                }
                Work::PullImage { key, image, cancel } => {
                    tokio::spawn(self.clone().pull_image(key, image, cancel).instrument(span));
                }
                Work::Spawn {
                    key,
                    spec,
                    kill,
                    grant,
                    image,
                } => {
                    tokio::spawn(
                        self.clone()
                            .run_process(key, spec, kill, grant, image)
                            .instrument(span),
                    );
                }
                Work::Reattached {
                    key,
                    process,
                    timeout,
                    kill,
                    grant,
                } => {
                    tokio::spawn(
                        self.clone()
                            .wait_reattached(key, process, timeout, kill, grant)
                            .instrument(span),
                    );
                }
                Work::UploadLogs {
                    key,
                    format_version,
                    status,
                } => self.upload_logs(key, format_version, status, span),
                Work::ReportStarted { key, body } => self.report_started(key, body, span),
                Work::ReportComplete {
                    key,
                    status,
                    started,
                } => self.report_complete(key, status, started, span),
            }
        }
    }
}

/// Which of the job-files pools an operation takes a permit from.
#[derive(Debug, Clone, Copy)]
pub(super) enum JobFiles {
    /// Making an attempt's directory and log.
    Make = 0,
    /// Removing an attempt's working directory.
    Remove = 1,
}

/// Permits for making attempt directories and for removing them (two
/// pools, so that removing a large directory never delays a job's start);
/// see [`Worker::job_files`].
pub(super) struct JobFilePools([Semaphore; 2]);

impl JobFilePools {
    /// Two pools of [`job_file_permits`] each.
    pub(super) fn new() -> JobFilePools {
        JobFilePools([
            Semaphore::new(job_file_permits()),
            Semaphore::new(job_file_permits()),
        ])
    }
}

/// How many blocking filesystem operations of job lives may run at once,
/// per kind ([`JobFiles`]): one per two cores, at least one.
///
/// Making and removing attempt directories is mostly CPU in the kernel
/// (ext4 inode allocation scans bitmaps for inodes not recently deleted),
/// and tokio's blocking pool would run hundreds at once: a burst of job
/// starts and ends then takes every core from the threads that answer
/// create calls. Measured with `cargo bench --bench create -- latency` at
/// 1,000 creates/s of instant jobs on 2 cores: p99 4.6–45 ms unbounded,
/// 0.8–6 ms with one permit (BENCHMARKS.md).
fn job_file_permits() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

impl Worker {
    /// Runs `op`, blocking filesystem work of a job's life, on tokio's
    /// blocking pool, at most [`job_file_permits`] of its `kind` at once.
    /// A panic in `op` is an I/O error.
    pub(super) async fn job_files<T: Send + 'static>(
        &self,
        kind: JobFiles,
        op: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let _permit = self.inner.job_files.0[kind as usize].acquire().await;
        tokio::task::spawn_blocking(op)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
    }
}

/// The message of a caught panic.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}
