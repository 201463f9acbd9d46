//! `batch-worker demo`: the main job on an embedded default. It starts a
//! worker on a free loopback port with a local-file spec store, writes
//! bunches of job specs (good, failing, missing and corrupt in every way the
//! spec store classifies), acts as the driver (creates over real HTTP with
//! a 2 s timeout, receives `job_started` / `job_complete`), and reports what
//! became of every job against what its spec was made for.
//!
//! This file is long (about 970 lines) because it is one run read top to
//! bottom: set-up, the driver's create loop, the checks and the report; the
//! plan of job kinds, the embedded driver, the progress line and the
//! outcome table are in `demo/`.

pub mod driver;
pub mod plan;
pub mod progress;
pub mod table;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use batch_worker_model::{ErrorKind, JobState, RunPhase};
use futures::StreamExt;
use hdrhistogram::Histogram;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::admission::Capacity;
use crate::api::{ApiConfig, CREATE_PATH};
use crate::cli::{prepare_dir, DemoArgs, StartError};
use crate::driver_client::{DriverClient, ReportRetry};
use crate::instance_config::InstanceConfig;
use crate::logs_store::LogsStore;
use crate::runner::HostRunner;
use crate::server::serve;
use crate::spec_store::{SpecLoadConfig, SpecStore};
use crate::store::{open_store, throttled, with_control_plane, FaultStore};
use crate::worker::{Executor, JournalOptions, Worker};
use plan::{Expected, Kind, DEMO_BATCH_ID, DEMO_SPEC_MAX_BYTES};
use progress::Progress;

/// The create calls' client timeout, like the driver's.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(2);
/// Concurrent create calls.
pub const CREATE_CONCURRENCY: usize = 64;
/// Most jobs per well-formed bunch.
const BUNCH_JOBS: usize = 64;

