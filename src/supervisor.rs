//! The supervisor: the worker's table of job attempts, and the shell that
//! performs the effects the `model` machine asks for.
//!
//! Every change to an attempt goes through [`Worker::record`]: the event is
//! applied to the attempt's [`JobAttempt`] under the table lock, appended to
//! the attempt's history, and only then are its effects performed (spawning
//! the spec-load task, the process task, report tasks; cancelling tokens).
//! The state of every attempt is therefore the fold of its recorded events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use batch_worker_model::{
    Effect, ErrorKind, Event, ExitStatus, JobAttempt, JobKey, JobState, Outcome, RunPhase,
    WireState, EVENT_VERSION,
};
use futures::FutureExt;
use serde::Serialize;
use serde_json::{json, Value};
use std::panic::AssertUnwindSafe;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::admission::{Admission, Capacity, Grant, Request};
use crate::driver_client::{DriverClient, ReportError};
use crate::image::{ImageStore, PulledImage};
use crate::job_spec::JobSpec;
use crate::journal::{encode_record, AttemptInfo, JournalRecord, JournalWriter};
use crate::logs_store::LogsStore;
use crate::metrics::Metrics;
use crate::runner::{AttemptDir, LaunchError, ProcessRequest, Runner, SPAWN_TIMEOUT};
use crate::spec_store::{SpecLoadError, SpecStore};
use crate::store::StoreOptions;
use crate::transfer;
use crate::wire::{
    CreateJob, JobCompleteBody, JobCompleteStatus, JobStartedBody, JobStartedStatus, STATUS_VERSION,
};

/// Settings of one worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The worker's name: `/healthcheck`, status JSON, `X-Hail-Instance-Name`.
    pub name: String,
    /// Where attempts' working directories and logs go.
    pub data_dir: PathBuf,
    /// How processes are run and ended: [`crate::runner::HostRunner`], or
    /// a simulated runner in tests.
    pub runner: Arc<dyn Runner>,
    /// Bytes appended to the journal after which it is compacted into a
    /// snapshot of the attempts still kept (default 64 MiB).
    pub journal_segment_bytes: u64,
    /// How long a finished, reported attempt is remembered (a create for it
    /// gets 403, across restarts) before compaction may forget it
    /// (default 24 h).
    pub retention: std::time::Duration,
    /// The cores and memory jobs may reserve in all.
    pub capacity: Capacity,
    /// Where finished attempts' `status.json` and main log are written.
    pub logs: LogsStore,
    /// At shutdown, the longest wait for reports still being delivered
    /// (default 30 s).
    pub report_drain: std::time::Duration,
    /// Options for the stores of jobs' input and output files.
    pub store_options: StoreOptions,
    /// The image cache, when jobs run in containers (`--executor runc`):
    /// then a spec's `process.image` is pulled (the `initializing` phase)
    /// before the spawn. `None`: host processes, images ignored.
    pub images: Option<Arc<ImageStore>>,
}

/// Default of [`WorkerConfig::report_drain`], in ms.
pub const DEFAULT_REPORT_DRAIN_MS: u64 = 30_000;

/// Default of [`WorkerConfig::journal_segment_bytes`].
pub const DEFAULT_JOURNAL_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Default of [`WorkerConfig::retention`], in hours.
pub const DEFAULT_RETENTION_HOURS: u64 = 24;

/// Why a create call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    /// An attempt of this `(batch_id, job_id)` is already on the worker.
    #[error("job {batch_id}:{job_id} is already present on this worker (attempt {attempt_id})")]
    Duplicate {
        /// The batch.
        batch_id: i64,
        /// The job.
        job_id: i64,
        /// The attempt already present.
        attempt_id: String,
    },
    /// The worker is shutting down and takes no new jobs.
    #[error("the worker is shutting down")]
    ShuttingDown,
    /// The worker has not activated with its driver yet.
    #[error("the worker has not activated with its driver yet")]
    NotActivated,
    /// The `created` record could not be written to the journal.
    #[error("the worker's journal cannot be written; the job was not accepted")]
    JournalUnavailable,
}

/// No attempt of this `(batch_id, job_id)` is on the worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {batch_id}:{job_id} is not on this worker")]
pub struct UnknownJob {
    /// The batch.
    pub batch_id: i64,
    /// The job.
    pub job_id: i64,
}

/// One recorded event of an attempt, as `GET .../events` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    /// The record's sequence number in the worker's journal (counted even
    /// without a journal): increasing over all attempts.
    pub seq: u64,
    /// When it was recorded, ms since the Unix epoch.
    pub time_ms: i64,
    /// The event.
    pub event: Event,
    /// The state after applying it (see [`JobState::name`]).
    pub state_after: &'static str,
}

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
    /// The error message, when `state` is `error`.
    pub error: Option<String>,
    /// The error kind (`spec_missing`, ...), when `state` is `error`.
    pub error_kind: Option<ErrorKind>,
    /// When the process started (else when the attempt was accepted), ms
    /// since the Unix epoch.
    pub start_time: i64,
    /// When the attempt ended, ms since the Unix epoch.
    pub end_time: Option<i64>,
    /// The spec's `resources`, once loaded.
    pub resources: Value,
    /// `{"main": {...}}` once a process was started, else `{}`.
    pub container_statuses: Value,
    /// The exact state-machine state.
    pub worker_state: JobState,
    /// The names (never values) of the secrets the attempt carries.
    pub secrets: Vec<String>,
}

/// Events a recovered attempt's history has room for at first: those of a
/// job that loaded its spec, ran, and was reported.
const RECOVERED_HISTORY: usize = 9;

/// One attempt in the table.
struct JobEntry {
    key: JobKey,
    attempt: JobAttempt,
    /// The create request, until the spec-load task takes it: the entry
    /// keeps only the small [`AttemptSummary`], so that a format-1 spec (up
    /// to the body limit) is not held for the life of the table.
    request: Option<Arc<CreateJob>>,
    summary: AttemptSummary,
    spec: Option<Arc<JobSpec>>,
    /// The spec's `resources`, kept after the spec is dropped.
    resources: Value,
    history: Vec<EventRecord>,
    accepted_at_ms: i64,
    started_at_ms: Option<i64>,
    ended_at_ms: Option<i64>,
    exit_duration_ms: Option<u64>,
    /// How the process ended (also when the attempt then errored, e.g.
    /// its outputs failed).
    exit: Option<ExitStatus>,
    spec_load: CancellationToken,
    kill: CancellationToken,
    started_report: Option<JoinHandle<()>>,
    /// The reserved cores and memory, from `ResourcesGranted` until the
    /// process task takes them (and frees them when it ends).
    grant: Option<Grant>,
    /// The pulled image, from `ImagePulled` until the process task takes it.
    image: Option<Arc<PulledImage>>,
}

