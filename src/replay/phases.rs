//! An attempt's phases: the spans of time between its events, named as a
//! person reads them ("waiting for resources", "running"), and the cores
//! the worker had granted over time.
//!
//! A phase is a function of the attempt's events alone, as its state is:
//! created to `spec_loaded` is waiting for the spec, `spec_loaded` to
//! `resources_granted` waiting for resources (queued for cores and
//! memory), and so on; after its terminal event an attempt uploads its
//! logs, then (unless cancelled) reports to the driver until
//! `complete_delivered`.

use batch_worker_model::{AttemptView, Event, JobState, RunPhase};
use serde::Serialize;

/// A part of an attempt's life, between two of its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `created` to `spec_loaded` or `spec_load_failed`: the spec is
    /// queued for the loader, then read.
    WaitingForSpec,
    /// `spec_loaded` to `resources_granted` (or `resources_refused`, a
    /// cancel): queued for the worker's cores and memory.
    WaitingForResources,
    /// `resources_granted` to `image_pulled` or `image_pull_failed` (a
    /// worker that runs containers).
    PullingImage,
    /// To `inputs_staged` or `inputs_failed`: the input files download.
    StagingInputs,
    /// To `process_started` or `launch_failed`: the process is spawned.
    Starting,
    /// `process_started` to `process_exited`.
    Running,
    /// `cancel_requested` to the process's end.
    Cancelling,
    /// `process_exited` (0) to `outputs_uploaded` or `outputs_failed`.
    UploadingOutputs,
    /// The terminal event to `logs_uploaded` or `logs_upload_failed`.
    UploadingLogs,
    /// The logs' upload to `complete_delivered`: `job_complete` is sent
    /// (retried) until the driver acknowledges it.
    Reporting,
}

impl Phase {
    /// Every phase, in the order an attempt goes through them.
    pub const ALL: [Phase; 10] = [
        Phase::WaitingForSpec,
        Phase::WaitingForResources,
        Phase::PullingImage,
        Phase::StagingInputs,
        Phase::Starting,
        Phase::Running,
        Phase::Cancelling,
        Phase::UploadingOutputs,
        Phase::UploadingLogs,
        Phase::Reporting,
    ];

    /// The phase for a person: `"waiting for resources"`.
    pub fn label(self) -> &'static str {
        match self {
            Phase::WaitingForSpec => "waiting for spec",
            Phase::WaitingForResources => "waiting for resources",
            Phase::PullingImage => "pulling image",
            Phase::StagingInputs => "staging inputs",
            Phase::Starting => "starting process",
            Phase::Running => "running",
            Phase::Cancelling => "cancelling",
            Phase::UploadingOutputs => "uploading outputs",
            Phase::UploadingLogs => "uploading logs",
            Phase::Reporting => "reporting to driver",
        }
    }

    /// The snake_case name, as serialised: `"waiting_for_resources"`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::WaitingForSpec => "waiting_for_spec",
            Phase::WaitingForResources => "waiting_for_resources",
            Phase::PullingImage => "pulling_image",
            Phase::StagingInputs => "staging_inputs",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Cancelling => "cancelling",
            Phase::UploadingOutputs => "uploading_outputs",
            Phase::UploadingLogs => "uploading_logs",
            Phase::Reporting => "reporting",
        }
    }

    /// The phase's position in [`Phase::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One phase of one attempt: from `start_ms` to `end_ms` (ms since the
/// Unix epoch, the times of the events that began and ended it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PhaseSpan {
    /// The phase.
    pub phase: Phase,
    /// When it began, ms since the Unix epoch.
    pub start_ms: i64,
    /// When it ended, ms since the Unix epoch; for an open span, the
    /// journal's last record.
    pub end_ms: i64,
    /// The journal ends inside it: `end_ms` is a lower bound, and the span
    /// counts in no percentile.
    pub open: bool,
}

impl PhaseSpan {
    /// Its length in ms.
    pub fn duration_ms(&self) -> i64 {
        self.end_ms - self.start_ms
    }
}

/// Follows one attempt's phase as its events are applied (a few words per
/// attempt, whether its spans are kept or not).
#[derive(Debug, Clone)]
pub(crate) struct PhaseTracker {
    /// The phase it is in and since when; `None` once it has reported.
    current: Option<(Phase, i64)>,
    /// Its spec names an image to pull.
    pulls_image: bool,
}

impl PhaseTracker {
    /// An attempt `created` at `time_ms`.
    pub(crate) fn created(time_ms: i64) -> PhaseTracker {
        PhaseTracker {
            current: Some((Phase::WaitingForSpec, time_ms)),
            pulls_image: false,
        }
    }

    /// After `event` (legal, not absorbed), recorded at `time_ms`, left the
    /// attempt in `state`: the span it ended, if any.
    pub(crate) fn advance(
        &mut self,
        time_ms: i64,
        event: &Event,
        state: &JobState,
    ) -> Option<PhaseSpan> {
        if let Event::SpecLoaded { image, .. } = event {
            self.pulls_image = image.is_some();
        }
        let current = self.current.map(|(phase, _)| phase);
        let next = match state {
            JobState::Accepted | JobState::LoadingSpec => Some(Phase::WaitingForSpec),
            JobState::Running { phase } => Some(match phase {
                RunPhase::WaitingForResources => Phase::WaitingForResources,
                RunPhase::Initializing => match event {
                    Event::ResourcesGranted if self.pulls_image => Phase::PullingImage,
                    Event::ResourcesGranted | Event::ImagePulled { .. } => Phase::StagingInputs,
                    _ => current.unwrap_or(Phase::StagingInputs),
                },
                RunPhase::Starting => Phase::Starting,
                RunPhase::Executing { .. } => Phase::Running,
                RunPhase::Cancelling => Phase::Cancelling,
                RunPhase::UploadingOutputs => Phase::UploadingOutputs,
            }),
            JobState::Done { .. } | JobState::Errored { .. } => match event {
                Event::StartedDelivered => current,
                Event::LogsUploaded | Event::LogsUploadFailed { .. } => {
                    let cancelled = matches!(
                        state,
                        JobState::Done {
                            outcome: batch_worker_model::Outcome::Cancelled
                        }
                    );
                    (!cancelled).then_some(Phase::Reporting)
                }
                Event::CompleteDelivered => None,
                // The event that ended it.
                _ => Some(Phase::UploadingLogs),
            },
        };
        if next == current {
            return None;
        }
        let ended = self.current.map(|(phase, start_ms)| PhaseSpan {
            phase,
            start_ms,
            end_ms: time_ms,
            open: false,
        });
        self.current = next.map(|phase| (phase, time_ms));
        ended
    }

