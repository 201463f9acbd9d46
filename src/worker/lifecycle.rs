//! The worker's life: one [`Phase`], moving only forward, instead of
//! separate flags; activation with the driver; and the two steps of exit
//! (end every process, drain the reports).

use std::time::Duration;

use batch_worker_model::{JobState, RunPhase};
use serde::Serialize;
use tokio::sync::watch;

use super::Worker;
use crate::driver_client::ReportError;
use crate::runner::AttemptDir;

/// Where the worker is in its life. Phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Opened; not yet activated with its driver. Creates get 503; reports
    /// wait (the worker has no instance token to send yet).
    Starting,
    /// Activated (or running without a driver): creates are taken.
    Active,
    /// Shutting down: creates get 503; jobs still run and record events.
    Draining,
    /// Ending every process for exit: only deliveries are still recorded,
    /// so that the processes the worker itself ends do not become outcomes.
    Stopping,
}

/// The phase and the counts exit waits on.
pub(super) struct Lifecycle {
    phase: watch::Sender<Phase>,
    /// Job processes spawning or running.
    pub(super) live_processes: watch::Sender<usize>,
    /// Report tasks (job_started, job_complete) and the logs uploads that
    /// precede job_complete, not finished.
    pub(super) reports_pending: watch::Sender<usize>,
    /// Whether the worker has its instance token (activated, or no driver):
    /// a worker that begins shutdown before activating moves to `Draining`
    /// without it, and its reports must not go out with the activation
    /// token.
    has_token: std::sync::atomic::AtomicBool,
}

impl Lifecycle {
    /// A worker's life from `Starting` (or `Active`, without a driver).
    pub(super) fn new(has_driver: bool) -> Lifecycle {
        let first = if has_driver {
            Phase::Starting
        } else {
            Phase::Active
        };
        Lifecycle {
            phase: watch::channel(first).0,
            live_processes: watch::channel(0).0,
            reports_pending: watch::channel(0).0,
            has_token: (!has_driver).into(),
        }
    }

    /// Moves to `next` unless the worker is already there or past it.
    fn advance(&self, next: Phase) {
        self.phase.send_if_modified(|phase| {
            let moved = *phase < next;
            if moved {
                *phase = next;
            }
            moved
        });
    }

    /// Completes once the phase is `at` or later.
    async fn reached(&self, at: Phase) {
        let _ = self.phase.subscribe().wait_for(|p| *p >= at).await;
    }
}

/// Counts one task in a counter of [`Lifecycle`] while alive (also when the
/// task is aborted).
pub(super) struct Counted(watch::Sender<usize>);

