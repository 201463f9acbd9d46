//! The API token (`serve --api-token-file`): 401 without it on every
//! endpoint but `/healthcheck` and `/metrics`, in the error envelope; the
//! token never appears in what the worker says.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use batch_worker::api::{router, ApiConfig, ApiToken};
use batch_worker::demo::driver::EmbeddedDriver;
use futures::FutureExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::support::{create_body, Harness, ServeChild};

const TOKEN: &str = "TOKEN-7f3a-do-not-log";

/// `(status, WWW-Authenticate, body)` of one request to `app`.
async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(serde_json::to_vec(&b).unwrap()));
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        challenge,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn without_the_token_every_endpoint_but_healthcheck_and_metrics_answers_401() {
    let h = Harness::in_memory().await;
    let config = ApiConfig {
        api_token: Some(ApiToken::new(TOKEN).unwrap()),
        ..ApiConfig::new(1 << 20)
    };
    let app = router(h.worker.clone(), &config);
    let create = create_body(1, 1, "t", 1);
    let guarded = [
        ("POST", "/api/v1alpha/batches/jobs/create"),
        ("GET", "/api/v1alpha/batches/1/jobs/1/status"),
        ("GET", "/api/v1alpha/batches/1/jobs/1/events"),
        ("GET", "/api/v1alpha/batches/1/jobs/1/log/main"),
        ("DELETE", "/api/v1alpha/batches/1/jobs/1/delete"),
        ("POST", "/api/v1alpha/kill"),
        ("GET", "/no/such/endpoint"),
    ];
    for (method, path) in guarded {
        for bearer in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1])] {
            let (status, challenge, body) =
                call(&app, method, path, bearer, Some(create.clone())).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {bearer:?}"
            );
            assert_eq!(challenge.as_deref(), Some("Bearer"));
            assert_eq!(body["error"]["code"], json!("unauthorized"));
            assert!(!body.to_string().contains(TOKEN));
        }
    }
    // The token is checked before anything about the body: a declared
    // oversize body without it is a 401, not a 413.
    let oversize = Request::post("/api/v1alpha/batches/jobs/create")
        .header(header::CONTENT_LENGTH, "999999999999")
        .body(Body::empty())
        .unwrap();
    let answer = app.clone().oneshot(oversize).await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    assert!(h.worker.snapshot().is_empty(), "no create got through");
    assert!(
        h.worker.shutdown_requested().now_or_never().is_none(),
        "no kill got through"
    );

    let (status, _, health) = call(&app, "GET", "/healthcheck", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["name"], json!("test-worker"));
    let (status, _, _) = call(&app, "GET", "/metrics", None, None).await;
    assert_ne!(status, StatusCode::UNAUTHORIZED);

    let (status, _, _) = call(
        &app,
        "POST",
        "/api/v1alpha/batches/jobs/create",
        Some(TOKEN),
        Some(create),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(
        &app,
        "GET",
        "/api/v1alpha/batches/1/jobs/1/status",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn serve_with_a_token_file_guards_the_api_and_never_logs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (data, specs) = (dir.path().join("data"), dir.path().join("specs"));
    std::fs::create_dir_all(&specs).unwrap();
    let token_file = dir.path().join("api-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let log = dir.path().join("serve.log");
    let driver = EmbeddedDriver::start().await.unwrap();
    let serve = ServeChild::start_logging(
        &data,
        &specs,
        driver.url.as_str(),
        &["--api-token-file", token_file.to_str().unwrap()],
        &log,
    )
    .await;
    let http = reqwest::Client::new();
    let status_url = format!("{}/api/v1alpha/batches/1/jobs/1/status", serve.base);
    let answer = http.get(&status_url).send().await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::UNAUTHORIZED);
    let answer = http
        .get(&status_url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::NOT_FOUND);
    let mut serve = serve;
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("bearer token"),
        "the start line says auth is on: {logged}"
    );
    assert!(!logged.contains(TOKEN));
}

#[test]
fn serve_refuses_an_empty_token_file_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("api-token");
    std::fs::write(&token_file, "\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_batch-worker"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--api-token-file")
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is empty") && stderr.contains("api-token"),
        "{stderr}"
    );
}
