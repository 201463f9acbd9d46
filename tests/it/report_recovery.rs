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
    assert!(received.violations.is_empty(), "{:#?}", received.violations);
    assert_eq!(received.deactivations, 1, "the SIGTERM deactivates");
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

/// Hail's `marked_job_started` across a SIGKILL: a job whose `job_started`
/// the driver acknowledged before the kill is reported `true` after the
/// restart (the acknowledgement is in the journal), and one whose
/// `job_started` was unanswered at the kill gets it sent again by the
/// restarted worker, before its `job_complete`. The reports keep Hail's
/// shapes, and the SIGTERM at the end deactivates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marked_job_started_is_exact_across_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (data, specs) = (dir.path().join("data"), dir.path().join("specs"));
    std::fs::create_dir_all(&specs).unwrap();
    crate::support::let_job_user_pass(&data);
    let go = |j: i64| dir.path().join(format!("go{j}"));
    let bunch: Vec<Vec<u8>> = (1..=2)
        .map(|j| {
            let wait = format!("while [ ! -e '{}' ]; do sleep 0.05; done", go(j).display());
            serde_json::to_vec(&crate::support::shell_spec(j, &wait)).unwrap()
        })
        .collect();
    crate::support::write_local_bunch(&specs, 12, "marked", &bunch).await;
    let mut driver = EmbeddedDriver::start().await.unwrap();
    let http = reqwest::Client::new();
    let mut serve = ServeChild::start(&data, &specs, driver.url.as_str(), &[]).await;
    let create = |job_id: i64| {
        http.post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
            .json(&create_body(12, job_id, "marked", 1))
            .send()
    };
    // Job 1's job_started is acknowledged.
    assert_eq!(create(1).await.unwrap().status(), StatusCode::OK);
    serve.wait_event(12, 1, "started_delivered").await;
    // Job 2's job_started is on the wire, unanswered, at the kill.
    driver.hold();
    assert_eq!(create(2).await.unwrap().status(), StatusCode::OK);
    let mut changes = driver.changes();
    tokio::time::timeout(HANG_GUARD, async {
        while driver.received().in_flight == 0 {
            changes.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    // Job 1 ends while no worker runs (its shim records when), well before
    // the restart.
    std::fs::write(go(1), b"").unwrap();
    let exit_json = data.join("jobs/12/1/a1/exit.json");
    tokio::time::timeout(HANG_GUARD, async {
        while !std::fs::read(&exit_json).is_ok_and(|b| b.starts_with(b"{")) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let ended_by = batch_worker::worker::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    // The held call's answer goes nowhere: the worker that sent it is gone
    // (the driver took it, so only the restarted worker's own job_started
    // can make its job_complete say `true`).
    driver.release();
    driver.restart().await.unwrap();
    let serve = ServeChild::start(&data, &specs, driver.url.as_str(), &[]).await;
    serve.wait_event(12, 2, "started_delivered").await;
    std::fs::write(go(2), b"").unwrap();
    for job_id in 1..=2 {
        serve.wait_event(12, job_id, "complete_delivered").await;
    }
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
    assert!(received.violations.is_empty(), "{:#?}", received.violations);
    assert!(
        received.unmarked_acknowledged.is_empty(),
        "{:?}",
        received.unmarked_acknowledged
    );
    for job_id in 1..=2 {
        let complete: Vec<_> = received
            .complete
            .iter()
            .filter(|c| c.status.job_id == job_id)
            .collect();
        assert_eq!(complete.len(), 1, "job {job_id}");
        assert!(complete[0].marked_job_started, "job {job_id}");
        assert_eq!(complete[0].status.state, "succeeded");
        assert_eq!(
            complete[0].status.status,
            serde_json::json!([
                0,
                complete[0].status.end_time - complete[0].status.start_time
            ])
        );
    }
    assert_eq!(received.deactivations, 1);
    // Job 1 is billed to its own end, not to the restart 2.5 s later.
    let job1 = received
        .complete
        .iter()
        .find(|c| c.status.job_id == 1)
        .unwrap();
    assert!(
        job1.status.end_time <= ended_by,
        "end_time {} is after the job ended ({ended_by})",
        job1.status.end_time
    );
}
