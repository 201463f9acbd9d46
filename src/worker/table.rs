//! This file is long (about 610 lines, half of them given/when/then tests)
//! because the table step and its tests sit together.
//!
//! The job table: one entry per attempt, and [`Table::record`], the
//! synchronous step every event goes through: apply it to the attempt's
//! view, move what the event brought into the attempt's runtime, and turn
//! the model's effects into [`Work`]. No IO, no tokio runtime needed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use batch_worker_model::{AttemptView, Effect, Event, IllegalTransition, JobKey, JobState};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::tasks::{Direction, Work};
use super::view;
use crate::admission::{Grant, Request};
use crate::image::PulledImage;
use crate::job_spec::JobSpec;
use crate::runner::AttemptDir;
use crate::wire::CreateJob;

/// One attempt in the table: what its events say, and what the worker
/// holds for it while it lives.
pub(super) struct JobEntry {
    /// The fold of the attempt's events.
    pub(super) view: AttemptView,
    /// The attempt's live resources, by phase.
    pub(super) runtime: Runtime,
}

/// What the worker holds for an attempt, by phase: a spawn without a spec
/// cannot be written, and a finished attempt holds nothing but a
/// `job_started` report that may still be retried.
pub(super) enum Runtime {
    /// Accepted or loading its spec.
    Pending {
        /// The create request, until the spec-load task takes it: the
        /// entry does not keep a format-1 spec (up to the body limit) for
        /// the life of the table.
        request: Option<Arc<CreateJob>>,
        /// Aborts the spec read.
        spec_load: CancellationToken,
    },
    /// The spec is loaded: waiting for resources, initializing, running.
    Loaded(Box<Loaded>),
    /// Terminal, or recovered from the journal (whose only next event is
    /// `worker_restarted`).
    Finished {
        /// The `job_started` report task, aborted if still retrying when
        /// `job_complete` is sent.
        started_report: Option<JoinHandle<()>>,
    },
}

/// The runtime of an attempt whose spec is loaded.
pub(super) struct Loaded {
    pub(super) spec: Arc<JobSpec>,
    /// Leaves the resource queue, aborts a pull or transfer, ends the
    /// process.
    pub(super) kill: CancellationToken,
    /// The reserved cores and memory, from `resources_granted` until the
    /// process task takes them (and frees them when it ends).
    pub(super) grant: Option<Grant>,
    /// The pulled image, from `image_pulled` until the process task takes it.
    pub(super) image: Option<Arc<PulledImage>>,
    pub(super) started_report: Option<JoinHandle<()>>,
}

impl Runtime {
    /// Aborts whatever the attempt is doing: the spec read, the resource
    /// wait, a transfer, the process.
    pub(super) fn abort(&self) {
        match self {
            Runtime::Pending { spec_load, .. } => spec_load.cancel(),
            Runtime::Loaded(loaded) => loaded.kill.cancel(),
            Runtime::Finished { .. } => {}
        }
    }

    /// Keeps the `job_started` report task of the attempt.
    pub(super) fn set_started_report(&mut self, handle: JoinHandle<()>) {
        match self {
            Runtime::Loaded(loaded) => loaded.started_report = Some(handle),
            Runtime::Finished { started_report } => *started_report = Some(handle),
            Runtime::Pending { .. } => handle.abort(),
        }
    }

    fn take_started_report(&mut self) -> Option<JoinHandle<()>> {
        match self {
            Runtime::Loaded(loaded) => loaded.started_report.take(),
            Runtime::Finished { started_report } => started_report.take(),
            Runtime::Pending { .. } => None,
        }
    }
}

impl JobEntry {
    /// The entry of an attempt just created from `request`.
    pub(super) fn new(view: AttemptView, request: Arc<CreateJob>) -> JobEntry {
        JobEntry {
            view,
            runtime: Runtime::Pending {
                request: Some(request),
                spec_load: CancellationToken::new(),
            },
        }
    }

    /// The entry of an attempt rebuilt from the journal.
    pub(super) fn recovered(view: AttemptView) -> JobEntry {
        JobEntry {
            view,
            runtime: Runtime::Finished {
                started_report: None,
            },
        }
    }
}

