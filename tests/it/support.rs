//! The test harness: a worker served on `127.0.0.1:0` over a chosen object
//! store, an embedded driver, and an HTTP client.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use batch_worker::admission::Capacity;
use batch_worker::api::ApiConfig;
use batch_worker::demo::driver::EmbeddedDriver;
use batch_worker::driver_client::{DriverClient, ReportRetry};
use batch_worker::image::ImageStore;
use batch_worker::instance_config::InstanceConfig;
use batch_worker::journal::{
    decode, encode_header, encode_record, journal_dir, segment_path, segments, Durability,
    JournalRecord,
};
use batch_worker::logs_store::LogsStore;
use batch_worker::runner::{HostRunner, Runner};

use batch_worker::server::{serve, ConnectionLimits};
use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use batch_worker::worker::{
    Executor, JournalOptions, Worker, DEFAULT_BILLING_UPDATE_PERIOD, DEFAULT_JOURNAL_SEGMENT_BYTES,
};
use batch_worker_model::{JobState, RunPhase};
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

/// Longest any test waits for a job to become final: a guard against a
/// hang, not a timing assertion.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// How a [`Harness`] worker is set up.
pub struct Options {
    /// Journal bytes after which it compacts.
    pub segment_bytes: u64,
    /// How long reported attempts are remembered.
    pub retention: Duration,
    /// Cores and memory jobs may reserve (default: plenty).
    pub capacity: Capacity,
    /// Where status.json and logs go (default: a fresh in-memory store).
    pub logs: Arc<dyn ObjectStore>,
    /// Longest report drain at shutdown.
    pub report_drain: Duration,
    /// Activate with the embedded driver before serving (default true).
    pub activate: bool,
    /// Driver calls on the wire at once.
    pub report_concurrency: usize,
    /// The runner and image cache (default: host processes, no images).
    pub executor: Option<(Arc<dyn Runner>, Arc<ImageStore>)>,
    /// Records written into the data directory's journal before the
    /// worker opens it (default none: a fresh journal).
    pub journal: Vec<JournalRecord>,
    /// The API's settings (default: 1 MiB bodies, no token).
    pub api: ApiConfig,
    /// The connection limits (default: the server's defaults).
    pub limits: ConnectionLimits,
    /// Queue jobs for memory too (default false: cores only, as Hail).
    pub admit_by_memory: bool,
    /// The instance config jobs are billed by (default none: `[]`).
    pub instance_config: Option<InstanceConfig>,
    /// The pause between `billing_update` calls (default Hail's 60 s).
    pub billing_update_period: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_bytes: DEFAULT_JOURNAL_SEGMENT_BYTES,
            retention: Duration::from_secs(86_400),
            capacity: Capacity::unlimited(),
            logs: Arc::new(InMemory::new()),
            report_drain: Duration::from_secs(30),
            activate: true,
            report_concurrency: 64,
            executor: None,
            journal: Vec::new(),
            api: ApiConfig::new(1 << 20),
            limits: ConnectionLimits::default(),
            admit_by_memory: false,
            instance_config: None,
            billing_update_period: DEFAULT_BILLING_UPDATE_PERIOD,
        }
    }
}

/// Writes `records` as the first segment of `data_dir`'s journal, as a
/// worker that crashed after writing them would have left it.
pub fn write_journal(data_dir: &std::path::Path, records: &[JournalRecord]) {
    let mut bytes = encode_header().to_vec();
    for record in records {
        encode_record(record, &mut bytes).expect("a record encodes");
    }
    let dir = journal_dir(data_dir);
    std::fs::create_dir_all(&dir).expect("the journal directory");
    std::fs::write(segment_path(&dir, 1), bytes).expect("the journal segment");
}

/// Asserts that `batch-worker replay --check` finds no problem in the
/// journal of `data_dir` (printing its report when it does).
pub fn assert_replays_clean(data_dir: &std::path::Path) {
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_batch-worker"))
        .args(["replay", "--check"])
        .arg(data_dir)
        .output()
        .expect("replay runs");
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stdout)
    );
}

