//! Opening object stores from URLs, and wrapping them for latency
//! injection.
//!
//! `object_store`'s [`ThrottledStore`] panics on local files (its
//! `throttle_get` has `unimplemented!()` for file payloads, object_store
//! 0.14.2), so [`throttled`] first puts a [`StreamingStore`] under it, which
//! turns file payloads into byte streams.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use url::Url;

mod faults;
pub use faults::{
    with_control_plane, FaultPlan, FaultPlanError, FaultStats, FaultStore, InjectedFault,
    MAX_LATENCY, SLOW_LATENCY, TOKEN_DELAY_SIGMA,
};

/// A store URL that `object_store` cannot open.
#[derive(Debug, thiserror::Error)]
#[error("cannot open object store {url}: {source}")]
pub struct StoreOpenError {
    /// The URL, redacted (see [`redact_url`]).
    pub url: String,
    /// The cause.
    #[source]
    pub source: StoreOpenCause,
}

/// Why a store URL could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenCause {
    /// The URL names no store this worker opens (with what was meant,
    /// where that is clear).
    #[error(transparent)]
    Location(#[from] crate::location::LocationError),
    /// `object_store` refused it (a bad configuration).
    #[error(transparent)]
    Store(#[from] object_store::Error),
}

/// An options file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read store options file {path}: {reason}")]
pub struct StoreOptionsError {
    /// The file.
    pub path: String,
    /// Why (never a value from the file).
    pub reason: String,
}

/// Options for every store the worker opens (spec store, logs store, job
/// files): the `AWS_*`, `AZURE_*` and `GOOGLE_*` environment variables,
/// overridden by an options file's `NAME=VALUE` lines of the same names
/// (object_store's configuration keys, e.g. `AWS_ENDPOINT`,
/// `AZURE_STORAGE_ACCOUNT_KEY`). `Debug` and [`StoreOptions::masked`] never
/// show a credential's value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoreOptions {
    pairs: Vec<(String, String)>,
}

/// Names of options whose values are credentials (case-insensitive parts).
const SECRET_PARTS: [&str; 7] = [
    "KEY",
    "SECRET",
    "TOKEN",
    "PASSWORD",
    "SAS",
    "CREDENTIAL",
    "SIGNATURE",
];

/// Whether object_store's builder for the name's cloud takes this key.
fn known_option(name: &str) -> bool {
    use object_store::aws::AmazonS3ConfigKey;
    use object_store::azure::AzureConfigKey;
    use object_store::gcp::GoogleConfigKey;
    let key = name.to_ascii_lowercase();
    if name.starts_with("AWS_") {
        key.parse::<AmazonS3ConfigKey>().is_ok()
    } else if name.starts_with("AZURE_") {
        key.parse::<AzureConfigKey>().is_ok()
    } else {
        key.parse::<GoogleConfigKey>().is_ok()
    }
}

fn is_store_option(name: &str) -> bool {
    name.starts_with("AWS_") || name.starts_with("AZURE_") || name.starts_with("GOOGLE_")
}

impl StoreOptions {
    /// The store options among the process's environment variables.
    pub fn from_env() -> StoreOptions {
        StoreOptions {
            pairs: std::env::vars()
                .filter(|(k, _)| is_store_option(k))
                .collect(),
        }
    }

    /// These options, overridden by the `NAME=VALUE` lines of `path` (a
    /// dotenv file: `#` comments, optional quotes). Names that are not
    /// `AWS_*`, `AZURE_*` or `GOOGLE_*` are refused.
    ///
    /// # Errors
    /// [`StoreOptionsError`] naming the file and the line's problem.
    pub fn with_file(mut self, path: &std::path::Path) -> Result<StoreOptions, StoreOptionsError> {
        let fail = |reason: String| StoreOptionsError {
            path: path.display().to_string(),
            reason,
        };
        let lines = dotenvy::from_path_iter(path).map_err(|e| fail(describe_dotenv(&e)))?;
        for line in lines {
            let (name, value) = line.map_err(|e| fail(describe_dotenv(&e)))?;
            if !is_store_option(&name) || !known_option(&name) {
                return Err(fail(format!(
                    "{name}: expected an AWS_*, AZURE_* or GOOGLE_* option name that \
                     object_store knows (e.g. AWS_ENDPOINT, AZURE_STORAGE_ACCOUNT_KEY)"
                )));
            }
            self.pairs.retain(|(k, _)| *k != name);
            self.pairs.push((name, value));
        }
        Ok(self)
    }

