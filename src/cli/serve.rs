//! `serve`: its flags, the worker they open (the socket is bound first, so
//! a busy port leaves the data directory untouched), activation with the
//! driver, and the HTTP API until SIGINT/SIGTERM or `POST /api/v1alpha/kill`.
//!
//! This file is long (about 1,000 lines) because `serve`'s many flags, each
//! with its doc and check, are most of it, and the executor they build
//! (host runner, user, cgroups, shim, or runc) belongs with them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use url::Url;

use super::{derived, heading, store_or_local, CliError, RegistryArgs, SpecArgs, StartError};
use crate::admission::Capacity;
use crate::api::{ApiConfig, ApiToken, DEFAULT_MAX_BUFFERED_BODY_BYTES};
use crate::cgroup::{CgroupMode, Cgroups};
use crate::container::{ContainerNetwork, JobNetworks, RuncConfig, RuncRunner};
use crate::driver_client::{DriverClient, ReportRetry};
use crate::image::{ImageStore, PullProcess};
use crate::instance_config::InstanceConfig;
use crate::journal::{Durability, DEFAULT_PREALLOCATE_BYTES};
use crate::logs_store::LogsStore;
use crate::runner::{
    HostRunner, JobUser, ShimConfig, DEFAULT_JOB_STORAGE_BYTES, DEFAULT_MAX_LOG_BYTES,
};
use crate::server::{
    ConnectionLimits, BODY_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
};
use crate::spec_store::SpecStore;
use crate::store::{throttled, with_control_plane, StoreOptions};
use crate::worker::{
    default_name, Executor, JournalOptions, Worker, DEFAULT_BILLING_UPDATE_PERIOD,
    DEFAULT_JOURNAL_SEGMENT_BYTES, DEFAULT_MIN_FREE_BYTES, DEFAULT_REPORT_DRAIN_MS,
    DEFAULT_RETENTION_HOURS,
};

