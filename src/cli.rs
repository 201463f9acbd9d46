//! The command line (clap): `serve`, `demo`, and how their flags become a
//! running worker.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use url::Url;

use crate::admission::Capacity;
use crate::container::{ContainerNetwork, RuncConfig, RuncRunner};
use crate::driver_client::{DriverClient, ReportRetry};
use crate::image::{ImageConfig, ImageStore, PullError, PullProcess, PullReport, PulledImage};
use crate::journal::{open_journal, Durability, RecoveryError};
use crate::logs_store::LogsStore;
use crate::runner::{HostRunner, Runner};
use crate::spec_diag::{diagnose, Diagnosis, SpecQuery};
use crate::spec_store::{SpecLoadConfig, SpecStore};
use crate::store::{
    open_store_with, throttled, with_control_plane, StoreOpenError, StoreOptions, StoreOptionsError,
};
use crate::supervisor::{
    Worker, WorkerConfig, DEFAULT_JOURNAL_SEGMENT_BYTES, DEFAULT_REPORT_DRAIN_MS,
    DEFAULT_RETENTION_HOURS,
};

/// `batch-worker`: a worker agent for batch job systems, wire-compatible
/// with Hail Batch's driver.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr: `text` (for people) or `json` (one object per
    /// line, with the current span's fields, e.g. an attempt's `batch_id`,
    /// `job_id`, `attempt_id`). The level comes from `RUST_LOG`.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// tracing-subscriber's human format (colours on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker's HTTP API until SIGINT/SIGTERM or `POST /api/v1alpha/kill`.
    /// Flags may also come from `--config FILE` (TOML, keys are the flags'
    /// names) and from `BATCH_WORKER_<FLAG>` environment variables; flags
    /// win over the environment, which wins over the file.
    Serve(Box<ServeArgs>),
    /// Print the configuration `serve` would run with (same flags, file and
    /// environment), as TOML, each value with its source; secrets masked.
    Config(Box<ServeArgs>),
    /// Run a worker and an embedded driver on loopback, schedule jobs with
    /// good, failing, missing and corrupt specs, and print what became of
    /// each. Exits non-zero if any job ends other than planned or any
    /// create call fails.
    Demo(DemoArgs),
    /// Replay a journal file (or a directory of `*.jnl` files) through the
    /// job state machine: per-attempt timelines, a summary, and problems.
    Replay(ReplayArgs),
    /// Look at job specs as the worker reads them.
    Spec {
        /// What to do with the spec.
        #[command(subcommand)]
        command: SpecCommand,
    },
    /// Container images in the worker's image cache.
    Image {
        /// What to do with the image.
        #[command(subcommand)]
        command: ImageCommand,
    },
}

/// Subcommands of `image`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image into the image cache as `serve --executor runc` does
    /// (to warm a cache, or to see why a pull fails), in this process.
    /// Exits 0 when the image is in the cache, 1 when the pull failed.
    /// `serve` runs this, with --json, as the child process of each pull.
    Pull(ImagePullArgs),
}

/// Flags of `image pull`.
#[derive(Debug, Args)]
pub struct ImagePullArgs {
    /// The image reference, e.g. registry.example:5000/team/tool:1.2 or
    /// ubuntu@sha256:<digest>.
    pub reference: String,
    /// The image cache: `serve`'s --image-cache-dir ({data-dir}/images by
    /// default).
    #[arg(long)]
    pub image_cache_dir: PathBuf,
    /// Registry access, as for `serve`.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print one JSON object, {"reference", "digest", "downloaded"} or
    /// {"reference", "downloaded": false, "error"}, instead of text.
    #[arg(long)]
    pub json: bool,
    /// Where partial files go (default {image-cache-dir}/tmp).
    #[arg(long, hide = true)]
    pub scratch_dir: Option<PathBuf>,
    /// Delay before the first retry of a registry call, in ms.
    #[arg(long, hide = true, default_value_t = 500)]
    pub registry_retry_delay_ms: u64,
    /// Tries per registry call.
    #[arg(long, hide = true, default_value_t = 4)]
    pub registry_max_attempts: u32,
}

