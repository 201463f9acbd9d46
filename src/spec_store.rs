//! The spec store: reads one job's spec from a bunch in any `object_store`
//! backend, classifying every failure into a spec error kind.
//!
//! One spec load is two range reads: 16 bytes of `specs.idx`, then the
//! spec's byte range of `specs` (see [`crate::bunch`]). Never the whole file.
//! Failures map to [`ErrorKind`]s:
//!
//! | what happened                                              | kind               |
//! |------------------------------------------------------------|--------------------|
//! | `specs` or `specs.idx` not found                           | `spec_missing`     |
//! | index short/garbled, offsets reversed or past the end, over the size cap, bytes not a valid spec | `spec_corrupt` |
//! | the whole load took longer than the deadline               | `spec_timeout`     |
//! | transient errors until retries ran out; credentials refused | `spec_unavailable` |
//!
//! This file is long (about 610 lines) because the spec read's retries,
//! deadline, concurrency cap and error kinds are one protocol; the bunch
//! layout is in `bunch.rs`, spec validation in `job_spec.rs`.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use batch_worker_model::ErrorKind;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::Semaphore;

use crate::bunch::{self, BunchKeys};
use crate::job_spec::{JobSpec, SpecCorrupt};
use crate::wire::{CreateJob, SpecSource};

/// Limits of spec loading.
#[derive(Debug, Clone)]
pub struct SpecLoadConfig {
    /// Largest spec accepted, in bytes (default 16 MiB). Larger is
    /// `spec_corrupt`, decided from the index before reading.
    pub max_spec_bytes: u64,
    /// Deadline for one whole load, retries included (default 60 s).
    pub deadline: Duration,
    /// Attempts per read on transient errors, the first included (default 5).
    pub max_attempts: usize,
    /// First retry delay; doubles up to `max_backoff` (default 100 ms).
    pub min_backoff: Duration,
    /// Longest retry delay (default 5 s).
    pub max_backoff: Duration,
    /// Spec loads in flight at once (default 256); further loads wait.
    pub max_concurrent_loads: usize,
    /// Seed of the retry jitter; `None` (the default): a random one.
    /// Simulations set it, so that a run repeats.
    pub jitter_seed: Option<u64>,
}

impl Default for SpecLoadConfig {
    fn default() -> Self {
        SpecLoadConfig {
            max_spec_bytes: 16 * 1024 * 1024,
            deadline: Duration::from_secs(60),
            max_attempts: 5,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_concurrent_loads: 256,
            jitter_seed: None,
        }
    }
}

/// Why a spec could not be loaded: the `Errored{kind, message}` to record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct SpecLoadError {
    /// `spec_missing`, `spec_corrupt`, `spec_timeout` or `spec_unavailable`.
    pub kind: ErrorKind,
    /// What went wrong, naming the object and the bytes.
    pub message: String,
}

impl SpecLoadError {
    fn corrupt(message: impl Into<String>) -> SpecLoadError {
        SpecLoadError {
            kind: ErrorKind::SpecCorrupt,
            message: message.into(),
        }
    }
}

impl From<SpecCorrupt> for SpecLoadError {
    fn from(e: SpecCorrupt) -> Self {
        SpecLoadError::corrupt(e.0)
    }
}

