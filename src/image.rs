//! Container images: pulling `process.image` from its OCI registry into the
//! worker's image cache, for the runc executor ([`crate::container`]).
//!
//! # Cache layout (under `--image-cache-dir`, default `{data_dir}/images`)
//!
//! ```text
//! sha256/{manifest hex}/rootfs        the unpacked image, shared read-only by
//!                                     every job of that image (the lower
//!                                     layer of each job's overlay)
//! sha256/{manifest hex}/config.json   the image's config (Env, WorkingDir,
//!                                     Entrypoint, Cmd, User)
//! tmp/pull-{nonce}/                   one pull's scratch (its child process's)
//!     blob-{layer hex}.{nonce}        a layer being downloaded (removed once
//!                                     applied)
//!     {manifest hex}.{nonce}/         the image being unpacked; renamed into
//!                                     sha256/ when complete
//! ```
//!
//! An entry under `sha256/` is complete by construction (it appears by one
//! rename), so a crash mid-pull leaves only `tmp/` debris, which
//! [`ImageStore::new`] clears (and the parent of a pull process removes
//! its scratch however the child ended).
//!
//! The worker pulls in a child process (`batch-worker image pull --json`,
//! [`PullProcess`]) whose memory is limited: the registry client reads a
//! manifest, a config or a token answer whole, so a registry named in a
//! spec could otherwise make the worker allocate until the kernel kills
//! it, and every job with it. The child's failure is one job's
//! `image_pull_failed`.
//!
//! Why one shared root file system per image and an overlay per job, not a
//! copy per job: a job's start then costs one mount whatever the image's
//! size, the image's files are in the page cache once for all its jobs, and
//! the job's writes land in its own upper directory (its working directory
//! on the data disk), removed with the attempt.
//!
//! Concurrent jobs of one image pull it once: each reference has a slot
//! whose lock the first job holds while it pulls; the others wait and take
//! its result. A reference is resolved once per worker life (a moved tag is
//! seen after a restart); a failed pull is not remembered, so the next job
//! tries again.
//!
//! This file is long (about 860 lines of code, 980 with tests): the cache, the registry
//! client, the pull child's protocol and the reference checks share the
//! cache's invariants (tmp/ then one rename; one pull per reference); layers
//! are in `image/layer.rs`, the child process in `image/child.rs`.

mod child;
pub use child::PullReport;
pub mod layer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use layer::{LayerCompression, LayerError};

/// Settings of the image cache and the registry client.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    /// Root of the cache (see the module docs for its layout).
    pub cache_dir: PathBuf,
    /// A docker-style `config.json` (`{"auths": {"host": {"auth":
    /// base64("user:password")}}}`, or credential helpers) giving registry
    /// credentials; `None`: every registry is pulled from anonymously.
    pub auth_file: Option<PathBuf>,
    /// Registries (`host:port`) reached over plain HTTP instead of HTTPS,
    /// like Docker's `insecure-registries` (a registry on loopback, in tests).
    pub insecure_registries: Vec<String>,
    /// Tries per registry call when it fails transiently (connection
    /// errors, 5xx, 429); a missing image or refused access fails at once.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled each time (with jitter).
    pub retry_delay: Duration,
    /// Largest image, in bytes: the sum of its layers' sizes as the
    /// manifest declares them (compressed), and of their tar streams
    /// (uncompressed). A layer blob longer than its declared size is cut
    /// off. Bounds what a hostile or broken registry can put on the disk.
    pub max_image_bytes: u64,
    /// Longest one pull may take, retries included (a registry that
    /// trickles bytes would otherwise hold the job and its cores forever).
    pub pull_timeout: Duration,
    /// Run each pull in a child process with bounded memory (what `serve`
    /// does), or `None`: in this process (the child itself, and tools).
    /// The registry client reads manifests, configs and token answers
    /// whole, with no size limit: a hostile registry could otherwise make
    /// the worker allocate until the kernel kills it, with every job.
    pub pull_process: Option<PullProcess>,
    /// Most pulls of different references at once (more wait, in the
    /// `initializing` phase): with [`PullProcess::max_memory_bytes`] it
    /// bounds the memory all pulls together may take.
    pub max_concurrent_pulls: usize,
    /// Where a pull's partial files go (layer blobs, the unpacking root).
    /// `None`: `{cache_dir}/tmp`. Must be on the cache's file system (the
    /// finished image is renamed into `sha256/`).
    pub scratch_dir: Option<PathBuf>,
}