/// Largest instance config file read, in bytes (Hail's are a few KiB).
pub const MAX_INSTANCE_CONFIG_BYTES: u64 = 1024 * 1024;

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file of these flags (`data-dir = "/srv/worker"`); the
    /// environment's BATCH_WORKER_<FLAG> variables override it, flags
    /// override both.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(help_heading = heading::API)]
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub listen: SocketAddr,
    /// The worker's directory: its journal, attempts' working directories
    /// and logs, and by default the spec and logs stores, the image cache
    /// and runc's state.
    #[arg(long, default_value = "batch-worker-data")]
    pub data_dir: PathBuf,
    #[arg(help_heading = heading::STORES)]
    /// Root of the spec store: an absolute path (/srv/specs, a local
    /// directory) or a URL: file:///abs/path, s3://bucket/prefix,
    /// gs://bucket/prefix, az://container/prefix,
    /// https://ACCOUNT.blob.core.windows.net/container/prefix, memory:///.
    /// A relative path or file://dir (two slashes) is refused, with the
    /// form meant. Default: {data-dir}/specs.
    #[arg(long, value_parser = crate::location::store_url)]
    pub spec_store: Option<Url>,
    #[arg(help_heading = heading::DRIVER)]
    /// The driver's base URL, http://HOST:PORT or https://HOST (the
    /// scheme is required: 127.0.0.1:5000 is refused with "did you mean
    /// http://127.0.0.1:5000?"). The worker activates there before taking
    /// jobs (creates get 503 until then) and sends job_started /
    /// job_complete. None: no activation, no reports.
    #[arg(long, value_parser = crate::location::parse_driver_url)]
    pub driver_url: Option<Url>,
    #[arg(help_heading = heading::DRIVER)]
    /// The worker's name (X-Hail-Instance-Name, /healthcheck). Default: the host name.
    #[arg(long)]
    pub name: Option<String>,
    #[arg(help_heading = heading::DRIVER)]
    /// The instance config the driver made this VM with, base64 of its
    /// JSON, as Hail's driver passes it in the environment (INSTANCE_CONFIG,
    /// read when neither this nor --instance-config-file is given). Each
    /// job's `resources` (what it is billed for) come from it; without one
    /// they are `[]`.
    #[arg(long, hide_env_values = true)]
    pub instance_config: Option<String>,
    #[arg(help_heading = heading::DRIVER)]
    /// The instance config in a file: its JSON, or base64 of it.
    #[arg(long, conflicts_with = "instance_config")]
    pub instance_config_file: Option<PathBuf>,
    #[arg(help_heading = heading::DRIVER)]
    /// The cloud region statuses name (`region`). Default: the REGION
    /// environment variable, as on Hail's workers, else empty.
    #[arg(long)]
    pub region: Option<String>,
    #[arg(help_heading = heading::DRIVER)]
    /// The pause after each billing_update call (the running attempts the
    /// driver bills), in ms; Hail's worker waits 60 s.
    #[arg(long, default_value_t = DEFAULT_BILLING_UPDATE_PERIOD.as_millis() as u64)]
    pub billing_update_ms: u64,
    #[arg(help_heading = heading::JOBS)]
    /// Also queue jobs for memory: a job waits until its memory_bytes are
    /// free, and one asking for more than --memory errors. Default: cores
    /// only, as Hail's worker admits (memory is each job's limit).
    #[arg(long)]
    pub admit_by_memory: bool,
    #[arg(help_heading = heading::DRIVER)]
    /// The activation token, sent as X-Hail-Instance-Token on the activate
    /// call; the driver's answer replaces it for every later call.
    #[arg(
        long,
        env = "BATCH_WORKER_ACTIVATION_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub activation_token: String,
    #[arg(help_heading = heading::DRIVER)]
    /// The IP address sent to the driver on activation (where it reaches
    /// this worker). Default: the --listen address's IP; for a wildcard
    /// (0.0.0.0, ::), the local address of the route to the driver.
    #[arg(long)]
    pub ip_address: Option<std::net::IpAddr>,
    #[arg(help_heading = heading::DRIVER)]
    /// Driver calls on the wire at once (reports are retried until
    /// acknowledged; waiting out a backoff holds no slot).
    #[arg(long, default_value_t = 64)]
    pub report_concurrency: usize,
    #[arg(help_heading = heading::DRIVER)]
    /// At shutdown, the longest wait for reports still being delivered, in ms.
    #[arg(long, default_value_t = DEFAULT_REPORT_DRAIN_MS)]
    pub report_drain_ms: u64,
    #[arg(help_heading = heading::JOBS)]
    /// Cores jobs may reserve in all (fractions allowed, e.g. 1.5).
    /// Default: the machine's.
    #[arg(long)]
    pub cores: Option<f64>,
    #[arg(help_heading = heading::JOBS)]
    /// Memory jobs may reserve in all, in bytes or with a unit (bytesize's,
    /// case-insensitive): 8GiB or 8Gi is 8 × 2^30 bytes, 8G or 8GB is
    /// 8 × 10^9 (K, M, G, T, P: powers of 1000; KiB, MiB, GiB, TiB, PiB:
    /// of 1024); 1000000 is bytes. `config` prints the bytes. Default: the
    /// machine's.
    #[arg(long)]
    pub memory: Option<bytesize::ByteSize>,
    #[arg(help_heading = heading::STORES)]
    /// Root where finished attempts' status.json and main log are
    /// written: an absolute path or a URL, as --spec-store. Default:
    /// {data-dir}/logs.
    #[arg(long, value_parser = crate::location::store_url)]
    pub logs_store: Option<Url>,
    #[arg(help_heading = heading::STORES)]
    /// A file of store options, `NAME=VALUE` lines with the names of the
    /// AWS_*, AZURE_*, GOOGLE_* variables (object_store's keys); they
    /// override the environment's, for every store the worker opens.
    #[arg(long)]
    pub store_options: Option<PathBuf>,
    #[arg(help_heading = heading::JOURNAL)]
    /// When a journal record counts as written: `fsync` (survives power
    /// loss) or `flush` (survives the worker's crash).
    #[arg(long, value_enum, default_value = "fsync")]
    pub durability: Durability,
    #[arg(help_heading = heading::JOURNAL)]
    /// Start even if the journal is damaged (a corrupt record, records
    /// missing or out of order, a journal missing beside its attempts):
    /// keep every valid record, drop only the damaged bytes (saying what
    /// was dropped), and rewrite the journal clean.
    #[arg(long)]
    pub repair: bool,
    #[arg(help_heading = heading::JOURNAL)]
    /// Bytes reserved for each journal segment when it starts (`fallocate`),
    /// so that jobs already accepted can still be ended and reported on a
    /// full disk; 0 for none.
    #[arg(long, default_value_t = DEFAULT_PREALLOCATE_BYTES)]
    pub journal_preallocate_bytes: u64,
    #[arg(help_heading = heading::JOURNAL)]
    /// Refuse creates (503 with `Retry-After`) while the file system of the
    /// data directory has fewer free bytes than this; 0 for no floor.
    #[arg(long, default_value_t = DEFAULT_MIN_FREE_BYTES)]
    pub min_free_bytes: u64,
    #[arg(help_heading = heading::JOURNAL)]
    /// Compact the journal after this many bytes appended.
    #[arg(long, default_value_t = DEFAULT_JOURNAL_SEGMENT_BYTES)]
    pub journal_segment_bytes: u64,
    #[arg(help_heading = heading::JOURNAL)]
    /// Remember finished, reported attempts (403 for a repeated create,
    /// across restarts) for this many hours.
    #[arg(long, default_value_t = DEFAULT_RETENTION_HOURS)]
    pub retention_hours: u64,
    #[arg(help_heading = heading::API)]
    /// Largest accepted create body, in bytes (larger: 413).
    #[arg(long, default_value_t = 17 * 1024 * 1024)]
    pub max_body_bytes: usize,
    #[arg(help_heading = heading::API)]
    /// A request's whole body must arrive within this many ms of its
    /// headers, however it trickles in (then 408).
    #[arg(long, default_value_t = BODY_READ_TIMEOUT.as_millis() as u64)]
    pub body_timeout_ms: u64,
    #[arg(help_heading = heading::API)]
    /// Most bytes of request bodies held at once over every connection
    /// (then 503 for the body that does not fit).
    #[arg(long, default_value_t = DEFAULT_MAX_BUFFERED_BODY_BYTES)]
    pub max_buffered_body_bytes: usize,
    #[arg(help_heading = heading::API)]
    /// Most client connections at once (more are closed as they are
    /// accepted); lowered to the open-file limit less 256 if need be.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    #[arg(help_heading = heading::API)]
    /// A connection with no request in flight and no byte either way for
    /// this many ms is closed (HTTP/1 and h2c).
    #[arg(long, default_value_t = DEFAULT_IDLE_TIMEOUT.as_millis() as u64)]
    pub idle_timeout_ms: u64,
    #[arg(help_heading = heading::API)]
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

