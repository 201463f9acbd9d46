//! [`AttemptView`]: one attempt as its events made it — the one fold.
//!
//! The live worker, recovery at start and the replay tool all rebuild an
//! attempt by [`AttemptView::created`] then [`AttemptView::apply`] for each
//! later event, and read nothing else. So an attempt's status after a
//! restart is exactly its status before it: every field a status, a report
//! or a summary shows is a function of the view, and the view is a function
//! of the events (with their sequence numbers and times).
//!
//! Like the rest of this crate, the view does no IO and never reads the
//! clock: times come with the events.

use serde::Serialize;
use serde_json::Value;

use crate::event::{Event, ExitStatus, JobAddress, UnknownFields};
use crate::key::JobKey;
use crate::machine::{Applied, IllegalTransition, JobAttempt};
use crate::state::JobState;

/// One recorded event of an attempt, as `GET .../events` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    /// The record's sequence number in the worker's journal: increasing
    /// over all attempts.
    pub seq: u64,
    /// When it was recorded, ms since the Unix epoch.
    pub time_ms: i64,
    /// The event.
    pub event: Event,
    /// The state after applying it (see [`JobState::name`]).
    pub state_after: &'static str,
}

/// Whether a view keeps its events (see [`AttemptView::history`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// Keep every applied event: the worker (for `GET .../events` and
    /// compaction) and the replay of a timeline that is shown.
    Kept,
    /// Keep none: the replay of attempts that are only counted.
    Dropped,
}

/// One attempt: its state machine and every fact its events told.
///
/// Built only by [`AttemptView::created`] and changed only by
/// [`AttemptView::apply`]; an absorbed or illegal event changes nothing.
#[derive(Debug, Clone)]
pub struct AttemptView {
    key: JobKey,
    attempt: JobAttempt,
    /// `attempt.state()` after the last applied event (kept, not rebuilt
    /// for every reader).
    state: JobState,
    format_version: u32,
    user: String,
    job_group_id: i64,
    secret_names: Vec<String>,
    resources: Option<Box<Value>>,
    accepted_at_ms: i64,
    spec_load_began_ms: Option<i64>,
    spec_load_ms: Option<i64>,
    started_at_ms: Option<i64>,
    ended_at_ms: Option<i64>,
    exit: Option<ExitStatus>,
    exit_duration_ms: Option<u64>,
    /// Allocated at the first event past the spec load (a job waiting for
    /// its spec holds 8 bytes of it, not its whole size).
    steps: Option<Box<Steps>>,
    started_delivered: bool,
    logs_done: bool,
    complete_delivered: bool,
    history: Option<Vec<EventRecord>>,
}

impl AttemptView {
    /// A new attempt from its first event, which must be
    /// [`Event::Created`], recorded as `seq` at `time_ms` (ms since the Unix
    /// epoch). Returns the view and the effects of accepting it
    /// (`StartSpecLoad`).
    ///
    /// # Errors
    /// [`IllegalTransition`] (from state `none`) for any other event.
    pub fn created(
        key: JobKey,
        seq: u64,
        time_ms: i64,
        event: &Event,
        history: History,
    ) -> Result<(AttemptView, Applied), IllegalTransition> {
        let Event::Created {
            format_version,
            user,
            job_group_id,
            secret_names,
        } = event
        else {
            return Err(IllegalTransition {
                state: "none",
                event: event.name(),
            });
        };
        let (attempt, applied) = JobAttempt::accept();
        let state = attempt.state();
        let history = match history {
            History::Dropped => None,
            History::Kept => {
                // Room grows with the events (1, 4, 8, 16): a job waiting
                // for its spec holds two; recovery reserves a whole life at
                // once (`reserve_history`).
                Some(vec![EventRecord {
                    seq,
                    time_ms,
                    event: event.clone(),
                    state_after: state.name(),
                }])
            }
        };
        let view = AttemptView {
            key,
            state,
            attempt,
            format_version: *format_version,
            user: user.clone(),
            job_group_id: *job_group_id,
            secret_names: secret_names.clone(),
            resources: None,
            accepted_at_ms: time_ms,
            spec_load_began_ms: None,
            spec_load_ms: None,
            started_at_ms: None,
            ended_at_ms: None,
            exit: None,
            exit_duration_ms: None,
            steps: None,
            started_delivered: false,
            logs_done: false,
            complete_delivered: false,
            history,
        };
        Ok((view, applied))
    }