/// How a pull runs in a child process ([`ImageConfig::pull_process`]).
#[derive(Debug, Clone)]
pub struct PullProcess {
    /// This worker's own binary: `{program} image pull --json ...` is run.
    pub program: PathBuf,
    /// The child's memory limit in bytes (`RLIMIT_DATA`: heap and other
    /// private writable memory). Past it, allocation fails and the child
    /// aborts; the pull ends `image_pull_failed` saying so.
    pub max_memory_bytes: u64,
}

/// Default of [`ImageConfig::max_concurrent_pulls`]: 3 (Docker's default
/// of concurrent downloads).
pub const DEFAULT_MAX_CONCURRENT_PULLS: usize = 3;

/// Smallest [`PullProcess::max_memory_bytes`] taken: 64 MiB (a pull
/// process needs about 30 MiB to start).
pub const MIN_PULL_MAX_MEMORY_BYTES: u64 = 64 << 20;

/// Default of [`PullProcess::max_memory_bytes`]: 1 GiB.
pub const DEFAULT_PULL_MAX_MEMORY_BYTES: u64 = 1 << 30;

/// Largest image config taken, in bytes: 4 MiB (real ones are a few KiB;
/// Docker's own limit on a manifest is 4 MiB).
pub const MAX_CONFIG_BYTES: usize = 4 << 20;

/// Default of [`ImageConfig::max_image_bytes`]: 20 GiB.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 20 << 30;

/// Default of [`ImageConfig::pull_timeout`]: 10 minutes.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(600);

impl ImageConfig {
    /// Defaults under `cache_dir`: anonymous, HTTPS everywhere, 4 tries
    /// from 500 ms, images up to 20 GiB pulled within 10 minutes, in this
    /// process.
    pub fn new(cache_dir: PathBuf) -> ImageConfig {
        ImageConfig {
            cache_dir,
            auth_file: None,
            insecure_registries: Vec::new(),
            max_attempts: 4,
            retry_delay: Duration::from_millis(500),
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            pull_timeout: DEFAULT_PULL_TIMEOUT,
            pull_process: None,
            max_concurrent_pulls: DEFAULT_MAX_CONCURRENT_PULLS,
            scratch_dir: None,
        }
    }
}

/// One image in the cache, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The reference as the spec gave it.
    pub reference: String,
    /// The manifest digest it resolved to (`sha256:<64 hex>`).
    pub digest: String,
    /// The unpacked root file system (read-only for jobs: the lower layer
    /// of their overlays).
    pub rootfs: PathBuf,
    /// The image config's `Env` (`NAME=value`).
    pub env: Vec<String>,
    /// The image config's `WorkingDir` (`None`: `/`).
    pub working_dir: Option<String>,
    /// The image config's `Entrypoint`, put before the job's command.
    pub entrypoint: Vec<String>,
    /// The image config's `User` (`name`, `uid`, `name:group`, `uid:gid`;
    /// `None`: root), looked up in the image's own `/etc/passwd` and
    /// `/etc/group` when a job starts.
    pub user: Option<String>,
}