/// How `serve` runs jobs (`--executor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    /// A host process per job (its command; `process.image` ignored): for
    /// development and the demo, runs anywhere.
    Host,
    /// An OCI container per job, made with the `runc` CLI from the job's
    /// image (pulled into the image cache), with its CPU and memory limits,
    /// secrets mounted and no network. Needs root and runc.
    Runc,
}

/// Flags of the executor (`serve`).
#[derive(Debug, Clone, Args)]
pub struct ExecutorArgs {
    #[arg(help_heading = heading::JOBS)]
    /// How jobs run: `host` (host processes) or `runc` (OCI containers).
    #[arg(long, value_enum, default_value = "host")]
    pub executor: ExecutorKind,
    #[arg(help_heading = heading::JOBS)]
    /// With `--executor host` and a worker running as root: the
    /// unprivileged user jobs run as (their directories are given to it),
    /// so that no job can read the worker's memory or another job's
    /// secrets. '' runs jobs as the worker's own user.
    #[arg(long, default_value = "nobody")]
    pub job_user: String,
    #[arg(help_heading = heading::JOBS)]
    /// With `--executor host`: the cgroup hierarchy each job gets a cgroup
    /// of its own in (`auto`: v2 if mounted with `cgroup.kill`, else v1,
    /// else none), so that a timeout, a cancel, shutdown or a restart ends
    /// every process of the job, even one that left its process group.
    #[arg(long, value_enum, default_value = "auto")]
    pub job_cgroups: CgroupMode,
    #[arg(help_heading = heading::JOBS)]
    /// Hand each job's process (a host process, or `runc run`) to a shim
    /// (a small re-exec of this binary) that outlives the worker, so a
    /// restart re-attaches to running jobs instead of losing them.
    /// `false`: jobs are the worker's own children.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub job_shim: bool,
    #[arg(help_heading = heading::JOBS)]
    /// With `--job-shim`: most bytes a job's `main.log` keeps (its first
    /// and last halves, with a line saying what was cut); 0: no cap.
    #[arg(long, default_value_t = DEFAULT_MAX_LOG_BYTES)]
    pub max_log_bytes: u64,
    #[arg(help_heading = heading::JOBS)]
    /// With `--job-shim`: the storage bound, in bytes, of a job whose spec
    /// gives none (`resources.storage_gib` absent or 0); a job whose files
    /// grow past its bound is ended, `error: storage_exceeded`. 0: none.
    #[arg(long, default_value_t = DEFAULT_JOB_STORAGE_BYTES)]
    pub default_job_storage_bytes: u64,
    #[arg(help_heading = heading::CONTAINERS)]
    /// The runc binary (`--executor runc`).
    #[arg(long, default_value = "runc")]
    pub runc: PathBuf,
    #[arg(help_heading = heading::CONTAINERS)]
    /// runc's state directory (`runc --root`). Default: {data-dir}/runc.
    #[arg(long)]
    pub runc_root: Option<PathBuf>,
    #[arg(help_heading = heading::CONTAINERS)]
    /// Where pulled images are unpacked, one directory per manifest
    /// digest. Default: {data-dir}/images.
    #[arg(long)]
    pub image_cache_dir: Option<PathBuf>,
    /// Registry access and pull bounds.
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[arg(help_heading = heading::CONTAINERS)]
    /// Network of job containers: `none` (only loopback), `host` (the
    /// worker's), or `namespace` (one per job, public or private as its
    /// spec says, as Hail gives it; needs root, `ip` and `iptables`).
    #[arg(long, value_enum, default_value = "none")]
    pub container_network: ContainerNetwork,
    /// Job networks (`--container-network namespace`).
    #[command(flatten)]
    pub job_network: super::job_network::JobNetworkArgs,
    #[arg(help_heading = heading::CONTAINERS)]
    /// Memory limit of each image pull's child process (its heap), e.g.
    /// 1GiB (2^30 bytes; 1G is 10^9); at least 64MiB. A registry whose answers need more ends the
    /// job image_pull_failed; the worker is not touched.
    #[arg(long, default_value = "1GiB")]
    pub image_pull_max_memory: bytesize::ByteSize,
    #[arg(help_heading = heading::CONTAINERS)]
    /// Most image pulls at once (of different images; more wait in
    /// `initializing`). With --image-pull-max-memory, bounds what pulls
    /// together may take.
    #[arg(long, default_value_t = crate::image::DEFAULT_MAX_CONCURRENT_PULLS)]
    pub image_pulls_max: usize,
}

