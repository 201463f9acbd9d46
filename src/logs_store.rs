//! The logs store: where a finished attempt's `status.json`, its tasks'
//! logs and resource-usage files go, so that Hail's front end (and people)
//! can read them after the worker is gone.
//!
//! Keys (source: Hail's `file_store.py` `FileStore`; sample
//! `tests/fixtures/samples/hail/paths.md`), `task` one of `input`, `main`,
//! `output`:
//! - `{root}/{batch_id}/{job_id}/{attempt_id}/status.json` (format > 1)
//! - `{root}/{batch_id}/{job_id}/{attempt_id}/{task}/log` and
//!   `.../{task}/resource_usage`
//! - format 1: `{root}/{batch_id}/{job_id}/{task}/log` and
//!   `.../{task}/resource_usage`, and no `status.json`
//!
//! `root` is Hail's `batch_logs_root`:
//! `{BATCH_LOGS_STORAGE_URI}/batch/logs/{INSTANCE_ID}/batch` on a Hail
//! deployment (the store URL's path).
//!
//! Each upload is retried with backoff and jitter within an overall
//! deadline. The log is streamed from its file (never read whole into
//! memory) through `object_store`'s buffered writer, which switches to a
//! multipart upload for large logs.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use batch_worker_model::JobKey;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::runner::AttemptDir;
use crate::transfer::{upload_file, UploadFailure};

/// Attempts of one upload, the first included.
pub const UPLOAD_ATTEMPTS: usize = 5;
/// Overall deadline of an attempt's uploads, retries included.
pub const UPLOAD_DEADLINE: Duration = Duration::from_secs(60);

/// Why an attempt's status or log is not in the logs store.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The store kept failing.
    #[error("writing {key} failed: {source}")]
    Store {
        /// The object's key.
        key: String,
        /// The last error.
        #[source]
        source: object_store::Error,
    },
    /// Reading the local log failed.
    #[error("reading a task's log or resource-usage file failed: {0}")]
    LocalLog(std::io::Error),
    /// The deadline passed.
    #[error("the uploads did not finish within {} s", UPLOAD_DEADLINE.as_secs())]
    Timeout,
}

/// Hail's tasks, in the order they run.
pub const TASKS: [&str; 3] = ["input", "main", "output"];

/// The logs store: an object store and the root its keys live under.
#[derive(Debug, Clone)]
pub struct LogsStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
    jitter_seed: Option<u64>,
}

impl LogsStore {
    /// Keys live under `root` in `store`.
    pub fn new(store: Arc<dyn ObjectStore>, root: Path) -> LogsStore {
        LogsStore {
            store,
            root,
            jitter_seed: None,
        }
    }

    /// The same store with the retry jitter drawn from `seed` (instead of
    /// a random seed): simulations set it, so that a run repeats.
    pub fn with_jitter_seed(mut self, seed: u64) -> LogsStore {
        self.jitter_seed = Some(seed);
        self
    }