impl ImagePullArgs {
    /// Pulls the image as the flags say, in this process, within
    /// --image-pull-timeout-s.
    ///
    /// # Errors
    /// [`PullError`]: bad flags (as [`PullError::Unusable`]), the cache,
    /// the registry, the image.
    pub async fn pull(&self) -> Result<(PulledImage, bool), PullError> {
        let config = self
            .image_config()
            .map_err(|e| PullError::Unusable(e.to_string()))?;
        let timeout = config.pull_timeout;
        let store = ImageStore::open(config)?;
        tokio::time::timeout(timeout, store.pull_now(&self.reference))
            .await
            .unwrap_or(Err(PullError::TimedOut {
                timeout_s: timeout.as_secs(),
            }))
    }

    /// What `--json` prints for `pulled`; an error is cut to 4000
    /// characters (the worker reads at most 64 KiB of the answer).
    pub fn report(&self, pulled: &Result<(PulledImage, bool), PullError>) -> PullReport {
        match pulled {
            Ok((image, downloaded)) => PullReport {
                reference: self.reference.clone(),
                digest: Some(image.digest.clone()),
                downloaded: *downloaded,
                error: None,
            },
            Err(e) => PullReport {
                reference: self.reference.clone(),
                digest: None,
                downloaded: false,
                error: Some(crate::wire::truncate(&e.to_string(), 4000)),
            },
        }
    }

    /// The in-process image cache settings these flags give.
    ///
    /// # Errors
    /// [`StartError::Invalid`] for a malformed --insecure-registry.
    pub fn image_config(&self) -> Result<ImageConfig, StartError> {
        let mut config = self.registry.image_config(self.image_cache_dir.clone())?;
        config.scratch_dir = self.scratch_dir.clone();
        config.retry_delay = Duration::from_millis(self.registry_retry_delay_ms);
        config.max_attempts = self.registry_max_attempts.max(1);
        Ok(config)
    }
}

/// Registry access and pull bounds, shared by `serve` and `image pull`.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// A docker-style config.json with registry credentials
    /// (`{"auths": {"host": {"auth": base64("user:password")}}}`).
    /// Without it images are pulled anonymously.
    #[arg(long)]
    pub registry_auth_file: Option<PathBuf>,
    /// Registries (host:port, comma-separated) pulled from over plain HTTP
    /// rather than HTTPS, like Docker's insecure-registries.
    #[arg(long, value_delimiter = ',')]
    pub insecure_registry: Vec<String>,
    /// Largest image pulled: its layers, compressed as declared and
    /// unpacked, e.g. 20GiB. Larger images end image_pull_failed.
    #[arg(long, default_value = "20GiB")]
    pub image_max_bytes: bytesize::ByteSize,
    /// Longest one image pull may take, retries included, in s.
    #[arg(long, default_value_t = 600)]
    pub image_pull_timeout_s: u64,
}

impl RegistryArgs {
    /// An in-process [`ImageConfig`] for the cache at `cache_dir` with
    /// these flags.
    ///
    /// # Errors
    /// [`StartError::Invalid`] for a malformed --insecure-registry.
    pub fn image_config(&self, cache_dir: PathBuf) -> Result<ImageConfig, StartError> {
        if let Some(bad) = self
            .insecure_registry
            .iter()
            .find(|r| r.is_empty() || r.contains("://") || r.contains('/'))
        {
            return Err(StartError::Invalid(format!(
                "--insecure-registry: expected HOST or HOST:PORT (no scheme, no path), got {bad:?}"
            )));
        }
        let mut config = ImageConfig::new(cache_dir);
        config.auth_file = self.registry_auth_file.clone();
        config.insecure_registries = self.insecure_registry.clone();
        config.max_image_bytes = self.image_max_bytes.as_u64();
        config.pull_timeout = Duration::from_secs(self.image_pull_timeout_s.max(1));
        Ok(config)
    }
}

/// Subcommands of `spec`.
#[derive(Debug, Subcommand)]
pub enum SpecCommand {
    /// Print a job's spec as the worker would load it, or precisely what is
    /// wrong with its bunch (missing objects, index length, offsets, sizes,
    /// UTF-8 position, JSON line and column, invalid fields). Exits 0 when
    /// the worker would load the spec, 1 when it would error the job, 2 for
    /// usage errors.
    Show(SpecShowArgs),
}