impl ExecutorArgs {
    /// Checks the flags' values alone (no file, no program run), whatever
    /// the executor: a value that cannot work is refused even where it is
    /// not used.
    ///
    /// # Errors
    /// [`StartError::Invalid`] naming the flag.
    pub fn check(&self) -> Result<(), StartError> {
        self.registry.image_config(PathBuf::new())?;
        if self.image_pull_max_memory.as_u64() < crate::image::MIN_PULL_MAX_MEMORY_BYTES {
            return Err(StartError::Invalid(format!(
                "--image-pull-max-memory: at least 64MiB (a pull process needs about 30 MiB to start), got {}",
                self.image_pull_max_memory
            )));
        }
        if self.image_pulls_max == 0 {
            return Err(StartError::Invalid("--image-pulls-max: at least 1".into()));
        }
        self.job_network.config(None)?;
        if self.executor == ExecutorKind::Host && self.container_network != ContainerNetwork::None {
            return Err(StartError::Invalid(
                "--container-network applies to container jobs: give --executor runc too (host processes run in the worker's own network)".into(),
            ));
        }
        Ok(())
    }

    /// The job networks of `--container-network namespace` (their records
    /// under `{data_dir}/networks`), keeping those of containers that
    /// outlived the last worker; public jobs are kept from `api`'s port.
    fn open_job_networks(
        &self,
        data_dir: &Path,
        api: &ApiEndpoint,
    ) -> Result<JobNetworks, StartError> {
        let config = self.job_network.config(api.port)?;
        if !nix::unistd::geteuid().is_root() {
            return Err(StartError::Invalid(
                "--container-network namespace: the worker must run as root (it makes network namespaces and iptables rules)".into(),
            ));
        }
        let (records, data) = (data_dir.join(derived::NETWORKS_DIR), data_dir.to_owned());
        let worker_ip = api.ip.clone();
        let opened = crate::container::on_own_runtime(async move {
            JobNetworks::open(config, records, &data, worker_ip)
                .await
                .map_err(|e| e.to_string())
        });
        opened.map_err(|e| StartError::Invalid(format!("--container-network namespace: {e}")))
    }