/// Why an image could not be pulled; becomes `ImagePullFailed` with this
/// text as the message.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference is not an image reference.
    #[error("not a valid image reference: {message}")]
    BadReference {
        /// The parser's message.
        message: String,
    },
    /// The registry has no such repository, tag or digest.
    #[error("the image does not exist in its registry ({message})")]
    NotFound {
        /// The registry's answer.
        message: String,
    },
    /// The registry refused the credentials (or asked for some).
    #[error("the registry refused access ({message}); credentials come from --registry-auth-file")]
    Unauthorized {
        /// The registry's answer.
        message: String,
    },
    /// The registry kept failing (or could not be reached) through the
    /// retries, or answered something this worker cannot use.
    #[error("the registry failed after {attempts} {}: {message}", if *attempts == 1 { "try" } else { "tries" })]
    Registry {
        /// Tries made.
        attempts: u32,
        /// The last error.
        message: String,
    },
    /// The credentials file could not be read.
    #[error("cannot read registry credentials from {path}: {message}")]
    Credentials {
        /// The `--registry-auth-file`.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A layer was damaged (digest mismatch), of an unsupported type, or
    /// could not be unpacked.
    #[error("layer {digest}: {source}")]
    Layer {
        /// The layer's digest.
        digest: String,
        /// What went wrong.
        source: LayerError,
    },
    /// The image is not a usable Linux image for this machine (config
    /// unreadable, another OS or architecture, a digest of an unknown
    /// form, larger than `--image-max-bytes`).
    #[error("{0}")]
    Unusable(String),
    /// The pull took longer than `--image-pull-timeout-s`.
    #[error("the pull did not finish within {timeout_s} s (--image-pull-timeout-s)")]
    TimedOut {
        /// The limit, in s.
        timeout_s: u64,
    },
    /// The pull's child process failed: its own error (any of these, as
    /// text).
    #[error("{message}")]
    Child {
        /// The child's message.
        message: String,
    },
    /// The pull's child process could not run, or died without an answer
    /// (over its memory limit, killed).
    #[error("the pull process {message}")]
    ChildDied {
        /// What happened, with the end of its stderr.
        message: String,
    },
    /// The cache directory could not be written.
    #[error("image cache {path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One reference's slot: its lock is held while the reference is pulled;
/// it holds the image once pulled.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<PulledImage>>>>;

/// The image cache and registry client; cheap to share (`Arc`).
pub struct ImageStore {
    config: ImageConfig,
    client: Client,
    /// Per reference: the pulled image once some job has it.
    slots: Mutex<HashMap<String, Slot>>,
    /// Permits for pulls under way ([`ImageConfig::max_concurrent_pulls`]).
    pulls: tokio::sync::Semaphore,
    /// Pulls waiting for a permit.
    waiting: AtomicU64,
    downloads: AtomicU64,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("config", &self.config)
            .field("downloads", &self.downloads)
            .finish_non_exhaustive()
    }
}

