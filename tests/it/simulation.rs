//! Deterministic simulation: the real worker, journal (inline writer),
//! state machines and HTTP router run thousands of jobs under tokio's
//! paused clock, with a [`FaultStore`] under the spec and logs stores,
//! simulated processes, a driver that fails, delays and loses report
//! answers, random cancels, duplicate creates, and worker crashes (the
//! runtime is dropped mid-flight, and the next worker recovers from the
//! journal). Afterwards each of DESIGN.md's eight numbered invariants is
//! checked (see TESTING.md for exactly how).
//!
//! Everything random derives from the seed; a failure names it.
//! - `SIM_SEED=N cargo test --test it simulation` runs seed N alone;
//! - `SIM_SEEDS=K` runs seeds 1..=K (CI runs [`CI_SEEDS`]);
//! - `SIM_JOBS=J` changes the jobs per seed (default [`DEFAULT_JOBS`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use batch_worker::api;
use batch_worker::bunch::{self, BunchKeys};
use batch_worker::replay::{replay_path, ReplayOptions};
use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use batch_worker::store::{FaultPlan, FaultStore};
use batch_worker::worker::{status_of, Worker, CREATE_JOURNAL_WAIT};
use batch_worker_model::{ErrorKind, Event, JobAttempt, JobState, Outcome};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::sim::{self, SimDriver, SimParts, SimRunner};

/// Seeds CI runs.
pub const CI_SEEDS: u64 = 4;
/// Jobs per seed.
pub const DEFAULT_JOBS: usize = 1500;
/// Virtual time over which jobs arrive, in ms.
const ARRIVAL_SPAN_MS: u64 = 300_000;
/// A create must be answered within this much virtual time: it does no
/// store IO, so under a paused clock it takes none.
const CREATE_BOUND_MS: u128 = 50;
/// After the last arrival, every job must end within this virtual time.
const SETTLE_BOUND: Duration = Duration::from_secs(15 * 60);

/// What the plan says a job's spec is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Planned {
    /// A spec that runs: exit code (or signal), run time.
    Runs { exit: i32, signal: bool, ms: u64 },
    /// The process runs past its 1 s timeout.
    TimesOut,
    /// The process cannot be started.
    LaunchFails,
    /// More cores than the worker has.
    TooBig,
    /// The bunch was never written.
    Missing,
    /// The spec is not a valid spec for this job.
    Corrupt,
}

#[derive(Debug, Clone)]
struct Job {
    batch_id: i64,
    job_id: i64,
    token: String,
    start_job_id: i64,
    planned: Planned,
    /// The two reads of its spec: `(key, byte range)` of its index entry
    /// and of its spec; a fault injected into either may change its end.
    reads: [(String, Range<u64>); 2],
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Create(usize),
    /// The same job created again as another attempt.
    Duplicate(usize),
    Cancel(usize),
    Status(usize),
}

/// Everything a seed decides, before anything runs.
struct Plan {
    jobs: Vec<Job>,
    bunches: Vec<(i64, String, Vec<Vec<u8>>)>,
    /// `(virtual ms, action)`, sorted.
    actions: Vec<(u64, Action)>,
    /// Virtual ms of worker crashes, sorted.
    crashes: Vec<u64>,
}

fn spec_bytes(rng: &mut StdRng, job_id: i64, planned: Planned) -> Vec<u8> {
    let cores = 250 * rng.random_range(1..=8u64);
    let spec = |command: serde_json::Value, cores: u64, timeout: Option<u64>| {
        let mut spec = json!({
            "job_id": job_id,
            "process": {"type": "docker", "image": "ubuntu:24.04", "command": command},
            "resources": {"cores_mcpu": cores, "memory_bytes": 100_000_000u64, "storage_gib": 0},
        });
        if let Some(t) = timeout {
            spec["timeout"] = json!(t);
        }
        spec.to_string().into_bytes()
    };
    match planned {
        Planned::Runs { exit, signal, ms } => {
            let outcome = if signal {
                format!("signal={exit}")
            } else {
                format!("exit={exit}")
            };
            spec(json!(["sim", outcome, format!("ms={ms}")]), cores, None)
        }
        Planned::TimesOut => spec(json!(["sim", "exit=0", "ms=5000"]), cores, Some(1)),
        Planned::LaunchFails => spec(json!(["sim", "launch_fail"]), cores, None),
        Planned::TooBig => spec(json!(["sim", "exit=0", "ms=10"]), 1_000_000, None),
        Planned::Missing => Vec::new(),
        Planned::Corrupt => match rng.random_range(0..4) {
            0 => b"{\"job_id\": ".to_vec(),
            1 => json!({"job_id": job_id, "process": {"type": "docker", "image": "x", "command": "sim"}})
                .to_string()
                .into_bytes(),
            2 => vec![0xff, 0xfe, b'{', 0x80],
            _ => json!({"job_id": job_id + 100_000, "process": {"type": "docker", "image": "x", "command": ["sim"]}})
                .to_string()
                .into_bytes(),
        },
    }
}

