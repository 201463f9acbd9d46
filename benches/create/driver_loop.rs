//! The driver-loop simulation (issue 7, item 3): the seed driver's
//! scheduling loop against one server.
//!
//! Each iteration selects the next [`BATCH_JOBS`] ready jobs, calls create
//! on all of them at once (a `reqwest` client, [`CREATE_TIMEOUT`] per
//! call, keep-alive connections), and waits for every call before the
//! next iteration, as Hail's driver does. Per answer:
//!
//! - 200: placed;
//! - 403 (`duplicate_job`): the worker already has the job, so it was
//!   placed by an earlier attempt: done;
//! - a timeout or a connection error: the driver cannot know whether the
//!   job runs, so it re-queues it (at the front, as the next iteration's
//!   first jobs) with a **new attempt id**;
//! - anything else (400, or the inline baseline's 500 for a spec it could
//!   not load): an error answer; the job is not retried.
//!
//! The loop runs until the window ends or every job of the pool is
//! placed, whichever comes first (the pool is bounded so that the worker,
//! which accepts far more jobs than it can load in the window, settles
//! within [`SETTLE_TIMEOUT`] afterwards). Then the bench waits for the
//! server to be idle (every started job finished) before counting runs.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use batch_worker::api::CREATE_PATH;
use batch_worker::store::FaultPlan;
use futures::future::join_all;
use hdrhistogram::Histogram;

use crate::jobs;
use crate::load::new_histogram;
use crate::servers::Server;

/// Jobs selected per iteration.
pub const BATCH_JOBS: usize = 64;
/// The driver's timeout per create call.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a server to finish the jobs it started, after the loop.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the settle wait checks whether the server is idle.
const SETTLE_POLL: Duration = Duration::from_millis(50);

/// The blob store of the simulation: per read, a log-normal latency of
/// median 300 ms and σ 1.0, so p99 = 300 ms · e^(2.326 · 1.0) ≈ 3.07 s
/// (a spec load makes two reads one after the other: about 9 % of loads
/// take over 2 s). No other faults: the corrupt specs are in the store.
pub fn plan() -> FaultPlan {
    FaultPlan {
        seed: 7,
        latency_ms: 300,
        latency_sigma: 1.0,
        ..FaultPlan::default()
    }
}

/// What one server's loop saw, from the driver's side and the server's.
pub struct Looped {
    /// Iterations run.
    pub iterations: u64,
    /// From the first iteration's start to the last one's end.
    pub elapsed: Duration,
    /// Duration of every iteration, in µs.
    pub iteration_us: Histogram<u64>,
    /// Create calls sent.
    pub creates: u64,
    /// Create calls that timed out or failed to connect (each re-queued).
    pub timeouts: u64,
    /// Answers other than 200, 403 and a timeout.
    pub error_answers: u64,
    /// 403 answers (already placed).
    pub duplicates: u64,
    /// Whether every job of the pool was placed before the window ended.
    pub pool_done: bool,
    /// Jobs sent at least once whose spec is corrupt.
    pub corrupt_expected: usize,
    /// Jobs whose spec load failed as `spec_corrupt` on the server.
    pub corrupt_errored: usize,
    /// Jobs started two or more times.
    pub ran_twice: usize,
    /// Jobs started at least once.
    pub ran: usize,
    /// How long the server took to become idle after the loop (`None`:
    /// not within [`SETTLE_TIMEOUT`]; the counts are then a lower bound).
    pub settled_in: Option<Duration>,
    /// Every spec read's latency, in µs (see `Server::read_latency_us`).
    pub reads_us: Option<Histogram<u64>>,
}

/// How one create call ended, for the driver.
enum Answer {
    Placed,
    AlreadyPlaced,
    /// Timed out or failed to connect: re-queue with a new attempt id.
    Retry,
    /// Any other status.
    Error,
}