    /// The underlying store (tests read back what was written).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn attempt_prefix(&self, key: &JobKey) -> Path {
        self.root
            .clone()
            .join(key.batch_id.to_string())
            .join(key.job_id.to_string())
            .join(key.attempt_id.as_str())
    }

    /// Where a task's files go: Hail's `FileStore` keys, with the attempt
    /// for format > 1 and without it for format 1
    /// (`has_attempt_in_log_path`).
    fn task_prefix(&self, key: &JobKey, format_version: u32, task: &str) -> Path {
        if format_version == 1 {
            self.root
                .clone()
                .join(key.batch_id.to_string())
                .join(key.job_id.to_string())
                .join(task)
        } else {
            self.attempt_prefix(key).join(task)
        }
    }

    /// `{root}/{batch_id}/{job_id}/{attempt_id}/status.json` (format > 1
    /// only: format 1's full status travels in `job_complete`).
    pub fn status_key(&self, key: &JobKey) -> Path {
        self.attempt_prefix(key).join("status.json")
    }

    /// `{root}/{batch_id}/{job_id}/{attempt_id}/{task}/log`; format 1:
    /// `{root}/{batch_id}/{job_id}/{task}/log`.
    pub fn log_key(&self, key: &JobKey, format_version: u32, task: &str) -> Path {
        self.task_prefix(key, format_version, task).join("log")
    }

    /// `.../{task}/resource_usage`, beside [`LogsStore::log_key`].
    pub fn resource_usage_key(&self, key: &JobKey, format_version: u32, task: &str) -> Path {
        self.task_prefix(key, format_version, task)
            .join("resource_usage")
    }

    /// Writes `status.json` (format > 1) and, for each of Hail's tasks,
    /// its log and resource-usage file where `dir` has them, each retried
    /// ([`UPLOAD_ATTEMPTS`]), all within [`UPLOAD_DEADLINE`].
    ///
    /// # Errors
    /// [`UploadError`]: the first upload that could not be done.
    pub async fn upload(
        &self,
        key: &JobKey,
        format_version: u32,
        status_json: Vec<u8>,
        dir: &AttemptDir,
    ) -> Result<(), UploadError> {
        let work = async {
            if format_version > 1 {
                let status_key = self.status_key(key);
                let status = PutPayload::from(status_json);
                (|| async { self.store.put(&status_key, status.clone()).await })
                    .retry(backoff(self.jitter_seed))
                    .await
                    .map_err(|source| UploadError::Store {
                        key: status_key.to_string(),
                        source,
                    })?;
            }
            for task in TASKS {
                let files = [
                    (dir.task_log(task), self.log_key(key, format_version, task)),
                    (
                        dir.task_resource_usage(task),
                        self.resource_usage_key(key, format_version, task),
                    ),
                ];
                // A task that ran but was not sampled (its process had no
                // cgroup) gets Hail's "no data", as Hail uploads for it.
                let ran = tokio::fs::try_exists(dir.task_log(task))
                    .await
                    .unwrap_or(false);
                let sampled = tokio::fs::try_exists(dir.task_resource_usage(task))
                    .await
                    .unwrap_or(false);
                if ran && !sampled {
                    let object = self.resource_usage_key(key, format_version, task);
                    let no_data = PutPayload::from(crate::resource_usage::no_data());
                    (|| async { self.store.put(&object, no_data.clone()).await })
                        .retry(backoff(self.jitter_seed))
                        .await
                        .map_err(|source| UploadError::Store {
                            key: object.to_string(),
                            source,
                        })?;
                }
                for (file, object) in files {
                    if tokio::fs::try_exists(&file).await.unwrap_or(false) {
                        (|| self.stream_file(&file, &object))
                            .retry(backoff(self.jitter_seed))
                            .when(|e| matches!(e, UploadError::Store { .. }))
                            .await?;
                    }
                }
            }
            Ok(())
        };
        tokio::time::timeout(UPLOAD_DEADLINE, work)
            .await
            .unwrap_or(Err(UploadError::Timeout))
    }

    async fn stream_file(&self, file: &FsPath, key: &Path) -> Result<(), UploadError> {
        upload_file(self.store.clone(), key, file)
            .await
            .map(drop)
            .map_err(|e| match e {
                UploadFailure::Local(e) => UploadError::LocalLog(e),
                UploadFailure::Store(reason) => UploadError::Store {
                    key: key.to_string(),
                    source: object_store::Error::Generic {
                        store: "logs",
                        source: reason.into(),
                    },
                },
            })
    }
}

fn backoff(jitter_seed: Option<u64>) -> ExponentialBuilder {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(UPLOAD_ATTEMPTS - 1)
        .with_jitter();
    match jitter_seed {
        Some(seed) => backoff.with_jitter_seed(seed),
        None => backoff,
    }
}