fn plan(seed: u64, job_count: usize) -> Plan {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut jobs = Vec::new();
    let mut bunches = Vec::new();
    let mut batch_id = 0;
    while jobs.len() < job_count {
        batch_id += 1;
        let mut next_job = 1;
        for _ in 0..rng.random_range(1..8) {
            let size = rng.random_range(1..=20).min(job_count - jobs.len());
            if size == 0 {
                break;
            }
            let token: String = (0..12)
                .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
                .collect();
            let missing = rng.random_bool(0.04);
            let mut specs = Vec::new();
            for job_id in next_job..next_job + size as i64 {
                let roll: f64 = rng.random();
                let planned = if missing {
                    Planned::Missing
                } else if roll < 0.04 {
                    Planned::Corrupt
                } else if roll < 0.06 {
                    Planned::LaunchFails
                } else if roll < 0.08 {
                    Planned::TimesOut
                } else if roll < 0.09 {
                    Planned::TooBig
                } else {
                    let signal = roll < 0.11;
                    let exit = if signal {
                        9
                    } else if rng.random_bool(0.85) {
                        0
                    } else {
                        rng.random_range(1..4)
                    };
                    Planned::Runs {
                        exit,
                        signal,
                        ms: rng.random_range(50..4000),
                    }
                };
                specs.push(spec_bytes(&mut rng, job_id, planned));
                jobs.push(Job {
                    batch_id,
                    job_id,
                    token: token.clone(),
                    start_job_id: next_job,
                    planned,
                    reads: Default::default(),
                });
            }
            let (_, index) = bunch::encode(&specs);
            let keys = BunchKeys::new(&Path::from("specs"), batch_id, &token);
            let first = jobs.len() - size;
            for job in &mut jobs[first..] {
                let entry = bunch::index_range(job.job_id, job.start_job_id).expect("in the bunch");
                let (start, end) =
                    bunch::decode_entry(&index[entry.start as usize..entry.end as usize])
                        .expect("16 bytes");
                job.reads = [
                    (keys.index.to_string(), entry),
                    (keys.specs.to_string(), start..end),
                ];
            }
            if !missing {
                bunches.push((batch_id, token, specs));
            }
            next_job += size as i64;
            if jobs.len() == job_count {
                break;
            }
        }
    }
    let mut actions = Vec::new();
    for (i, _) in jobs.iter().enumerate() {
        let at = i as u64 * ARRIVAL_SPAN_MS / job_count as u64 + rng.random_range(0..100);
        actions.push((at, Action::Create(i)));
        if rng.random_bool(0.04) {
            actions.push((at + rng.random_range(0..6000), Action::Cancel(i)));
        }
        if rng.random_bool(0.02) {
            actions.push((at + rng.random_range(0..3000), Action::Duplicate(i)));
        }
        if rng.random_bool(0.05) {
            actions.push((at + rng.random_range(0..8000), Action::Status(i)));
        }
    }
    actions.sort_by_key(|(at, _)| *at);
    let mut crashes: Vec<u64> = (0..2)
        .map(|_| rng.random_range(ARRIVAL_SPAN_MS / 5..ARRIVAL_SPAN_MS * 4 / 5))
        .collect();
    crashes.sort();
    Plan {
        jobs,
        bunches,
        actions,
        crashes,
    }
}