    /// The image cache: `--image-cache-dir`, else `{data_dir}/images`.
    pub fn image_cache_dir(&self, data_dir: &Path) -> PathBuf {
        self.image_cache_dir
            .clone()
            .unwrap_or_else(|| data_dir.join(derived::IMAGES_DIR))
    }

    /// runc's state directory: `--runc-root`, else `{data_dir}/runc`.
    pub fn runc_root(&self, data_dir: &Path) -> PathBuf {
        self.runc_root
            .clone()
            .unwrap_or_else(|| data_dir.join(derived::RUNC_DIR))
    }

    /// The shim these flags give jobs (`--job-shim`): this binary.
    ///
    /// # Errors
    /// [`StartError::Invalid`] when this binary's path cannot be read.
    fn shim(&self) -> Result<Option<ShimConfig>, StartError> {
        if !self.job_shim {
            return Ok(None);
        }
        let binary = std::env::current_exe().map_err(|e| {
            StartError::Invalid(format!(
                "--job-shim: this binary's path cannot be read ({e}); pass --job-shim false"
            ))
        })?;
        Ok(Some(ShimConfig {
            binary,
            max_log_bytes: self.max_log_bytes,
            default_storage_bytes: self.default_job_storage_bytes,
        }))
    }

    /// The executor these flags give: host processes, or containers with
    /// their image cache, under `data_dir`.
    ///
    /// # Errors
    /// [`StartError::Invalid`]: runc does not run, or the image cache or
    /// the credentials file is unusable.
    pub fn build(
        &self,
        data_dir: &Path,
        kill_grace: Duration,
        api: &ApiEndpoint,
    ) -> Result<Executor, StartError> {
        self.check()?;
        match self.executor {
            ExecutorKind::Host => {
                let job_user = JobUser::resolve(&self.job_user)
                    .map_err(|e| StartError::Invalid(e.to_string()))?;
                if let Some(user) = &job_user {
                    user.check_reaches(data_dir)
                        .map_err(|e| StartError::Invalid(e.to_string()))?;
                }
                // Under this process's own cgroup, one parent per data
                // directory: a restarted worker finds its jobs' cgroups,
                // and workers on other data directories never touch them.
                let parent = format!(
                    "batch-worker/{:08x}",
                    crc32c::crc32c(data_dir.as_os_str().as_encoded_bytes())
                );
                let cgroups = Cgroups::detect(self.job_cgroups, &parent)
                    .map_err(|e| StartError::Invalid(e.to_string()))?;
                if let Some(cgroups) = &cgroups {
                    tracing::info!(version = cgroups.version(), "a cgroup per host job");
                }
                let shim = self.shim()?;
                Ok(Executor::Host(Arc::new(HostRunner {
                    kill_grace,
                    job_user,
                    cgroups,
                    shim,
                })))
            }
            ExecutorKind::Runc => {
                let mut images = self.registry.image_config(self.image_cache_dir(data_dir))?;
                let program = std::env::current_exe().map_err(|e| {
                    StartError::Invalid(format!(
                        "--executor runc: cannot find this program to run image pulls: {e}"
                    ))
                })?;
                let max_memory_bytes = self.image_pull_max_memory.as_u64();
                images.pull_process = Some(PullProcess {
                    program,
                    max_memory_bytes,
                });
                images.max_concurrent_pulls = self.image_pulls_max;
                let job_networks = match self.container_network {
                    ContainerNetwork::Namespace => Some(self.open_job_networks(data_dir, api)?),
                    ContainerNetwork::None | ContainerNetwork::Host => {
                        warn_of_kept_networks(data_dir);
                        None
                    }
                };
                let runner = RuncRunner::new(RuncConfig {
                    runc: self.runc.clone(),
                    state_dir: self.runc_root(data_dir),
                    network: self.container_network,
                    job_networks,
                    kill_grace,
                })
                .map_err(|e| StartError::Invalid(format!("--executor runc: {e}")))?;
                let runner = match self.shim()? {
                    Some(shim) => runner.with_shim(shim),
                    None => runner,
                };
                let images = ImageStore::new(images)
                    .map_err(|e| StartError::Invalid(format!("--executor runc: {e}")))?;
                Ok(Executor::Runc {
                    runner: Arc::new(runner),
                    images: Arc::new(images),
                })
            }
        }
    }
}

