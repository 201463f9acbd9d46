//! The three servers a row compares, each on a runtime of its own (as it
//! would be in a process of its own), all on the worker's HTTP stack
//! (`server::accept` + `api::stack`):
//!
//! - **floor**: a create handler that answers 200 at once;
//! - **inline**: the old design, in this bench only: the handler parses
//!   the body, reads the job's spec from the store, starts the job, and
//!   answers; a client that gives up does not stop the read (it runs on
//!   a task of its own, as a job registered by the handler would);
//! - **worker**: the real worker (`api::router`), with its journal at
//!   `fsync` or `flush` durability and a runner whose processes exit at
//!   once.
//!
//! The inline baseline and the worker count the job runs they start, per
//! `(batch_id, job_id)`, and the jobs whose spec was corrupt, for the
//! driver-loop simulation (`driver_loop.rs`); [`Server::is_idle`] tells
//! when every job started so far has finished, so that the counts are
//! final.
//!
//! The inline baseline has **no duplicate check**, on purpose: the old
//! design read the spec before it looked at anything else, so a create
//! retried by the driver with a new attempt id (after a timeout) starts
//! the job a second time, while the first read, which the driver gave
//! up on, still finishes and starts it too. A spec that cannot be loaded
//! is a 500 on the create call, as in the old design.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use batch_worker::api::{self, CREATE_PATH};
use batch_worker::journal::Durability;
use batch_worker::logs_store::LogsStore;
use batch_worker::runner::{LaunchError, Process, ProcessRequest, Runner};
use batch_worker::server;
use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use batch_worker::store::{FaultPlan, FaultStore, StoreOptions};
use batch_worker::wire::CreateJob;
use batch_worker::worker::{Executor, JournalOptions, Worker};
use batch_worker_model::{ErrorKind, ExitStatus, JobState};
use futures::stream::BoxStream;
use hdrhistogram::Histogram;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::load;

/// Largest create body the servers take, in bytes (the worker's default).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Which server a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A no-op create handler on the same stack.
    Floor,
    /// Reads the spec before answering (the old design).
    Inline,
    /// This worker, journaling at the given durability.
    Worker(Durability),
}

impl Kind {
    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Floor => "floor (no-op handler)",
            Kind::Inline => "inline baseline",
            Kind::Worker(Durability::Flush) => "worker, flush",
            Kind::Worker(Durability::Fsync) => "worker, fsync",
        }
    }
}

/// A count per `(batch_id, job_id)`: job runs started, or spec loads
/// failed as `spec_corrupt`.
#[derive(Debug, Default)]
pub struct Runs(Mutex<HashMap<(i64, i64), u32>>);

impl Runs {
    fn add(&self, batch_id: i64, job_id: i64) {
        *self
            .0
            .lock()
            .unwrap()
            .entry((batch_id, job_id))
            .or_default() += 1;
    }

    /// The counts so far, per `(batch_id, job_id)` (jobs never counted
    /// are absent).
    pub fn counts(&self) -> HashMap<(i64, i64), u32> {
        self.0.lock().unwrap().clone()
    }
}

/// What a server exposes to tell whether it is idle and what it did.
enum Probe {
    /// The floor starts nothing.
    Floor,
    /// The inline baseline: spec loads not yet finished, and the jobs
    /// whose load failed as `spec_corrupt`.
    Inline {
        outstanding: Arc<AtomicUsize>,
        corrupt: Arc<Runs>,
    },
    /// The worker itself.
    Worker(Worker),
}

