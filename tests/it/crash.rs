//! Crash test: `batch-worker serve` as a child process, killed with SIGKILL
//! at random moments while it takes jobs, restarted on the same data dir.
//! Every create that got a 200 (under fsync durability) is still there
//! after the restart, every attempt ends (the interrupted ones as
//! `error: worker_restarted`), the driver receives a job_complete for every
//! reported attempt (duplicates allowed), no secret reaches the journal,
//! and `replay --check` passes on what is left.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use batch_worker::demo::driver::EmbeddedDriver;
use batch_worker::journal::{journal_dir, segments};
use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use object_store::local::LocalFileSystem;
use rand::Rng;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{create_body, shell_spec, ServeChild, HANG_GUARD};

const SECRET: &str = "CRASHTESTSECRET0123456789";
const BATCH: i64 = 9;

fn body(job_id: i64) -> Value {
    let mut body = create_body(BATCH, job_id, "crash", 1);
    body["gsa_key"] = json!({"key.json": SECRET});
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_accepted_job() {
    let dir = tempfile::tempdir().unwrap();
    let (data, specs_dir) = (dir.path().join("data"), dir.path().join("specs"));
    std::fs::create_dir_all(&specs_dir).unwrap();
    let jobs_per_round = 24;
    let rounds = 3;
    let total = jobs_per_round * rounds;
    // Jobs run 0.3 s, 1.5 s, or have no spec (job ids past the bunch).
    let specs: Vec<Vec<u8>> = (1..=total - 4)
        .map(|job_id| {
            let script = if job_id % 3 == 0 {
                "sleep 1.5"
            } else {
                "sleep 0.3"
            };
            serde_json::to_vec(&shell_spec(job_id, script)).unwrap()
        })
        .collect();
    let store = std::sync::Arc::new(LocalFileSystem::new_with_prefix(&specs_dir).unwrap());
    SpecStore::new(store, Default::default(), SpecLoadConfig::default())
        .unwrap()
        .write_bunch(BATCH, "crash", &specs)
        .await
        .unwrap();
    let driver = EmbeddedDriver::start().await.unwrap();
    let http = reqwest::Client::new();
    let mut accepted = BTreeSet::new();
    for round in 0..rounds {
        let mut serve = ServeChild::start(&data, &specs_dir, driver.url.as_str(), &[]).await;
        let creates = (round * jobs_per_round + 1..=(round + 1) * jobs_per_round).map(|job_id| {
            let request = http
                .post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
                .json(&body(job_id));
            // Spread over about 0.7 s, so that kills land before, during
            // and after the creates, and while jobs load, run and report.
            let delay = Duration::from_millis(30 * (job_id % jobs_per_round) as u64);
            async move {
                tokio::time::sleep(delay).await;
                (job_id, request.send().await.map(|r| r.status()))
            }
        });
        let killer = async {
            let wait = rand::rng().random_range(150..900);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            serve.child.kill().unwrap();
        };
        let (results, ()) = tokio::join!(futures::future::join_all(creates), killer);
        serve.child.wait().unwrap();
        let before = accepted.len();
        for (job_id, result) in results {
            if matches!(result, Ok(StatusCode::OK)) {
                accepted.insert(job_id);
            }
        }
        eprintln!(
            "round {round}: {} of {jobs_per_round} creates answered 200 before the kill",
            accepted.len() - before
        );
    }
    assert!(
        !accepted.is_empty(),
        "some creates were answered before the kills"
    );

    // Restart for good and let everything end.
    let serve = ServeChild::start(&data, &specs_dir, driver.url.as_str(), &[]).await;
    let mut states = std::collections::BTreeMap::new();
    for job_id in &accepted {
        let url = format!(
            "{}/api/v1alpha/batches/{BATCH}/jobs/{job_id}/status",
            serve.base
        );
        let status: Value = tokio::time::timeout(HANG_GUARD, async {
            loop {
                let response = http.get(&url).send().await.unwrap();
                assert_eq!(
                    response.status(),
                    StatusCode::OK,
                    "accepted job {job_id} lost by a restart"
                );
                let status: Value = response.json().await.unwrap();
                if ["succeeded", "failed", "error", "cancelled"]
                    .contains(&status["state"].as_str().unwrap())
                {
                    break status;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("job {job_id} never ended"));
        let state = match status["batch_worker"]["error_kind"].as_str() {
            Some(kind) => format!("error:{kind}"),
            None => status["state"].as_str().unwrap().to_owned(),
        };
        assert!(
            ["succeeded", "error:worker_restarted", "error:spec_corrupt"].contains(&state.as_str()),
            "job {job_id}: {state}"
        );
        states.insert(*job_id, state);
    }
    // A job_complete for every accepted attempt reaches the driver.
    let mut changes = driver.changes();
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let reported: BTreeSet<i64> = driver
                .received()
                .complete
                .iter()
                .map(|c| c.status.job_id)
                .collect();
            if accepted.iter().all(|j| reported.contains(j)) {
                break;
            }
            changes.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("missing job_complete reports; states {states:?}"));
    // A finished attempt is remembered across the restarts: a repeated
    // create of its job is refused, not run twice.
    let first = *accepted.iter().next().unwrap();
    let again = http
        .post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
        .json(&body(first))
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        StatusCode::FORBIDDEN,
        "job {first} would run twice"
    );
    eprintln!("accepted {} of {total}: {states:?}", accepted.len());
    assert!(
        states.values().any(|s| s == "error:worker_restarted"),
        "some attempt was live at a kill: {states:?}"
    );
    let mut serve = serve;
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();

    let journal: Vec<u8> = segments(&journal_dir(&data))
        .unwrap()
        .into_iter()
        .flat_map(|(_, path)| std::fs::read(path).unwrap())
        .collect();
    assert!(
        !journal
            .windows(SECRET.len())
            .any(|w| w == SECRET.as_bytes()),
        "a secret is in the journal"
    );
    let check = Command::new(env!("CARGO_BIN_EXE_batch-worker"))
        .arg("replay")
        .arg(&data)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        check.status.success() || String::from_utf8_lossy(&check.stdout).contains("torn tail"),
        "replay --check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
}