    /// Applies one later event, recorded as `seq` at `time_ms`.
    ///
    /// Returns the effects the shell must perform; an event after a
    /// terminal state is absorbed (`absorbed`, no effect, nothing changes).
    ///
    /// # Errors
    /// [`IllegalTransition`] when the model rejects the event in the
    /// attempt's state; nothing changes.
    pub fn apply(
        &mut self,
        seq: u64,
        time_ms: i64,
        event: &Event,
    ) -> Result<Applied, IllegalTransition> {
        let applied = self.attempt.apply(event)?;
        if applied.absorbed {
            return Ok(applied);
        }
        let steps = &mut self.steps;
        /// The steps, made at their first use.
        fn at(steps: &mut Option<Box<Steps>>) -> &mut Steps {
            steps.get_or_insert_with(Box::default)
        }
        match event {
            Event::SpecLoadStarted => self.spec_load_began_ms = Some(time_ms),
            Event::SpecLoaded {
                resources,
                cores_mcpu,
                memory_bytes,
                input_files,
                output_files,
                image,
                unknown_fields,
                ..
            } => {
                self.resources = resources.clone();
                self.spec_load_ms = self.spec_load_began_ms.map(|t| time_ms - t);
                at(steps).spec_loaded_ms = Some(time_ms);
                at(steps).cores_mcpu = *cores_mcpu;
                at(steps).memory_bytes = *memory_bytes;
                at(steps).input_files = *input_files;
                at(steps).output_files = *output_files;
                at(steps).image = image.is_some();
                at(steps).unknown_fields = unknown_fields.clone();
            }
            Event::SpecLoadFailed { .. } => {
                self.spec_load_ms = self.spec_load_began_ms.map(|t| time_ms - t);
            }
            Event::ResourcesGranted => at(steps).granted_ms = Some(time_ms),
            Event::ImagePulled { .. } | Event::ImagePullFailed { .. } => {
                at(steps).image_done_ms = Some(time_ms)
            }
            Event::InputsStaged { .. } | Event::InputsFailed { .. } => {
                at(steps).inputs_done_ms = Some(time_ms)
            }
            Event::ProcessStarted { network, .. } => {
                self.started_at_ms = Some(time_ms);
                if network.is_some() {
                    at(steps).network = network.clone();
                }
            }
            Event::ProcessExited { exit, duration_ms } => {
                self.exit = Some(*exit);
                self.exit_duration_ms = Some(*duration_ms);
                at(steps).exited_ms = Some(time_ms);
            }
            Event::OutputsUploaded { .. } | Event::OutputsFailed { .. } => {
                at(steps).outputs_done_ms = Some(time_ms)
            }
            Event::StartedDelivered => self.started_delivered = true,
            Event::LogsUploaded | Event::LogsUploadFailed { .. } => {
                self.logs_done = true;
                at(steps).logs_done_ms = Some(time_ms);
            }
            Event::CompleteDelivered => self.complete_delivered = true,
            _ => {}
        }
        // Deliveries change no state: nothing to rebuild.
        if !event.is_delivery() {
            self.state = self.attempt.state();
        }
        // When it became terminal; deliveries come later.
        if self.ended_at_ms.is_none() && self.state.is_terminal() {
            self.ended_at_ms = Some(time_ms);
        }
        if let Some(history) = &mut self.history {
            history.push(EventRecord {
                seq,
                time_ms,
                event: event.clone(),
                state_after: self.state.name(),
            });
        }
        Ok(applied)
    }

    /// Makes room in the history for `additional` more events at once
    /// (recovery knows how many a record stream holds; a live attempt
    /// grows as it goes). Nothing without a history.
    pub fn reserve_history(&mut self, additional: usize) {
        if let Some(history) = &mut self.history {
            history.reserve_exact(additional);
        }
    }

    /// The attempt.
    pub fn key(&self) -> &JobKey {
        &self.key
    }

    /// The current state.
    pub fn state(&self) -> JobState {
        self.state.clone()
    }

    /// The current state, borrowed.
    pub fn state_ref(&self) -> &JobState {
        &self.state
    }

