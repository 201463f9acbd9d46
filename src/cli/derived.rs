//! What `serve` makes of its flags where they leave a value unset: the
//! directories under the data directory, the stores' URLs, the capacity
//! (the machine's). `serve` opens and logs these, `config` prints them:
//! both through [`ServeArgs::resolved`], so they cannot disagree.

use std::path::{Path, PathBuf};

use super::{ExecutorKind, ServeArgs, StartError};
use crate::admission::Capacity;
use crate::store::redact_url;

/// The spec store's directory under the data directory, when
/// `--spec-store` is unset.
pub const SPECS_DIR: &str = "specs";
/// The logs store's directory under the data directory, when
/// `--logs-store` is unset.
pub const LOGS_DIR: &str = "logs";
/// The image cache's directory under the data directory, when
/// `--image-cache-dir` is unset.
pub const IMAGES_DIR: &str = "images";
/// runc's state directory under the data directory, when `--runc-root`
/// is unset.
pub const RUNC_DIR: &str = "runc";

/// Under the data directory: the records of job networks in use
/// (`--container-network namespace`), one `{container id}.json` each.
pub const NETWORKS_DIR: &str = "networks";

/// The values `serve` runs with, derived defaults resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// `--data-dir`, absolute (not made).
    pub data_dir: PathBuf,
    /// The journal's directory, `{data-dir}/journal`.
    pub journal_dir: PathBuf,
    /// The spec store's URL (credentials redacted), `file://{data-dir}/specs`
    /// when `--spec-store` is unset.
    pub spec_store: String,
    /// The logs store's URL (credentials redacted), `file://{data-dir}/logs`
    /// when `--logs-store` is unset.
    pub logs_store: String,
    /// The image cache (`--executor runc`), `{data-dir}/images` by default.
    pub image_cache_dir: PathBuf,
    /// runc's state directory (`--executor runc`), `{data-dir}/runc` by
    /// default.
    pub runc_root: PathBuf,
    /// What jobs may reserve in all: `--cores` and `--memory`, the
    /// machine's where unset.
    pub capacity: Capacity,
    /// How jobs run.
    pub executor: ExecutorKind,
    /// The driver's URL (credentials redacted); `None`: no driver, no
    /// activation, no reports.
    pub driver_url: Option<String>,
}

impl ServeArgs {
    /// The values `serve` runs with, derived defaults resolved; nothing is
    /// made or opened.
    ///
    /// # Errors
    /// [`StartError::DataDir`] when the data directory cannot be made
    /// absolute (no current directory); [`StartError::Invalid`] for
    /// `--cores`.
    pub fn resolved(&self) -> Result<Resolved, StartError> {
        let data_dir = std::path::absolute(&self.data_dir).map_err(|source| {
            StartError::from(crate::dirs::DirError::from_io(
                &self.data_dir,
                "--data-dir",
                source,
            ))
        })?;
        let store = |url: Option<&url::Url>, dir: &str| {
            url.map_or_else(|| local_url(&data_dir.join(dir)), redact_url)
        };
        Ok(Resolved {
            journal_dir: crate::journal::journal_dir(&data_dir),
            spec_store: store(self.spec_store.as_ref(), SPECS_DIR),
            logs_store: store(self.logs_store.as_ref(), LOGS_DIR),
            image_cache_dir: self.executor.image_cache_dir(&data_dir),
            runc_root: self.executor.runc_root(&data_dir),
            capacity: self.capacity()?,
            executor: self.executor.executor,
            driver_url: self.driver_url.as_ref().map(redact_url),
            data_dir,
        })
    }
}

/// The `file://` URL of a local directory.
pub fn local_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// `bytes` for a person, in SI and IEC units: `8.0 GB (7.45 GiB)`, or
/// `512 B` under a kilobyte.
pub fn human_bytes(bytes: u64) -> String {
    let size = bytesize::ByteSize::b(bytes);
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    format!("{:.1} ({:.2})", size.display().si(), size.display().iec())
}

/// Cores from millicpus, as `--cores` takes them: `2`, `1.5`.
pub fn cores(mcpu: u64) -> String {
    (mcpu as f64 / 1000.0).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_in_both_units() {
        assert_eq!(human_bytes(8_000_000_000), "8.0 GB (7.45 GiB)");
        assert_eq!(human_bytes(8 << 30), "8.6 GB (8.00 GiB)");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(cores(1500), "1.5");
        assert_eq!(cores(2000), "2");
    }
}
