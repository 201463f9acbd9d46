//! Simulated parts for the simulation and model-based tests: a process
//! runner whose processes are described by their argv, a driver that
//! fails, delays and loses answers by seed, a panic counter, and a worker
//! wired from them with the real worker, journal (inline writer) and
//! stores behind a [`FaultStore`].

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use batch_worker::admission::Capacity;
use batch_worker::driver_client::{
    DriverAnswer, DriverClient, DriverTransport, ReportRetry, JOB_COMPLETE_PATH, JOB_STARTED_PATH,
};
use batch_worker::journal::{Durability, WriteFault, WriteFaults, WriterMode};
use batch_worker::logs_store::LogsStore;
use batch_worker::runner::{LaunchError, Process, ProcessRequest, Runner};
use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use batch_worker::store::StoreOptions;
use batch_worker::wire::JobCompleteBody;
use batch_worker::worker::{Executor, JournalOptions, Worker};
use batch_worker_model::ExitStatus;
use bytes::Bytes;
use object_store::path::Path;
use object_store::ObjectStore;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A seeded decision in `[0, 1)` from `parts`: the same for the same
/// parts on every run.
pub fn draw(seed: u64, parts: impl Hash) -> f64 {
    #[allow(deprecated)]
    let mut hasher = std::hash::SipHasher::new_with_keys(seed, 0x5349_4d55_4c41_5445);
    parts.hash(&mut hasher);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs simulated processes. `argv` describes the process:
/// - `["sim", "exit=N", "ms=T"]`: runs T ms (virtual), exits with N;
/// - `["sim", "signal=S", "ms=T"]`: dies by signal S after T ms;
/// - `["sim", "launch_fail"]`: cannot be started;
/// - `["sim", "hold"]`: runs until [`SimRunner::release`] names it.
///
/// A kill ends a process at once with signal 15. Each process writes a
/// one-line `main.log`.
#[derive(Debug, Default)]
pub struct SimRunner {
    next_pid: AtomicU32,
    held: Mutex<HashMap<(i64, i64), oneshot::Sender<i32>>>,
}

impl SimRunner {
    /// Ends the held process of job `(batch_id, job_id)` with `code`;
    /// false if none is held.
    pub fn release(&self, batch_id: i64, job_id: i64, code: i32) -> bool {
        let sender = self.held.lock().unwrap().remove(&(batch_id, job_id));
        sender.is_some_and(|s| s.send(code).is_ok())
    }
}

#[derive(Debug)]
enum Behaviour {
    Exit { code: i32, ms: u64 },
    Signal { signal: i32, ms: u64 },
    Hold(oneshot::Receiver<i32>),
}

#[derive(Debug)]
struct SimProcess {
    pid: u32,
    behaviour: Behaviour,
}

fn arg(argv: &[String], name: &str) -> Option<i64> {
    argv.iter()
        .find_map(|a| a.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

#[async_trait]
impl Runner for SimRunner {
    async fn spawn(&self, request: &ProcessRequest) -> Result<Box<dyn Process>, LaunchError> {
        let argv = &request.argv;
        if argv.first().map(String::as_str) != Some("sim") {
            return Err(LaunchError(format!("not a simulated process: {argv:?}")));
        }
        if argv.iter().any(|a| a == "launch_fail") {
            return Err(LaunchError("simulated launch failure".into()));
        }
        std::fs::create_dir_all(request.dir.work()).map_err(|e| LaunchError(e.to_string()))?;
        std::fs::write(request.dir.main_log(), format!("simulated {argv:?}\n"))
            .map_err(|e| LaunchError(e.to_string()))?;
        let ms = arg(argv, "ms").unwrap_or(0).max(0) as u64;
        let behaviour = if argv.iter().any(|a| a == "hold") {
            let (tx, rx) = oneshot::channel();
            let job = (request.key.batch_id, request.key.job_id);
            self.held.lock().unwrap().insert(job, tx);
            Behaviour::Hold(rx)
        } else if let Some(signal) = arg(argv, "signal") {
            Behaviour::Signal {
                signal: signal as i32,
                ms,
            }
        } else {
            Behaviour::Exit {
                code: arg(argv, "exit").unwrap_or(0) as i32,
                ms,
            }
        };
        let pid = 1000 + self.next_pid.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(SimProcess { pid, behaviour }))
    }

    fn kill_grace(&self) -> Duration {
        Duration::from_secs(2)
    }
}

#[async_trait]
impl Process for SimProcess {
    fn pid(&self) -> u32 {
        self.pid
    }

    async fn wait(
        self: Box<Self>,
        timeout: Option<Duration>,
        kill: CancellationToken,
    ) -> (ExitStatus, u64) {
        let began = tokio::time::Instant::now();
        let run = async {
            match self.behaviour {
                Behaviour::Exit { code, ms } => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    ExitStatus::Code { code }
                }
                Behaviour::Signal { signal, ms } => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    ExitStatus::Signal { signal }
                }
                Behaviour::Hold(rx) => match rx.await {
                    Ok(code) => ExitStatus::Code { code },
                    Err(_) => std::future::pending().await,
                },
            }
        };
        let limit = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let status = tokio::select! {
            status = run => status,
            () = limit => ExitStatus::TimedOut {
                timeout_ms: timeout.map_or(0, |t| t.as_millis() as u64),
            },
            () = kill.cancelled() => ExitStatus::Signal { signal: 15 },
        };
        (status, began.elapsed().as_millis() as u64)
    }
}