/// The demo could not run (as opposed to: ran, and found a problem).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Setting up the worker failed.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The worker could not be opened.
    #[error(transparent)]
    Open(#[from] crate::worker::OpenError),
    /// Local IO failed.
    #[error("demo IO: {0}")]
    Io(#[from] std::io::Error),
    /// Writing specs failed.
    #[error("writing specs: {0}")]
    Store(#[from] object_store::Error),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The worker could not activate with the embedded driver.
    #[error("activation: {0}")]
    Activation(#[from] crate::driver_client::ReportError),
}

/// One planned job and what became of it.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// The job's id.
    pub job_id: i64,
    /// What it was made to do.
    pub kind: Kind,
    /// The state its spec was made for.
    pub expected: Expected,
    /// The state the worker's status JSON gave at the end (`None`: not final).
    pub actual: Option<Expected>,
    /// The status's error message, if any.
    pub error: Option<String>,
    /// The state in the driver's `job_complete`, if one arrived.
    pub reported_state: Option<String>,
    /// Whether `--store-faults` injected a fault into a read of the job's
    /// bunch.
    pub faulted: bool,
}

impl JobResult {
    /// How it ended, for the report (`not final` if it did not).
    pub fn got(&self) -> String {
        self.actual
            .map_or("not final".to_owned(), |a| a.to_string())
    }

    /// Whether an injected fault explains how the job ended: a fault hit
    /// a read of its bunch, and it ended as an error of its spec read,
    /// reported as such.
    pub fn changed_by_fault(&self) -> bool {
        self.faulted
            && matches!(self.actual, Some(Expected::Error(kind)) if kind.is_spec_error())
            && self.reported_state.as_deref() == Some("error")
    }
}

/// The create calls' figures.
#[derive(Debug, Clone)]
pub struct CreateStats {
    /// Calls sent.
    pub sent: usize,
    /// Calls answered 200.
    pub ok: usize,
    /// Calls that got another status or a connection error.
    pub failed: usize,
    /// Calls that hit the 2 s timeout.
    pub timed_out: usize,
    /// Latency p50, in µs.
    pub p50_us: u64,
    /// Latency p99, in µs.
    pub p99_us: u64,
    /// Latency max, in µs.
    pub max_us: u64,
}

/// The instance config the demo's worker bills by (Hail's default
/// `standard` pool: GCP `n1-standard-16`, preemptible, `us-central1`;
/// from `tests/fixtures/samples/hail/quantified-resources.json`).
const DEMO_INSTANCE_CONFIG: &str = include_str!("demo/instance_config.json");

/// The demo's `billing_update` period (Hail's is 60 s; the demo is short).
const DEMO_BILLING_UPDATE_PERIOD: Duration = Duration::from_millis(500);

/// The demo's findings.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Every job, by id.
    pub jobs: Vec<JobResult>,
    /// Create-call figures.
    pub creates: CreateStats,
    /// `job_started` bodies received.
    pub started_received: usize,
    /// `job_complete` bodies received.
    pub complete_received: usize,
    /// `job_complete` bodies for an attempt already reported.
    pub complete_duplicates: usize,
    /// `billing_update` calls received.
    pub billing_updates: usize,
    /// `deactivate` calls received (1 expected: the worker's shutdown).
    pub deactivations: usize,
    /// What Hail's driver handlers would have refused or got wrong (see
    /// [`driver`]); none expected.
    pub driver_violations: Vec<String>,
    /// Driver calls without `X-Hail-Instance-Name`, or whose
    /// `X-Hail-Instance-Token` was not the one activation handed out.
    pub missing_instance_header: usize,
    /// `status.json` objects in the logs store.
    pub status_files: usize,
    /// `status.json` objects expected: one per attempt of format > 1
    /// (format 1's full status travels in `job_complete`, as in Hail).
    pub status_files_expected: usize,
    /// Main logs in the logs store (one per started process).
    pub log_files: usize,
    /// Bunches written.
    pub bunches: usize,
    /// Added blob latency, in ms.
    pub blob_latency_ms: u64,
    /// Median token wait before each store request, in ms (0: none).
    pub token_latency_ms: u64,
    /// The faults injected into spec reads, and what was injected.
    pub store_faults: Option<(crate::store::FaultPlan, crate::store::FaultStats)>,
    /// Where the specs were (redacted URL, or "local files").
    pub spec_store: String,
    /// Wall time of the whole run, in ms.
    pub elapsed_ms: u64,
    /// Where the specs and logs are, when kept.
    pub kept_dir: Option<PathBuf>,
    /// Records in the worker's journal at the end.
    pub journal_records: usize,
    /// The journal's durability.
    pub durability: crate::journal::Durability,
    /// What `replay --check` found in it (nothing, when all is well).
    pub journal_problems: Vec<String>,
    /// The worker's `GET /metrics` text at the end of the run (empty if
    /// the scrape failed).
    pub metrics: String,
}

struct PlannedJob {
    job_id: i64,
    kind: Kind,
    body: Value,
}

/// Files named `name` anywhere under `dir`.
fn count_files(dir: &std::path::Path, name: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                count_files(&path, name)
            } else {
                usize::from(entry.file_name() == name)
            }
        })
        .sum()
}

