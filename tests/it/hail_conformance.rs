//! Conformance with Hail's own code (hail-is/hail `fd91ae342ffc`), against
//! the samples its code produced (`tests/fixtures/samples/hail/`): every
//! status and report body has Hail's keys, nesting and JSON types for each
//! outcome; `resources` are Hail's quantified resources; hailtop's
//! `Job.exit_code` (re-implemented here from its source, as an oracle)
//! reads each outcome right; the report order and `marked_job_started`
//! hold against a slow driver; and the calls Hail's driver handlers make
//! of a worker (billing_update, deactivate, service-account creates, new
//! attempts, format 1) agree.

use std::time::Duration;

use batch_worker::instance_config::InstanceConfig;
use batch_worker::resource_usage;
use batch_worker::worker::EXTENSION_KEY;
use batch_worker_model::{JobState, Outcome};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{bunch, create_body, shell_spec, Harness, Options, HANG_GUARD};

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/samples/hail/");

fn sample(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{SAMPLES}{name}")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The instance config of the samples: its `INSTANCE_CONFIG` encoding,
/// as Hail's driver hands it to a worker.
fn sample_config() -> InstanceConfig {
    let q = sample("quantified-resources.json");
    InstanceConfig::from_base64(q["worker_environment"]["INSTANCE_CONFIG"].as_str().unwrap())
        .unwrap()
}

/// A worker billing by the sample's instance config.
async fn hail_worker(billing_update_period: Duration) -> Harness {
    let h = Harness::with_options(Options {
        instance_config: Some(sample_config()),
        billing_update_period,
        ..Options::default()
    })
    .await;
    h.driver.expect_resources(
        sample_config()
            .quantified_resources(1000, 0, 1)
            .unwrap()
            .into_iter()
            .map(|r| r.name),
    );
    h
}

/// A spec as Hail's front end writes one for a 1-core standard job.
fn standard_spec(job_id: i64, script: &str) -> Value {
    let mut spec = shell_spec(job_id, script);
    spec["resources"] =
        json!({"cores_mcpu": 1000, "memory_bytes": 4026531840u64, "storage_gib": 0});
    spec
}

/// The keys, nesting and JSON types of `value`: what a reader of the JSON
/// relies on. A `timing` object becomes `"timing"` (its step names are a
/// worker's own: each step is checked by [`check_timing`]); our extension
/// key is left out.
fn shape(value: &Value) -> Value {
    match value {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!("integer"),
        Value::Number(_) => json!("float"),
        Value::String(_) => json!("string"),
        Value::Array(items) => {
            let mut shapes: Vec<Value> = items.iter().map(shape).collect();
            shapes.dedup();
            Value::Array(shapes)
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != EXTENSION_KEY)
                .map(|(k, v)| {
                    let s = if k == "timing" {
                        json!("timing")
                    } else {
                        shape(v)
                    };
                    (k.clone(), s)
                })
                .collect(),
        ),
    }
}

/// Every `timing` in `status` is Hail's `Timings.to_dict()`: steps with a
/// `start_time`, and for a finished step `finish_time` and `duration`
/// (`finish_time - start_time`).
fn check_timing(status: &Value) {
    let mut timings = vec![&status["timing"]];
    if let Some(tasks) = status["container_statuses"].as_object() {
        timings.extend(tasks.values().map(|t| &t["timing"]));
    }
    for timing in timings.into_iter().filter(|t| !t.is_null()) {
        for (name, step) in timing.as_object().expect("timing is an object") {
            let start = step["start_time"].as_i64().expect("start_time");
            match (step.get("finish_time"), step.get("duration")) {
                (None, None) => {}
                (Some(finish), Some(duration)) => {
                    assert_eq!(
                        duration.as_i64().unwrap(),
                        finish.as_i64().unwrap() - start,
                        "{name}"
                    )
                }
                _ => panic!("step {name}: {step}"),
            }
        }
    }
}

/// The top-level keys of a JSON object's text, in the order they come.
fn key_order(text: &str) -> Vec<String> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                keys.push(key);
            }
            Ok(keys)
        }
    }
    serde::Deserializer::deserialize_map(&mut serde_json::Deserializer::from_str(text), Keys)
        .unwrap()
}