/// A running server; dropping it stops its runtime without waiting.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Job runs started, per `(batch_id, job_id)` (none for the floor).
    pub runs: Arc<Runs>,
    probe: Probe,
    /// Latency of every spec read (`get`) that reached the fault store,
    /// in µs, when the server was started with
    /// [`Server::start_timing_reads`].
    reads_us: Option<Arc<Mutex<Histogram<u64>>>>,
    stop: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Server {
    /// Starts a `kind` server whose spec reads go to `specs` through a
    /// [`FaultStore`] with `plan`.
    pub fn start(kind: Kind, specs: Arc<dyn ObjectStore>, plan: &FaultPlan) -> Server {
        Server::start_with(kind, specs, plan, false)
    }

    /// [`Server::start`], also timing every spec read the fault store
    /// answers (see [`Server::read_latency_us`]).
    pub fn start_timing_reads(kind: Kind, specs: Arc<dyn ObjectStore>, plan: &FaultPlan) -> Server {
        Server::start_with(kind, specs, plan, true)
    }

    fn start_with(
        kind: Kind,
        specs: Arc<dyn ObjectStore>,
        plan: &FaultPlan,
        time_reads: bool,
    ) -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("server")
            .enable_all()
            .build()
            .expect("a server runtime");
        let data = tempfile::tempdir().expect("a temp dir");
        let mut store: Arc<dyn ObjectStore> = Arc::new(FaultStore::new(specs, plan.clone()));
        let reads_us = time_reads.then(|| Arc::new(Mutex::new(load::new_histogram())));
        if let Some(reads_us) = &reads_us {
            store = Arc::new(TimedStore {
                inner: store,
                reads_us: reads_us.clone(),
            });
        }
        let config = SpecLoadConfig {
            jitter_seed: Some(plan.seed),
            ..SpecLoadConfig::default()
        };
        let spec_store =
            SpecStore::new(store, Path::from("specs"), config).expect("the spec-io runtime");
        let runs = Arc::new(Runs::default());
        let (app, probe) = runtime.block_on(async {
            match kind {
                Kind::Floor => (
                    api::stack(
                        Router::new().route(CREATE_PATH, post(|| async { StatusCode::OK })),
                        &api::ApiConfig::new(MAX_BODY_BYTES),
                    ),
                    Probe::Floor,
                ),
                Kind::Inline => {
                    let outstanding = Arc::new(AtomicUsize::new(0));
                    let corrupt = Arc::new(Runs::default());
                    let state = Inline {
                        specs: spec_store,
                        runs: runs.clone(),
                        corrupt: corrupt.clone(),
                        outstanding: outstanding.clone(),
                    };
                    let routes = Router::new()
                        .route(CREATE_PATH, post(inline_create))
                        .with_state(state);
                    (
                        api::stack(routes, &api::ApiConfig::new(MAX_BODY_BYTES)),
                        Probe::Inline {
                            outstanding,
                            corrupt,
                        },
                    )
                }
                Kind::Worker(durability) => {
                    let worker = worker(data.path(), durability, spec_store, runs.clone());
                    (
                        api::router(worker.clone(), &api::ApiConfig::new(MAX_BODY_BYTES)),
                        Probe::Worker(worker),
                    )
                }
            }
        });
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        runtime.spawn(async move {
            let connections = server::accept(
                &listener,
                app,
                batch_worker::server::ConnectionLimits::default(),
                stopped.cancelled_owned(),
            )
            .await;
            drop(connections);
        });
        Server {
            addr,
            runs,
            probe,
            reads_us,
            stop,
            runtime: Some(runtime),
            _data: data,
        }
    }
}

impl Server {
    /// Whether every job started so far has finished: no inline spec load
    /// in flight, or every worker attempt `Done` or `Errored`.
    pub fn is_idle(&self) -> bool {
        match &self.probe {
            Probe::Floor => true,
            Probe::Inline { outstanding, .. } => outstanding.load(Ordering::SeqCst) == 0,
            Probe::Worker(worker) => worker.snapshot().iter().all(|(_, s)| s.is_terminal()),
        }
    }

    /// The jobs (by `job_id`) whose spec load failed as `spec_corrupt` so
    /// far: the inline baseline's failed loads, the worker's attempts
    /// `Errored{spec_corrupt}`.
    pub fn spec_corrupt_jobs(&self) -> HashSet<i64> {
        match &self.probe {
            Probe::Floor => HashSet::new(),
            Probe::Inline { corrupt, .. } => corrupt.counts().into_keys().map(|k| k.1).collect(),
            Probe::Worker(worker) => worker
                .snapshot()
                .into_iter()
                .filter(|(_, s)| {
                    matches!(
                        s,
                        JobState::Errored {
                            kind: ErrorKind::SpecCorrupt,
                            ..
                        }
                    )
                })
                .map(|(key, _)| key.job_id)
                .collect(),
        }
    }

    /// The latency of every spec read so far, in µs (`None` unless started
    /// with [`Server::start_timing_reads`]).
    pub fn read_latency_us(&self) -> Option<Histogram<u64>> {
        self.reads_us.as_ref().map(|h| h.lock().unwrap().clone())
    }
}