/// Runs the demo.
///
/// # Errors
/// [`DemoError`] when the demo itself cannot run; job outcomes are in the
/// report, see [`DemoReport::passed`].
pub async fn run(args: &DemoArgs) -> Result<DemoReport, DemoError> {
    let began = Instant::now();
    let temp = match &args.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("batch-worker-demo-")
                .tempdir()?,
        ),
    };
    let data_dir = match (&args.data_dir, &temp) {
        (Some(dir), _) => prepare_dir(dir)?,
        (None, Some(t)) => t.path().to_owned(),
        (None, None) => unreachable!("a temporary directory is made when no --data-dir is given"),
    };
    let (store, root): (Arc<dyn ObjectStore>, Path) = match &args.spec_store {
        Some(url) => open_store(url).map_err(StartError::from)?,
        None => {
            let spec_dir = prepare_dir(&data_dir.join("specs"))?;
            (
                Arc::new(LocalFileSystem::new_with_prefix(&spec_dir)?),
                Path::default(),
            )
        }
    };

    // With injected faults the tokens (so the keys, so the faults) follow
    // the plan's seed: the same plan repeats the same faults.
    let token_seed = args.store_faults.as_ref().map(|plan| plan.seed);
    let progress = Progress::new(args.jobs as u64);
    progress.doing(format!("writing {} job specs", args.jobs));
    let written = write_specs(&store, &root, args.jobs, token_seed).await;
    let (planned, bunches) = written.inspect_err(|_| progress.finish())?;
    progress.doing("starting the worker");

    // The driver side (its endpoint and its create calls) runs on a runtime
    // of its own, as it would in its own process: its latency figures then
    // measure the worker, not the demo's scheduling of its own client.
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
    };
    let driver_runtime = runtime("demo-driver")?;
    let client_runtime = runtime("demo-client")?;
    let driver = driver_runtime
        .spawn(driver::EmbeddedDriver::start())
        .await
        .expect("the driver's start does not panic")?;
    let worker_dir = data_dir.join("worker");
    let logs_dir = prepare_dir(&data_dir.join("logs"))?;
    let logs = LogsStore::new(
        with_control_plane(
            Arc::new(LocalFileSystem::new_with_prefix(logs_dir)?),
            args.token_latency_ms,
            2,
        ),
        Path::default(),
    );
    let reads = throttled(
        with_control_plane(store, args.token_latency_ms, 1),
        args.blob_latency_ms,
    );
    let faults = args
        .store_faults
        .clone()
        .map(|plan| Arc::new(FaultStore::new(reads.clone(), plan)));
    let specs = SpecStore::new(
        faults
            .clone()
            .map_or(reads, |f| f as Arc<dyn object_store::ObjectStore>),
        root,
        SpecLoadConfig {
            max_spec_bytes: DEMO_SPEC_MAX_BYTES,
            jitter_seed: args.store_faults.as_ref().map(|plan| plan.seed),
            ..SpecLoadConfig::default()
        },
    )?;
    let client = DriverClient::new(
        driver.url.clone(),
        "demo-worker".into(),
        "demo-token".into(),
        ReportRetry::default(),
    )?;
    // A Hail instance config (GCP n1-standard-16, preemptible, the
    // default pool's), so that every report is billed as on Hail; the
    // driver checks each resource name against it.
    let instance_config = InstanceConfig::from_json(DEMO_INSTANCE_CONFIG.as_bytes())
        .expect("the embedded instance config is valid");
    driver.expect_resources(
        instance_config
            .quantified_resources(1000, 0, 1)
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.name),
    );
    let worker = Worker::builder(&worker_dir)
        .name("demo-worker")
        .region("us-central1")
        .instance_config(instance_config)
        .billing_update_period(DEMO_BILLING_UPDATE_PERIOD)
        .executor(Executor::Host(Arc::new(HostRunner {
            kill_grace: Duration::from_secs(2),
            job_user: None,
            cgroups: None,
            shim: None,
        })))
        .capacity(Capacity::of_machine())
        .specs(specs)
        .logs(logs)
        .driver(client)
        .journal(JournalOptions {
            durability: args.durability,
            ..JournalOptions::default()
        })
        .open()?;
    let journal_file = crate::journal::journal_dir(worker.data_dir());
    worker.activate("127.0.0.1").await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base =
        Url::parse(&format!("http://{}/", listener.local_addr()?)).expect("socket address URL");
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        worker.clone(),
        ApiConfig::new(17 << 20),
        crate::server::ConnectionLimits::default(),
        stop.clone().cancelled_owned(),
    ));

    let http = reqwest::Client::builder().timeout(CREATE_TIMEOUT).build()?;
    let bodies: Vec<Value> = planned.iter().map(|j| j.body.clone()).collect();
    progress.doing("creating jobs");
    let creates = {
        let (http, base, progress) = (http.clone(), base.clone(), progress.clone());
        client_runtime
            .spawn(async move { create_all(&http, &base, bodies, &progress).await })
            .await
            .expect("the create calls do not panic")
    };
    progress.doing("waiting for the jobs to end");

    // A hung spec read ends at the load deadline (60 s).
    let hangs = args
        .store_faults
        .as_ref()
        .is_some_and(|f| f.hang_rate > 0.0);
    let deadline = Duration::from_secs(if hangs { 150 } else { 90 })
        + Duration::from_millis(args.blob_latency_ms * 8 + args.token_latency_ms * 30);
    let finished = tokio::time::timeout(deadline, async {
        cancel_when_running(&http, &base, &worker, &planned).await;
        let mut changes = driver.changes();
        loop {
            let all: Vec<_> = planned
                .iter()
                .filter_map(|j| worker.state_of(DEMO_BATCH_ID, j.job_id).ok())
                .collect();
            let states: Vec<_> = all.iter().filter(|s| s.is_terminal()).collect();
            progress.ended(states.len() as u64);
            // Every final job but the cancelled ones is reported (with
            // injected faults, a job planned to be cancelled may end
            // otherwise first).
            let reported = states
                .iter()
                .filter(|s| s.wire_state() != batch_worker_model::WireState::Cancelled)
                .count();
            let complete = driver.received().complete.len();
            if states.len() == planned.len() && complete >= reported {
                break;
            }
            let held = faults.as_ref().map_or(0, |f| f.stats().hangs);
            progress.doing(progress::waiting_for(
                &all,
                reported.saturating_sub(complete),
                held,
            ));
            let mut worker_changes = worker.changes();
            tokio::select! {
                _ = changes.changed() => {},
                _ = worker_changes.changed() => {},
            }
        }
    })
    .await;
    progress.doing("collecting the results, stopping the worker");
    if finished.is_err() {
        tracing::warn!(
            deadline_ms = deadline.as_millis() as u64,
            "not every job finished before the deadline"
        );
    }

    let received = driver.received();
    let mut jobs = collect_results(&http, &base, &planned, &received).await;
    if let Some(faults) = &faults {
        // The bunch tokens the faults hit (keys are `.../bunch/{token}/...`).
        let injected = faults.injected();
        let hit: std::collections::HashSet<&str> = injected
            .iter()
            .filter_map(|f| f.path.split('/').skip_while(|s| *s != "bunch").nth(1))
            .collect();
        for (job, plan) in jobs.iter_mut().zip(&planned) {
            job.faulted = plan.body["token"].as_str().is_some_and(|t| hit.contains(t));
        }
    }
    let metrics = scrape_metrics(&http, &base).await;
    stop.cancel();
    let _ = server.await;
    // After the worker's shutdown: its deactivate has arrived.
    let after = driver.received();
    // The journal of the run, through the replay tool's checks.
    let replayed =
        crate::replay::replay_path(&journal_file, crate::replay::ReplayOptions::default());
    let (journal_records, journal_problems) = match replayed {
        Ok(report) => (
            report.summary.records,
            report.problems.iter().map(|p| p.describe()).collect(),
        ),
        Err(e) => (0, vec![e.to_string()]),
    };
    drop(driver);
    driver_runtime.shutdown_background();
    client_runtime.shutdown_background();
    progress.finish();

    let mut seen = std::collections::HashSet::new();
    let complete_duplicates = received
        .complete
        .iter()
        .filter(|c| {
            !seen.insert((
                c.status.batch_id,
                c.status.job_id,
                c.status.attempt_id.clone(),
            ))
        })
        .count();
    Ok(DemoReport {
        jobs,
        creates,
        started_received: received.started.len(),
        billing_updates: after.billing_updates.len(),
        deactivations: after.deactivations,
        driver_violations: after
            .violations
            .iter()
            .cloned()
            .chain(after.unmarked_acknowledged.iter().map(|key| {
                format!("job_complete of {key:?}: marked_job_started false but job_started was acknowledged")
            }))
            .collect(),
        complete_received: received.complete.len(),
        complete_duplicates,
        missing_instance_header: received.missing_instance_header + received.wrong_token,
        status_files: count_files(&data_dir.join("logs"), "status.json"),
        status_files_expected: planned
            .iter()
            .filter(|j| j.body["format_version"] != 1)
            .count(),
        log_files: count_files(&data_dir.join("logs"), "log"),
        bunches,
        blob_latency_ms: args.blob_latency_ms,
        token_latency_ms: args.token_latency_ms,
        store_faults: faults.map(|f| (f.plan().clone(), f.stats())),
        spec_store: args
            .spec_store
            .as_ref()
            .map_or_else(|| "local files".to_owned(), crate::store::redact_url),
        elapsed_ms: began.elapsed().as_millis() as u64,
        kept_dir: args.data_dir.as_ref().map(|_| data_dir.clone()),
        journal_records,
        journal_problems,
        durability: args.durability,
        metrics,
    })
}

