//! The command line (clap): one module per subcommand, each parsing its
//! flags and returning its exit status. `main.rs` only sets up logging and
//! calls [`run`].
//!
//! # Layout
//!
//! - [`serve`]: `serve`: its flags, the worker they open, activation, the
//!   HTTP API until a signal.
//! - [`demo`]: `demo`, the end-to-end run on local files.
//! - [`replay`]: `replay`, the journal's timelines and problems.
//! - [`spec`]: `spec show`, one job's spec or what is wrong with its bunch.
//! - [`image`]: `image pull`, and the registry flags `serve` shares.
//! - [`config`]: `config`, the effective configuration of `serve`.
//! - [`jobs`]: `jobs list | status | events | log | cancel`, a client of
//!   one worker's API.
//! - [`submit`]: `submit` (a bunch written and its jobs created on a
//!   worker) and `bunch write`.
//! - [`derived`]: what `serve` derives where a flag is unset (the
//!   directories under the data directory, the stores, the capacity).
//!
//! `--help` groups each subcommand's flags under the headings of
//! [`heading`]; test and benchmark knobs are hidden from it, and
//! `--help-all` lists every flag.

pub mod config;
pub mod demo;
pub mod derived;
pub mod image;
pub mod job_network;
pub mod jobs;
pub mod replay;
pub mod serve;
pub mod spec;
pub mod submit;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use url::Url;

use crate::journal::RecoveryError;
use crate::spec_store::SpecLoadConfig;
use crate::store::{open_store_with, StoreOpenError, StoreOptions, StoreOptionsError};
use crate::worker::OpenError;

pub use demo::DemoArgs;
pub use image::{ImageCommand, ImagePullArgs, RegistryArgs};
pub use replay::ReplayArgs;
pub use serve::{advertised_ip, ExecutorArgs, ExecutorKind, ServeArgs};
pub use spec::{SpecCommand, SpecShowArgs};

/// `--help`'s headings, one per concern; flags of no heading are listed
/// first, under "Options".
pub mod heading {
    /// The HTTP API: listening, bodies, connections, authentication.
    pub const API: &str = "API";
    /// The driver: activation, reports, billing, the instance config.
    pub const DRIVER: &str = "Driver";
    /// The spec and logs stores, and the limits of loading a spec.
    pub const STORES: &str = "Stores and spec loading";
    /// Capacity, admission, and how jobs run.
    pub const JOBS: &str = "Jobs and executor";
    /// The data directory's journal and what it remembers.
    pub const JOURNAL: &str = "Journal";
    /// `--executor runc`: containers, images, registries.
    pub const CONTAINERS: &str = "Containers and registry";
    /// Log lines on stderr.
    pub const LOGGING: &str = "Logging";
    /// Knobs for tests and benchmarks (hidden from `serve --help`, listed
    /// by `--help-all`).
    pub const TESTING: &str = "Testing";
}

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
    #[arg(long, global = true, value_enum, default_value = "text", help_heading = heading::LOGGING)]
    pub log_format: LogFormat,
    /// Print help with every flag, the test and benchmark knobs `--help`
    /// hides included.
    #[arg(long, global = true, action = clap::ArgAction::HelpLong)]
    pub help_all: Option<bool>,
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
    ///
    /// Flags may also come from `--config FILE` (TOML, keys are the flags'
    /// names) and from `BATCH_WORKER_<FLAG>` environment variables; flags
    /// win over the environment, which wins over the file.
    Serve(Box<ServeArgs>),
    /// Print the configuration `serve` would run with, as TOML.
    ///
    /// The same flags, file and environment as `serve`; each value with its
    /// source; secrets masked. Defaults `serve` derives are resolved (the paths under the data
    /// directory, the stores, the machine's cores and memory), sizes in
    /// bytes with their units beside them.
    Config(Box<ServeArgs>),
    /// Run a worker and a driver on loopback with 200 jobs: the main demo.
    ///
    /// Schedules jobs with good, failing, missing and corrupt specs, and
    /// prints what became of each. Exits non-zero if any job ends other than planned or any
    /// create call fails.
    Demo(DemoArgs),
    /// Replay a worker's journal: a summary, problems, timelines, a trace, a picture.
    ///
    /// Takes a worker's data directory, a journal file or a directory of
    /// `*.jnl` files, and folds it through the job state machine: a
    /// summary, problems, and on request timelines, a Chrome trace and an
    /// SVG picture.
    Replay(ReplayArgs),
    /// Look at job specs as the worker reads them.
    Spec {
        /// What to do with the spec.
        #[command(subcommand)]
        command: SpecCommand,
    },
    /// A worker's jobs: list, status, events, log (-f follows), cancel.
    ///
    /// Talks to the worker at --worker
    /// (http://127.0.0.1:5000 by default).
    Jobs {
        /// What to do.
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
    /// Submit job specs by hand from a JSON Lines file and wait for them.
    ///
    /// Writes them as a bunch in the worker's spec store, creates each job
    /// as Hail's driver would, and prints each job's outcome as it ends.
    /// Exits 0 when every job succeeded.
    Submit(Box<submit::SubmitArgs>),
    /// Spec bunches, as Hail's driver writes them.
    Bunch {
        /// What to do.
        #[command(subcommand)]
        command: submit::BunchCommand,
    },
    /// Container images in the worker's image cache.
    Image {
        /// What to do with the image.
        #[command(subcommand)]
        command: ImageCommand,
    },
}

