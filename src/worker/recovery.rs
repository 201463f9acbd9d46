//! Recovery at open: the table rebuilt from the journal's records, each
//! attempt folded by the same [`AttemptView`] the live worker uses; then
//! live attempts end `worker_restarted`, and finished ones whose logs
//! upload or `job_complete` was not done get it again.

use batch_worker_model::{AttemptView, Event, History, JobKey, JobState, RunPhase, WireState};

use super::table::{self, JobEntry};
use super::table::{Loaded, Runtime};
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
    /// Attempts whose process was re-attached (running under its shim, or
    /// ended while no worker ran).
    pub reattached: usize,
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
        let mut reattached = Vec::new();
        let mut started_late = Vec::new();
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
                            table.put(slot, JobEntry::recovered(view));
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
            let mut keys: Vec<JobKey> = table.values().map(|e| e.view.key().clone()).collect();
            keys.sort_unstable();
            let context = self.plan_context();
            for key in keys {
                let entry = table.entry_mut(&key).expect("listed above");
                let state = entry.view.state();
                if !state.is_terminal() {
                    let dir = AttemptDir::new(&self.inner.settings.data_dir, &key);
                    // A process still running under its shim, or that ended
                    // while no worker ran: waited for, and reported as it
                    // really ends.
                    // Starting: spawned, perhaps, before `process_started`
                    // was written; Cancelling: ended once re-attached.
                    if let JobState::Running {
                        phase:
                            phase @ (RunPhase::Starting
                            | RunPhase::Executing { .. }
                            | RunPhase::Cancelling),
                    } = &state
                    {
                        if let Some((started, work, kill)) = self.reattach(entry, &dir) {
                            if *phase == RunPhase::Starting {
                                started_late.push((key.clone(), started));
                            }
                            if *phase == RunPhase::Cancelling {
                                kill.cancel();
                            }
                            reattached.push(work);
                            // Its job_started was not acknowledged before
                            // the restart: sent again (a Starting attempt's
                            // goes with the process_started recorded below).
                            if matches!(phase, RunPhase::Executing { .. })
                                && !entry.view.started_delivered()
                            {
                                reattached.push(Work::ReportStarted {
                                    key: key.clone(),
                                    body: super::view::started_body(
                                        &entry.view,
                                        &self.inner.settings.identity,
                                    ),
                                });
                            }
                            continue;
                        }
                    }
                    let view = &entry.view;
                    // Else what the crash left (a container's mounts and
                    // bundle, a job's cgroup) is ended before anything
                    // else runs.
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
                    continue;
                }
                let view = &entry.view;
                if !view.logs_done() {
                    redo.push(table::upload_logs_work(view, &context));
                } else if state.wire_state() != WireState::Cancelled && !view.complete_delivered() {
                    redo.push(Work::ReportComplete {
                        key: view.key().clone(),
                        status: super::view::complete_status(
                            view,
                            &self.inner.settings.identity,
                            now_ms(),
                        ),
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
        let reattached_count = reattached.len();
        // What the journal missed: the process had started.
        for (key, started) in started_late {
            self.record(&key, started);
        }
        self.perform(reattached);
        self.perform(redo);
        for key in &restarted {
            self.record(key, Event::WorkerRestarted);
        }
        self.inner.changes.send_modify(|n| *n += 1);
        Recovery {
            records: records.len(),
            attempts,
            restarted: restarted.len(),
            reattached: reattached_count,
            redone,
            cut_bytes: 0,
        }
    }
}

impl Worker {
    /// Re-attaches `entry`'s process (in `dir`) if its runner can and its
    /// spec was recorded: the entry gets its spec, a kill token and its
    /// cores and memory back. Returns its `process_started` (pid and
    /// network, for an attempt whose start the journal missed), the work
    /// that waits for it, and its kill token.
    fn reattach(
        &self,
        entry: &mut JobEntry,
        dir: &AttemptDir,
    ) -> Option<(Event, Work, tokio_util::sync::CancellationToken)> {
        let key = entry.view.key().clone();
        if stopped_by_worker(dir) {
            tracing::info!(%key, "the last worker's stop ended this job's process: not re-attached (worker_restarted)");
            return None;
        }
        let spec: crate::job_spec::JobSpec = match std::fs::read(dir.spec_record()) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::warn!(%key, error = %e, "spec.json unreadable: not re-attached");
                    return None;
                }
            },
            Err(_) => return None,
        };
        let (pid, process) = self.inner.ports.runner.reattach(&key, dir)?;
        let network = process.network().map(Box::new);
        let request = crate::admission::Request {
            cores_mcpu: spec.cores_mcpu,
            memory_bytes: spec.memory_bytes,
        };
        let grant = self.inner.admission.reserve(request);
        if grant.is_none() {
            tracing::warn!(%key, cores_mcpu = spec.cores_mcpu, memory_bytes = spec.memory_bytes, "a re-attached job's resources are not free; it runs without a reservation");
        }
        let kill = tokio_util::sync::CancellationToken::new();
        let timeout = spec.timeout;
        entry.runtime = Runtime::Loaded(Box::new(Loaded {
            spec: std::sync::Arc::new(spec),
            kill: kill.clone(),
            grant: None,
            image: None,
            started_report: None,
        }));
        let work = Work::Reattached {
            key,
            process,
            timeout,
            kill: kill.clone(),
            grant,
        };
        Some((Event::ProcessStarted { pid, network }, work, kill))
    }
}

/// Whether a graceful stop ended the attempt's process (its
/// [`AttemptDir::stopped_mark`] exists) and the process had not ended by
/// itself before the mark was written (its shim's `exit.json`, if any, is
/// not older than the mark).
fn stopped_by_worker(dir: &AttemptDir) -> bool {
    let modified = |path: std::path::PathBuf| std::fs::metadata(path).and_then(|m| m.modified());
    let Ok(stopped) = modified(dir.stopped_mark()) else {
        return false;
    };
    match modified(crate::shim::exit_path(&dir.root)) {
        Ok(exited) if crate::shim::read_exit(&dir.root).is_some() => exited >= stopped,
        _ => true,
    }
}
