//! The outbox is durable: a report not yet acknowledged when the worker is
//! SIGKILLed is sent after the restart, and one that was acknowledged
//! (`complete_delivered` in the journal) is never sent again.

use batch_worker::demo::driver::EmbeddedDriver;
use reqwest::StatusCode;

use crate::support::{create_body, ServeChild, HANG_GUARD};

const BATCH: i64 = 11;

async fn create(http: &reqwest::Client, serve: &ServeChild, job_id: i64) -> StatusCode {
    http.post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
        .json(&create_body(BATCH, job_id, "none", 1))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_report_is_lost_or_sent_again_across_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (data, specs) = (dir.path().join("data"), dir.path().join("specs"));
    std::fs::create_dir_all(&specs).unwrap();
    let mut driver = EmbeddedDriver::start().await.unwrap();
    let http = reqwest::Client::new();
    let mut serve = ServeChild::start(&data, &specs, driver.url.as_str(), &[]).await;

    // Given jobs 1..=3 reported and acknowledged (no spec: they error)
    for job_id in 1..=3 {
        assert_eq!(create(&http, &serve, job_id).await, StatusCode::OK);
    }
    for job_id in 1..=3 {
        serve.wait_event(BATCH, job_id, "complete_delivered").await;
    }
    // and jobs 4..=6 finished while the driver is down. Their creates'
    // 200s also mean the earlier `complete_delivered` records are on disk:
    // the journal writes records in order.
    driver.stop();
    for job_id in 4..=6 {
        assert_eq!(create(&http, &serve, job_id).await, StatusCode::OK);
    }
    for job_id in 4..=6 {
        serve.wait_event(BATCH, job_id, "logs_uploaded").await;
    }
    // When the worker is SIGKILLed and restarted, and the driver is back
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    driver.restart().await.unwrap();
    let serve = ServeChild::start(&data, &specs, driver.url.as_str(), &[]).await;
    // Then the unacknowledged reports arrive
    let mut changes = driver.changes();
    tokio::time::timeout(HANG_GUARD, async {
        while !(4..=6).all(|j| {
            driver
                .received()
                .complete
                .iter()
                .any(|c| c.status.job_id == j)
        }) {
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("the reports pending at the kill are delivered after the restart");
    for job_id in 4..=6 {
        serve.wait_event(BATCH, job_id, "complete_delivered").await;
    }
    // and nothing acknowledged before the kill is sent again: a SIGTERM
    // drains every report still pending before the worker exits, so any
    // re-send would have reached the driver by then.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exited = tokio::task::spawn_blocking(move || {
        let mut serve = serve;
        serve.child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(exited.success(), "{exited}");
    let received = driver.received();
    for job_id in 1..=3 {
        let times = received
            .complete
            .iter()
            .filter(|c| c.status.job_id == job_id)
            .count();
        assert_eq!(times, 1, "job {job_id} was reported {times} times");
    }
    assert!(received
        .complete
        .iter()
        .all(|c| c.status.state == "error" && !c.marked_job_started));
}
