//! [`WorkerBuilder`]: the one way to open a worker.
//!
//! Every setting has a default; [`WorkerBuilder::open`] makes the data
//! directory, takes its exclusive lock ([`DataDirLock`]) before anything
//! else touches it, builds the executor, opens and recovers the journal,
//! and returns the worker. `serve`, the demo, the tests, the simulation and
//! the benches all open workers this way.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use tokio::sync::watch;

use super::lifecycle::Lifecycle;
use super::lock::{DataDirLock, LockError};
use super::recovery::Recovery;
use super::table::Table;
use super::tasks::JobFilePools;
use super::view::Identity;
use super::{Inner, Ports, Settings, Worker};
use crate::admission::{Admission, Capacity};
use crate::driver_client::DriverClient;
use crate::image::ImageStore;
use crate::instance_config::InstanceConfig;
use crate::journal::{
    open_journal, Durability, JournalConfig, RecoveryError, SegmentOptions, WriteFaults,
    WriterMode, DEFAULT_PREALLOCATE_BYTES,
};
use crate::logs_store::LogsStore;
use crate::metrics::Metrics;
use crate::runner::{HostRunner, Runner};
use crate::spec_store::{SpecLoadConfig, SpecStore};
use crate::store::StoreOptions;

/// Default journal segment size before compaction, in bytes (64 MiB).
pub const DEFAULT_JOURNAL_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Default retention of finished, reported attempts, in hours.
pub const DEFAULT_RETENTION_HOURS: u64 = 24;
/// Default longest wait at exit for reports in flight, in ms.
pub const DEFAULT_REPORT_DRAIN_MS: u64 = 30_000;

/// Hail's worker sends `billing_update` every 60 s (`Worker.run`:
/// `periodically_call(60, send_billing_update)`).
pub const DEFAULT_BILLING_UPDATE_PERIOD: Duration = Duration::from_secs(60);

/// How the worker runs jobs. Images come only with containers: a host
/// worker has no image cache, and its `spec_loaded` events name no image.
pub enum Executor {
    /// A host process per job through `runner` ([`HostRunner`], or a
    /// simulated runner in tests); `process.image` is ignored.
    Host(Arc<dyn Runner>),
    /// A container per job through `runner` (the runc executor), from the
    /// job's image, pulled through `images` (the `initializing` phase).
    Runc {
        /// Runs the containers.
        runner: Arc<dyn Runner>,
        /// The image cache.
        images: Arc<ImageStore>,
    },
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Executor::Host(_) => "Executor::Host",
            Executor::Runc { .. } => "Executor::Runc",
        })
    }
}

/// Makes the executor once the data directory is locked (it may make
/// directories there: the image cache, runc's state). Its error is a
/// message naming the flag or setting at fault.
type MakeExecutor = Box<dyn FnOnce(&Path) -> Result<Executor, String> + Send>;

/// Makes the spec and logs stores once the data directory is locked (local
/// stores make their directories there).
type MakeStores = Box<dyn FnOnce(&Path) -> Result<(SpecStore, LogsStore), String> + Send>;

/// How the journal is opened.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// When a record counts as written (default [`Durability::Fsync`]).
    pub durability: Durability,
    /// Start on a damaged journal, keeping every valid record (default
    /// false: refuse, naming the damage and the repair).
    pub repair: bool,
    /// A writer thread on the current runtime (default, `None`), or
    /// [`WriterMode::Inline`] for the deterministic simulation.
    pub mode: Option<WriterMode>,
    /// Bytes reserved for each journal segment when it starts (default
    /// [`DEFAULT_PREALLOCATE_BYTES`]; 0 for none).
    pub preallocate_bytes: u64,
    /// Creates are refused (503, `Retry-After`) while the file system of
    /// the data directory has fewer free bytes than this (default
    /// [`DEFAULT_MIN_FREE_BYTES`]; 0 for no floor): the rest is kept for
    /// the records that end and report the jobs already accepted.
    pub min_free_bytes: u64,
    /// Injected write faults (the simulation's full disk; default none).
    pub faults: Option<WriteFaults>,
}

/// Default floor of free bytes under the data directory below which
/// creates are refused (128 MiB).
pub const DEFAULT_MIN_FREE_BYTES: u64 = 128 * 1024 * 1024;

impl Default for JournalOptions {
    fn default() -> JournalOptions {
        JournalOptions {
            durability: Durability::Fsync,
            repair: false,
            mode: None,
            preallocate_bytes: DEFAULT_PREALLOCATE_BYTES,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            faults: None,
        }
    }
}