impl JobEntry {
    /// A fresh entry for an attempt just created at `now` (ms).
    fn new(
        key: JobKey,
        attempt: JobAttempt,
        summary: AttemptSummary,
        now: i64,
        seq: u64,
    ) -> JobEntry {
        JobEntry {
            history: vec![EventRecord {
                seq,
                time_ms: now,
                event: Event::Created {
                    format_version: summary.format_version,
                },
                state_after: attempt.state().name(),
            }],
            key,
            attempt,
            summary,
            request: None,
            spec: None,
            resources: Value::Null,
            accepted_at_ms: now,
            started_at_ms: None,
            ended_at_ms: None,
            exit_duration_ms: None,
            exit: None,
            spec_load: CancellationToken::new(),
            kill: CancellationToken::new(),
            started_report: None,
            grant: None,
            image: None,
        }
    }

    /// Whether the history holds `event` (a delivery record).
    fn has(&self, event: &Event) -> bool {
        self.history.iter().any(|r| r.event == *event)
    }

    /// Whether the history holds a logs upload result.
    fn logs_done(&self) -> bool {
        self.history.iter().any(|r| {
            matches!(
                r.event,
                Event::LogsUploaded | Event::LogsUploadFailed { .. }
            )
        })
    }
}

/// What the status and reports need of the create request.
struct AttemptSummary {
    user: String,
    format_version: u32,
    job_group_id: i64,
    secret_names: Vec<String>,
}

/// An effect with the data needed to perform it, taken under the lock.
enum Work {
    LoadSpec(JobKey, Arc<CreateJob>, CancellationToken),
    Admit(JobKey, Request, CancellationToken),
    Transfer(JobKey, Direction, Arc<JobSpec>, PathBuf, CancellationToken),
    PullImage(JobKey, String, CancellationToken),
    Spawn(
        JobKey,
        Arc<JobSpec>,
        CancellationToken,
        Option<Grant>,
        Option<Arc<PulledImage>>,
    ),
    UploadLogs(JobKey, Vec<u8>, PathBuf),
    ReportStarted(JobKey, JobStartedBody),
    ReportComplete(JobKey, JobCompleteStatus, Option<JoinHandle<()>>),
}

impl Work {
    /// The attempt the work is for.
    fn key(&self) -> &JobKey {
        match self {
            Work::LoadSpec(key, ..)
            | Work::Admit(key, ..)
            | Work::Transfer(key, ..)
            | Work::PullImage(key, ..)
            | Work::Spawn(key, ..)
            | Work::UploadLogs(key, ..)
            | Work::ReportStarted(key, ..)
            | Work::ReportComplete(key, ..) => key,
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

/// Which files a transfer task moves.
#[derive(Debug, Clone, Copy)]
enum Direction {
    /// `input_files`, before the spawn.
    Inputs,
    /// `output_files`, after an exit 0.
    Outputs,
}

/// Counts one report task in [`Inner::reports_pending`] while alive (also
/// when the task is aborted).
struct PendingReport(watch::Sender<usize>);

impl PendingReport {
    fn new(counter: &watch::Sender<usize>) -> PendingReport {
        counter.send_modify(|n| *n += 1);
        PendingReport(counter.clone())
    }
}

impl Drop for PendingReport {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// The job table and the journal's next sequence number, under one lock so
/// that records reach the journal in the order events were applied.
#[derive(Default)]
struct Table {
    entries: HashMap<(i64, i64), JobEntry>,
    next_seq: u64,
    /// Bytes appended to the journal since the last compaction.
    journal_bytes: u64,
}

impl std::ops::Deref for Table {
    type Target = HashMap<(i64, i64), JobEntry>;
    fn deref(&self) -> &Self::Target {
        &self.entries
    }
}

impl std::ops::DerefMut for Table {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.entries
    }
}

struct Inner {
    config: WorkerConfig,
    specs: SpecStore,
    driver: Option<DriverClient>,
    journal: Option<JournalWriter>,
    jobs: Mutex<Table>,
    shutting_down: AtomicBool,
    shutdown_requested: CancellationToken,
    changes: watch::Sender<u64>,
    /// Set by [`Worker::end_processes`]: events are no longer recorded.
    stopping: AtomicBool,
    /// Job processes spawning or running.
    live_processes: watch::Sender<usize>,
    admission: Admission,
    /// False until the driver activated the worker (true without a driver).
    /// Reports wait for it: before activation the worker has no instance
    /// token to send.
    activated: watch::Sender<bool>,
    /// Report tasks (job_started, job_complete) and the logs uploads that
    /// precede job_complete, not finished.
    reports_pending: watch::Sender<usize>,
    /// Permits for making attempt directories and for removing them (two
    /// pools, so that removing a large directory never delays a job's
    /// start); see [`Worker::job_files`].
    job_files: [Semaphore; 2],
    /// The worker's Prometheus metrics (`GET /metrics`).
    metrics: Metrics,
}

/// The worker: cheap to clone, shared by the HTTP handlers and job tasks.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.inner.config.name)
            .finish()
    }
}

/// Which of the job-files pools an operation takes a permit from.
#[derive(Debug, Clone, Copy)]
enum JobFiles {
    /// Making an attempt's directory and log.
    Make = 0,
    /// Removing an attempt's working directory.
    Remove = 1,
}

/// How many blocking filesystem operations of job lives may run at once,
/// per kind ([`JobFiles`]):
/// one per two cores, at least one.
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

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Worker {
    /// A worker reading specs from `specs`, reporting to `driver` (none:
    /// reports are skipped) and recording every event in `journal` before
    /// acting on it (none: events are kept in memory only). With a driver,
    /// creates get [`CreateError::NotActivated`] until
    /// [`Worker::activate`] succeeds.
    pub fn new(
        config: WorkerConfig,
        specs: SpecStore,
        driver: Option<DriverClient>,
        journal: Option<JournalWriter>,
    ) -> Worker {
        let metrics = Metrics::new(
            driver
                .as_ref()
                .map(DriverClient::retried_reports)
                .unwrap_or_default(),
        );
        if let Some(journal) = &journal {
            journal.observe_batches(metrics.journal_sync_observer());
        }
        Worker {
            inner: Arc::new(Inner {
                metrics,
                admission: Admission::new(config.capacity),
                activated: watch::channel(driver.is_none()).0,
                reports_pending: watch::channel(0).0,
                config,
                specs,
                driver,
                journal,
                jobs: Mutex::new(Table {
                    entries: HashMap::new(),
                    next_seq: 1,
                    journal_bytes: 0,
                }),
                shutting_down: AtomicBool::new(false),
                shutdown_requested: CancellationToken::new(),
                changes: watch::channel(0).0,
                stopping: AtomicBool::new(false),
                live_processes: watch::channel(0).0,
                job_files: [
                    Semaphore::new(job_file_permits()),
                    Semaphore::new(job_file_permits()),
                ],
            }),
        }
    }

    /// Runs `op`, blocking filesystem work of a job's life, on tokio's
    /// blocking pool, at most [`job_file_permits`] of its `kind` at once.
    /// A panic in `op` is an I/O error.
    async fn job_files<T: Send + 'static>(
        &self,
        kind: JobFiles,
        op: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let _permit = self.inner.job_files[kind as usize].acquire().await;
        tokio::task::spawn_blocking(op)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The worker's metrics (the create handler observes its time there).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// `GET /metrics`: the Prometheus text, with the attempts by state and
    /// the reports pending counted now.
    pub fn metrics_text(&self) -> String {
        let mut by_state: HashMap<&'static str, i64> = HashMap::new();
        for entry in self.jobs().values() {
            *by_state.entry(entry.attempt.state().name()).or_default() += 1;
        }
        self.inner.metrics.render(by_state, self.reports_pending())
    }

    fn jobs(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave an entry half-updated
        // (updates are single assignments after the pure apply), so a
        // poisoned lock is still consistent.
        self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accepts a validated create request: records `Created` and starts the
    /// attempt's own life. Does no blob-store IO and never waits on a job.
    ///
    /// # Errors
    /// [`CreateError::Duplicate`] if the `(batch_id, job_id)` is present,
    /// [`CreateError::ShuttingDown`] during shutdown,
    /// [`CreateError::NotActivated`] before activation,
    /// [`CreateError::JournalUnavailable`] when `Created` cannot be written.
    pub async fn create(&self, job: CreateJob) -> Result<JobKey, CreateError> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(CreateError::ShuttingDown);
        }
        if !*self.inner.activated.borrow() {
            return Err(CreateError::NotActivated);
        }
        let key = JobKey {
            batch_id: job.batch_id,
            job_id: job.job_id,
            attempt_id: job.attempt.attempt_id.clone(),
        };
        let format_version = job.format_version;
        let (work, durable) = {
            let mut jobs = self.jobs();
            if let Some(existing) = jobs.get(&(key.batch_id, key.job_id)) {
                return Err(CreateError::Duplicate {
                    batch_id: key.batch_id,
                    job_id: key.job_id,
                    attempt_id: existing.key.attempt_id.clone(),
                });
            }
            let (attempt, applied) = JobAttempt::accept();
            let now = now_ms();
            let summary = AttemptSummary {
                user: job.user.clone(),
                format_version,
                job_group_id: job.attempt.job_group_id,
                secret_names: job.redacted_secrets(),
            };
            let info = AttemptInfo {
                user: summary.user.clone(),
                job_group_id: summary.job_group_id,
                secret_names: summary.secret_names.clone(),
            };
            let seq = jobs.next_seq;
            let mut entry = JobEntry::new(key.clone(), attempt, summary, now, seq);
            entry.request = Some(Arc::new(job));
            let work = self.plan(&mut entry, &applied.effects);
            jobs.insert((key.batch_id, key.job_id), entry);
            let event = Event::Created { format_version };
            self.commit(&mut jobs, seq, &key, now, event, Some(info), work, false)
        };
        self.inner.changes.send_modify(|n| *n += 1);
        match durable {
            // No journal: act now.
            None => self.perform(work),
            Some(durable) => {
                if !durable.await.unwrap_or(false) {
                    // Not recorded: forget the attempt, so that the driver's
                    // retry (here or elsewhere) is not refused.
                    self.jobs().remove(&(key.batch_id, key.job_id));
                    return Err(CreateError::JournalUnavailable);
                }
            }
        }
        self.inner.metrics.job_created();
        tracing::info!(batch_id = key.batch_id, job_id = key.job_id, attempt_id = %key.attempt_id, format_version, "job accepted");
        Ok(key)
    }