/// What the simulated driver received.
#[derive(Debug, Default)]
pub struct DriverLog {
    /// `job_complete` bodies taken (processed), by `(batch, job, attempt)`,
    /// including ones whose answer was then lost.
    pub completes: HashMap<(i64, i64, String), Vec<JobCompleteBody>>,
    /// `job_started` calls taken, by `(batch, job, attempt)`.
    pub started: HashMap<(i64, i64, String), usize>,
    /// Calls failed before being taken.
    pub failed: usize,
    /// Calls taken whose answer was lost.
    pub lost: usize,
}

/// A driver that answers after a seeded delay, fails calls before taking
/// them and loses answers after taking them, per call and seed.
#[derive(Debug)]
pub struct SimDriver {
    /// Seed of every decision.
    pub seed: u64,
    /// Calls that fail before being taken.
    pub fail_rate: f64,
    /// Calls taken whose answer is lost (the worker sees a failure).
    pub lose_rate: f64,
    /// Longest answer delay, in ms (uniform from 0).
    pub max_delay_ms: u64,
    calls: Mutex<HashMap<u64, u64>>,
    /// While set, every call fails (the driver is down).
    pub down: std::sync::atomic::AtomicBool,
    /// What it received.
    pub log: Mutex<DriverLog>,
}

impl SimDriver {
    /// A driver failing `fail_rate` and losing `lose_rate` of calls.
    pub fn new(seed: u64, fail_rate: f64, lose_rate: f64, max_delay_ms: u64) -> SimDriver {
        SimDriver {
            seed,
            fail_rate,
            lose_rate,
            max_delay_ms,
            calls: Mutex::default(),
            down: Default::default(),
            log: Mutex::default(),
        }
    }
}

fn attempt_of(body: &Value) -> (i64, i64, String) {
    let status = &body["status"];
    (
        status["batch_id"].as_i64().unwrap_or(-1),
        status["job_id"].as_i64().unwrap_or(-1),
        status["attempt_id"].as_str().unwrap_or("").to_owned(),
    )
}

