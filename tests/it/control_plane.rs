//! The Azure-with-SAS-token case: every store request first waits seconds
//! for a token from a slow control plane (heavy-tailed, seeded). Creates
//! still answer at once, and every job still runs. Over Azurite when
//! `BW_TEST_AZ_ROOT` is set (CI), else over an in-memory store.
//!
//! "At once" is not measured on the wall clock (a loaded 2-core CI machine
//! takes 100 ms to answer 24 concurrent creates without any store call):
//! every store request is held shut until all creates have answered, so a
//! create that waited on the store would never answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use batch_worker::store::{open_store, with_control_plane};
use batch_worker_model::{JobState, Outcome};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;
use reqwest::StatusCode;

use crate::support::{create_body, shell_spec, Harness, OnRead, TestStore, HANG_GUARD};

const JOBS: i64 = 24;
/// Median token wait, in ms (p99 about 5.7 times this).
const TOKEN_MS: u64 = 2000;

fn backing_store() -> (Arc<dyn ObjectStore>, Path, &'static str) {
    match std::env::var("BW_TEST_AZ_ROOT") {
        Ok(root) => {
            let (store, path) = open_store(&url::Url::parse(&root).unwrap()).unwrap();
            (store, path, "Azurite")
        }
        Err(_) => (Arc::new(InMemory::new()), Path::from("specs"), "memory"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_answer_at_once_behind_a_slow_control_plane() {
    let (store, root, name) = backing_store();
    // The bunch goes in directly; the worker reads through the slow plane.
    let batch_id = 31_000 + i64::from(std::process::id() % 1000);
    let specs: Vec<Vec<u8>> = (1..=JOBS)
        .map(|j| serde_json::to_vec(&shell_spec(j, "echo ok")).unwrap())
        .collect();
    SpecStore::new(store.clone(), root.clone(), SpecLoadConfig::default())
        .unwrap()
        .write_bunch(batch_id, "slow", &specs)
        .await
        .unwrap();
    let slow = with_control_plane(store, TOKEN_MS, 42);
    // Shut until every create has answered: no store request (nor its
    // token wait) can end before then.
    let gate = Arc::new(TestStore::new(slow, OnRead::Gated));
    let h = Harness::start(gate.clone(), root, SpecLoadConfig::default()).await;

    let creates = (1..=JOBS).map(|job_id| {
        let h = &h;
        async move {
            let began = Instant::now();
            let (status, _) = h.create(&create_body(batch_id, job_id, "slow", 1)).await;
            (status, began.elapsed())
        }
    });
    let results = tokio::time::timeout(HANG_GUARD, futures::future::join_all(creates))
        .await
        .expect("every create answers while no store request can end");
    let mut latencies: Vec<Duration> = results.iter().map(|(_, d)| *d).collect();
    latencies.sort();
    let over_100ms = latencies
        .iter()
        .filter(|d| **d > Duration::from_millis(100))
        .count();
    eprintln!(
        "{name} behind a {TOKEN_MS} ms (median) control plane: {JOBS} creates, max {:?}, {over_100ms} over 100 ms",
        latencies.last().unwrap()
    );
    assert!(results.iter().all(|(s, _)| *s == StatusCode::OK));
    // Every job loads its spec in its own life, after its create answered:
    // each waits in the store.
    for job_id in 1..=JOBS {
        h.wait_for(batch_id, job_id, |s| *s == JobState::LoadingSpec)
            .await;
    }
    gate.wait_reads(JOBS as usize).await;
    gate.open();

    let began = Instant::now();
    for job_id in 1..=JOBS {
        assert_eq!(
            h.wait_final(batch_id, job_id).await,
            JobState::Done {
                outcome: Outcome::Succeeded
            }
        );
    }
    eprintln!(
        "all {JOBS} jobs succeeded {:?} after the creates",
        began.elapsed()
    );
}
