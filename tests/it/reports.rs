//! Reports to the driver: retried through failures, stopped by a 404.

use std::time::Duration;

use batch_worker::demo::driver::EmbeddedDriver;
use batch_worker::driver_client::{DriverClient, ReportError, ReportRetry};
use batch_worker::wire::{JobCompleteBody, JobCompleteStatus};
use batch_worker_model::JobState;
use reqwest::StatusCode;

use crate::support::{create_body, Harness};

#[tokio::test]
async fn job_complete_is_retried_until_the_driver_takes_it() {
    let h = Harness::in_memory().await;
    h.driver.refuse_next(3, StatusCode::SERVICE_UNAVAILABLE);
    // A missing spec: no process, so the only report is job_complete.
    assert_eq!(
        h.create(&create_body(1, 1, "gone", 1)).await.0,
        StatusCode::OK
    );
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
            status: (None, Some(1)),
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
