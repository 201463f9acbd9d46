//! The report tasks (`ReportStarted`, `ReportComplete`): the driver calls,
//! retried until acknowledged (or 404), then `started_delivered` /
//! `complete_delivered`. The journal is the outbox: a report not
//! acknowledged before a crash is sent again after the restart.

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
                match driver.job_started(&body).await {
                    Ok(()) => worker.record(&key, Event::StartedDelivered),
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

    /// Starts the `job_complete` report of `key`, first aborting its
    /// `job_started` if that is still being retried (`marked_job_started`
    /// then says false).
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
                // Never wait for job_started: if it is still being retried,
                // drop it and say so in marked_job_started.
                if let Some(started) = started {
                    if !started.is_finished() {
                        started.abort();
                    }
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