/// Flags of `spec show`: the create call's fields that locate a spec.
#[derive(Debug, Args)]
pub struct SpecShowArgs {
    /// Root URL of the spec store, as `serve --spec-store`: file:///abs/path,
    /// s3://bucket/prefix, gs://bucket/prefix, az://container/prefix.
    #[arg(long)]
    pub store: Url,
    /// The job's batch_id.
    #[arg(long)]
    pub batch: i64,
    /// The bunch's token (1 to 64 ASCII letters and digits).
    #[arg(long, value_parser = parse_bunch_token)]
    pub token: String,
    /// The bunch's start_job_id.
    #[arg(long)]
    pub start: i64,
    /// The job_id.
    #[arg(long)]
    pub job: i64,
    /// A file of store options (`NAME=VALUE` lines), over the environment's,
    /// as `serve --store-options`.
    #[arg(long)]
    pub store_options: Option<PathBuf>,
    /// Spec limits, as `serve`'s (a spec over `--spec-max-bytes` is
    /// `spec_corrupt`).
    #[command(flatten)]
    pub spec: SpecArgs,
}

impl SpecShowArgs {
    /// Reads and diagnoses the spec these flags name.
    ///
    /// # Errors
    /// [`StartError`] when the store cannot be opened (a bad URL, an
    /// unusable options file, no threads); everything about the bunch is
    /// in the [`Diagnosis`].
    pub async fn diagnose(&self) -> Result<Diagnosis, StartError> {
        let options = StoreOptions::from_env();
        let options = match &self.store_options {
            Some(path) => options.with_file(path)?,
            None => options,
        };
        let (store, root) = open_store_with(&self.store, &options)?;
        let specs =
            SpecStore::new(store, root, self.spec.load_config()).map_err(StartError::Runtime)?;
        let query = SpecQuery {
            batch_id: self.batch,
            token: self.token.clone(),
            start_job_id: self.start,
            job_id: self.job,
        };
        Ok(diagnose(&specs, &query).await)
    }
}

/// A bunch token as the create call takes it: 1 to 64 ASCII letters and
/// digits (it becomes part of object keys).
fn parse_bunch_token(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.len() <= 64 && text.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "expected 1 to 64 ASCII letters and digits, got {text:?}"
        ))
    }
}

/// Flags of `replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A journal file, or a directory of `*.jnl` files.
    pub path: PathBuf,
    /// Show only this job's timelines, as BATCH:JOB.
    #[arg(long, value_parser = parse_job)]
    pub job: Option<(i64, i64)>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 if there is any problem (illegal transition, sequence gap,
    /// torn or corrupt record, two live attempts, event after a terminal
    /// state).
    #[arg(long)]
    pub check: bool,
    /// Replay only records up to this sequence number.
    #[arg(long)]
    pub until: Option<u64>,
}