/// What the simulated driver saw and expects.
#[derive(Default)]
struct World {
    /// Jobs whose create was answered 200, with the attempt id.
    accepted: HashMap<usize, String>,
    /// The worker incarnation (0, 1, ...) each accepted job came to.
    accepted_in: HashMap<usize, usize>,
    /// Jobs whose create was refused with 503 (a full disk): not accepted;
    /// the worker may keep a cancelled attempt of them.
    refused: HashSet<usize>,
    /// Jobs a cancel reached while their attempt was not finished.
    cancelled_live: HashMap<usize, ()>,
    violations: Vec<String>,
    creates: usize,
    max_create_ms: u128,
    restarts: usize,
    /// A digest of every attempt's journaled events: equal for runs that
    /// went the same way.
    trace_digest: u64,
}

impl World {
    fn violate(&mut self, what: String) {
        if self.violations.len() < 50 {
            self.violations.push(what);
        }
    }
}

/// A duplicate create repeats the attempt (the driver's retry of a create
/// whose answer it lost): refused while the job is on the worker. (A new
/// attempt of a finished, reported job runs, as on Hail's worker:
/// `hail_conformance.rs`.)
fn attempt_id(job: &Job, _duplicate: bool) -> String {
    format!("a{}", job.job_id)
}

async fn act(
    world: &mut World,
    plan: &Plan,
    secret: &str,
    worker: &Worker,
    router: &axum::Router,
    action: Action,
) {
    let uri = |job: &Job, what: &str| {
        format!(
            "/api/v1alpha/batches/{}/jobs/{}/{what}",
            job.batch_id, job.job_id
        )
    };
    match action {
        Action::Create(i) | Action::Duplicate(i) => {
            let job = &plan.jobs[i];
            let duplicate = matches!(action, Action::Duplicate(_));
            let attempt = attempt_id(job, duplicate);
            let body = sim::create_body(
                job.batch_id,
                job.job_id,
                &job.token,
                job.start_job_id,
                &attempt,
                secret,
            );
            let began = Instant::now();
            let (status, answer) =
                sim::call(router, Method::POST, api::CREATE_PATH, Some(&body)).await;
            let took = began.elapsed().as_millis();
            world.creates += 1;
            world.max_create_ms = world.max_create_ms.max(took);
            let bound = match status {
                StatusCode::SERVICE_UNAVAILABLE => {
                    CREATE_JOURNAL_WAIT.as_millis() + CREATE_BOUND_MS
                }
                _ => CREATE_BOUND_MS,
            };
            if took > bound {
                world.violate(format!(
                    "create of {}:{} took {took} ms of virtual time",
                    job.batch_id, job.job_id
                ));
            }
            match (status, duplicate) {
                (StatusCode::OK, false) => {
                    world.accepted.insert(i, attempt);
                    world.accepted_in.insert(i, world.restarts);
                }
                (StatusCode::SERVICE_UNAVAILABLE, _)
                    if answer.to_string().contains("journal")
                        || answer.to_string().contains("disk") =>
                {
                    if !world.accepted.contains_key(&i) {
                        world.refused.insert(i);
                    }
                }
                (s, true) if s.is_client_error() && world.refused.contains(&i) => {}
                (s, true) if s.is_client_error() && world.accepted.contains_key(&i) => {}
                (s, true) if s == StatusCode::OK && !world.accepted.contains_key(&i) => {
                    world.accepted.insert(i, attempt);
                    world.accepted_in.insert(i, world.restarts);
                }
                (s, _) => world.violate(format!(
                    "create of {}:{} (duplicate: {duplicate}) answered {s}: {answer}",
                    job.batch_id, job.job_id
                )),
            }
        }
        Action::Cancel(i) => {
            let job = &plan.jobs[i];
            let live = worker
                .state_of(job.batch_id, job.job_id)
                .is_ok_and(|s| !s.is_terminal());
            let (status, answer) =
                sim::call(router, Method::DELETE, &uri(job, "delete"), None).await;
            match status {
                StatusCode::OK if live => {
                    world.cancelled_live.insert(i, ());
                }
                StatusCode::OK => {}
                StatusCode::NOT_FOUND if !world.accepted.contains_key(&i) => {}
                StatusCode::OK if world.refused.contains(&i) => {}
                s => world.violate(format!(
                    "cancel of {}:{} answered {s}: {answer}",
                    job.batch_id, job.job_id
                )),
            }
        }
        Action::Status(i) => {
            let job = &plan.jobs[i];
            let (status, answer) = sim::call(router, Method::GET, &uri(job, "status"), None).await;
            let expected = if world.accepted.contains_key(&i) {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            // A refused create may leave a cancelled attempt behind.
            let refused = world.refused.contains(&i) && status == StatusCode::OK;
            if status != expected && !refused {
                world.violate(format!(
                    "status of {}:{} answered {status}: {answer}",
                    job.batch_id, job.job_id
                ));
            }
        }
    }
}

/// One seed: runs the plan through crashes to the end, returns a summary
/// line or the violations.
fn simulate(seed: u64, job_count: usize) -> Result<String, Vec<String>> {
    let wall = std::time::Instant::now();
    let plan = plan(seed, job_count);
    // Valid base64 (a secret's data is base64): 32 alphanumerics.
    let secret = format!("SIMSECRET{seed:020}ZZZ");
    let data = tempfile::tempdir().expect("a temp dir");
    let faults = FaultPlan {
        seed,
        latency_ms: 150,
        latency_sigma: 1.0,
        error_rate: 0.05,
        hang_rate: 0.003,
        not_found_rate: 0.005,
        short_read_rate: 0.005,
        flip_rate: 0.005,
    };
    let specs_inner = Arc::new(InMemory::new());
    let spec_faults = Arc::new(FaultStore::new(specs_inner.clone(), faults.clone()));
    let logs_inner = Arc::new(InMemory::new());
    let logs_faults = FaultPlan {
        seed: seed ^ 0xabcd,
        hang_rate: 0.0,
        ..faults.clone()
    };
    let logs = Arc::new(FaultStore::new(logs_inner.clone(), logs_faults));
    let driver = Arc::new(SimDriver::new(seed, 0.1, 0.05, 400));
    let mut parts = SimParts::new(data.path(), spec_faults.clone(), logs, Some(driver.clone()));
    // A full disk now and then: the journal's writes fail (the first torn)
    // for a few tries, and the worker must neither lose nor act on what
    // it could not write.
    let journal_faults = Arc::new(sim::JournalFaults::default());
    parts.journal_faults = Some(journal_faults.writer_faults(seed ^ 0x6a6e6c, 0.0008));
    let panics_before = sim::panics_on_this_thread();
    let mut world = World::default();
    let mut next_action = 0;
    let mut clock_ms = 0u64;
    let mut ends = plan.crashes.iter().map(|c| Some(*c)).collect::<Vec<_>>();
    ends.push(None);
    let mut final_states = BTreeMap::new();
    let mut final_statuses = BTreeMap::new();
    // Every attempt's status JSON when the worker last crashed.
    let mut before_crash: Option<BTreeMap<(i64, i64), Value>> = None;
    for (incarnation, end) in ends.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            if incarnation == 0 {
                // Written by the driver, past the faults.
                let writer = SpecStore::on_caller_runtime(
                    specs_inner.clone(),
                    Path::from("specs"),
                    SpecLoadConfig::default(),
                );
                for (batch_id, token, specs) in &plan.bunches {
                    writer
                        .write_bunch(*batch_id, token, specs)
                        .await
                        .expect("in memory");
                }
            }
            let worker = parts.start(Arc::new(SimRunner::default())).await;
            // One fold: recovery gives every attempt the status it had.
            if let Some(before) = before_crash.take() {
                let after = sim::statuses(&worker);
                for (job, was) in &before {
                    match after.get(job) {
                        Some(now) => {
                            if let Err(e) = sim::same_after_restart(*job, was, now) {
                                world.violate(e);
                            }
                        }
                        None => world.violate(format!("job {job:?}: lost by a crash")),
                    }
                }
            }
            let router = api::router(worker.clone(), &api::ApiConfig::new(1 << 20));
            let began = Instant::now();
            let offset = clock_ms;
            while let Some((at, action)) = plan.actions.get(next_action).copied() {
                if end.is_some_and(|end| at >= end) {
                    break;
                }
                tokio::time::sleep_until(began + Duration::from_millis(at - offset)).await;
                act(&mut world, &plan, &secret, &worker, &router, action).await;
                next_action += 1;
            }
            if let Some(end) = end {
                // The worker dies here: the runtime is dropped with every
                // task in flight.
                tokio::time::sleep_until(began + Duration::from_millis(end - offset)).await;
                // A status may show events not yet journaled while the
                // disk is full; a crash then loses them (they were never
                // acted on), so statuses are compared only when nothing
                // was waiting to be written.
                before_crash = (!worker.journal_failing()).then(|| sim::statuses(&worker));
                clock_ms = end;
                world.restarts += 1;
                return;
            }
            let settled = tokio::time::timeout(
                SETTLE_BOUND,
                worker.wait_until(|w| w.snapshot().iter().all(|(_, s)| s.is_terminal())),
            )
            .await;
            if settled.is_err() {
                for (key, state) in worker.snapshot().iter().filter(|(_, s)| !s.is_terminal()) {
                    world.violate(format!(
                        "{key} still {} {} after the last arrival",
                        state.name(),
                        SETTLE_BOUND.as_secs()
                    ));
                }
            }
            // Reports are retried until the driver takes them.
            let mut pending = worker.changes();
            let reported = tokio::time::timeout(SETTLE_BOUND, async {
                while worker.reports_pending() > 0 {
                    tokio::select! {
                        _ = pending.changed() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                worker.sync_journal().await;
            })
            .await;
            if reported.is_err() {
                world.violate(format!(
                    "{} reports still pending after {} s",
                    worker.reports_pending(),
                    SETTLE_BOUND.as_secs()
                ));
            }
            let stores = Stores {
                faulted: spec_faults
                    .injected()
                    .into_iter()
                    .filter_map(|f| Some((f.path, f.ranges.first()?.clone(), f.kind == "slow")))
                    .collect(),
                logs_keys: check_logs_store(&mut world, logs_inner.as_ref(), &secret).await,
            };
            check_live(
                &mut world,
                &plan,
                &worker,
                &driver,
                &secret,
                &stores,
                &mut final_states,
            );
            final_statuses = sim::statuses(&worker);
        });
    }
    check_journal(
        &mut world,
        data.path(),
        &final_states,
        &final_statuses,
        &secret,
    );
    let panics = sim::panics_on_this_thread() - panics_before;
    if panics > 0 {
        world.violate(format!("{panics} panics during the simulation"));
    }
    let stats = spec_faults.stats();
    let log = driver.log.lock().unwrap();
    let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
    for state in final_states.values() {
        let name = match state {
            JobState::Errored { kind, .. } => format!("error:{}", kind.as_str()),
            other => other.wire_state().as_str().to_owned(),
        };
        *by_state.entry(name).or_default() += 1;
    }
    // Not vacuous: faults, crashes and driver failures must have happened.
    let journal_episodes = journal_faults
        .episodes
        .load(std::sync::atomic::Ordering::Relaxed);
    if stats.errors == 0
        || stats.hangs + stats.short_reads + stats.flips == 0
        || journal_episodes == 0
        || log.failed == 0
        || world.restarts == 0
    {
        world.violate(format!(
            "too few faults to mean anything: {stats:?}, driver failed {}, restarts {}, full-disk episodes {journal_episodes}",
            log.failed, world.restarts
        ));
    }
    if !world.violations.is_empty() {
        return Err(std::mem::take(&mut world.violations));
    }
    Ok(format!(
        "seed {seed}: trace {:016x}; {} jobs, {} creates (max {} ms virtual), {} accepted, {} restarts; outcomes {by_state:?}; \
         store faults {stats:?}; journal: {journal_episodes} full-disk episodes, {} failed writes, {} creates refused; driver calls failed {} and answers lost {}; {:.1} s",
        world.trace_digest,
        plan.jobs.len(),
        world.creates,
        world.max_create_ms,
        world.accepted.len(),
        world.restarts,
        journal_faults.injected.load(std::sync::atomic::Ordering::Relaxed),
        world.refused.len(),
        log.failed,
        log.lost,
        wall.elapsed().as_secs_f64(),
    ))
}