/// What a task hands over with its event, moved into the attempt's runtime
/// when the event is taken.
pub(super) enum Attach {
    /// Nothing.
    Nothing,
    /// The loaded spec (with `spec_loaded`).
    Spec(Arc<JobSpec>),
    /// The reserved resources (with `resources_granted`).
    Grant(Grant),
    /// The pulled image (with `image_pulled`).
    Image(Arc<PulledImage>),
}

/// Why an event was not recorded.
#[derive(Debug)]
pub(super) enum NotRecorded {
    /// No attempt of that key is in the table.
    UnknownAttempt,
    /// The model rejects the event in the attempt's state.
    Illegal(IllegalTransition),
    /// The attempt is terminal and absorbed the event.
    Absorbed,
}

impl NotRecorded {
    /// Logs why `event` for `key` was dropped.
    pub(super) fn log(&self, key: &JobKey, event: &Event) {
        match self {
            NotRecorded::UnknownAttempt => {
                tracing::warn!(%key, event = event.name(), "event for an attempt not on this worker; dropped")
            }
            NotRecorded::Illegal(illegal) => {
                tracing::error!(%key, error = %illegal, "illegal transition; event dropped")
            }
            NotRecorded::Absorbed => {
                tracing::debug!(%key, event = event.name(), "event after a terminal state; absorbed")
            }
        }
    }
}

/// An event taken by [`Table::record`].
pub(super) struct Recorded {
    /// Its journal sequence number.
    pub(super) seq: u64,
    /// The attempt's state after it.
    pub(super) state: JobState,
    /// Whether it made the attempt terminal.
    pub(super) ended: bool,
    /// The work its effects ask for, to perform once it is journaled.
    pub(super) work: Vec<Work>,
}

/// What planning needs of the worker.
pub(super) struct PlanContext<'a> {
    /// The worker's name, region and instance config (status JSON,
    /// reports' `resources`).
    pub(super) identity: &'a view::Identity,
    /// The data directory (attempt directories).
    pub(super) data_dir: &'a Path,
}

/// The job table and the journal's next sequence number, under one lock so
/// that records reach the journal in the order events were applied.
pub(super) struct Table {
    pub(super) entries: HashMap<(i64, i64), JobEntry>,
    /// The sequence number of the next record, from 1.
    pub(super) next_seq: u64,
    /// Bytes appended to the journal since the last compaction.
    pub(super) journal_bytes: u64,
    /// The attempts of each job that a newer attempt replaced (finished and
    /// reported): a create repeating one is refused, as for the present
    /// one. Rebuilt by recovery from the journal; like any finished
    /// attempt, forgotten once compaction drops its records.
    pub(super) replaced: HashMap<(i64, i64), Vec<String>>,
}

impl Default for Table {
    fn default() -> Table {
        Table {
            entries: HashMap::new(),
            next_seq: 1,
            journal_bytes: 0,
            replaced: HashMap::new(),
        }
    }
}

impl Table {
    /// Puts `entry` in `slot`; an attempt it replaces is remembered in
    /// [`Table::replaced`].
    pub(super) fn put(&mut self, slot: (i64, i64), entry: JobEntry) {
        if let Some(old) = self.entries.insert(slot, entry) {
            self.replaced
                .entry(slot)
                .or_default()
                .push(old.view.key().attempt_id.clone());
        }
    }

    /// Whether attempt `attempt_id` of `slot` was replaced by a newer one.
    pub(super) fn was_replaced(&self, slot: (i64, i64), attempt_id: &str) -> bool {
        self.replaced
            .get(&slot)
            .is_some_and(|old| old.iter().any(|a| a == attempt_id))
    }
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

impl Table {
    /// The entry of attempt `key` (the same `attempt_id`), if present.
    pub(super) fn entry_mut(&mut self, key: &JobKey) -> Option<&mut JobEntry> {
        self.entries
            .get_mut(&(key.batch_id, key.job_id))
            .filter(|e| e.view.key().attempt_id == key.attempt_id)
    }

