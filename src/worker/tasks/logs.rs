//! The logs task (`UploadLogs`): `status.json` and the tasks' logs and
//! resource-usage files to the logs store, the attempt's `work/` directory removed, then `logs_uploaded` or
//! `logs_upload_failed` (either asks for `job_complete`).

use batch_worker_model::{Event, JobKey};
use tracing::Instrument;

use super::super::lifecycle::Counted;
use super::super::Worker;
use super::JobFiles;
use crate::runner::AttemptDir;

impl Worker {
    /// Starts the logs upload of `key` (counted with the reports: its
    /// `job_complete` follows).
    pub(super) fn upload_logs(
        &self,
        key: JobKey,
        format_version: u32,
        status: Vec<u8>,
        span: tracing::Span,
    ) {
        let pending = Counted::new(&self.inner.lifecycle.reports_pending);
        let worker = self.clone();
        tokio::spawn(
            async move {
                let _pending = pending;
                let started = std::time::Instant::now();
                let dir = AttemptDir::new(&worker.inner.settings.data_dir, &key);
                let uploaded = worker
                    .inner
                    .ports
                    .logs
                    .upload(&key, format_version, status, &dir)
                    .await;
                let duration_ms = started.elapsed().as_millis() as u64;
                // The attempt is over: its scratch space (inputs, outputs,
                // partial downloads) and its spec.json go before the result
                // is recorded;
                // main.log stays for `GET .../log/main` while the attempt is
                // kept.
                let (work, spec) = (dir.work(), dir.spec_record());
                let removed = move || {
                    // The spec kept for a re-attach is of no more use (and
                    // may name what the job was given).
                    let _ = std::fs::remove_file(spec);
                    std::fs::remove_dir_all(work)
                };
                match worker
                    .job_files(JobFiles::Remove, removed)
                    .await
                {
                    Ok(()) => tracing::debug!(%key, "working directory removed"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(%key, error = %e, "working directory not removed"),
                }
                match uploaded {
                    Ok(()) => {
                        tracing::debug!(%key, duration_ms, "status and log uploaded");
                        worker.record(&key, Event::LogsUploaded);
                    }
                    Err(e) => {
                        tracing::warn!(%key, duration_ms, error = %e, "status and log upload failed");
                        let message = e.to_string();
                        worker.record(&key, Event::LogsUploadFailed { message });
                    }
                }
            }
            .instrument(span),
        );
    }
}