/// Invariants 3, 4, 5 and 7 on the live worker at the end.
/// What the stores saw, for the checks of the live worker.
struct Stores {
    /// `(key, byte range, only slow)` of every fault injected into a spec read.
    faulted: HashSet<(String, Range<u64>, bool)>,
    /// Every key in the logs store.
    logs_keys: HashSet<String>,
}

fn check_live(
    world: &mut World,
    plan: &Plan,
    worker: &Worker,
    driver: &SimDriver,
    secret: &str,
    stores: &Stores,
    final_states: &mut BTreeMap<(i64, i64, String), JobState>,
) {
    let log = driver.log.lock().unwrap();
    for (key, state) in worker.snapshot() {
        final_states.insert((key.batch_id, key.job_id, key.attempt_id.clone()), state);
    }
    let accepted: Vec<(usize, String)> = world
        .accepted
        .iter()
        .map(|(i, a)| (*i, a.clone()))
        .collect();
    for (i, attempt) in accepted {
        let job = &plan.jobs[i];
        let name = format!(
            "{}:{} ({attempt}, planned {:?})",
            job.batch_id, job.job_id, job.planned
        );
        let Ok(state) = worker.state_of(job.batch_id, job.job_id) else {
            world.violate(format!("{name}: accepted but not on the worker"));
            continue;
        };
        // 5: the recorded history is legal and folds to the live state.
        let history = worker.events(job.batch_id, job.job_id).unwrap_or_default();
        let events: Vec<_> = history.iter().map(|r| r.event.clone()).collect();
        match JobAttempt::replay(&events) {
            Ok(folded) if folded.state() == state => {}
            Ok(folded) => world.violate(format!(
                "{name}: history folds to {:?}, live is {state:?}",
                folded.state()
            )),
            Err((at, illegal)) => world.violate(format!("{name}: event {at} illegal: {illegal}")),
        }
        let restarted = matches!(
            state,
            JobState::Errored {
                kind: ErrorKind::WorkerRestarted,
                ..
            }
        );
        let cancelled = matches!(
            state,
            JobState::Done {
                outcome: Outcome::Cancelled
            }
        );
        if world.cancelled_live.contains_key(&i) && !cancelled && !restarted {
            world.violate(format!("{name}: cancelled while live, ended {state:?}"));
        }
        if cancelled && !world.cancelled_live.contains_key(&i) {
            world.violate(format!("{name}: ended cancelled without a cancel"));
        }
        // 4: the outcome is the plan's, or an injected fault explains it:
        // a fault into one of the job's two reads may end it with any spec
        // error; otherwise a corrupt or missing spec ends with exactly its
        // kind and a good one with none. Only an attempt accepted before a
        // crash may end `worker_restarted`.
        let touched = |slow: bool| {
            job.reads
                .iter()
                .any(|(key, range)| stores.faulted.contains(&(key.clone(), range.clone(), slow)))
        };
        let spec_error = matches!(&state, JobState::Errored { kind, .. } if kind.is_spec_error());
        // A slow read (no other fault) can only run past the deadline.
        let timed_out = matches!(
            &state,
            JobState::Errored {
                kind: ErrorKind::SpecTimeout,
                ..
            }
        );
        let hit = (touched(false) && spec_error) || (touched(true) && timed_out);
        if restarted
            && world
                .accepted_in
                .get(&i)
                .is_none_or(|n| *n >= world.restarts)
        {
            world.violate(format!(
                "{name}: worker_restarted, but accepted after the last restart"
            ));
        }
        let fits = cancelled || restarted || hit || ends_as_planned(job.planned, &state);
        if !fits {
            world.violate(format!("{name}: ended {state:?}"));
        }
        // 4: exactly one job_complete per attempt (at least once on the
        // wire, all alike), none for a cancelled one.
        let slot = (job.batch_id, job.job_id, attempt.clone());
        let completes = log.completes.get(&slot).map_or(&[][..], Vec::as_slice);
        // A delivered job_started reached the driver; an uploaded status
        // is in the logs store.
        if events.contains(&Event::StartedDelivered) && !log.started.contains_key(&slot) {
            world.violate(format!(
                "{name}: started_delivered, but the driver has no job_started"
            ));
        }
        let status_key = format!("logs/{}/{}/{attempt}/status.json", job.batch_id, job.job_id);
        if events.contains(&Event::LogsUploaded) && !stores.logs_keys.contains(&status_key) {
            world.violate(format!(
                "{name}: logs_uploaded, but {status_key} is not in the logs store"
            ));
        }
        let status = worker.status(job.batch_id, job.job_id).ok();
        if cancelled {
            if !completes.is_empty() {
                world.violate(format!(
                    "{name}: cancelled, yet {} job_complete sent",
                    completes.len()
                ));
            }
        } else if completes.is_empty() {
            world.violate(format!(
                "{name}: ended {}, no job_complete reached the driver",
                state.name()
            ));
        } else if let Some(status) = &status {
            if let Some(other) = completes.iter().find(|c| c.status.state != status.state) {
                world.violate(format!(
                    "{name}: job_complete said {}, status says {}",
                    other.status.state, status.state
                ));
            }
        }
        // 7: no secret in status or events.
        let shown = format!(
            "{}{}",
            serde_json::to_string(&status).unwrap_or_default(),
            serde_json::to_string(&history).unwrap_or_default()
        );
        if shown.contains(secret) {
            world.violate(format!("{name}: the secret appears in status or events"));
        }
    }
    for slot in log.completes.keys() {
        if !final_states.contains_key(slot) {
            world.violate(format!(
                "job_complete for {slot:?}, which the worker never had"
            ));
        }
    }
}

