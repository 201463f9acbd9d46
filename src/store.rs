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

mod control_plane;
pub use control_plane::{with_control_plane, SlowControlPlane, TokenDelayStore, TOKEN_DELAY_SIGMA};

/// A store URL that `object_store` cannot open.
#[derive(Debug, thiserror::Error)]
#[error("cannot open object store {url}: {source}")]
pub struct StoreOpenError {
    /// The URL (object_store URLs carry no credentials).
    pub url: String,
    /// The cause.
    #[source]
    pub source: object_store::Error,
}

/// Opens an object store from a URL (`file://`, `memory://`, `s3://`,
/// `gs://`, `az://`), with options from the `AWS_*`, `AZURE_*` and
/// `GOOGLE_*` environment variables. Returns the store and the URL's path,
/// the root under which keys live.
///
/// # Errors
/// [`StoreOpenError`] for an unknown scheme or a bad configuration.
pub fn open_store(url: &Url) -> Result<(Arc<dyn ObjectStore>, Path), StoreOpenError> {
    let options = std::env::vars().filter(|(k, _)| {
        k.starts_with("AWS_") || k.starts_with("AZURE_") || k.starts_with("GOOGLE_")
    });
    let (store, root) =
        object_store::parse_url_opts(url, options).map_err(|source| StoreOpenError {
            url: url.to_string(),
            source,
        })?;
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