#[async_trait]
impl DriverTransport for SimDriver {
    async fn post(
        &self,
        path: &'static str,
        _instance_name: &str,
        _token: &str,
        body: Bytes,
    ) -> Result<DriverAnswer, String> {
        if self.down.load(Ordering::SeqCst) {
            return Err("simulated: the driver is down".into());
        }
        let json: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        // Keyed by the attempt, not the bytes: bodies carry wall-clock times.
        #[allow(deprecated)]
        let mut hasher = std::hash::DefaultHasher::new();
        (path, attempt_of(&json)).hash(&mut hasher);
        let what = hasher.finish();
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(what).or_insert(0);
            *n += 1;
            *n
        };
        let delay = draw(self.seed, ("delay", what, n));
        tokio::time::sleep(Duration::from_millis(
            (delay * self.max_delay_ms as f64) as u64,
        ))
        .await;
        let fate = draw(self.seed, ("fate", what, n));
        if fate < self.fail_rate {
            self.log.lock().unwrap().failed += 1;
            return Err("simulated: connection reset before the driver read the call".into());
        }
        {
            let mut log = self.log.lock().unwrap();
            if path == JOB_COMPLETE_PATH {
                let parsed: JobCompleteBody =
                    serde_json::from_value(json.clone()).map_err(|e| e.to_string())?;
                log.completes
                    .entry(attempt_of(&json))
                    .or_default()
                    .push(parsed);
            } else if path == JOB_STARTED_PATH {
                *log.started.entry(attempt_of(&json)).or_default() += 1;
            }
            if fate < self.fail_rate + self.lose_rate {
                log.lost += 1;
                return Err("simulated: the driver's answer was lost".into());
            }
        }
        Ok(DriverAnswer {
            status: 200,
            body: Bytes::from_static(br#"{"token": "sim-instance-token"}"#),
        })
    }

    fn describe(&self) -> String {
        "simulated driver".into()
    }
}