impl From<SpecReadError> for SpecLoadError {
    fn from(e: SpecReadError) -> Self {
        SpecLoadError {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// Why the bytes of a spec could not be read from its bunch, typed: what
/// [`SpecStore::read_spec`] turns into a [`SpecLoadError`] (`Display` is
/// its message, [`SpecReadError::kind`] its kind). Keys are shown relative
/// to the store's root (`7/bunch/{token}/specs.idx`); offsets and sizes are
/// in bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecReadError {
    /// `specs` or `specs.idx` does not exist (`spec_missing`).
    #[error("{key} does not exist in the spec store")]
    NotFound {
        /// The missing object.
        key: String,
    },
    /// `job_id - start_job_id` is negative or overflows (`spec_corrupt`).
    #[error("job {job_id} cannot be in a bunch starting at job {start_job_id}")]
    NotInBunch {
        /// The job asked for.
        job_id: i64,
        /// The bunch's first job.
        start_job_id: i64,
    },
    /// `specs.idx` ends before this job's 16-byte entry (`spec_corrupt`).
    #[error(
        "{key} is {size} bytes, too short for bytes {}..{} (the index holds {} offsets; \
         this job is not in the bunch, or the index is truncated)",
        entry.start, entry.end, size / bunch::OFFSET_BYTES
    )]
    IndexTooShort {
        /// The index object.
        key: String,
        /// Its size.
        size: u64,
        /// The entry's byte range in the index.
        entry: Range<u64>,
    },
    /// The entry read is not 16 bytes (`spec_corrupt`).
    #[error("{key}: index entry for job {job_id} is {len} bytes, expected 16")]
    EntrySize {
        /// The index object.
        key: String,
        /// The job.
        job_id: i64,
        /// The entry's length.
        len: usize,
    },
    /// The job's end offset is before its start offset (`spec_corrupt`).
    #[error("{key}: offsets for job {job_id} are reversed (start {start} > end {end})")]
    OffsetsReversed {
        /// The index object.
        key: String,
        /// The job.
        job_id: i64,
        /// The job's start offset.
        start: u64,
        /// The job's end offset.
        end: u64,
    },
    /// The job's spec is larger than the cap (`spec_corrupt`; decided
    /// from the index, before reading `specs`).
    #[error("{key}: the spec of job {job_id} is {size} bytes, over the {cap} byte cap")]
    OverCap {
        /// The specs object.
        key: String,
        /// The job.
        job_id: i64,
        /// `end - start`.
        size: u64,
        /// [`SpecLoadConfig::max_spec_bytes`].
        cap: u64,
    },
    /// `specs` ends before the job's end offset (`spec_corrupt`).
    #[error("{key} is {size} bytes, but the index places the spec at bytes {}..{}", range.start, range.end)]
    SpecsTooShort {
        /// The specs object.
        key: String,
        /// Its size.
        size: u64,
        /// The job's offsets, `start..end`.
        range: Range<u64>,
    },
    /// The store refused the credentials (`spec_unavailable`, not retried).
    #[error("{key}: the store refused the credentials: {reason}")]
    Refused {
        /// The object read.
        key: String,
        /// The store's error.
        reason: String,
    },
    /// Transient errors (or short reads of a long enough object) until the
    /// retries ran out (`spec_unavailable`).
    #[error("{key}: bytes {}..{} still unreadable after {attempts} attempts: {reason}", range.start, range.end)]
    Unreadable {
        /// The object read.
        key: String,
        /// The byte range asked for.
        range: Range<u64>,
        /// Attempts made, the first included.
        attempts: usize,
        /// The last failure.
        reason: String,
    },
    /// The whole read ran past the deadline (`spec_timeout`).
    #[error(
        "reading the spec of job {job_id} from bunch {token} took longer than \
         the {deadline_ms} ms deadline (store: {store})"
    )]
    TimedOut {
        /// The job.
        job_id: i64,
        /// The bunch's token.
        token: String,
        /// [`SpecLoadConfig::deadline`], in ms.
        deadline_ms: u128,
        /// The store, as it displays itself.
        store: String,
    },
    /// The read's task failed (panicked) (`spec_unavailable`).
    #[error("the spec store failed unexpectedly: {0}")]
    Failed(String),
}

impl SpecReadError {
    /// The error kind the worker records for this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SpecReadError::NotFound { .. } => ErrorKind::SpecMissing,
            SpecReadError::NotInBunch { .. }
            | SpecReadError::IndexTooShort { .. }
            | SpecReadError::EntrySize { .. }
            | SpecReadError::OffsetsReversed { .. }
            | SpecReadError::OverCap { .. }
            | SpecReadError::SpecsTooShort { .. } => ErrorKind::SpecCorrupt,
            SpecReadError::TimedOut { .. } => ErrorKind::SpecTimeout,
            SpecReadError::Refused { .. }
            | SpecReadError::Unreadable { .. }
            | SpecReadError::Failed(_) => ErrorKind::SpecUnavailable,
        }
    }
}