    /// Gives one event's record to the journal, under the table lock (so
    /// records keep the order events were applied in). With a journal, the
    /// work runs on the writer thread once the record is written, and the
    /// returned receiver says whether it is durable; without one, the work
    /// is handed back to run now. When `act_if_lost` is false, work whose
    /// record could not be written is dropped.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        table: &mut Table,
        seq: u64,
        key: &JobKey,
        time_ms: i64,
        event: Event,
        attempt: Option<AttemptInfo>,
        work: Vec<Work>,
        act_if_lost: bool,
    ) -> (Vec<Work>, Option<oneshot::Receiver<bool>>) {
        table.next_seq = seq + 1;
        let Some(journal) = &self.inner.journal else {
            return (work, None);
        };
        let record = JournalRecord {
            seq,
            time_ms,
            event_version: EVENT_VERSION,
            key: key.clone(),
            event,
            attempt: attempt.map(Box::new),
        };
        let mut bytes = Vec::new();
        if let Err(e) = encode_record(&record, &mut bytes) {
            tracing::error!(%key, error = %e, "event not journaled");
            return (work, None);
        }
        table.journal_bytes += bytes.len() as u64;
        let (done, durable) = oneshot::channel();
        let worker = self.clone();
        journal.append(
            bytes,
            Box::new(move |ok| {
                if ok || act_if_lost {
                    worker.perform(work);
                }
                let _ = done.send(ok);
            }),
        );
        if table.journal_bytes >= self.inner.config.journal_segment_bytes {
            self.compact(table, journal);
        }
        (Vec::new(), Some(durable))
    }

    /// Compaction, under the table lock: forgets attempts finished,
    /// reported and older than the retention window, and hands the journal
    /// a snapshot of every attempt still kept (their whole histories, with
    /// their sequence numbers), which replaces the segments before it.
    fn compact(&self, table: &mut Table, journal: &JournalWriter) {
        let now = now_ms();
        let retention_ms = self.inner.config.retention.as_millis() as i64;
        let reports = self.inner.driver.is_some();
        let before = table.entries.len();
        table.entries.retain(|_, entry| {
            let state = entry.attempt.state();
            let reported = !reports
                || state.wire_state() == WireState::Cancelled
                || entry
                    .history
                    .iter()
                    .any(|r| r.event == Event::CompleteDelivered);
            let expired = entry.ended_at_ms.is_some_and(|t| t <= now - retention_ms);
            !(state.is_terminal() && reported && expired)
        });
        let mut records: Vec<JournalRecord> = Vec::new();
        for entry in table.entries.values() {
            for (i, step) in entry.history.iter().enumerate() {
                records.push(JournalRecord {
                    seq: step.seq,
                    time_ms: step.time_ms,
                    event_version: EVENT_VERSION,
                    key: entry.key.clone(),
                    event: step.event.clone(),
                    attempt: (i == 0).then(|| {
                        Box::new(AttemptInfo {
                            user: entry.summary.user.clone(),
                            job_group_id: entry.summary.job_group_id,
                            secret_names: entry.summary.secret_names.clone(),
                        })
                    }),
                });
            }
        }
        records.sort_by_key(|r| r.seq);
        let mut bytes = Vec::new();
        for record in &records {
            if let Err(e) = encode_record(record, &mut bytes) {
                tracing::error!(error = %e, "journal compaction skipped");
                return;
            }
        }
        table.journal_bytes = 0;
        let (kept, forgotten, size_bytes) = (
            table.entries.len(),
            before - table.entries.len(),
            bytes.len(),
        );
        journal.snapshot(
            bytes,
            Box::new(move |ok| {
                if ok {
                    tracing::info!(kept, forgotten, size_bytes, "journal compacted");
                }
            }),
        );
    }

    /// Rebuilds the job table from journal records (as read at start), each
    /// attempt through the same state machine, then records
    /// `WorkerRestarted` for every attempt that was not terminal: it ends
    /// `Errored{worker_restarted}` and is reported to the driver. Returns
    /// (attempts restored, attempts errored by the restart).
    ///
    /// Terminal attempts whose `job_complete` was not acknowledged
    /// (`CompleteDelivered` is journaled on acknowledgement) are reported
    /// again: at least once on the wire, per attempt.
    pub fn recover(&self, records: &[JournalRecord]) -> (usize, usize) {
        let mut restarted = Vec::new();
        let mut unreported = Vec::new();
        let restored = {
            let mut jobs = self.jobs();
            // One entry per `created`: made room for at once, not by
            // growing (and moving every entry) again and again.
            jobs.reserve(records.iter().filter(|r| r.event.is_created()).count());
            for record in records {
                let events = record.events();
                for event in events.iter() {
                    let key = &record.key;
                    let slot = (key.batch_id, key.job_id);
                    if let Event::Created { format_version } = *event {
                        let info = record.attempt.as_deref().cloned().unwrap_or(AttemptInfo {
                            user: String::new(),
                            job_group_id: 0,
                            secret_names: Vec::new(),
                        });
                        let summary = AttemptSummary {
                            user: info.user,
                            format_version,
                            job_group_id: info.job_group_id,
                            secret_names: info.secret_names,
                        };
                        let (attempt, _) = JobAttempt::accept();
                        let mut entry = JobEntry::new(
                            key.clone(),
                            attempt,
                            summary,
                            record.time_ms,
                            record.seq,
                        );
                        // Room for the rest of a job that ran (nine events
                        // in all), rather than growing four times to 16.
                        entry.history.reserve_exact(RECOVERED_HISTORY - 1);
                        jobs.insert(slot, entry);
                    } else if let Some(entry) = jobs.get_mut(&slot).filter(|e| e.key == *key) {
                        match entry.attempt.apply(event) {
                            Ok(applied) if !applied.absorbed => {
                                let state = entry.attempt.state();
                                match event {
                                    Event::SpecLoaded {
                                        cores_mcpu,
                                        memory_bytes,
                                        ..
                                    } => {
                                        entry.resources = json!({
                                            "cores_mcpu": cores_mcpu,
                                            "memory_bytes": memory_bytes,
                                        })
                                    }
                                    Event::ProcessStarted { .. } => {
                                        entry.started_at_ms = Some(record.time_ms)
                                    }
                                    Event::ProcessExited { duration_ms, exit } => {
                                        entry.exit_duration_ms = Some(*duration_ms);
                                        entry.exit = Some(*exit);
                                    }
                                    _ => {}
                                }
                                if state.is_terminal() && entry.ended_at_ms.is_none() {
                                    entry.ended_at_ms = Some(record.time_ms);
                                }
                                entry.history.push(EventRecord {
                                    seq: record.seq,
                                    time_ms: record.time_ms,
                                    event: event.clone(),
                                    state_after: state.name(),
                                });
                            }
                            Ok(_) => {}
                            Err(illegal) => {
                                tracing::warn!(%key, seq = record.seq, error = %illegal, "journal record skipped at recovery")
                            }
                        }
                    } else {
                        tracing::warn!(%key, seq = record.seq, "journal record for an unknown attempt skipped at recovery");
                    }
                }
                jobs.next_seq = jobs.next_seq.max(record.seq + 1);
            }
            // In key order, so that the work recovery starts is started in
            // the same order on every run (a simulation repeats exactly).
            let mut entries: Vec<&JobEntry> = jobs.values().collect();
            entries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
            for entry in entries {
                let state = entry.attempt.state();
                if !state.is_terminal() {
                    // A container (mounts, bundle, secret files) the crash
                    // left behind goes before anything else runs.
                    let dir = AttemptDir::new(&self.inner.config.data_dir, &entry.key);
                    let removed = self.inner.config.runner.clean_up(&entry.key, &dir);
                    if let (
                        false,
                        JobState::Running {
                            phase: RunPhase::Executing { pid },
                        },
                    ) = (removed, &state)
                    {
                        // Not killed: after a reboot the pid may be another
                        // process's.
                        tracing::warn!(key = %entry.key, pid, "the attempt's process may still run from before the restart; not killed");
                    }
                    restarted.push(entry.key.clone());
                    continue;
                }
                if !entry.logs_done() {
                    unreported.push(self.upload_work(entry));
                } else if state.wire_state() != WireState::Cancelled
                    && !entry.has(&Event::CompleteDelivered)
                {
                    unreported.push(Work::ReportComplete(
                        entry.key.clone(),
                        complete_status(entry),
                        None,
                    ));
                }
            }
            jobs.len()
        };
        if !unreported.is_empty() {
            tracing::info!(
                reports = unreported.len(),
                "finished attempts whose logs upload or job_complete was not done before the restart: doing it again"
            );
        }
        self.perform(unreported);
        for key in &restarted {
            self.record(key, Event::WorkerRestarted);
        }
        self.inner.changes.send_modify(|n| *n += 1);
        (restored, restarted.len())
    }

    /// Records one event for attempt `key` and performs its effects.
    /// Events for an attempt that is no longer in the table, or illegal in
    /// its state, are logged and dropped; events after a terminal state are
    /// absorbed; none of them panics.
    pub fn record(&self, key: &JobKey, event: Event) {
        self.record_with(key, event, |_| {});
    }

    /// [`Worker::record`], with `update` applied to the entry when the
    /// event is taken (not when it is dropped or absorbed), before effects
    /// are planned.
    fn record_with(&self, key: &JobKey, event: Event, update: impl FnOnce(&mut JobEntry)) {
        // While stopping, the processes the worker itself ends must not
        // turn into outcomes; deliveries still count (reports drain).
        if self.inner.stopping.load(Ordering::SeqCst) && !event.is_delivery() {
            tracing::debug!(%key, event = event.name(), "worker stopping; event not recorded");
            return;
        }
        let work = {
            let mut jobs = self.jobs();
            let seq = jobs.next_seq;
            let Some(entry) = jobs
                .get_mut(&(key.batch_id, key.job_id))
                .filter(|e| e.key.attempt_id == key.attempt_id)
            else {
                tracing::warn!(%key, event = event.name(), "event for an attempt not on this worker; dropped");
                return;
            };
            let applied = match entry.attempt.apply(&event) {
                Ok(applied) => applied,
                Err(illegal) => {
                    tracing::error!(%key, error = %illegal, "illegal transition; event dropped");
                    return;
                }
            };
            if applied.absorbed {
                tracing::debug!(%key, event = event.name(), "event after a terminal state; absorbed");
                return;
            }
            update(entry);
            let now = now_ms();
            let state = entry.attempt.state();
            match &event {
                Event::ProcessStarted { .. } => entry.started_at_ms = Some(now),
                Event::ProcessExited { duration_ms, exit } => {
                    entry.exit_duration_ms = Some(*duration_ms);
                    entry.exit = Some(*exit);
                }
                _ => {}
            }
            // When it became terminal; deliveries come later.
            let ended = state.is_terminal() && entry.ended_at_ms.is_none();
            if ended {
                entry.ended_at_ms = Some(now);
            }
            entry.history.push(EventRecord {
                seq,
                time_ms: now,
                event: event.clone(),
                state_after: state.name(),
            });
            log_transition(key, &event, &state);
            self.inner.metrics.event_recorded(&event, &state, ended);
            let work = self.plan(entry, &applied.effects);
            if state.is_terminal() {
                // The spec is no longer needed; keep the table small. A
                // grant not yet taken by a process (inputs failed, cancel
                // while initializing) is freed.
                entry.spec = None;
                entry.grant = None;
            }
            // Effects run once the event is in the journal; if it cannot be
            // written the worker still acts (the write failure is logged and
            // creates are refused), rather than strand the attempt.
            self.commit(&mut jobs, seq, key, now, event, None, work, true)
                .0
        };
        self.inner.changes.send_modify(|n| *n += 1);
        self.perform(work);
    }

    /// Turns effects into work, cancelling tokens right away (no IO).
    fn plan(&self, entry: &mut JobEntry, effects: &[Effect]) -> Vec<Work> {
        let mut work = Vec::new();
        for effect in effects {
            match effect {
                Effect::StartSpecLoad => match entry.request.take() {
                    Some(request) => work.push(Work::LoadSpec(
                        entry.key.clone(),
                        request,
                        entry.spec_load.clone(),
                    )),
                    None => tracing::error!(key = %entry.key, "spec load asked for twice"),
                },
                Effect::AbortSpecLoad => entry.spec_load.cancel(),
                Effect::RequestResources => match &entry.spec {
                    Some(spec) => work.push(Work::Admit(
                        entry.key.clone(),
                        Request {
                            cores_mcpu: spec.cores_mcpu,
                            memory_bytes: spec.memory_bytes,
                        },
                        entry.kill.clone(),
                    )),
                    None => tracing::error!(key = %entry.key, "resources asked for without a spec"),
                },
                Effect::CancelResourceRequest | Effect::KillProcess | Effect::AbortTransfers => {
                    entry.kill.cancel()
                }
                Effect::StageInputs | Effect::UploadOutputs => match &entry.spec {
                    Some(spec) => work.push(Work::Transfer(
                        entry.key.clone(),
                        if *effect == Effect::StageInputs {
                            Direction::Inputs
                        } else {
                            Direction::Outputs
                        },
                        spec.clone(),
                        AttemptDir::new(&self.inner.config.data_dir, &entry.key).work(),
                        entry.kill.clone(),
                    )),
                    None => {
                        tracing::error!(key = %entry.key, "file transfer asked for without a spec")
                    }
                },
                Effect::PullImage => match entry.spec.as_ref().and_then(|s| s.image.clone()) {
                    Some(image) => work.push(Work::PullImage(
                        entry.key.clone(),
                        image,
                        entry.kill.clone(),
                    )),
                    None => {
                        tracing::error!(key = %entry.key, "image pull asked for without an image")
                    }
                },
                Effect::SpawnProcess => match &entry.spec {
                    Some(spec) => work.push(Work::Spawn(
                        entry.key.clone(),
                        spec.clone(),
                        entry.kill.clone(),
                        entry.grant.take(),
                        entry.image.take(),
                    )),
                    None => tracing::error!(key = %entry.key, "spawn asked for without a spec"),
                },
                Effect::UploadLogs => work.push(self.upload_work(entry)),
                Effect::ReportStarted => work.push(Work::ReportStarted(
                    entry.key.clone(),
                    JobStartedBody {
                        status: JobStartedStatus {
                            version: STATUS_VERSION,
                            batch_id: entry.key.batch_id,
                            job_id: entry.key.job_id,
                            attempt_id: entry.key.attempt_id.clone(),
                            start_time: entry.started_at_ms.unwrap_or(entry.accepted_at_ms),
                            resources: Vec::new(),
                        },
                    },
                )),
                // Acknowledged already (a journal from before logs uploads
                // existed, uploaded again after a restart): not again.
                Effect::ReportComplete if entry.has(&Event::CompleteDelivered) => {}
                Effect::ReportComplete => work.push(Work::ReportComplete(
                    entry.key.clone(),
                    complete_status(entry),
                    entry.started_report.take(),
                )),
            }
        }
        work
    }

    /// The `UploadLogs` work of `entry`: its status JSON now, its log file.
    fn upload_work(&self, entry: &JobEntry) -> Work {
        let status = serde_json::to_vec(&self.status_of(entry)).unwrap_or_default();
        let log = AttemptDir::new(&self.inner.config.data_dir, &entry.key).main_log();
        Work::UploadLogs(entry.key.clone(), status, log)
    }

    fn perform(&self, work: Vec<Work>) {
        for item in work {
            let span = attempt_span(item.key());
            match item {
                Work::LoadSpec(key, request, cancel) => {
                    tokio::spawn(
                        self.clone()
                            .load_spec(key, request, cancel)
                            .instrument(span),
                    );
                }
                Work::Admit(key, request, cancel) => {
                    tokio::spawn(self.clone().admit(key, request, cancel).instrument(span));
                }
                Work::Transfer(key, direction, spec, work_dir, cancel) => {
                    tokio::spawn(
                        self.clone()
                            .transfer(key, direction, spec, work_dir, cancel)
                            .instrument(span),
                    );
                }
                Work::PullImage(key, image, cancel) => {
                    tokio::spawn(self.clone().pull_image(key, image, cancel).instrument(span));
                }
                Work::Spawn(key, spec, kill, grant, image) => {
                    tokio::spawn(
                        self.clone()
                            .run_process(key, spec, kill, grant, image)
                            .instrument(span),
                    );
                }
                Work::UploadLogs(key, status, log) => {
                    // Counted with the reports: the job_complete follows it.
                    let pending = PendingReport::new(&self.inner.reports_pending);
                    let worker = self.clone();
                    tokio::spawn(async move {
                        let _pending = pending;
                        let started = std::time::Instant::now();
                        let uploaded = worker.inner.config.logs.upload(&key, status, &log).await;
                        let duration_ms = started.elapsed().as_millis() as u64;
                        // The attempt is over: its scratch space (inputs,
                        // outputs, partial downloads) goes before the result
                        // is recorded; main.log stays for `GET .../log/main`
                        // while the attempt is kept.
                        let work = AttemptDir::new(&worker.inner.config.data_dir, &key).work();
                        match worker
                            .job_files(JobFiles::Remove, move || std::fs::remove_dir_all(work))
                            .await
                        {
                            Ok(()) => tracing::debug!(%key, "working directory removed"),
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => {
                                tracing::warn!(%key, error = %e, "working directory not removed")
                            }
                        }
                        match uploaded {
                            Ok(()) => {
                                tracing::debug!(%key, duration_ms, "status and log uploaded");
                                worker.record(&key, Event::LogsUploaded);
                            }
                            Err(e) => {
                                tracing::warn!(%key, duration_ms, error = %e, "status and log upload failed");
                                let message = e.to_string();
                                worker.record(&key, Event::LogsUploadFailed { message });
                            }
                        }
                    }.instrument(span));
                }
                Work::ReportStarted(key, body) => {
                    let Some(driver) = self.inner.driver.clone() else {
                        continue;
                    };
                    let slot = (key.batch_id, key.job_id);
                    let attempt_id = key.attempt_id.clone();
                    let pending = PendingReport::new(&self.inner.reports_pending);
                    let worker = self.clone();
                    let handle = tokio::spawn(
                        async move {
                            let _pending = pending;
                            worker.activated().await;
                            match driver.job_started(&body).await {
                                Ok(()) => worker.record(&key, Event::StartedDelivered),
                                Err(e) => {
                                    tracing::warn!(%key, error = %e, "job_started not delivered")
                                }
                            }
                        }
                        .instrument(span),
                    );
                    if let Some(entry) = self.jobs().get_mut(&slot) {
                        if entry.key.attempt_id == attempt_id {
                            entry.started_report = Some(handle);
                        }
                    }
                }
                Work::ReportComplete(key, status, started) => {
                    let Some(driver) = self.inner.driver.clone() else {
                        continue;
                    };
                    let pending = PendingReport::new(&self.inner.reports_pending);
                    let worker = self.clone();
                    tokio::spawn(async move {
                        let _pending = pending;
                        // Reports recovered at start wait for activation.
                        worker.activated().await;
                        // Never wait for job_started: if it is still being
                        // retried, drop it and say so in marked_job_started.
                        if let Some(started) = started {
                            if !started.is_finished() {
                                started.abort();
                            }
                        }
                        let marked_job_started = worker
                            .jobs()
                            .get(&(key.batch_id, key.job_id))
                            .is_some_and(|e| e.key == key && e.has(&Event::StartedDelivered));
                        let body = JobCompleteBody {
                            status,
                            marked_job_started,
                        };
                        match driver.job_complete(&body).await {
                            Ok(()) => {
                                tracing::info!(%key, state = %body.status.state, "job_complete delivered");
                                worker.record(&key, Event::CompleteDelivered);
                            }
                            Err(e @ ReportError::Gone { .. }) => {
                                tracing::warn!(%key, error = %e, "job_complete refused by the driver");
                                worker.record(&key, Event::CompleteDelivered);
                            }
                            Err(e) => {
                                tracing::warn!(%key, error = %e, "job_complete not delivered")
                            }
                        }
                    }.instrument(span));
                }
            }
        }
    }

    /// The transfer task: moves the job's input or output files, then
    /// records the result. A cancel abandons the transfer.
    async fn transfer(
        self,
        key: JobKey,
        direction: Direction,
        spec: Arc<JobSpec>,
        work_dir: PathBuf,
        cancel: CancellationToken,
    ) {
        let started = std::time::Instant::now();
        let options = &self.inner.config.store_options;
        let data_dir = &self.inner.config.data_dir;
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

    /// The image task: the job's image from the cache, or pulled now
    /// (another job's pull of the same image is waited for, not repeated);
    /// then `ImagePulled` (the image moves into the entry for the spawn)
    /// or `ImagePullFailed`. A cancel abandons the pull.
    async fn pull_image(self, key: JobKey, image: String, cancel: CancellationToken) {
        let Some(images) = self.inner.config.images.clone() else {
            let message = "this worker runs no containers (--executor host)".to_owned();
            self.record(&key, Event::ImagePullFailed { image, message });
            return;
        };
        let started = std::time::Instant::now();
        let pulled = AssertUnwindSafe(images.pull(&image)).catch_unwind();
        let pulled = tokio::select! {
            pulled = pulled => pulled,
            () = cancel.cancelled() => return,
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        match pulled {
            Ok(Ok((pulled_image, pulled))) => {
                tracing::info!(%key, image = %image, digest = %pulled_image.digest, pulled, duration_ms, "image ready");
                let event = Event::ImagePulled {
                    image,
                    digest: pulled_image.digest.clone(),
                    pulled,
                };
                self.record_with(&key, event, move |entry| entry.image = Some(pulled_image));
            }
            Ok(Err(e)) => {
                tracing::warn!(%key, image = %image, duration_ms, error = %e, "image pull failed");
                let message = e.to_string();
                self.record(&key, Event::ImagePullFailed { image, message });
            }
            Err(panic) => {
                let message = format!("the image pull failed unexpectedly: {}", panic_text(&panic));
                self.record(&key, Event::ImagePullFailed { image, message });
            }
        }
    }

    /// The admission task: waits for the job's cores and memory, then
    /// `ResourcesGranted` (holding them) or `ResourcesRefused`. A cancel
    /// leaves the queue.
    async fn admit(self, key: JobKey, request: Request, cancel: CancellationToken) {
        let admitted = tokio::select! {
            admitted = self.inner.admission.request(request) => admitted,
            () = cancel.cancelled() => return,
        };
        match admitted {
            Ok(grant) => {
                tracing::debug!(%key, cores_mcpu = request.cores_mcpu, memory_bytes = request.memory_bytes, "resources granted");
                // If the event is not taken (cancelled meanwhile), the
                // closure and the grant in it are dropped: freed.
                self.record_with(&key, Event::ResourcesGranted, move |entry| {
                    entry.grant = Some(grant)
                });
            }
            Err(refused) => {
                let message = refused.to_string();
                self.record(&key, Event::ResourcesRefused { message });
            }
        }
    }

    /// The spec-load task: `SpecLoadStarted`, then the result.
    async fn load_spec(self, key: JobKey, request: Arc<CreateJob>, cancel: CancellationToken) {
        self.record(&key, Event::SpecLoadStarted);
        let started = std::time::Instant::now();
        // A store that panics must not strand the job in LoadingSpec.
        let load = AssertUnwindSafe(self.inner.specs.load(&request)).catch_unwind();
        let result = tokio::select! {
            result = load => result.unwrap_or_else(|panic| Err(SpecLoadError {
                kind: ErrorKind::SpecUnavailable,
                message: format!("the spec store failed unexpectedly: {}", panic_text(&panic)),
            })),
            () = cancel.cancelled() => return,
        };
        self.inner.metrics.observe_spec_load(started.elapsed());
        let duration_ms = started.elapsed().as_millis() as u64;
        // A container host needs a usable image reference: a spec without
        // one is unusable here, found before any resources are held.
        let result = result.and_then(|spec| match (&self.inner.config.images, &spec.image) {
            (None, _) => Ok(spec),
            (Some(_), None) => Err(SpecLoadError {
                kind: ErrorKind::SpecCorrupt,
                message: "process.image: expected an image reference (this worker runs every job in its image, --executor runc), got none".into(),
            }),
            (Some(_), Some(image)) => match crate::image::check_reference(image) {
                Ok(()) => Ok(spec),
                Err(e) => Err(SpecLoadError {
                    kind: ErrorKind::SpecCorrupt,
                    message: format!(
                        "process.image: {:?} is not an image reference: {e}",
                        crate::wire::truncate(image, 200)
                    ),
                }),
            },
        });
        match result {
            Ok(spec) => {
                tracing::debug!(%key, duration_ms, size_bytes = spec.size_bytes, "spec loaded");
                let event = Event::SpecLoaded {
                    process: spec.process.clone(),
                    size_bytes: spec.size_bytes,
                    unsupported: spec.unsupported.clone(),
                    cores_mcpu: spec.cores_mcpu,
                    memory_bytes: spec.memory_bytes,
                    input_files: spec.input_files.len() as u32,
                    output_files: spec.output_files.len() as u32,
                    // Only a container host pulls images.
                    image: spec
                        .image
                        .clone()
                        .filter(|_| self.inner.config.images.is_some()),
                };
                let spec = Arc::new(spec);
                self.record_with(&key, event, move |entry| {
                    entry.resources = spec.resources.clone();
                    entry.spec = Some(spec);
                });
            }
            Err(e) => {
                tracing::debug!(%key, duration_ms, error = %e, "spec load failed");
                self.record(
                    &key,
                    Event::SpecLoadFailed {
                        kind: e.kind,
                        message: e.message,
                    },
                );
            }
        }
    }

    /// The process task: spawn, `ProcessStarted`, wait, `ProcessExited`.
    /// The process holds `grant` (the job's cores and memory) until it ends.
    async fn run_process(
        self,
        key: JobKey,
        spec: Arc<JobSpec>,
        kill: CancellationToken,
        grant: Option<Grant>,
        image: Option<Arc<PulledImage>>,
    ) {
        // Counted from before the spawn, so that shutdown also waits for a
        // process whose spawn is in flight.
        self.inner.live_processes.send_modify(|n| *n += 1);
        self.spawn_and_wait(&key, &spec, kill, image).await;
        drop(grant);
        self.inner.live_processes.send_modify(|n| *n -= 1);
    }

    async fn spawn_and_wait(
        &self,
        key: &JobKey,
        spec: &JobSpec,
        kill: CancellationToken,
        image: Option<Arc<PulledImage>>,
    ) {
        let key = key.clone();
        let request = ProcessRequest {
            key: key.clone(),
            argv: spec.command.clone(),
            env: spec.env.clone(),
            dir: AttemptDir::new(&self.inner.config.data_dir, &key),
            image,
            cores_mcpu: spec.cores_mcpu,
            // A job that reserves no memory is still limited: to what the
            // worker may give jobs in all.
            memory_bytes: match spec.memory_bytes {
                0 => self.inner.config.capacity.memory_bytes,
                reserved => reserved,
            },
            secrets: spec.secrets.clone(),
        };
        if kill.is_cancelled() {
            // Cancelled while the spec was being turned into a process.
            let message = "cancelled before the process started".to_owned();
            self.record(&key, Event::LaunchFailed { message });
            return;
        }
        let dir = request.dir.clone();
        if let Err(e) = self.job_files(JobFiles::Make, move || dir.create()).await {
            let message = format!("cannot create the attempt's directory: {e}");
            self.record(&key, Event::LaunchFailed { message });
            return;
        }
        // A spawn that hangs (a program on a dead network mount) or is
        // cancelled is abandoned: dropping it drops the child, if one ever
        // appears, which kills it (kill_on_drop).
        let spawned = tokio::select! {
            spawned = self.inner.config.runner.spawn(&request) => spawned,
            () = kill.cancelled() => Err(LaunchError("cancelled while the process was starting".into())),
            () = tokio::time::sleep(SPAWN_TIMEOUT) => Err(LaunchError(format!(
                "the process did not start within {} s", SPAWN_TIMEOUT.as_secs()
            ))),
        };
        match spawned {
            Err(e) => self.record(&key, Event::LaunchFailed { message: e.0 }),
            Ok(process) => {
                self.record(&key, Event::ProcessStarted { pid: process.pid() });
                let (exit, duration_ms) = process.wait(spec.timeout, kill).await;
                self.record(&key, Event::ProcessExited { exit, duration_ms });
            }
        }
    }

    /// Asks for attempt `(batch_id, job_id)` to be cancelled; returns the
    /// state after the request. Cancelling a terminal attempt changes nothing.
    ///
    /// # Errors
    /// [`UnknownJob`] when no attempt of that job is on the worker.
    pub fn cancel(&self, batch_id: i64, job_id: i64) -> Result<JobState, UnknownJob> {
        let key = self.key_of(batch_id, job_id)?;
        self.record(&key, Event::CancelRequested);
        self.state_of(batch_id, job_id)
    }

    fn key_of(&self, batch_id: i64, job_id: i64) -> Result<JobKey, UnknownJob> {
        self.jobs()
            .get(&(batch_id, job_id))
            .map(|e| e.key.clone())
            .ok_or(UnknownJob { batch_id, job_id })
    }

    /// The current state of attempt `(batch_id, job_id)`.
    ///
    /// # Errors
    /// [`UnknownJob`].
    pub fn state_of(&self, batch_id: i64, job_id: i64) -> Result<JobState, UnknownJob> {
        self.jobs()
            .get(&(batch_id, job_id))
            .map(|e| e.attempt.state())
            .ok_or(UnknownJob { batch_id, job_id })
    }

    /// The status JSON of attempt `(batch_id, job_id)`.
    ///
    /// # Errors
    /// [`UnknownJob`].
    pub fn status(&self, batch_id: i64, job_id: i64) -> Result<JobStatus, UnknownJob> {
        let jobs = self.jobs();
        let entry = jobs
            .get(&(batch_id, job_id))
            .ok_or(UnknownJob { batch_id, job_id })?;
        Ok(self.status_of(entry))
    }

    fn status_of(&self, entry: &JobEntry) -> JobStatus {
        let state = entry.attempt.state();
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
        let container_statuses = match entry.started_at_ms {
            None => json!({}),
            Some(started) => {
                let exit = entry.exit.and_then(|e| e.exit_code());
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
                    "end_time": entry.ended_at_ms,
                    "exit_code": exit,
                    "out_of_memory": matches!(entry.exit, Some(ExitStatus::OutOfMemory { .. })),
                    "duration_ms": entry.exit_duration_ms,
                }})
            }
        };
        JobStatus {
            version: STATUS_VERSION,
            worker: self.inner.config.name.clone(),
            batch_id: entry.key.batch_id,
            job_id: entry.key.job_id,
            attempt_id: entry.key.attempt_id.clone(),
            job_group_id: entry.summary.job_group_id,
            user: entry.summary.user.clone(),
            state: state.wire_state().as_str(),
            format_version: entry.summary.format_version,
            error,
            error_kind,
            start_time: entry.started_at_ms.unwrap_or(entry.accepted_at_ms),
            end_time: entry.ended_at_ms,
            resources: entry.resources.clone(),
            container_statuses,
            worker_state: state,
            secrets: entry.summary.secret_names.clone(),
        }
    }

    /// The recorded events of attempt `(batch_id, job_id)`, oldest first.
    ///
    /// # Errors
    /// [`UnknownJob`].
    pub fn events(&self, batch_id: i64, job_id: i64) -> Result<Vec<EventRecord>, UnknownJob> {
        self.jobs()
            .get(&(batch_id, job_id))
            .map(|e| e.history.clone())
            .ok_or(UnknownJob { batch_id, job_id })
    }

    /// The `main` log file of attempt `(batch_id, job_id)` (it may not
    /// exist yet).
    ///
    /// # Errors
    /// [`UnknownJob`].
    pub fn main_log(&self, batch_id: i64, job_id: i64) -> Result<PathBuf, UnknownJob> {
        let key = self.key_of(batch_id, job_id)?;
        Ok(AttemptDir::new(&self.inner.config.data_dir, &key).main_log())
    }

    /// States of every attempt on the worker, keyed by attempt.
    pub fn snapshot(&self) -> Vec<(JobKey, JobState)> {
        let mut all: Vec<_> = self
            .jobs()
            .values()
            .map(|e| (e.key.clone(), e.attempt.state()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Completes once every event recorded so far is in the journal (at
    /// once without a journal).
    pub async fn sync_journal(&self) {
        if let Some(journal) = &self.inner.journal {
            journal.barrier().await;
        }
    }

    /// A receiver that changes whenever any attempt records an event.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Waits until `done` holds for the worker (checked after every event).
    pub async fn wait_until(&self, mut done: impl FnMut(&Worker) -> bool) {
        let mut changes = self.changes();
        while !done(self) {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Activates the worker with its driver (see
    /// [`DriverClient::activate`]), sending `ip_address`; creates are taken
    /// from then on. Without a driver there is nothing to do.
    ///
    /// # Errors
    /// [`ReportError`] from the activation call: the worker stays
    /// unactivated and answers creates with 503.
    pub async fn activate(&self, ip_address: &str) -> Result<(), ReportError> {
        if let Some(driver) = &self.inner.driver {
            driver.activate(ip_address).await?;
            tracing::info!(driver = %driver.describe(), ip_address, "activated with the driver");
        }
        self.inner.activated.send_replace(true);
        Ok(())
    }

    /// Whether creates are taken (activated, or no driver).
    pub fn is_activated(&self) -> bool {
        *self.inner.activated.borrow()
    }

    /// Completes once the worker is activated.
    async fn activated(&self) {
        let _ = self.inner.activated.subscribe().wait_for(|a| *a).await;
    }

    /// Report tasks (`job_started`, `job_complete`) and logs uploads (each
    /// followed by a `job_complete`) not yet finished.
    pub fn reports_pending(&self) -> usize {
        *self.inner.reports_pending.borrow()
    }

    /// Free cores (mcpu) and memory (MiB) of the admission queue.
    pub fn resources_available(&self) -> (u64, u64) {
        self.inner.admission.available()
    }

    /// For exit: waits until no report task is left, or
    /// [`WorkerConfig::report_drain`] passed; returns how many are left.
    /// Logs uploads that finish meanwhile send their `job_complete` too.
    pub async fn drain_reports(&self) -> usize {
        let mut pending = self.inner.reports_pending.subscribe();
        let limit = self.inner.config.report_drain;
        let drained = tokio::time::timeout(limit, async {
            loop {
                let _ = pending.wait_for(|n| *n == 0).await;
                // A finished upload's `job_complete` starts once its record
                // is written: after the barrier, 0 means none is coming.
                self.sync_journal().await;
                if *pending.borrow() == 0 {
                    break;
                }
            }
        })
        .await
        .is_ok();
        let left = *pending.borrow();
        if !drained {
            tracing::warn!(
                reports = left,
                timeout_ms = limit.as_millis() as u64,
                "reports still undelivered at exit; they are sent again after a restart"
            );
        }
        left
    }

    /// Stops taking jobs (creates get [`CreateError::ShuttingDown`]) and
    /// wakes [`Worker::shutdown_requested`].
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.shutdown_requested.cancel();
    }

    /// Whether [`Worker::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Completes when shutdown was requested (e.g. by `POST /api/v1alpha/kill`).
    pub async fn shutdown_requested(&self) {
        self.inner.shutdown_requested.cancelled().await
    }

    /// For exit: stops recording events (but deliveries), aborts every spec
    /// load and admission wait, and ends
    /// every job's process group (SIGTERM, SIGKILL after the grace period),
    /// and waits until no job process is left (at most the grace period
    /// plus 2 s). The attempts stay as they were: no report is sent for
    /// work the worker itself abandons.
    pub async fn end_processes(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        for entry in self.jobs().values() {
            if !entry.attempt.is_terminal() {
                entry.spec_load.cancel();
                entry.kill.cancel();
            }
        }
        let limit = self.inner.config.runner.kill_grace() + std::time::Duration::from_secs(2);
        let mut live = self.inner.live_processes.subscribe();
        if tokio::time::timeout(limit, live.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!(
                processes = *live.borrow(),
                "job processes still running at exit"
            );
        }
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

fn complete_status(entry: &JobEntry) -> JobCompleteStatus {
    let state = entry.attempt.state();
    let exit_code = match &state {
        JobState::Done {
            outcome: Outcome::Succeeded,
        } => Some(0),
        JobState::Done {
            outcome: Outcome::Failed { exit },
        } => exit.exit_code(),
        _ => None,
    };
    let start = entry.started_at_ms.unwrap_or(entry.accepted_at_ms);
    let end = entry.ended_at_ms.unwrap_or_else(now_ms);
    JobCompleteStatus {
        version: STATUS_VERSION,
        batch_id: entry.key.batch_id,
        job_id: entry.key.job_id,
        attempt_id: entry.key.attempt_id.clone(),
        job_group_id: entry.summary.job_group_id,
        state: state.wire_state().as_str().to_owned(),
        start_time: start,
        end_time: end,
        resources: Vec::new(),
        status: (
            exit_code,
            Some(
                entry
                    .exit_duration_ms
                    .unwrap_or((end - start).max(0) as u64),
            ),
        ),
    }
}

fn log_transition(key: &JobKey, event: &Event, state: &JobState) {
    match state {
        JobState::Errored { kind, message } => tracing::info!(
            batch_id = key.batch_id, job_id = key.job_id, attempt_id = %key.attempt_id,
            event = event.name(), error_kind = %kind, error = %message, "job errored"
        ),
        JobState::Done { outcome } => tracing::info!(
            batch_id = key.batch_id, job_id = key.job_id, attempt_id = %key.attempt_id,
            event = event.name(), outcome = ?outcome, "job done"
        ),
        _ => tracing::debug!(
            batch_id = key.batch_id, job_id = key.job_id, attempt_id = %key.attempt_id,
            event = event.name(), state = state.name(), "job event"
        ),
    }
}
