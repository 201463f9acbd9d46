//! This file is long (about 670 lines) because it is the worker's one
//! facade (create, record, cancel, reads) over the modules below it.
//!
//! The worker: the table of job attempts, and the shell that performs the
//! effects the `model` machine asks for.
//!
//! Every change to an attempt goes through one synchronous step,
//! [`table::Table::record`]: the event is applied to the attempt's
//! [`AttemptView`] (the one fold of its events, shared with recovery and
//! the replay tool) under the table lock, and the effects come back as
//! [`tasks::Work`], each carrying the data it needs. The event's journal
//! record is written first; only then is the work performed
//! ([`journaling`]). So the state of every attempt is the fold of its
//! journaled events.
//!
//! # Layout
//!
//! - this file: [`Worker`], the facade the HTTP handlers use: create,
//!   cancel, status, events and the other queries.
//! - [`builder`]: [`WorkerBuilder`] and [`Executor`], the one way to open a
//!   worker: lock the data directory, recover the journal.
//! - [`lock`]: [`DataDirLock`], one worker per data directory.
//! - [`table`]: the job table, its entries (a view plus the runtime part of
//!   the attempt's phase) and `record`: event in, work out, no IO.
//! - [`journaling`]: the record of each event to the journal, the work after
//!   the write, and compaction.
//! - [`recovery`]: the table rebuilt from the journal at open.
//! - [`lifecycle`]: the worker's [`Phase`] (starting, active, draining,
//!   stopping), activation with the driver, draining at exit.
//! - [`view`]: the status JSON and the report bodies, functions of a view.
//! - [`tasks`]: one file per kind of work (spec load, admission, image
//!   pull, file transfers, process, logs upload, reports).

mod builder;
mod journaling;
mod lifecycle;
mod listing;
mod lock;
mod recovery;
mod table;
mod tasks;
mod view;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use batch_worker_model::{AttemptView, Event, EventRecord, History, JobKey, JobState};
use tokio::sync::watch;

use crate::admission::{Admission, Capacity};
use crate::driver_client::DriverClient;
use crate::image::ImageStore;
use crate::journal::{JournalRecord, JournalWriter};
use crate::logs_store::LogsStore;
use crate::metrics::Metrics;
use crate::runner::{AttemptDir, Runner};
use crate::spec_store::SpecStore;
use crate::store::StoreOptions;
use crate::wire::CreateJob;

pub use builder::{
    default_name, Executor, JournalOptions, OpenError, WorkerBuilder,
    DEFAULT_BILLING_UPDATE_PERIOD, DEFAULT_JOURNAL_SEGMENT_BYTES, DEFAULT_MIN_FREE_BYTES,
    DEFAULT_REPORT_DRAIN_MS, DEFAULT_RETENTION_HOURS,
};
pub use lifecycle::Phase;
pub use lock::{DataDirLock, LockError};
pub use recovery::Recovery;
pub use tasks::attempt_span;
pub use view::{
    hail_exit_code, status as status_of, Identity, JobStatus, SpecWarning, EXTENSION_KEY,
};

pub use listing::{JobPage, JobSummary, ListFilter, WorkerInfo, DEFAULT_PAGE_JOBS, MAX_PAGE_JOBS};
use table::{Attach, JobEntry, Table};
use tasks::JobFilePools;

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
    /// The `created` record could not be written to the journal: the
    /// journal's writes are failing (a full disk) and are being retried, or
    /// the record was not written within [`CREATE_JOURNAL_WAIT`] (the
    /// attempt is then cancelled once it is, so it never runs).
    #[error("the worker's journal cannot be written now ({0}); the job was not accepted, retry later or elsewhere")]
    JournalUnavailable(&'static str),
    /// The file system of the data directory has less free space than the
    /// floor kept for the jobs already accepted.
    #[error("the worker's disk is almost full ({free_bytes} bytes free under the data directory, below the floor of {floor_bytes} kept for the jobs already accepted); the job was not accepted, retry later or elsewhere")]
    DiskFull {
        /// Free bytes (for unprivileged users) under the data directory.
        free_bytes: u64,
        /// The floor (`--min-free-bytes`).
        floor_bytes: u64,
    },
}

/// Longest wait of a create call for its `created` record to be written,
/// before the call is refused (well inside the driver's 2 s timeout).
pub const CREATE_JOURNAL_WAIT: Duration = Duration::from_millis(1000);

/// No attempt of this `(batch_id, job_id)` is on the worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {batch_id}:{job_id} is not on this worker")]
pub struct UnknownJob {
    /// The batch.
    pub batch_id: i64,
    /// The job.
    pub job_id: i64,
}

