//! The report tasks (`ReportStarted`, `ReportComplete`): the driver calls,
//! retried until acknowledged (or 404), then `started_delivered` /
//! `complete_delivered`. The journal is the outbox: a report not
//! acknowledged before a crash is sent again after the restart.
//!
//! Order, as Hail's `post_job_complete`: a `job_complete` waits until the
//! attempt's `job_started` task has ended (acknowledged, refused, or
//! dropped because the job ended before it could be sent again), so the
//! driver never marks an attempt started after it marked it complete. Its
//! `marked_job_started` is then exactly whether the driver acknowledged
//! `job_started`: `started_delivered` is durable in the journal before the
//! started task ends, so a restart says the same.

use batch_worker_model::{Event, JobKey};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::super::lifecycle::Counted;
use super::super::Worker;
use crate::driver_client::ReportError;
use crate::wire::{JobCompleteBody, JobCompleteStatus, JobStartedBody};

impl Worker {
    /// Starts the `job_started` report of `key`; its task handle goes into
    /// the attempt's runtime (a `job_complete` aborts it if still retrying).
    pub(super) fn report_started(&self, key: JobKey, body: JobStartedBody, span: tracing::Span) {
        let Some(driver) = self.inner.ports.driver.clone() else {
            return;
        };
        let pending = Counted::new(&self.inner.lifecycle.reports_pending);
        let worker = self.clone();
        let task_key = key.clone();
        let handle = tokio::spawn(
            async move {
                let key = task_key;
                let _pending = pending;
                worker.activated().await;
                // Hail's post_job_started_1 skips a job already done.
                let wanted = || {
                    worker
                        .table()
                        .entry_mut(&key)
                        .is_some_and(|e| !e.view.is_terminal())
                };
                match driver.job_started(&body, wanted).await {
                    Ok(()) => {
                        // Durable before this task ends: job_complete
                        // waits for it and reads it.
                        worker.record_durably(&key, Event::StartedDelivered).await;
                    }
                    Err(e @ ReportError::NotWanted { .. }) => {
                        tracing::info!(%key, error = %e, "job_started dropped: the job ended first")
                    }
                    Err(e) => tracing::warn!(%key, error = %e, "job_started not delivered"),
                }
            }
            .instrument(span),
        );
        match self.table().entry_mut(&key) {
            Some(entry) => entry.runtime.set_started_report(handle),
            None => handle.abort(),
        }
    }

    /// Starts the `job_complete` report of `key`, after its `job_started`
    /// task (if any) has ended; `marked_job_started` says whether that was
    /// acknowledged.
    pub(super) fn report_complete(
        &self,
        key: JobKey,
        status: JobCompleteStatus,
        started: Option<JoinHandle<()>>,
        span: tracing::Span,
    ) {
        let Some(driver) = self.inner.ports.driver.clone() else {
            return;
        };
        let pending = Counted::new(&self.inner.lifecycle.reports_pending);
        let worker = self.clone();
        tokio::spawn(
            async move {
                let _pending = pending;
                // Reports recovered at start wait for activation.
                worker.activated().await;
                // Never before job_started has ended: it stops retrying
                // now that the job is done, but a call on the wire is
                // answered first.
                if let Some(started) = started {
                    let _ = started.await;
                }
                let marked_job_started = worker
                    .table()
                    .entry_mut(&key)
                    .is_some_and(|e| e.view.started_delivered());
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
                    Err(e) => tracing::warn!(%key, error = %e, "job_complete not delivered"),
                }
            }
            .instrument(span),
        );
    }
}