/// The limits of one spec load, shared by `serve` and `spec show`.
#[derive(Debug, Clone, Args)]
pub struct SpecLimitArgs {
    /// Largest spec, in bytes; larger specs error as spec_corrupt.
    #[arg(long, default_value_t = 16 * 1024 * 1024, help_heading = heading::STORES)]
    pub spec_max_bytes: u64,
    /// Deadline of one spec load, retries included, in ms.
    #[arg(long, default_value_t = 60_000, help_heading = heading::STORES)]
    pub spec_timeout_ms: u64,
    /// Attempts per spec read on transient store errors.
    #[arg(long, default_value_t = 5, help_heading = heading::STORES)]
    pub spec_read_attempts: usize,
}

impl SpecLimitArgs {
    /// The spec-load limits these flags give (loads in flight: the
    /// default).
    pub fn load_config(&self) -> SpecLoadConfig {
        SpecLoadConfig {
            max_spec_bytes: self.spec_max_bytes,
            deadline: Duration::from_millis(self.spec_timeout_ms),
            max_attempts: self.spec_read_attempts.max(1),
            ..SpecLoadConfig::default()
        }
    }
}

/// Spec-loading and process flags of `serve`, and its test knobs (hidden
/// from `--help`, listed by `--help-all`).
#[derive(Debug, Clone, Args)]
pub struct SpecArgs {
    /// The limits of one spec load.
    #[command(flatten)]
    pub limits: SpecLimitArgs,
    /// Spec loads in flight at once.
    #[arg(long, default_value_t = 256, help_heading = heading::STORES)]
    pub spec_load_concurrency: usize,
    /// Time between SIGTERM and SIGKILL when ending a process, in ms.
    #[arg(long, default_value_t = 5_000, help_heading = heading::JOBS)]
    pub kill_grace_ms: u64,
    /// Added latency of every blob read, in ms (object_store's throttle).
    #[arg(long, default_value_t = 0, hide = true, help_heading = heading::TESTING)]
    pub blob_latency_ms: u64,
    /// A slow control plane before every spec and logs store
    /// request (a token fetch, as for Azure behind SAS tokens): the median
    /// wait in ms, log-normal with a heavy tail (p99 ≈ 5.7 × median); 0: off.
    #[arg(long, default_value_t = 0, hide = true, help_heading = heading::TESTING)]
    pub token_latency_ms: u64,
    /// Seed of the token waits (the same seed repeats the same waits).
    #[arg(long, default_value_t = 1, hide = true, help_heading = heading::TESTING)]
    pub token_latency_seed: u64,
}

impl SpecArgs {
    /// The spec-load limits these flags give.
    pub fn load_config(&self) -> SpecLoadConfig {
        SpecLoadConfig {
            max_concurrent_loads: self.spec_load_concurrency.max(1),
            ..self.limits.load_config()
        }
    }
}

/// A worker could not be built from its flags.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory (or a directory in it) could not be made.
    #[error(transparent)]
    DataDir(#[from] crate::dirs::DirError),
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

/// Makes `path` absolute and creates it (a directory chosen by
/// `--data-dir`, or one under it).
///
/// # Errors
/// [`StartError::DataDir`], naming the file in the way or the directory
/// not writable.
pub fn prepare_dir(path: &Path) -> Result<PathBuf, StartError> {
    Ok(crate::dirs::make_dir(path, "--data-dir")?)
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
            let store = LocalFileSystem::new_with_prefix(&dir).map_err(|e| StoreOpenError {
                url: format!("file://{}", dir.display()),
                source: e.into(),
            })?;
            Ok((Arc::new(store) as Arc<dyn ObjectStore>, Default::default()))
        }
    }
}

