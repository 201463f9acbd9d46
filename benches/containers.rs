//! What a container costs a job: `cargo bench --bench containers` runs
//! `sh -c true` jobs through two workers on this machine, one with host
//! processes and one with `--executor runc` (images from the test registry
//! of `scripts/containers.sh`: run `eval "$(scripts/containers.sh)"` first;
//! without `BW_TEST_IMAGE` the bench says so and exits 0), and prints:
//!
//! - the first pull of the test image (cold cache): create → `image_pulled`;
//! - one job at a time (`CONTAINER_JOBS`, default 30): the create call,
//!   create → running
//!   (`process_started` recorded), running → exited, and create → final,
//!   p50 / p90 / max in ms;
//! - all of them at once: wall time and jobs/s.
//!
//! Every job's cores fit the machine's (250 mcpu each); the journal uses
//! `flush`. Figures in BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use batch_worker::container::{ContainerNetwork, JobNetworks, RuncConfig, RuncRunner};
use batch_worker::image::{ImageConfig, ImageStore, PullProcess, DEFAULT_PULL_MAX_MEMORY_BYTES};
use batch_worker::journal::Durability;
use batch_worker::logs_store::LogsStore;
use batch_worker::network::NetworkConfig;
use batch_worker::runner::{HostRunner, Runner};
use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use batch_worker::store::StoreOptions;
use batch_worker::wire::CreateJob;
use batch_worker::worker::{Executor, JournalOptions, Worker};
use batch_worker_model::{Event, JobState, RunPhase};
use object_store::memory::InMemory;
use object_store::path::Path;
use serde_json::json;

/// One worker under test and the directory it owns.
struct Bench {
    worker: Worker,
    /// Writes bunches into the worker's spec store.
    writer: SpecStore,
    _data: tempfile::TempDir,
}

async fn worker(runner: Arc<dyn Runner>, images: Option<Arc<ImageStore>>) -> Bench {
    let data = tempfile::tempdir().expect("a temp dir");
    let store = Arc::new(InMemory::new());
    let spec_store = || {
        SpecStore::new(
            store.clone(),
            Path::from("specs"),
            SpecLoadConfig::default(),
        )
        .expect("the spec-io runtime starts")
    };
    let specs = spec_store();
    let executor = match images {
        Some(images) => Executor::Runc { runner, images },
        None => Executor::Host(runner),
    };
    let worker = Worker::builder(data.path())
        .name("bench")
        .executor(executor)
        .specs(specs)
        .logs(LogsStore::new(Arc::new(InMemory::new()), Path::default()))
        .journal(JournalOptions {
            durability: Durability::Flush,
            ..JournalOptions::default()
        })
        .retention(Duration::from_secs(3600))
        .store_options(StoreOptions::default())
        .open()
        .expect("the worker opens");
    Bench {
        worker,
        writer: spec_store(),
        _data: data,
    }
}

/// Writes a bunch of `jobs` specs running `sh -c true` in `image`, as
/// batch `batch_id`.
async fn write_bunch(specs: &SpecStore, batch_id: i64, image: &str, jobs: i64) {
    let bodies: Vec<Vec<u8>> = (1..=jobs)
        .map(|job_id| {
            serde_json::to_vec(&json!({
                "job_id": job_id,
                "process": {"type": "docker", "image": image, "command": ["sh", "-c", "true"]},
                "resources": {"cores_mcpu": 250, "memory_bytes": 64 << 20},
            }))
            .unwrap()
        })
        .collect();
    specs
        .write_bunch(batch_id, "bench", &bodies)
        .await
        .expect("the bunch is written");
}

fn create(batch_id: i64, job_id: i64) -> CreateJob {
    let body = json!({
        "batch_id": batch_id, "job_id": job_id, "format_version": 7, "token": "bench",
        "start_job_id": 1, "user": "bench", "gsa_key": null,
        "job_spec": {"attempt_id": format!("a{job_id}"), "job_group_id": 0, "secrets": []},
        "queue_time": null
    });
    CreateJob::parse(&serde_json::to_vec(&body).unwrap()).expect("a valid body")
}

/// Timings of one job, in ms.
struct Timing {
    /// The create call itself (validation, the journal write).
    create: f64,
    to_running: f64,
    running: f64,
    to_final: f64,
}

