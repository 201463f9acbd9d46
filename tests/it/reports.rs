//! Reports to the driver: activation first; retried through failures, a
//! slow driver and a driver restart; stopped by a 404; bounded in flight;
//! `marked_job_started` truthful.

use std::time::Duration;

use batch_worker::demo::driver::EmbeddedDriver;
use batch_worker::driver_client::{DriverClient, ReportError, ReportRetry};
use batch_worker::journal::JournalRecord;
use batch_worker::wire::{JobCompleteBody, JobCompleteStatus};
use batch_worker_model::{ErrorKind, Event, JobKey, JobState};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{bunch, create_body, shell_spec, Harness, Options, HANG_GUARD};

#[tokio::test]
async fn job_complete_is_retried_until_the_driver_takes_it() {
    let h = Harness::in_memory().await;
    h.driver.refuse_next(3, StatusCode::SERVICE_UNAVAILABLE);
    // A missing spec: no process, so the only report is job_complete.
    h.accept(1, 1, "gone").await;
    assert!(matches!(h.wait_final(1, 1).await, JobState::Errored { .. }));
    h.wait_reports(1).await;
    let received = h.driver.received();
    assert_eq!(received.refused, 3);
    assert_eq!(received.complete.len(), 1);
    assert_eq!(received.complete[0].status.state, "error");
    assert!(!received.complete[0].marked_job_started);
}

#[tokio::test]
async fn a_404_from_the_driver_stops_the_retries() {
    let driver = EmbeddedDriver::start().await.unwrap();
    let retry = ReportRetry {
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
        max_attempts: Some(20),
        ..ReportRetry::default()
    };
    let client = DriverClient::new(driver.url.clone(), "w".into(), "t".into(), retry).unwrap();
    let body = JobCompleteBody {
        status: JobCompleteStatus {
            version: 5,
            batch_id: 1,
            job_id: 1,
            attempt_id: "a".into(),
            job_group_id: 0,
            state: "error".into(),
            start_time: 1,
            end_time: 2,
            resources: vec![],
            status: serde_json::json!([null, 1]),
        },
        marked_job_started: false,
    };
    driver.refuse_next(1, StatusCode::NOT_FOUND);
    let err = client.job_complete(&body).await.unwrap_err();
    assert!(matches!(err, ReportError::Gone { .. }), "{err}");
    assert_eq!(driver.received().refused, 1, "exactly one call, no retry");

    driver.refuse_next(usize::MAX, StatusCode::INTERNAL_SERVER_ERROR);
    let err = client.job_complete(&body).await.unwrap_err();
    assert!(
        matches!(err, ReportError::GaveUp { attempts: 20, .. }),
        "{err}"
    );
    assert_eq!(driver.received().refused, 21);
    assert!(driver.received().complete.is_empty());
}

#[tokio::test]
async fn every_terminal_job_is_reported_through_a_failing_slow_and_restarting_driver() {
    let mut h = Harness::in_memory().await;
    let specs = [
        shell_spec(1, "exit 0"),
        shell_spec(2, "exit 3"),
        shell_spec(3, "echo hi"),
    ];
    bunch(&h, 4, "mixed", &specs).await;
    // Given a driver that is down while the jobs end
    h.driver.stop();
    for job_id in 1..=6 {
        // Jobs 4..=6 are past the bunch: spec_corrupt.
        h.accept(4, job_id, "mixed").await;
    }
    for job_id in 1..=6 {
        h.wait_final(4, job_id).await;
        h.wait_event(4, job_id, "logs_uploaded").await;
    }
    assert!(
        h.worker.reports_pending() > 0,
        "reports wait for the driver"
    );
    // When it comes back slow and failing its first calls
    h.driver.set_delay(Duration::from_millis(100));
    h.driver.refuse_next(4, StatusCode::BAD_GATEWAY);
    h.driver.restart().await.unwrap();
    // Then every job is reported, and each delivery is journaled
    for job_id in 1..=6 {
        h.wait_event(4, job_id, "complete_delivered").await;
    }
    let received = h.driver.received();
    let mut reported = h.reported_jobs();
    reported.dedup();
    assert_eq!(reported, [1, 2, 3, 4, 5, 6]);
    assert_eq!(received.refused, 4);
    assert_eq!(
        received.wrong_token, 0,
        "every call carries the instance token"
    );
    assert_eq!(received.missing_instance_header, 0);
    let state_of = |job_id| {
        received
            .complete
            .iter()
            .find(|c| c.status.job_id == job_id)
            .unwrap()
            .status
            .state
            .clone()
    };
    assert_eq!(state_of(1), "succeeded");
    assert_eq!(state_of(2), "failed");
    assert_eq!(state_of(5), "error");
    assert_eq!(h.worker.reports_pending(), 0);
}

