//! `GET /metrics`: the Prometheus text agrees with what the demo printed
//! and with the worker's table, counts retried reports, and carries no
//! secret.

use std::collections::HashMap;

use batch_worker::cli::DemoArgs;
use batch_worker::demo;
use batch_worker::demo::plan::Expected;
use batch_worker_model::{ErrorKind, JobState, Outcome};
use clap::Parser;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{bunch, create_body, shell_spec, Harness};

/// The samples of an exposition text: `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line: series value");
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("a number in {l:?}"));
            (series.to_owned(), value)
        })
        .collect()
}

fn sample(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

/// `demo`'s flags as the command line would give them.
#[derive(Parser)]
struct Demo {
    #[command(flatten)]
    args: DemoArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_demo_run_show_the_counts_the_demo_printed() {
    // 120 jobs: every tenth a special kind (exit 3, missing and corrupt
    // specs, a cancel, a launch failure, a timeout), the rest succeed.
    let args = Demo::parse_from(["demo", "--jobs", "120", "--durability", "flush"]).args;
    let report = demo::run(&args).await.expect("the demo runs");
    assert!(report.passed(), "{}", report.render());
    let m = samples(&report.metrics);
    let count = |want: &dyn Fn(&Expected) -> bool| {
        report
            .jobs
            .iter()
            .filter(|j| j.actual.as_ref().is_some_and(want))
            .count() as f64
    };

    assert_eq!(
        sample(&m, "batch_worker_jobs_created_total"),
        report.creates.ok as f64
    );
    assert_eq!(report.creates.ok, report.jobs.len());
    assert_eq!(
        sample(&m, "batch_worker_create_duration_seconds_count"),
        report.creates.sent as f64
    );
    let outcomes = [
        ("succeeded", count(&|e| *e == Expected::Succeeded)),
        ("failed", count(&|e| matches!(e, Expected::Failed(_)))),
        ("cancelled", count(&|e| *e == Expected::Cancelled)),
        ("errored", count(&|e| matches!(e, Expected::Error(_)))),
    ];
    for (outcome, jobs) in outcomes {
        assert_eq!(
            sample(
                &m,
                &format!("batch_worker_jobs_ended_total{{outcome=\"{outcome}\"}}")
            ),
            jobs,
            "{outcome}"
        );
    }
    // The run had each kind of ending it is made to have.
    assert!(outcomes.iter().all(|(_, jobs)| *jobs > 0.0), "{outcomes:?}");
    for kind in ErrorKind::ALL {
        assert_eq!(
            sample(
                &m,
                &format!("batch_worker_job_errors_total{{kind=\"{kind}\"}}")
            ),
            count(&|e| *e == Expected::Error(kind)),
            "{kind}"
        );
    }
    for kind in [
        ErrorKind::SpecMissing,
        ErrorKind::SpecCorrupt,
        ErrorKind::LaunchFailed,
    ] {
        assert!(count(&|e| *e == Expected::Error(kind)) > 0.0, "{kind}");
    }
    // Exit codes: 0 for each success, 3 for the failing kind, "timeout"
    // for the one past its timeout; the cancelled process ended by signal.
    assert_eq!(
        sample(&m, "batch_worker_process_exit_codes_total{code=\"0\"}"),
        count(&|e| *e == Expected::Succeeded)
    );
    assert_eq!(
        sample(&m, "batch_worker_process_exit_codes_total{code=\"3\"}"),
        count(&|e| *e == Expected::Failed(Some(3)))
    );
    assert_eq!(
        sample(
            &m,
            "batch_worker_process_exit_codes_total{code=\"timeout\"}"
        ),
        count(&|e| *e == Expected::Failed(None))
    );
    // Every attempt is final at the end: done or errored.
    assert_eq!(
        sample(&m, "batch_worker_jobs{state=\"done\"}")
            + sample(&m, "batch_worker_jobs{state=\"errored\"}"),
        report.jobs.len() as f64
    );
    assert_eq!(
        sample(&m, "batch_worker_jobs{state=\"errored\"}"),
        count(&|e| matches!(e, Expected::Error(_)))
    );
    // Every job's spec load ended (none was cancelled while loading).
    assert_eq!(
        sample(&m, "batch_worker_spec_load_duration_seconds_count"),
        report.jobs.len() as f64
    );
    assert!(sample(&m, "batch_worker_journal_sync_duration_seconds_count") > 0.0);
    assert_eq!(sample(&m, "batch_worker_reports_retried_total"), 0.0);
}

/// A create body whose job carries `secret` in its secrets and GSA key.
fn create_with_secret(job_id: i64, token: &str, secret: &str) -> Value {
    let mut body = create_body(1, job_id, token, 1);
    body["gsa_key"] = json!({ "key.json": secret });
    body["job_spec"]["secrets"] = json!([{
        "name": "db-password",
        "namespace": "default",
        "mount_path": "/secret",
        "data": { "password": secret },
    }]);
    body
}

#[tokio::test]
async fn metrics_agree_with_the_table_and_carry_no_secret() {
    const SECRET: &str = "s3cr3tMETRICSvalue9f2c1e";
    let h = Harness::in_memory().await;
    // Job 1 succeeds, 2 exits 7, 3 is not a JSON object (spec_corrupt);
    // job 4's bunch does not exist (spec_missing).
    bunch(
        &h,
        1,
        "good",
        &[
            shell_spec(1, "exit 0"),
            shell_spec(2, "exit 7"),
            json!(["not", "an", "object"]),
        ],
    )
    .await;
    // Job 4 goes first, alone, and its job_complete is refused once:
    // retried. A job that never ran sends no job_started, so the refusal
    // cannot land on a job_started call that a later job_complete aborts
    // before its answer is read (which would count no retry).
    h.driver.refuse_next(1, StatusCode::SERVICE_UNAVAILABLE);
    for (job_id, token) in [(4, "missing"), (1, "good"), (2, "good"), (3, "good")] {
        let mut body = create_with_secret(job_id, token, SECRET);
        body["start_job_id"] = json!(1);
        let (status, answer) = h.create(&body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        if job_id == 4 {
            h.wait_reports(1).await;
            assert_eq!(h.driver.received().refused, 1);
        }
    }
    for job_id in 1..=4 {
        h.wait_final(1, job_id).await;
    }
    h.wait_reports(4).await;

    let response = h.http.get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(!text.contains(SECRET), "the secret is in /metrics:\n{text}");
    assert!(!text.contains("db-password"), "{text}");
    let m = samples(&text);

    let snapshot = h.worker.snapshot();
    assert_eq!(snapshot.len(), 4);
    let mut by_state: HashMap<&str, f64> = HashMap::new();
    for (_, state) in &snapshot {
        *by_state.entry(state.name()).or_default() += 1.0;
    }
    for state in batch_worker::metrics::JOB_STATES {
        assert_eq!(
            sample(&m, &format!("batch_worker_jobs{{state=\"{state}\"}}")),
            by_state.get(state).copied().unwrap_or(0.0),
            "{state}"
        );
    }
    let ended =
        |want: &dyn Fn(&JobState) -> bool| snapshot.iter().filter(|(_, s)| want(s)).count() as f64;
    assert_eq!(sample(&m, "batch_worker_jobs_created_total"), 4.0);
    assert_eq!(
        sample(&m, "batch_worker_jobs_ended_total{outcome=\"succeeded\"}"),
        ended(&|s| matches!(
            s,
            JobState::Done {
                outcome: Outcome::Succeeded
            }
        ))
    );
    assert_eq!(
        sample(&m, "batch_worker_jobs_ended_total{outcome=\"failed\"}"),
        ended(&|s| matches!(
            s,
            JobState::Done {
                outcome: Outcome::Failed { .. }
            }
        ))
    );
    for kind in [ErrorKind::SpecCorrupt, ErrorKind::SpecMissing] {
        assert_eq!(
            sample(
                &m,
                &format!("batch_worker_job_errors_total{{kind=\"{kind}\"}}")
            ),
            ended(&|s| matches!(s, JobState::Errored { kind: k, .. } if *k == kind)),
            "{kind}"
        );
        assert_eq!(
            ended(&|s| matches!(s, JobState::Errored { kind: k, .. } if *k == kind)),
            1.0
        );
    }
    assert_eq!(
        sample(&m, "batch_worker_jobs_ended_total{outcome=\"errored\"}"),
        2.0
    );
    assert_eq!(
        sample(&m, "batch_worker_process_exit_codes_total{code=\"0\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "batch_worker_process_exit_codes_total{code=\"7\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "batch_worker_create_duration_seconds_count"),
        4.0
    );
    // Jobs 1–3 loaded a spec from the bunch, job 4 failed to: four loads.
    assert_eq!(
        sample(&m, "batch_worker_spec_load_duration_seconds_count"),
        4.0
    );
    assert_eq!(sample(&m, "batch_worker_reports_retried_total"), 1.0);
    assert!(sample(&m, "batch_worker_journal_sync_duration_seconds_count") > 0.0);
}