/// The worker's `GET /metrics` text; empty (and logged) if it failed.
async fn scrape_metrics(http: &reqwest::Client, base: &Url) -> String {
    let url = base.join("metrics").expect("a relative path");
    let text = async { http.get(url).send().await?.error_for_status()?.text().await };
    text.await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "GET /metrics failed");
        String::new()
    })
}

/// Writes the bunches: runs of well-formed specs share bunches of up to
/// [`BUNCH_JOBS`]; every other job gets a bunch of its own, then damaged.
async fn write_specs(
    store: &Arc<dyn ObjectStore>,
    root: &Path,
    jobs: usize,
    token_seed: Option<u64>,
) -> Result<(Vec<PlannedJob>, usize), DemoError> {
    use rand::SeedableRng;
    let mut tokens = rand::rngs::StdRng::seed_from_u64(token_seed.unwrap_or_else(rand::random));
    let writer = SpecStore::new(store.clone(), root.clone(), SpecLoadConfig::default())?;
    let mut planned = Vec::with_capacity(jobs);
    let mut bunches = 0;
    let mut run: Vec<(i64, Kind)> = Vec::new();
    let ids: Vec<i64> = (1..=jobs as i64).collect();
    let mut flush = |run: &mut Vec<(i64, Kind)>,
                     planned: &mut Vec<PlannedJob>|
     -> Option<(String, Vec<(i64, Kind)>)> {
        if run.is_empty() {
            return None;
        }
        let token = Alphanumeric.sample_string(&mut tokens, 16);
        let members = std::mem::take(run);
        for (job_id, kind) in &members {
            planned.push(PlannedJob {
                job_id: *job_id,
                kind: *kind,
                body: create_body(*job_id, Some((&token, members[0].0)), None),
            });
        }
        Some((token, members))
    };
    let mut pending = Vec::new();
    for job_id in ids {
        let kind = plan::kind_of(job_id);
        if job_id == 1 {
            // One format-1 job: the whole spec inline in the create body.
            let spec: Value = serde_json::from_slice(&plan::spec_json(job_id, kind))
                .expect("a demo spec is JSON");
            planned.push(PlannedJob {
                job_id,
                kind,
                body: create_body(job_id, None, Some(spec)),
            });
            continue;
        }
        if kind.well_formed() {
            run.push((job_id, kind));
            if run.len() == BUNCH_JOBS {
                pending.extend(flush(&mut run, &mut planned));
            }
        } else {
            pending.extend(flush(&mut run, &mut planned));
            run.push((job_id, kind));
            pending.extend(flush(&mut run, &mut planned));
        }
    }
    pending.extend(flush(&mut run, &mut planned));
    for (token, members) in pending {
        let specs: Vec<Vec<u8>> = members
            .iter()
            .map(|(id, kind)| plan::spec_json(*id, *kind))
            .collect();
        let keys = writer.write_bunch(DEMO_BATCH_ID, &token, &specs).await?;
        bunches += 1;
        if let [(_, kind)] = members[..] {
            let specs_len = specs[0].len() as u64;
            let index = store.get(&keys.index).await?.bytes().await?;
            if let Some(damaged) = plan::damaged_index(kind, &index, specs_len) {
                store.put(&keys.index, PutPayload::from(damaged)).await?;
            }
            match kind {
                Kind::SpecsDeleted => store.delete(&keys.specs).await?,
                Kind::IndexDeleted => store.delete(&keys.index).await?,
                _ => {}
            }
        }
    }
    planned.sort_by_key(|j| j.job_id);
    Ok((planned, bunches))
}

