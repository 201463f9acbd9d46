//! The data directory through the binary: one worker per directory (a
//! second `serve` is refused at once, naming the directory and the holder,
//! and the first is unharmed), and a busy port found before anything is
//! written.

use std::process::{Command, Output, Stdio};

use batch_worker::demo::driver::EmbeddedDriver;
use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use object_store::local::LocalFileSystem;
use reqwest::StatusCode;

use crate::support::{assert_replays_clean, create_body, shell_spec, ServeChild, HANG_GUARD};

/// Runs `batch-worker serve` with `args` to its exit (a hang guard, not a
/// timing bound: both cases exit at start); a serve still running at the
/// guard is killed, and the test fails.
async fn serve_to_exit(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_batch-worker"))
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve runs");
    let exited = tokio::time::timeout(HANG_GUARD, async {
        // A child's exit is not an event this test can wait on: poll.
        while child.try_wait().expect("the child").is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    if exited.is_err() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("the child's output");
    assert!(exited.is_ok(), "serve {args:?} did not exit at start");
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_a_held_data_dir_is_refused_and_the_first_keeps_working() {
    // Given a worker serving from a data directory
    let dir = tempfile::tempdir().unwrap();
    let (data, specs) = (dir.path().join("data"), dir.path().join("specs"));
    std::fs::create_dir_all(&specs).unwrap();
    SpecStore::new(
        std::sync::Arc::new(LocalFileSystem::new_with_prefix(&specs).unwrap()),
        Default::default(),
        SpecLoadConfig::default(),
    )
    .unwrap()
    .write_bunch(
        5,
        "held",
        &[
            serde_json::to_vec(&shell_spec(1, "exit 0")).unwrap(),
            serde_json::to_vec(&shell_spec(2, "exit 0")).unwrap(),
        ],
    )
    .await
    .unwrap();
    let driver = EmbeddedDriver::start().await.unwrap();
    let first = ServeChild::start(&data, &specs, driver.url.as_str(), &[]).await;
    let http = reqwest::Client::new();
    let create = |job_id| {
        http.post(format!("{}/api/v1alpha/batches/jobs/create", first.base))
            .json(&create_body(5, job_id, "held", 1))
            .send()
    };
    assert_eq!(create(1).await.unwrap().status(), StatusCode::OK);
    first.wait_event(5, 1, "complete_delivered").await;
    let journal_before = journal_bytes(&data);

    // When a second worker is started on the same directory
    let data_arg = data.to_str().unwrap();
    let second = serve_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_arg,
        "--driver-url",
        driver.url.as_str(),
    ])
    .await;

    // Then it exits non-zero, naming the directory and the holder's pid
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(stderr.contains(data_arg), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())),
        "{stderr}"
    );
    assert!(stderr.contains("in use by another worker"), "{stderr}");
    // and it wrote nothing: the journal is as the first worker left it
    assert_eq!(journal_bytes(&data), journal_before);
    // while the first keeps answering and running jobs
    assert_eq!(create(2).await.unwrap().status(), StatusCode::OK);
    first.wait_event(5, 2, "complete_delivered").await;
    let health = http
        .get(format!("{}/healthcheck", first.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // and its journal has no gap or other problem.
    assert_replays_clean(&data);
    drop(first);
}

/// The journal's segment files and their sizes.
fn journal_bytes(data: &std::path::Path) -> Vec<(String, u64)> {
    let mut files: Vec<_> = std::fs::read_dir(data.join("journal"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn serve_on_a_busy_port_exits_and_creates_no_file() {
    // Given a port another program listens on
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fresh");
    // When serve is started on it with a new data directory
    let out = serve_to_exit(&["--listen", &listen, "--data-dir", data.to_str().unwrap()]).await;
    // Then it exits non-zero saying so, and the data directory was never made
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {listen}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "another process (another worker?) listens there: stop it or pass another --listen"
        ),
        "{stderr}"
    );
    assert!(
        !data.exists(),
        "serve made {} on a busy port",
        data.display()
    );
    // Nothing else was left in the parent either.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    drop(busy);
}

#[tokio::test]
async fn a_refused_executor_flag_exits_2_before_the_data_dir_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fresh");
    let out = serve_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--executor",
        "runc",
        "--image-pulls-max",
        "0",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--image-pulls-max: at least 1"), "{stderr}");
    assert!(!data.exists(), "{stderr}");
}

#[tokio::test]
async fn a_journal_naming_an_impossible_attempt_is_refused_and_nothing_outside_is_touched() {
    // Given a journal edited to hold a live attempt whose id is a path
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(victim.join("work")).unwrap();
    std::fs::write(victim.join("work/keep.txt"), "keep").unwrap();
    let data = dir.path().join("data");
    let key = batch_worker_model::JobKey {
        batch_id: 1,
        job_id: 1,
        attempt_id: victim.display().to_string(),
    };
    crate::support::write_journal(
        &data,
        &[batch_worker::journal::JournalRecord::new(
            1,
            1_764_504_000_000,
            key,
            batch_worker_model::Event::created(7),
        )],
    );
    // When serve starts on it
    let out = serve_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .await;
    // Then it refuses, saying which record and what to do
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not one a create could make"),
        "{stderr}"
    );
    assert!(stderr.contains("--repair"), "{stderr}");
    // and nothing outside the data directory was touched;
    assert_eq!(
        std::fs::read_to_string(victim.join("work/keep.txt")).unwrap(),
        "keep"
    );
    // `replay --check` agrees.
    let replay = Command::new(env!("CARGO_BIN_EXE_batch-worker"))
        .args(["replay", "--check"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(replay.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&replay.stdout).contains("foreign record"));
    // With --repair the record is dropped and the worker starts;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut repaired = Command::new(env!("CARGO_BIN_EXE_batch-worker"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--repair",
            "--data-dir",
        ])
        .arg(&data)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let health = format!("http://127.0.0.1:{port}/healthcheck");
    tokio::time::timeout(HANG_GUARD, async {
        // Its start is not an event this test can wait on: poll.
        while reqwest::get(&health).await.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("serve --repair starts");
    let _ = repaired.kill();
    let _ = repaired.wait();
    // the journal on disk no longer holds it.
    assert_replays_clean(&data);
    assert_eq!(
        std::fs::read_to_string(victim.join("work/keep.txt")).unwrap(),
        "keep"
    );
}

#[tokio::test]
async fn a_data_dir_that_is_a_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, b"not a directory").unwrap();
    for data in [file.clone(), file.join("below")] {
        let out = serve_to_exit(&[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("{} is a file, not a directory", file.display())),
            "{stderr}"
        );
        assert!(stderr.contains("--data-dir"), "{stderr}");
        assert!(!stderr.contains("File exists"), "{stderr}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}