/// A running worker and its driver.
pub struct Harness {
    pub worker: Worker,
    pub base: Url,
    pub http: reqwest::Client,
    pub driver: EmbeddedDriver,
    /// Writes bunches into the worker's store, under its root.
    pub writer: SpecStore,
    pub data: tempfile::TempDir,
    /// The logs store (keys under `logs/`).
    pub logs: Arc<dyn ObjectStore>,
    stop: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Harness {
    /// A worker over a fresh in-memory store.
    pub async fn in_memory() -> Harness {
        Harness::start(
            Arc::new(InMemory::new()),
            Path::from("root"),
            SpecLoadConfig::default(),
        )
        .await
    }

    /// A worker over a fresh in-memory store, set up with `options`.
    pub async fn with_options(options: Options) -> Harness {
        Harness::start_with(
            Arc::new(InMemory::new()),
            Path::from("root"),
            SpecLoadConfig::default(),
            options,
        )
        .await
    }

    /// A worker over `store`, reading bunches under `root`.
    pub async fn start(store: Arc<dyn ObjectStore>, root: Path, config: SpecLoadConfig) -> Harness {
        Harness::start_with_journal(
            store,
            root,
            config,
            DEFAULT_JOURNAL_SEGMENT_BYTES,
            Duration::from_secs(86_400),
        )
        .await
    }

    /// A worker whose journal compacts after `segment_bytes` and forgets
    /// reported attempts after `retention`.
    pub async fn start_with_journal(
        store: Arc<dyn ObjectStore>,
        root: Path,
        config: SpecLoadConfig,
        segment_bytes: u64,
        retention: Duration,
    ) -> Harness {
        let options = Options {
            segment_bytes,
            retention,
            ..Options::default()
        };
        Harness::start_with(store, root, config, options).await
    }

    /// A worker over `store` with `options`.
    pub async fn start_with(
        store: Arc<dyn ObjectStore>,
        root: Path,
        config: SpecLoadConfig,
        options: Options,
    ) -> Harness {
        let data = tempfile::tempdir().expect("a temporary directory");
        let driver = EmbeddedDriver::start().await.expect("the driver starts");
        let retry = ReportRetry {
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            max_in_flight: options.report_concurrency,
            ..ReportRetry::default()
        };
        let client = DriverClient::new(
            driver.url.clone(),
            "test-worker".into(),
            "activation-t0ken".into(),
            retry,
        )
        .expect("a driver client");
        if !options.journal.is_empty() {
            write_journal(data.path(), &options.journal);
        }
        let executor = match options.executor {
            Some((runner, images)) => Executor::Runc { runner, images },
            None => Executor::Host(Arc::new(HostRunner {
                kill_grace: Duration::from_secs(2),
                job_user: None,
                cgroups: None,
                shim: None,
            })),
        };
        // Flush: the tests do not simulate power loss.
        let mut builder = Worker::builder(data.path());
        if let Some(config) = options.instance_config {
            builder = builder.instance_config(config).region("us-central1");
        }
        let worker = builder
            .name("test-worker")
            .billing_update_period(options.billing_update_period)
            .executor(executor)
            .journal(JournalOptions {
                durability: Durability::Flush,
                ..JournalOptions::default()
            })
            .journal_segment_bytes(options.segment_bytes)
            .retention(options.retention)
            .capacity(options.capacity)
            .admit_by_memory(options.admit_by_memory)
            .logs(LogsStore::new(options.logs.clone(), Path::from("logs")))
            .report_drain(options.report_drain)
            .specs(SpecStore::new(store.clone(), root.clone(), config).expect("spec-io threads"))
            .driver(client)
            .open()
            .expect("the worker opens");
        if options.activate {
            worker
                .activate("127.0.0.1")
                .await
                .expect("the embedded driver activates the worker");
        }
        let writer =
            SpecStore::new(store, root, SpecLoadConfig::default()).expect("spec-io threads");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let base = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            worker.clone(),
            options.api.clone(),
            options.limits,
            stop.clone().cancelled_owned(),
        ));
        Harness {
            worker,
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            driver,
            writer,
            data,
            logs: options.logs,
            stop,
            server: Some(server),
        }
    }

    /// The records of the worker's journal so far.
    pub fn journal_records(&self) -> Vec<JournalRecord> {
        let dir = journal_dir(self.data.path());
        segments(&dir)
            .expect("the journal exists")
            .into_iter()
            .flat_map(|(_, path)| {
                decode(&std::fs::read(path).unwrap())
                    .expect("the journal decodes")
                    .records
            })
            .collect()
    }

    /// Stops the server as SIGTERM would, and waits for `serve` to return.
    pub async fn shutdown(&mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("serve does not panic")
                .expect("serve ends cleanly");
        }
    }

    pub fn url(&self, path: &str) -> Url {
        self.base.join(path.trim_start_matches('/')).unwrap()
    }

    /// POSTs raw bytes to the create endpoint; returns status and JSON body
    /// (`null` when empty).
    pub async fn create_raw(&self, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url("/api/v1alpha/batches/jobs/create"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the worker answers");
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn create(&self, body: &Value) -> (StatusCode, Value) {
        self.create_raw(serde_json::to_vec(body).unwrap()).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("the worker answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The job's `main` log, through the API.
    pub async fn log_text(&self, batch_id: i64, job_id: i64) -> String {
        self.http
            .get(self.url(&format!(
                "/api/v1alpha/batches/{batch_id}/jobs/{job_id}/log/main"
            )))
            .send()
            .await
            .expect("the worker answers")
            .text()
            .await
            .expect("a text body")
    }

    pub async fn status(&self, batch_id: i64, job_id: i64) -> (StatusCode, Value) {
        self.get(&format!(
            "/api/v1alpha/batches/{batch_id}/jobs/{job_id}/status"
        ))
        .await
    }

    pub async fn cancel(&self, batch_id: i64, job_id: i64) -> (StatusCode, Value) {
        let response = self
            .http
            .delete(self.url(&format!(
                "/api/v1alpha/batches/{batch_id}/jobs/{job_id}/delete"
            )))
            .send()
            .await
            .expect("the worker answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates job `job_id` of bunch `token` (format 7, start 1) and checks
    /// the answer is 200.
    pub async fn accept(&self, batch_id: i64, job_id: i64, token: &str) {
        let (status, answer) = self.create(&create_body(batch_id, job_id, token, 1)).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "create {batch_id}:{job_id}: {answer}"
        );
    }

    /// Waits until the job's process runs; returns its pid (also its
    /// process group).
    pub async fn wait_executing(&self, batch_id: i64, job_id: i64) -> u32 {
        let state = self
            .wait_for(batch_id, job_id, |s| {
                matches!(
                    s,
                    JobState::Running {
                        phase: RunPhase::Executing { .. }
                    }
                )
            })
            .await;
        match state {
            JobState::Running {
                phase: RunPhase::Executing { pid },
            } => pid,
            other => unreachable!("{other:?}"),
        }
    }

    /// Waits until the job is final (guarded by [`HANG_GUARD`]).
    pub async fn wait_final(&self, batch_id: i64, job_id: i64) -> JobState {
        self.wait_for(batch_id, job_id, JobState::is_terminal).await
    }

    /// Waits until the job's state satisfies `done`.
    pub async fn wait_for(
        &self,
        batch_id: i64,
        job_id: i64,
        done: impl Fn(&JobState) -> bool,
    ) -> JobState {
        tokio::time::timeout(
            HANG_GUARD,
            self.worker
                .wait_until(|w| w.state_of(batch_id, job_id).is_ok_and(|s| done(&s))),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "job {batch_id}:{job_id} stuck in {:?}",
                self.worker.state_of(batch_id, job_id)
            )
        });
        self.worker.state_of(batch_id, job_id).unwrap()
    }

    /// Waits until the job's history holds an event named `name` (e.g.
    /// `"logs_uploaded"`, `"complete_delivered"`).
    pub async fn wait_event(&self, batch_id: i64, job_id: i64, name: &str) {
        let has = |w: &Worker| {
            w.events(batch_id, job_id)
                .is_ok_and(|events| events.iter().any(|e| e.event.name() == name))
        };
        tokio::time::timeout(HANG_GUARD, self.worker.wait_until(has))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "job {batch_id}:{job_id} never recorded {name}: {:?}",
                    self.worker.events(batch_id, job_id)
                )
            });
    }

    /// The JSON of the object at `key` in the logs store.
    pub async fn logs_object(&self, key: &str) -> Option<bytes::Bytes> {
        use object_store::ObjectStoreExt;
        match self.logs.get(&Path::from(key)).await {
            Ok(got) => Some(got.bytes().await.unwrap()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("reading {key}: {e}"),
        }
    }

    /// The job ids of the job_complete bodies received so far, with repeats.
    pub fn reported_jobs(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .driver
            .received()
            .complete
            .iter()
            .map(|c| c.status.job_id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Waits until the driver received `n` job_complete bodies.
    pub async fn wait_reports(&self, n: usize) {
        let mut changes = self.driver.changes();
        tokio::time::timeout(HANG_GUARD, async {
            while self.driver.received().complete.len() < n {
                changes.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("fewer than {n} job_complete reports arrived"));
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// A create body for a bunch job (format 7), like `create-v7.json`.
pub fn create_body(batch_id: i64, job_id: i64, token: &str, start_job_id: i64) -> Value {
    json!({
        "batch_id": batch_id,
        "job_id": job_id,
        "format_version": 7,
        "token": token,
        "start_job_id": start_job_id,
        "user": "test-user",
        "gsa_key": null,
        "job_spec": {"attempt_id": format!("a{job_id}"), "job_group_id": 0, "secrets": []},
        "queue_time": null
    })
}

/// A well-formed spec running `sh -c script`.
pub fn shell_spec(job_id: i64, script: &str) -> Value {
    json!({
        "job_id": job_id,
        "process": {"type": "docker", "image": "ubuntu:24.04", "command": ["sh", "-c", script]},
        "resources": {"cores_mcpu": 250, "memory_bytes": 1_000_000, "storage_gib": 0},
    })
}

/// What a [`TestStore`] does on a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRead {
    /// Read from the inner store.
    Pass,
    /// Never answer.
    Hang,
    /// Panic, as a buggy store client would.
    Panic,
    /// Fail this many reads with a transient error, then pass.
    FailFirst(usize),
    /// Wait until [`TestStore::open`] is called, then read from the inner
    /// store.
    Gated,
}

/// An object store wrapper that records every key read and can make every
/// read hang or panic.
#[derive(Debug)]
pub struct TestStore {
    inner: Arc<dyn ObjectStore>,
    on_read: OnRead,
    reads: Mutex<Vec<String>>,
    read_count: tokio::sync::watch::Sender<usize>,
    /// Reads begun and not yet returned or dropped.
    in_flight: tokio::sync::watch::Sender<usize>,
    /// Whether [`OnRead::Gated`] reads may go on.
    open: tokio::sync::watch::Sender<bool>,
}

/// Counts one read in [`TestStore::in_flight`] while alive.
struct InFlight(tokio::sync::watch::Sender<usize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

fn injected_error() -> object_store::Error {
    object_store::Error::Generic {
        store: "TestStore",
        source: "injected transient failure (HTTP 503)".into(),
    }
}

impl TestStore {
    pub fn new(inner: Arc<dyn ObjectStore>, on_read: OnRead) -> TestStore {
        TestStore {
            inner,
            on_read,
            reads: Mutex::default(),
            read_count: tokio::sync::watch::channel(0).0,
            in_flight: tokio::sync::watch::channel(0).0,
            open: tokio::sync::watch::channel(false).0,
        }
    }

    /// Lets every [`OnRead::Gated`] read, waiting or later, go on.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Waits until exactly `n` reads are in flight (a hanging read counts
    /// until its future is dropped, i.e. aborted).
    pub async fn wait_in_flight(&self, n: usize) {
        let mut count = self.in_flight.subscribe();
        tokio::time::timeout(HANG_GUARD, count.wait_for(|c| *c == n))
            .await
            .unwrap_or_else(|_| panic!("reads in flight never became {n}"))
            .unwrap();
    }

    /// Waits until at least `n` reads were made (guarded by [`HANG_GUARD`]).
    pub async fn wait_reads(&self, n: usize) {
        let mut count = self.read_count.subscribe();
        tokio::time::timeout(HANG_GUARD, count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("fewer than {n} reads: {:?}", self.reads()))
            .unwrap();
    }

    /// Every key read so far (gets, range reads and heads).
    pub fn reads(&self) -> Vec<String> {
        self.reads.lock().unwrap().clone()
    }

    async fn before_read(&self, location: &Path) -> object_store::Result<()> {
        let reads = {
            let mut reads = self.reads.lock().unwrap();
            reads.push(location.to_string());
            reads.len()
        };
        self.read_count.send_replace(reads);
        self.in_flight.send_modify(|n| *n += 1);
        let _in_flight = InFlight(self.in_flight.clone());
        match self.on_read {
            OnRead::Pass => Ok(()),
            OnRead::Hang => std::future::pending().await,
            OnRead::Panic => panic!("test store panics on read of {location}"),
            OnRead::FailFirst(n) if reads <= n => Err(injected_error()),
            OnRead::FailFirst(_) => Ok(()),
            OnRead::Gated => {
                let _ = self.open.subscribe().wait_for(|open| *open).await;
                Ok(())
            }
        }
    }
}

impl fmt::Display for TestStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TestStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for TestStore {
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
        self.before_read(location).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.before_read(location).await?;
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

/// Writes a bunch of `specs` (JSON values) for `batch_id` under `token`.
pub async fn bunch(h: &Harness, batch_id: i64, token: &str, specs: &[Value]) {
    let bytes: Vec<Vec<u8>> = specs
        .iter()
        .map(|s| serde_json::to_vec(s).unwrap())
        .collect();
    h.writer.write_bunch(batch_id, token, &bytes).await.unwrap();
}

/// Waits until process group `pgid` is gone: `kill -0` on the group
/// fails, or only zombies (dead, their reaping pending) are left. The
/// members' exits are not events the test can wait on, so it polls.
pub async fn wait_group_gone(pgid: u32) {
    let gone = || {
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), None).is_err()
            || live_group_members(pgid).is_empty()
    };
    tokio::time::timeout(HANG_GUARD, async {
        while !gone() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "processes of group {pgid} outlived the worker's end: {:?}",
            live_group_members(pgid)
        )
    });
}

/// Pids of processes in group `pgid` that are not zombies (a zombie is
/// dead; only its parent's reaping is pending).
pub fn live_group_members(pgid: u32) -> Vec<u32> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2) == Some(&pgid.to_string().as_str()) && fields.first() != Some(&"Z") {
            live.push(pid);
        }
    }
    live
}

/// Writes `specs` (each a spec's bytes) as the bunch of `batch_id` with
/// `token` into the local spec store rooted at `dir`.
pub async fn write_local_bunch(
    dir: &std::path::Path,
    batch_id: i64,
    token: &str,
    specs: &[Vec<u8>],
) {
    let store = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap());
    SpecStore::new(store, Default::default(), SpecLoadConfig::default())
        .unwrap()
        .write_bunch(batch_id, token, specs)
        .await
        .unwrap();
}

