//! Model-based test (proptest-state-machine): a reference model of what a
//! driver can observe of one worker — create, duplicate create, cancel,
//! status, the spec store's content, process exits, worker restarts, the
//! driver going down and coming back — run
//! step by step beside the real worker (HTTP router, job table, journal,
//! simulated processes, paused clock). After every step the worker's
//! status of every job, and the `job_complete` calls the driver got, must
//! be what the model says.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use batch_worker::api;
use batch_worker::replay::{replay_path, ReplayOptions};
use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use batch_worker::store::{FaultPlan, FaultStore};
use batch_worker::worker::{status_of, Worker};
use object_store::memory::InMemory;
use object_store::path::Path;
use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use serde_json::{json, Value};

use crate::sim::{self, SimDriver, SimParts, SimRunner};

const BATCH: i64 = 1;

/// What the spec store holds for a job when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// A valid spec whose process runs until an `Exit` step.
    Held,
    /// No bunch.
    Missing,
    /// Not a spec.
    Corrupt,
    /// A program that cannot start.
    LaunchFails,
    /// More cores than the worker has.
    TooBig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    Running,
    Succeeded,
    Failed,
    Error(&'static str),
    Cancelled,
}

impl Expected {
    fn wire(&self) -> &'static str {
        match self {
            Expected::Running => "running",
            Expected::Succeeded => "succeeded",
            Expected::Failed => "failed",
            Expected::Error(_) => "error",
            Expected::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Create {
        job_id: i64,
        spec: Spec,
    },
    Cancel {
        job_id: i64,
    },
    Exit {
        job_id: i64,
        code: i32,
    },
    Status {
        job_id: i64,
    },
    Restart,
    /// Every driver call fails from now on, or works again.
    Driver {
        down: bool,
    },
}

/// The reference state.
#[derive(Debug, Clone, Default)]
struct Model {
    jobs: BTreeMap<i64, Expected>,
    driver_down: bool,
    /// False after a restart while the driver was down, until it is back:
    /// creates get 503.
    inactive: bool,
}

/// The reference: each job's expected state.
struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Self::State> {
        Just(Model::default()).boxed()
    }

    fn transitions(state: &Self::State) -> BoxedStrategy<Step> {
        let spec = prop_oneof![
            4 => Just(Spec::Held),
            1 => Just(Spec::Missing),
            1 => Just(Spec::Corrupt),
            1 => Just(Spec::LaunchFails),
            1 => Just(Spec::TooBig),
        ];
        let running: Vec<i64> = state
            .jobs
            .iter()
            .filter(|(_, e)| **e == Expected::Running)
            .map(|(j, _)| *j)
            .collect();
        let job = 1..=5i64;
        let base = prop_oneof![
            4 => (job.clone(), spec).prop_map(|(job_id, spec)| Step::Create { job_id, spec }),
            2 => job.clone().prop_map(|job_id| Step::Cancel { job_id }),
            1 => job.prop_map(|job_id| Step::Status { job_id }),
            1 => Just(Step::Restart),
            1 => any::<bool>().prop_map(|down| Step::Driver { down }),
        ];
        if running.is_empty() {
            base.boxed()
        } else {
            prop_oneof![
                2 => base,
                1 => (proptest::sample::select(running), prop_oneof![Just(0), 1..4i32])
                    .prop_map(|(job_id, code)| Step::Exit { job_id, code }),
            ]
            .boxed()
        }
    }

    fn preconditions(state: &Self::State, step: &Step) -> bool {
        match step {
            Step::Exit { job_id, .. } => state.jobs.get(job_id) == Some(&Expected::Running),

            _ => true,
        }
    }

    fn apply(mut model: Self::State, step: &Step) -> Self::State {
        let state = &mut model.jobs;
        match step {
            Step::Driver { down } => {
                model.driver_down = *down;
                model.inactive &= *down;
            }
            Step::Create { .. } if model.inactive => {}
            Step::Create { job_id, spec } => {
                state.entry(*job_id).or_insert(match spec {
                    Spec::Held => Expected::Running,
                    Spec::Missing => Expected::Error("spec_missing"),
                    Spec::Corrupt => Expected::Error("spec_corrupt"),
                    Spec::LaunchFails => Expected::Error("launch_failed"),
                    Spec::TooBig => Expected::Error("insufficient_resources"),
                });
            }
            Step::Cancel { job_id } => {
                if let Some(e @ Expected::Running) = state.get_mut(job_id) {
                    *e = Expected::Cancelled;
                }
            }
            Step::Exit { job_id, code } => {
                state.insert(
                    *job_id,
                    if *code == 0 {
                        Expected::Succeeded
                    } else {
                        Expected::Failed
                    },
                );
            }
            Step::Status { .. } => {}
            Step::Restart => {
                model.inactive = model.driver_down;
                for e in state.values_mut() {
                    if *e == Expected::Running {
                        *e = Expected::Error("worker_restarted");
                    }
                }
            }
        }
        model
    }
}