/// Why a worker could not be opened. Nothing is left running.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory (or a default store's directory in it) could not
    /// be made: the message names the file in the way, or the directory
    /// not writable, and `--data-dir`.
    #[error(transparent)]
    DataDir(#[from] crate::dirs::DirError),
    /// Another worker holds the data directory, or it cannot be locked.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The executor could not be made (its message names the setting).
    #[error("{0}")]
    Executor(String),
    /// The spec or logs store could not be made (its message names it).
    #[error("{0}")]
    Stores(String),
    /// The journal could not be opened or recovered.
    #[error(transparent)]
    Journal(#[from] RecoveryError),
    /// The spec store's IO threads could not start.
    #[error("cannot start the spec store's threads: {0}")]
    SpecStore(std::io::Error),
    /// Opened outside a tokio runtime without [`WriterMode::Inline`].
    #[error("a worker opens inside a tokio runtime (its journal writer and tasks run there)")]
    NoRuntime,
}

/// A worker's settings and parts, each with a default, until
/// [`WorkerBuilder::open`]. Made by [`Worker::builder`].
pub struct WorkerBuilder {
    data_dir: PathBuf,
    name: Option<String>,
    region: Option<String>,
    instance_config: Option<InstanceConfig>,
    executor: Option<MakeExecutor>,
    driver: Option<DriverClient>,
    journal: JournalOptions,
    specs: Option<SpecStore>,
    spec_store_location: Option<String>,
    logs: Option<LogsStore>,
    stores: Option<MakeStores>,
    capacity: Option<Capacity>,
    journal_segment_bytes: u64,
    retention: Duration,
    report_drain: Duration,
    billing_update_period: Duration,
    admit_by_memory: bool,
    store_options: Option<StoreOptions>,
}

impl WorkerBuilder {
    pub(super) fn new(data_dir: PathBuf) -> WorkerBuilder {
        WorkerBuilder {
            data_dir,
            name: None,
            region: None,
            instance_config: None,
            executor: None,
            driver: None,
            journal: JournalOptions::default(),
            specs: None,
            spec_store_location: None,
            logs: None,
            stores: None,
            capacity: None,
            journal_segment_bytes: DEFAULT_JOURNAL_SEGMENT_BYTES,
            retention: Duration::from_secs(DEFAULT_RETENTION_HOURS * 3600),
            report_drain: Duration::from_millis(DEFAULT_REPORT_DRAIN_MS),
            billing_update_period: DEFAULT_BILLING_UPDATE_PERIOD,
            admit_by_memory: false,
            store_options: None,
        }
    }

    /// The cloud region the status JSON's `region` names (Hail's `REGION`).
    /// Default: empty.
    pub fn region(mut self, region: impl Into<String>) -> WorkerBuilder {
        self.region = Some(region.into());
        self
    }

    /// The instance config the driver made this VM with (Hail's
    /// `INSTANCE_CONFIG`): each job's `resources`, what the driver bills.
    /// Default: none, and `resources` is `[]` in statuses and reports.
    pub fn instance_config(mut self, config: InstanceConfig) -> WorkerBuilder {
        self.instance_config = Some(config);
        self
    }

    /// The worker's name: `/healthcheck`, status JSON,
    /// `X-Hail-Instance-Name`. Default: the host name.
    pub fn name(mut self, name: impl Into<String>) -> WorkerBuilder {
        self.name = Some(name.into());
        self
    }

    /// How jobs run. Default: host processes ([`HostRunner::default`]).
    pub fn executor(mut self, executor: Executor) -> WorkerBuilder {
        self.executor = Some(Box::new(move |_| Ok(executor)));
        self
    }

    /// How jobs run, made by `make` from the (absolute) data directory once
    /// it is locked, so that a worker refused the directory touches nothing
    /// in it. `make`'s error becomes [`OpenError::Executor`].
    pub fn executor_with(
        mut self,
        make: impl FnOnce(&Path) -> Result<Executor, String> + Send + 'static,
    ) -> WorkerBuilder {
        self.executor = Some(Box::new(make));
        self
    }

    /// The driver to activate with and report to. Default: none (creates
    /// are taken at once; no reports).
    pub fn driver(mut self, driver: DriverClient) -> WorkerBuilder {
        self.driver = Some(driver);
        self
    }

    /// How the journal is opened. Default: [`JournalOptions::default`].
    pub fn journal(mut self, journal: JournalOptions) -> WorkerBuilder {
        self.journal = journal;
        self
    }

    /// Where specs are read. Default: local files in `{data_dir}/specs`.
    pub fn specs(mut self, specs: SpecStore) -> WorkerBuilder {
        self.specs = Some(specs);
        self
    }

    /// Where the spec store is, as operators type it (`file:///srv/specs`,
    /// `s3://bucket/specs`; credentials redacted), shown by `GET
    /// /batch-worker/v1/worker` so that `submit` can write its bunches
    /// there. Default: `file://{data_dir}/specs` when the specs are the
    /// default local files, else unknown.
    pub fn spec_store_location(mut self, location: impl Into<String>) -> WorkerBuilder {
        self.spec_store_location = Some(location.into());
        self
    }

    /// Where finished attempts' `status.json` and main log go. Default:
    /// local files in `{data_dir}/logs`.
    pub fn logs(mut self, logs: LogsStore) -> WorkerBuilder {
        self.logs = Some(logs);
        self
    }

    /// The spec and logs stores, made by `make` from the (absolute) data
    /// directory once it is locked; over [`WorkerBuilder::specs`] and
    /// [`WorkerBuilder::logs`]. `make`'s error becomes
    /// [`OpenError::Stores`].
    pub fn stores_with(
        mut self,
        make: impl FnOnce(&Path) -> Result<(SpecStore, LogsStore), String> + Send + 'static,
    ) -> WorkerBuilder {
        self.stores = Some(Box::new(make));
        self
    }

    /// The cores (mcpu) and memory (bytes) jobs may reserve in all.
    /// Default: the machine's ([`Capacity::of_machine`]).
    pub fn capacity(mut self, capacity: Capacity) -> WorkerBuilder {
        self.capacity = Some(capacity);
        self
    }

    /// Bytes appended to the journal after which it is compacted into a
    /// snapshot of the attempts still kept. Default
    /// [`DEFAULT_JOURNAL_SEGMENT_BYTES`].
    pub fn journal_segment_bytes(mut self, bytes: u64) -> WorkerBuilder {
        self.journal_segment_bytes = bytes;
        self
    }

    /// How long a finished, reported attempt is remembered (a create for
    /// it gets 403, across restarts) before compaction may forget it.
    /// Default [`DEFAULT_RETENTION_HOURS`].
    pub fn retention(mut self, retention: Duration) -> WorkerBuilder {
        self.retention = retention;
        self
    }

    /// Whether jobs also wait for their `memory_bytes` to be free (and one
    /// asking for more than the worker has errors). Default false: cores
    /// only, as Hail's worker admits.
    pub fn admit_by_memory(mut self, by_memory: bool) -> WorkerBuilder {
        self.admit_by_memory = by_memory;
        self
    }

    /// The pause after each `billing_update` call before the next.
    /// Default [`DEFAULT_BILLING_UPDATE_PERIOD`] (Hail's 60 s).
    pub fn billing_update_period(mut self, period: Duration) -> WorkerBuilder {
        self.billing_update_period = period;
        self
    }

    /// At exit, the longest wait for reports still being delivered.
    /// Default [`DEFAULT_REPORT_DRAIN_MS`].
    pub fn report_drain(mut self, drain: Duration) -> WorkerBuilder {
        self.report_drain = drain;
        self
    }

    /// Options for the stores of jobs' input and output files. Default:
    /// the environment's ([`StoreOptions::from_env`]).
    pub fn store_options(mut self, options: StoreOptions) -> WorkerBuilder {
        self.store_options = Some(options);
        self
    }

    /// Opens the worker: makes the data directory, locks it, makes the
    /// executor and the default stores, opens the journal (cutting a torn
    /// tail; refusing other damage unless `repair`), rebuilds the table from
    /// it, ends attempts that were live `worker_restarted`, and redoes
    /// unfinished logs uploads and reports (which wait for activation).
    ///
    /// # Errors
    /// [`OpenError`]: the directory cannot be made; another worker holds it
    /// (it is left untouched); the executor, a store or the journal cannot
    /// be opened.
    pub fn open(self) -> Result<Worker, OpenError> {
        let data_dir = make_dir(&self.data_dir)?;
        let lock = DataDirLock::acquire(&data_dir)?;
        let mode = match self.journal.mode.clone() {
            Some(mode) => mode,
            None => WriterMode::Thread(
                tokio::runtime::Handle::try_current().map_err(|_| OpenError::NoRuntime)?,
            ),
        };
        let executor = match self.executor {
            Some(make) => make(&data_dir).map_err(OpenError::Executor)?,
            None => Executor::Host(Arc::new(HostRunner::default())),
        };
        let (runner, images) = match executor {
            Executor::Host(runner) => (runner, None),
            Executor::Runc { runner, images } => (runner, Some(images)),
        };
        let (specs, logs) = match self.stores {
            Some(make) => {
                let (specs, logs) = make(&data_dir).map_err(OpenError::Stores)?;
                (Some(specs), Some(logs))
            }
            None => (self.specs, self.logs),
        };
        let spec_store_location = match (&specs, self.spec_store_location) {
            (_, Some(location)) => Some(location),
            (None, None) => Some(format!("file://{}", data_dir.join("specs").display())),
            (Some(_), None) => None,
        };
        let specs = match specs {
            Some(specs) => specs,
            None => SpecStore::new(
                local_store(&data_dir.join("specs"))?,
                Default::default(),
                SpecLoadConfig::default(),
            )
            .map_err(OpenError::SpecStore)?,
        };
        let logs = match logs {
            Some(logs) => logs,
            None => LogsStore::new(local_store(&data_dir.join("logs"))?, Default::default()),
        };
        let config = JournalConfig {
            segments: SegmentOptions {
                durability: self.journal.durability,
                preallocate_bytes: self.journal.preallocate_bytes,
                faults: self.journal.faults.clone(),
            },
            repair: self.journal.repair,
        };
        let recovered = open_journal(&data_dir, &config, mode)?;
        if let Some(reason) = &recovered.cut_reason {
            tracing::warn!(cut_bytes = recovered.cut_bytes, reason = %reason, "journal: damaged records cut off");
        }
        let metrics = Metrics::new(
            self.driver
                .as_ref()
                .map(DriverClient::retried_reports)
                .unwrap_or_default(),
        );
        recovered
            .writer
            .observe_batches(metrics.journal_sync_observer());
        let capacity = self.capacity.unwrap_or_else(Capacity::of_machine);
        let worker = Worker {
            inner: Arc::new(Inner {
                settings: Settings {
                    identity: Identity {
                        name: self.name.unwrap_or_else(default_name),
                        region: self.region.unwrap_or_default(),
                        instance_config: self.instance_config.map(Arc::new),
                    },
                    data_dir,
                    spec_store_location,
                    journal_segment_bytes: self.journal_segment_bytes,
                    min_free_bytes: self.journal.min_free_bytes,
                    retention: self.retention,
                    capacity,
                    report_drain: self.report_drain,
                    billing_update_period: self.billing_update_period,
                    store_options: self.store_options.unwrap_or_else(StoreOptions::from_env),
                },
                lifecycle: Lifecycle::new(self.driver.is_some()),
                ports: Ports {
                    specs,
                    logs,
                    runner,
                    images,
                    driver: self.driver,
                },
                journal: recovered.writer,
                table: Mutex::new(Table::default()),
                changes: watch::channel(0).0,
                admission: if self.admit_by_memory {
                    Admission::by_cores_and_memory(capacity)
                } else {
                    Admission::new(capacity)
                },
                job_files: JobFilePools::new(),
                metrics,
                recovery: std::sync::OnceLock::new(),
                _lock: lock,
            }),
        };
        let recovery = Recovery {
            cut_bytes: recovered.cut_bytes,
            ..worker.recover(&recovered.records)
        };
        let _ = worker.inner.recovery.set(recovery);
        tracing::info!(
            records = recovery.records,
            attempts = recovery.attempts,
            errored_by_restart = recovery.restarted,
            reattached = recovery.reattached,
            reports_redone = recovery.redone,
            "journal recovered"
        );
        Ok(worker)
    }
}

/// Makes `path` (the data directory or one in it) and returns it absolute.
fn make_dir(path: &Path) -> Result<PathBuf, OpenError> {
    Ok(crate::dirs::make_dir(path, "--data-dir")?)
}

/// A local file store rooted at `dir` (made).
fn local_store(dir: &Path) -> Result<Arc<dyn ObjectStore>, OpenError> {
    let dir = make_dir(dir)?;
    let store = LocalFileSystem::new_with_prefix(&dir).map_err(|e| {
        crate::dirs::DirError::from_io(&dir, "--data-dir", std::io::Error::other(e))
    })?;
    Ok(Arc::new(store))
}

/// The host name, or `batch-worker` if it cannot be read.
pub fn default_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|n| n.into_string().ok())
        .unwrap_or_else(|| "batch-worker".into())
}