    /// Every option as `(name, value)`, credentials' values as `***`,
    /// sorted by name: what the worker prints at start.
    pub fn masked(&self) -> Vec<(String, String)> {
        let mut shown: Vec<(String, String)> = self
            .pairs
            .iter()
            .map(|(k, v)| {
                let upper = k.to_ascii_uppercase();
                let secret = SECRET_PARTS.iter().any(|part| upper.contains(part));
                let shown = if secret {
                    "***".to_owned()
                } else {
                    // An endpoint URL may carry a password or a SAS query.
                    Url::parse(v).map_or_else(|_| v.clone(), |u| redact_url(&u))
                };
                (k.clone(), shown)
            })
            .collect();
        shown.sort();
        shown
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.masked()).finish()
    }
}

/// A dotenv error without the offending line's text (it may hold a value).
fn describe_dotenv(e: &dotenvy::Error) -> String {
    match e {
        dotenvy::Error::LineParse(_, index) => format!("cannot parse the line at byte {index}"),
        dotenvy::Error::Io(io) => io.to_string(),
        _ => "cannot parse the file".to_owned(),
    }
}

/// `url` without what may be a credential: a password in it, and its query
/// (Azure SAS tokens travel as `?sv=...&sig=...`).
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    if shown.query().is_some() {
        shown.set_query(Some("***"));
    }
    shown.to_string()
}

/// A URL-like text that may not parse, with anything between `://` and
/// `@` (userinfo) replaced by `***`.
pub fn redact_text(text: &str) -> String {
    match (text.find("://"), text.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &text[..scheme_end + 3], &text[at..])
        }
        _ => text.to_owned(),
    }
}

/// Opens an object store from a URL (`file://`, `memory://`, `s3://`,
/// `gs://`, `az://`), with options from the `AWS_*`, `AZURE_*` and
/// `GOOGLE_*` environment variables. Returns the store and the URL's path,
/// the root under which keys live.
///
/// # Errors
/// [`StoreOpenError`] for an unknown scheme or a bad configuration.
pub fn open_store(url: &Url) -> Result<(Arc<dyn ObjectStore>, Path), StoreOpenError> {
    open_store_with(url, &StoreOptions::from_env())
}

/// [`open_store`] with `options` instead of the environment's.
///
/// # Errors
/// [`StoreOpenError`] for a URL [`crate::location::check_store_url`]
/// refuses (an unknown scheme, `file://host/x`; the message says what was
/// meant) or a bad configuration.
pub fn open_store_with(
    url: &Url,
    options: &StoreOptions,
) -> Result<(Arc<dyn ObjectStore>, Path), StoreOpenError> {
    let fail = |source: StoreOpenCause| StoreOpenError {
        url: redact_url(url),
        source,
    };
    crate::location::check_store_url(url).map_err(|e| fail(e.into()))?;
    let (store, root) = object_store::parse_url_opts(url, options.pairs.iter().cloned())
        .map_err(|e| fail(e.into()))?;
    Ok((Arc::from(store), root))
}

/// Wraps `store` in object_store's [`ThrottledStore`], adding `latency_ms`
/// to every get (range reads and heads); `store` unchanged when 0.
pub fn throttled(store: Arc<dyn ObjectStore>, latency_ms: u64) -> Arc<dyn ObjectStore> {
    if latency_ms == 0 {
        return store;
    }
    let config = ThrottleConfig {
        wait_get_per_call: Duration::from_millis(latency_ms),
        ..ThrottleConfig::default()
    };
    Arc::new(ThrottledStore::new(StreamingStore(store), config))
}