/// The real worker, its runtime and simulated parts.
struct System {
    runtime: Option<tokio::runtime::Runtime>,
    /// `None` only while a restart swaps workers.
    worker: Option<Worker>,
    router: axum::Router,
    runner: Arc<SimRunner>,
    parts: SimParts,
    writer: SpecStore,
    driver: Arc<SimDriver>,
    _data: tempfile::TempDir,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

impl System {
    /// The worker now.
    fn worker(&self) -> &Worker {
        self.worker.as_ref().expect("a worker between restarts")
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.runtime.as_ref().expect("running").block_on(f)
    }

    /// Lets every timer and task run for 2 minutes of virtual time (report
    /// retries back off to at most 30 s).
    fn settle(&self) {
        self.block_on(async { tokio::time::sleep(Duration::from_secs(120)).await });
    }

    fn call(&self, method: Method, uri: &str, body: Option<&Value>) -> (StatusCode, Value) {
        self.block_on(sim::call(&self.router, method, uri, body))
    }
}

fn spec_of(job_id: i64, spec: Spec) -> Vec<u8> {
    let (command, cores) = match spec {
        Spec::Held => (json!(["sim", "hold"]), 500),
        Spec::LaunchFails => (json!(["sim", "launch_fail"]), 500),
        Spec::TooBig => (json!(["sim", "hold"]), 1_000_000),
        Spec::Corrupt => return b"{\"job_id\": 1, \"process\": ".to_vec(),
        Spec::Missing => return Vec::new(),
    };
    json!({
        "job_id": job_id,
        "process": {"type": "docker", "image": "ubuntu:24.04", "command": command},
        "resources": {"cores_mcpu": cores, "memory_bytes": 1_000_000, "storage_gib": 2},
    })
    .to_string()
    .into_bytes()
}

/// What a job's endpoints answer: 200 for a job the model has, else 404.
fn answer_for(jobs: &BTreeMap<i64, Expected>, job_id: i64) -> StatusCode {
    if jobs.contains_key(&job_id) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

struct WorkerMatchesModel;

impl StateMachineTest for WorkerMatchesModel {
    type SystemUnderTest = System;
    type Reference = Reference;

    fn init_test(_: &Model) -> System {
        let data = tempfile::tempdir().expect("a temp dir");
        let specs = Arc::new(InMemory::new());
        let driver = Arc::new(SimDriver::new(1, 0.0, 0.0, 0));
        let slow_specs = FaultStore::new(
            specs.clone(),
            FaultPlan {
                latency_ms: 50,
                ..FaultPlan::default()
            },
        );
        let parts = SimParts::new(
            data.path(),
            Arc::new(slow_specs),
            Arc::new(InMemory::new()),
            Some(driver.clone()),
        );
        let writer =
            SpecStore::on_caller_runtime(specs, Path::from("specs"), SpecLoadConfig::default());
        let runtime = runtime();
        let runner = Arc::new(SimRunner::default());
        let worker = runtime.block_on(parts.start(runner.clone()));
        System {
            router: api::router(worker.clone(), &api::ApiConfig::new(1 << 20)),
            runtime: Some(runtime),
            worker: Some(worker),
            runner,
            parts,
            writer,
            driver,
            _data: data,
        }
    }

    fn apply(mut system: System, model: &Model, step: Step) -> System {
        // `model` is the reference state after this step.
        let after = &model.jobs;
        let uri =
            |job_id: i64, what: &str| format!("/api/v1alpha/batches/{BATCH}/jobs/{job_id}/{what}");
        match step {
            Step::Create { job_id, spec } => {
                let token = format!("t{job_id}");
                let fresh = system.worker().state_of(BATCH, job_id).is_err();
                if fresh && spec != Spec::Missing && !model.inactive {
                    system
                        .block_on(system.writer.write_bunch(
                            BATCH,
                            &token,
                            &[spec_of(job_id, spec)],
                        ))
                        .expect("in memory");
                }
                // A create for a present job repeats its attempt (always
                // refused; a new attempt of a finished job runs, as on Hail's
                // worker: `hail_conformance.rs`).
                let attempt = match system.worker().status(BATCH, job_id) {
                    Ok(present) => present.attempt_id,
                    Err(_) => format!("a{job_id}x{}", system.worker().snapshot().len()),
                };
                let body =
                    sim::create_body(BATCH, job_id, &token, job_id, &attempt, "MODELSECRET0");
                let (status, answer, took) = system.block_on(async {
                    let began = tokio::time::Instant::now();
                    let (status, answer) =
                        sim::call(&system.router, Method::POST, api::CREATE_PATH, Some(&body))
                            .await;
                    (status, answer, began.elapsed())
                });
                // The spec store takes 50 ms a read: a create must not wait for it.
                assert!(
                    took < Duration::from_millis(10),
                    "create took {took:?} of virtual time"
                );
                if model.inactive {
                    assert_eq!(
                        status,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "create before activation: {answer}"
                    );
                } else if fresh {
                    assert_eq!(status, StatusCode::OK, "create of a new job: {answer}");
                } else {
                    assert!(
                        status.is_client_error(),
                        "create of a present job answered {status}: {answer}"
                    );
                }
            }
            Step::Cancel { job_id } => {
                let (status, answer) = system.call(Method::DELETE, &uri(job_id, "delete"), None);
                let expected = answer_for(after, job_id);
                assert_eq!(status, expected, "cancel: {answer}");
            }
            Step::Exit { job_id, code } => {
                assert!(
                    system.runner.release(BATCH, job_id, code),
                    "job {job_id}'s process is not running"
                );
            }
            Step::Status { job_id } => {
                let (status, _) = system.call(Method::GET, &uri(job_id, "status"), None);
                let expected = answer_for(after, job_id);
                assert_eq!(status, expected);
            }
            Step::Driver { down } => {
                system
                    .driver
                    .down
                    .store(down, std::sync::atomic::Ordering::SeqCst);
            }
            Step::Restart => {
                // What every attempt's status says before the crash.
                let before = sim::statuses(system.worker());
                // A crash: every task of the old worker is dropped, and
                // the worker with them (its data directory lock too).
                drop(system.runtime.take());
                system.router = axum::Router::new();
                drop(system.worker.take());
                let runtime = runtime();
                system.runner = Arc::new(SimRunner::default());
                let worker = {
                    let _inside = runtime.enter();
                    system.parts.start_unactivated(system.runner.clone())
                };
                // Activation is retried until the driver answers.
                let activating = worker.clone();
                runtime.spawn(async move { activating.activate("127.0.0.1").await });
                system.router = api::router(worker.clone(), &api::ApiConfig::new(1 << 20));
                // One fold: the status after recovery is the status before,
                // field by field; an attempt that was live differs only in
                // what ending `worker_restarted` changes.
                let after = sim::statuses(&worker);
                assert_eq!(
                    before.keys().collect::<Vec<_>>(),
                    after.keys().collect::<Vec<_>>()
                );
                for (job, was) in &before {
                    if let Err(e) = sim::same_after_restart(*job, was, &after[job]) {
                        panic!("{e}");
                    }
                }
                system.worker = Some(worker);
                system.runtime = Some(runtime);
            }
        }
        system.settle();
        system
    }

    fn check_invariants(system: &System, model: &Model) {
        // A copy: the worker's tasks (a billing_update) take the driver's
        // log while `system.call` runs them.
        let completes = system.driver.log.lock().unwrap().completes.clone();
        for (job_id, expected) in &model.jobs {
            let (status, body) = system.call(
                Method::GET,
                &format!("/api/v1alpha/batches/{BATCH}/jobs/{job_id}/status"),
                None,
            );
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body["state"], expected.wire(), "job {job_id}: {body}");
            if let Expected::Error(kind) = expected {
                assert_eq!(
                    body["batch_worker"]["error_kind"], *kind,
                    "job {job_id}: {body}"
                );
            }
            let attempt = body["attempt_id"].as_str().unwrap_or_default().to_owned();
            let reports = completes
                .get(&(BATCH, *job_id, attempt))
                .map_or(&[][..], Vec::as_slice);
            for report in reports {
                assert_eq!(
                    report.status.state,
                    expected.wire(),
                    "job {job_id}'s job_complete"
                );
            }
            let completes = reports.len();
            match expected {
                Expected::Running | Expected::Cancelled => {
                    assert_eq!(
                        completes, 0,
                        "job {job_id} ({expected:?}) reported complete"
                    )
                }
                // Reports are retried until the driver is back.
                _ if model.driver_down => {}
                _ => assert!(
                    completes >= 1,
                    "job {job_id} ({expected:?}): no job_complete"
                ),
            }
        }
        assert_eq!(system.worker().snapshot().len(), model.jobs.len());
        // The replay tool's view of the journal gives the live status of
        // every attempt, field by field.
        system.block_on(system.worker().sync_journal());
        let report = replay_path(&system.parts.data_dir, ReplayOptions::default())
            .expect("the journal replays");
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let live = sim::statuses(system.worker());
        let replayed: BTreeMap<(i64, i64), Value> = report
            .timelines
            .iter()
            .filter(|t| live.contains_key(&(t.key.batch_id, t.key.job_id)))
            .map(|t| {
                let status = status_of(&t.view, system.worker().identity());
                (
                    (t.key.batch_id, t.key.job_id),
                    serde_json::to_value(status).unwrap(),
                )
            })
            .collect();
        assert_eq!(replayed, live, "replay's status JSON vs the live worker's");
    }
}

prop_state_machine! {
    #![proptest_config(Config {
        // PROPTEST_CASES=N runs more.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("proptest-regressions/model_based.txt"),
        )),
        ..Config::default()
    })]
    #[test]
    fn the_worker_behaves_as_the_reference_model(sequential 1..30 => WorkerMatchesModel);
}