    /// The span the journal ends in, closed at `end_ms` (the journal's last
    /// record), if the attempt is in one.
    pub(crate) fn open_span(&self, end_ms: i64) -> Option<PhaseSpan> {
        self.current.map(|(phase, start_ms)| PhaseSpan {
            phase,
            start_ms,
            end_ms: end_ms.max(start_ms),
            open: true,
        })
    }
}

/// The cores granted at one moment: from `time_ms` (ms since the Unix
/// epoch) until the next point, `mcpu` (1000 = one core) were in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CoresPoint {
    /// When the sum changed, ms since the Unix epoch.
    pub time_ms: i64,
    /// The sum of `cores_mcpu` of the attempts holding theirs, in mcpu.
    pub mcpu: u64,
}

/// The step function of the cores in use: each attempt holds its
/// `cores_mcpu` from `resources_granted` until its process ends (or, for
/// one that never started, it ends; for one still live, `end_ms`, the
/// journal's end). Releases at a moment come before grants at it.
pub fn cores_in_use<'a>(
    views: impl Iterator<Item = &'a AttemptView>,
    end_ms: i64,
) -> Vec<CoresPoint> {
    let mut changes: Vec<(i64, bool, u64)> = Vec::new();
    for view in views {
        let steps = view.steps();
        let (Some(granted), mcpu) = (steps.granted_ms, steps.cores_mcpu) else {
            continue;
        };
        if mcpu == 0 {
            continue;
        }
        let released = steps.exited_ms.or(view.ended_at_ms()).unwrap_or(end_ms);
        // (time, is a grant, mcpu): releases (false) sort first.
        changes.push((granted, true, mcpu));
        changes.push((released.max(granted), false, mcpu));
    }
    changes.sort_unstable();
    let mut points: Vec<CoresPoint> = Vec::with_capacity(changes.len());
    let mut in_use: u64 = 0;
    for (time_ms, grant, mcpu) in changes {
        in_use = if grant {
            in_use + mcpu
        } else {
            in_use.saturating_sub(mcpu)
        };
        match points.last_mut() {
            Some(last) if last.time_ms == time_ms => last.mcpu = in_use,
            _ => points.push(CoresPoint {
                time_ms,
                mcpu: in_use,
            }),
        }
    }
    points
}

/// The highest point of [`cores_in_use`] (the first, when several tie).
pub fn peak(points: &[CoresPoint]) -> Option<CoresPoint> {
    points
        .iter()
        .copied()
        .reduce(|best, p| if p.mcpu > best.mcpu { p } else { best })
}

#[cfg(test)]
mod tests {
    use batch_worker_model::{History, JobKey, ProcessKind};

    use super::*;

    /// An attempt granted `mcpu` at `granted` whose process ended at `exited`.
    fn held(job_id: i64, mcpu: u64, granted: i64, exited: Option<i64>) -> AttemptView {
        let key = JobKey {
            batch_id: 1,
            job_id,
            attempt_id: "a".into(),
        };
        let (mut view, _) =
            AttemptView::created(key, 1, 0, &Event::created(2), History::Dropped).unwrap();
        let loaded = Event::SpecLoaded {
            process: ProcessKind::Docker,
            size_bytes: 1,
            unsupported: vec![],
            cores_mcpu: mcpu,
            memory_bytes: 0,
            input_files: 0,
            output_files: 0,
            image: None,
            resources: None,
            unknown_fields: Default::default(),
        };
        for (time, event) in [
            (0, Event::SpecLoadStarted),
            (0, loaded),
            (granted, Event::ResourcesGranted),
            (granted, Event::process_started(1)),
        ] {
            view.apply(2, time, &event).unwrap();
        }
        if let Some(exited) = exited {
            let exit = Event::ProcessExited {
                exit: batch_worker_model::ExitStatus::Code { code: 0 },
                duration_ms: 1,
            };
            view.apply(3, exited, &exit).unwrap();
        }
        view
    }

    #[test]
    fn cores_are_held_from_the_grant_to_the_exit_and_a_release_makes_room_at_once() {
        let views = [
            held(1, 1000, 10, Some(20)),
            // Granted as the first ends: never 2 cores at once.
            held(2, 1000, 20, Some(30)),
            // Still running when the journal ends at 50.
            held(3, 500, 25, None),
        ];
        let points = cores_in_use(views.iter(), 50);
        let steps: Vec<(i64, u64)> = points.iter().map(|p| (p.time_ms, p.mcpu)).collect();
        assert_eq!(
            steps,
            [(10, 1000), (20, 1000), (25, 1500), (30, 500), (50, 0)]
        );
        assert_eq!(
            peak(&points),
            Some(CoresPoint {
                time_ms: 25,
                mcpu: 1500
            })
        );
    }
}