/// Lets others pass (`o+x`) the test's temporary directories above `data`:
/// as root, `serve` runs host jobs as `nobody`, which must reach their
/// directories (tempfile makes its directories 0700).
pub fn let_job_user_pass(data: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let temp = std::env::temp_dir();
    for ancestor in data.ancestors() {
        if ancestor == temp || !ancestor.starts_with(&temp) {
            break;
        }
        if let Ok(meta) = std::fs::metadata(ancestor) {
            let mode = meta.permissions().mode() | 0o001;
            let _ = std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode(mode));
        }
    }
}

/// `batch-worker serve` as a child process on a free loopback port.
pub struct ServeChild {
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Drop for ServeChild {
    /// A test that ends (or fails) leaves no `serve` running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeChild {
    /// Starts `serve` on `data` with specs under `specs`, reporting to
    /// `driver` (fsync journal, 200 ms kill grace unless `extra` sets it,
    /// then `extra` flags), and
    /// waits until it answers and is activated.
    pub async fn start(
        data: &std::path::Path,
        specs: &std::path::Path,
        driver: &str,
        extra: &[&str],
    ) -> ServeChild {
        let store = Url::from_directory_path(specs).unwrap();
        Self::start_with_log(data, store.as_str(), driver, extra, None).await
    }

    /// [`ServeChild::start`] with `--spec-store spec_store`, as typed (a
    /// path or a URL).
    pub async fn start_with_spec_store(
        data: &std::path::Path,
        spec_store: &str,
        driver: &str,
        extra: &[&str],
    ) -> ServeChild {
        Self::start_with_log(data, spec_store, driver, extra, None).await
    }

    /// [`ServeChild::start`], logging at `debug` into the file `log`.
    pub async fn start_logging(
        data: &std::path::Path,
        specs: &std::path::Path,
        driver: &str,
        extra: &[&str],
        log: &std::path::Path,
    ) -> ServeChild {
        let store = Url::from_directory_path(specs).unwrap();
        Self::start_with_log(data, store.as_str(), driver, extra, Some(log)).await
    }

    async fn start_with_log(
        data: &std::path::Path,
        spec_store: &str,
        driver: &str,
        extra: &[&str],
        log: Option<&std::path::Path>,
    ) -> ServeChild {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let_job_user_pass(data);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_batch-worker"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data)
            .args(["--spec-store", spec_store])
            .args(["--driver-url", driver, "--durability", "fsync"])
            .args(if extra.contains(&"--kill-grace-ms") {
                &[][..]
            } else {
                &["--kill-grace-ms", "200"][..]
            })
            .args(extra)
            .env("RUST_LOG", if log.is_some() { "debug" } else { "warn" })
            .stdout(std::process::Stdio::null())
            .stderr(match log {
                Some(path) => std::fs::File::create(path).unwrap().into(),
                None => std::process::Stdio::null(),
            })
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        // The child's start is not an event this test can wait on: poll.
        tokio::time::timeout(HANG_GUARD, async {
            loop {
                // 200 once activated (503 before, as Hail's).
                if let Ok(response) = http.get(format!("{base}/healthcheck")).send().await {
                    if response.status().is_success() {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the worker starts and activates");
        ServeChild { child, base }
    }

    /// The names of the events of `(batch_id, job_id)` (empty if unknown).
    pub async fn event_names(&self, batch_id: i64, job_id: i64) -> Vec<String> {
        let url = format!(
            "{}/api/v1alpha/batches/{batch_id}/jobs/{job_id}/events",
            self.base
        );
        let events: Value = match reqwest::get(url).await {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        events
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|e| e["event"]["type"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Polls until the job's history holds `name`.
    pub async fn wait_event(&self, batch_id: i64, job_id: i64, name: &str) {
        tokio::time::timeout(HANG_GUARD, async {
            while !self
                .event_names(batch_id, job_id)
                .await
                .iter()
                .any(|n| n == name)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("job {batch_id}:{job_id} never recorded {name}"));
    }
}
