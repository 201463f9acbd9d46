//! The runc executor's side of job networks (`--container-network
//! namespace`, issue 21): which namespace each container joins, what the
//! worker keeps of it across a restart, and its counters.
//!
//! A job's [`JobNetwork`] is acquired from [`Networks`] before its bundle
//! is written and released after its container is deleted (so no process
//! of the job is left in the namespace when the next job gets it). While
//! the job runs, `{records}/{container id}.json` holds
//! `{"key": JobKey, "network": JobNetwork}`: a restarted worker reads
//! these, keeps the namespaces of the jobs whose shims still run and have
//! not recorded their end ([`Networks::open_keeping`]), and hands each back
//! with its re-attached container; any other record is dropped with its
//! namespace.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use batch_worker_model::{JobAddress, JobKey};

use crate::network::{JobNetwork, NetworkConfig, NetworkError, NetworkKind, Networks};
use crate::runner::AttemptDir;

/// The job networks of a runc runner: the namespaces, the records of those
/// in use, and the worker's address for `HAIL_BATCH_WORKER_IP`.
#[derive(Debug, Clone)]
pub struct JobNetworks {
    networks: Networks,
    records: PathBuf,
    worker_ip: String,
    /// In use, by container id.
    in_use: Arc<Mutex<HashMap<String, JobNetwork>>>,
}

/// What a record file holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    key: JobKey,
    network: JobNetwork,
}

impl JobNetworks {
    /// Opens the job networks of `config` for the worker on `data_dir`,
    /// keeping those of jobs whose shims outlived the last worker (their
    /// records in `records`, made if missing); `worker_ip` is what jobs
    /// with a port get in `HAIL_BATCH_WORKER_IP`.
    ///
    /// # Errors
    /// [`NetworkError`]: the records directory cannot be made, the config
    /// is unusable, or `ip` / `iptables` failed.
    pub async fn open(
        config: NetworkConfig,
        records: PathBuf,
        data_dir: &Path,
        worker_ip: String,
    ) -> Result<JobNetworks, NetworkError> {
        std::fs::create_dir_all(&records).map_err(|source| NetworkError::Io {
            path: records.clone(),
            source,
        })?;
        let (records_dir, data) = (records.clone(), data_dir.to_owned());
        let found = tokio::task::spawn_blocking(move || read_records(&records_dir, &data))
            .await
            .unwrap_or_default();
        let mut keep = Vec::new();
        let mut in_use = HashMap::new();
        for (id, record) in found {
            keep.push(record.network.clone());
            in_use.insert(id, record.network);
        }
        let (networks, lost) = Networks::open_keeping(config, keep).await?;
        for job in lost {
            in_use.retain(|id, kept: &mut JobNetwork| {
                let gone = *kept == job;
                if gone {
                    tracing::warn!(container = %id, netns = %job.netns_name, "a job's network did not survive the restart; its container cannot use it");
                    let _ = std::fs::remove_file(records.join(format!("{id}.json")));
                }
                !gone
            });
        }
        if !in_use.is_empty() {
            tracing::info!(
                kept = in_use.len(),
                "job networks of running containers kept"
            );
        }
        Ok(JobNetworks {
            networks,
            records,
            worker_ip,
            in_use: Arc::new(Mutex::new(in_use)),
        })
    }

    fn in_use(&self) -> std::sync::MutexGuard<'_, HashMap<String, JobNetwork>> {
        self.in_use.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker's address, for `HAIL_BATCH_WORKER_IP`.
    pub fn worker_ip(&self) -> &str {
        &self.worker_ip
    }

