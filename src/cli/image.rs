//! `image pull`: pull an image into the image cache as `serve --executor
//! runc` does, in this process; and the registry flags `serve` shares.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{heading, CliError, StartError};
use crate::image::{ImageConfig, ImageStore, PullError, PullReport, PulledImage};

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
    #[arg(long, hide = true, default_value_t = 500, help_heading = heading::TESTING)]
    pub registry_retry_delay_ms: u64,
    /// Tries per registry call.
    #[arg(long, hide = true, default_value_t = 4, help_heading = heading::TESTING)]
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
    #[arg(long, help_heading = heading::CONTAINERS)]
    pub registry_auth_file: Option<PathBuf>,
    /// Registries (host:port, comma-separated) pulled from over plain HTTP
    /// rather than HTTPS, like Docker's insecure-registries.
    #[arg(long, value_delimiter = ',', help_heading = heading::CONTAINERS)]
    pub insecure_registry: Vec<String>,
    /// Largest image pulled: its layers, compressed as declared and
    /// unpacked, e.g. 20GiB (GiB: 2^30 bytes; G or GB: 10^9). Larger
    /// images end image_pull_failed.
    #[arg(long, default_value = "20GiB", help_heading = heading::CONTAINERS)]
    pub image_max_bytes: bytesize::ByteSize,
    /// Longest one image pull may take, retries included, in s.
    #[arg(long, default_value_t = 600, help_heading = heading::CONTAINERS)]
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

/// Runs `image pull`: exits 0 when the image is in the cache, 1 when the
/// pull failed.
///
/// # Errors
/// Printing the JSON answer failed.
pub async fn run(command: &ImageCommand) -> Result<ExitCode, CliError> {
    let ImageCommand::Pull(args) = command;
    let pulled = args.pull().await;
    if args.json {
        let json = serde_json::to_string(&args.report(&pulled)).map_err(|e| CliError::Io {
            context: "printing the pull report".into(),
            source: e.into(),
        })?;
        println!("{json}");
    } else {
        match &pulled {
            Ok((image, downloaded)) => println!(
                "{} {}\n  digest  {}\n  rootfs  {}",
                if *downloaded { "pulled" } else { "cached" },
                image.reference,
                image.digest,
                image.rootfs.display()
            ),
            Err(e) => eprintln!("error: {}: {e}", args.reference),
        }
    }
    Ok(super::exit(pulled.is_ok()))
}
