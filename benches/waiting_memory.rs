//! Memory per waiting job: `cargo bench --bench waiting_memory` accepts
//! 100,000 jobs (format 7, bunch specs) into a worker whose spec store
//! never answers (a `FaultStore` with `hang=1`), so every job waits in
//! `LoadingSpec` (256 reads in flight, the rest waiting for a load
//! permit), and prints the process's resident memory (RSS, from
//! `/proc/self/statm`) before and after, per accepted job.
//! `WAITING_JOBS=N` changes the count. The worker is opened as `serve`
//! opens one, journal included (at `flush`): the figure is the job table,
//! the attempts' tasks and whatever the journal holds per job (nothing past
//! its write batch).
//!
//! Then it times the job list (`GET /batch-worker/v1/jobs`'s
//! [`Worker::list`], which holds the table lock) over those jobs: a first
//! page of 100, one batch's page, a state no job is in, and the last page
//! (`after` near the end), each the median of 21 calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use batch_worker::journal::Durability;
use batch_worker::logs_store::LogsStore;
use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use batch_worker::store::{FaultPlan, FaultStore, StoreOptions};
use batch_worker::wire::CreateJob;
use batch_worker::worker::{JournalOptions, ListFilter, Worker};
use batch_worker_model::WireState;
use object_store::memory::InMemory;
use object_store::path::Path;

/// Resident memory of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's second field");
    // SAFETY: sysconf takes an integer constant and touches no memory.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

fn main() {
    let jobs: i64 = std::env::var("WAITING_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let data = tempfile::tempdir().expect("a temp dir");
        let hanging = FaultPlan {
            hang_rate: 1.0,
            ..FaultPlan::default()
        };
        let store = Arc::new(FaultStore::new(Arc::new(InMemory::new()), hanging));
        let specs = SpecStore::new(store, Path::from("specs"), SpecLoadConfig::default())
            .expect("the spec-io runtime starts");
        // A worker like `serve`'s (journal included), whose spec reads
        // never answer: every job waits in `loading_spec`.
        let worker = Worker::builder(data.path())
            .name("bench")
            .specs(specs)
            .logs(LogsStore::new(Arc::new(InMemory::new()), Path::default()))
            .journal(JournalOptions {
                durability: Durability::Flush,
                ..JournalOptions::default()
            })
            .journal_segment_bytes(u64::MAX)
            .store_options(StoreOptions::default())
            .open()
            .expect("the worker opens");
        let bodies: Vec<Vec<u8>> = (0..jobs)
            .map(|job_id| {
                serde_json::json!({
                    "batch_id": 1 + job_id / 10_000,
                    "job_id": job_id,
                    "format_version": 7,
                    "token": "q4w8e2r6t1y9u3i5",
                    "start_job_id": job_id - job_id % 100,
                    "user": "bench-user",
                    "gsa_key": null,
                    "job_spec": {"attempt_id": "Xq3T9b", "job_group_id": 0, "secrets": []},
                    "queue_time": null
                })
                .to_string()
                .into_bytes()
            })
            .collect();
        let before = rss_bytes();
        let began = Instant::now();
        for body in &bodies {
            let job = CreateJob::parse(body).expect("a valid body");
            worker.create(job).await.expect("accepted");
        }
        let took = began.elapsed();
        // Let every attempt's task start its load (or wait for a permit).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_bytes();
        let loading = worker
            .snapshot()
            .iter()
            .filter(|(_, s)| s.name() == "loading_spec")
            .count();
        let per_job = (after.saturating_sub(before)) as f64 / jobs as f64;
        println!(
            "{jobs} jobs accepted in {:.2} s ({:.0} creates/s, one caller, journal at flush); {loading} waiting in loading_spec",
            took.as_secs_f64(),
            jobs as f64 / took.as_secs_f64()
        );
        println!(
            "RSS before {:.1} MiB, after {:.1} MiB: {:.0} bytes ({:.2} KiB) per waiting job",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            per_job,
            per_job / 1024.0
        );
        let median_ms = |filter: ListFilter| {
            let mut times: Vec<f64> = (0..21)
                .map(|_| {
                    let t = Instant::now();
                    let page = worker.list(&filter);
                    std::hint::black_box(page);
                    t.elapsed().as_secs_f64() * 1000.0
                })
                .collect();
            times.sort_by(f64::total_cmp);
            times[times.len() / 2]
        };
        let page = |batch_id, states: Vec<WireState>, after| ListFilter {
            batch_id,
            states,
            after,
            limit: 100,
        };
        println!(
            "job list over {jobs} jobs (median of 21, table lock held): first page {:.2} ms, one batch {:.2} ms, a state none is in {:.2} ms, last page {:.2} ms",
            median_ms(page(None, vec![], None)),
            median_ms(page(Some(2), vec![], None)),
            median_ms(page(None, vec![WireState::Running], None)),
            median_ms(page(None, vec![], Some((1 + (jobs - 50) / 10_000, jobs - 50)))),
        );
    });
}
