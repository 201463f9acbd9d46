//! What the shim costs a job's start: `cargo bench --bench shim` starts
//! `true` (one process that exits at once) through the host runner, one
//! at a time, as the worker's own child (no shim), under a shim, and under
//! a shim with a cgroup per job (v2 where this machine has it, as root),
//! and prints, in ms, p50 / p99 / max of:
//!
//! - start: `Runner::spawn` until it returns (the job's pid known; with a
//!   shim: the shim exec'd, its launch read, the job exec'd, the handshake
//!   back);
//! - to exit: `Process::wait` until the job's end is known (with a shim:
//!   the shim's `exit.json`).
//!
//! `SHIM_JOBS` (default 300) jobs per row; `BENCH_SMOKE=1` runs 10.
//! Figures in BENCHMARKS.md.

use std::time::{Duration, Instant};

use batch_worker::cgroup::{CgroupMode, Cgroups};
use batch_worker::runner::{
    AttemptDir, HostRunner, ProcessRequest, Runner, ShimConfig, DEFAULT_JOB_STORAGE_BYTES,
    DEFAULT_MAX_LOG_BYTES,
};
use batch_worker_model::JobKey;
use tokio_util::sync::CancellationToken;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn line(name: &str, what: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "| {name} | {what} | {:.2} | {:.2} | {:.2} |",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms[ms.len() - 1]
    );
}

async fn row(name: &str, runner: HostRunner, jobs: usize) {
    let data = tempfile::tempdir().expect("a temp dir");
    let (mut start, mut exit) = (Vec::new(), Vec::new());
    for i in 0..jobs {
        let key = JobKey {
            batch_id: 1,
            job_id: i as i64,
            attempt_id: "a".into(),
        };
        let dir = AttemptDir::new(data.path(), &key);
        dir.create().expect("the attempt's directory");
        let request = ProcessRequest {
            key,
            argv: vec!["true".into()],
            env: Vec::new(),
            dir,
            image: None,
            cores_mcpu: 0,
            memory_bytes: 0,
            secrets: Vec::new(),
            timeout: None,
            storage_bytes: None,
            network: None,
            port: None,
        };
        let began = Instant::now();
        let process = runner.spawn(&request).await.expect("true starts");
        start.push(began.elapsed().as_secs_f64() * 1e3);
        let began = Instant::now();
        let _ = process.wait(None, CancellationToken::new()).await;
        exit.push(began.elapsed().as_secs_f64() * 1e3);
    }
    line(name, "start", start);
    line(name, "to exit", exit);
}

#[tokio::main]
async fn main() {
    let jobs = if std::env::var_os("BENCH_SMOKE").is_some() {
        10
    } else {
        std::env::var("SHIM_JOBS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(300)
    };
    let shim = ShimConfig {
        binary: env!("CARGO_BIN_EXE_batch-worker").into(),
        max_log_bytes: DEFAULT_MAX_LOG_BYTES,
        default_storage_bytes: DEFAULT_JOB_STORAGE_BYTES,
    };
    println!("{jobs} jobs per row (`true`, one at a time), ms\n");
    println!("| runner | phase | p50 | p99 | max |\n|---|---|---:|---:|---:|");
    let direct = HostRunner {
        kill_grace: Duration::from_secs(1),
        ..HostRunner::default()
    };
    row("the worker's child", direct.clone(), jobs).await;
    let shimmed = HostRunner {
        shim: Some(shim.clone()),
        ..direct.clone()
    };
    row("under a shim", shimmed.clone(), jobs).await;
    let parent = "batch-worker-bench".to_owned();
    match Cgroups::detect(CgroupMode::Auto, &parent) {
        Ok(Some(cgroups)) => {
            let name = format!("under a shim, cgroup {}", cgroups.version());
            let with_cgroup = HostRunner {
                cgroups: Some(cgroups),
                ..shimmed
            };
            row(&name, with_cgroup, jobs).await;
        }
        _ => println!("| (no cgroup hierarchy usable here: that row skipped) | | | | |"),
    }
}