    /// Whether the attempt is `Done` or `Errored`.
    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }

    /// The create body's `format_version`.
    pub fn format_version(&self) -> u32 {
        self.format_version
    }

    /// The create body's `user`.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The create body's `job_group_id`.
    pub fn job_group_id(&self) -> i64 {
        self.job_group_id
    }

    /// The names of the attempt's secrets (never their values).
    pub fn secret_names(&self) -> &[String] {
        &self.secret_names
    }

    /// The spec's `resources` as sent, once loaded (`None` before, or for a
    /// spec without them).
    pub fn resources(&self) -> Option<&Value> {
        self.resources.as_deref()
    }

    /// When the attempt was accepted (its `created`), ms since the Unix epoch.
    pub fn accepted_at_ms(&self) -> i64 {
        self.accepted_at_ms
    }

    /// When its process started, ms since the Unix epoch.
    pub fn started_at_ms(&self) -> Option<i64> {
        self.started_at_ms
    }

    /// Hail's `start_time`, ms since the Unix epoch: when the job's cores
    /// were granted (Hail's worker takes it right after its CPU semaphore).
    /// An attempt that ended before that (its spec could not be read, it
    /// can never fit, it was cancelled) has its end as its start, as Hail's
    /// `FakeJob` does; `None` while it waits.
    pub fn start_time_ms(&self) -> Option<i64> {
        self.steps().granted_ms.or(self.ended_at_ms)
    }

    /// The times of the steps the attempt went through, and what its spec
    /// asked for (what Hail's status `timing` and `resources` are made of).
    pub fn steps(&self) -> &Steps {
        static NONE: Steps = Steps {
            spec_loaded_ms: None,
            granted_ms: None,
            image_done_ms: None,
            inputs_done_ms: None,
            exited_ms: None,
            outputs_done_ms: None,
            logs_done_ms: None,
            cores_mcpu: 0,
            memory_bytes: 0,
            input_files: 0,
            output_files: 0,
            image: false,
            unknown_fields: UnknownFields::none(),
            network: None,
        };
        self.steps.as_deref().unwrap_or(&NONE)
    }

    /// When the attempt became terminal, ms since the Unix epoch.
    pub fn ended_at_ms(&self) -> Option<i64> {
        self.ended_at_ms
    }

    /// How its process ended (also when the attempt then errored, e.g. its
    /// outputs failed).
    pub fn exit(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// The process's wall time from spawn to exit, in ms.
    pub fn exit_duration_ms(&self) -> Option<u64> {
        self.exit_duration_ms
    }

    /// From `spec_load_started` to `spec_loaded` or `spec_load_failed`, in ms.
    pub fn spec_load_ms(&self) -> Option<i64> {
        self.spec_load_ms
    }

    /// From `created` to `process_started`, in ms.
    pub fn accepted_to_running_ms(&self) -> Option<i64> {
        self.started_at_ms.map(|t| t - self.accepted_at_ms)
    }

    /// Whether the driver acknowledged `job_started` (`started_delivered`).
    pub fn started_delivered(&self) -> bool {
        self.started_delivered
    }

    /// Whether the logs upload finished, uploaded or failed.
    pub fn logs_done(&self) -> bool {
        self.logs_done
    }

    /// Whether the driver acknowledged `job_complete` (`complete_delivered`).
    pub fn complete_delivered(&self) -> bool {
        self.complete_delivered
    }

    /// Every applied event, oldest first (empty for a view built with
    /// [`History::Dropped`]).
    pub fn history(&self) -> &[EventRecord] {
        self.history.as_deref().unwrap_or_default()
    }
}