/// hailtop's `Job.exit_code(job_status)` (`batch_client/aioclient.py`),
/// written from its source: the oracle the worker's statuses must satisfy.
fn hailtop_exit_code(status: &Value) -> Option<i64> {
    if !status["error"].is_null() {
        return None;
    }
    let tasks = status["container_statuses"].as_object()?;
    if tasks.is_empty() {
        return None;
    }
    for task in ["input", "main", "output"] {
        let Some(t) = tasks.get(task) else { continue };
        let code = if t["error"].is_null() {
            t["container_status"]["exit_code"].as_i64()
        } else {
            None
        };
        match code {
            None => return None,
            Some(c) if c > 0 => return Some(c),
            Some(_) => {}
        }
    }
    Some(0)
}

/// hailtop's `Job._get_out_of_memory(job_status, 'main')`.
fn hailtop_out_of_memory(status: &Value) -> Option<bool> {
    status["container_statuses"]["main"]["container_status"]["out_of_memory"].as_bool()
}

fn report_of(h: &Harness, job_id: i64) -> Value {
    let received = h.driver.received();
    let body = received
        .complete
        .iter()
        .find(|c| c.status.job_id == job_id)
        .expect("job_complete arrived");
    serde_json::to_value(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_has_hails_status_and_report_shapes() {
    let h = hail_worker(Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let files = tempfile::tempdir().unwrap();
    let input_url = url::Url::from_file_path(files.path().join("in.txt")).unwrap();
    std::fs::write(files.path().join("in.txt"), b"input\n").unwrap();
    let output_url = url::Url::from_file_path(files.path().join("out.txt")).unwrap();
    let mut timeout = standard_spec(4, "sleep 30");
    timeout["timeout"] = json!(1);
    // Each runs long enough for its job_started to be answered first (a
    // job that ends before has none, and says so: see the slow driver).
    let mut with_files = standard_spec(5, "sleep 0.5; cat in.txt > out.txt");
    with_files["input_files"] = json!([{"from": input_url.as_str(), "to": "in.txt"}]);
    with_files["output_files"] = json!([{"from": "out.txt", "to": output_url.as_str()}]);
    let specs = [
        standard_spec(1, "sleep 0.5; echo hello"),
        standard_spec(2, "sleep 0.5; exit 3"),
        standard_spec(
            3,
            &format!("while [ ! -e '{}' ]; do sleep 0.01; done", go.display()),
        ),
        timeout,
        with_files,
    ];
    bunch(&h, 1, "Bunch1", &specs).await;
    for job_id in 1..=5 {
        assert_eq!(
            h.create(&create_body(1, job_id, "Bunch1", 1)).await.0,
            StatusCode::OK
        );
    }
    // Job 6's bunch does not exist: an error before the job runs.
    assert_eq!(
        h.create(&create_body(1, 6, "NoSuchBunch", 6)).await.0,
        StatusCode::OK
    );

    // Running: the status Hail's front end reads from the worker.
    h.wait_executing(1, 3).await;
    let (_, running) = h.status(1, 3).await;
    assert_eq!(
        shape(&running),
        shape(&sample("status-running.json")),
        "{running:#}"
    );
    check_timing(&running);
    assert_eq!(hailtop_exit_code(&running), None);
    // Its job_started answered before it ends: marked `true`, as the sample.
    h.wait_event(1, 3, "started_delivered").await;
    std::fs::write(&go, b"").unwrap();

    let cases = [
        (
            1,
            "status-succeeded.json",
            "job_complete-fv7-succeeded.json",
            Some(0),
            true,
        ),
        (
            2,
            "status-failed.json",
            "job_complete-fv7-failed.json",
            Some(3),
            true,
        ),
        (
            3,
            "status-succeeded.json",
            "job_complete-fv7-succeeded.json",
            Some(0),
            true,
        ),
        (
            4,
            "status-error-timeout.json",
            "job_complete-fv7-error-timeout.json",
            None,
            true,
        ),
        (
            5,
            "status-with-input-output.json",
            "job_complete-fv7-succeeded.json",
            Some(0),
            true,
        ),
        (
            6,
            "status-error-before-run.json",
            "job_complete-fv7-error-before-run.json",
            None,
            false,
        ),
    ];
    for (job_id, _, _, _, _) in cases {
        h.wait_final(1, job_id).await;
    }
    h.wait_reports(6).await;
    for (job_id, status_sample, report_sample, exit_code, marked) in cases {
        let (_, status) = h.status(1, job_id).await;
        let hail = sample(status_sample);
        assert_eq!(shape(&status), shape(&hail), "job {job_id}: {status:#}");
        check_timing(&status);
        assert_eq!(hailtop_exit_code(&status), exit_code, "job {job_id}");
        assert_eq!(
            hailtop_exit_code(&hail),
            exit_code,
            "the oracle on {status_sample}"
        );
        assert!(
            status[EXTENSION_KEY]["worker_state"].is_object(),
            "{status}"
        );
        // Hail's own keys in Hail's order (our extension last).
        let text = reqwest::get(h.url(&format!("/api/v1alpha/batches/1/jobs/{job_id}/status")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let sample_text = std::fs::read_to_string(format!("{SAMPLES}{status_sample}")).unwrap();
        let keys = key_order(&text);
        assert_eq!(keys.last().map(String::as_str), Some(EXTENSION_KEY));
        assert_eq!(
            keys[..keys.len() - 1],
            key_order(&sample_text)[..],
            "job {job_id}"
        );

        let report = report_of(&h, job_id);
        assert_eq!(
            shape(&report),
            shape(&sample(report_sample)),
            "job {job_id}: {report:#}"
        );
        // Exactly whether the driver acknowledged job_started (a job that
        // ended before it could be sent has none: the samples' `true`
        // needs a job_started, which a loaded machine may not send first).
        let acknowledged =
            h.driver
                .received()
                .started_acknowledged
                .contains(&(1, job_id, format!("a{job_id}")));
        assert_eq!(
            report["marked_job_started"],
            json!(acknowledged),
            "job {job_id}"
        );
        assert!(marked || !acknowledged, "job {job_id}");
        let pair = &report["status"]["status"];
        assert_eq!(
            pair[0],
            json!(exit_code),
            "job {job_id}: db_status exit code"
        );
        let (start, end) = (
            status["start_time"].as_i64().unwrap(),
            status["end_time"].as_i64().unwrap(),
        );
        assert_eq!(
            pair[1],
            json!(end - start),
            "job {job_id}: duration is end_time - start_time"
        );
        assert_eq!(report["status"]["state"], status["state"]);
    }
    // Timeouts end `error`, the container `timed out`, as Hail's.
    let (_, timed_out) = h.status(1, 4).await;
    assert_eq!(timed_out["state"], "error");
    assert_eq!(
        timed_out["container_statuses"]["main"]["short_error"],
        "timed out"
    );
    assert_eq!(hailtop_out_of_memory(&timed_out), Some(false));
    assert_eq!(
        h.worker.state_of(1, 1).unwrap(),
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );

    // Every report is billed as Hail bills a 1-core standard job: the
    // sample's job_started resources exactly.
    let received = h.driver.received();
    let started = received
        .started
        .iter()
        .find(|s| s.status.job_id == 1)
        .unwrap();
    assert_eq!(
        serde_json::to_value(&started.status.resources).unwrap(),
        sample("job_started.json")["status"]["resources"]
    );
    assert_eq!(
        shape(&serde_json::to_value(started).unwrap()),
        shape(&sample("job_started.json"))
    );
    // A job whose spec was never read is billed nothing, as Hail's FakeJob.
    let zero = report_of(&h, 6);
    assert!(zero["status"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["quantity"] == 0));
    assert!(received.violations.is_empty(), "{:#?}", received.violations);
    assert!(
        received.unmarked_acknowledged.is_empty(),
        "{:?}",
        received.unmarked_acknowledged
    );

    // Every task's log and resource usage at Hail's keys.
    let store = h.logs.clone();
    let mut keys: Vec<String> =
        futures::StreamExt::collect::<Vec<_>>(store.list(Some(&"logs/1/5".into())))
            .await
            .into_iter()
            .map(|m| m.unwrap().location.to_string())
            .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "logs/1/5/a5/input/log",
            "logs/1/5/a5/input/resource_usage",
            "logs/1/5/a5/main/log",
            "logs/1/5/a5/main/resource_usage",
            "logs/1/5/a5/output/log",
            "logs/1/5/a5/output/resource_usage",
            "logs/1/5/a5/status.json",
        ]
    );
    let input_log = h.logs_object("logs/1/5/a5/input/log").await.unwrap();
    let input_log = String::from_utf8_lossy(&input_log);
    assert!(
        input_log.contains("in.txt") && input_log.contains("done: 1 files"),
        "{input_log}"
    );
    // status.json is laid out as Python's json.dumps writes it.
    let file = h.logs_object("logs/1/5/a5/status.json").await.unwrap();
    let text = String::from_utf8(file.to_vec()).unwrap();
    assert!(
        text.starts_with(r#"{"version": 5, "worker": "test-worker", "batch_id": 1"#),
        "{text}"
    );
    assert!(text.is_ascii());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_usage_answers_each_task_in_hails_binary_format() {
    let h = hail_worker(Duration::from_secs(60)).await;
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("in.txt"), b"input\n").unwrap();
    let input_url = url::Url::from_file_path(files.path().join("in.txt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let mut spec = standard_spec(
        1,
        &format!("while [ ! -e '{}' ]; do sleep 0.01; done", go.display()),
    );
    spec["input_files"] = json!([{"from": input_url.as_str(), "to": "in.txt"}]);
    bunch(&h, 2, "Usage", &[spec]).await;
    h.accept(2, 1, "Usage").await;
    h.wait_executing(2, 1).await;
    let (status, usage) = h.get("/api/v1alpha/batches/2/jobs/1/resource_usage").await;
    assert_eq!(status, StatusCode::OK);
    let tasks: Vec<&String> = usage.as_object().unwrap().keys().collect();
    assert_eq!(tasks, ["input", "main"]);
    use base64::Engine;
    for task in ["input", "main"] {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(usage[task].as_str().unwrap())
            .unwrap();
        // The header, then whole 56-byte records (none without a cgroup).
        assert!(resource_usage::decode(&bytes).is_ok(), "{task}");
        assert_eq!(&bytes[..8], &[0, 0, 0, 0, 0, 0, 0, 2]);
    }
    // The input task's log is served while the job runs.
    let (status, _) = h.get("/api/v1alpha/batches/2/jobs/1/log/input").await;
    assert_eq!(status, StatusCode::OK);
    let log = reqwest::get(h.url("/api/v1alpha/batches/2/jobs/1/log/input"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log.contains("downloading"), "{log}");
    let (status, _) = h.get("/api/v1alpha/batches/2/jobs/1/log/output").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the job has no output task");
    std::fs::write(&go, b"").unwrap();
    h.wait_final(2, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_complete_waits_for_a_slow_job_started_and_says_it_was_acknowledged() {
    let h = hail_worker(Duration::from_secs(60)).await;
    // Hail's driver answered job_started in 1.5 s; the jobs end at once.
    h.driver.set_delay(Duration::from_millis(1500));
    let specs: Vec<Value> = (1..=6).map(|j| standard_spec(j, "true")).collect();
    bunch(&h, 3, "Fast", &specs).await;
    for job_id in 1..=6 {
        h.accept(3, job_id, "Fast").await;
    }
    tokio::time::timeout(HANG_GUARD, h.wait_reports(6))
        .await
        .unwrap();
    // The driver checked each job_complete on arrival: none while its
    // job_started was unanswered, `marked_job_started` exactly whether
    // it answered job_started (a job that ended before its job_started
    // could be sent has none, as Hail's `post_job_started_1` skips it).
    let received = h.driver.received();
    assert!(received.violations.is_empty(), "{:#?}", received.violations);
    assert!(
        received.unmarked_acknowledged.is_empty(),
        "{:?}",
        received.unmarked_acknowledged
    );
    assert!(!received.started.is_empty());
    for started in &received.started {
        let complete = received
            .complete
            .iter()
            .find(|c| c.status.job_id == started.status.job_id)
            .unwrap();
        assert!(complete.marked_job_started, "job {}", started.status.job_id);
    }
    // The journal says the same: started_delivered before complete_delivered.
    for record in h.journal_records() {
        let _ = record;
    }
    let events = |job_id: i64| -> Vec<String> {
        h.worker
            .events(3, job_id)
            .unwrap()
            .iter()
            .map(|e| e.event.name().to_owned())
            .collect()
    };
    for started in &received.started {
        h.wait_event(3, started.status.job_id, "complete_delivered")
            .await;
        let names = events(started.status.job_id);
        let at = |name: &str| names.iter().position(|n| n == name).unwrap();
        assert!(
            at("started_delivered") < at("complete_delivered"),
            "{names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_attempts_are_sent_in_billing_updates_and_shutdown_deactivates() {
    let mut h = hail_worker(Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let wait = format!("while [ ! -e '{}' ]; do sleep 0.01; done", go.display());
    bunch(
        &h,
        4,
        "Bill",
        &[standard_spec(1, &wait), standard_spec(2, &wait)],
    )
    .await;
    h.accept(4, 1, "Bill").await;
    h.accept(4, 2, "Bill").await;
    let mut changes = h.driver.changes();
    tokio::time::timeout(HANG_GUARD, async {
        while !h
            .driver
            .received()
            .billing_updates
            .iter()
            .any(|b| b.attempts.len() == 2)
        {
            let _ = changes.changed().await;
        }
    })
    .await
    .expect("a billing_update names both running attempts");
    let update = h.driver.received().billing_updates.last().cloned().unwrap();
    assert_eq!(
        serde_json::to_value(&update.attempts).unwrap(),
        json!([
            {"batch_id": 4, "job_id": 1, "attempt_id": "a1"},
            {"batch_id": 4, "job_id": 2, "attempt_id": "a2"},
        ])
    );
    assert!(update.timestamp > 1_700_000_000_000);
    // A shutdown (SIGTERM) with both jobs still running: they are ended,
    // not reported, and the worker deactivates, so that Hail's driver
    // reschedules them.
    h.shutdown().await;
    let received = h.driver.received();
    assert_eq!(received.deactivations, 1);
    assert!(received.complete.is_empty());
    drop(go);
    assert!(received.violations.is_empty(), "{:#?}", received.violations);
    assert!(
        received.unmarked_acknowledged.is_empty(),
        "{:?}",
        received.unmarked_acknowledged
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hails_creates_run_service_account_new_attempt_and_format_1() {
    let h = hail_worker(Duration::from_secs(60)).await;
    let sa = sample("create-with-service-account.json");
    // The sample's bunch (batch 1, token Bunch0000000001a, jobs 1..=10).
    let mut specs: Vec<Value> = (1..=10)
        .map(|j| standard_spec(j, "echo \"$KUBECONFIG\"; ls /"))
        .collect();
    specs[9] = standard_spec(10, "echo \"KUBECONFIG=$KUBECONFIG\"");
    bunch(&h, 1, "Bunch0000000001a", &specs).await;
    for body in [&sa["without_service_account"], &sa["with_service_account"]] {
        let (status, answer) = h.create(body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    assert_eq!(
        h.wait_final(1, 10).await,
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
    let log = h.log_text(1, 10).await;
    assert!(
        log.contains("KUBECONFIG=/.kube/config"),
        "the driver's env is appended: {log}"
    );
    h.wait_final(1, 1).await;
    // Reported: the driver's answer recorded.
    h.wait_event(1, 1, "complete_delivered").await;

    // Job 1 again, as the driver reschedules it: a new attempt runs, the
    // same attempt is refused.
    let mut again = sa["without_service_account"].clone();
    assert_eq!(h.create(&again).await.0, StatusCode::FORBIDDEN);
    again["job_spec"]["attempt_id"] = json!("aTt001b");
    assert_eq!(h.create(&again).await.0, StatusCode::OK);
    assert_eq!(
        h.wait_final(1, 1).await,
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
    h.wait_event(1, 1, "complete_delivered").await;
    let reported: Vec<String> = h
        .driver
        .received()
        .complete
        .iter()
        .filter(|c| c.status.job_id == 1)
        .map(|c| c.status.attempt_id.clone())
        .collect();
    assert_eq!(reported, ["aTt001", "aTt001b"]);
    // The replaced attempt never runs again either.
    again["job_spec"]["attempt_id"] = json!("aTt001");
    assert_eq!(h.create(&again).await.0, StatusCode::FORBIDDEN);

    // Format 1: the whole status in job_complete, logs without the attempt.
    let mut v1: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/samples/create-v1.json"
        ))
        .unwrap(),
    )
    .unwrap();
    v1["job_spec"]["resources"]["memory_bytes"] = json!(1073741824);
    assert_eq!(h.create(&v1).await.0, StatusCode::OK);
    h.wait_final(3, 1).await;
    h.wait_reports(4).await;
    let report = report_of(&h, 1);
    let report = if report["status"]["batch_id"] == 3 {
        report
    } else {
        let received = h.driver.received();
        serde_json::to_value(
            received
                .complete
                .iter()
                .find(|c| c.status.batch_id == 3)
                .unwrap(),
        )
        .unwrap()
    };
    let full = &report["status"]["status"];
    let hail = sample("job_complete-fv1-succeeded.json");
    assert_eq!(shape(full), shape(&hail["status"]["status"]), "{full:#}");
    assert_eq!(hailtop_exit_code(full), Some(0));
    assert!(
        h.logs_object("logs/3/1/main/log").await.is_some(),
        "format 1 log path"
    );
    assert!(h.logs_object("logs/3/1/Ab12Cd/status.json").await.is_none());
    let received = h.driver.received();
    assert!(received.violations.is_empty(), "{:#?}", received.violations);
    assert!(
        received.unmarked_acknowledged.is_empty(),
        "{:?}",
        received.unmarked_acknowledged
    );
}

/// Under `serve` with a cgroup per job, the main task's resource usage is
/// sampled from it at Hail's period: records of memory, CPU and the job's
/// files, the network fields missing (NaN); the same bytes reach the logs
/// store. v1 reads the cgroup's accounting; `auto` picks this machine's v2
/// mount, which has no controllers: its processes are read in /proc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_resource_usage_is_sampled_from_the_jobs_cgroup() {
    for mode in ["v1", "auto"] {
        sampled_from_the_cgroup(mode).await;
    }
}

async fn sampled_from_the_cgroup(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (data, specs) = (dir.path().join("data"), dir.path().join("specs"));
    std::fs::create_dir_all(&specs).unwrap();
    crate::support::let_job_user_pass(&data);
    // Busy for 1.5 s, with 4 MB of files.
    let script = "head -c 4000000 /dev/zero > big; end=$(( $(date +%s%N) + 1500000000 )); while [ $(date +%s%N) -lt $end ]; do :; done";
    let spec = serde_json::to_vec(&standard_spec(1, script)).unwrap();
    crate::support::write_local_bunch(&specs, 9, "usage", &[spec]).await;
    let driver = batch_worker::demo::driver::EmbeddedDriver::start()
        .await
        .unwrap();
    let serve = crate::support::ServeChild::start(
        &data,
        &specs,
        driver.url.as_str(),
        &["--job-cgroups", mode],
    )
    .await;
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
        .json(&create_body(9, 1, "usage", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    serve.wait_event(9, 1, "process_exited").await;
    serve.wait_event(9, 1, "logs_uploaded").await;
    let usage: Value = http
        .get(format!(
            "{}/api/v1alpha/batches/9/jobs/1/resource_usage",
            serve.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(usage["main"].as_str().unwrap())
        .unwrap();
    let records = resource_usage::decode(&bytes).unwrap();
    // 100 ms apart for the first 5 s: about 15 in 1.5 s.
    assert!(records.len() >= 5, "{mode}: {} records", records.len());
    assert!(records.iter().all(|r| r.memory_bytes > 0), "{records:?}");
    assert!(
        records.iter().any(|r| r.cpu_usage > 0.3),
        "{mode}: a busy job uses CPU: {records:?}"
    );
    assert!(
        records.iter().any(|r| r.non_io_storage_bytes >= 4_000_000),
        "its files are counted: {records:?}"
    );
    assert!(records
        .iter()
        .all(|r| r.network_upload.is_nan() && r.network_download.is_nan()));
    assert!(records.windows(2).all(|w| w[0].time_ms < w[1].time_ms));
    let uploaded = std::fs::read(data.join("logs/9/1/a1/main/resource_usage")).unwrap();
    assert_eq!(uploaded, bytes);
}
