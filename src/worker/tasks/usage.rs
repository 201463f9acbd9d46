//! The resource-usage task: while a job's process runs, its cgroup's CPU
//! time and memory and the size of its files are sampled at Hail's period
//! (every 100 ms for the first 5 s, then every 5 s: `resource_usage.py`)
//! into the attempt's `main.resource_usage`, in Hail's binary format
//! ([`crate::resource_usage`]). The file goes to the logs store with the
//! main log; `GET .../resource_usage` reads it while the job runs.
//!
//! A process without a cgroup of its own (`--job-cgroups off`, or a
//! runner without cgroups) gets no file: the endpoint answers Hail's "no
//! data" (the header alone), and so does the logs store. A v2
//! cgroup without the `cpu` and `memory` controllers is read through its
//! processes in `/proc` instead ([`crate::cgroup::JobCgroup::usage`]). There
//! are no per-job network counters yet, so both network fields are written
//! as missing (NaN).

use std::io::Write;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use batch_worker_model::JobKey;
use tokio_util::sync::CancellationToken;

use super::super::{now_ms, Worker};
use crate::resource_usage::{self, Readings, Sampler};
use crate::runner::AttemptDir;

/// The monotonic clock's origin (the cpu rate's clock).
static MONOTONIC_ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Worker {
    /// Samples attempt `key`'s usage until `stop` is cancelled. A file
    /// left by the attempt before a restart is appended to.
    pub(super) async fn sample_usage(self, key: JobKey, stop: CancellationToken) {
        let dir = AttemptDir::new(&self.inner.settings.data_dir, &key);
        let path = dir.task_resource_usage("main");
        let runner = self.inner.ports.runner.clone();
        // One blocking step per sample, off the runtime's threads: read the
        // cgroup, then append the record (or, the first time, open the
        // file and write the header). No cgroup: no file at all (the
        // endpoint and the logs upload give Hail's "no data").
        let mut file: Option<std::fs::File> = None;
        let work = dir.work();
        let began = Instant::now();
        let mut sampler = Sampler::new();
        let mut files = FilesMeasure::default();
        // CPU time read from /proc (a cgroup without accounting) drops
        // when a process ends: never counted backwards.
        let mut cpu_seen = 0u64;
        for tries in 0u32.. {
            let (probe_key, probe_runner) = (key.clone(), runner.clone());
            let usage = tokio::task::spawn_blocking(move || {
                probe_runner
                    .usage(&probe_key)
                    .map(|usage| (usage, probe_runner.network_bytes(&probe_key)))
            })
            .await
            .ok()
            .flatten();
            let Some((usage, network_bytes)) = usage else {
                return;
            };
            let non_io_storage_bytes = files.measure(&work).await;
            let readings = Readings {
                time_ms: now_ms(),
                monotonic_ns: MONOTONIC_ORIGIN.elapsed().as_nanos() as u64,
                memory_bytes: usage.memory_bytes.map(|b| b as i64),
                cpu_usage_usec: usage.cpu_usec.map(|usec| {
                    cpu_seen = cpu_seen.max(usec);
                    cpu_seen
                }),
                non_io_storage_bytes,
                io_storage_bytes: 0,
                net_up_bytes: network_bytes.map(|(up, _)| up),
                net_down_bytes: network_bytes.map(|(_, down)| down),
            };
            let record = sampler.sample(readings);
            if file.is_none() || record.is_some() {
                let (path, held) = (path.clone(), file.take());
                let written = tokio::task::spawn_blocking(move || {
                    let mut file = match held {
                        Some(file) => file,
                        None => {
                            let mut file = std::fs::OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(&path)?;
                            // A file left from before a restart goes on.
                            if file.metadata()?.len() == 0 {
                                file.write_all(&resource_usage::header())?;
                            }
                            file
                        }
                    };
                    if let Some(record) = record {
                        file.write_all(&record.encode())?;
                    }
                    Ok::<_, std::io::Error>(file)
                })
                .await;
                match written {
                    Ok(Ok(held)) => file = Some(held),
                    Ok(Err(e)) => {
                        tracing::warn!(%key, error = %e, "resource usage not recorded; sampling stops");
                        return;
                    }
                    Err(_) => return,
                }
            }
            let delay = resource_usage::next_delay(began.elapsed(), tries, rand::random());
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// The size of a job's files, measured by a walk paused for at least ten
/// times its own length (a job with many files costs at most a tenth of a
/// core), the last measure reused in between.
#[derive(Default)]
struct FilesMeasure {
    last: Option<(Instant, Duration, i64)>,
}

impl FilesMeasure {
    async fn measure(&mut self, work: &std::path::Path) -> i64 {
        if let Some((at, took, bytes)) = self.last {
            if at.elapsed() < took * 10 {
                return bytes;
            }
        }
        let work = work.to_path_buf();
        let began = Instant::now();
        let bytes = tokio::task::spawn_blocking(move || crate::shim::disk_usage(&work))
            .await
            .unwrap_or(0) as i64;
        self.last = Some((began, began.elapsed(), bytes));
        bytes
    }
}
