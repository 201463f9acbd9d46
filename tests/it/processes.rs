//! Valid specs run as real processes; the status JSON and the driver's
//! `job_complete` agree on how each ended.

use batch_worker_model::{ErrorKind, ExitStatus, JobState, Outcome, RunPhase};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{
    bunch, create_body, live_group_members, shell_spec, wait_group_gone, Harness,
};

fn complete_for(h: &Harness, job_id: i64) -> Value {
    let received = h.driver.received();
    let matching: Vec<_> = received
        .complete
        .iter()
        .filter(|c| c.status.job_id == job_id)
        .collect();
    assert_eq!(matching.len(), 1, "one job_complete for job {job_id}");
    serde_json::to_value(matching[0]).unwrap()
}

#[tokio::test]
async fn exit_codes_end_succeeded_or_failed_and_status_agrees_with_the_driver() {
    let h = Harness::in_memory().await;
    bunch(
        &h,
        2,
        "exits",
        &[
            shell_spec(1, "echo out; echo err >&2; exit 0"),
            shell_spec(2, "exit 3"),
        ],
    )
    .await;
    for job_id in [1, 2] {
        h.accept(2, job_id, "exits").await;
    }
    assert_eq!(
        h.wait_final(2, 1).await,
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
    assert_eq!(
        h.wait_final(2, 2).await,
        JobState::Done {
            outcome: Outcome::Failed {
                exit: ExitStatus::Code { code: 3 }
            }
        }
    );
    h.wait_reports(2).await;
    for (job_id, state, code) in [(1, "succeeded", 0), (2, "failed", 3)] {
        let (_, status) = h.status(2, job_id).await;
        assert_eq!(status["state"], json!(state));
        assert_eq!(
            status["container_statuses"]["main"]["container_status"]["exit_code"],
            json!(code)
        );
        let complete = complete_for(&h, job_id);
        assert_eq!(complete["status"]["state"], json!(state));
        assert_eq!(complete["status"]["status"][0], json!(code));
        assert_eq!(complete["status"]["attempt_id"], status["attempt_id"]);
        assert_eq!(complete["status"]["start_time"], status["start_time"]);
        assert!(complete["status"]["status"][1].is_u64());
        if complete["marked_job_started"] == json!(true) {
            assert!(h
                .driver
                .received()
                .started
                .iter()
                .any(|s| s.status.job_id == job_id));
        }
    }
    let log = h.log_text(2, 1).await;
    assert_eq!(log, "out\nerr\n");
    let (status, _) = h.get("/api/v1alpha/batches/2/jobs/1/log/input").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(h.driver.received().missing_instance_header, 0);
}

#[tokio::test]
async fn env_is_spec_then_request_and_the_job_runs_in_its_own_directory() {
    let h = Harness::in_memory().await;
    let mut spec = shell_spec(
        4,
        "echo \"$STAGE $REGION $HAIL_JOB_ID $HAIL_ATTEMPT_ID\"; pwd",
    );
    spec["env"] = json!([{"name": "STAGE", "value": "spec"}, {"name": "REGION", "value": "spec"}]);
    bunch(&h, 9, "env", &[spec]).await;
    let mut body = create_body(9, 4, "env", 4);
    body["job_spec"]["env"] = json!([{"name": "REGION", "value": "request"}]);
    assert_eq!(h.create(&body).await.0, StatusCode::OK);
    h.wait_final(9, 4).await;
    let log = std::fs::read_to_string(h.worker.main_log(9, 4).unwrap()).unwrap();
    let work = h.data.path().join("jobs/9/4/a4/work");
    assert_eq!(log, format!("spec request 4 a4\n{}\n", work.display()));
}

#[tokio::test]
async fn a_timeout_errors_the_job_as_hail_does_with_no_exit_code() {
    let h = Harness::in_memory().await;
    let mut spec = shell_spec(1, "sleep 30");
    spec["timeout"] = json!(0.3);
    bunch(&h, 4, "slow", &[spec]).await;
    h.accept(4, 1, "slow").await;
    assert_eq!(
        h.wait_final(4, 1).await,
        JobState::Done {
            outcome: Outcome::Failed {
                exit: ExitStatus::TimedOut { timeout_ms: 300 }
            }
        }
    );
    h.wait_reports(1).await;
    // Hail's container raises a timeout error: the job is `error`, the
    // container `error` with `short_error` "timed out".
    let complete = complete_for(&h, 1);
    assert_eq!(complete["status"]["state"], json!("error"));
    assert_eq!(complete["status"]["status"][0], Value::Null);
    let (_, status) = h.status(4, 1).await;
    let main = &status["container_statuses"]["main"];
    assert_eq!(
        (&main["state"], &main["short_error"]),
        (&json!("error"), &json!("timed out"))
    );
}

#[tokio::test]
async fn cancel_while_running_ends_the_process_group_and_is_not_reported() {
    let h = Harness::in_memory().await;
    // The shell starts a child; both must end.
    bunch(&h, 6, "long", &[shell_spec(1, "sleep 30 & sleep 30; wait")]).await;
    h.accept(6, 1, "long").await;
    let running = h
        .wait_for(6, 1, |s| {
            matches!(
                s,
                JobState::Running {
                    phase: RunPhase::Executing { .. }
                }
            )
        })
        .await;
    let JobState::Running {
        phase: RunPhase::Executing { pid },
    } = running
    else {
        unreachable!()
    };
    let (status, answer) = h.cancel(6, 1).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer["worker_state"]["phase"]["phase"],
        json!("cancelling")
    );
    assert_eq!(
        h.wait_final(6, 1).await,
        JobState::Done {
            outcome: Outcome::Cancelled
        }
    );
    wait_group_gone(pid).await;
    assert!(h.driver.received().complete.is_empty());
}