impl ImageStore {
    /// Opens the cache at `config.cache_dir` (created), clearing what an
    /// interrupted pull left (`tmp/`, and `blobs/` of earlier versions).
    ///
    /// # Errors
    /// [`PullError::Io`] when the directories cannot be made or cleared;
    /// [`PullError::Credentials`] when `auth_file` is not a readable
    /// docker-style config.
    pub fn new(config: ImageConfig) -> Result<ImageStore, PullError> {
        for debris in ["tmp", "blobs"] {
            let path = config.cache_dir.join(debris);
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(PullError::Io { path, source }),
            }
        }
        ImageStore::open(config)
    }

    /// Opens the cache at `config.cache_dir` (created) as it is: for a pull
    /// process, or a tool, next to a worker that owns the cache.
    ///
    /// # Errors
    /// As [`ImageStore::new`].
    pub fn open(config: ImageConfig) -> Result<ImageStore, PullError> {
        for dir in ["tmp", "sha256"] {
            let path = config.cache_dir.join(dir);
            std::fs::create_dir_all(&path).map_err(|source| PullError::Io { path, source })?;
        }
        if let Some(path) = &config.auth_file {
            read_auth_file(path)?;
        }
        // The reference parser compiles a large regex on first use (about
        // 0.5 s in a debug build): here, at start, not on a thread that
        // answers creates.
        let _ = "busybox:1".parse::<Reference>();
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(config.insecure_registries.clone()),
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        });
        Ok(ImageStore {
            pulls: tokio::sync::Semaphore::new(config.max_concurrent_pulls.max(1)),
            config,
            client,
            slots: Mutex::new(HashMap::new()),
            waiting: AtomicU64::new(0),
            downloads: AtomicU64::new(0),
        })
    }

    /// Pulls waiting for one of the [`ImageConfig::max_concurrent_pulls`]
    /// to end.
    pub fn pulls_waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Images downloaded (not found in the cache) since the worker started.
    pub fn downloads(&self) -> u64 {
        self.downloads.load(Ordering::Relaxed)
    }

    /// The cache's root directory.
    pub fn cache_dir(&self) -> &Path {
        &self.config.cache_dir
    }

    /// The image `reference`, from the cache or pulled now; `true` when
    /// this call downloaded it. Waits while another job pulls the same
    /// reference, then shares its result. Dropping the future abandons the
    /// pull (nothing partial enters the cache).
    ///
    /// # Errors
    /// [`PullError`]: which step failed and why.
    pub async fn pull(&self, reference: &str) -> Result<(Arc<PulledImage>, bool), PullError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry(reference.to_owned()).or_default().clone()
        };
        let mut held = slot.lock().await;
        if let Some(image) = &*held {
            return Ok((image.clone(), false));
        }
        // Waiting for a permit is not part of the pull's time.
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = self.pulls.acquire().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let _permit = permit.expect("never closed");
        let timeout = self.config.pull_timeout;
        let pull = async {
            match &self.config.pull_process {
                None => self.pull_now(reference).await,
                Some(process) => {
                    let (digest, downloaded) =
                        child::pull(&self.config, process, reference).await?;
                    if downloaded {
                        self.downloads.fetch_add(1, Ordering::Relaxed);
                    }
                    let (cache_dir, reference) =
                        (self.config.cache_dir.clone(), reference.to_owned());
                    let image = tokio::task::spawn_blocking(move || {
                        cached_image(&cache_dir, &reference, &digest)
                    })
                    .await
                    .map_err(|e| {
                        PullError::Unusable(format!("reading the image config failed: {e}"))
                    })??;
                    Ok((image, downloaded))
                }
            }
        };
        let (image, downloaded) =
            tokio::time::timeout(timeout, pull)
                .await
                .map_err(|_| PullError::TimedOut {
                    timeout_s: timeout.as_secs(),
                })??;
        let image = Arc::new(image);
        *held = Some(image.clone());
        Ok((image, downloaded))
    }

    /// Pulls `reference` in this process, with no slot (see
    /// [`ImageStore::pull`]); `true` when it downloaded the image.
    ///
    /// # Errors
    /// [`PullError`]: which step failed and why.
    pub async fn pull_now(&self, reference: &str) -> Result<(PulledImage, bool), PullError> {
        let parsed: Reference = reference.parse().map_err(|e| PullError::BadReference {
            message: format!("{e}"),
        })?;
        let auth = self.auth_for(parsed.resolve_registry())?;
        let (manifest, digest, config_json) = self
            .retried(|| self.client.pull_manifest_and_config(&parsed, &auth))
            .await?;
        let hex = sha256_hex(&digest)?.to_owned();
        let entry = self.config.cache_dir.join("sha256").join(&hex);
        check_config_size(&config_json)?;
        // Refused before anything is downloaded: another OS or
        // architecture, an unreadable config, too large.
        let image = image_from_config(reference, &digest, &entry, &config_json)?;
        let declared: u64 = manifest
            .layers
            .iter()
            .map(|l| u64::try_from(l.size).unwrap_or(u64::MAX))
            .fold(0, u64::saturating_add);
        if declared > self.config.max_image_bytes {
            return Err(PullError::Unusable(format!(
                "the image's layers are {declared} bytes, more than the {} allowed (--image-max-bytes)",
                self.config.max_image_bytes
            )));
        }
        let downloaded = if exists(&entry)? {
            false
        } else {
            self.download(&parsed, &manifest, &hex, &config_json)
                .await?;
            self.downloads.fetch_add(1, Ordering::Relaxed);
            true
        };
        Ok((image, downloaded))
    }

    /// Downloads and applies every layer into `tmp/`, then renames the
    /// result to `sha256/{hex}`.
    async fn download(
        &self,
        image: &Reference,
        manifest: &OciImageManifest,
        hex: &str,
        config_json: &str,
    ) -> Result<(), PullError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| PullError::Io { path, source }
        };
        let nonce: u64 = rand::random();
        let scratch = self
            .config
            .scratch_dir
            .clone()
            .unwrap_or_else(|| self.config.cache_dir.join("tmp"));
        let tmp = scratch.join(format!("{hex}.{nonce:016x}"));
        let rootfs = tmp.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(io(&rootfs))?;
        // Removes the partial unpack however this ends (error or drop).
        let _cleanup = RemoveOnDrop(tmp.clone());
        let mut budget = self.config.max_image_bytes;
        for layer in &manifest.layers {
            let layer_hex = sha256_hex(&layer.digest)?;
            let compression =
                LayerCompression::from_media_type(&layer.media_type).map_err(|source| {
                    PullError::Layer {
                        digest: layer.digest.clone(),
                        source,
                    }
                })?;
            let blob = scratch.join(format!("blob-{layer_hex}.{nonce:016x}"));
            let _blob_cleanup = RemoveOnDrop(blob.clone());
            // A blob may not be longer than the manifest says.
            let declared = u64::try_from(layer.size).unwrap_or(0);
            self.retried(|| async {
                let file = tokio::fs::File::create(&blob).await?;
                let mut out = Capped {
                    inner: tokio::io::BufWriter::new(file),
                    left: declared,
                };
                self.client.pull_blob(image, layer, &mut out).await?;
                tokio::io::AsyncWriteExt::flush(&mut out).await?;
                Ok(())
            })
            .await?;
            let (blob_path, rootfs_path, digest) =
                (blob.clone(), rootfs.clone(), layer.digest.clone());
            let applied = tokio::task::spawn_blocking(move || {
                layer::verify_digest(&blob_path, &digest)?;
                layer::apply_layer(&blob_path, compression, &rootfs_path, budget)
            })
            .await
            .map_err(|e| PullError::Unusable(format!("the unpacking thread failed: {e}")))?;
            let stats = applied.map_err(|source| PullError::Layer {
                digest: layer.digest.clone(),
                source,
            })?;
            budget = budget.saturating_sub(stats.tar_bytes);
            tracing::debug!(image = %image, layer = %layer.digest, entries = stats.entries, whiteouts = stats.whiteouts, size_bytes = stats.size_bytes, "layer applied");
        }
        let config_path = tmp.join("config.json");
        std::fs::write(&config_path, config_json).map_err(io(&config_path))?;
        let entry = self.config.cache_dir.join("sha256").join(hex);
        match std::fs::rename(&tmp, &entry) {
            Ok(()) => Ok(()),
            // Another worker process sharing the cache finished first.
            Err(_) if exists(&entry)? => Ok(()),
            Err(source) => Err(PullError::Io {
                path: entry,
                source,
            }),
        }
    }

    /// Runs a registry call, retrying transient failures with exponential
    /// backoff; maps the final error.
    async fn retried<T, F, Fut>(&self, call: F) -> Result<T, PullError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        let attempts = AtomicU64::new(0);
        let result = call
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(self.config.retry_delay)
                    .with_jitter()
                    .with_max_times(self.config.max_attempts.saturating_sub(1) as usize),
            )
            .sleep(tokio::time::sleep)
            .when(is_transient)
            .notify(|e, delay| {
                attempts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, delay_ms = delay.as_millis() as u64, "registry call failed; retrying");
            })
            .await;
        result.map_err(|e| classify(e, attempts.load(Ordering::Relaxed) as u32 + 1))
    }

    /// Credentials for `registry` from the auth file (anonymous without one,
    /// or when it has none for that registry).
    fn auth_for(&self, registry: &str) -> Result<RegistryAuth, PullError> {
        let Some(path) = &self.config.auth_file else {
            return Ok(RegistryAuth::Anonymous);
        };
        let file = std::fs::File::open(path).map_err(|e| PullError::Credentials {
            path: path.clone(),
            message: e.to_string(),
        })?;
        // Docker keys Docker Hub's credentials by this URL.
        let server = match registry {
            "index.docker.io" | "docker.io" | "registry-1.docker.io" => {
                "https://index.docker.io/v1/"
            }
            other => other,
        };
        match docker_credential::get_credential_from_reader(file, server) {
            Ok(docker_credential::DockerCredential::UsernamePassword(user, password)) => {
                Ok(RegistryAuth::Basic(user, password))
            }
            Ok(docker_credential::DockerCredential::IdentityToken(token)) => {
                Ok(RegistryAuth::Bearer(token))
            }
            Err(docker_credential::CredentialRetrievalError::NoCredentialConfigured) => {
                Ok(RegistryAuth::Anonymous)
            }
            Err(e) => Err(PullError::Credentials {
                path: path.clone(),
                message: e.to_string(),
            }),
        }
    }
}

