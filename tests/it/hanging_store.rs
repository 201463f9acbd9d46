//! With a store whose every read hangs, creates still answer 200 (the
//! handler does no blob IO), jobs sit in `LoadingSpec`, and cancel ends
//! them `Done(cancelled)` without any report to the driver.

use std::sync::Arc;

use batch_worker_model::{JobState, Outcome};
use object_store::memory::InMemory;
use object_store::path::Path;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{create_body, Harness, TestStore};

#[tokio::test]
async fn creates_answer_while_blob_reads_hang_and_cancel_ends_the_loads() {
    let store = Arc::new(TestStore::new(Arc::new(InMemory::new()), true));
    let h = Harness::start(store.clone(), Path::from("root"), Default::default()).await;
    let jobs = 50;
    for job_id in 1..=jobs {
        let (status, body) = h.create(&create_body(5, job_id, "hangs", 1)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for job_id in 1..=jobs {
        h.wait_for(5, job_id, |s| *s == JobState::LoadingSpec).await;
    }
    // Every load is stuck inside the store, not before it.
    h.worker
        .wait_until(|_| store.reads().len() >= jobs as usize)
        .await;
    let (_, status) = h.status(5, 3).await;
    assert_eq!(status["state"], json!("initializing"));
    assert_eq!(status["worker_state"], json!({"state": "loading_spec"}));

    for job_id in 1..=jobs {
        let (status, answer) = h.cancel(5, job_id).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["state"], json!("cancelled"));
    }
    for job_id in 1..=jobs {
        assert_eq!(
            h.worker.state_of(5, job_id).unwrap(),
            JobState::Done {
                outcome: Outcome::Cancelled
            }
        );
    }
    // Cancelling again is harmless; a cancelled job is never reported.
    assert_eq!(h.cancel(5, 1).await.0, StatusCode::OK);
    assert!(h.driver.received().complete.is_empty());
    let (_, events) = h.get("/api/v1alpha/batches/5/jobs/1/events").await;
    let names: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["created", "spec_load_started", "cancel_requested"]);
}