fn parse_job(text: &str) -> Result<(i64, i64), String> {
    let (batch, job) = text
        .split_once(':')
        .ok_or_else(|| format!("expected BATCH:JOB, got {text:?}"))?;
    let id = |s: &str| s.parse::<i64>().map_err(|e| format!("{s:?}: {e}"));
    Ok((id(batch)?, id(job)?))
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file of these flags (`data-dir = "/srv/worker"`); the
    /// environment's BATCH_WORKER_<FLAG> variables override it, flags
    /// override both.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub listen: SocketAddr,
    /// The worker's directory: its journal, attempts' working directories
    /// and logs, and by default the spec and logs stores, the image cache
    /// and runc's state.
    #[arg(long, default_value = "batch-worker-data")]
    pub data_dir: PathBuf,
    /// Root URL of the spec store: file:///abs/path, memory://, s3://bucket/prefix,
    /// gs://bucket/prefix, az://container/prefix. Default: file://{data-dir}/specs.
    #[arg(long)]
    pub spec_store: Option<Url>,
    /// The driver's base URL. The worker activates there before taking
    /// jobs (creates get 503 until then) and sends job_started /
    /// job_complete. None: no activation, no reports.
    #[arg(long)]
    pub driver_url: Option<Url>,
    /// The worker's name (X-Hail-Instance-Name, /healthcheck). Default: the host name.
    #[arg(long)]
    pub name: Option<String>,
    /// The activation token, sent as X-Hail-Instance-Token on the activate
    /// call; the driver's answer replaces it for every later call.
    #[arg(
        long,
        env = "BATCH_WORKER_ACTIVATION_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub activation_token: String,
    /// The IP address sent to the driver on activation (where it reaches
    /// this worker). Default: the --listen address's IP; for a wildcard
    /// (0.0.0.0, ::), the local address of the route to the driver.
    #[arg(long)]
    pub ip_address: Option<std::net::IpAddr>,
    /// Driver calls on the wire at once (reports are retried until
    /// acknowledged; waiting out a backoff holds no slot).
    #[arg(long, default_value_t = 64)]
    pub report_concurrency: usize,
    /// At shutdown, the longest wait for reports still being delivered, in ms.
    #[arg(long, default_value_t = DEFAULT_REPORT_DRAIN_MS)]
    pub report_drain_ms: u64,
    /// Cores jobs may reserve in all (fractions allowed, e.g. 1.5).
    /// Default: the machine's.
    #[arg(long)]
    pub cores: Option<f64>,
    /// Memory jobs may reserve in all, e.g. 8GiB or 512MiB or 1000000.
    /// Default: the machine's.
    #[arg(long)]
    pub memory: Option<bytesize::ByteSize>,
    /// Root URL where finished attempts' status.json and main log are
    /// written (same schemes as --spec-store). Default: file://{data-dir}/logs.
    #[arg(long)]
    pub logs_store: Option<Url>,
    /// A file of store options, `NAME=VALUE` lines with the names of the
    /// AWS_*, AZURE_*, GOOGLE_* variables (object_store's keys); they
    /// override the environment's, for every store the worker opens.
    #[arg(long)]
    pub store_options: Option<PathBuf>,
    /// When a journal record counts as written: `fsync` (survives power
    /// loss) or `flush` (survives the worker's crash).
    #[arg(long, value_enum, default_value = "fsync")]
    pub durability: Durability,
    /// Start even if the journal is damaged in the middle: keep the records
    /// before the damage and drop the rest (saying what was dropped).
    #[arg(long)]
    pub repair: bool,
    /// Compact the journal after this many bytes appended.
    #[arg(long, default_value_t = DEFAULT_JOURNAL_SEGMENT_BYTES)]
    pub journal_segment_bytes: u64,
    /// Remember finished, reported attempts (403 for a repeated create,
    /// across restarts) for this many hours.
    #[arg(long, default_value_t = DEFAULT_RETENTION_HOURS)]
    pub retention_hours: u64,
    /// Largest accepted create body, in bytes (larger: 413).
    #[arg(long, default_value_t = 17 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// A file holding the API's bearer token (one line). With it, every
    /// endpoint but /healthcheck and /metrics answers 401 without
    /// `Authorization: Bearer <token>`. Without it: no authentication.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// Spec loading limits.
    #[command(flatten)]
    pub spec: SpecArgs,
    /// How jobs run: host processes or containers.
    #[command(flatten)]
    pub executor: ExecutorArgs,
}

/// How `serve` runs jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Executor {
    /// A host process per job (its command; `process.image` ignored): for
    /// development and the demo, runs anywhere.
    Host,
    /// An OCI container per job, made with the `runc` CLI from the job's
    /// image (pulled into the image cache), with its CPU and memory limits,
    /// secrets mounted and no network. Needs root and runc.
    Runc,
}

/// What runs jobs: the runner, and the image cache when jobs run in
/// containers.
pub type Executors = (Arc<dyn Runner>, Option<Arc<ImageStore>>);

