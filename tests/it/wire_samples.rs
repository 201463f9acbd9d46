//! The shared byte-exact samples (copied from `shared/samples` into
//! `tests/fixtures/samples`): the driver's create bodies run against the
//! sample bunch, and the worker's report bodies serialise byte for byte.

use std::path::PathBuf;
use std::sync::Arc;

use batch_worker::wire::{
    CreateJob, JobCompleteBody, JobCompleteStatus, JobStartedBody, JobStartedStatus, SpecSource,
};
use batch_worker_model::{ErrorKind, ExitStatus, JobState, Outcome};
use object_store::local::LocalFileSystem;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::Harness;

fn sample_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/samples")
        .join(name)
}

fn sample(name: &str) -> String {
    std::fs::read_to_string(sample_path(name)).unwrap()
}

const SECRET: &str = "eyJ0eXBlIjogInNlcnZpY2VfYWNjb3VudCJ9";

async fn sample_worker() -> Harness {
    let store = LocalFileSystem::new_with_prefix(sample_path("bunch")).unwrap();
    Harness::start(Arc::new(store), Default::default(), Default::default()).await
}

#[test]
fn the_sample_create_bodies_parse() {
    let v7 = CreateJob::parse(sample("create-v7.json").as_bytes()).unwrap();
    assert_eq!((v7.batch_id, v7.job_id, v7.format_version), (7, 12, 7));
    assert_eq!(
        v7.spec_source,
        SpecSource::Bunch {
            token: "q4w8e2r6t1y9u3i5".into(),
            start_job_id: 11
        }
    );
    assert_eq!(v7.attempt.attempt_id, "Xq3T9b");
    assert_eq!(
        v7.redacted_secrets(),
        ["gsa_key/key.json", "sample-user-gsa-key"]
    );
    assert!(!format!("{v7:?}").contains(SECRET), "Debug shows a secret");
    assert_eq!(v7.gsa_key.as_ref().unwrap().expose()["key.json"], SECRET);
    let v1 = CreateJob::parse(sample("create-v1.json").as_bytes()).unwrap();
    assert!(matches!(v1.spec_source, SpecSource::Inline(_)));
    assert_eq!(v1.attempt.attempt_id, "Ab12Cd");
    assert!(!format!("{v1:?}").contains(SECRET));
}

#[tokio::test]
async fn the_v7_sample_runs_job_12_of_the_sample_bunch_and_leaks_no_secret() {
    let h = sample_worker().await;
    let (status, body) = h.create_raw(sample("create-v7.json")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        h.wait_final(7, 12).await,
        JobState::Done {
            outcome: Outcome::Failed {
                exit: ExitStatus::Code { code: 7 }
            }
        }
    );
    h.wait_reports(1).await;
    let (_, status) = h.status(7, 12).await;
    assert_eq!(status["state"], json!("failed"));
    assert_eq!(
        status["batch_worker"]["spec_resources"]["cores_mcpu"],
        json!(1000)
    );
    assert_eq!(
        status["batch_worker"]["secrets"],
        json!(["gsa_key/key.json", "sample-user-gsa-key"])
    );
    let (_, events) = h.get("/api/v1alpha/batches/7/jobs/12/events").await;
    let complete = serde_json::to_string(&h.driver.received().complete).unwrap();
    for text in [status.to_string(), events.to_string(), complete] {
        assert!(!text.contains(SECRET), "a secret leaked: {text}");
    }
}

#[tokio::test]
async fn job_13_with_multibyte_utf8_loads_by_byte_offsets() {
    let h = sample_worker().await;
    let mut body: Value = serde_json::from_str(&sample("create-v7.json")).unwrap();
    body["job_id"] = json!(13);
    assert_eq!(h.create(&body).await.0, StatusCode::OK);
    assert_eq!(
        h.wait_final(7, 13).await,
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
    let log = std::fs::read_to_string(h.worker.main_log(7, 13).unwrap()).unwrap();
    assert_eq!(log, "café\n");

    // Job 14 is past the bunch's three jobs: the index is too short.
    body["job_id"] = json!(14);
    body["job_spec"]["attempt_id"] = json!("Zz9Yy8");
    assert_eq!(h.create(&body).await.0, StatusCode::OK);
    let state = h.wait_final(7, 14).await;
    assert!(
        matches!(&state, JobState::Errored { kind: ErrorKind::SpecCorrupt, message } if message.contains("specs.idx is 32 bytes")),
        "{state:?}"
    );
}

#[tokio::test]
async fn the_v1_sample_runs_its_inline_spec() {
    let h = sample_worker().await;
    assert_eq!(
        h.create_raw(sample("create-v1.json")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        h.wait_final(3, 1).await,
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
    let log = std::fs::read_to_string(h.worker.main_log(3, 1).unwrap()).unwrap();
    assert_eq!(log, "hello from job 11\n");
}

#[test]
fn report_bodies_serialise_byte_for_byte_like_the_samples() {
    let started = JobStartedBody {
        status: JobStartedStatus {
            version: 5,
            batch_id: 7,
            job_id: 12,
            attempt_id: "Xq3T9b".into(),
            start_time: 1764504000123,
            resources: vec![],
        },
    };
    let failed = JobCompleteBody {
        status: JobCompleteStatus {
            version: 5,
            batch_id: 7,
            job_id: 12,
            attempt_id: "Xq3T9b".into(),
            job_group_id: 0,
            state: "failed".into(),
            start_time: 1764504000123,
            end_time: 1764504001456,
            resources: vec![],
            status: serde_json::json!([7, 1333]),
        },
        marked_job_started: true,
    };
    let errored = JobCompleteBody {
        status: JobCompleteStatus {
            batch_id: 7,
            job_id: 14,
            attempt_id: "Zz9Yy8".into(),
            state: "error".into(),
            start_time: 1764504000200,
            end_time: 1764504000210,
            status: serde_json::json!([null, 10]),
            ..failed.status.clone()
        },
        marked_job_started: false,
    };
    for (body, name) in [
        (
            serde_json::to_string_pretty(&started).unwrap(),
            "job_started.json",
        ),
        (
            serde_json::to_string_pretty(&failed).unwrap(),
            "job_complete-failed.json",
        ),
        (
            serde_json::to_string_pretty(&errored).unwrap(),
            "job_complete-error.json",
        ),
    ] {
        assert_eq!(body.trim_end(), sample(name).trim_end(), "{name}");
    }
    let parsed: JobCompleteBody = serde_json::from_str(&sample("job_complete-error.json")).unwrap();
    assert_eq!(parsed, errored);
}
