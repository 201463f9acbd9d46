//! Store configuration: the environment's `AWS_*` / `AZURE_*` / `GOOGLE_*`
//! options, overridden by `--store-options FILE`, and printed at start with
//! every credential masked.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::HANG_GUARD;

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