/// The bytes of one job's spec and where they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecBytes {
    /// The bunch's two keys (full keys, under the store's root).
    pub keys: BunchKeys,
    /// The bytes of `specs.idx` read: the job's entry (16 bytes).
    pub entry: Range<u64>,
    /// The job's offsets from that entry: the bytes of `specs` read
    /// (`start..end`; nothing is read when they are equal).
    pub range: Range<u64>,
    /// The spec's bytes (`range.end - range.start` of them), not validated.
    pub bytes: Bytes,
}

/// Reads job specs from bunches under a root of one object store.
///
/// Store IO runs on a small runtime of its own ("spec-io"): a store whose
/// reads hang in blocking threads (a FIFO or a dead mount under a `file://`
/// root) can exhaust only that runtime's blocking threads, never those the
/// worker needs to start processes or serve logs.
#[derive(Debug, Clone)]
pub struct SpecStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
    config: SpecLoadConfig,
    permits: Arc<Semaphore>,
    io: Arc<IoRuntime>,
}

/// The spec store's own runtime; shut down without waiting when the last
/// [`SpecStore`] clone goes (a thread stuck in a read must not block exit).
#[derive(Debug)]
struct IoRuntime(Option<tokio::runtime::Runtime>);

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// One failed read attempt: retry it, or give up with this error.
enum ReadFailure {
    Transient(String),
    Permanent(SpecReadError),
}

