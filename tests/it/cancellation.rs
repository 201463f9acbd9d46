//! Cancel in every state: the in-flight blob read is aborted, the admission
//! wait is left, the process group is ended (SIGTERM, then SIGKILL after the
//! grace period); the attempt ends `Done(cancelled)` and no `job_complete`
//! for it reaches the driver.

use std::sync::Arc;

use batch_worker::admission::Capacity;
use batch_worker_model::{JobState, Outcome, RunPhase};
use object_store::memory::InMemory;
use object_store::path::Path;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{
    bunch, create_body, shell_spec, wait_group_gone, Harness, OnRead, Options, TestStore,
};

const CANCELLED: JobState = JobState::Done {
    outcome: Outcome::Cancelled,
};

fn event_names(h: &Harness, batch_id: i64, job_id: i64) -> Vec<&'static str> {
    h.worker
        .events(batch_id, job_id)
        .unwrap()
        .iter()
        .map(|e| e.event.name())
        .collect()
}

#[tokio::test]
async fn cancel_while_accepted_or_loading_spec_aborts_the_blob_read() {
    let store = Arc::new(TestStore::new(Arc::new(InMemory::new()), OnRead::Hang));
    let h = Harness::start(store.clone(), Path::from("root"), Default::default()).await;
    for job_id in 1..=3 {
        let (status, _) = h.create(&create_body(3, job_id, "hangs", 1)).await;
        assert_eq!(status, StatusCode::OK);
    }
    // Given three reads hanging in the store
    store.wait_in_flight(3).await;
    // When each job is cancelled
    for job_id in 1..=3 {
        assert_eq!(h.cancel(3, job_id).await.0, StatusCode::OK);
    }
    // Then every read is dropped (aborted), and each attempt is cancelled
    store.wait_in_flight(0).await;
    for job_id in 1..=3 {
        assert_eq!(h.wait_final(3, job_id).await, CANCELLED);
        h.wait_event(3, job_id, "logs_uploaded").await;
        assert_eq!(
            event_names(&h, 3, job_id),
            [
                "created",
                "spec_load_started",
                "cancel_requested",
                "logs_uploaded"
            ]
        );
    }
    assert!(h.driver.received().complete.is_empty());
}

#[tokio::test]
async fn cancel_right_after_create_ends_the_attempt_whatever_its_state() {
    let h = Harness::in_memory().await;
    bunch(&h, 4, "soon", &[shell_spec(1, "sleep 30")]).await;
    h.accept(4, 1, "soon").await;
    // Accepted, loading, waiting or starting: whichever it is, a cancel
    // ends it without a report.
    assert_eq!(h.cancel(4, 1).await.0, StatusCode::OK);
    assert_eq!(h.wait_final(4, 1).await, CANCELLED);
    h.wait_event(4, 1, "logs_uploaded").await;
    assert!(h.driver.received().complete.is_empty());
}

#[tokio::test]
async fn cancel_while_waiting_for_resources_leaves_the_queue() {
    let options = Options {
        capacity: Capacity {
            cores_mcpu: 1000,
            memory_bytes: 1 << 30,
        },
        ..Options::default()
    };
    let h = Harness::with_options(options).await;
    let one_core = |job_id, script| {
        let mut spec = shell_spec(job_id, script);
        spec["resources"]["cores_mcpu"] = json!(1000);
        spec
    };
    bunch(
        &h,
        5,
        "queue",
        &[
            one_core(1, "sleep 30"),
            one_core(2, "sleep 30"),
            one_core(3, "echo freed"),
        ],
    )
    .await;
    // Given job 1 holding the only core and job 2 queued behind it
    h.accept(5, 1, "queue").await;
    let pid = h.wait_executing(5, 1).await;
    h.accept(5, 2, "queue").await;
    h.wait_for(5, 2, |s| {
        *s == JobState::Running {
            phase: RunPhase::WaitingForResources,
        }
    })
    .await;
    let (_, status) = h.status(5, 2).await;
    assert_eq!(status["state"], json!("pending"));
    // When job 2 is cancelled, it leaves the queue without ever starting
    assert_eq!(h.cancel(5, 2).await.0, StatusCode::OK);
    assert_eq!(h.wait_final(5, 2).await, CANCELLED);
    h.wait_event(5, 2, "logs_uploaded").await;
    assert_eq!(
        event_names(&h, 5, 2),
        [
            "created",
            "spec_load_started",
            "spec_loaded",
            "cancel_requested",
            "logs_uploaded"
        ]
    );
    // And when job 1 is cancelled, its group ends and its core is freed:
    // job 3 runs.
    assert_eq!(h.cancel(5, 1).await.0, StatusCode::OK);
    assert_eq!(h.wait_final(5, 1).await, CANCELLED);
    wait_group_gone(pid).await;
    h.accept(5, 3, "queue").await;
    assert_eq!(
        h.wait_final(5, 3).await,
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
    h.wait_reports(1).await;
    h.wait_event(5, 1, "logs_uploaded").await;
    assert_eq!(h.reported_jobs(), [3], "only the job that ran is reported");
}

#[tokio::test]
async fn cancel_while_running_sigkills_a_group_that_ignores_sigterm() {
    let h = Harness::in_memory().await;
    // `trap '' TERM` is inherited: the shell and both sleeps ignore
    // SIGTERM, so only the SIGKILL after the grace period (2 s) ends them.
    bunch(
        &h,
        6,
        "stubborn",
        &[shell_spec(1, "trap '' TERM; sleep 30 & sleep 30; wait")],
    )
    .await;
    h.accept(6, 1, "stubborn").await;
    let pid = h.wait_executing(6, 1).await;
    h.wait_event(6, 1, "started_delivered").await;
    assert_eq!(h.cancel(6, 1).await.0, StatusCode::OK);
    assert_eq!(h.wait_final(6, 1).await, CANCELLED);
    wait_group_gone(pid).await;
    h.wait_event(6, 1, "logs_uploaded").await;
    let received = h.driver.received();
    assert_eq!(received.started.len(), 1, "job_started was sent");
    assert!(
        received.complete.is_empty(),
        "a cancelled job is not reported"
    );
}
