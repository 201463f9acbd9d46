//! Limits that keep one bad client or one hung store from harming the
//! server: oversized declared bodies, stalled connections at shutdown,
//! error envelopes on odd paths, and a spec store whose reads block
//! threads forever.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::Duration;

use batch_worker::server::DRAIN_TIMEOUT;
use batch_worker::spec_store::SpecLoadConfig;
use batch_worker_model::{ErrorKind, JobState, Outcome};
use object_store::local::LocalFileSystem;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{create_body, shell_spec, Harness, HANG_GUARD};

fn addr(h: &Harness) -> String {
    format!("{}:{}", h.base.host_str().unwrap(), h.base.port().unwrap())
}

/// Sends raw bytes on a fresh connection (on a blocking thread) and
/// returns the start of the answer.
async fn raw_exchange(addr: String, request: &[u8]) -> String {
    let request = request.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
        stream.write_all(&request).unwrap();
        let mut answer = [0u8; 512];
        let n = stream.read(&mut answer).unwrap();
        String::from_utf8_lossy(&answer[..n]).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_declared_oversize_body_gets_413_before_any_byte_of_it() {
    let h = Harness::in_memory().await;
    let request = b"POST /api/v1alpha/batches/jobs/create HTTP/1.1\r\nhost: x\r\n\
                    content-length: 999999999999\r\n\r\n{";
    let answer = raw_exchange(addr(&h), request).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}

#[tokio::test]
async fn odd_paths_and_methods_answer_in_the_envelope() {
    let h = Harness::in_memory().await;
    let (status, answer) = h.get("/api/v1alpha/batches/1/jobs/11/log/%FF").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"]["field"], json!("path"));
    let (status, answer) = h.get("/api/v1alpha/batches/1/jobs/11/delete").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer["error"]["code"], json!("method_not_allowed"));
    // Raw non-ASCII bytes in the path are refused by the HTTP layer, and
    // the server goes on serving.
    let answer = raw_exchange(addr(&h), b"GET /\xff\xfe HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert_eq!(h.get("/healthcheck").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_stalled_connection_cannot_hold_up_shutdown() {
    let mut h = Harness::in_memory().await;
    // Half a request, never finished.
    let mut stalled = TcpStream::connect(addr(&h)).unwrap();
    stalled
        .write_all(b"POST /api/v1alpha/batches/jobs/create HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"a\":")
        .unwrap();
    // Let the server take the connection in (a request the server answers
    // on another connection proves its accept loop has run past it).
    assert_eq!(h.get("/healthcheck").await.0, StatusCode::OK);
    tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(30), h.shutdown())
        .await
        .expect("serve returns although a client never finished its request");
    drop(stalled);
}

/// The worker's runtime gets few blocking threads, so that reads stuck in
/// them would starve process spawns and log reads if the spec store used
/// the worker's pool.
#[test]
fn a_store_whose_reads_block_threads_starves_nothing_else() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .unwrap()
        .block_on(blocked_store_scenario());
}

async fn blocked_store_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let bunch = dir.path().join("4/bunch/fifo");
    std::fs::create_dir_all(&bunch).unwrap();
    let fifo = bunch.join("specs.idx");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let store = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let config = SpecLoadConfig {
        deadline: Duration::from_millis(200),
        max_concurrent_loads: 4,
        ..SpecLoadConfig::default()
    };
    let h = Harness::start(store, Default::default(), config).await;
    // Far more loads than the store's threads, each stuck opening the FIFO.
    for job_id in 1..=40 {
        h.accept(4, job_id, "fifo").await;
    }
    for job_id in 1..=40 {
        let state = h.wait_final(4, job_id).await;
        assert!(
            matches!(
                state,
                JobState::Errored {
                    kind: ErrorKind::SpecTimeout,
                    ..
                }
            ),
            "job {job_id}: {state:?}"
        );
    }
    // A job that needs no store still starts, runs and logs.
    let mut inline = create_body(5, 1, "unused", 1);
    inline["format_version"] = json!(1);
    let mut spec: Value = shell_spec(1, "echo still running");
    spec["attempt_id"] = json!("x1");
    spec["job_group_id"] = json!(0);
    inline["job_spec"] = spec;
    assert_eq!(h.create(&inline).await.0, StatusCode::OK);
    assert_eq!(
        h.wait_final(5, 1).await,
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
    let log = h.log_text(5, 1).await;
    assert_eq!(log, "still running\n");
    // Release the threads stuck in open().
    let _writer = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo);
}

#[tokio::test]
async fn a_client_that_sends_headers_and_stalls_is_cut_off_by_the_body_timeout() {
    let h = Harness::in_memory().await;
    let config = batch_worker::api::ApiConfig {
        body_read_timeout: Duration::from_millis(300),
        ..batch_worker::api::ApiConfig::new(1 << 20)
    };
    let app = batch_worker::api::router(h.worker.clone(), &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let server = tokio::spawn(async move {
        let connections = batch_worker::server::accept(
            &listener,
            app,
            batch_worker::server::ConnectionLimits::default(),
            stopped.cancelled_owned(),
        )
        .await;
        connections.drain().await;
    });
    // 10 of the 100 bytes the headers promise, then nothing.
    let request = b"POST /api/v1alpha/batches/jobs/create HTTP/1.1\r\nhost: x\r\n\
                    content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"batch_id";
    let started = std::time::Instant::now();
    let answer = raw_exchange(addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() < HANG_GUARD);
    assert!(h.worker.snapshot().is_empty());
    stop.cancel();
    server.await.unwrap();
}