/// A create body like the driver's (`tests/fixtures/samples/create-v7.json`).
fn create_body(job_id: i64, bunch: Option<(&str, i64)>, inline: Option<Value>) -> Value {
    let attempt_id = Alphanumeric.sample_string(&mut rand::rng(), 6);
    let mut job_spec = inline.unwrap_or_else(|| json!({}));
    job_spec["attempt_id"] = json!(attempt_id);
    job_spec["job_group_id"] = json!(0);
    job_spec["secrets"] = json!([{
        "namespace": "default", "name": "demo-user-gsa-key", "mount_path": "/gsa-key",
        "data": {"key.json": "ZGVtby1zZWNyZXQ="}
    }]);
    job_spec["env"] = json!([{"name": "HAIL_REGION", "value": "local"}]);
    json!({
        "batch_id": DEMO_BATCH_ID,
        "job_id": job_id,
        "format_version": if bunch.is_some() { 7 } else { 1 },
        "token": bunch.map(|(t, _)| t),
        "start_job_id": bunch.map(|(_, s)| s),
        "user": "demo-user",
        "gsa_key": {"key.json": "ZGVtby1zZWNyZXQ="},
        "job_spec": job_spec,
        "queue_time": crate::worker::now_ms(),
    })
}

async fn create_all(
    http: &reqwest::Client,
    base: &Url,
    bodies: Vec<Value>,
    progress: &Progress,
) -> CreateStats {
    let url = base
        .join(CREATE_PATH.trim_start_matches('/'))
        .expect("a valid path");
    let outcomes: Vec<(Duration, Result<reqwest::StatusCode, reqwest::Error>)> =
        futures::stream::iter(bodies)
            .map(|body| {
                let request = http.post(url.clone()).json(&body);
                async move {
                    let t = Instant::now();
                    let result = request.send().await.map(|r| r.status());
                    progress.created_one();
                    (t.elapsed(), result)
                }
            })
            .buffer_unordered(CREATE_CONCURRENCY)
            .collect()
            .await;
    // 1 µs to 1 h, 3 significant digits.
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
    let (mut ok, mut failed, mut timed_out) = (0, 0, 0);
    for (latency, result) in &outcomes {
        hist.saturating_record((latency.as_micros() as u64).max(1));
        match result {
            Ok(s) if s.is_success() => ok += 1,
            Err(e) if e.is_timeout() => timed_out += 1,
            _ => failed += 1,
        }
    }
    CreateStats {
        sent: outcomes.len(),
        ok,
        failed,
        timed_out,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
    }
}