impl SpecStore {
    /// A spec store over `store`, with keys under `root`.
    ///
    /// # Errors
    /// The spec-io runtime's threads could not be started.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        root: Path,
        config: SpecLoadConfig,
    ) -> std::io::Result<SpecStore> {
        let loads = config.max_concurrent_loads.max(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(loads)
            .thread_name("spec-io")
            .enable_all()
            .build()?;
        Ok(SpecStore {
            store,
            root,
            config,
            permits: Arc::new(Semaphore::new(loads)),
            io: Arc::new(IoRuntime(Some(runtime))),
        })
    }

    /// A spec store whose reads run on the caller's runtime, without a
    /// runtime of its own: for deterministic simulation (one thread, a
    /// paused clock that then also times the store's latency). A read
    /// that hangs in a blocking thread holds one of the caller's.
    pub fn on_caller_runtime(
        store: Arc<dyn ObjectStore>,
        root: Path,
        config: SpecLoadConfig,
    ) -> SpecStore {
        SpecStore {
            store,
            root,
            permits: Arc::new(Semaphore::new(config.max_concurrent_loads.max(1))),
            config,
            io: Arc::new(IoRuntime(None)),
        }
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The limits in force.
    pub fn config(&self) -> &SpecLoadConfig {
        &self.config
    }

    /// `key` as messages show it: relative to the store's root
    /// (`7/bunch/{token}/specs.idx`), the same for every kind of store.
    pub fn shown(&self, key: &Path) -> String {
        let root = self.root.as_ref();
        key.as_ref()
            .strip_prefix(root)
            .map_or(key.as_ref(), |rest| rest.trim_start_matches('/'))
            .to_owned()
    }

    /// The object keys of bunch `token` of batch `batch_id`.
    pub fn bunch_keys(&self, batch_id: i64, token: &str) -> BunchKeys {
        BunchKeys::new(&self.root, batch_id, token)
    }

    /// Loads and validates the spec of a create request, applying its
    /// per-attempt fields. Waits for one of the `max_concurrent_loads`
    /// permits first; the deadline counts from when the permit is held.
    ///
    /// # Errors
    /// [`SpecLoadError`] with the kind and a message a person can act on.
    pub async fn load(&self, job: &CreateJob) -> Result<JobSpec, SpecLoadError> {
        let spec = match &job.spec_source {
            SpecSource::Inline(map) => {
                let size_bytes = serde_json::to_vec(map).map_or(0, |v| v.len() as u64);
                JobSpec::from_object(map.clone(), job.job_id, size_bytes)?
            }
            SpecSource::Bunch {
                token,
                start_job_id,
            } => {
                let _permit = self.permits.acquire().await.map_err(|_| SpecLoadError {
                    kind: ErrorKind::SpecUnavailable,
                    message: "the spec loader is shut down".into(),
                })?;
                let bytes = self
                    .read_spec(job.batch_id, job.job_id, token, *start_job_id)
                    .await?;
                JobSpec::parse(&bytes, job.job_id)?
            }
        };
        Ok(spec.with_attempt(&job.attempt))
    }

    /// Reads the raw bytes of job `job_id`'s spec from bunch `token`: two
    /// range reads, retried on transient errors, under the deadline.
    ///
    /// # Errors
    /// [`SpecLoadError`]; the bytes are not validated as a spec here.
    pub async fn read_spec(
        &self,
        batch_id: i64,
        job_id: i64,
        token: &str,
        start_job_id: i64,
    ) -> Result<Bytes, SpecLoadError> {
        self.read_spec_bytes(batch_id, job_id, token, start_job_id)
            .await
            .map(|read| read.bytes)
            .map_err(SpecLoadError::from)
    }

    /// [`SpecStore::read_spec`], saying where the bytes were read, with the
    /// failure typed: the same reads, retries, deadline and verdicts.
    ///
    /// # Errors
    /// [`SpecReadError`]; the bytes are not validated as a spec here.
    pub async fn read_spec_bytes(
        &self,
        batch_id: i64,
        job_id: i64,
        token: &str,
        start_job_id: i64,
    ) -> Result<SpecBytes, SpecReadError> {
        let deadline = self.config.deadline;
        let this = self.clone();
        let owned_token = token.to_owned();
        let unbounded = async move {
            this.read_spec_unbounded(batch_id, job_id, &owned_token, start_job_id)
                .await
        };
        let Some(io) = self.io.0.as_ref() else {
            // On the caller's runtime: dropping the read ends it.
            return match tokio::time::timeout(deadline, unbounded).await {
                Ok(result) => result,
                Err(_) => Err(self.timed_out(job_id, token)),
            };
        };
        // Aborted when this future is dropped (the attempt was cancelled):
        // a read on the spec-io runtime must not outlive its attempt.
        let mut read = tokio_util::task::AbortOnDropHandle::new(io.spawn(unbounded));
        match tokio::time::timeout(deadline, &mut read).await {
            Ok(Ok(result)) => result,
            Ok(Err(failed)) => Err(SpecReadError::Failed(failed.to_string())),
            Err(_) => {
                read.abort();
                Err(self.timed_out(job_id, token))
            }
        }
    }

    /// The error of a read of job `job_id`'s spec that ran past the deadline.
    fn timed_out(&self, job_id: i64, token: &str) -> SpecReadError {
        SpecReadError::TimedOut {
            job_id,
            token: token.to_owned(),
            deadline_ms: self.config.deadline.as_millis(),
            store: self.store.to_string(),
        }
    }

    async fn read_spec_unbounded(
        &self,
        batch_id: i64,
        job_id: i64,
        token: &str,
        start_job_id: i64,
    ) -> Result<SpecBytes, SpecReadError> {
        let keys = self.bunch_keys(batch_id, token);
        let entry_range =
            bunch::index_range(job_id, start_job_id).ok_or(SpecReadError::NotInBunch {
                job_id,
                start_job_id,
            })?;
        let entry = self.read_range(&keys.index, entry_range.clone()).await?;
        let (start, end) = bunch::decode_entry(&entry).ok_or_else(|| SpecReadError::EntrySize {
            key: self.shown(&keys.index),
            job_id,
            len: entry.len(),
        })?;
        if end < start {
            return Err(SpecReadError::OffsetsReversed {
                key: self.shown(&keys.index),
                job_id,
                start,
                end,
            });
        }
        let size = end - start;
        if size > self.config.max_spec_bytes {
            return Err(SpecReadError::OverCap {
                key: self.shown(&keys.specs),
                job_id,
                size,
                cap: self.config.max_spec_bytes,
            });
        }
        let bytes = if size == 0 {
            Bytes::new()
        } else {
            self.read_range(&keys.specs, start..end).await?
        };
        Ok(SpecBytes {
            keys,
            entry: entry_range,
            range: start..end,
            bytes,
        })
    }

    /// One range read with retries. A failure or a short result is checked
    /// with a `head` call: a missing object or one shorter than the range is
    /// permanent; anything else is transient.
    async fn read_range(&self, key: &Path, range: Range<u64>) -> Result<Bytes, SpecReadError> {
        let shown = self.shown(key);
        let attempt = || async {
            let failure = match self.store.get_range(key, range.clone()).await {
                Ok(bytes) if bytes.len() as u64 == range.end - range.start => return Ok(bytes),
                Ok(bytes) => format!(
                    "short read: {} of {} bytes",
                    bytes.len(),
                    range.end - range.start
                ),
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(ReadFailure::Permanent(missing(&shown)))
                }
                Err(
                    e @ (object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }),
                ) => {
                    return Err(ReadFailure::Permanent(SpecReadError::Refused {
                        key: shown.clone(),
                        reason: e.to_string(),
                    }))
                }
                Err(e) => e.to_string(),
            };
            Err(self.explain(key, &range, failure).await)
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.min_backoff)
            .with_max_delay(self.config.max_backoff)
            .with_max_times(self.config.max_attempts.saturating_sub(1))
            .with_jitter();
        let backoff = match self.config.jitter_seed {
            Some(seed) => backoff.with_jitter_seed(seed),
            None => backoff,
        };
        let mut tries = 0usize;
        attempt
            .retry(backoff)
            .when(|f| matches!(f, ReadFailure::Transient(_)))
            .notify(|f, delay| {
                tries += 1;
                if let ReadFailure::Transient(why) = f {
                    tracing::debug!(key = %key, retry = tries, delay_ms = delay.as_millis() as u64, error = %why, "retrying spec read");
                }
            })
            .await
            .map_err(|f| match f {
                ReadFailure::Permanent(e) => e,
                ReadFailure::Transient(why) => SpecReadError::Unreadable {
                    key: shown.clone(),
                    range: range.clone(),
                    attempts: self.config.max_attempts.max(1),
                    reason: why,
                },
            })
    }

    /// Classifies a failed or short read by asking for the object's size.
    async fn explain(&self, key: &Path, range: &Range<u64>, failure: String) -> ReadFailure {
        let shown = self.shown(key);
        match self.store.head(key).await {
            Err(object_store::Error::NotFound { .. }) => ReadFailure::Permanent(missing(&shown)),
            Ok(meta) if meta.size < range.end => {
                ReadFailure::Permanent(if key.filename() == Some("specs.idx") {
                    SpecReadError::IndexTooShort {
                        key: shown,
                        size: meta.size,
                        entry: range.clone(),
                    }
                } else {
                    SpecReadError::SpecsTooShort {
                        key: shown,
                        size: meta.size,
                        range: range.clone(),
                    }
                })
            }
            _ => ReadFailure::Transient(failure),
        }
    }

    /// Writes a bunch the way the driver does: `specs` then `specs.idx`.
    /// Used by the demo and tests.
    ///
    /// # Errors
    /// The store's error.
    pub async fn write_bunch<S: AsRef<[u8]>>(
        &self,
        batch_id: i64,
        token: &str,
        specs: &[S],
    ) -> Result<BunchKeys, object_store::Error> {
        let keys = self.bunch_keys(batch_id, token);
        let (data, index) = bunch::encode(specs);
        self.store.put(&keys.specs, PutPayload::from(data)).await?;
        self.store.put(&keys.index, PutPayload::from(index)).await?;
        Ok(keys)
    }
}

fn missing(shown: &str) -> SpecReadError {
    SpecReadError::NotFound {
        key: shown.to_owned(),
    }
}