/// Runs the loop on `client` against `server`, over the jobs `0..jobs`
/// (their specs already in the server's store), for at most `window`;
/// then waits for the server to settle and counts.
pub fn run(
    client: &tokio::runtime::Runtime,
    server: &Server,
    jobs: i64,
    window: Duration,
) -> Looped {
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(BATCH_JOBS)
        .build()
        .expect("an HTTP client");
    let url = format!("http://{}{CREATE_PATH}", server.addr);
    let mut ready: VecDeque<(i64, u32)> = (0..jobs).map(|j| (j, 0)).collect();
    let mut sent: HashSet<i64> = HashSet::new();
    let mut looped = Looped {
        iterations: 0,
        elapsed: Duration::ZERO,
        iteration_us: new_histogram(),
        creates: 0,
        timeouts: 0,
        error_answers: 0,
        duplicates: 0,
        pool_done: false,
        corrupt_expected: 0,
        corrupt_errored: 0,
        ran_twice: 0,
        ran: 0,
        settled_in: None,
        reads_us: None,
    };
    let began = Instant::now();
    while began.elapsed() < window && !ready.is_empty() {
        let selected: Vec<(i64, u32)> = ready.drain(..BATCH_JOBS.min(ready.len())).collect();
        sent.extend(selected.iter().map(|&(job_id, _)| job_id));
        let started = Instant::now();
        let answers = client.block_on(join_all(
            selected
                .iter()
                .map(|&(job_id, attempt)| create(&http, &url, job_id, attempt)),
        ));
        looped
            .iteration_us
            .saturating_record(started.elapsed().as_micros().max(1) as u64);
        looped.iterations += 1;
        looped.creates += selected.len() as u64;
        // Re-queued jobs go first, in their order, each with a new attempt.
        let mut retries = Vec::new();
        for (&(job_id, attempt), answer) in selected.iter().zip(answers) {
            match answer {
                Answer::Placed => {}
                Answer::AlreadyPlaced => looped.duplicates += 1,
                Answer::Error => looped.error_answers += 1,
                Answer::Retry => {
                    looped.timeouts += 1;
                    retries.push((job_id, attempt + 1));
                }
            }
        }
        for retry in retries.into_iter().rev() {
            ready.push_front(retry);
        }
    }
    looped.elapsed = began.elapsed();
    looped.pool_done = ready.is_empty();
    let settling = Instant::now();
    while !server.is_idle() && settling.elapsed() < SETTLE_TIMEOUT {
        std::thread::sleep(SETTLE_POLL);
    }
    if server.is_idle() {
        looped.settled_in = Some(settling.elapsed());
    }
    let runs = server.runs.counts();
    looped.ran = runs.len();
    looped.ran_twice = runs.values().filter(|&&n| n >= 2).count();
    looped.corrupt_expected = sent.iter().filter(|&&j| jobs::is_corrupt(j)).count();
    looped.corrupt_errored = server.spec_corrupt_jobs().len();
    looped.reads_us = server.read_latency_us();
    looped
}

/// One create call of attempt `attempt` of job `job_id`.
async fn create(http: &reqwest::Client, url: &str, job_id: i64, attempt: u32) -> Answer {
    let sent = http
        .post(url)
        .header("content-type", "application/json")
        .body(jobs::create_body(job_id, attempt))
        .timeout(CREATE_TIMEOUT)
        .send()
        .await;
    match sent {
        Ok(answer) => {
            let status = answer.status();
            // Read the (empty) body so that the connection is reused.
            let _ = answer.bytes().await;
            match status.as_u16() {
                200 => Answer::Placed,
                403 => Answer::AlreadyPlaced,
                _ => Answer::Error,
            }
        }
        Err(_) => Answer::Retry,
    }
}

/// The table's header rows.
pub const HEADER: &str = "| server | iterations | iterations/min | iteration p50 ms | iteration p99 ms | creates | timeouts | 403 | error answers | jobs run | ran twice | spec_corrupt errored / expected | read p50 / p99 / max ms (reads) | settled in |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|";

impl Looped {
    /// The table row of server `label`.
    pub fn row(&self, label: &str) -> String {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let per_min = self.iterations as f64 / self.elapsed.as_secs_f64().max(1e-9) * 60.0;
        let reads = self.reads_us.as_ref().map_or("-".into(), |h| {
            format!(
                "{:.0} / {:.0} / {:.0} ({})",
                ms(h, 0.5),
                ms(h, 0.99),
                h.max() as f64 / 1000.0,
                h.len()
            )
        });
        let settled = self
            .settled_in
            .map_or(format!("not in {} s", SETTLE_TIMEOUT.as_secs()), |d| {
                format!("{:.1} s", d.as_secs_f64())
            });
        format!(
            "| {label} | {}{} | {per_min:.0} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} / {} | {reads} | {settled} |",
            self.iterations,
            if self.pool_done { " (pool done)" } else { "" },
            ms(&self.iteration_us, 0.5),
            ms(&self.iteration_us, 0.99),
            self.creates,
            self.timeouts,
            self.duplicates,
            self.error_answers,
            self.ran,
            self.ran_twice,
            self.corrupt_errored,
            self.corrupt_expected,
        )
    }
}

/// What the loop does, printed above the table (Markdown).
pub fn describe(jobs: i64, window: Duration) -> String {
    let plan = plan();
    let corrupt_pct = (0..100).filter(|&j| jobs::is_corrupt(j)).count();
    [
        format!(
            "Each iteration creates the next {BATCH_JOBS} ready jobs at once, with a {} s timeout per call,",
            CREATE_TIMEOUT.as_secs()
        ),
        "and waits for all of them; a create that times out is re-queued with a new attempt id;".into(),
        "403 counts as placed. The loop runs for the window or until the pool is placed".into(),
        format!(
            "(\"pool done\"): window {} s, pool {jobs} jobs. Then the bench waits up to {} s for",
            window.as_secs_f64(),
            SETTLE_TIMEOUT.as_secs()
        ),
        "the server to finish every job it started, and counts runs per job.".into(),
        format!(
            "Blob store: log-normal latency per read, median {} ms, σ {} (p99 = 3.07 s); a spec",
            plan.latency_ms, plan.latency_sigma
        ),
        format!("load is two reads in a row. {corrupt_pct} % of the specs are corrupt (cut in half)."),
    ]
    .join("\n")
}