/// Cancels the `Cancelled` jobs once their process runs, over HTTP.
async fn cancel_when_running(
    http: &reqwest::Client,
    base: &Url,
    worker: &Worker,
    planned: &[PlannedJob],
) {
    for job in planned.iter().filter(|j| j.kind == Kind::Cancelled) {
        worker
            .wait_until(|w| {
                // Cancel a running process: the hardest case (its group
                // must end, and it must not be reported).
                w.state_of(DEMO_BATCH_ID, job.job_id).is_ok_and(|s| {
                    s.is_terminal()
                        || matches!(
                            s,
                            JobState::Running {
                                phase: RunPhase::Executing { .. }
                            }
                        )
                })
            })
            .await;
        let url = base
            .join(&format!(
                "api/v1alpha/batches/{DEMO_BATCH_ID}/jobs/{}/delete",
                job.job_id
            ))
            .expect("a valid path");
        if let Err(e) = http.delete(url).send().await {
            tracing::warn!(job_id = job.job_id, error = %e, "cancel call failed");
        }
    }
}

async fn collect_results(
    http: &reqwest::Client,
    base: &Url,
    planned: &[PlannedJob],
    received: &driver::Received,
) -> Vec<JobResult> {
    let reported: HashMap<i64, String> = received
        .complete
        .iter()
        .map(|c| (c.status.job_id, c.status.state.clone()))
        .collect();
    let mut results = Vec::with_capacity(planned.len());
    for job in planned {
        let url = base
            .join(&format!(
                "api/v1alpha/batches/{DEMO_BATCH_ID}/jobs/{}/status",
                job.job_id
            ))
            .expect("a valid path");
        let status: Option<Value> = match http.get(url).send().await {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            _ => None,
        };
        let actual = status.as_ref().and_then(actual_state);
        results.push(JobResult {
            job_id: job.job_id,
            kind: job.kind,
            expected: job.kind.expected(),
            actual,
            error: status.as_ref().and_then(|s| {
                let tasks = &s["container_statuses"];
                [
                    &s["error"],
                    &tasks["main"]["error"],
                    &tasks["input"]["error"],
                    &tasks["output"]["error"],
                ]
                .into_iter()
                .find_map(|e| e.as_str().map(str::to_owned))
            }),
            reported_state: reported.get(&job.job_id).cloned(),
            faulted: false,
        });
    }
    results
}

