//! With a store whose every read hangs (or panics), creates still answer 200 (the
//! handler does no blob IO), jobs sit in `LoadingSpec`, and cancel ends
//! them `Done(cancelled)` without any report to the driver.

use std::sync::Arc;

use batch_worker_model::{ErrorKind, JobState, Outcome};
use object_store::memory::InMemory;
use object_store::path::Path;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{create_body, Harness, OnRead, TestStore};

#[tokio::test]
async fn creates_answer_while_blob_reads_hang_and_cancel_ends_the_loads() {
    let store = Arc::new(TestStore::new(Arc::new(InMemory::new()), OnRead::Hang));
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
    store.wait_reads(jobs as usize).await;
    let (_, status) = h.status(5, 3).await;
    // Hail's FakeJob: `pending` while its spec is read, no tasks yet.
    assert_eq!(status["state"], json!("pending"));
    assert_eq!(status["start_time"], json!(null));
    assert!(status.get("container_statuses").is_none(), "{status}");
    assert_eq!(
        status["batch_worker"]["worker_state"],
        json!({"state": "loading_spec"})
    );

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
    h.wait_event(5, 1, "logs_uploaded").await;
    assert!(h.driver.received().complete.is_empty());
    let (_, events) = h.get("/api/v1alpha/batches/5/jobs/1/events").await;
    let names: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "created",
            "spec_load_started",
            "cancel_requested",
            "logs_uploaded"
        ]
    );
}

#[tokio::test]
async fn a_store_that_panics_errors_the_job_instead_of_stranding_it() {
    let store = Arc::new(TestStore::new(Arc::new(InMemory::new()), OnRead::Panic));
    let h = Harness::start(store, Path::from("root"), Default::default()).await;
    h.accept(5, 1, "boom").await;
    let state = h.wait_final(5, 1).await;
    assert!(
        matches!(&state, JobState::Errored { kind: ErrorKind::SpecUnavailable, message } if message.contains("panics on read")),
        "{state:?}"
    );
    h.wait_reports(1).await;
    assert_eq!(h.driver.received().complete[0].status.state, "error");
    // The worker still serves.
    assert_eq!(h.get("/healthcheck").await.0, StatusCode::OK);
}