/// Why a subcommand failed (printed by `main` as `error: ...`).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Flags or the set-up they ask for are unusable.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The worker could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// `--api-token-file` is unusable.
    #[error(transparent)]
    ApiToken(#[from] crate::api::auth::TokenFileError),
    /// The demo could not run.
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    /// The journal could not be replayed.
    #[error(transparent)]
    Replay(#[from] crate::replay::ReplayError),
    /// A call to a worker failed (`jobs`, `submit`).
    #[error(transparent)]
    Client(crate::client::ClientError),
    /// A specs file is unusable (`submit`, `bunch write`).
    #[error(transparent)]
    Specs(#[from] crate::submit::SpecsFileError),
    /// `--listen`'s address cannot be bound.
    #[error("cannot listen on {addr}: {source}{}", listen_advice(.source))]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Listening, serving or printing failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What to do about a `--listen` address that cannot be bound.
fn listen_advice(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "; another process (another worker?) listens there: stop it or pass another --listen"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "; that IP is not one of this host's: pass one of its addresses, 0.0.0.0 or \
             127.0.0.1 to --listen"
        }
        std::io::ErrorKind::PermissionDenied => {
            "; ports below 1024 need root or CAP_NET_BIND_SERVICE: pass a port from 1024 up to \
             --listen"
        }
        _ => "",
    }
}

impl CliError {
    /// A refused flag value (`--cores: ...`) that came from the
    /// environment or the `--config` file, saying so.
    fn with_origin(self, effective: &crate::config::Effective, file: Option<&Path>) -> CliError {
        use crate::config::Source;
        let CliError::Start(StartError::Invalid(message)) = self else {
            return self;
        };
        let flag = message
            .strip_prefix("--")
            .and_then(|m| m.split(':').next())
            .unwrap_or_default();
        let setting = |name: &str| effective.0.iter().find(|s| s.name == name);
        let origin = match setting(flag).map(|s| s.source) {
            Some(Source::Environment) => Some(format!(
                "the environment variable {}{}",
                crate::config::ENV_PREFIX,
                flag.to_uppercase().replace('-', "_")
            )),
            Some(Source::File) => Some(match file {
                Some(path) => format!("the config file {}", path.display()),
                None => "the config file".to_owned(),
            }),
            _ => None,
        };
        CliError::Start(StartError::Invalid(match origin {
            Some(origin) => format!("{message} (the value comes from {origin})"),
            None => message,
        }))
    }

    /// The exit status for this error: 2 for a flag's value that cannot
    /// work (a usage error, like a flag clap refuses; the executor's flags
    /// included; a `--data-dir` that is a file), else 1.
    pub fn exit_code(&self) -> ExitCode {
        use crate::dirs::DirError;
        match self {
            CliError::Start(StartError::Invalid(_))
            | CliError::Open(OpenError::Executor(_))
            | CliError::Start(StartError::DataDir(DirError::NotADirectory { .. }))
            | CliError::Open(OpenError::DataDir(DirError::NotADirectory { .. })) => {
                ExitCode::from(2)
            }
            _ => ExitCode::FAILURE,
        }
    }
}

/// Runs the parsed command line; `effective` is the configuration `config`
/// prints.
///
/// # Errors
/// [`CliError`] from the subcommand.
pub async fn run(
    command: Command,
    effective: &crate::config::Effective,
) -> Result<ExitCode, CliError> {
    match command {
        Command::Serve(args) => serve::run(&args)
            .await
            .map_err(|e| e.with_origin(effective, args.config.as_deref())),
        Command::Config(args) => match args.check() {
            Ok(()) => Ok(config::run(effective, &args)?),
            Err(e) => Err(CliError::from(e).with_origin(effective, args.config.as_deref())),
        },
        Command::Replay(args) => replay::run(&args),
        Command::Spec { command } => spec::run(&command).await,
        Command::Image { command } => image::run(&command).await,
        Command::Jobs { command } => jobs::run(&command).await,
        Command::Submit(args) => submit::run(&args).await,
        Command::Bunch { command } => submit::run_bunch(&command).await,
        Command::Demo(args) => demo::run(&args).await,
    }
}

/// The exit status `ExitCode::from(code)`, or success for 0.
fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
