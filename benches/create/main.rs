//! Create-path benchmarks (issue 7): `cargo bench --bench create`.
//!
//! Prints, for each row, the same load against three servers on the same
//! HTTP stack, in one process run (see `servers.rs`): the **floor** (a
//! no-op handler), the **inline** baseline (reads the spec before
//! answering, as the old design did) and this **worker** at `flush` and
//! `fsync` durability.
//!
//! - `latency`: 64 keep-alive connections offering 1,000 creates/s in all,
//!   spec-store latency 0, 200 ms and 2 s per read (a [`FaultStore`]);
//!   p50/p99/p99.9 in ms.
//! - `throughput`: 64 connections sending back to back (saturation);
//!   creates/s.
//!
//! `BENCH_SECONDS=N` sets each row's measured window (default 5 s; a
//! 1 s warm-up comes first). `BENCH_SMOKE=1` runs one short row of each
//! (for CI). Arguments after `--` pick sections: `latency`, `throughput`.
//!
//! [`FaultStore`]: batch_worker::store::FaultStore

mod jobs;
mod load;
mod servers;

use std::sync::Arc;
use std::time::Duration;

use batch_worker::journal::Durability;
use batch_worker::store::FaultPlan;
use load::{Measured, Pace};
use servers::{Kind, Server};

/// Connections the driver holds open to the worker.
const CONNECTIONS: usize = 64;
/// Creates/s offered in the latency rows.
const OFFERED_PER_S: u64 = 1_000;

const KINDS: [Kind; 4] = [
    Kind::Floor,
    Kind::Inline,
    Kind::Worker(Durability::Flush),
    Kind::Worker(Durability::Fsync),
];

fn main() {
    let sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |s: &str| sections.is_empty() || sections.iter().any(|a| a == s);
    let smoke = std::env::var_os("BENCH_SMOKE").is_some();
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 0.5 } else { 5.0 });
    let measure = Duration::from_secs_f64(seconds);
    let warmup = Duration::from_secs_f64(if smoke { 0.2 } else { 1.0 });
    let client = tokio::runtime::Builder::new_multi_thread()
        .thread_name("driver")
        .enable_all()
        .build()
        .expect("a client runtime");
    println!(
        "machine: {} cores; {CONNECTIONS} keep-alive connections; window {seconds} s after a {} s warm-up",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        warmup.as_secs_f64()
    );
    if wants("latency") {
        let window = warmup + measure;
        let jobs = (OFFERED_PER_S as f64 * window.as_secs_f64() * 1.2) as i64 + 1000;
        let specs = jobs::write_specs(jobs, false);
        let bodies = Arc::new(
            (0..jobs)
                .map(|j| jobs::create_body(j, 0))
                .collect::<Vec<_>>(),
        );
        println!("\n## Create latency at {OFFERED_PER_S} creates/s offered\n");
        println!(
            "| blob latency | server | p50 ms | p99 ms | p99.9 ms | max ms | answered | not 200 |"
        );
        println!("|---:|---|---:|---:|---:|---:|---:|---:|");
        let latencies: &[u64] = if smoke { &[200] } else { &[0, 200, 2000] };
        for &latency_ms in latencies {
            let plan = FaultPlan {
                seed: 7,
                latency_ms,
                latency_sigma: 0.0,
                ..FaultPlan::default()
            };
            for kind in KINDS {
                let server = Server::start(kind, specs.clone(), &plan);
                let measured = load::run(
                    &client,
                    server.addr,
                    bodies.clone(),
                    CONNECTIONS,
                    Pace::Rate {
                        per_s: OFFERED_PER_S,
                    },
                    warmup,
                    measure,
                );
                println!(
                    "| {latency_ms} ms | {} | {} |",
                    kind.label(),
                    row(&measured)
                );
                drop(server);
            }
        }
    }
    if wants("throughput") {
        let jobs: i64 = if smoke { 100_000 } else { 1_000_000 };
        let specs = jobs::write_specs(jobs, false);
        let bodies = Arc::new(
            (0..jobs)
                .map(|j| jobs::create_body(j, 0))
                .collect::<Vec<_>>(),
        );
        println!("\n## Create throughput at saturation (blob latency 0)\n");
        println!(
            "| server | creates/s | p50 ms | p99 ms | p99.9 ms | max ms | answered | not 200 |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for kind in KINDS {
            let server = Server::start(kind, specs.clone(), &FaultPlan::default());
            let measured = load::run(
                &client,
                server.addr,
                bodies.clone(),
                CONNECTIONS,
                Pace::Closed,
                warmup,
                measure,
            );
            println!(
                "| {} | {:.0} | {} |",
                kind.label(),
                measured.per_s,
                row(&measured)
            );
            drop(server);
        }
    }
}

/// `p50 | p99 | p99.9 | max | answered | not 200` of one run, in ms.
fn row(m: &Measured) -> String {
    let ms = |q: f64| m.latency_us.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "{:.2} | {:.2} | {:.2} | {:.2} | {} | {}",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        m.latency_us.max() as f64 / 1000.0,
        m.latency_us.len(),
        m.not_ok + m.failed
    )
}