/// Flags of the executor (`serve`).
#[derive(Debug, Clone, Args)]
pub struct ExecutorArgs {
    /// How jobs run: `host` (host processes) or `runc` (OCI containers).
    #[arg(long, value_enum, default_value = "host")]
    pub executor: Executor,
    /// The runc binary (`--executor runc`).
    #[arg(long, default_value = "runc")]
    pub runc: PathBuf,
    /// runc's state directory (`runc --root`). Default: {data-dir}/runc.
    #[arg(long)]
    pub runc_root: Option<PathBuf>,
    /// Where pulled images are unpacked, one directory per manifest
    /// digest. Default: {data-dir}/images.
    #[arg(long)]
    pub image_cache_dir: Option<PathBuf>,
    /// Registry access and pull bounds.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Network of job containers: `none` (only loopback) or `host`.
    #[arg(long, value_enum, default_value = "none")]
    pub container_network: ContainerNetwork,
    /// Memory limit of each image pull's child process (its heap), e.g.
    /// 1GiB; at least 64MiB. A registry whose answers need more ends the
    /// job image_pull_failed; the worker is not touched.
    #[arg(long, default_value = "1GiB")]
    pub image_pull_max_memory: bytesize::ByteSize,
    /// Most image pulls at once (of different images; more wait in
    /// `initializing`). With --image-pull-max-memory, bounds what pulls
    /// together may take.
    #[arg(long, default_value_t = crate::image::DEFAULT_MAX_CONCURRENT_PULLS)]
    pub image_pulls_max: usize,
}

impl ExecutorArgs {
    /// The runner and, for containers, the image cache these flags give,
    /// under `data_dir`.
    ///
    /// # Errors
    /// [`StartError::Invalid`]: runc does not run, or the image cache or
    /// the credentials file is unusable.
    pub fn build(&self, data_dir: &Path, kill_grace: Duration) -> Result<Executors, StartError> {
        match self.executor {
            Executor::Host => Ok((Arc::new(HostRunner { kill_grace }), None)),
            Executor::Runc => {
                let mut images = self.registry.image_config(
                    self.image_cache_dir
                        .clone()
                        .unwrap_or_else(|| data_dir.join("images")),
                )?;
                let program = std::env::current_exe().map_err(|e| {
                    StartError::Invalid(format!(
                        "--executor runc: cannot find this program to run image pulls: {e}"
                    ))
                })?;
                let max_memory_bytes = self.image_pull_max_memory.as_u64();
                if max_memory_bytes < crate::image::MIN_PULL_MAX_MEMORY_BYTES {
                    return Err(StartError::Invalid(format!(
                        "--image-pull-max-memory: at least 64MiB (a pull process needs about 30 MiB to start), got {}",
                        self.image_pull_max_memory
                    )));
                }
                if self.image_pulls_max == 0 {
                    return Err(StartError::Invalid("--image-pulls-max: at least 1".into()));
                }
                images.pull_process = Some(PullProcess {
                    program,
                    max_memory_bytes,
                });
                images.max_concurrent_pulls = self.image_pulls_max;
                let runner = RuncRunner::new(RuncConfig {
                    runc: self.runc.clone(),
                    state_dir: self
                        .runc_root
                        .clone()
                        .unwrap_or_else(|| data_dir.join("runc")),
                    network: self.container_network,
                    kill_grace,
                })
                .map_err(|e| StartError::Invalid(format!("--executor runc: {e}")))?;
                let images = ImageStore::new(images)
                    .map_err(|e| StartError::Invalid(format!("--executor runc: {e}")))?;
                Ok((Arc::new(runner), Some(Arc::new(images))))
            }
        }
    }
}

/// Spec-loading and process flags, shared by `serve` and `demo`.
#[derive(Debug, Clone, Args)]
pub struct SpecArgs {
    /// Added latency of every blob read, in ms (object_store's throttle).
    #[arg(long, default_value_t = 0)]
    pub blob_latency_ms: u64,
    /// Largest spec, in bytes; larger specs error as spec_corrupt.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub spec_max_bytes: u64,
    /// Deadline of one spec load, retries included, in ms.
    #[arg(long, default_value_t = 60_000)]
    pub spec_timeout_ms: u64,
    /// Attempts per spec read on transient store errors.
    #[arg(long, default_value_t = 5)]
    pub spec_read_attempts: usize,
    /// Spec loads in flight at once.
    #[arg(long, default_value_t = 256)]
    pub spec_load_concurrency: usize,
    /// Time between SIGTERM and SIGKILL when ending a process, in ms.
    #[arg(long, default_value_t = 5_000)]
    pub kill_grace_ms: u64,
    /// Testing: a slow control plane before every spec and logs store
    /// request (a token fetch, as for Azure behind SAS tokens): the median
    /// wait in ms, log-normal with a heavy tail (p99 ≈ 5.7 × median); 0: off.
    #[arg(long, default_value_t = 0)]
    pub token_latency_ms: u64,
    /// Seed of the token waits (the same seed repeats the same waits).
    #[arg(long, default_value_t = 1)]
    pub token_latency_seed: u64,
}

