//! Specs built to break the journal: everything a spec makes the worker
//! record must replay as it was applied, so a restart shows every status
//! unchanged and `replay --check` passes.

use std::sync::Arc;

use batch_worker::demo::driver::EmbeddedDriver;
use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use object_store::local::LocalFileSystem;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{assert_replays_clean, create_body, shell_spec, ServeChild};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_resources_and_a_huge_argv_leave_a_journal_that_restarts_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (data, specs) = (dir.path().join("data"), dir.path().join("specs"));
    std::fs::create_dir_all(&specs).unwrap();
    // Job 1: `resources` nested 120 deep (the spec parses; a record holding
    // it would sit deeper than a reader allows).
    let deep = format!(
        r#"{{"job_id":1,"process":{{"type":"docker","command":["true"]}},"resources":{{"x":{}1{}}}}}"#,
        "[".repeat(120),
        "]".repeat(120)
    );
    // Job 2: a program whose name is 2.5 M characters (5 MB of UTF-8): its
    // launch error quotes it.
    let huge = json!({
        "job_id": 2,
        "process": {"type": "docker", "command": ["\u{85}".repeat(2_500_000)]},
        "resources": {"cores_mcpu": 100},
    });
    SpecStore::new(
        Arc::new(LocalFileSystem::new_with_prefix(&specs).unwrap()),
        Default::default(),
        SpecLoadConfig::default(),
    )
    .unwrap()
    .write_bunch(
        9,
        "hostile",
        &[
            deep.into_bytes(),
            serde_json::to_vec(&huge).unwrap(),
            serde_json::to_vec(&shell_spec(3, "exit 0")).unwrap(),
        ],
    )
    .await
    .unwrap();
    let driver = EmbeddedDriver::start().await.unwrap();
    let mut first = ServeChild::start(&data, &specs, driver.url.as_str(), &[]).await;
    let http = reqwest::Client::new();
    for job_id in 1..=3 {
        let status = http
            .post(format!("{}/api/v1alpha/batches/jobs/create", first.base))
            .json(&create_body(9, job_id, "hostile", 1))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK);
    }
    for job_id in 1..=3 {
        first.wait_event(9, job_id, "complete_delivered").await;
    }
    let statuses = |base: String| {
        let http = http.clone();
        async move {
            let mut all = Vec::new();
            for job_id in 1..=3 {
                let url = format!("{base}/api/v1alpha/batches/9/jobs/{job_id}/status");
                let status: Value = http.get(url).send().await.unwrap().json().await.unwrap();
                all.push(status);
            }
            all
        }
    };
    let before = statuses(first.base.clone()).await;
    assert_eq!(
        before[0]["batch_worker"]["error_kind"], "spec_corrupt",
        "{}",
        before[0]
    );
    assert!(
        before[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("resources: expected at most 16 levels"),
        "{}",
        before[0]
    );
    assert_eq!(before[1]["batch_worker"]["error_kind"], "launch_failed");
    // A launch error is the main task's, as Hail's container errors are.
    assert!(
        before[1]["container_statuses"]["main"]["error"]
            .as_str()
            .unwrap()
            .len()
            < 20_000,
        "the launch error is cut"
    );
    assert_eq!(before[2]["state"], "succeeded");
    // When the worker dies and starts again on its journal
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let second = ServeChild::start(&data, &specs, driver.url.as_str(), &[]).await;
    // Then every status is as it was
    assert_eq!(statuses(second.base.clone()).await, before);
    drop(second);
    // and the journal replays clean.
    assert_replays_clean(&data);
}
