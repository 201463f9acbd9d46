//! Finished attempts' `status.json` and main log land in the logs store
//! before `job_complete` is sent; a failing logs store changes no outcome.

use std::sync::Arc;

use batch_worker_model::{Event, ExitStatus, JobState, Outcome};
use object_store::local::LocalFileSystem;
use serde_json::{json, Value};

use crate::support::{bunch, shell_spec, Harness, Options};

#[tokio::test]
async fn status_and_main_log_are_uploaded_before_job_complete() {
    let h = Harness::in_memory().await;
    bunch(
        &h,
        8,
        "logs",
        &[shell_spec(1, "echo hello from the job; exit 4")],
    )
    .await;
    h.accept(8, 1, "logs").await;
    h.wait_event(8, 1, "complete_delivered").await;
    let status: Value =
        serde_json::from_slice(&h.logs_object("logs/8/1/a1/status.json").await.unwrap()).unwrap();
    assert_eq!(status["state"], json!("failed"));
    assert_eq!(status["batch_id"], json!(8));
    assert_eq!(status["attempt_id"], json!("a1"));
    assert_eq!(
        status["container_statuses"]["main"]["container_status"]["exit_code"],
        json!(4)
    );
    // One end time everywhere: when the job ended, not when it was
    // uploaded or reported.
    let reported = h.driver.received().complete[0].status.end_time;
    assert_eq!(status["end_time"], json!(reported));
    assert_eq!(h.status(8, 1).await.1["end_time"], json!(reported));
    let log = h.logs_object("logs/8/1/a1/main/log").await.unwrap();
    assert!(String::from_utf8_lossy(&log).contains("hello from the job"));
    // The working directory is gone; main.log stays.
    let attempt = h.data.path().join("jobs/8/1/a1");
    assert!(!attempt.join("work").exists());
    assert!(attempt.join("main.log").exists());
    // The report follows the upload, in the journal's order.
    h.worker.sync_journal().await;
    let order: Vec<&'static str> = h
        .journal_records()
        .iter()
        .filter(|r| r.key.job_id == 1)
        .map(|r| r.event.name())
        .filter(|n| *n == "logs_uploaded" || *n == "complete_delivered")
        .collect();
    assert_eq!(order, ["logs_uploaded", "complete_delivered"]);
}

#[tokio::test]
async fn a_job_without_a_process_still_gets_its_status_json() {
    let h = Harness::in_memory().await;
    h.accept(8, 2, "nothing").await;
    h.wait_event(8, 2, "complete_delivered").await;
    let status: Value =
        serde_json::from_slice(&h.logs_object("logs/8/2/a2/status.json").await.unwrap()).unwrap();
    assert_eq!(status["state"], json!("error"));
    assert_eq!(status["batch_worker"]["error_kind"], json!("spec_missing"));
    assert!(h.logs_object("logs/8/2/a2/main/log").await.is_none());
}

#[tokio::test]
async fn a_failing_logs_store_changes_no_outcome() {
    // A store rooted at a regular file: every write fails.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let options = Options {
        logs: Arc::new(LocalFileSystem::new_with_prefix(&file).unwrap()),
        ..Options::default()
    };
    let h = Harness::with_options(options).await;
    bunch(&h, 9, "nolog", &[shell_spec(1, "echo hi; exit 3")]).await;
    h.accept(9, 1, "nolog").await;
    h.wait_event(9, 1, "complete_delivered").await;
    let exit3 = JobState::Done {
        outcome: Outcome::Failed {
            exit: ExitStatus::Code { code: 3 },
        },
    };
    assert_eq!(h.worker.state_of(9, 1).unwrap(), exit3);
    let events = h.worker.events(9, 1).unwrap();
    let failure = events
        .iter()
        .find_map(|e| match &e.event {
            Event::LogsUploadFailed { message } => Some(message.clone()),
            _ => None,
        })
        .expect("the failed upload is journaled");
    assert!(failure.contains("status.json"), "{failure}");
    assert_eq!(h.driver.received().complete[0].status.state, "failed");
}