#[tokio::test]
async fn marked_job_started_is_true_once_job_started_was_acknowledged() {
    let h = Harness::in_memory().await;
    // The job runs until the test lets it end, after job_started was
    // acknowledged: a job that ends first has its job_started dropped for
    // its job_complete (and marked false), however short it ran.
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let wait_for_go = format!("while [ ! -e '{}' ]; do sleep 0.01; done", go.display());
    bunch(&h, 5, "started", &[shell_spec(1, &wait_for_go)]).await;
    h.accept(5, 1, "started").await;
    h.wait_event(5, 1, "started_delivered").await;
    std::fs::write(&go, b"").unwrap();
    h.wait_event(5, 1, "complete_delivered").await;
    let received = h.driver.received();
    assert_eq!(received.started.len(), 1);
    assert_eq!(received.started[0].status.job_id, 1);
    assert!(received.complete[0].marked_job_started);
    let order: Vec<&str> = h
        .worker
        .events(5, 1)
        .unwrap()
        .iter()
        .map(|e| e.event.name())
        .filter(|n| n.ends_with("delivered") || *n == "logs_uploaded")
        .collect();
    assert_eq!(
        order,
        ["started_delivered", "logs_uploaded", "complete_delivered"]
    );
}

#[tokio::test]
async fn reports_go_out_concurrently_but_never_more_than_the_bound() {
    let options = Options {
        report_concurrency: 3,
        ..Options::default()
    };
    let h = Harness::with_options(options).await;
    // A driver that answers nothing until every report is on its way (a
    // fixed delay lets a loaded machine send them one by one).
    h.driver.hold();
    // Twelve jobs without a spec: twelve job_complete calls at once.
    for job_id in 1..=12 {
        h.accept(6, job_id, "none").await;
    }
    for job_id in 1..=12 {
        h.wait_event(6, job_id, "logs_uploaded").await;
    }
    // Every report task has started (their records are written), and the
    // bound's worth of calls are waiting at the driver.
    h.worker.sync_journal().await;
    let mut changes = h.driver.changes();
    tokio::time::timeout(HANG_GUARD, async {
        while h.driver.received().in_flight < 3 {
            changes.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("calls at the driver: {:?}", h.driver.received()));
    h.driver.release();
    h.wait_reports(12).await;
    let received = h.driver.received();
    eprintln!("most report calls at once: {}", received.max_in_flight);
    assert!(received.max_in_flight <= 3, "{}", received.max_in_flight);
    assert_eq!(received.max_in_flight, 3, "reports go out side by side");
}

#[tokio::test]
async fn creates_get_503_until_the_worker_is_activated() {
    let options = Options {
        activate: false,
        ..Options::default()
    };
    let h = Harness::with_options(options).await;
    let (status, answer) = h.create(&create_body(7, 1, "t", 1)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not activated"),
        "{answer}"
    );
    // Even a malformed create: the worker is not taking jobs (Hail's order).
    assert_eq!(
        h.create_raw("not json").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Hail's healthcheck: 503 until activated.
    assert_eq!(
        h.get("/healthcheck").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // A driver being deployed answers 404 at first: activation retries.
    h.driver.refuse_next(2, StatusCode::NOT_FOUND);
    h.worker.activate("127.0.0.1").await.unwrap();
    let received = h.driver.received();
    assert_eq!((received.refused, received.activations), (2, 1));
    assert_eq!(
        h.get("/healthcheck").await,
        (StatusCode::OK, json!({"name": "test-worker"}))
    );
    assert_eq!(h.create(&create_body(7, 1, "t", 1)).await.0, StatusCode::OK);
    h.wait_reports(1).await;
    assert_eq!(h.driver.received().wrong_token, 0);
}

#[tokio::test]
async fn reports_recovered_at_start_wait_for_activation() {
    // Given a journal whose attempt ended and uploaded its logs, unreported
    let key = JobKey {
        batch_id: 21,
        job_id: 1,
        attempt_id: "a1".into(),
    };
    let events = [
        Event::created(7),
        Event::SpecLoadStarted,
        Event::SpecLoadFailed {
            kind: ErrorKind::SpecMissing,
            message: "gone".into(),
        },
        Event::LogsUploaded,
    ];
    let records: Vec<JournalRecord> = events
        .into_iter()
        .enumerate()
        .map(|(i, event)| JournalRecord::new(1 + i as u64, 1_764_504_000_000, key.clone(), event))
        .collect();
    // When a worker opens on it before activating
    let h = Harness::with_options(Options {
        activate: false,
        journal: records,
        ..Options::default()
    })
    .await;
    assert_eq!(h.worker.recovery().redone, 1);
    assert_eq!(h.worker.reports_pending(), 1, "the report is queued");
    h.worker.sync_journal().await;
    assert!(h.driver.received().complete.is_empty(), "not sent yet");
    // Then it goes out after activation, with the instance token
    h.worker.activate("127.0.0.1").await.unwrap();
    h.wait_event(21, 1, "complete_delivered").await;
    let received = h.driver.received();
    assert_eq!(received.complete.len(), 1);
    assert_eq!(received.wrong_token, 0);
}
