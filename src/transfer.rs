//! Staging a job's files through `object_store`: `input_files` are
//! downloaded into the attempt's working directory before its process
//! starts, `output_files` uploaded from it after the process exits 0.
//!
//! Transfers stream (no file is held in memory whole): downloads write the
//! object's byte stream to the file, uploads go through object_store's
//! [`BufWriter`], which switches to a multipart upload once a file passes
//! its 10 MiB buffer. At most [`TRANSFER_CONCURRENCY`] files of one job
//! move at once; each is retried ([`TRANSFER_ATTEMPTS`]) on store errors,
//! except a missing object, which fails at once. Stores are opened with the
//! worker's [`StoreOptions`]; URLs in errors are redacted
//! ([`redact_url`]).

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::ObjectStore;
use tokio::io::AsyncWriteExt;

use crate::job_spec::FileTransfer;
use crate::store::{open_store_with, redact_url, StoreOptions};

/// Files of one job moving at once.
pub const TRANSFER_CONCURRENCY: usize = 4;
/// Attempts per file, the first included.
pub const TRANSFER_ATTEMPTS: usize = 3;

/// Why a job's files could not be moved; the text names the URL.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The URL names no store this worker can open.
    #[error("{url}: {reason}")]
    Store {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The object does not exist.
    #[error("{url} does not exist")]
    Missing {
        /// The URL.
        url: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Local {
        /// The file, relative to the working directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Files.
    pub files: u32,
    /// Bytes.
    pub size_bytes: u64,
}

/// Downloads every input into `work` (creating directories as needed);
/// `file://` URLs inside `protected` are refused.
///
/// # Errors
/// The first [`TransferError`]; the attempt then errors `input_failed`.
pub async fn download_all(
    inputs: &[FileTransfer],
    work: &FsPath,
    options: &StoreOptions,
    protected: &FsPath,
) -> Result<Transferred, TransferError> {
    // Collected first: a closure held across the await would keep the
    // task from being `Send` (a higher-ranked lifetime limitation).
    let transfers: Vec<_> = inputs
        .iter()
        .map(|file| download_one(file, work, options, protected))
        .collect();
    each(transfers).await
}

/// Uploads every output from `work`; `file://` URLs inside `protected`
/// are refused.
///
/// # Errors
/// The first [`TransferError`] (a missing output file included); the
/// attempt then errors `output_failed`.
pub async fn upload_all(
    outputs: &[FileTransfer],
    work: &FsPath,
    options: &StoreOptions,
    protected: &FsPath,
) -> Result<Transferred, TransferError> {
    let transfers: Vec<_> = outputs
        .iter()
        .map(|file| upload_one(file, work, options, protected))
        .collect();
    each(transfers).await
}

async fn download_one(
    file: &FileTransfer,
    work: &FsPath,
    options: &StoreOptions,
    protected: &FsPath,
) -> Result<u64, TransferError> {
    outside_protected(&file.url, protected)?;
    if file.url.scheme() == "file" {
        regular_source(&file.url).await?;
    }
    let (store, key) = open(&file.url, options)?;
    let dest = work.join(&file.local);
    let url = redact_url(&file.url);
    (|| download(&store, &key, &dest, &file.local, &url))
        .retry(backoff())
        .when(|e| !matches!(e, TransferError::Missing { .. }))
        .await
}

async fn upload_one(
    file: &FileTransfer,
    work: &FsPath,
    options: &StoreOptions,
    protected: &FsPath,
) -> Result<u64, TransferError> {
    outside_protected(&file.url, protected)?;
    let (store, key) = open(&file.url, options)?;
    let source = inside(work, &file.local).await?;
    let url = redact_url(&file.url);
    (|| async {
        upload_file(store.clone(), &key, &source)
            .await
            .map_err(|e| match e {
                UploadFailure::Local(source) => TransferError::Local {
                    path: file.local.display().to_string(),
                    source,
                },
                UploadFailure::Store(reason) => TransferError::Store {
                    url: url.clone(),
                    reason,
                },
            })
    })
    .retry(backoff())
    .when(|e| matches!(e, TransferError::Store { .. }))
    .await
}

/// Why [`upload_file`] failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadFailure {
    /// The local file could not be read.
    #[error("reading the file: {0}")]
    Local(std::io::Error),
    /// The store refused or failed.
    #[error("{0}")]
    Store(String),
}

/// Streams the file at `source` to `key` in `store` (multipart when large);
/// returns its size in bytes.
///
/// # Errors
/// [`UploadFailure`]; a failed upload is aborted (no partial object).
pub async fn upload_file(
    store: Arc<dyn ObjectStore>,
    key: &Path,
    source: &FsPath,
) -> Result<u64, UploadFailure> {
    let mut file = tokio::fs::File::open(source)
        .await
        .map_err(UploadFailure::Local)?;
    let mut sink = BufWriter::new(store, key.clone());
    match tokio::io::copy(&mut file, &mut sink).await {
        Ok(size) => {
            sink.shutdown()
                .await
                .map_err(|e| UploadFailure::Store(e.to_string()))?;
            Ok(size)
        }
        Err(e) => {
            let _ = sink.abort().await;
            Err(UploadFailure::Store(e.to_string()))
        }
    }
}

async fn download(
    store: &Arc<dyn ObjectStore>,
    key: &Path,
    dest: &FsPath,
    local: &FsPath,
    url: &str,
) -> Result<u64, TransferError> {
    let local_error = |source| TransferError::Local {
        path: local.display().to_string(),
        source,
    };
    let got = store
        .get_opts(key, Default::default())
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => TransferError::Missing {
                url: url.to_owned(),
            },
            e => TransferError::Store {
                url: url.to_owned(),
                reason: e.to_string(),
            },
        })?;
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(local_error)?;
    }
    let mut file = tokio::fs::File::create(dest).await.map_err(local_error)?;
    let mut stream = got.into_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.try_next().await.map_err(|e| TransferError::Store {
        url: url.to_owned(),
        reason: e.to_string(),
    })? {
        file.write_all(&chunk).await.map_err(local_error)?;
        size += chunk.len() as u64;
    }
    file.flush().await.map_err(local_error)?;
    Ok(size)
}