thread_local! {
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// Panics on this thread so far (a current-thread runtime runs its tasks
/// on the thread that blocks on it, so a task's caught panic counts too).
pub fn panics_on_this_thread() -> usize {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
    PANICS.with(Cell::get)
}

/// The stores and parts of a simulated worker that outlive restarts.
#[derive(Debug, Clone)]
pub struct SimParts {
    /// The worker's data directory (journal, attempt directories).
    pub data_dir: std::path::PathBuf,
    /// The spec store (specs are written under `specs/`).
    pub specs: SpecStore,
    /// The logs store.
    pub logs: Arc<dyn ObjectStore>,
    /// The driver, if the worker reports.
    pub driver: Option<Arc<SimDriver>>,
    /// Cores and memory for jobs.
    pub capacity: Capacity,
    /// Journal bytes after which it is compacted.
    pub segment_bytes: u64,
    /// Faults injected into the journal's writes (a full disk, torn writes).
    pub journal_faults: Option<WriteFaults>,
}

/// Journal write faults by seed: about one append in `1 / rate` starts a
/// full-disk episode, whose first write is torn (half written) and whose
/// next `2..=8` tries fail with nothing written. Counts what it injected.
#[derive(Debug, Default)]
pub struct JournalFaults {
    calls: std::sync::atomic::AtomicU64,
    remaining: AtomicU32,
    /// Appends that failed.
    pub injected: std::sync::atomic::AtomicU64,
    /// Episodes started.
    pub episodes: std::sync::atomic::AtomicU64,
}

impl JournalFaults {
    /// Faults for `seed`, at `rate` episodes per append.
    pub fn writer_faults(self: &Arc<Self>, seed: u64, rate: f64) -> WriteFaults {
        let faults = self.clone();
        WriteFaults(Arc::new(move |size| {
            let n = faults.calls.fetch_add(1, Ordering::Relaxed);
            let remaining = faults.remaining.load(Ordering::Relaxed);
            let fault = if remaining > 0 {
                faults.remaining.store(remaining - 1, Ordering::Relaxed);
                Some(WriteFault::Full)
            } else if draw(seed, ("journal", n)) < rate {
                let tries = 2 + (draw(seed, ("journal-len", n)) * 7.0) as u32;
                faults.remaining.store(tries, Ordering::Relaxed);
                faults.episodes.fetch_add(1, Ordering::Relaxed);
                Some(WriteFault::Torn(size / 2))
            } else {
                None
            };
            if fault.is_some() {
                faults.injected.fetch_add(1, Ordering::Relaxed);
            }
            fault
        }))
    }
}

impl SimParts {
    /// Parts over `spec_store` (specs under `specs/`) and `logs`.
    pub fn new(
        data_dir: &FsPath,
        spec_store: Arc<dyn ObjectStore>,
        logs: Arc<dyn ObjectStore>,
        driver: Option<Arc<SimDriver>>,
    ) -> SimParts {
        let config = SpecLoadConfig {
            deadline: Duration::from_secs(20),
            jitter_seed: Some(7),
            ..SpecLoadConfig::default()
        };
        SimParts {
            data_dir: data_dir.to_owned(),
            specs: SpecStore::on_caller_runtime(spec_store, Path::from("specs"), config),
            logs,
            driver,
            capacity: Capacity {
                cores_mcpu: 16_000,
                memory_bytes: 64 << 30,
            },
            segment_bytes: 64 * 1024,
            journal_faults: None,
        }
    }

    /// A worker over these parts, recovered from the journal in the data
    /// directory (inline writer) and activated; must run inside a tokio
    /// runtime.
    pub async fn start(&self, runner: Arc<dyn Runner>) -> Worker {
        let worker = self.start_unactivated(runner);
        worker
            .activate("127.0.0.1")
            .await
            .expect("the simulated driver activates the worker");
        worker
    }

    /// [`SimParts::start`] without the activation (creates get 503 until
    /// [`Worker::activate`] succeeds).
    pub fn start_unactivated(&self, runner: Arc<dyn Runner>) -> Worker {
        let mut builder = Worker::builder(&self.data_dir)
            .name("sim-worker")
            .executor(Executor::Host(runner))
            .journal(JournalOptions {
                durability: Durability::Flush,
                mode: Some(WriterMode::Inline),
                preallocate_bytes: 0,
                faults: self.journal_faults.clone(),
                ..JournalOptions::default()
            })
            .journal_segment_bytes(self.segment_bytes)
            .capacity(self.capacity)
            .specs(self.specs.clone())
            .logs(LogsStore::new(self.logs.clone(), Path::from("logs")).with_jitter_seed(7))
            .store_options(StoreOptions::default());
        if let Some(transport) = self.driver.clone() {
            let retry = ReportRetry {
                min_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(30),
                jitter_seed: Some(transport.seed),
                ..ReportRetry::default()
            };
            builder = builder.driver(DriverClient::with_transport(
                transport,
                "sim-worker".into(),
                "t".into(),
                retry,
            ));
        }
        builder.open().expect("the simulated worker opens")
    }
}

/// One HTTP call to the worker's API router (no sockets): status and JSON
/// body (`null` if the body is not JSON).
pub async fn call(
    router: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("a valid request");
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A format-7 create body for attempt `attempt_id` of a bunch job, with
/// one secret whose data is `secret`.
pub fn create_body(
    batch_id: i64,
    job_id: i64,
    token: &str,
    start_job_id: i64,
    attempt_id: &str,
    secret: &str,
) -> Value {
    serde_json::json!({
        "batch_id": batch_id,
        "job_id": job_id,
        "format_version": 7,
        "token": token,
        "start_job_id": start_job_id,
        "user": "sim-user",
        "gsa_key": {"key.json": secret},
        "job_spec": {
            "attempt_id": attempt_id,
            "job_group_id": 0,
            "secrets": [{"name": "s", "namespace": "n", "mount_path": "/secret", "data": {"f": secret}}],
        },
        "queue_time": null
    })
}

/// The status JSON of every attempt on `worker`, by `(batch_id, job_id)`.
pub fn statuses(worker: &Worker) -> BTreeMap<(i64, i64), Value> {
    worker
        .snapshot()
        .into_iter()
        .map(|(key, _)| {
            let status = worker
                .status(key.batch_id, key.job_id)
                .expect("on the worker");
            (
                (key.batch_id, key.job_id),
                serde_json::to_value(status).expect("status serialises"),
            )
        })
        .collect()
}

/// `status` without the end's upload steps (`post-job finally block`,
/// `uploading_log`, `uploading_resource_usage`): an upload in flight at a
/// restart is done again after it, and those steps then end later.
fn without_uploads(status: &Value) -> Value {
    let mut status = status.clone();
    if let Some(timing) = status.get_mut("timing") {
        strip_uploads(timing);
    }
    if let Some(tasks) = status
        .get_mut("container_statuses")
        .and_then(Value::as_object_mut)
    {
        for task in tasks.values_mut() {
            if let Some(timing) = task.get_mut("timing") {
                strip_uploads(timing);
            }
        }
    }
    status
}

fn strip_uploads(timing: &mut Value) {
    if let Some(steps) = timing.as_object_mut() {
        for step in [
            "post-job finally block",
            "uploading_log",
            "uploading_resource_usage",
        ] {
            steps.remove(step);
        }
    }
}

/// Whether `after` (an attempt's status JSON after a restart) is `before`,
/// field by field (but for the end's upload steps, done again after a
/// restart); for an attempt that was live, except what ending
/// `worker_restarted` changes: the state, the error, the end time and the
/// main container's state.
pub fn same_after_restart(job: (i64, i64), before: &Value, after: &Value) -> Result<(), String> {
    let terminal = ["succeeded", "failed", "error", "cancelled"]
        .contains(&before["state"].as_str().unwrap_or_default());
    if terminal {
        return match without_uploads(after) == without_uploads(before) {
            true => Ok(()),
            false => Err(format!(
                "job {job:?}: status changed by a restart: {before} -> {after}"
            )),
        };
    }
    if after["state"] != "error" || after["batch_worker"]["error_kind"] != "worker_restarted" {
        return Err(format!("job {job:?}: live before a restart, then {after}"));
    }
    // What ending `worker_restarted` changes: the state, the job-level
    // error, the times (a job that had not got its cores starts when it
    // ends), the steps, the tasks' states, our extension's state and kind.
    let restart_fields = [
        "state",
        "error",
        "start_time",
        "end_time",
        "timing",
        "batch_worker",
        "container_statuses",
    ];
    let (Value::Object(was), Value::Object(now)) = (before, after) else {
        return Err(format!("job {job:?}: a status is not an object"));
    };
    if was
        .keys()
        .filter(|k| *k != "error")
        .ne(now.keys().filter(|k| *k != "error"))
    {
        return Err(format!("job {job:?}: fields differ: {before} -> {after}"));
    }
    for (field, value) in was {
        if !restart_fields.contains(&field.as_str()) && now.get(field) != Some(value) {
            return Err(format!(
                "job {job:?}: {field} changed by a restart: {value} -> {:?}",
                now.get(field)
            ));
        }
    }
    if let Some(main) = was.get("container_statuses").and_then(|c| c.get("main")) {
        let now = &after["container_statuses"]["main"];
        for (field, was, now) in [
            ("name", &main["name"], &now["name"]),
            (
                "container_status.started_at",
                &main["container_status"]["started_at"],
                &now["container_status"]["started_at"],
            ),
            (
                "container_status.exit_code",
                &main["container_status"]["exit_code"],
                &now["container_status"]["exit_code"],
            ),
        ] {
            if was != now {
                return Err(format!(
                    "job {job:?}: container_statuses.main.{field} changed by a restart: {before} -> {after}"
                ));
            }
        }
    }
    Ok(())
}