/// A worker like `batch-worker serve`'s, journaling into `data_dir`.
fn worker(
    data_dir: &std::path::Path,
    durability: Durability,
    specs: SpecStore,
    runs: Arc<Runs>,
) -> Worker {
    Worker::builder(data_dir)
        .name("bench")
        .executor(Executor::Host(Arc::new(InstantRunner { runs })))
        .specs(specs)
        .logs(LogsStore::new(Arc::new(InMemory::new()), Path::default()))
        .journal(JournalOptions {
            durability,
            ..JournalOptions::default()
        })
        .store_options(StoreOptions::default())
        .open()
        .expect("a fresh worker")
}

/// The inline baseline's state.
#[derive(Clone)]
struct Inline {
    specs: SpecStore,
    runs: Arc<Runs>,
    /// Jobs whose load failed as `spec_corrupt`.
    corrupt: Arc<Runs>,
    /// Spec loads started and not finished.
    outstanding: Arc<AtomicUsize>,
}

/// The old design's create: the spec is read before the answer, with no
/// duplicate check (see the module doc); 200 once the job is started, 500
/// if the spec could not be loaded.
async fn inline_create(State(inline): State<Inline>, body: Bytes) -> StatusCode {
    let job = match CreateJob::parse(&body) {
        Ok(job) => job,
        Err(_) => return StatusCode::BAD_REQUEST,
    };
    inline.outstanding.fetch_add(1, Ordering::SeqCst);
    let started = tokio::spawn(async move {
        let loaded = inline.specs.load(&job).await;
        match &loaded {
            Ok(_) => inline.runs.add(job.batch_id, job.job_id),
            Err(e) if e.kind == ErrorKind::SpecCorrupt => {
                inline.corrupt.add(job.batch_id, job.job_id)
            }
            Err(_) => {}
        }
        inline.outstanding.fetch_sub(1, Ordering::SeqCst);
        loaded.is_ok()
    });
    match started.await {
        Ok(true) => StatusCode::OK,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A store that times every `get` (not `head`) it passes to `inner`, from
/// the call until the result (the fault store's latency is spent before
/// it returns), in µs.
#[derive(Debug)]
struct TimedStore {
    inner: Arc<dyn ObjectStore>,
    reads_us: Arc<Mutex<Histogram<u64>>>,
}

impl std::fmt::Display for TimedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (timed)", self.inner)
    }
}

impl TimedStore {
    fn record(&self, since: Instant) {
        let us = since.elapsed().as_micros().max(1) as u64;
        self.reads_us.lock().unwrap().saturating_record(us);
    }
}

#[async_trait]
impl ObjectStore for TimedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let head = options.head;
        let since = Instant::now();
        let result = self.inner.get_opts(location, options).await;
        if !head {
            self.record(since);
        }
        result
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let since = Instant::now();
        let result = self.inner.get_ranges(location, ranges).await;
        self.record(since);
        result
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
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// Starts "processes" that exit 0 at once, after writing a line to the
/// attempt's `main.log` as a host process would; counts runs.
#[derive(Debug)]
struct InstantRunner {
    runs: Arc<Runs>,
}

#[derive(Debug)]
struct InstantProcess;

#[async_trait]
impl Runner for InstantRunner {
    async fn spawn(&self, request: &ProcessRequest) -> Result<Box<dyn Process>, LaunchError> {
        // Off the runtime's threads, as `HostRunner` does (the worker has
        // made the directory and an empty log).
        let log = request.dir.main_log();
        tokio::task::spawn_blocking(move || std::fs::write(log, b"bench\n"))
            .await
            .map_err(|e| LaunchError(e.to_string()))?
            .map_err(|e| LaunchError(e.to_string()))?;
        self.runs.add(request.key.batch_id, request.key.job_id);
        Ok(Box::new(InstantProcess))
    }

    fn kill_grace(&self) -> Duration {
        Duration::from_millis(100)
    }
}

#[async_trait]
impl Process for InstantProcess {
    fn pid(&self) -> u32 {
        1
    }

    async fn wait(
        self: Box<Self>,
        _timeout: Option<Duration>,
        _kill: CancellationToken,
    ) -> (ExitStatus, u64) {
        (ExitStatus::Code { code: 0 }, 0)
    }
}