/// `work/local`, resolved, if it stays inside `work`: the job may have
/// made `local` (or a directory on its way) a symlink to a file elsewhere,
/// which must not be uploaded.
async fn inside(work: &FsPath, local: &FsPath) -> Result<std::path::PathBuf, TransferError> {
    let local_error = |source| TransferError::Local {
        path: local.display().to_string(),
        source,
    };
    let root = tokio::fs::canonicalize(work).await.map_err(local_error)?;
    let real = tokio::fs::canonicalize(work.join(local))
        .await
        .map_err(local_error)?;
    if !real.starts_with(&root) {
        return Err(local_error(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "it leads outside the job's working directory (a symlink?)",
        )));
    }
    regular_file(&real).await.map_err(local_error)?;
    Ok(real)
}

/// Only regular files move: a FIFO would block the transfer forever, a
/// device (`/dev/zero`) never ends, a directory is not one object.
async fn regular_file(path: &FsPath) -> std::io::Result<()> {
    let meta = tokio::fs::metadata(path).await?;
    if meta.is_file() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a directory, FIFO or device)",
        ))
    }
}

/// A `file://` URL must not reach into `protected` (the worker's data
/// directory: its journal, other jobs' files).
fn outside_protected(url: &url::Url, protected: &FsPath) -> Result<(), TransferError> {
    let Ok(path) = url.to_file_path() else {
        return Ok(());
    };
    let protected = std::fs::canonicalize(protected).unwrap_or_else(|_| protected.to_owned());
    // The path may not exist yet (an output): resolve its closest parent.
    let resolved = path
        .ancestors()
        .find_map(|a| std::fs::canonicalize(a).ok().map(|r| (a, r)))
        .map(|(a, r)| r.join(path.strip_prefix(a).unwrap_or(FsPath::new(""))))
        .unwrap_or(path);
    if resolved.starts_with(&protected) {
        return Err(TransferError::Store {
            url: redact_url(url),
            reason: "file:// URLs inside the worker's data directory are refused".into(),
        });
    }
    Ok(())
}

/// For a `file://` URL, the file must be a regular one (see
/// [`regular_file`]); other stores hold only objects.
async fn regular_source(url: &url::Url) -> Result<(), TransferError> {
    let Ok(path) = url.to_file_path() else {
        return Ok(());
    };
    match regular_file(&path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(TransferError::Missing {
            url: redact_url(url),
        }),
        Err(e) => Err(TransferError::Store {
            url: redact_url(url),
            reason: e.to_string(),
        }),
    }
}

fn open(
    url: &url::Url,
    options: &StoreOptions,
) -> Result<(Arc<dyn ObjectStore>, Path), TransferError> {
    open_store_with(url, options).map_err(|e| TransferError::Store {
        url: e.url,
        reason: e.source.to_string(),
    })
}

/// Runs the transfers, [`TRANSFER_CONCURRENCY`] at a time; stops at the
/// first error.
async fn each<Fut>(transfers: Vec<Fut>) -> Result<Transferred, TransferError>
where
    Fut: std::future::Future<Output = Result<u64, TransferError>>,
{
    let sizes: Vec<u64> = futures::stream::iter(transfers)
        .buffer_unordered(TRANSFER_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(Transferred {
        files: sizes.len() as u32,
        size_bytes: sizes.iter().sum(),
    })
}

fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(TRANSFER_ATTEMPTS - 1)
        .with_jitter()
}