/// The settings of one worker, as [`WorkerBuilder`] filled them in.
#[derive(Debug, Clone)]
struct Settings {
    /// Name (`/healthcheck`, status JSON, `X-Hail-Instance-Name`), region
    /// and instance config (each job's `resources`).
    identity: Identity,
    /// Absolute; holds `journal/`, attempts' directories, the lock.
    data_dir: PathBuf,
    /// The spec store as operators type it, if known (see
    /// [`WorkerBuilder::spec_store_location`]).
    spec_store_location: Option<String>,
    /// Bytes appended to the journal after which it is compacted.
    journal_segment_bytes: u64,
    /// Creates are refused while the data dir's file system has fewer
    /// free bytes (0: no floor).
    min_free_bytes: u64,
    /// How long a finished, reported attempt is remembered.
    retention: Duration,
    /// The cores (mcpu) and memory (bytes) jobs may reserve in all.
    capacity: Capacity,
    /// At exit, the longest wait for reports still being delivered.
    report_drain: Duration,
    /// The pause between `billing_update` calls.
    billing_update_period: Duration,
    /// Options for the stores of jobs' input and output files.
    store_options: StoreOptions,
}

/// What the worker talks to.
struct Ports {
    specs: SpecStore,
    logs: LogsStore,
    runner: Arc<dyn Runner>,
    /// With [`Executor::Runc`]: the image cache every job's image comes from.
    images: Option<Arc<ImageStore>>,
    /// `None`: reports are not sent.
    driver: Option<DriverClient>,
}

struct Inner {
    settings: Settings,
    ports: Ports,
    journal: JournalWriter,
    table: Mutex<Table>,
    /// Bumped after every event (see [`Worker::changes`]).
    changes: watch::Sender<u64>,
    lifecycle: lifecycle::Lifecycle,
    admission: Admission,
    job_files: JobFilePools,
    metrics: Metrics,
    /// What recovery found when the worker was opened.
    recovery: std::sync::OnceLock<Recovery>,
    /// Held for the worker's life: no second worker opens this data dir.
    _lock: DataDirLock,
}

/// The worker: cheap to clone, shared by the HTTP handlers and job tasks.
/// Opened only by [`Worker::builder`]`(..).open()`.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.inner.settings.identity.name)
            .field("data_dir", &self.inner.settings.data_dir)
            .finish()
    }
}

