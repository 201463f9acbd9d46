//! Jobs survive a worker restart: `serve` hands each host job to a shim,
//! and is killed with SIGKILL at random moments while jobs run, round
//! after round. After each restart the worker re-attaches to every job
//! still running (and to those that ended while it was down), so that:
//! no acknowledged job is lost, none runs twice, none is left running
//! after its job ended, and every report says what really happened (a
//! job that ran to its end is reported with its own exit, never
//! `worker_restarted`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use batch_worker::demo::driver::EmbeddedDriver;
use rand::Rng;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{
    create_body, let_job_user_pass, shell_spec, write_local_bunch, ServeChild, HANG_GUARD,
};

const BATCH: i64 = 41;
const ROUNDS: i64 = 3;
const PER_ROUND: i64 = 20;

/// What a job's script wrote to its file in `runs`: `start` when it began,
/// `end` when it finished.
fn marks(runs: &Path, job_id: i64) -> Vec<String> {
    std::fs::read_to_string(runs.join(job_id.to_string()))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The workers' log lines about job `job_id` (attempt `a{job_id}`), to
/// explain a failure.
fn worker_lines(dir: &Path, job_id: i64) -> String {
    let needle = format!("{BATCH}:{job_id}/a{job_id}");
    let other = format!("job_id={job_id} ");
    let mut lines = Vec::new();
    for round in 0..=ROUNDS {
        let text =
            std::fs::read_to_string(dir.join(format!("serve-{round}.log"))).unwrap_or_default();
        lines.push(format!("--- serve {round}"));
        lines.extend(
            text.lines()
                .filter(|l| l.contains(&needle) || l.contains(&other))
                .map(str::to_owned),
        );
    }
    lines.join("\n")
}

/// Processes whose command line holds `marker`.
fn with_marker(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(marker)
                .then_some(pid)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_rounds_lose_nothing_run_nothing_twice_and_report_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let (data, specs, runs) = (
        dir.path().join("data"),
        dir.path().join("specs"),
        dir.path().join("runs"),
    );
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::create_dir_all(&runs).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&runs, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let_job_user_pass(&runs);
    let marker = format!("REATTACH{}", std::process::id());
    let total = ROUNDS * PER_ROUND;
    let code_of = |job_id: i64| if job_id % 5 == 0 { 3 } else { 0 };
    let bunch: Vec<Vec<u8>> = (1..=total)
        .map(|job_id| {
            let sleep = ["0.3", "1.2", "2.5"][(job_id % 3) as usize];
            let file = runs.join(job_id.to_string());
            let script = format!(
                ": {marker}; echo start >> {f}; sleep {sleep}; echo end >> {f}; exit {code}",
                f = file.display(),
                code = code_of(job_id)
            );
            serde_json::to_vec(&shell_spec(job_id, &script)).unwrap()
        })
        .collect();
    write_local_bunch(&specs, BATCH, "reattach", &bunch).await;
    let driver = EmbeddedDriver::start().await.unwrap();
    let http = reqwest::Client::new();
    let mut accepted = Vec::new();
    let mut reattached = 0;
    for round in 0..ROUNDS {
        let log = dir.path().join(format!("serve-{round}.log"));
        let mut serve =
            ServeChild::start_logging(&data, &specs, driver.url.as_str(), &[], &log).await;
        let first = round * PER_ROUND + 1;
        let creates = (first..first + PER_ROUND).map(|job_id| {
            let request = http
                .post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
                .json(&create_body(BATCH, job_id, "reattach", 1));
            let delay = Duration::from_millis(40 * (job_id - first) as u64);
            async move {
                tokio::time::sleep(delay).await;
                (job_id, request.send().await.map(|r| r.status()))
            }
        });
        let killer = async {
            let wait = rand::rng().random_range(600..1600);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            serve.child.kill().unwrap();
        };
        let (results, ()) = tokio::join!(futures::future::join_all(creates), killer);
        serve.child.wait().unwrap();
        for (job_id, result) in results {
            if matches!(result, Ok(StatusCode::OK)) {
                accepted.push(job_id);
            }
        }
        let running = with_marker(&marker).len();
        eprintln!(
            "round {round}: {} accepted so far; {running} job processes outlive the kill -9",
            accepted.len()
        );
        reattached += running;
    }
    assert!(reattached > 0, "some jobs were running at a kill -9");
    // The last start: everything ends.
    let last_log = dir.path().join(format!("serve-{ROUNDS}.log"));
    let serve = ServeChild::start_logging(&data, &specs, driver.url.as_str(), &[], &last_log).await;
    let mut states = BTreeMap::new();
    for job_id in &accepted {
        let url = format!(
            "{}/api/v1alpha/batches/{BATCH}/jobs/{job_id}/status",
            serve.base
        );
        let status: Value = tokio::time::timeout(HANG_GUARD, async {
            loop {
                let response = http.get(&url).send().await.unwrap();
                assert_eq!(
                    response.status(),
                    StatusCode::OK,
                    "accepted job {job_id} lost"
                );
                let status: Value = response.json().await.unwrap();
                if ["succeeded", "failed", "error", "cancelled"]
                    .contains(&status["state"].as_str().unwrap_or(""))
                {
                    break status;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("job {job_id} never ended"));
        states.insert(*job_id, status);
    }
    // Nothing runs twice; a job that ran to its end is reported with its
    // own exit; one that did not is reported worker_restarted.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (job_id, status) in &states {
        let marks = marks(&runs, *job_id);
        let starts = marks.iter().filter(|m| *m == "start").count();
        let ended = marks.iter().any(|m| m == "end");
        assert!(starts <= 1, "job {job_id} ran {starts} times: {marks:?}");
        let state = status["state"].as_str().unwrap();
        let kind = status["batch_worker"]["error_kind"].as_str();
        if ended {
            let expected = if code_of(*job_id) == 0 {
                "succeeded"
            } else {
                "failed"
            };
            assert_eq!(
                state,
                expected,
                "job {job_id} ran to its end: {status}\n{}",
                worker_lines(dir.path(), *job_id)
            );
            let exit = &status["container_statuses"]["main"]["container_status"]["exit_code"];
            assert_eq!(
                exit,
                &Value::from(code_of(*job_id)),
                "job {job_id}: {status}"
            );
            *counts
                .entry(if state == "succeeded" {
                    "ran, succeeded"
                } else {
                    "ran, failed"
                })
                .or_default() += 1;
        } else {
            assert_eq!(
                kind,
                Some("worker_restarted"),
                "job {job_id} did not end by itself: {status} {marks:?}"
            );
            *counts
                .entry(if starts == 1 {
                    "started, ended by a restart"
                } else {
                    "never started"
                })
                .or_default() += 1;
        }
    }
    eprintln!("{} accepted of {total}: {counts:?}", accepted.len());
    // No job process is left.
    tokio::time::timeout(Duration::from_secs(10), async {
        while !with_marker(&marker).is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("job processes left: {:?}", with_marker(&marker)));
    // Every report agrees with the status.
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let received = driver.received();
            let reported: std::collections::BTreeSet<i64> =
                received.complete.iter().map(|c| c.status.job_id).collect();
            if accepted.iter().all(|j| reported.contains(j)) {
                // Through every SIGKILL: the calls as Hail's driver takes
                // them (no job_complete before its job_started's answer,
                // none marked started without an acknowledged job_started,
                // states, db_status).
                assert!(received.violations.is_empty(), "{:#?}", received.violations);
                for complete in &received.complete {
                    let status = &states[&complete.status.job_id];
                    assert_eq!(
                        complete.status.state,
                        status["state"].as_str().unwrap(),
                        "job_complete of job {} disagrees with its status",
                        complete.status.job_id
                    );
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every accepted job is reported");
    drop(serve);
    let check = Command::new(env!("CARGO_BIN_EXE_batch-worker"))
        .arg("replay")
        .arg(&data)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "replay --check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// A shim whose worker is gone before the handshake (killed between the
/// launch and the answer) runs the job to its end all the same and
/// records it, so that the next worker re-attaches rather than report a
/// finished job `worker_restarted`.
#[test]
fn a_shim_whose_worker_died_before_the_handshake_still_runs_and_records_the_job() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("attempt");
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let launch = batch_worker::shim::Launch {
        program: "/bin/sh".into(),
        argv: vec![
            "sh".into(),
            "-c".into(),
            "sleep 0.2; echo done > ran".into(),
        ],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: work.clone(),
        log: root.join("main.log"),
        max_log_bytes: 1 << 20,
        cgroup: None,
        user: None,
        niceness: 0,
        timeout_ms: None,
        kill_grace_ms: 1000,
        storage_limit_bytes: None,
        scratch: work.clone(),
        kill_argv: None,
    };
    let mut shim = Command::new(env!("CARGO_BIN_EXE_batch-worker"))
        .arg("shim")
        .arg(&root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The worker's end of the handshake is gone before the shim answers.
    drop(shim.stdout.take());
    let mut stdin = shim.stdin.take().unwrap();
    stdin
        .write_all(&serde_json::to_vec(&launch).unwrap())
        .unwrap();
    drop(stdin);
    let status = shim.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(std::fs::read_to_string(work.join("ran")).unwrap(), "done\n");
    let exit = batch_worker::shim::read_exit(&root).expect("exit.json");
    assert_eq!(
        exit.status,
        batch_worker_model::ExitStatus::Code { code: 0 }
    );
    assert!(batch_worker::shim::read_pids(&root).is_some());
}

/// A graceful stop (SIGTERM) ends the jobs still running under their
/// shims; after the restart each is reported `worker_restarted`, as the
/// README says of every job a stop abandons, not `failed` with the exit
/// the stop gave it. A job that ended by itself before the stop keeps its
/// own end.
#[tokio::test]
async fn after_a_graceful_stop_its_jobs_end_worker_restarted_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (data, specs) = (dir.path().join("data"), dir.path().join("specs"));
    std::fs::create_dir_all(&specs).unwrap();
    let bunch = vec![
        serde_json::to_vec(&shell_spec(1, "sleep 60")).unwrap(),
        serde_json::to_vec(&shell_spec(2, "exit 4")).unwrap(),
    ];
    write_local_bunch(&specs, 43, "stopped", &bunch).await;
    let driver = EmbeddedDriver::start().await.unwrap();
    let http = reqwest::Client::new();
    let mut first = ServeChild::start(&data, &specs, driver.url.as_str(), &[]).await;
    for job_id in [1, 2] {
        let status = http
            .post(format!("{}/api/v1alpha/batches/jobs/create", first.base))
            .json(&create_body(43, job_id, "stopped", 1))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK);
    }
    first.wait_event(43, 1, "process_started").await;
    first.wait_event(43, 2, "process_exited").await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(first.child.wait().unwrap().success());
    let second = ServeChild::start(&data, &specs, driver.url.as_str(), &[]).await;
    second.wait_event(43, 1, "worker_restarted").await;
    let status = |job_id: i64| {
        let http = http.clone();
        let base = second.base.clone();
        async move {
            let status: Value = http
                .get(format!(
                    "{base}/api/v1alpha/batches/43/jobs/{job_id}/status"
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            status
        }
    };
    let stopped = status(1).await;
    assert_eq!(stopped["state"], "error", "{stopped}");
    assert_eq!(
        stopped["batch_worker"]["error_kind"], "worker_restarted",
        "{stopped}"
    );
    let own = status(2).await;
    assert_eq!(own["state"], "failed", "{own}");
    assert_eq!(
        own["container_statuses"]["main"]["container_status"]["exit_code"], 4,
        "{own}"
    );
}