/// Flags of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many jobs to schedule (at least 1).
    #[arg(long, default_value_t = 200, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub jobs: usize,
    /// Added latency of every blob read, in ms.
    #[arg(long, default_value_t = 0)]
    pub blob_latency_ms: u64,
    /// Keep what the demo writes (specs, logs, journal) in this directory;
    /// default: a temporary directory, removed at exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The worker's journal durability.
    #[arg(long, value_enum, default_value = "fsync")]
    pub durability: Durability,
    /// Testing: the median token wait before every store request, in ms
    /// (see `serve --token-latency-ms`); 0: off.
    #[arg(long, default_value_t = 0)]
    pub token_latency_ms: u64,
    /// Write the specs to this store and have the worker read them from it
    /// (`s3://`, `az://`, `gs://`, `file://`, `memory://`; options from the
    /// `AWS_*`, `AZURE_*`, `GOOGLE_*` variables). Default: local files under
    /// the data directory.
    #[arg(long)]
    pub spec_store: Option<Url>,
    /// Testing: inject seeded faults into the worker's spec reads. PLAN is
    /// comma-separated NAME=VALUE: seed (the same seed repeats the same
    /// faults), latency_ms (median delay per read) and sigma (its
    /// log-normal spread; 0 = fixed), and per-read rates in [0, 1]:
    /// error (transient, retried), hang (never answers: the job waits for
    /// the 60 s spec deadline, so the run lasts a minute), not_found,
    /// short_read (bytes cut short) and flip (one byte changed). E.g.
    /// "seed=3,latency_ms=100,sigma=1,error=0.1,not_found=0.02,flip=0.02".
    /// A job whose bunch a fault hit may end as an error of its spec read.
    #[arg(long)]
    pub store_faults: Option<crate::store::FaultPlan>,
}