/// Logs a warning when `{data_dir}/networks/` holds records of job networks
/// from a run with `--container-network namespace` (a crash left them):
/// this run leaves them, and their namespaces and rules, as they are.
fn warn_of_kept_networks(data_dir: &Path) {
    let dir = data_dir.join(derived::NETWORKS_DIR);
    let records = std::fs::read_dir(&dir)
        .map(|entries| entries.flatten().count())
        .unwrap_or(0);
    if records > 0 {
        tracing::warn!(
            records,
            dir = %dir.display(),
            "job networks of an earlier --container-network namespace run are recorded here; this run leaves them and their namespaces and rules as they are: restart with --container-network namespace (and the same --job-network-prefix) to give them back"
        );
    }
}

/// Where the worker's API is, as its jobs see it: the port public jobs
/// may not reach, the address jobs with a port get in
/// `HAIL_BATCH_WORKER_IP`.
#[derive(Debug, Clone, Default)]
pub struct ApiEndpoint {
    /// The API's listening port.
    pub port: Option<u16>,
    /// The worker's address (the one it gives the driver).
    pub ip: String,
}

/// Opens the worker `serve` runs (see [`crate::worker::WorkerBuilder`]):
/// the spec store (throttled when `blob_latency_ms` > 0), the logs store,
/// the driver client, the capacity, the executor (made once the data
/// directory is locked); recovers the journal. Activation is the caller's
/// (it needs the listening address).
///
/// # Errors
/// [`CliError`] naming what could not be set up; a data directory another
/// worker holds is refused before anything in it is touched.
pub fn build_worker(args: &ServeArgs, api: ApiEndpoint) -> Result<Worker, CliError> {
    // Flag values are checked before anything is made on disk.
    args.check()?;
    let name = args.name.clone().unwrap_or_else(default_name);
    let capacity = args.capacity()?;
    let options = args.store_options()?;
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
        .transpose()
        .map_err(StartError::from)?;
    // The stores: remote ones are opened now; local defaults are made
    // under the data directory only once it is locked (by the builder).
    let data_dir = &args.data_dir;
    let mut builder = Worker::builder(data_dir)
        .name(name)
        .region(args.region())
        .capacity(capacity)
        .admit_by_memory(args.admit_by_memory)
        .billing_update_period(Duration::from_millis(args.billing_update_ms.max(1)))
        .journal(JournalOptions {
            durability: args.durability,
            repair: args.repair,
            mode: None,
            preallocate_bytes: args.journal_preallocate_bytes,
            min_free_bytes: args.min_free_bytes,
            faults: None,
        })
        .journal_segment_bytes(args.journal_segment_bytes)
        .retention(Duration::from_secs(args.retention_hours * 3600))
        .report_drain(Duration::from_millis(args.report_drain_ms))
        .store_options(options.clone());
    if let Some(driver) = driver {
        builder = builder.driver(driver);
    }
    let instance_config = args.instance_config()?;
    if instance_config.is_none() && args.driver_url.is_some() {
        tracing::warn!("no instance config (INSTANCE_CONFIG, --instance-config, --instance-config-file): every job's resources are [] and Hail's driver bills it nothing");
    }
    if let Some(config) = instance_config {
        if u64::from(config.cores()) * 1000 != capacity.cores_mcpu {
            tracing::warn!(
                instance_cores = config.cores(),
                worker_cores_mcpu = capacity.cores_mcpu,
                "the instance config's machine type has another number of cores than this worker gives jobs (--cores): jobs are billed as Hail bills them on that machine type; give --cores the machine type's cores if this worker runs on it"
            );
        }
        builder = builder.instance_config(config);
    }
    let remote = |url: Option<&Url>| {
        url.map(|url| store_or_local(Some(url), Path::new(""), &options))
            .transpose()
    };
    let spec_store = remote(args.spec_store.as_ref())?;
    let logs_store = remote(args.logs_store.as_ref())?;
    // Shown by `GET /batch-worker/v1/worker`, for `submit`.
    builder = builder.spec_store_location(args.resolved()?.spec_store);
    let executor = args.executor.clone();
    let kill_grace = Duration::from_millis(args.spec.kill_grace_ms);
    let spec = args.spec.clone();
    let (blob_latency_ms, load_config) = (args.spec.blob_latency_ms, args.spec.load_config());
    let worker = builder
        .executor_with(move |data_dir| {
            executor
                .build(data_dir, kill_grace, &api)
                .map_err(|e| e.to_string())
        })
        .stores_with(move |data_dir| {
            let local = |name: &str| {
                store_or_local(None, &data_dir.join(name), &StoreOptions::default())
                    .map_err(|e| e.to_string())
            };
            let (store, root) = match spec_store {
                Some(remote) => remote,
                None => local(derived::SPECS_DIR)?,
            };
            let slow =
                |store| with_control_plane(store, spec.token_latency_ms, spec.token_latency_seed);
            let specs = SpecStore::new(throttled(slow(store), blob_latency_ms), root, load_config)
                .map_err(|e| StartError::Runtime(e).to_string())?;
            let (logs, logs_root) = match logs_store {
                Some(remote) => remote,
                None => local(derived::LOGS_DIR)?,
            };
            Ok((specs, LogsStore::new(slow(logs), logs_root)))
        })
        .open()?;
    Ok(worker)
}