/// Checks that `path` is a docker-style config file (JSON with an optional
/// `auths` object), at start-up.
///
/// # Errors
/// [`PullError::Credentials`] saying what is wrong.
pub fn read_auth_file(path: &Path) -> Result<(), PullError> {
    let fail = |message: String| PullError::Credentials {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("not JSON: {e}")))?;
    match value.get("auths") {
        None | Some(serde_json::Value::Object(_)) if value.is_object() => Ok(()),
        _ => Err(fail(
            "expected a docker config object, {\"auths\": {\"registry\": {\"auth\": \"base64(user:password)\"}}}".into(),
        )),
    }
}

/// Longest image reference taken, in bytes (Docker's limit on a name is
/// 255 per path component; a reference longer than this is not an image).
pub const MAX_REFERENCE_BYTES: usize = 1024;

/// Checks that `reference` is an image reference (`[registry/]name[:tag]
/// [@digest]`), as the worker does when a spec is loaded.
///
/// # Errors
/// The parser's message (which part is wrong).
pub fn check_reference(reference: &str) -> Result<(), String> {
    if reference.len() > MAX_REFERENCE_BYTES {
        return Err(format!(
            "{} bytes long, more than {MAX_REFERENCE_BYTES}",
            reference.len()
        ));
    }
    reference
        .parse::<Reference>()
        .map(drop)
        .map_err(|e| format!("{e}"))
}