#[tokio::test]
async fn launch_failures_and_inline_specs() {
    let h = Harness::in_memory().await;
    let mut missing_program = shell_spec(1, "");
    missing_program["process"]["command"] = json!(["/no/such/program"]);
    bunch(&h, 8, "launch", &[missing_program]).await;
    h.accept(8, 1, "launch").await;
    let state = h.wait_final(8, 1).await;
    assert!(
        matches!(&state, JobState::Errored { kind: ErrorKind::LaunchFailed, message } if message.contains("/no/such/program")),
        "{state:?}"
    );

    let mut inline = create_body(8, 2, "unused", 1);
    inline["format_version"] = json!(1);
    inline["token"] = Value::Null;
    inline["start_job_id"] = Value::Null;
    let mut spec = shell_spec(2, "exit 5");
    spec["attempt_id"] = json!("inl1");
    spec["job_group_id"] = json!(0);
    inline["job_spec"] = spec;
    assert_eq!(h.create(&inline).await.0, StatusCode::OK);
    assert_eq!(
        h.wait_final(8, 2).await,
        JobState::Done {
            outcome: Outcome::Failed {
                exit: ExitStatus::Code { code: 5 }
            }
        }
    );
    h.wait_reports(2).await;
    assert_eq!(complete_for(&h, 1)["status"]["state"], json!("error"));
}

/// Like the binary: the runtime ends right after `serve` returns, so only
/// what `serve` itself finished counts.
#[test]
fn shutdown_ends_running_jobs_before_serve_returns() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (pid, reported) = runtime.block_on(async {
        let mut h = Harness::in_memory().await;
        bunch(
            &h,
            7,
            "long",
            &[shell_spec(1, "trap '' TERM; sleep 30 & sleep 30; wait")],
        )
        .await;
        h.accept(7, 1, "long").await;
        let pid = h.wait_executing(7, 1).await;
        h.shutdown().await;
        (pid, h.driver.received().complete.len())
    });
    runtime.shutdown_background();
    assert_eq!(reported, 0, "no report for work the worker abandons");
    let deadline = std::time::Instant::now() + crate::support::HANG_GUARD;
    while !live_group_members(pid).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "processes of group {pid} outlived the worker: {:?}",
            live_group_members(pid)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
