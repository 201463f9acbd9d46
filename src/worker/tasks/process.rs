//! The process task (`SpawnProcess`): make the attempt's directory, spawn,
//! `process_started`, wait (timeout, kill token), `process_exited`. The
//! process holds the job's grant (cores and memory) until it ends.

use std::sync::Arc;

use batch_worker_model::{Event, JobKey};
use tokio_util::sync::CancellationToken;

use super::super::lifecycle::Counted;
use super::super::Worker;
use super::JobFiles;
use crate::admission::Grant;
use crate::image::PulledImage;
use crate::job_spec::JobSpec;
use crate::runner::{AttemptDir, LaunchError, ProcessRequest, SPAWN_TIMEOUT};

/// Writes `bytes` to `path`, readable by its owner only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

impl Worker {
    /// A process re-attached at start (see `recovery`): waits for it as the
    /// process task does, holding its grant, and records its end.
    pub(super) async fn wait_reattached(
        self,
        key: JobKey,
        process: Box<dyn crate::runner::Process>,
        timeout: Option<std::time::Duration>,
        kill: CancellationToken,
        grant: Option<Grant>,
    ) {
        let live = Counted::new(&self.inner.lifecycle.live_processes);
        let sampling = self.start_sampling(&key);
        let (exit, duration_ms) = process.wait(timeout, kill).await;
        sampling.cancel();
        // A job that ended while no worker ran ended when its shim says
        // (`exit.json`), not now: its end time and what it is billed for
        // are its own.
        let dir = AttemptDir::new(&self.inner.settings.data_dir, &key);
        let ended = crate::shim::read_exit(&dir.root)
            .map(|exit| exit.end_time_ms)
            .filter(|at| *at < super::super::now_ms() - 1000);
        let ended = ended.map(|at| {
            // Never before the attempt's own last change of state.
            let last = self
                .table()
                .entry_mut(&key)
                .and_then(|e| {
                    e.view
                        .history()
                        .iter()
                        .rev()
                        .find(|r| !r.event.is_delivery())
                        .map(|r| r.time_ms)
                })
                .unwrap_or(at);
            at.max(last)
        });
        drop(self.record_at(
            &key,
            Event::ProcessExited { exit, duration_ms },
            super::super::table::Attach::Nothing,
            ended,
        ));
        drop(grant);
        drop(live);
    }

    /// Starts sampling `key`'s resource usage (see `usage.rs`); cancel the
    /// token when the process has ended.
    fn start_sampling(&self, key: &JobKey) -> CancellationToken {
        let stop = CancellationToken::new();
        tokio::spawn(self.clone().sample_usage(key.clone(), stop.clone()));
        stop
    }

    /// The process task.
    pub(super) async fn run_process(
        self,
        key: JobKey,
        spec: Arc<JobSpec>,
        kill: CancellationToken,
        grant: Option<Grant>,
        image: Option<Arc<PulledImage>>,
    ) {
        // Counted from before the spawn, so that shutdown also waits for a
        // process whose spawn is in flight.
        let live = Counted::new(&self.inner.lifecycle.live_processes);
        self.spawn_and_wait(key, &spec, kill, image).await;
        drop(grant);
        drop(live);
    }

    async fn spawn_and_wait(
        &self,
        key: JobKey,
        spec: &JobSpec,
        kill: CancellationToken,
        image: Option<Arc<PulledImage>>,
    ) {
        let settings = &self.inner.settings;
        let request = ProcessRequest {
            key: key.clone(),
            argv: spec.command.clone(),
            env: spec.env.clone(),
            dir: AttemptDir::new(&settings.data_dir, &key),
            image,
            cores_mcpu: spec.cores_mcpu,
            memory_bytes: spec.memory_limit_bytes(settings.capacity.memory_bytes),
            secrets: spec.secrets.clone(),
            timeout: spec.timeout,
            storage_bytes: spec.storage_bytes(),
            network: spec.network,
            port: spec.port,
        };
        if kill.is_cancelled() {
            // Cancelled while the spec was being turned into a process.
            let message = "cancelled before the process started".to_owned();
            self.record(&key, Event::LaunchFailed { message });
            return;
        }
        let dir = request.dir.clone();
        // For a restarted worker re-attaching to the process (only a runner
        // whose processes outlive the worker); without it (a full disk)
        // the job is ended at a restart instead.
        let record = self
            .inner
            .ports
            .runner
            .reattaches()
            .then(|| serde_json::to_vec(spec).unwrap_or_default());
        let made = move || {
            dir.create()?;
            if let Some(record) = record {
                if let Err(e) = write_private(&dir.spec_record(), &record) {
                    tracing::warn!(error = %e, "spec.json not written: the job cannot be re-attached after a restart");
                }
            }
            Ok(())
        };
        if let Err(e) = self.job_files(JobFiles::Make, made).await {
            let message = format!("cannot create the attempt's directory: {e}");
            self.record(&key, Event::LaunchFailed { message });
            return;
        }
        // A spawn that hangs (a program on a dead network mount) or is
        // cancelled is abandoned: dropping it drops the child, if one ever
        // appears, which kills it (kill_on_drop).
        let spawned = tokio::select! {
            spawned = self.inner.ports.runner.spawn(&request) => spawned,
            () = kill.cancelled() => Err(LaunchError("cancelled while the process was starting".into())),
            () = tokio::time::sleep(SPAWN_TIMEOUT) => Err(LaunchError(format!(
                "the process did not start within {} s", SPAWN_TIMEOUT.as_secs()
            ))),
        };
        match spawned {
            Err(e) => self.record(&key, Event::LaunchFailed { message: e.0 }),
            Ok(process) => {
                let network = process.network().map(Box::new);
                self.record(
                    &key,
                    Event::ProcessStarted {
                        pid: process.pid(),
                        network,
                    },
                );
                let sampling = self.start_sampling(&key);
                let (exit, duration_ms) = process.wait(spec.timeout, kill).await;
                sampling.cancel();
                self.record(&key, Event::ProcessExited { exit, duration_ms });
            }
        }
    }
}
