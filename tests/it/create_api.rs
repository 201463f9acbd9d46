//! The create endpoint's validation and refusals, over real HTTP.

use std::sync::Arc;

use batch_worker::api::{router, ApiConfig};
use batch_worker_model::{ErrorKind, JobState};
use object_store::memory::InMemory;
use object_store::path::Path;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::support::{create_body, shell_spec, Harness, OnRead, TestStore};

/// `body` with `field` (a dotted path) replaced by `value`, or removed
/// when `value` is `None`.
fn with(mut body: Value, field: &str, value: Option<Value>) -> Value {
    let mut parts: Vec<&str> = field.split('.').collect();
    let last = parts.pop().unwrap();
    let mut target = &mut body;
    for part in parts {
        target = &mut target[part];
    }
    match value {
        Some(v) => target[last] = v,
        None => {
            target.as_object_mut().unwrap().remove(last);
        }
    }
    body
}

#[tokio::test]
async fn malformed_bodies_get_400_naming_the_field() {
    let h = Harness::in_memory().await;
    let good = create_body(7, 12, "abc123", 11);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{".to_vec(), "body"),
        (Vec::new(), "body"),
        (b"   ".to_vec(), "body"),
        (b"[1, 2]".to_vec(), "body"),
        (b"null".to_vec(), "body"),
        (
            [json_bytes(good.clone()), b" trailing".to_vec()].concat(),
            "body",
        ),
        (vec![0xff, 0xfe, 0x00], "body"),
        (
            json_bytes(with(good.clone(), "batch_id", Some(json!("seven")))),
            "batch_id",
        ),
        (
            json_bytes(with(good.clone(), "batch_id", Some(json!(-1)))),
            "batch_id",
        ),
        (
            json_bytes(with(good.clone(), "job_id", Some(json!(-12)))),
            "job_id",
        ),
        (
            json_bytes(with(good.clone(), "job_id", Some(json!(1.5)))),
            "job_id",
        ),
        (json_bytes(with(good.clone(), "job_id", None)), "job_id"),
        (
            json_bytes(with(good.clone(), "format_version", Some(json!(99)))),
            "format_version",
        ),
        (
            json_bytes(with(good.clone(), "format_version", Some(json!(0)))),
            "format_version",
        ),
        (
            json_bytes(with(good.clone(), "format_version", Some(json!("7")))),
            "format_version",
        ),
        (
            json_bytes(with(good.clone(), "token", Some(json!("../x")))),
            "token",
        ),
        (
            json_bytes(with(good.clone(), "token", Some(json!("a/b")))),
            "token",
        ),
        (
            json_bytes(with(good.clone(), "token", Some(json!("")))),
            "token",
        ),
        (
            json_bytes(with(good.clone(), "token", Some(json!("x".repeat(65))))),
            "token",
        ),
        (
            json_bytes(with(good.clone(), "token", Some(Value::Null))),
            "token",
        ),
        (
            json_bytes(with(good.clone(), "token", Some(json!(5)))),
            "token",
        ),
        (
            json_bytes(with(good.clone(), "start_job_id", Some(Value::Null))),
            "start_job_id",
        ),
        (
            json_bytes(with(good.clone(), "start_job_id", Some(json!(13)))),
            "start_job_id",
        ),
        (
            json_bytes(with(good.clone(), "start_job_id", Some(json!(-1)))),
            "start_job_id",
        ),
        (json_bytes(with(good.clone(), "user", None)), "user"),
        (
            json_bytes(with(good.clone(), "user", Some(json!("")))),
            "user",
        ),
        (
            json_bytes(with(good.clone(), "job_spec", Some(json!([])))),
            "job_spec",
        ),
        (
            json_bytes(with(good.clone(), "job_spec.attempt_id", Some(json!(42)))),
            "job_spec.attempt_id",
        ),
        (
            json_bytes(with(
                good.clone(),
                "job_spec.attempt_id",
                Some(json!("../../etc")),
            )),
            "job_spec.attempt_id",
        ),
        (
            json_bytes(with(good.clone(), "job_spec.attempt_id", None)),
            "job_spec.attempt_id",
        ),
        (
            json_bytes(with(good.clone(), "job_spec.job_group_id", Some(json!(-3)))),
            "job_spec.job_group_id",
        ),
        (
            json_bytes(with(
                good.clone(),
                "job_spec.env",
                Some(json!([{"name": "A=B", "value": "1"}])),
            )),
            "job_spec.env[0].name",
        ),
        (
            json_bytes(with(good.clone(), "gsa_key", Some(json!("secret-string")))),
            "gsa_key",
        ),
        (
            json_bytes(with(
                good.clone(),
                "job_spec.secrets",
                Some(json!("secret-string")),
            )),
            "job_spec.secrets",
        ),
        (
            json_bytes(with(good.clone(), "queue_time", Some(json!("soon")))),
            "queue_time",
        ),
    ];
    // Secrets to mount: a mount path outside the container's tree, twice,
    // or nested in another, a file name with a `/`, content that is not
    // base64.
    let secret = |mount_path: &str, file: &str, content: &str| json!({"name": "s", "namespace": "n", "mount_path": mount_path, "data": {file: content}});
    let ok = secret("/gsa-key", "key.json", "c2VjcmV0LXN0cmluZw==");
    let mut cases = cases;
    for (secrets, field) in [
        (
            json!([secret("relative/dir", "k", "AAAA")]),
            "job_spec.secrets[0].mount_path",
        ),
        (
            json!([secret("/a/../etc", "k", "AAAA")]),
            "job_spec.secrets[0].mount_path",
        ),
        (
            json!([secret("/", "k", "AAAA")]),
            "job_spec.secrets[0].mount_path",
        ),
        (
            json!([secret(&format!("/{}", "a".repeat(2000)), "k", "AAAA")]),
            "job_spec.secrets[0].mount_path",
        ),
        (
            json!([ok.clone(), secret("/gsa-key/", "k", "AAAA")]),
            "job_spec.secrets[1].mount_path",
        ),
        (
            json!([ok.clone(), secret("/gsa-key/inner", "k", "AAAA")]),
            "job_spec.secrets[1].mount_path",
        ),
        (
            json!([secret("/a/b/c", "k", "AAAA"), secret("/a", "k", "AAAA")]),
            "job_spec.secrets[1].mount_path",
        ),
        (
            json!([{"name": "s", "namespace": "n", "data": {"k": "AAAA"}}]),
            "job_spec.secrets[0].mount_path",
        ),
        (
            json!([secret("/s", "../k", "AAAA")]),
            "job_spec.secrets[0].data",
        ),
        (
            json!([ok.clone(), secret("/s", "k", "secret-string")]),
            "job_spec.secrets[1].data",
        ),
    ] {
        cases.push((
            json_bytes(with(good.clone(), "job_spec.secrets", Some(secrets))),
            field,
        ));
    }
    for (body, field) in cases {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let (status, answer) = h.create_raw(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{shown}: {answer}");
        assert_eq!(answer["error"]["field"], json!(field), "{shown}: {answer}");
        assert_eq!(answer["error"]["status"], json!(400));
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
        assert!(
            !answer.to_string().contains("secret-string"),
            "a secret is echoed: {answer}"
        );
    }
    assert!(
        h.worker.snapshot().is_empty(),
        "no rejected create left a job"
    );
}

fn json_bytes(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test]
async fn a_duplicate_create_gets_403_and_leaves_the_first_attempt_alone() {
    let h = Harness::in_memory().await;
    h.writer
        .write_bunch(
            7,
            "tok",
            &[serde_json::to_vec(&shell_spec(1, "exit 0")).unwrap()],
        )
        .await
        .unwrap();
    let body = create_body(7, 1, "tok", 1);
    assert_eq!(h.create(&body).await.0, StatusCode::OK);
    let again = with(body.clone(), "job_spec.attempt_id", Some(json!("other")));
    let (status, answer) = h.create(&again).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(answer["error"]["code"], json!("duplicate_job"));
    assert!(
        answer["error"]["message"].as_str().unwrap().contains("7:1"),
        "{answer}"
    );
    assert_eq!(
        h.wait_final(7, 1).await,
        JobState::Done {
            outcome: batch_worker_model::Outcome::Succeeded
        }
    );
    let (_, status) = h.status(7, 1).await;
    assert_eq!(status["attempt_id"], json!("a1"));
    // Still refused once the first attempt is final.
    assert_eq!(h.create(&body).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_oversized_body_gets_413_in_the_error_envelope() {
    let h = Harness::in_memory().await;
    let big = with(
        create_body(1, 1, "t", 1),
        "user",
        Some(json!("u".repeat(2 << 20))),
    );
    let (status, answer) = h.create(&big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer["error"]["code"], json!("payload_too_large"));
}

#[tokio::test]
async fn nothing_is_read_outside_the_store_root() {
    let store = Arc::new(TestStore::new(Arc::new(InMemory::new()), OnRead::Pass));
    let h = Harness::start(store.clone(), Path::from("root/specs"), Default::default()).await;
    h.writer
        .write_bunch(
            3,
            "good",
            &[serde_json::to_vec(&shell_spec(1, "true")).unwrap()],
        )
        .await
        .unwrap();
    for (job_id, token) in [(1, "good"), (2, "missing"), (3, "AbC123")] {
        assert_eq!(
            h.create(&create_body(3, job_id, token, 1)).await.0,
            StatusCode::OK
        );
    }
    for token in ["..", "../x", "good/../../..", "%2e%2e", "a b", "a\\b"] {
        let (status, answer) = h.create(&create_body(3, 9, token, 1)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{token}: {answer}");
        assert_eq!(answer["error"]["field"], json!("token"));
    }
    for job_id in 1..=3 {
        h.wait_final(3, job_id).await;
    }
    let reads = store.reads();
    assert!(!reads.is_empty());
    for key in reads {
        assert!(
            key.starts_with("root/specs/3/bunch/"),
            "read outside the root: {key}"
        );
    }
    assert!(matches!(
        h.worker.state_of(3, 2).unwrap(),
        JobState::Errored {
            kind: ErrorKind::SpecMissing,
            ..
        }
    ));
}

#[tokio::test]
async fn other_endpoints_answer_in_the_same_envelope() {
    let h = Harness::in_memory().await;
    let (status, answer) = h.get("/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer, json!({"name": "test-worker"}));
    let (status, answer) = h.status(1, 2).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(answer["error"]["code"], json!("not_found"));
    let (status, answer) = h.get("/api/v1alpha/batches/x/jobs/2/status").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"]["field"], json!("batch_id"));
    let (status, _) = h.cancel(1, 2).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, answer) = h.get("/api/v1alpha/batches/1/jobs/-2/log/main").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"]["field"], json!("job_id"));
    let (status, _) = h.get("/no/such/endpoint").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_worker_shutting_down_answers_503() {
    let h = Harness::in_memory().await;
    h.worker.begin_shutdown();
    let app = router(h.worker.clone(), &ApiConfig::new(1 << 20));
    let request = axum::http::Request::post("/api/v1alpha/batches/jobs/create")
        .body(axum::body::Body::from(json_bytes(create_body(
            1, 1, "t", 1,
        ))))
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(h.worker.snapshot().is_empty());
}