    /// Applies `event` to attempt `key` at `now` (ms since the Unix epoch)
    /// as the next record: the view folds it, `attach` moves into the
    /// runtime, and the effects become work. Takes the sequence number.
    ///
    /// # Errors
    /// [`NotRecorded`]: unknown attempt, illegal or absorbed event; nothing
    /// changes and `attach` is dropped.
    pub(super) fn record(
        &mut self,
        key: &JobKey,
        event: &Event,
        attach: Attach,
        context: &PlanContext<'_>,
        now: i64,
    ) -> Result<Recorded, NotRecorded> {
        let seq = self.next_seq;
        let entry = self.entry_mut(key).ok_or(NotRecorded::UnknownAttempt)?;
        let was_terminal = entry.view.is_terminal();
        let applied = entry
            .view
            .apply(seq, now, event)
            .map_err(NotRecorded::Illegal)?;
        if applied.absorbed {
            return Err(NotRecorded::Absorbed);
        }
        entry.attach(attach);
        let work = plan(entry, &applied.effects, context, now);
        let state = entry.view.state();
        let ended = state.is_terminal() && !was_terminal;
        if state.is_terminal() {
            // The spec is no longer needed; keep the table small. A grant
            // not yet taken by a process (inputs failed, cancel while
            // initializing) is freed.
            let started_report = entry.runtime.take_started_report();
            entry.runtime = Runtime::Finished { started_report };
        }
        self.next_seq = seq + 1;
        Ok(Recorded {
            seq,
            state,
            ended,
            work,
        })
    }
}

impl JobEntry {
    fn attach(&mut self, attach: Attach) {
        match (attach, &mut self.runtime) {
            (Attach::Nothing, _) => {}
            (Attach::Spec(spec), Runtime::Pending { .. }) => {
                self.runtime = Runtime::Loaded(Box::new(Loaded {
                    spec,
                    kill: CancellationToken::new(),
                    grant: None,
                    image: None,
                    started_report: None,
                }))
            }
            (Attach::Grant(grant), Runtime::Loaded(loaded)) => loaded.grant = Some(grant),
            (Attach::Image(image), Runtime::Loaded(loaded)) => loaded.image = Some(image),
            (_, _) => {
                tracing::error!(key = %self.view.key(), "a task's result does not fit the attempt's phase; dropped")
            }
        }
    }
}

/// Turns the effects of one event into work, cancelling tokens right away
/// (no IO). `now` is the report time of a `job_complete` for an attempt
/// without an end (never, in practice).
pub(super) fn plan(
    entry: &mut JobEntry,
    effects: &[Effect],
    context: &PlanContext<'_>,
    now: i64,
) -> Vec<Work> {
    let mut work = Vec::new();
    if effects.is_empty() {
        return work;
    }
    let key = entry.view.key().clone();
    for effect in effects {
        match effect {
            Effect::StartSpecLoad => match &mut entry.runtime {
                Runtime::Pending {
                    request: request @ Some(_),
                    spec_load,
                } => work.push(Work::LoadSpec {
                    key: key.clone(),
                    request: request.take().expect("matched Some"),
                    cancel: spec_load.clone(),
                }),
                _ => tracing::error!(%key, "spec load asked for without a request"),
            },
            Effect::AbortSpecLoad | Effect::CancelResourceRequest => entry.runtime.abort(),
            Effect::KillProcess | Effect::AbortTransfers => entry.runtime.abort(),
            Effect::UploadLogs => work.push(upload_logs_work(&entry.view, context)),
            Effect::ReportStarted => work.push(Work::ReportStarted {
                key: key.clone(),
                body: view::started_body(&entry.view, context.identity),
            }),
            // Acknowledged already (a journal from before logs uploads
            // existed, uploaded again after a restart): not again.
            Effect::ReportComplete if entry.view.complete_delivered() => {}
            Effect::ReportComplete => work.push(Work::ReportComplete {
                key: key.clone(),
                status: view::complete_status(&entry.view, context.identity, now),
                started: entry.runtime.take_started_report(),
            }),
            Effect::RequestResources
            | Effect::StageInputs
            | Effect::UploadOutputs
            | Effect::PullImage
            | Effect::SpawnProcess => {
                let Runtime::Loaded(loaded) = &mut entry.runtime else {
                    tracing::error!(%key, ?effect, "asked for before the spec was loaded; the model and the table disagree");
                    continue;
                };
                work.push(match effect {
                    Effect::RequestResources => Work::Admit {
                        key: key.clone(),
                        request: Request {
                            cores_mcpu: loaded.spec.cores_mcpu,
                            memory_bytes: loaded.spec.memory_bytes,
                        },
                        cancel: loaded.kill.clone(),
                    },
                    Effect::StageInputs | Effect::UploadOutputs => Work::Transfer {
                        key: key.clone(),
                        direction: if *effect == Effect::StageInputs {
                            Direction::Inputs
                        } else {
                            Direction::Outputs
                        },
                        spec: loaded.spec.clone(),
                        work_dir: AttemptDir::new(context.data_dir, &key).work(),
                        cancel: loaded.kill.clone(),
                    },
                    Effect::PullImage => match loaded.spec.image.clone() {
                        Some(image) => Work::PullImage {
                            key: key.clone(),
                            image,
                            cancel: loaded.kill.clone(),
                        },
                        None => {
                            tracing::error!(%key, "image pull asked for without an image");
                            continue;
                        }
                    },
                    _ => Work::Spawn {
                        key: key.clone(),
                        spec: loaded.spec.clone(),
                        kill: loaded.kill.clone(),
                        grant: loaded.grant.take(),
                        image: loaded.image.take(),
                    },
                });
            }
        }
    }
    work
}

/// The `UploadLogs` work of an attempt: its status JSON now, its log file.
pub(super) fn upload_logs_work(view: &AttemptView, context: &PlanContext<'_>) -> Work {
    Work::UploadLogs {
        key: view.key().clone(),
        format_version: view.format_version(),
        status: view::status_file(&view::status(view, context.identity)),
    }
}

/// Logs one taken event: info for an end, debug otherwise.
pub(super) fn log_transition(key: &JobKey, event: &Event, state: &JobState) {
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

#[cfg(test)]
mod tests {
    //! Given / when / then over the table alone: no tokio runtime, no IO.

    use std::path::Path;

    use batch_worker_model::{ExitStatus, History, Outcome};

    use super::*;

    const NOW: i64 = 1_764_504_000_000;

    fn key() -> JobKey {
        JobKey {
            batch_id: 3,
            job_id: 1,
            attempt_id: "a1".into(),
        }
    }

    fn context() -> PlanContext<'static> {
        static IDENTITY: std::sync::LazyLock<view::Identity> =
            std::sync::LazyLock::new(|| view::Identity::named("w"));
        PlanContext {
            identity: &IDENTITY,
            data_dir: Path::new("/data"),
        }
    }

    /// Given: a table holding one attempt just created (seq 1).
    fn given_created() -> (Table, Vec<Work>) {
        let body = serde_json::json!({
            "batch_id": 3, "job_id": 1, "format_version": 7, "token": "t", "start_job_id": 1,
            "user": "u", "gsa_key": null, "queue_time": null,
            "job_spec": {"attempt_id": "a1", "job_group_id": 0, "secrets": []},
        });
        let request = CreateJob::parse(body.to_string().as_bytes()).unwrap();
        let (view, applied) =
            AttemptView::created(key(), 1, NOW, &Event::created(7), History::Kept).unwrap();
        let mut entry = JobEntry::new(view, Arc::new(request));
        let work = plan(&mut entry, &applied.effects, &context(), NOW);
        let mut table = Table::default();
        table.insert((3, 1), entry);
        table.next_seq = 2;
        (table, work)
    }

    fn spec() -> Arc<JobSpec> {
        let json = serde_json::json!({
            "job_id": 1,
            "process": {"type": "docker", "image": "ubuntu:24.04", "command": ["true"]},
            "resources": {"cores_mcpu": 250, "memory_bytes": 1000, "storage_gib": 2},
        });
        Arc::new(JobSpec::parse(json.to_string().as_bytes(), 1).unwrap())
    }

    fn record(table: &mut Table, event: Event, attach: Attach) -> Result<Recorded, NotRecorded> {
        table.record(&key(), &event, attach, &context(), NOW)
    }

    #[test]
    fn a_created_attempt_asks_for_its_spec_load_with_its_request() {
        let (table, work) = given_created();
        assert!(matches!(&work[..], [Work::LoadSpec { key: k, .. }] if *k == key()));
        // The request moved into the work: the entry keeps none.
        assert!(matches!(
            table[&(3, 1)].runtime,
            Runtime::Pending { request: None, .. }
        ));
    }

    #[test]
    fn when_the_spec_loads_it_moves_into_the_attempt_and_resources_are_asked_for() {
        let (mut table, _) = given_created();
        record(&mut table, Event::SpecLoadStarted, Attach::Nothing).unwrap();
        let spec = spec();
        let recorded = record(&mut table, spec.loaded_event(false), Attach::Spec(spec)).unwrap();
        assert_eq!(recorded.seq, 3);
        match &recorded.work[..] {
            [Work::Admit { request, .. }] => {
                assert_eq!((request.cores_mcpu, request.memory_bytes), (250, 1000))
            }
            _ => panic!("expected one admission"),
        }
        assert!(matches!(table[&(3, 1)].runtime, Runtime::Loaded(_)));
        // The view shows the spec's resources as sent.
        assert_eq!(
            table[&(3, 1)].view.resources().unwrap()["storage_gib"],
            serde_json::json!(2)
        );
    }

    #[test]
    fn a_cancel_while_waiting_for_resources_aborts_the_wait_and_frees_the_runtime() {
        let (mut table, _) = given_created();
        record(&mut table, Event::SpecLoadStarted, Attach::Nothing).unwrap();
        let spec = spec();
        record(&mut table, spec.loaded_event(false), Attach::Spec(spec)).unwrap();
        let kill = match &table[&(3, 1)].runtime {
            Runtime::Loaded(loaded) => loaded.kill.clone(),
            _ => panic!("loaded"),
        };
        let recorded = record(&mut table, Event::CancelRequested, Attach::Nothing).unwrap();
        assert!(kill.is_cancelled());
        assert!(recorded.ended);
        assert_eq!(
            recorded.state,
            JobState::Done {
                outcome: Outcome::Cancelled
            }
        );
        assert!(matches!(&recorded.work[..], [Work::UploadLogs { .. }]));
        assert!(matches!(table[&(3, 1)].runtime, Runtime::Finished { .. }));
    }

    #[test]
    fn events_not_taken_consume_no_sequence_number() {
        let (mut table, _) = given_created();
        let other = JobKey {
            attempt_id: "other".into(),
            ..key()
        };
        let unknown = table.record(
            &other,
            &Event::SpecLoadStarted,
            Attach::Nothing,
            &context(),
            NOW,
        );
        assert!(matches!(unknown, Err(NotRecorded::UnknownAttempt)));
        let exited = Event::ProcessExited {
            exit: ExitStatus::Code { code: 0 },
            duration_ms: 1,
        };
        assert!(matches!(
            record(&mut table, exited, Attach::Nothing),
            Err(NotRecorded::Illegal(_))
        ));
        assert_eq!(table.next_seq, 2);
        record(&mut table, Event::CancelRequested, Attach::Nothing).unwrap();
        assert!(matches!(
            record(&mut table, Event::WorkerRestarted, Attach::Nothing),
            Err(NotRecorded::Absorbed)
        ));
        assert_eq!(table.next_seq, 3);
    }

    #[test]
    fn a_spec_arriving_for_a_cancelled_attempt_is_dropped() {
        let (mut table, _) = given_created();
        record(&mut table, Event::SpecLoadStarted, Attach::Nothing).unwrap();
        record(&mut table, Event::CancelRequested, Attach::Nothing).unwrap();
        let spec = spec();
        let late = record(
            &mut table,
            spec.loaded_event(false),
            Attach::Spec(spec.clone()),
        );
        assert!(matches!(late, Err(NotRecorded::Absorbed)));
        // Only the test holds the spec now: the table dropped its copy.
        assert_eq!(Arc::strong_count(&spec), 1);
    }
}