/// Reads a final state from status JSON (`None` while not final).
fn actual_state(status: &Value) -> Option<Expected> {
    match status["state"].as_str()? {
        "succeeded" => Some(Expected::Succeeded),
        "failed" => Some(Expected::Failed(
            status["container_statuses"]["main"]["container_status"]["exit_code"]
                .as_i64()
                .map(|c| c as i32),
        )),
        "cancelled" => Some(Expected::Cancelled),
        "error" if status["container_statuses"]["main"]["short_error"] == "timed out" => {
            Some(Expected::Failed(None))
        }
        "error" => serde_json::from_value::<ErrorKind>(
            status[crate::worker::EXTENSION_KEY]["error_kind"].clone(),
        )
        .ok()
        .map(Expected::Error),
        _ => None,
    }
}

impl JobResult {
    /// Whether the job ended as planned, and the driver heard the same
    /// (cancelled jobs are not reported).
    pub fn as_planned(&self) -> bool {
        let wire = |e: Expected| match e {
            Expected::Succeeded => "succeeded",
            Expected::Failed(None) => "error",
            Expected::Failed(_) => "failed",
            Expected::Cancelled => "cancelled",
            Expected::Error(_) => "error",
        };
        let reported_ok = match self.expected {
            Expected::Cancelled => self.reported_state.is_none(),
            e => self.reported_state.as_deref() == Some(wire(e)),
        };
        self.actual == Some(self.expected) && reported_ok
    }
}

impl DemoReport {
    /// Whether job `job` ended as planned, or (with injected store
    /// faults) as an error of its spec read.
    fn explained(&self, job: &JobResult) -> bool {
        job.as_planned() || job.changed_by_fault()
    }

    /// True when every job ended as planned (or, with injected store
    /// faults, as an error of its spec read) and no create call failed.
    pub fn passed(&self) -> bool {
        self.jobs.iter().all(|j| self.explained(j))
            && self.creates.failed == 0
            && self.creates.timed_out == 0
            && self.creates.ok == self.creates.sent
            && self.missing_instance_header == 0
            && self.driver_violations.is_empty()
            && self.deactivations == 1
            && self.journal_problems.is_empty()
            && self.status_files == self.status_files_expected
    }