    /// A network of `kind` for container `id` (attempt `key`), with the
    /// job's TCP `port` published when Some; recorded until
    /// [`JobNetworks::release`].
    ///
    /// # Errors
    /// [`NetworkError`] from [`Networks::acquire`], or the record could
    /// not be written (the network is given back).
    pub async fn acquire(
        &self,
        key: &JobKey,
        id: &str,
        kind: NetworkKind,
        port: Option<u16>,
    ) -> Result<JobNetwork, NetworkError> {
        let network = self.networks.acquire(kind, port).await?;
        let path = self.records.join(format!("{id}.json"));
        let record = Record {
            key: key.clone(),
            network: network.clone(),
        };
        let bytes = serde_json::to_vec(&record).expect("a record serialises");
        let written = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || std::fs::write(&path, bytes))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        };
        if let Err(source) = written {
            let _ = self.networks.release(network).await;
            return Err(NetworkError::Io { path, source });
        }
        self.in_use().insert(id.to_owned(), network.clone());
        Ok(network)
    }

    /// The network container `id` holds, if any (a re-attached container's
    /// after a restart).
    pub fn of(&self, id: &str) -> Option<JobNetwork> {
        self.in_use().get(id).cloned()
    }

    /// Gives container `id`'s network back (its port unpublished, the
    /// namespace pooled or deleted) and removes its record. Blocking: runs
    /// on a thread of its own with its own runtime, so it may be called
    /// from any thread. Does nothing when `id` holds none.
    pub fn release_blocking(&self, id: &str) {
        let record = self.records.join(format!("{id}.json"));
        let Some(network) = self.in_use().remove(id) else {
            let _ = std::fs::remove_file(&record);
            return;
        };
        let (networks, netns) = (self.networks.clone(), network.netns_name.clone());
        let released =
            on_own_runtime(
                async move { networks.release(network).await.map_err(|e| e.to_string()) },
            );
        match released {
            Ok(()) => tracing::debug!(container = id, %netns, "job network released"),
            Err(e) => {
                tracing::warn!(container = id, %netns, error = %e, "job network not released cleanly")
            }
        }
        let _ = std::fs::remove_file(&record);
    }

    /// Bytes (up, down) container `id`'s job sent and received since its
    /// network was acquired (or kept at a restart); `None` without one.
    pub fn bytes(&self, id: &str) -> Option<(u64, u64)> {
        let network = self.of(id)?;
        let (received, sent) = self.networks.counters(&network).ok()?;
        Some((sent, received))
    }

    /// Removes every namespace, veth and rule, when no job holds a
    /// network (the worker is stopping with no container left); else
    /// leaves them all, for the jobs (and a restarted worker). Blocking,
    /// on a thread of its own, as [`JobNetworks::release_blocking`].
    pub fn close_blocking(&self) {
        let held = self.in_use().len();
        if held > 0 {
            tracing::warn!(
                held,
                "job networks still held at exit: kept for a restarted worker"
            );
            return;
        }
        let networks = self.networks.clone();
        let closed =
            on_own_runtime(async move { networks.close().await.map_err(|e| e.to_string()) });
        match closed {
            Ok(()) => tracing::info!("job networks removed"),
            Err(e) => tracing::warn!(error = %e, "job networks not removed cleanly"),
        }
    }
}

/// Runs `task` to its end on a thread of its own with a runtime of its own:
/// callable from any thread, async or not (the `ip` and `iptables` calls
/// need a runtime; the caller's may be busy or absent).
pub(crate) fn on_own_runtime<T: Send + 'static>(
    task: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
) -> Result<T, String> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(task)
    })
    .join()
    .unwrap_or_else(|_| Err("the network thread panicked".to_owned()))
}

/// The address `network` gives a job with `port`, for the journal and the
/// status.
pub fn address(network: &JobNetwork) -> JobAddress {
    JobAddress {
        mode: match network.kind {
            NetworkKind::Public => "public",
            NetworkKind::Private => "private",
        }
        .to_owned(),
        ip: network.job_ip,
        port: network.published.map(|(_, job)| job),
        host_port: network.published.map(|(host, _)| host),
    }
}

/// The records of `records` whose attempt's shim still runs or recorded
/// its end (by container id); the others' files are removed.
fn read_records(records: &Path, data_dir: &Path) -> Vec<(String, Record)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(records).into_iter().flatten().flatten() {
        let path = entry.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .map(str::to_owned)
        else {
            continue;
        };
        let record: Option<Record> = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        // Kept while its container runs: its shim runs and has not
        // recorded the end (an ended one's network is of no more use; its
        // re-attach finds none to give back).
        let live = record.as_ref().is_some_and(|r| {
            let root = AttemptDir::new(data_dir, &r.key).root;
            super::container_id(&r.key) == id
                && crate::runner::ShimHandle::find(&root).is_some()
                && crate::shim::read_exit(&root).is_none()
        });
        match record {
            Some(record) if live => found.push((id, record)),
            _ => {
                tracing::info!(record = %path.display(), "a job network record of a container that is gone: dropped");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    found
}