/// Longest free text (an error message, an image reference) an event keeps,
/// in bytes: a message quoting a job's whole argv is cut here, so every
/// record stays far below the journal's record limit and replays as it was
/// applied.
pub const MAX_EVENT_TEXT_BYTES: usize = 16 * 1024;

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Worker {
    /// A builder for a worker on `data_dir`, with a default for every
    /// setting (see [`WorkerBuilder`]).
    pub fn builder(data_dir: impl Into<PathBuf>) -> WorkerBuilder {
        WorkerBuilder::new(data_dir.into())
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.inner.settings.identity.name
    }

    /// The worker's name, region and instance config, as its statuses and
    /// reports say them.
    pub fn identity(&self) -> &Identity {
        &self.inner.settings.identity
    }

    /// What recovery found in the journal when the worker was opened.
    pub fn recovery(&self) -> Recovery {
        self.inner.recovery.get().copied().unwrap_or_default()
    }

    /// The worker's data directory (absolute).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.inner.settings.data_dir
    }

    /// The worker's metrics (the create handler observes its time there).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// `GET /metrics`: the Prometheus text, with the attempts by state and
    /// the reports pending counted now.
    pub fn metrics_text(&self) -> String {
        let mut by_state: HashMap<&'static str, i64> = HashMap::new();
        for entry in self.table().values() {
            *by_state.entry(entry.view.state_ref().name()).or_default() += 1;
        }
        self.inner.metrics.render(by_state, self.reports_pending())
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave an entry half-updated
        // (updates are single assignments after the pure apply), so a
        // poisoned lock is still consistent.
        self.inner.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the worker takes creates now.
    ///
    /// # Errors
    /// [`CreateError::NotActivated`] before activation,
    /// [`CreateError::ShuttingDown`] once shutdown began.
    pub fn taking_jobs(&self) -> Result<(), CreateError> {
        match self.phase() {
            Phase::Starting => Err(CreateError::NotActivated),
            Phase::Draining | Phase::Stopping => Err(CreateError::ShuttingDown),
            Phase::Active => Ok(()),
        }
    }

    /// Accepts a validated create request: records `Created` and starts the
    /// attempt's own life. Does no blob-store IO and never waits on a job;
    /// its only wait is the journal's group commit of the `created` record.
    ///
    /// # Errors
    /// [`CreateError::Duplicate`] if the `(batch_id, job_id)` is present with the
    /// same attempt, or one not yet finished and reported,
    /// [`CreateError::ShuttingDown`] during shutdown,
    /// [`CreateError::NotActivated`] before activation,
    /// [`CreateError::JournalUnavailable`] when `Created` cannot be written
    /// (within [`CREATE_JOURNAL_WAIT`]), [`CreateError::DiskFull`] below the
    /// free-space floor.
    pub async fn create(&self, job: CreateJob) -> Result<JobKey, CreateError> {
        self.taking_jobs()?;
        self.check_room()?;
        let key = JobKey {
            batch_id: job.batch_id,
            job_id: job.job_id,
            attempt_id: job.attempt.attempt_id.clone(),
        };
        let format_version = job.format_version;
        let event = Event::Created {
            format_version,
            user: job.user.clone(),
            job_group_id: job.attempt.job_group_id,
            secret_names: job.redacted_secrets(),
        };
        let (work, mut durable) = {
            let mut table = self.table();
            if let Some(existing) = table.get(&(key.batch_id, key.job_id)) {
                // As Hail's worker, which forgets a job once reported (or
                // deleted): a new attempt of a finished one runs, and
                // takes its place here (the old one's history stays in
                // the journal). The same attempt, or one still live or
                // still reporting, is refused.
                let view = &existing.view;
                let finished = view.is_terminal()
                    && view.logs_done()
                    && (view.complete_delivered()
                        || view.state_ref().wire_state()
                            == batch_worker_model::WireState::Cancelled);
                if !finished
                    || view.key().attempt_id == key.attempt_id
                    || table.was_replaced((key.batch_id, key.job_id), &key.attempt_id)
                {
                    return Err(CreateError::Duplicate {
                        batch_id: key.batch_id,
                        job_id: key.job_id,
                        attempt_id: view.key().attempt_id.clone(),
                    });
                }
                tracing::info!(
                    batch_id = key.batch_id,
                    job_id = key.job_id,
                    old_attempt_id = %view.key().attempt_id,
                    attempt_id = %key.attempt_id,
                    "a new attempt of a finished job: it replaces the old one"
                );
            }
            let seq = table.next_seq;
            let now = now_ms();
            let (view, applied) =
                AttemptView::created(key.clone(), seq, now, &event, History::Kept)
                    .expect("created begins an attempt");
            let mut entry = JobEntry::new(view, Arc::new(job));
            let work = table::plan(&mut entry, &applied.effects, &self.plan_context(), now);
            table.put((key.batch_id, key.job_id), entry);
            table.next_seq = seq + 1;
            let record = JournalRecord::new(seq, now, key.clone(), event);
            // The create's own work is performed here, once the answer is
            // known: not at all when the create is refused.
            (work, self.commit(&mut table, record, Vec::new()))
        };
        self.inner.changes.send_modify(|n| *n += 1);
        let written = tokio::time::timeout(CREATE_JOURNAL_WAIT, &mut durable).await;
        match written {
            Ok(Ok(true)) => {}
            Ok(_) => {
                // Not recorded (the writer is gone): forget the attempt, so
                // that the driver's retry (here or elsewhere) is not refused.
                self.table().remove(&(key.batch_id, key.job_id));
                return Err(CreateError::JournalUnavailable("the journal is closed"));
            }
            Err(_) => {
                // Still queued behind a failing write: the driver is told
                // no, so the attempt must never run. Once `created` is
                // written, a cancel follows it (no effect was performed).
                let worker = self.clone();
                let withdrawn = key.clone();
                tokio::spawn(async move {
                    match durable.await {
                        Ok(true) => worker.record(&withdrawn, Event::CancelRequested),
                        _ => {
                            worker
                                .table()
                                .remove(&(withdrawn.batch_id, withdrawn.job_id));
                        }
                    }
                });
                tracing::warn!(batch_id = key.batch_id, job_id = key.job_id, attempt_id = %key.attempt_id, wait_ms = CREATE_JOURNAL_WAIT.as_millis() as u64, "create refused: its record was not written in time; the attempt is cancelled once it is");
                return Err(CreateError::JournalUnavailable(
                    "the record of the create was not written in time",
                ));
            }
        }
        self.perform(work);
        self.inner.metrics.job_created();
        tracing::info!(batch_id = key.batch_id, job_id = key.job_id, attempt_id = %key.attempt_id, format_version, "job accepted");
        Ok(key)
    }

    /// Refuses a create while the journal's writes fail or the data
    /// directory's file system is below its free-space floor.
    fn check_room(&self) -> Result<(), CreateError> {
        if self.inner.journal.is_failing() {
            return Err(CreateError::JournalUnavailable(
                "its writes are failing and being retried",
            ));
        }
        let floor_bytes = self.inner.settings.min_free_bytes;
        if floor_bytes == 0 {
            return Ok(());
        }
        match nix::sys::statvfs::statvfs(&self.inner.settings.data_dir) {
            Ok(stat) => {
                let free_bytes = stat.blocks_available().saturating_mul(stat.fragment_size());
                if free_bytes < floor_bytes {
                    return Err(CreateError::DiskFull {
                        free_bytes,
                        floor_bytes,
                    });
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "free space of the data directory unknown");
                Ok(())
            }
        }
    }

    /// What planning work needs of the worker's settings.
    fn plan_context(&self) -> table::PlanContext<'_> {
        table::PlanContext {
            identity: &self.inner.settings.identity,
            data_dir: &self.inner.settings.data_dir,
        }
    }

    /// Records one event for attempt `key` and performs its effects once it
    /// is journaled. Events for an attempt that is no longer in the table,
    /// or illegal in its state, are logged and dropped; events after a
    /// terminal state are absorbed; none of them panics.
    pub fn record(&self, key: &JobKey, event: Event) {
        drop(self.record_with(key, event, Attach::Nothing));
    }

    /// [`Worker::record`], resolving once the event is durable in the
    /// journal (`true`), or was not taken or could not be written
    /// (`false`).
    pub(crate) async fn record_durably(&self, key: &JobKey, event: Event) -> bool {
        match self.record_with(key, event, Attach::Nothing) {
            Some(durable) => durable.await.unwrap_or(false),
            None => false,
        }
    }

    /// [`Worker::record`], with `attach` moved into the attempt's runtime
    /// when the event is taken (dropped, and so freed, when it is not).
    /// Returns the journal's answer for the record, if it was taken.
    fn record_with(
        &self,
        key: &JobKey,
        event: Event,
        attach: Attach,
    ) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        self.record_at(key, event, attach, None)
    }

    /// [`Worker::record_with`], the record's time `at` (ms since the Unix
    /// epoch) when the event happened earlier than now (a process that
    /// ended while no worker ran), else now.
    fn record_at(
        &self,
        key: &JobKey,
        event: Event,
        attach: Attach,
        at: Option<i64>,
    ) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        let event = event.bounded(MAX_EVENT_TEXT_BYTES);
        // While stopping, the processes the worker itself ends must not
        // turn into outcomes; deliveries still count (reports drain).
        if self.phase() == Phase::Stopping && !event.is_delivery() {
            tracing::debug!(%key, event = event.name(), "worker stopping; event not recorded");
            return None;
        }
        let durable = {
            let mut table = self.table();
            let now = at.unwrap_or_else(now_ms);
            let recorded = match table.record(key, &event, attach, &self.plan_context(), now) {
                Ok(recorded) => recorded,
                Err(not) => {
                    not.log(key, &event);
                    return None;
                }
            };
            table::log_transition(key, &event, &recorded.state);
            self.inner
                .metrics
                .event_recorded(&event, &recorded.state, recorded.ended);
            // Effects run once the event is in the journal, and not before:
            // while its writes fail (a full disk) the attempt waits.
            let record = JournalRecord::new(recorded.seq, now, key.clone(), event);
            self.commit(&mut table, record, recorded.work)
        };
        self.inner.changes.send_modify(|n| *n += 1);
        Some(durable)
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
        self.with_entry(batch_id, job_id, |e| e.view.key().clone())
    }

    /// `read` of the entry of `(batch_id, job_id)`, under the table lock.
    fn with_entry<T>(
        &self,
        batch_id: i64,
        job_id: i64,
        read: impl FnOnce(&JobEntry) -> T,
    ) -> Result<T, UnknownJob> {
        self.table()
            .get(&(batch_id, job_id))
            .map(read)
            .ok_or(UnknownJob { batch_id, job_id })
    }

    /// The current state of attempt `(batch_id, job_id)`.
    ///
    /// # Errors
    /// [`UnknownJob`].
    pub fn state_of(&self, batch_id: i64, job_id: i64) -> Result<JobState, UnknownJob> {
        self.with_entry(batch_id, job_id, |e| e.view.state())
    }

    /// The status JSON of attempt `(batch_id, job_id)`: a function of its
    /// view, the same before and after a restart.
    ///
    /// # Errors
    /// [`UnknownJob`].
    pub fn status(&self, batch_id: i64, job_id: i64) -> Result<JobStatus, UnknownJob> {
        self.with_entry(batch_id, job_id, |e| {
            view::status(&e.view, &self.inner.settings.identity)
        })
    }

    /// The recorded events of attempt `(batch_id, job_id)`, oldest first.
    ///
    /// # Errors
    /// [`UnknownJob`].
    pub fn events(&self, batch_id: i64, job_id: i64) -> Result<Vec<EventRecord>, UnknownJob> {
        self.with_entry(batch_id, job_id, |e| e.view.history().to_vec())
    }

    /// The `main` log file of attempt `(batch_id, job_id)` (it may not
    /// exist yet).
    ///
    /// # Errors
    /// [`UnknownJob`].
    pub fn main_log(&self, batch_id: i64, job_id: i64) -> Result<PathBuf, UnknownJob> {
        let key = self.key_of(batch_id, job_id)?;
        Ok(AttemptDir::new(&self.inner.settings.data_dir, &key).main_log())
    }

    /// The tasks attempt `(batch_id, job_id)` has, as Hail names them
    /// (`input` when its spec has input files, `main`, `output` when it
    /// has output files; none before its spec is loaded), and its
    /// attempt directory, where [`AttemptDir::task_log`] and
    /// [`AttemptDir::task_resource_usage`] are.
    ///
    /// # Errors
    /// [`UnknownJob`].
    pub fn tasks(
        &self,
        batch_id: i64,
        job_id: i64,
    ) -> Result<(Vec<&'static str>, AttemptDir), UnknownJob> {
        self.with_entry(batch_id, job_id, |entry| {
            let steps = entry.view.steps();
            let mut tasks = Vec::new();
            if steps.spec_loaded_ms.is_some() {
                if steps.input_files > 0 {
                    tasks.push("input");
                }
                tasks.push("main");
                if steps.output_files > 0 {
                    tasks.push("output");
                }
            }
            let dir = AttemptDir::new(&self.inner.settings.data_dir, entry.view.key());
            (tasks, dir)
        })
    }

    /// One page of the attempts on the worker that `filter` admits, by
    /// `(batch_id, job_id)` (see [`listing`]).
    pub fn list(&self, filter: &ListFilter) -> JobPage {
        listing::page(self.table().values().map(|e| &e.view), filter)
    }

    /// What the worker is: its name, spec store, capacity and what is free,
    /// and how many attempts it holds (`GET /batch-worker/v1/worker`).
    pub fn about(&self) -> WorkerInfo {
        let settings = &self.inner.settings;
        let (free_mcpu, free_mib) = self.resources_available();
        WorkerInfo {
            name: settings.identity.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            spec_store: settings.spec_store_location.clone(),
            cores_mcpu: settings.capacity.cores_mcpu,
            memory_bytes: settings.capacity.memory_bytes,
            free_cores_mcpu: free_mcpu,
            // Admission counts memory in whole MiB: what is reserved, taken
            // from the exact capacity (an idle worker shows all of it).
            free_memory_bytes: {
                let capacity_mib = settings.capacity.memory_bytes >> 20;
                let reserved_mib = capacity_mib.saturating_sub(free_mib);
                settings
                    .capacity
                    .memory_bytes
                    .saturating_sub(reserved_mib << 20)
            },
            attempts: self.table().len(),
            taking_jobs: self.taking_jobs().is_ok(),
        }
    }

    /// States of every attempt on the worker, keyed by attempt.
    pub fn snapshot(&self) -> Vec<(JobKey, JobState)> {
        let mut all: Vec<_> = self
            .table()
            .values()
            .map(|e| (e.view.key().clone(), e.view.state()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Whether the journal's writes are failing (a full disk) and records
    /// wait to be written: meanwhile creates are refused and the effects of
    /// the waiting events are not performed.
    pub fn journal_failing(&self) -> bool {
        self.inner.journal.is_failing()
    }

    /// Completes once every event recorded so far is in the journal.
    pub async fn sync_journal(&self) {
        self.inner.journal.barrier().await;
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

    /// Free cores (mcpu) and memory (MiB) of the admission queue.
    pub fn resources_available(&self) -> (u64, u64) {
        self.inner.admission.available()
    }
}