/// `e` and its sources, `: `-separated (reqwest's own message hides the
/// cause: "error sending request" says nothing of the refused connection).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// An HTTPS call answered in plain HTTP: rustls's error for it. Never
/// transient; the registry needs --insecure-registry.
fn is_plain_http_answer(e: &OciDistributionError) -> bool {
    matches!(e, OciDistributionError::RequestError(_))
        && error_chain(e).contains("InvalidContentType")
}

fn is_transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(_) if is_plain_http_answer(e) => false,
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        _ => false,
    }
}

fn classify(e: OciDistributionError, attempts: u32) -> PullError {
    let mut message = error_chain(&e);
    if is_plain_http_answer(&e) {
        message.push_str(
            " (a registry that serves plain HTTP must be listed in --insecure-registry HOST:PORT)",
        );
    }
    match &e {
        OciDistributionError::DigestError(_) => PullError::Unusable(format!(
            "a blob's content does not match its digest (damaged in the registry or on the way): {message}"
        )),
        OciDistributionError::ImageManifestNotFoundError(_) => PullError::NotFound { message },
        OciDistributionError::ServerError { code: 404, .. } => PullError::NotFound { message },
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) =>
        {
            PullError::NotFound { message }
        }
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => PullError::Unauthorized { message },
        OciDistributionError::RegistryError { envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)) =>
        {
            PullError::Unauthorized { message }
        }
        _ => PullError::Registry { attempts, message },
    }
}

/// The hex of a `sha256:<64 lowercase hex>` digest: safe as a path
/// component.
fn sha256_hex(digest: &str) -> Result<&str, PullError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(PullError::Unusable(format!(
            "digest {digest:?} is not sha256:<64 lowercase hex digits>"
        ))),
    }
}

