//! Shutdown: SIGTERM or `POST /api/v1alpha/kill` stops taking jobs (503),
//! lets reports drain, flushes the journal and exits 0; a second SIGTERM
//! exits at once.

use std::time::{Duration, Instant};

use batch_worker::demo::driver::EmbeddedDriver;
use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use batch_worker::wire::CreateJob;
use batch_worker::worker::CreateError;
use batch_worker_model::{Event, JobState};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use object_store::local::LocalFileSystem;
use reqwest::StatusCode;

use crate::support::{bunch, create_body, shell_spec, Harness, ServeChild, HANG_GUARD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_refuses_creates_and_delivers_every_report() {
    let mut h = Harness::in_memory().await;
    let specs: Vec<_> = (1..=24)
        .map(|job_id| match job_id % 4 {
            0 => shell_spec(job_id, "sleep 30"),
            1 => shell_spec(job_id, "exit 1"),
            _ => shell_spec(job_id, "exit 0"),
        })
        .collect();
    bunch(&h, 12, "load", &specs).await;
    // A stalled driver: reports are still on the wire when the kill
    // arrives (with a fixed delay, a loaded machine could take longer to
    // get here than the reports take to be answered).
    h.driver.hold();
    for job_id in 1..=30 {
        // 25..=30 have no spec and error at once.
        h.accept(12, job_id, "load").await;
    }
    let quick: Vec<i64> = (1..=30).filter(|j| j % 4 != 0 || *j > 24).collect();
    for job_id in &quick {
        h.wait_event(12, *job_id, "logs_uploaded").await;
    }
    assert!(h.worker.reports_pending() > 0, "reports are in flight");
    // When the kill call arrives
    let response = h
        .http
        .post(h.url("/api/v1alpha/kill"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Then creates are refused
    let late =
        CreateJob::parse(&serde_json::to_vec(&create_body(12, 99, "load", 1)).unwrap()).unwrap();
    assert_eq!(
        h.worker.create(late).await.unwrap_err(),
        CreateError::ShuttingDown
    );
    // The driver answers again while the worker drains.
    h.driver.release();
    // and, once serve returns, every finished job's report was delivered
    // and journaled.
    h.shutdown().await;
    assert_eq!(h.worker.reports_pending(), 0);
    let mut reported = h.reported_jobs();
    reported.dedup();
    assert_eq!(reported, quick, "every finished job is reported");
    let delivered: Vec<i64> = h
        .journal_records()
        .iter()
        .filter(|r| r.event == Event::CompleteDelivered)
        .map(|r| r.key.job_id)
        .collect();
    for job_id in &quick {
        assert!(
            delivered.contains(job_id),
            "job {job_id}: no complete_delivered in the journal"
        );
    }
    // The sleepers were ended by the worker, not finished: still live in
    // the journal, they error as worker_restarted after a restart.
    assert!(matches!(
        h.worker.state_of(12, 4).unwrap(),
        JobState::Running { .. }
    ));
}

async fn serve_with_a_stubborn_job(
    grace_ms: &str,
) -> (ServeChild, tempfile::TempDir, EmbeddedDriver) {
    let dir = tempfile::tempdir().unwrap();
    let (data, specs) = (dir.path().join("data"), dir.path().join("specs"));
    std::fs::create_dir_all(&specs).unwrap();
    let spec = serde_json::to_vec(&shell_spec(1, "trap '' TERM; echo trapped; sleep 60")).unwrap();
    SpecStore::new(
        std::sync::Arc::new(LocalFileSystem::new_with_prefix(&specs).unwrap()),
        Default::default(),
        SpecLoadConfig::default(),
    )
    .unwrap()
    .write_bunch(13, "stubborn", &[spec])
    .await
    .unwrap();
    let driver = EmbeddedDriver::start().await.unwrap();
    let serve = ServeChild::start(
        &data,
        &specs,
        driver.url.as_str(),
        &["--kill-grace-ms", grace_ms],
    )
    .await;
    let http = reqwest::Client::new();
    let status = http
        .post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
        .json(&create_body(13, 1, "stubborn", 1))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    serve.wait_event(13, 1, "process_started").await;
    // `process_started` comes when the shell is spawned, before it runs
    // `trap`: a SIGTERM then would end the job at once. Its log says when
    // the trap is set.
    let log = format!("{}/api/v1alpha/batches/13/jobs/1/log/main", serve.base);
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let text = match http.get(&log).send().await {
                Ok(answer) => answer.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.contains("trapped") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stubborn job sets its trap");
    (serve, dir, driver)
}

/// Waits for the child's exit (polling: its exit is not an event here).
async fn exit_code(serve: &mut ServeChild) -> Option<i32> {
    let began = Instant::now();
    loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            return status.code();
        }
        assert!(began.elapsed() < HANG_GUARD, "the worker did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_jobs_and_exits_0() {
    let (mut serve, _dir, _driver) = serve_with_a_stubborn_job("200").await;
    kill(Pid::from_raw(serve.child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(exit_code(&mut serve).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    // A job that ignores SIGTERM and a 60 s grace: a graceful shutdown
    // would take a minute.
    let (mut serve, _dir, _driver) = serve_with_a_stubborn_job("60000").await;
    let pid = Pid::from_raw(serve.child.id() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    // The first signal began a shutdown that waits for the job; the
    // listener is closed once it has begun.
    let http = reqwest::Client::new();
    tokio::time::timeout(HANG_GUARD, async {
        while http
            .get(format!("{}/healthcheck", serve.base))
            .send()
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the first SIGTERM stops the listener");
    assert!(serve.child.try_wait().unwrap().is_none(), "still draining");
    let began = Instant::now();
    kill(pid, Signal::SIGTERM).unwrap();
    assert_eq!(exit_code(&mut serve).await, Some(1));
    eprintln!(
        "exited {} ms after the second SIGTERM",
        began.elapsed().as_millis()
    );
}