/// Whether `state` is what `planned` ends in when nothing interferes.
fn ends_as_planned(planned: Planned, state: &JobState) -> bool {
    use batch_worker_model::ExitStatus;
    let errored =
        |expected: ErrorKind| matches!(state, JobState::Errored { kind, .. } if *kind == expected);
    let ended =
        |expected: Outcome| matches!(state, JobState::Done { outcome } if *outcome == expected);
    match planned {
        Planned::Missing => errored(ErrorKind::SpecMissing),
        Planned::Corrupt => errored(ErrorKind::SpecCorrupt),
        Planned::TooBig => errored(ErrorKind::InsufficientResources),
        Planned::LaunchFails => errored(ErrorKind::LaunchFailed),
        Planned::TimesOut => matches!(
            state,
            JobState::Done {
                outcome: Outcome::Failed {
                    exit: ExitStatus::TimedOut { .. }
                }
            }
        ),
        Planned::Runs {
            exit: 0,
            signal: false,
            ..
        } => ended(Outcome::Succeeded),
        Planned::Runs {
            exit, signal: true, ..
        } => ended(Outcome::Failed {
            exit: ExitStatus::Signal { signal: exit },
        }),
        Planned::Runs { exit, .. } => ended(Outcome::Failed {
            exit: ExitStatus::Code { code: exit },
        }),
    }
}

