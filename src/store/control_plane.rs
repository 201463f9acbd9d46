//! A slow control plane: every store request first waits for a "token",
//! as a read of Azure Blob behind a SAS token fetched from a slow service
//! does. The wait is drawn from a seeded, heavy-tailed (log-normal)
//! distribution, so a run can be repeated exactly.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal};

/// The spread of the token wait: log-normal with σ = 0.75, so p50 is the
/// median given and p99 about 5.7 times it.
pub const TOKEN_DELAY_SIGMA: f64 = 0.75;

/// Settings of [`TokenDelayStore`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowControlPlane {
    /// Median token wait per request, in ms.
    pub median_ms: u64,
    /// Seed of the waits' random sequence.
    pub seed: u64,
}

/// Wraps a store: each request (get, range reads, head, put, copy, list
/// with delimiter) waits for a token first. Streaming calls (`list`,
/// `delete_stream`) pass through without a wait.
pub struct TokenDelayStore {
    inner: Arc<dyn ObjectStore>,
    config: SlowControlPlane,
    delay: LogNormal<f64>,
    rng: Mutex<StdRng>,
}

impl TokenDelayStore {
    /// `inner` behind a control plane with `config`'s median wait.
    pub fn new(inner: Arc<dyn ObjectStore>, config: SlowControlPlane) -> TokenDelayStore {
        let median = (config.median_ms.max(1) as f64).ln();
        TokenDelayStore {
            inner,
            config,
            delay: LogNormal::new(median, TOKEN_DELAY_SIGMA)
                .expect("a finite median and a positive sigma make a distribution"),
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
        }
    }

    /// The next token wait.
    fn next_delay(&self) -> Duration {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        Duration::from_secs_f64(self.delay.sample(&mut *rng) / 1000.0)
    }

    async fn token(&self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

/// `store` behind a slow control plane, or unchanged when `median_ms` is 0.
pub fn with_control_plane(
    store: Arc<dyn ObjectStore>,
    median_ms: u64,
    seed: u64,
) -> Arc<dyn ObjectStore> {
    if median_ms == 0 {
        return store;
    }
    Arc::new(TokenDelayStore::new(
        store,
        SlowControlPlane { median_ms, seed },
    ))
}

impl fmt::Debug for TokenDelayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenDelayStore")
            .field("inner", &self.inner.to_string())
            .field("config", &self.config)
            .finish()
    }
}

impl fmt::Display for TokenDelayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (token wait: median {} ms)",
            self.inner, self.config.median_ms
        )
    }
}

#[async_trait]
impl ObjectStore for TokenDelayStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.token().await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.token().await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.token().await;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.token().await;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.token().await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.token().await;
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn waits(seed: u64, n: usize) -> Vec<Duration> {
        let store = TokenDelayStore::new(
            Arc::new(InMemory::new()),
            SlowControlPlane {
                median_ms: 1000,
                seed,
            },
        );
        (0..n).map(|_| store.next_delay()).collect()
    }

    #[test]
    fn waits_repeat_for_a_seed_and_have_a_heavy_tail() {
        assert_eq!(waits(7, 50), waits(7, 50));
        assert_ne!(waits(7, 50), waits(8, 50));
        let mut all = waits(1, 10_000);
        all.sort();
        let p50 = all[5_000].as_millis();
        let p99 = all[9_900].as_millis();
        assert!((850..1150).contains(&p50), "p50 {p50} ms");
        assert!((4000..7500).contains(&p99), "p99 {p99} ms");
    }

    #[tokio::test(start_paused = true)]
    async fn every_read_waits_for_its_token() {
        use object_store::ObjectStoreExt;
        let inner = Arc::new(InMemory::new());
        inner
            .put(&Path::from("k"), PutPayload::from_static(b"v"))
            .await
            .unwrap();
        let store = with_control_plane(inner, 2000, 3);
        let began = tokio::time::Instant::now();
        assert_eq!(
            &store.get_range(&Path::from("k"), 0..1).await.unwrap()[..],
            b"v"
        );
        assert!(
            began.elapsed() > Duration::from_millis(100),
            "{:?}",
            began.elapsed()
        );
    }
}
