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
//!   creates/s; the worker also with jobs parked (a spec store that never
//!   answers), which is the create path alone.
//! - `driver-loop`: the driver's scheduling loop (64 creates at once, a
//!   2 s timeout each, re-queue on timeout) against the inline baseline
//!   and the worker, with a heavy-tailed blob store and 5 % corrupt
//!   specs; see `driver_loop.rs`.
//!
//! `BENCH_SECONDS=N` sets each row's measured window (default 5 s; in the
//! latency and throughput rows a 1 s warm-up comes first).
//! `BENCH_SMOKE=1` runs one short row of each (for CI). Arguments after
//! `--` pick sections: `latency`, `throughput`, `driver-loop` (none: all).
//!
//! `--write` replaces the generated parts of BENCHMARKS.md with the tables
//! printed: the text between `<!-- bench:create:begin -->` and
//! `<!-- bench:create:end -->` (latency and throughput) and between
//! `<!-- bench:create:driver-loop:begin -->` and
//! `<!-- bench:create:driver-loop:end -->`, each only if one of its
//! sections ran, preceded by the machine and the command. Not in smoke
//! mode.
//!
//! [`FaultStore`]: batch_worker::store::FaultStore

#[macro_use]
mod report;
mod driver_loop;
mod jobs;
mod load;
mod servers;

use std::time::Duration;

use batch_worker::journal::Durability;
use batch_worker::store::FaultPlan;
use load::{Measured, Pace};
use report::Block;
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

/// The sections, in the order they run.
const SECTIONS: [&str; 3] = ["latency", "throughput", "driver-loop"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; other flags but `--write` are
    // ignored too.
    let write = args.iter().any(|a| a == "--write");
    let sections: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if let Some(unknown) = sections.iter().find(|a| !SECTIONS.contains(&a.as_str())) {
        eprintln!("unknown section {unknown:?}; the sections are {SECTIONS:?}");
        std::process::exit(2);
    }
    let wants = |s: &str| sections.is_empty() || sections.iter().any(|a| *a == s);
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
    println!("machine: {}", report::machine());
    if wants("latency") || wants("throughput") {
        report::begin(Block::Create);
        out!(
            "{CONNECTIONS} keep-alive connections; window {seconds} s after a {} s warm-up per row.",
            warmup.as_secs_f64()
        );
    }
    if wants("latency") {
        let window = warmup + measure;
        let jobs = (OFFERED_PER_S as f64 * window.as_secs_f64() * 1.2) as i64 + 1000;
        let specs = jobs::write_specs(jobs, false);
        let bodies = jobs::first_attempts(jobs);
        out!("\n### Create latency at {OFFERED_PER_S} creates/s offered\n");
        out!(
            "| blob latency | server | p50 ms | p99 ms | p99.9 ms | max ms | answered | not 200 |"
        );
        out!("|---:|---|---:|---:|---:|---:|---:|---:|");
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
                out!(
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
        let bodies = jobs::first_attempts(jobs);
        out!("\n### Create throughput at saturation (blob latency 0)\n");
        out!("| server | creates/s | p50 ms | p99 ms | p99.9 ms | max ms | answered | not 200 |");
        out!("|---|---:|---:|---:|---:|---:|---:|---:|");
        // The worker twice more with a spec store that never answers: every
        // job waits in `loading_spec`, so the row is the create path alone,
        // without the jobs' lives (spec load, admission, attempt
        // directory, run, log upload, removal) sharing the cores.
        let parked = FaultPlan {
            hang_rate: 1.0,
            ..FaultPlan::default()
        };
        let rows = KINDS
            .iter()
            .map(|&kind| (kind, FaultPlan::default(), ""))
            .chain([Durability::Flush, Durability::Fsync].map(|durability| {
                (
                    Kind::Worker(durability),
                    parked.clone(),
                    ", jobs parked (spec store hangs)",
                )
            }));
        for (kind, plan, note) in rows {
            let server = Server::start(kind, specs.clone(), &plan);
            let measured = load::run(
                &client,
                server.addr,
                bodies.clone(),
                CONNECTIONS,
                Pace::Closed,
                warmup,
                measure,
            );
            out!(
                "| {}{note} | {:.0} | {} |",
                kind.label(),
                measured.per_s,
                row(&measured)
            );
            drop(server);
        }
    }
    if wants("driver-loop") {
        // Bounded so that the worker, which accepts the pool in well under
        // a second but loads at most 256 specs at once (about 1 s each, the
        // slowest over 10 s), settles well within the settle timeout: about
        // 20 s for 2,560 jobs.
        let jobs: i64 = if smoke { 128 } else { 2_560 };
        let specs = jobs::write_specs(jobs, true);
        let plan = driver_loop::plan();
        report::begin(Block::DriverLoop);
        out!("\n### Driver loop against a heavy-tailed blob store\n");
        out!("{}\n", driver_loop::describe(jobs, measure));
        out!("{}", driver_loop::HEADER);
        let kinds: &[Kind] = if smoke {
            &[Kind::Inline, Kind::Worker(Durability::Flush)]
        } else {
            &[
                Kind::Inline,
                Kind::Worker(Durability::Flush),
                Kind::Worker(Durability::Fsync),
            ]
        };
        for &kind in kinds {
            let server = Server::start_timing_reads(kind, specs.clone(), &plan);
            let looped = driver_loop::run(&client, &server, jobs, measure);
            out!("{}", looped.row(kind.label()));
            drop(server);
        }
    }
    if write {
        if smoke {
            eprintln!("--write is ignored in smoke mode");
        } else {
            report::write(&args);
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
