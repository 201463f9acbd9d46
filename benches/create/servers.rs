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
//! `(batch_id, job_id)`, for the driver-loop simulation still to come.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use batch_worker::admission::Capacity;
use batch_worker::api::{self, CREATE_PATH};
use batch_worker::journal::{open_journal, Durability, WriterMode};
use batch_worker::logs_store::LogsStore;
use batch_worker::runner::{LaunchError, Process, ProcessRequest, Runner};
use batch_worker::server;
use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use batch_worker::store::{FaultPlan, FaultStore, StoreOptions};
use batch_worker::supervisor::{Worker, WorkerConfig};
use batch_worker::wire::CreateJob;
use batch_worker_model::ExitStatus;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

/// Job runs started, per `(batch_id, job_id)`.
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
}

/// A running server; dropping it stops its runtime without waiting.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("server")
            .enable_all()
            .build()
            .expect("a server runtime");
        let data = tempfile::tempdir().expect("a temp dir");
        let store: Arc<dyn ObjectStore> = Arc::new(FaultStore::new(specs, plan.clone()));
        let config = SpecLoadConfig {
            jitter_seed: Some(plan.seed),
            ..SpecLoadConfig::default()
        };
        let spec_store =
            SpecStore::new(store, Path::from("specs"), config).expect("the spec-io runtime");
        let runs = Arc::new(Runs::default());
        let app = runtime.block_on(async {
            match kind {
                Kind::Floor => api::stack(
                    Router::new().route(CREATE_PATH, post(|| async { StatusCode::OK })),
                    MAX_BODY_BYTES,
                ),
                Kind::Inline => {
                    let outstanding = Arc::new(AtomicUsize::new(0));
                    let state = Inline {
                        specs: spec_store,
                        runs: runs.clone(),
                        outstanding: outstanding.clone(),
                    };
                    let routes = Router::new()
                        .route(CREATE_PATH, post(inline_create))
                        .with_state(state);
                    api::stack(routes, MAX_BODY_BYTES)
                }
                Kind::Worker(durability) => {
                    let worker = worker(data.path(), durability, spec_store, runs.clone());
                    api::router(worker, MAX_BODY_BYTES)
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
            let connections = server::accept(&listener, app, stopped.cancelled_owned()).await;
            drop(connections);
        });
        Server {
            addr,
            stop,
            runtime: Some(runtime),
            _data: data,
        }
    }
}

/// A worker like `batch-worker serve`'s, journaling into `data_dir`.
fn worker(
    data_dir: &std::path::Path,
    durability: Durability,
    specs: SpecStore,
    runs: Arc<Runs>,
) -> Worker {
    let config = WorkerConfig {
        name: "bench".into(),
        data_dir: data_dir.to_owned(),
        runner: Arc::new(InstantRunner { runs }),
        journal_segment_bytes: 64 * 1024 * 1024,
        retention: Duration::from_secs(24 * 3600),
        capacity: Capacity::of_machine(),
        logs: LogsStore::new(Arc::new(InMemory::new()), Path::default()),
        report_drain: Duration::from_secs(1),
        store_options: StoreOptions::default(),
    };
    let recovered = open_journal(
        data_dir,
        durability,
        false,
        WriterMode::Thread(tokio::runtime::Handle::current()),
    )
    .expect("a fresh journal");
    Worker::new(config, specs, None, Some(recovered.writer))
}

/// The inline baseline's state.
#[derive(Clone)]
struct Inline {
    specs: SpecStore,
    runs: Arc<Runs>,
    outstanding: Arc<AtomicUsize>,
}

/// The old design's create: the spec is read before the answer.
async fn inline_create(State(inline): State<Inline>, body: Bytes) -> StatusCode {
    let job = match CreateJob::parse(&body) {
        Ok(job) => job,
        Err(_) => return StatusCode::BAD_REQUEST,
    };
    inline.outstanding.fetch_add(1, Ordering::SeqCst);
    let started = tokio::spawn(async move {
        let loaded = inline.specs.load(&job).await;
        if loaded.is_ok() {
            inline.runs.add(job.batch_id, job.job_id);
        }
        inline.outstanding.fetch_sub(1, Ordering::SeqCst);
    });
    let _ = started.await;
    StatusCode::OK
}

/// Starts "processes" that exit 0 at once, after making the attempt's
/// directory and `main.log` as a host process would; counts runs.
#[derive(Debug)]
struct InstantRunner {
    runs: Arc<Runs>,
}

#[derive(Debug)]
struct InstantProcess;

#[async_trait]
impl Runner for InstantRunner {
    async fn spawn(&self, request: &ProcessRequest) -> Result<Box<dyn Process>, LaunchError> {
        std::fs::create_dir_all(request.dir.work()).map_err(|e| LaunchError(e.to_string()))?;
        std::fs::write(request.dir.main_log(), b"bench\n")
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
