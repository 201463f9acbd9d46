//! Store configuration: the environment's `AWS_*` / `AZURE_*` / `GOOGLE_*`
//! options, overridden by `--store-options FILE`, and printed at start with
//! every credential masked; store locations and the driver's URL as people
//! type them (an absolute path is a local store; a mistyped URL exits 2
//! with the form meant).

use std::process::{Command, Stdio};
use std::time::Duration;

use batch_worker::demo::driver::EmbeddedDriver;
use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use object_store::local::LocalFileSystem;
use reqwest::StatusCode;

use crate::support::{create_body, shell_spec, ServeChild, HANG_GUARD};

const ENV_SECRET: &str = "ENVSECRETVALUE0123456789";
const FILE_SECRET: &str = "FILESECRETVALUE987654321";

#[tokio::test]
async fn the_effective_store_options_are_printed_with_credentials_masked() {
    let dir = tempfile::tempdir().unwrap();
    let options = dir.path().join("store.env");
    std::fs::write(
        &options,
        format!("AWS_REGION=eu-west-3\nAZURE_STORAGE_ACCOUNT_KEY={FILE_SECRET}\n"),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_batch-worker"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--store-options")
        .arg(&options)
        .env("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    tokio::time::timeout(HANG_GUARD, async {
        while http
            .get(format!("http://127.0.0.1:{port}/healthcheck"))
            .send()
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the worker starts");
    child.kill().unwrap();
    child.wait().unwrap();
    let printed = std::fs::read_to_string(&log).unwrap();
    assert!(printed.contains("store options"), "{printed}");
    assert!(
        printed.contains("eu-west-3"),
        "the file's options apply: {printed}"
    );
    assert!(printed.contains("AWS_SECRET_ACCESS_KEY"), "{printed}");
    assert!(printed.contains("AZURE_STORAGE_ACCOUNT_KEY"), "{printed}");
    assert!(
        !printed.contains(ENV_SECRET) && !printed.contains(FILE_SECRET),
        "a credential was printed: {printed}"
    );
}

#[test]
fn a_bad_options_file_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let options = dir.path().join("store.env");
    std::fs::write(&options, "PATH=/nope\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_batch-worker"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--store-options")
        .arg(&options)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("store.env") && text.contains("PATH"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_an_absolute_path_as_its_spec_store() {
    // Given a bunch written under a plain directory
    let dir = tempfile::tempdir().unwrap();
    let (data, specs) = (dir.path().join("data"), dir.path().join("my specs"));
    std::fs::create_dir_all(&specs).unwrap();
    SpecStore::new(
        std::sync::Arc::new(LocalFileSystem::new_with_prefix(&specs).unwrap()),
        Default::default(),
        SpecLoadConfig::default(),
    )
    .unwrap()
    .write_bunch(
        3,
        "plain",
        &[serde_json::to_vec(&shell_spec(1, "exit 0")).unwrap()],
    )
    .await
    .unwrap();
    // When serve is given that directory's path, not a file:/// URL
    let driver = EmbeddedDriver::start().await.unwrap();
    let worker =
        ServeChild::start_with_spec_store(&data, specs.to_str().unwrap(), driver.url.as_str(), &[])
            .await;
    let created = reqwest::Client::new()
        .post(format!("{}/api/v1alpha/batches/jobs/create", worker.base))
        .json(&create_body(3, 1, "plain", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    // Then the job's spec is read from it and the job succeeds.
    worker.wait_event(3, 1, "complete_delivered").await;
    let complete = driver.received().complete;
    assert_eq!(complete.len(), 1);
    assert_eq!(complete[0].status.state, "succeeded", "{:?}", complete[0]);
}

/// Runs the binary with `args` to its exit (each case exits at start).
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_batch-worker"));
    for (name, _) in std::env::vars() {
        if name.starts_with("BATCH_WORKER_") {
            command.env_remove(name);
        }
    }
    let out = command
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("batch-worker runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn mistyped_store_and_driver_urls_exit_2_with_the_form_meant() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let serve = |flag: &'static str, value: &'static str| {
        vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
            flag,
            value,
        ]
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            serve("--spec-store", "file://tmp/x"),
            "file URLs need three slashes (file:///absolute/path; after two, \"tmp\" is read as a host name): did you mean file:///tmp/x?",
        ),
        (
            serve("--logs-store", "s3:/bucket/logs"),
            "not a store URL: did you mean s3://bucket/logs?",
        ),
        (
            serve("--spec-store", "gs:bucket"),
            "did you mean gs://bucket?",
        ),
        (
            serve("--spec-store", "ftp://host/specs"),
            "ftp:// is not a store this worker opens; expected one of: file:///abs/path (or /abs/path), s3://",
        ),
        (
            serve("--driver-url", "127.0.0.1:5000"),
            "the driver's URL needs its scheme: did you mean http://127.0.0.1:5000?",
        ),
        (
            serve("--driver-url", "[::1]:5000"),
            "did you mean http://[::1]:5000?",
        ),
        (
            serve("--driver-url", "driver:5000"),
            "did you mean http://driver:5000?",
        ),
        (
            serve("--driver-url", "ftp://driver/"),
            "ftp:// is not how the worker calls the driver",
        ),
        (
            vec!["spec", "show", "--store", "az//c/specs", "--batch", "1", "--token", "t", "--start", "1", "--job", "1"],
            "did you mean az://c/specs?",
        ),
        (
            vec!["demo", "--spec-store", "file://tmp/demo"],
            "did you mean file:///tmp/demo?",
        ),
    ];
    for (args, expected) in cases {
        let (code, stderr) = run_to_exit(&args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // A relative path: its absolute form is offered.
    let (code, stderr) = run_to_exit(&serve("--spec-store", "rel/specs"), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    let cwd = std::env::current_dir().unwrap();
    let meant = url::Url::from_file_path(cwd.join("rel/specs")).unwrap();
    assert!(
        stderr.contains(&format!("did you mean {meant}?")),
        "{stderr}"
    );
    // From the environment or a config file: the same, with where it came from.
    let (code, stderr) = run_to_exit(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", data],
        &[("BATCH_WORKER_DRIVER_URL", "localhost:5000")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("did you mean http://localhost:5000? (the value comes from the environment variable BATCH_WORKER_DRIVER_URL)"),
        "{stderr}"
    );
    let file = dir.path().join("w.toml");
    std::fs::write(&file, "spec-store = \"file://srv/specs\"\n").unwrap();
    let (code, stderr) = run_to_exit(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
            "--config",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("did you mean file:///srv/specs?"),
        "{stderr}"
    );
    // Nothing was made.
    assert!(!std::path::Path::new(data).exists());
}
