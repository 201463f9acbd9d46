//! Recovery at open: the table rebuilt from the journal's records, each
//! attempt folded by the same [`AttemptView`] the live worker uses; then
//! live attempts end `worker_restarted`, and finished ones whose logs
//! upload or `job_complete` was not done get it again.

use batch_worker_model::{AttemptView, Event, History, JobState, RunPhase, WireState};

use super::table::{self, JobEntry};
use super::tasks::Work;
use super::{now_ms, Worker};
use crate::journal::JournalRecord;
use crate::runner::AttemptDir;

/// Events a recovered attempt's history has room for at first: those of a
/// job that loaded its spec, ran, and was reported.
const RECOVERED_HISTORY: usize = 9;

/// What recovery found in the journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records read.
    pub records: usize,
    /// Attempts restored.
    pub attempts: usize,
    /// Attempts that were live and ended `worker_restarted`.
    pub restarted: usize,
    /// Finished attempts whose logs upload or `job_complete` is redone.
    pub redone: usize,
    /// Bytes cut off the journal (a torn tail, or with repair everything
    /// from the damage on).
    pub cut_bytes: u64,
}

impl Worker {
    /// Rebuilds the job table from journal records (as read at start), then
    /// records `WorkerRestarted` for every attempt that was not terminal: it
    /// ends `Errored{worker_restarted}` and is reported to the driver.
    ///
    /// Terminal attempts whose `job_complete` was not acknowledged
    /// (`CompleteDelivered` is journaled on acknowledgement) are reported
    /// again: at least once on the wire, per attempt.
    pub(super) fn recover(&self, records: &[JournalRecord]) -> Recovery {
        let mut restarted = Vec::new();
        let mut redo = Vec::new();
        let attempts = {
            let mut table = self.table();
            // One entry per `created`: made room for at once, not by
            // growing (and moving every entry) again and again.
            table.reserve(records.iter().filter(|r| r.event.is_created()).count());
            for record in records {
                for event in record.events().iter() {
                    let key = &record.key;
                    let slot = (key.batch_id, key.job_id);
                    // As the replay tool does: a second `created` of a
                    // present attempt is illegal, not a fresh start.
                    let taken = match table.entry_mut(key) {
                        Some(entry) => entry
                            .view
                            .apply(record.seq, record.time_ms, event)
                            .map(|_| ()),
                        None => AttemptView::created(
                            key.clone(),
                            record.seq,
                            record.time_ms,
                            event,
                            History::Kept,
                        )
                        .map(|(mut view, _)| {
                            // Room for the rest of a job that ran (nine
                            // events in all), rather than growing to 16.
                            view.reserve_history(RECOVERED_HISTORY - 1);
                            table.insert(slot, JobEntry::recovered(view));
                        }),
                    };
                    if let Err(illegal) = taken {
                        tracing::warn!(%key, seq = record.seq, error = %illegal, "journal record skipped at recovery");
                    }
                }
                table.next_seq = table.next_seq.max(record.seq + 1);
            }
            // In key order, so that the work recovery starts is started in
            // the same order on every run (a simulation repeats exactly).
            let mut entries: Vec<&JobEntry> = table.values().collect();
            entries.sort_unstable_by(|a, b| a.view.key().cmp(b.view.key()));
            let context = self.plan_context();
            for entry in entries {
                let view = &entry.view;
                let state = view.state();
                if !state.is_terminal() {
                    // A container (mounts, bundle, secret files) the crash
                    // left behind goes before anything else runs.
                    let dir = AttemptDir::new(&self.inner.settings.data_dir, view.key());
                    let removed = self.inner.ports.runner.clean_up(view.key(), &dir);
                    if let (
                        false,
                        JobState::Running {
                            phase: RunPhase::Executing { pid },
                        },
                    ) = (removed, &state)
                    {
                        // Not killed: after a reboot the pid may be another
                        // process's.
                        tracing::warn!(key = %view.key(), pid, "the attempt's process may still run from before the restart; not killed");
                    }
                    restarted.push(view.key().clone());
                } else if !view.logs_done() {
                    redo.push(table::upload_logs_work(view, &context));
                } else if state.wire_state() != WireState::Cancelled && !view.complete_delivered() {
                    redo.push(Work::ReportComplete {
                        key: view.key().clone(),
                        status: super::view::complete_status(view, now_ms()),
                        started: None,
                    });
                }
            }
            table.len()
        };
        let redone = redo.len();
        if redone > 0 {
            tracing::info!(
                reports = redone,
                "finished attempts whose logs upload or job_complete was not done before the restart: doing it again"
            );
        }
        self.perform(redo);
        for key in &restarted {
            self.record(key, Event::WorkerRestarted);
        }
        self.inner.changes.send_modify(|n| *n += 1);
        Recovery {
            records: records.len(),
            attempts,
            restarted: restarted.len(),
            redone,
            cut_bytes: 0,
        }
    }
}