impl ServeArgs {
    /// Checks the flags' values alone: no socket, no file under the data
    /// directory, no program run (the store options file is read).
    ///
    /// # Errors
    /// [`StartError`] naming the flag (`--name`, `--driver-url`, `--cores`,
    /// `--store-options`, the executor's flags).
    pub fn check(&self) -> Result<(), StartError> {
        let name = self.name.clone().unwrap_or_else(default_name);
        if reqwest::header::HeaderValue::from_str(&name).is_err() || name.is_empty() {
            return Err(StartError::Invalid(format!(
                "--name: {name:?} cannot be sent as X-Hail-Instance-Name (visible ASCII expected)"
            )));
        }
        if let Some(url) = &self.driver_url {
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(StartError::Invalid(format!(
                    "--driver-url: expected an http:// or https:// URL with a host, got {url}"
                )));
            }
        }
        self.capacity()?;
        self.instance_config()?;
        self.store_options()?;
        self.executor.check()
    }

    /// The instance config: `--instance-config`, `--instance-config-file`,
    /// else Hail's `INSTANCE_CONFIG` environment variable, else none.
    ///
    /// # Errors
    /// [`StartError::Invalid`] naming the source and what is wrong in it.
    pub fn instance_config(&self) -> Result<Option<InstanceConfig>, StartError> {
        let invalid = |source: &str, e: &dyn std::fmt::Display| {
            StartError::Invalid(format!(
                "{source}: not a usable instance config: {e} (expected base64 of the JSON Hail's driver writes, or the JSON itself in a file)"
            ))
        };
        if let Some(text) = &self.instance_config {
            return InstanceConfig::from_base64(text.trim())
                .map(Some)
                .map_err(|e| invalid("--instance-config", &e));
        }
        if let Some(path) = &self.instance_config_file {
            let source = format!("--instance-config-file {}", path.display());
            // An instance config is a few KiB: read at most 1 MiB (a
            // device or a wrong file must not fill memory).
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(
                &mut std::io::Read::take(
                    std::fs::File::open(path).map_err(|e| invalid(&source, &e))?,
                    MAX_INSTANCE_CONFIG_BYTES + 1,
                ),
                &mut bytes,
            )
            .map_err(|e| invalid(&source, &e))?;
            if bytes.len() as u64 > MAX_INSTANCE_CONFIG_BYTES {
                return Err(invalid(
                    &source,
                    &format!("the file is over {MAX_INSTANCE_CONFIG_BYTES} bytes"),
                ));
            }
            let text = String::from_utf8_lossy(&bytes);
            let parsed = if text.trim_start().starts_with('{') {
                InstanceConfig::from_json(&bytes)
            } else {
                InstanceConfig::from_base64(text.trim())
            };
            return parsed.map(Some).map_err(|e| invalid(&source, &e));
        }
        match std::env::var("INSTANCE_CONFIG") {
            Ok(text) if !text.trim().is_empty() => InstanceConfig::from_base64(text.trim())
                .map(Some)
                .map_err(|e| invalid("the INSTANCE_CONFIG environment variable", &e)),
            _ => Ok(None),
        }
    }

    /// `--region`, else Hail's `REGION` environment variable, else empty.
    pub fn region(&self) -> String {
        self.region
            .clone()
            .or_else(|| std::env::var("REGION").ok())
            .unwrap_or_default()
    }

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

