//! Transient store errors are retried; errors that outlast the retries
//! end `spec_unavailable`; a load past its deadline ends `spec_timeout`;
//! loads in flight are capped.

use std::sync::Arc;
use std::time::Duration;

use batch_worker::spec_store::SpecLoadConfig;
use batch_worker_model::{ErrorKind, JobState, Outcome};
use object_store::memory::InMemory;
use object_store::path::Path;
use reqwest::StatusCode;

use crate::support::{create_body, shell_spec, Harness, OnRead, TestStore};

fn fast_retries(max_attempts: usize) -> SpecLoadConfig {
    SpecLoadConfig {
        max_attempts,
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..SpecLoadConfig::default()
    }
}

async fn errored_kind(h: &Harness, batch_id: i64, job_id: i64) -> (ErrorKind, String) {
    match h.wait_final(batch_id, job_id).await {
        JobState::Errored { kind, message } => (kind, message),
        other => panic!("want errored, got {other:?}"),
    }
}

#[tokio::test]
async fn transient_errors_within_the_attempts_are_retried_to_success() {
    let inner = Arc::new(InMemory::new());
    let store = Arc::new(TestStore::new(inner, OnRead::FailFirst(3)));
    let h = Harness::start(store.clone(), Path::from("r"), fast_retries(5)).await;
    h.writer
        .write_bunch(
            1,
            "flaky",
            &[serde_json::to_vec(&shell_spec(1, "true")).unwrap()],
        )
        .await
        .unwrap();
    h.accept(1, 1, "flaky").await;
    assert_eq!(
        h.wait_final(1, 1).await,
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
    // 3 failed reads (each checked with a head, which also failed or not),
    // then the two range reads.
    assert!(store.reads().len() >= 5, "{:?}", store.reads());
}

#[tokio::test]
async fn errors_outlasting_the_attempts_end_spec_unavailable() {
    let store = Arc::new(TestStore::new(
        Arc::new(InMemory::new()),
        OnRead::FailFirst(usize::MAX),
    ));
    let h = Harness::start(store.clone(), Path::from("r"), fast_retries(3)).await;
    h.accept(1, 1, "down").await;
    let (kind, message) = errored_kind(&h, 1, 1).await;
    assert_eq!(kind, ErrorKind::SpecUnavailable);
    assert!(message.contains("after 3 attempts"), "{message}");
    assert!(message.contains("HTTP 503"), "{message}");
    assert!(message.starts_with("1/bunch/down/specs.idx:"), "{message}");
    h.wait_reports(1).await;
    assert_eq!(h.driver.received().complete[0].status.state, "error");
}

#[tokio::test]
async fn a_load_past_its_deadline_ends_spec_timeout() {
    let store = Arc::new(TestStore::new(Arc::new(InMemory::new()), OnRead::Hang));
    let config = SpecLoadConfig {
        deadline: Duration::from_millis(50),
        ..SpecLoadConfig::default()
    };
    let h = Harness::start(store, Path::from("r"), config).await;
    h.accept(1, 1, "slow").await;
    let (kind, message) = errored_kind(&h, 1, 1).await;
    assert_eq!(kind, ErrorKind::SpecTimeout);
    assert!(message.contains("50 ms deadline"), "{message}");
}

#[tokio::test]
async fn spec_loads_in_flight_are_capped() {
    let store = Arc::new(TestStore::new(Arc::new(InMemory::new()), OnRead::Hang));
    let config = SpecLoadConfig {
        max_concurrent_loads: 3,
        ..SpecLoadConfig::default()
    };
    let h = Harness::start(store.clone(), Path::from("r"), config).await;
    // One bunch per job, so a read's key names its job.
    for job_id in 1..=20 {
        let token = format!("t{job_id}");
        assert_eq!(
            h.create(&create_body(1, job_id, &token, 1)).await.0,
            StatusCode::OK
        );
    }
    for job_id in 1..=20 {
        h.wait_for(1, job_id, |s| *s == JobState::LoadingSpec).await;
    }
    store.wait_reads(3).await;
    tokio::task::yield_now().await;
    let reads = store.reads();
    assert_eq!(reads.len(), 3, "only 3 loads may be in flight: {reads:?}");
    // Cancelling a load that holds a permit lets exactly one more in.
    let holder: i64 = reads[0]
        .split('/')
        .nth(3)
        .and_then(|t| t.strip_prefix('t'))
        .and_then(|id| id.parse().ok())
        .expect("key r/1/bunch/t{job}/specs.idx");
    h.cancel(1, holder).await;
    store.wait_reads(4).await;
    tokio::task::yield_now().await;
    assert_eq!(store.reads().len(), 4, "{:?}", store.reads());
    for job_id in 1..=20 {
        h.cancel(1, job_id).await;
    }
    assert!(h.worker.snapshot().iter().all(|(_, s)| s.is_terminal()));
}