impl Counted {
    pub(super) fn new(counter: &watch::Sender<usize>) -> Counted {
        counter.send_modify(|n| *n += 1);
        Counted(counter.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl Worker {
    /// The worker's phase now.
    pub fn phase(&self) -> Phase {
        *self.inner.lifecycle.phase.borrow()
    }

    /// Activates the worker with its driver (see
    /// [`crate::driver_client::DriverClient::activate`]), sending
    /// `ip_address`; creates are taken from then on. Without a driver there
    /// is nothing to do.
    ///
    /// # Errors
    /// [`ReportError`] from the activation call: the worker stays
    /// `Starting` and answers creates with 503.
    pub async fn activate(&self, ip_address: &str) -> Result<(), ReportError> {
        if let Some(driver) = &self.inner.ports.driver {
            driver.activate(ip_address).await?;
            tracing::info!(driver = %driver.describe(), ip_address, "activated with the driver");
        }
        let lifecycle = &self.inner.lifecycle;
        lifecycle
            .has_token
            .store(true, std::sync::atomic::Ordering::SeqCst);
        lifecycle.advance(Phase::Active);
        // Reports waiting in `Draining` for a token go out now.
        lifecycle.phase.send_modify(|_| {});
        if self.inner.ports.driver.is_some() {
            tokio::spawn(self.clone().send_billing_updates());
        }
        Ok(())
    }

    /// Hail's `periodically_call(60, send_billing_update)`: at once, then
    /// every `--billing-update-ms` after each call returns, until the
    /// worker stops; a call is made only when some attempt is billed.
    async fn send_billing_updates(self) {
        let Some(driver) = self.inner.ports.driver.clone() else {
            return;
        };
        let period = self.inner.settings.billing_update_period;
        let mut phase = self.inner.lifecycle.phase.subscribe();
        loop {
            if self.phase() >= Phase::Stopping {
                return;
            }
            if let Some(body) = self.billing_update() {
                let attempts = body.attempts.len();
                match driver.billing_update(&body).await {
                    Ok(()) => tracing::debug!(attempts, "billing_update delivered"),
                    Err(e) => tracing::warn!(attempts, error = %e, "billing_update not delivered"),
                }
            }
            let stopping = phase.wait_for(|p| *p >= Phase::Stopping);
            if tokio::time::timeout(period, stopping).await.is_ok() {
                return;
            }
        }
    }

    /// The `billing_update` body now: the attempts whose `job_started` the
    /// driver acknowledged and that have not ended, in key order; `None`
    /// when there is none (Hail sends nothing then).
    pub fn billing_update(&self) -> Option<crate::wire::BillingUpdateBody> {
        let mut attempts: Vec<crate::wire::BillingAttempt> = self
            .table()
            .values()
            .filter(|e| e.view.started_delivered() && !e.view.is_terminal())
            .map(|e| {
                let key = e.view.key();
                crate::wire::BillingAttempt {
                    batch_id: key.batch_id,
                    job_id: key.job_id,
                    attempt_id: key.attempt_id.clone(),
                }
            })
            .collect();
        if attempts.is_empty() {
            return None;
        }
        attempts.sort_by_key(|a| (a.batch_id, a.job_id));
        Some(crate::wire::BillingUpdateBody {
            timestamp: super::now_ms(),
            attempts,
        })
    }

    /// For exit, after the reports drained: tells the driver this worker
    /// is going away (`POST .../instances/deactivate`, once, as Hail's
    /// worker does), so that it reschedules the jobs that were here.
    /// Nothing without a driver or before activation.
    pub async fn deactivate(&self) {
        let Some(driver) = &self.inner.ports.driver else {
            return;
        };
        if !self.is_activated() {
            return;
        }
        match driver.deactivate().await {
            Ok(()) => tracing::info!("deactivated with the driver"),
            Err(e) => {
                tracing::warn!(error = %e, "deactivate failed; the driver's own checks will find this worker gone")
            }
        }
    }

    /// Whether the worker has activated with its driver (or has none).
    pub fn is_activated(&self) -> bool {
        self.inner
            .lifecycle
            .has_token
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Completes once the worker has activated (or has no driver): reports
    /// wait for it, since before it they have no instance token to send.
    pub(super) async fn activated(&self) {
        let lifecycle = &self.inner.lifecycle;
        let _ = lifecycle
            .phase
            .subscribe()
            .wait_for(|_| {
                lifecycle
                    .has_token
                    .load(std::sync::atomic::Ordering::SeqCst)
            })
            .await;
    }

    /// Report tasks (`job_started`, `job_complete`) and logs uploads (each
    /// followed by a `job_complete`) not yet finished.
    pub fn reports_pending(&self) -> usize {
        *self.inner.lifecycle.reports_pending.borrow()
    }

    /// Stops taking jobs (`Draining`: creates get
    /// [`super::CreateError::ShuttingDown`]) and wakes
    /// [`Worker::shutdown_requested`].
    pub fn begin_shutdown(&self) {
        self.inner.lifecycle.advance(Phase::Draining);
    }

    /// Whether [`Worker::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// Completes when shutdown was requested (e.g. by `POST /api/v1alpha/kill`).
    pub async fn shutdown_requested(&self) {
        self.inner.lifecycle.reached(Phase::Draining).await
    }

    /// For exit (`Stopping`): stops recording events (but deliveries),
    /// aborts every spec load and admission wait, ends every job's process
    /// group (SIGTERM, SIGKILL after the grace period), and waits until no
    /// job process is left (at most the grace period plus 2 s). The
    /// attempts stay as they were: no report is sent for work the worker
    /// itself abandons.
    pub async fn end_processes(&self) {
        self.inner.lifecycle.advance(Phase::Stopping);
        for entry in self.table().values() {
            if !entry.view.is_terminal() {
                // A process the stop ends (not one a cancel is ending)
                // is marked first: its end is the worker's, not the job's.
                if let JobState::Running {
                    phase: RunPhase::Starting | RunPhase::Executing { .. },
                } = entry.view.state()
                {
                    let dir = AttemptDir::new(&self.inner.settings.data_dir, entry.view.key());
                    if dir.root.exists() {
                        if let Err(e) = std::fs::write(dir.stopped_mark(), b"") {
                            tracing::warn!(key = %entry.view.key(), error = %e, "stop mark not written: after a restart the job may be reported with the end the stop gave it");
                        }
                    }
                }
                entry.runtime.abort();
            }
        }
        let limit = self.inner.ports.runner.kill_grace() + Duration::from_secs(2);
        let mut live = self.inner.lifecycle.live_processes.subscribe();
        if tokio::time::timeout(limit, live.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!(
                processes = *live.borrow(),
                "job processes still running at exit"
            );
        } else {
            let runner = self.inner.ports.runner.clone();
            let _ = tokio::task::spawn_blocking(move || runner.stopped()).await;
        }
    }

    /// For exit: waits until no report task is left, or the report drain
    /// time passed; returns how many are left. Logs uploads that finish
    /// meanwhile send their `job_complete` too.
    pub async fn drain_reports(&self) -> usize {
        let mut pending = self.inner.lifecycle.reports_pending.subscribe();
        let limit = self.inner.settings.report_drain;
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
}