/// The image `reference` resolved to `digest`, from its cache entry under
/// `cache_dir`. Blocking (reads the image's config, at most 4 MiB).
///
/// Errors: [`PullError::Io`] (no such entry), [`PullError::Unusable`] (its
/// config is unreadable, too large, or for another platform).
fn cached_image(cache_dir: &Path, reference: &str, digest: &str) -> Result<PulledImage, PullError> {
    use std::io::Read;
    let entry = cache_dir.join("sha256").join(sha256_hex(digest)?);
    let path = entry.join("config.json");
    let mut config_json = String::new();
    std::fs::File::open(&path)
        .and_then(|f| {
            f.take(MAX_CONFIG_BYTES as u64 + 1)
                .read_to_string(&mut config_json)
        })
        .map_err(|source| PullError::Io {
            path: path.clone(),
            source,
        })?;
    check_config_size(&config_json)?;
    image_from_config(reference, digest, &entry, &config_json)
}

/// Refuses an image config over [`MAX_CONFIG_BYTES`].
fn check_config_size(config_json: &str) -> Result<(), PullError> {
    if config_json.len() > MAX_CONFIG_BYTES {
        return Err(PullError::Unusable(format!(
            "the image config is over {MAX_CONFIG_BYTES} bytes"
        )));
    }
    Ok(())
}