/// Runs `serve`: checks the flags' values, binds `--listen` (a busy port
/// leaves nothing behind), finds the address to advertise, opens the
/// worker, activates in the background, serves until a signal or `POST
/// /api/v1alpha/kill`, then ends processes and drains reports.
///
/// # Errors
/// [`CliError`]: the port, the flags, the worker.
pub async fn run(args: &ServeArgs) -> Result<ExitCode, CliError> {
    let api_config = ApiConfig {
        api_token: args
            .api_token_file
            .as_deref()
            .map(ApiToken::from_file)
            .transpose()?,
        body_read_timeout: Duration::from_millis(args.body_timeout_ms),
        max_buffered_body_bytes: args.max_buffered_body_bytes,
        ..ApiConfig::new(args.max_body_bytes)
    };
    args.check()?;
    // Not dumpable: no core file, and no process of another user (a job)
    // may read its memory through /proc, where the jobs' secrets are.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "the worker could not be made non-dumpable");
    }
    match crate::server::raise_fd_limit() {
        Ok(limit) => tracing::debug!(
            open_files = limit,
            "open-file limit raised to its hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, "the open-file limit could not be raised"),
    }
    let limits = ConnectionLimits {
        max_connections: args.max_connections,
        idle_timeout: Duration::from_millis(args.idle_timeout_ms),
    }
    .within_fd_limit();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| CliError::Listen {
            addr: args.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| CliError::Io {
        context: "the listening address".into(),
        source,
    })?;
    let ip_address =
        advertised_ip(local.ip(), args.ip_address, args.driver_url.as_ref())?.to_string();
    // The start line: what this worker runs with, derived defaults
    // resolved (as `config` prints them).
    let resolved = args.resolved()?;
    tracing::info!(
        listen = %local,
        name = args.name.clone().unwrap_or_else(default_name),
        data_dir = %resolved.data_dir.display(),
        cores = derived::cores(resolved.capacity.cores_mcpu),
        memory_bytes = resolved.capacity.memory_bytes,
        memory = derived::human_bytes(resolved.capacity.memory_bytes),
        executor = ?resolved.executor,
        container_network = ?args.executor.container_network,
        spec_store = resolved.spec_store,
        logs_store = resolved.logs_store,
        driver_url = resolved.driver_url.as_deref().unwrap_or("none (no activation, no reports)"),
        api_auth = if api_config.api_token.is_some() { "bearer token" } else { "none" },
        "batch-worker starting"
    );
    if args.executor.container_network == ContainerNetwork::Namespace {
        let n = &args.executor.job_network;
        tracing::info!(
            prefix = %n.job_network_prefix,
            public = %n.job_network_public,
            private = %n.job_network_private,
            pool = n.job_network_pool,
            ports = %format!("{}-{}", n.job_port_range.start(), n.job_port_range.end()),
            worker_ip = %ip_address,
            "job networks"
        );
    }
    let worker = build_worker(
        args,
        ApiEndpoint {
            port: Some(local.port()),
            ip: ip_address.clone(),
        },
    )?;
    tracing::info!(listen = %local, name = worker.name(), "batch-worker serving");
    // Credentials' values are masked.
    let options = args.store_options()?;
    tracing::info!(options = ?options, "store options (environment, then --store-options)");
    let activating = worker.clone();
    tokio::spawn(async move {
        if let Err(e) = activating.activate(&ip_address).await {
            tracing::error!(error = %e, "activation with the driver failed; creates are refused (503)");
        }
    });
    tracing::info!(
        max_connections = limits.max_connections,
        idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
        "connection limits"
    );
    crate::server::serve(listener, worker, api_config, limits, shutdown_signals())
        .await
        .map_err(|source| CliError::Io {
            context: "serving".into(),
            source,
        })?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on the first SIGINT or SIGTERM (graceful shutdown); a second
/// one exits the process at once, with status 1.
fn shutdown_signals() -> impl std::future::Future<Output = ()> {
    let (first, received) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .expect("installing a SIGINT handler");
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::info!("signal received: shutting down; a second SIGTERM or SIGINT exits at once");
        let _ = first.send(());
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::warn!("second signal: exiting now without draining");
        std::process::exit(1);
    });
    async move {
        let _ = received.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

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
            match args
                .executor
                .build(dir.path(), Duration::from_secs(1), &ApiEndpoint::default())
            {
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