async fn one_job(worker: &Worker, batch_id: i64, job_id: i64) -> Timing {
    let started = Instant::now();
    worker
        .create(create(batch_id, job_id))
        .await
        .expect("accepted");
    let create = started.elapsed();
    worker
        .wait_until(|w| {
            w.state_of(batch_id, job_id).is_ok_and(|s| {
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
    let to_running = started.elapsed();
    worker
        .wait_until(|w| w.state_of(batch_id, job_id).is_ok_and(|s| s.is_terminal()))
        .await;
    let to_final = started.elapsed();
    let state = worker.state_of(batch_id, job_id).unwrap();
    assert_eq!(state.name(), "done", "job {batch_id}:{job_id}: {state:?}");
    Timing {
        create: create.as_secs_f64() * 1000.0,
        to_running: to_running.as_secs_f64() * 1000.0,
        running: (to_final - to_running).as_secs_f64() * 1000.0,
        to_final: to_final.as_secs_f64() * 1000.0,
    }
}

fn percentiles(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    format!(
        "{:.1} / {:.1} / {:.1} / {:.1}",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    )
}

async fn measure(name: &str, bench: &Bench, image: &str, jobs: i64) {
    let worker = &bench.worker;
    // Sequential: batch 2.
    write_bunch(&bench.writer, 2, image, jobs).await;
    let mut timings = Vec::new();
    for job_id in 1..=jobs {
        timings.push(one_job(worker, 2, job_id).await);
    }
    println!(
        "| {name} | one at a time | {} | {} | {} | {} |",
        percentiles(timings.iter().map(|t| t.create).collect()),
        percentiles(timings.iter().map(|t| t.to_running).collect()),
        percentiles(timings.iter().map(|t| t.running).collect()),
        percentiles(timings.iter().map(|t| t.to_final).collect()),
    );
    // All at once: batch 3.
    write_bunch(&bench.writer, 3, image, jobs).await;
    let started = Instant::now();
    let all = (1..=jobs).map(|job_id| one_job(worker, 3, job_id));
    let timings = futures::future::join_all(all).await;
    let wall = started.elapsed().as_secs_f64();
    println!(
        "| {name} | {jobs} at once ({:.1} jobs/s) | {} | {} | {} | {} |",
        jobs as f64 / wall,
        percentiles(timings.iter().map(|t| t.create).collect()),
        percentiles(timings.iter().map(|t| t.to_running).collect()),
        percentiles(timings.iter().map(|t| t.running).collect()),
        percentiles(timings.iter().map(|t| t.to_final).collect()),
    );
}

fn main() {
    let Ok(image) = std::env::var("BW_TEST_IMAGE") else {
        println!(
            "containers bench skipped: BW_TEST_IMAGE is not set (eval \"$(scripts/containers.sh)\")"
        );
        return;
    };
    let jobs: i64 = std::env::var("CONTAINER_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("a temp dir");
        let runc = RuncRunner::new(RuncConfig {
            runc: "runc".into(),
            state_dir: dir.path().join("runc"),
            network: ContainerNetwork::None,
            job_networks: None,
            kill_grace: Duration::from_secs(5),
        })
        .expect("runc runs");
        // A network namespace per job, from a pool of 4 per kind, on
        // ranges and a prefix of the bench's own (root, ip, iptables).
        let job_networks = if nix::unistd::geteuid().is_root() && which::which("iptables").is_ok() {
            let config = NetworkConfig {
                public_range: ("10.240.0.0".parse().unwrap(), 16),
                private_range: ("10.241.0.0".parse().unwrap(), 16),
                prefix: "bwbench".into(),
                ..NetworkConfig::default()
            };
            Some(
                JobNetworks::open(config, dir.path().join("networks"), dir.path(), "127.0.0.1".into())
                    .await
                    .expect("the job networks open"),
            )
        } else {
            println!("no root with iptables: the namespace rows are skipped\n");
            None
        };
        let namespaced = job_networks.clone().map(|networks| {
            RuncRunner::new(RuncConfig {
                runc: "runc".into(),
                state_dir: dir.path().join("runc-ns"),
                network: ContainerNetwork::Namespace,
                job_networks: Some(networks),
                kill_grace: Duration::from_secs(5),
            })
            .expect("runc runs")
        });
        let mut config = ImageConfig::new(dir.path().join("images"));
        config.insecure_registries = vec![image.split('/').next().unwrap().to_owned()];
        // As `serve` pulls: in a child process with bounded memory.
        config.pull_process = Some(PullProcess {
            program: env!("CARGO_BIN_EXE_batch-worker").into(),
            max_memory_bytes: DEFAULT_PULL_MAX_MEMORY_BYTES,
        });
        let images = Arc::new(ImageStore::new(config).expect("the image cache opens"));
        let containers = worker(Arc::new(runc), Some(images.clone())).await;
        let host = worker(Arc::new(HostRunner::default()), None).await;
        let namespaced = match namespaced {
            Some(runner) => Some(worker(Arc::new(runner), Some(images.clone())).await),
            None => None,
        };

        // The first pull, cold: batch 1.
        write_bunch(&containers.writer, 1, &image, 1).await;
        let pull = one_job(&containers.worker, 1, 1).await;
        let events = containers.worker.events(1, 1).unwrap();
        let time_of = |name: &str| {
            events
                .iter()
                .find(|e| e.event.name() == name)
                .map(|e| e.time_ms)
        };
        let pulled = matches!(
            events
                .iter()
                .find(|e| e.event.name() == "image_pulled")
                .map(|e| &e.event),
            Some(Event::ImagePulled { pulled: true, .. })
        );
        assert!(pulled, "the first job downloads the image");
        println!(
            "first pull of {image} (cold cache): resources_granted → image_pulled {} ms; \
             create → running {:.1} ms\n",
            time_of("image_pulled").unwrap() - time_of("resources_granted").unwrap(),
            pull.to_running
        );
        println!("`sh -c true` jobs, ms, p50 / p90 / p99 / max:\n");
        println!(
            "| executor | jobs | create call | create → running | running → exited | create → final |"
        );
        println!("|---|---|---|---|---|---|");
        measure("host", &host, &image, jobs).await;
        measure("runc, network none", &containers, &image, jobs).await;
        if let Some(namespaced) = &namespaced {
            measure("runc, a pooled namespace", namespaced, &image, jobs).await;
        }
        if let Some(networks) = job_networks {
            networks.close_blocking();
        }
    });
}