/// A worker could not be built from its flags.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be made.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The spec store URL could not be opened.
    #[error(transparent)]
    Store(#[from] StoreOpenError),
    /// A runtime's threads could not be started.
    #[error("cannot start the spec store's threads: {0}")]
    Runtime(std::io::Error),
    /// The journal could not be opened or recovered.
    #[error(transparent)]
    Journal(#[from] RecoveryError),
    /// The driver client could not be built.
    #[error("cannot build the driver client: {0}")]
    Driver(#[from] reqwest::Error),
    /// The store options file is unusable.
    #[error(transparent)]
    StoreOptions(#[from] StoreOptionsError),
    /// A flag's value is unusable (`--cores`, `--name`, `--driver-url`).
    #[error("{0}")]
    Invalid(String),
}

impl SpecArgs {
    /// The spec-load limits these flags give.
    pub fn load_config(&self) -> SpecLoadConfig {
        SpecLoadConfig {
            max_spec_bytes: self.spec_max_bytes,
            deadline: Duration::from_millis(self.spec_timeout_ms),
            max_attempts: self.spec_read_attempts.max(1),
            max_concurrent_loads: self.spec_load_concurrency.max(1),
            ..SpecLoadConfig::default()
        }
    }
}

/// Makes `path` absolute and creates it.
///
/// # Errors
/// [`StartError::DataDir`].
pub fn prepare_dir(path: &Path) -> Result<PathBuf, StartError> {
    let fail = |source| StartError::DataDir {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(fail)?;
    std::path::absolute(path).map_err(fail)
}

/// Builds the worker `serve` runs: the data directory, the spec store
/// (throttled when `blob_latency_ms` > 0), the logs store, the driver
/// client, the capacity; recovers the journal. Activation is the caller's
/// (it needs the listening address).
///
/// # Errors
/// [`StartError`] naming what could not be set up.
pub fn build_worker(args: &ServeArgs) -> Result<Worker, StartError> {
    let data_dir = prepare_dir(&args.data_dir)?;
    let options = args.store_options()?;
    let (store, root) =
        store_or_local(args.spec_store.as_ref(), &data_dir.join("specs"), &options)?;
    let slow = |store| {
        with_control_plane(
            store,
            args.spec.token_latency_ms,
            args.spec.token_latency_seed,
        )
    };
    let specs = SpecStore::new(
        throttled(slow(store), args.spec.blob_latency_ms),
        root,
        args.spec.load_config(),
    )
    .map_err(StartError::Runtime)?;
    let (logs, logs_root) =
        store_or_local(args.logs_store.as_ref(), &data_dir.join("logs"), &options)?;
    let logs = slow(logs);
    let name = args.name.clone().unwrap_or_else(default_name);
    if reqwest::header::HeaderValue::from_str(&name).is_err() || name.is_empty() {
        return Err(StartError::Invalid(format!(
            "--name: {name:?} cannot be sent as X-Hail-Instance-Name (visible ASCII expected)"
        )));
    }
    if let Some(url) = &args.driver_url {
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(StartError::Invalid(format!(
                "--driver-url: expected an http:// or https:// URL with a host, got {url}"
            )));
        }
    }
    let driver = args
        .driver_url
        .clone()
        .map(|url| {
            DriverClient::new(
                url,
                name.clone(),
                args.activation_token.clone(),
                ReportRetry {
                    max_in_flight: args.report_concurrency.max(1),
                    ..ReportRetry::default()
                },
            )
        })
        .transpose()?;
    let (runner, images) = args
        .executor
        .build(&data_dir, Duration::from_millis(args.spec.kill_grace_ms))?;
    let config = WorkerConfig {
        name,
        data_dir,
        runner,
        journal_segment_bytes: args.journal_segment_bytes,
        retention: Duration::from_secs(args.retention_hours * 3600),
        capacity: args.capacity()?,
        logs: LogsStore::new(logs, logs_root),
        report_drain: Duration::from_millis(args.report_drain_ms),
        store_options: options,
        images,
    };
    let recovered = open_journal(
        &config.data_dir,
        args.durability,
        args.repair,
        tokio::runtime::Handle::current(),
    )?;
    if let Some(reason) = &recovered.cut_reason {
        tracing::warn!(cut_bytes = recovered.cut_bytes, reason = %reason, "journal: damaged records cut off");
    }
    let worker = Worker::new(config, specs, driver, Some(recovered.writer));
    let (restored, restarted) = worker.recover(&recovered.records);
    tracing::info!(
        records = recovered.records.len(),
        attempts = restored,
        errored_by_restart = restarted,
        "journal recovered"
    );
    Ok(worker)
}

/// The store at `url`, or a local directory `default` (created).
fn store_or_local(
    url: Option<&Url>,
    default: &Path,
    options: &StoreOptions,
) -> Result<(Arc<dyn ObjectStore>, object_store::path::Path), StartError> {
    match url {
        Some(url) => Ok(open_store_with(url, options)?),
        None => {
            let dir = prepare_dir(default)?;
            let store =
                LocalFileSystem::new_with_prefix(&dir).map_err(|source| StoreOpenError {
                    url: format!("file://{}", dir.display()),
                    source,
                })?;
            Ok((Arc::new(store) as Arc<dyn ObjectStore>, Default::default()))
        }
    }
}

impl ServeArgs {
    /// The environment's store options, overridden by `--store-options`.
    ///
    /// # Errors
    /// [`StartError::StoreOptions`] when the file cannot be read or parsed.
    pub fn store_options(&self) -> Result<StoreOptions, StartError> {
        let options = StoreOptions::from_env();
        Ok(match &self.store_options {
            Some(path) => options.with_file(path)?,
            None => options,
        })
    }

    /// The capacity `--cores` and `--memory` give, the machine's where absent.
    ///
    /// # Errors
    /// [`StartError::Invalid`] for `--cores` under 0.001 or not finite.
    pub fn capacity(&self) -> Result<Capacity, StartError> {
        let machine = Capacity::of_machine();
        let cores_mcpu = match self.cores {
            None => machine.cores_mcpu,
            Some(c) if (0.001..1e9).contains(&c) => (c * 1000.0).round() as u64,
            Some(c) => {
                return Err(StartError::Invalid(format!(
                    "--cores: expected a number of cores from 0.001 (1 mcpu) up, got {c}"
                )))
            }
        };
        Ok(Capacity {
            cores_mcpu,
            memory_bytes: self.memory.map_or(machine.memory_bytes, |m| m.as_u64()),
        })
    }
}

/// The IP address the worker sends the driver on activation: `--ip-address`
/// if given, else the listening address, else (listening on a wildcard
/// such as 0.0.0.0) the local address of the route to the driver, found by
/// connecting a UDP socket to it (no packet is sent).
///
/// # Errors
/// [`StartError::Invalid`] when the listening address is a wildcard and the
/// route to the driver cannot be found.
pub fn advertised_ip(
    listening: std::net::IpAddr,
    explicit: Option<std::net::IpAddr>,
    driver: Option<&Url>,
) -> Result<std::net::IpAddr, StartError> {
    if let Some(ip) = explicit {
        return Ok(ip);
    }
    if !listening.is_unspecified() {
        return Ok(listening);
    }
    let Some(driver) = driver else {
        return Ok(listening);
    };
    let route = || -> std::io::Result<std::net::IpAddr> {
        let target = driver
            .socket_addrs(|| None)?
            .into_iter()
            .next()
            .ok_or_else(|| std::io::Error::other("the driver's host has no address"))?;
        let local: std::net::SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse().expect("an address")
        } else {
            "[::]:0".parse().expect("an address")
        };
        let socket = std::net::UdpSocket::bind(local)?;
        socket.connect(target)?;
        Ok(socket.local_addr()?.ip())
    };
    route().map_err(|e| {
        StartError::Invalid(format!(
            "--listen {listening} is a wildcard and the route to the driver cannot be found ({e}); \
             pass --ip-address, the address the driver reaches this worker at"
        ))
    })
}

/// The host name, or `batch-worker` if it cannot be read.
pub fn default_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|n| n.into_string().ok())
        .unwrap_or_else(|| "batch-worker".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_advertises_the_route_to_the_driver() {
        let any: std::net::IpAddr = "0.0.0.0".parse().unwrap();
        let driver = Url::parse("http://127.0.0.1:9/").unwrap();
        let ip = advertised_ip(any, None, Some(&driver)).unwrap();
        assert_eq!(ip.to_string(), "127.0.0.1");
        let explicit = "10.1.2.3".parse().unwrap();
        assert_eq!(
            advertised_ip(any, Some(explicit), Some(&driver)).unwrap(),
            explicit
        );
        let listen = "192.168.0.5".parse().unwrap();
        assert_eq!(advertised_ip(listen, None, Some(&driver)).unwrap(), listen);
    }

    #[test]
    fn cores_below_one_mcpu_are_refused() {
        let args = |cores: &str| {
            let cli = Cli::try_parse_from(["batch-worker", "serve", "--cores", cores]).unwrap();
            match cli.command {
                Command::Serve(args) => args.capacity(),
                _ => unreachable!(),
            }
        };
        assert_eq!(args("1.5").unwrap().cores_mcpu, 1500);
        assert_eq!(args("0.001").unwrap().cores_mcpu, 1);
        assert!(args("0.0004").is_err());
        assert!(args("0").is_err());
    }

    #[test]
    fn unusable_executor_flags_are_refused_naming_the_flag() {
        let build = |flags: &[&str]| {
            let mut argv = vec!["batch-worker", "serve", "--executor", "runc"];
            argv.extend_from_slice(flags);
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Serve(args) = cli.command else {
                unreachable!()
            };
            let dir = tempfile::tempdir().unwrap();
            match args.executor.build(dir.path(), Duration::from_secs(1)) {
                Err(StartError::Invalid(message)) => message,
                Err(e) => panic!("{e}"),
                Ok(_) => "built".to_owned(),
            }
        };
        for (flags, named) in [
            (
                &["--image-pull-max-memory", "1MiB"][..],
                "--image-pull-max-memory",
            ),
            (&["--image-pulls-max", "0"][..], "--image-pulls-max"),
            (
                &["--insecure-registry", "http://r:5000"][..],
                "--insecure-registry",
            ),
            (
                &["--insecure-registry", "r:5000/v2"][..],
                "--insecure-registry",
            ),
        ] {
            let message = build(flags);
            assert!(message.starts_with(named), "{flags:?}: {message}");
        }
    }
}