/// Invariant 7 on the logs store; returns the keys it holds.
async fn check_logs_store(world: &mut World, logs: &InMemory, secret: &str) -> HashSet<String> {
    use futures::TryStreamExt;
    let objects: Vec<_> = logs.list(None).try_collect().await.unwrap_or_default();
    let keys = objects.iter().map(|m| m.location.to_string()).collect();
    for meta in objects {
        let bytes = logs
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        if String::from_utf8_lossy(&bytes).contains(secret) {
            world.violate(format!(
                "the secret appears in logs object {}",
                meta.location
            ));
        }
    }
    keys
}

/// Invariants 5, 6, 7 and 8 on the journal: replay with checks finds no
/// problem and ends in the live states; no secret in its bytes.
fn check_journal(
    world: &mut World,
    data_dir: &std::path::Path,
    live: &BTreeMap<(i64, i64, String), JobState>,
    live_statuses: &BTreeMap<(i64, i64), Value>,
    secret: &str,
) {
    let report = match replay_path(data_dir, ReplayOptions::default()) {
        Ok(report) => report,
        Err(e) => return world.violate(format!("the journal cannot be replayed: {e}")),
    };
    for problem in report.problems.iter().take(10) {
        world.violate(format!("journal problem: {problem:?}"));
    }
    let mut replayed = 0;
    #[allow(deprecated)]
    let mut digest = std::hash::SipHasher::new();
    // SIM_TRACE=FILE writes every attempt's events, to compare two runs.
    let mut trace_out = std::env::var_os("SIM_TRACE");
    let mut trace_lines = Vec::new();
    for timeline in &report.timelines {
        timeline.key.hash(&mut digest);
        for step in &timeline.steps {
            step.event.name().hash(&mut digest);
        }
        format!("{:?}", timeline.final_state).hash(&mut digest);
        if let Some(out) = &mut trace_out {
            let names: Vec<_> = timeline.steps.iter().map(|s| s.event.name()).collect();
            trace_lines.push(format!("{} {names:?}\n", timeline.key));
            let _ = out;
        }
        let slot = (
            timeline.key.batch_id,
            timeline.key.job_id,
            timeline.key.attempt_id.clone(),
        );
        // The replay tool's view gives the live status JSON, field by field.
        let status = serde_json::to_value(status_of(
            &timeline.view,
            &batch_worker::worker::Identity::named("sim-worker"),
        ))
        .expect("status serialises");
        let job = (timeline.key.batch_id, timeline.key.job_id);
        if live.contains_key(&slot) && live_statuses.get(&job) != Some(&status) {
            world.violate(format!(
                "{}: replay's status {status} vs the live {:?}",
                timeline.key,
                live_statuses.get(&job)
            ));
        }
        match live.get(&slot) {
            Some(state) if *state == timeline.final_state => replayed += 1,
            Some(state) => world.violate(format!(
                "{}: journal replays to {:?}, live was {state:?}",
                timeline.key, timeline.final_state
            )),
            None => world.violate(format!(
                "{}: in the journal, not on the worker",
                timeline.key
            )),
        }
    }
    world.trace_digest = digest.finish();
    if let Some(out) = trace_out {
        let _ = std::fs::write(out, trace_lines.concat());
    }
    if replayed != live.len() {
        world.violate(format!(
            "the journal replays {replayed} attempts, the worker had {}",
            live.len()
        ));
    }
    let mut per_job: HashMap<(i64, i64), Vec<&str>> = HashMap::new();
    for timeline in &report.timelines {
        per_job
            .entry((timeline.key.batch_id, timeline.key.job_id))
            .or_default()
            .push(&timeline.key.attempt_id);
    }
    for (job, attempts) in per_job.iter().filter(|(_, a)| a.len() > 1) {
        world.violate(format!(
            "job {job:?} has attempts {attempts:?} on one worker"
        ));
    }
    for entry in walk(data_dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        if String::from_utf8_lossy(&bytes).contains(secret) {
            world.violate(format!("the secret appears in {}", entry.display()));
        }
    }
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// The number in environment variable `name`, if set.
///
/// # Panics
/// The variable is set but not a number: a typo must not quietly run the
/// default seeds.
fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a non-negative integer")),
    )
}

#[test]
fn the_simulated_worker_keeps_every_invariant_through_faults_and_crashes() {
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(seed) => vec![seed],
        None => (1..=env_u64("SIM_SEEDS").unwrap_or(CI_SEEDS)).collect(),
    };
    let jobs = env_u64("SIM_JOBS").map_or(DEFAULT_JOBS, |j| j as usize);
    for seed in seeds {
        let outcome = std::panic::catch_unwind(|| simulate(seed, jobs));
        match outcome {
            Ok(Ok(summary)) => eprintln!("{summary}"),
            Ok(Err(violations)) => panic!(
                "simulation seed {seed} broke invariants (reproduce: SIM_SEED={seed} SIM_JOBS={jobs} cargo test --test it simulation):\n  {}",
                violations.join("\n  ")
            ),
            Err(_) => panic!(
                "simulation seed {seed} panicked (reproduce: SIM_SEED={seed} SIM_JOBS={jobs} cargo test --test it simulation)"
            ),
        }
    }
}