/// When each step of an attempt ended (ms since the Unix epoch, from its
/// events' times), and what its spec asked for: the facts Hail's status
/// `timing`, `container_statuses` and `resources` are made of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steps {
    /// `spec_loaded`.
    pub spec_loaded_ms: Option<i64>,
    /// `resources_granted`: Hail's `start_time`.
    pub granted_ms: Option<i64>,
    /// `image_pulled` or `image_pull_failed`.
    pub image_done_ms: Option<i64>,
    /// `inputs_staged` or `inputs_failed`.
    pub inputs_done_ms: Option<i64>,
    /// `process_exited`.
    pub exited_ms: Option<i64>,
    /// `outputs_uploaded` or `outputs_failed`.
    pub outputs_done_ms: Option<i64>,
    /// `logs_uploaded` or `logs_upload_failed`.
    pub logs_done_ms: Option<i64>,
    /// The spec's `resources.cores_mcpu` (0 before the spec is loaded), mcpu.
    pub cores_mcpu: u64,
    /// The spec's `resources.memory_bytes` (0 before), bytes.
    pub memory_bytes: u64,
    /// How many `input_files` the spec has: Hail's `input` task exists
    /// when it has any.
    pub input_files: u32,
    /// How many `output_files`: Hail's `output` task exists when it has any.
    pub output_files: u32,
    /// Whether the worker pulls an image for the job (`spec_loaded.image`).
    pub image: bool,
    /// The spec's fields that neither the worker nor Hail knows
    /// (`spec_loaded.unknown_fields`): ignored, shown as warnings.
    pub unknown_fields: UnknownFields,
    /// The job's own network (`process_started.network`), when it has one.
    pub network: Option<Box<JobAddress>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ProcessKind;

    fn key() -> JobKey {
        JobKey {
            batch_id: 1,
            job_id: 2,
            attempt_id: "a1".into(),
        }
    }

    fn spec_loaded(resources: Option<Value>) -> Event {
        Event::SpecLoaded {
            process: ProcessKind::Docker,
            size_bytes: 10,
            unsupported: vec![],
            cores_mcpu: 250,
            memory_bytes: 0,
            input_files: 0,
            output_files: 0,
            image: None,
            resources: resources.map(Box::new),
            unknown_fields: UnknownFields::default(),
        }
    }

    /// The events of a job that ran to exit 3 and was reported, at 10 ms
    /// apart from t = 1000 ms.
    fn ran() -> Vec<Event> {
        vec![
            Event::Created {
                format_version: 7,
                user: "alice".into(),
                job_group_id: 4,
                secret_names: vec!["ns/gsa".into()],
            },
            Event::SpecLoadStarted,
            spec_loaded(Some(serde_json::json!({
                "cores_mcpu": 250, "memory_bytes": 0, "storage_gib": 2
            }))),
            Event::ResourcesGranted,
            Event::process_started(7),
            Event::StartedDelivered,
            Event::ProcessExited {
                exit: ExitStatus::Code { code: 3 },
                duration_ms: 25,
            },
            Event::LogsUploaded,
            Event::CompleteDelivered,
        ]
    }

    fn fold(events: &[Event], history: History) -> AttemptView {
        let (mut view, _) = AttemptView::created(key(), 1, 1000, &events[0], history).unwrap();
        for (i, event) in events.iter().enumerate().skip(1) {
            view.apply(1 + i as u64, 1000 + 10 * i as i64, event)
                .unwrap();
        }
        view
    }

    #[test]
    fn given_a_run_job_the_view_holds_every_fact_its_events_told() {
        let view = fold(&ran(), History::Kept);
        assert_eq!(view.user(), "alice");
        assert_eq!(view.job_group_id(), 4);
        assert_eq!(view.secret_names(), ["ns/gsa"]);
        assert_eq!(view.format_version(), 7);
        assert_eq!(
            view.resources(),
            Some(&serde_json::json!({"cores_mcpu": 250, "memory_bytes": 0, "storage_gib": 2}))
        );
        assert_eq!(view.accepted_at_ms(), 1000);
        assert_eq!(view.started_at_ms(), Some(1040));
        assert_eq!(view.ended_at_ms(), Some(1060));
        assert_eq!(view.exit(), Some(ExitStatus::Code { code: 3 }));
        assert_eq!(view.exit_duration_ms(), Some(25));
        assert_eq!(view.spec_load_ms(), Some(10));
        assert_eq!(view.accepted_to_running_ms(), Some(40));
        assert!(view.started_delivered() && view.logs_done() && view.complete_delivered());
        assert_eq!(view.history().len(), 9);
        assert_eq!(view.history()[6].state_after, "done");
    }

    #[test]
    fn a_view_without_history_differs_in_nothing_else() {
        let kept = fold(&ran(), History::Kept);
        let dropped = fold(&ran(), History::Dropped);
        assert!(dropped.history().is_empty());
        assert_eq!(
            format!("{:?}", kept.state()),
            format!("{:?}", dropped.state())
        );
        assert_eq!(kept.ended_at_ms(), dropped.ended_at_ms());
        assert_eq!(kept.resources(), dropped.resources());
    }

    #[test]
    fn when_an_event_is_absorbed_or_illegal_nothing_changes() {
        let mut view = fold(&ran(), History::Kept);
        let applied = view.apply(20, 5000, &Event::WorkerRestarted).unwrap();
        assert!(applied.absorbed);
        assert_eq!(view.history().len(), 9);
        assert_eq!(view.ended_at_ms(), Some(1060));

        let (mut fresh, _) =
            AttemptView::created(key(), 1, 0, &Event::created(2), History::Kept).unwrap();
        let illegal = fresh.apply(2, 1, &Event::process_started(1)).unwrap_err();
        assert_eq!(illegal.state, "accepted");
        assert_eq!(fresh.history().len(), 1);
        assert_eq!(fresh.started_at_ms(), None);
    }

    #[test]
    fn only_created_begins_a_view() {
        let err =
            AttemptView::created(key(), 1, 0, &Event::SpecLoadStarted, History::Kept).unwrap_err();
        assert_eq!((err.state, err.event), ("none", "spec_load_started"));
    }
}