fn exists(path: &Path) -> Result<bool, PullError> {
    path.try_exists().map_err(|source| PullError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The [`PulledImage`] of cache entry `entry` with image config
/// `config_json`.
fn image_from_config(
    reference: &str,
    digest: &str,
    entry: &Path,
    config_json: &str,
) -> Result<PulledImage, PullError> {
    let config: oci_spec::image::ImageConfiguration = serde_json::from_str(config_json)
        .map_err(|e| PullError::Unusable(format!("the image config is not readable: {e}")))?;
    let os = config.os().to_string();
    if os != "linux" {
        return Err(PullError::Unusable(format!(
            "the image is for {os:?}; this worker runs linux images"
        )));
    }
    let arch = config.architecture().to_string();
    let ours = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    if arch != ours {
        return Err(PullError::Unusable(format!(
            "the image is for the {arch} architecture; this worker runs {ours} images"
        )));
    }
    let runtime = config.config().clone().unwrap_or_default();
    Ok(PulledImage {
        reference: reference.to_owned(),
        digest: digest.to_owned(),
        rootfs: entry.join("rootfs"),
        env: runtime.env().clone().unwrap_or_default(),
        working_dir: runtime.working_dir().clone().filter(|d| !d.is_empty()),
        entrypoint: runtime.entrypoint().clone().unwrap_or_default(),
        user: runtime.user().clone().filter(|u| !u.is_empty()),
    })
}

/// A writer that fails once more than `left` bytes are written to it: a
/// blob longer than its declared size.
struct Capped<W> {
    inner: W,
    left: u64,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Capped<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the blob is longer than the size its manifest declares",
            )));
        }
        let this = &mut *self;
        let written = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &written {
            this.left -= *n as u64;
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Removes a path (file or tree) when dropped, unless it was renamed away.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = match std::fs::symlink_metadata(&self.0) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&self.0),
            Ok(_) => std::fs::remove_file(&self.0),
            Err(_) => Ok(()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_must_be_sha256_hex_to_become_paths() {
        let good = format!("sha256:{}", "0a".repeat(32));
        assert_eq!(sha256_hex(&good).unwrap(), "0a".repeat(32));
        for bad in [
            "sha256:../../etc".to_owned(),
            format!("sha512:{}", "0a".repeat(32)),
            format!("sha256:{}", "0A".repeat(32)),
            "sha256:".to_owned(),
        ] {
            assert!(sha256_hex(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn images_for_another_os_or_architecture_are_refused_before_any_download() {
        let dir = tempfile::tempdir().unwrap();
        let digest = format!("sha256:{}", "ab".repeat(32));
        let config = |os: &str, arch: &str| {
            format!(
                r#"{{"architecture": "{arch}", "os": "{os}", "rootfs": {{"type": "layers", "diff_ids": []}}, "config": {{"Env": ["A=1"], "WorkingDir": "/w"}}}}"#
            )
        };
        let ours = if cfg!(target_arch = "aarch64") {
            "arm64"
        } else {
            "amd64"
        };
        let other = if ours == "amd64" { "arm64" } else { "amd64" };
        let image =
            image_from_config("r/i:1", &digest, dir.path(), &config("linux", ours)).unwrap();
        assert_eq!(image.env, ["A=1"]);
        assert_eq!(image.working_dir.as_deref(), Some("/w"));
        let err = image_from_config("r/i:1", &digest, dir.path(), &config("linux", other))
            .unwrap_err()
            .to_string();
        assert!(err.contains(other) && err.contains("architecture"), "{err}");
        let err = image_from_config("r/i:1", &digest, dir.path(), &config("windows", ours))
            .unwrap_err()
            .to_string();
        assert!(err.contains("windows"), "{err}");
    }

    #[test]
    fn references_are_checked_and_bounded() {
        check_reference("127.0.0.1:5055/bw-test/busybox:1").unwrap();
        check_reference(&format!("ubuntu@sha256:{}", "ab".repeat(32))).unwrap();
        for bad in ["", "Not An::Image", "a b"] {
            assert!(check_reference(bad).is_err(), "{bad:?}");
        }
        let long = format!("r.example/{}:1", "a".repeat(MAX_REFERENCE_BYTES));
        let err = check_reference(&long).unwrap_err();
        assert!(err.contains("more than 1024"), "{err}");
    }

    #[test]
    fn the_auth_file_must_be_a_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"auths": {"127.0.0.1:5000": {"auth": "dTpw"}}}"#).unwrap();
        read_auth_file(&good).unwrap();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"auths": []}"#).unwrap();
        let message = read_auth_file(&bad).unwrap_err().to_string();
        assert!(
            message.contains("bad.json") && message.contains("auths"),
            "{message}"
        );
        let missing = dir.path().join("missing.json");
        assert!(read_auth_file(&missing).is_err());
    }

    #[test]
    fn credentials_come_from_the_auth_file_for_their_registry_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        // base64("user:pass")
        std::fs::write(
            &path,
            r#"{"auths": {"registry.example:5000": {"auth": "dXNlcjpwYXNz"}}}"#,
        )
        .unwrap();
        let mut config = ImageConfig::new(dir.path().join("cache"));
        config.auth_file = Some(path);
        let store = ImageStore::new(config).unwrap();
        match store.auth_for("registry.example:5000").unwrap() {
            RegistryAuth::Basic(user, password) => {
                assert_eq!((user.as_str(), password.as_str()), ("user", "pass"))
            }
            other => panic!("expected basic auth, got {other:?}"),
        }
        assert!(matches!(
            store.auth_for("other.example").unwrap(),
            RegistryAuth::Anonymous
        ));
    }

    #[test]
    fn opening_the_cache_clears_an_interrupted_pull_and_keeps_complete_images() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("images");
        std::fs::create_dir_all(cache.join("tmp/abc.1/rootfs")).unwrap();
        std::fs::create_dir_all(cache.join("blobs")).unwrap();
        std::fs::write(cache.join("blobs/def.2"), b"partial").unwrap();
        std::fs::create_dir_all(cache.join("sha256/feed/rootfs/bin")).unwrap();
        // A pull process opens the cache as it is: another pull's scratch
        // stays.
        ImageStore::open(ImageConfig::new(cache.clone())).unwrap();
        assert!(cache.join("tmp/abc.1/rootfs").is_dir());
        ImageStore::new(ImageConfig::new(cache.clone())).unwrap();
        assert_eq!(std::fs::read_dir(cache.join("tmp")).unwrap().count(), 0);
        assert!(!cache.join("blobs").exists());
        assert!(cache.join("sha256/feed/rootfs/bin").is_dir());
    }
}