    /// The report as the demo prints it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let ms = |us: u64| us as f64 / 1000.0;
        let _ = writeln!(
            out,
            "batch-worker demo: {} jobs in {} bunch{} ({}), blob latency {} ms{}, finished in {:.1} s\n",
            self.jobs.len(),
            self.bunches,
            if self.bunches == 1 { "" } else { "es" },
            self.spec_store,
            self.blob_latency_ms,
            if self.token_latency_ms > 0 {
                format!(", token wait {} ms (median)", self.token_latency_ms)
            } else {
                String::new()
            },
            self.elapsed_ms as f64 / 1000.0
        );
        out.push_str(&table::render_outcomes(&self.jobs));
        let _ = writeln!(out, "\nspecial jobs (first of each kind):");
        let mut shown = std::collections::HashSet::new();
        for job in self.jobs.iter().filter(|j| j.kind != Kind::Succeeds) {
            if !shown.insert(job.kind) {
                continue;
            }
            let got = job.got();
            let mark = match (job.as_planned(), self.explained(job)) {
                (true, _) => "ok ",
                (false, true) => "flt",
                (false, false) => "BAD",
            };
            let _ = writeln!(
                out,
                "  {mark} job {:>4}  {:<30} -> {}{}",
                job.job_id,
                job.kind.describe(),
                got,
                job.error
                    .as_ref()
                    .map(|e| format!("\n                 {}", crate::wire::truncate(e, 110)))
                    .unwrap_or_default()
            );
        }
        if let Some((plan, stats)) = &self.store_faults {
            let changed = self
                .jobs
                .iter()
                .filter(|j| !j.as_planned() && self.explained(j))
                .count();
            let _ = writeln!(
                out,
                "\nstore faults ({plan}): {} spec reads, {} errors, {} hangs, {} not found, {} short, {} flipped, {} slow (1 s or more);\n  {changed} jobs ended as errors of their spec read instead of as planned, a fault having hit their bunch:",
                stats.calls, stats.errors, stats.hangs, stats.not_found, stats.short_reads, stats.flips, stats.slow
            );
            for job in self
                .jobs
                .iter()
                .filter(|j| !j.as_planned() && j.changed_by_fault())
            {
                let _ = writeln!(
                    out,
                    "  flt job {:>4}: planned {}, got {}{}",
                    job.job_id,
                    job.expected,
                    job.got(),
                    job.error
                        .as_ref()
                        .map(|e| format!(" ({})", crate::wire::truncate(e, 90)))
                        .unwrap_or_default()
                );
            }
        }
        for job in self.jobs.iter().filter(|j| !self.explained(j)) {
            let _ = writeln!(
                out,
                "  BAD job {:>4}: planned {}, got {}, driver told {}",
                job.job_id,
                job.expected,
                job.got(),
                job.reported_state.as_deref().unwrap_or("nothing")
            );
        }
        let c = &self.creates;
        let _ = writeln!(
            out,
            "\ncreate calls: {} sent, {} answered 200, {} failed, {} timed out (2 s client timeout, {} concurrent)",
            c.sent, c.ok, c.failed, c.timed_out, CREATE_CONCURRENCY
        );
        let _ = writeln!(
            out,
            "create latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(c.p50_us),
            ms(c.p99_us),
            ms(c.max_us)
        );
        let _ = writeln!(
            out,
            "driver received: {} job_started, {} job_complete ({} duplicates), {} billing_update, {} deactivate; {}",
            self.started_received,
            self.complete_received,
            self.complete_duplicates,
            self.billing_updates,
            self.deactivations,
            if self.driver_violations.is_empty() {
                "every call as Hail's driver expects".to_owned()
            } else {
                format!(
                    "{} calls Hail's driver would refuse: {}",
                    self.driver_violations.len(),
                    self.driver_violations.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
                )
            }
        );
        let _ = writeln!(
            out,
            "logs store: {} status.json, {} main logs{}",
            self.status_files,
            self.log_files,
            if self.missing_instance_header > 0 {
                format!(
                    "; {} driver calls without the instance headers",
                    self.missing_instance_header
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "journal: {} records ({:?}), replay --check: {}",
            self.journal_records,
            self.durability,
            if self.journal_problems.is_empty() {
                "no problems".to_owned()
            } else {
                self.journal_problems.join("; ")
            }
        );
        if let Some(dir) = &self.kept_dir {
            let _ = writeln!(out, "specs and logs kept in {}", dir.display());
        }
        let planned_ok = self.jobs.iter().filter(|j| self.explained(j)).count();
        let _ = writeln!(
            out,
            "\n{}: {planned_ok}/{} jobs ended as planned{}; {} create calls failed or timed out",
            if self.passed() { "PASS" } else { "FAIL" },
            self.jobs.len(),
            if self.store_faults.is_some() {
                " or as spec-read errors"
            } else {
                ""
            },
            c.failed + c.timed_out + (c.sent - c.ok - c.failed - c.timed_out)
        );
        out
    }
}