/// Delegates to the inner store, but answers gets with a byte stream even
/// where the inner store would hand out an open file.
#[derive(Debug)]
pub struct StreamingStore(pub Arc<dyn ObjectStore>);

impl fmt::Display for StreamingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[async_trait]
impl ObjectStore for StreamingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let result = self.0.get_opts(location, options).await?;
        if matches!(result.payload, GetResultPayload::Stream(_)) {
            return Ok(result);
        }
        let (meta, range, attributes, extensions) = (
            result.meta.clone(),
            result.range.clone(),
            result.attributes.clone(),
            result.extensions.clone(),
        );
        Ok(GetResult {
            payload: GetResultPayload::Stream(result.into_stream()),
            meta,
            range,
            attributes,
            extensions,
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::ObjectStoreExt;

    #[test]
    fn store_urls_open_with_their_path_as_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let file = Url::from_directory_path(dir.path()).unwrap();
        let (_, root) = open_store(&file).unwrap();
        assert_eq!(
            root.as_ref(),
            dir.path().to_str().unwrap().trim_matches('/')
        );
        let (_, root) = open_store(&Url::parse("memory:///specs").unwrap()).unwrap();
        assert_eq!(root.as_ref(), "specs");
        // Cloud stores build without touching the network.
        let (store, root) = open_store(&Url::parse("s3://bucket/batch/specs").unwrap()).unwrap();
        assert_eq!(root.as_ref(), "batch/specs");
        assert!(store.to_string().contains("bucket"), "{store}");
        let err = open_store(&Url::parse("ftp://host/x").unwrap()).unwrap_err();
        assert!(err.to_string().contains("ftp://host/x"), "{err}");
        assert!(err.to_string().contains("s3://bucket/prefix"), "{err}");
        let err = open_store(&Url::parse("file://tmp/x").unwrap()).unwrap_err();
        assert!(
            err.to_string().ends_with("did you mean file:///tmp/x?"),
            "{err}"
        );
    }

    #[test]
    fn options_files_override_the_environment_and_credentials_are_masked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("store.env");
        std::fs::write(
            &file,
            "# test\nAWS_REGION=eu-west-3\nAWS_SECRET_ACCESS_KEY=\"TOPSECRET123\"\n\
             AWS_ENDPOINT=http://u:TOPSECRET123@127.0.0.1:9/?sig=TOPSECRET123\n",
        )
        .unwrap();
        let options = StoreOptions::default().with_file(&file).unwrap();
        let shown = format!("{options:?} {:?}", options.masked());
        assert!(shown.contains("eu-west-3"), "{shown}");
        assert!(shown.contains("AWS_SECRET_ACCESS_KEY"), "{shown}");
        assert!(!shown.contains("TOPSECRET123"), "{shown}");
        for bad in ["HOME", "AWS_REGOIN"] {
            std::fs::write(&file, format!("{bad}=x\n")).unwrap();
            let err = StoreOptions::default().with_file(&file).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        std::fs::write(&file, "AWS_X TOPSECRET123 = = \"\n").unwrap();
        let err = StoreOptions::default().with_file(&file).unwrap_err();
        assert!(!err.to_string().contains("TOPSECRET123"), "{err}");
    }

    #[test]
    fn urls_lose_passwords_and_sas_tokens_when_shown() {
        let url = Url::parse("az://acct:pw123@container/x?sv=1&sig=SIGNED").unwrap();
        let shown = redact_url(&url);
        assert!(
            !shown.contains("pw123") && !shown.contains("SIGNED"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn throttled_local_files_are_read_not_panicked_on() {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let key = Path::from("a/b");
        local
            .put(&key, PutPayload::from_static(b"0123456789"))
            .await
            .unwrap();
        let store = throttled(local, 1);
        assert_eq!(&store.get_range(&key, 2..5).await.unwrap()[..], b"234");
        assert_eq!(store.head(&key).await.unwrap().size, 10);
    }
}
