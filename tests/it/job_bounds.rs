//! Per-job bounds under `serve`: a job that floods its output cannot fill
//! the disk with its log. Its `main.log` (and the copy in the logs store)
//! keeps the first and last parts within `--max-log-bytes`, says how many
//! bytes were cut, and the job and its neighbours end as they should.

use std::time::Duration;

use batch_worker::demo::driver::EmbeddedDriver;
use reqwest::StatusCode;
use serde_json::Value;
use url::Url;

use crate::support::{create_body, shell_spec, write_local_bunch, ServeChild, HANG_GUARD};

const BATCH: i64 = 51;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_output_is_capped_with_its_start_and_end_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (data, specs, logs) = (
        dir.path().join("data"),
        dir.path().join("specs"),
        dir.path().join("logs"),
    );
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::create_dir_all(&logs).unwrap();
    // 1: 50 MB of output between a first and a last line; 2: a quiet job.
    let flood = "echo FIRST-LINE; head -c 50000000 /dev/zero | tr '\\0' x; echo; echo LAST-LINE";
    let bunch = vec![
        serde_json::to_vec(&shell_spec(1, flood)).unwrap(),
        serde_json::to_vec(&shell_spec(2, "echo quiet")).unwrap(),
    ];
    write_local_bunch(&specs, BATCH, "bounds", &bunch).await;
    let driver = EmbeddedDriver::start().await.unwrap();
    let logs_url = Url::from_directory_path(&logs).unwrap().to_string();
    let flags = [
        "--max-log-bytes",
        "1048576",
        "--logs-store",
        logs_url.as_str(),
    ];
    let serve = ServeChild::start(&data, &specs, driver.url.as_str(), &flags).await;
    let http = reqwest::Client::new();
    for job_id in 1..=2 {
        let created = http
            .post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
            .json(&create_body(BATCH, job_id, "bounds", 1))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::OK);
    }
    for job_id in 1..=2 {
        serve.wait_event(BATCH, job_id, "logs_uploaded").await;
        let url = format!(
            "{}/api/v1alpha/batches/{BATCH}/jobs/{job_id}/status",
            serve.base
        );
        let status: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        assert_eq!(status["state"], "succeeded", "{status}");
    }
    let main_log = data.join(format!("jobs/{BATCH}/1/a1/main.log"));
    let text = std::fs::read_to_string(&main_log).unwrap();
    assert!(text.len() <= 1024 * 1024 + 200, "{} bytes", text.len());
    assert!(text.starts_with("FIRST-LINE\n"));
    assert!(text.ends_with("LAST-LINE\n"));
    assert!(text.contains("bytes of output cut here"), "the cut is said");
    assert!(!data
        .join(format!("jobs/{BATCH}/1/a1/main.log.tail"))
        .exists());
    // The logs store holds the same capped log.
    let uploaded = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let found = walk(&logs).into_iter().find(|p| {
                p.to_string_lossy().contains(&format!("{BATCH}/1/a1/main"))
                    && !p.to_string_lossy().ends_with("status.json")
            });
            if let Some(found) = found {
                break std::fs::read(found).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(uploaded.len(), text.len());
    let quiet = std::fs::read_to_string(data.join(format!("jobs/{BATCH}/2/a2/main.log"))).unwrap();
    assert_eq!(quiet, "quiet\n");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_storage_bound_ends_storage_exceeded_and_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (data, specs) = (dir.path().join("data"), dir.path().join("specs"));
    std::fs::create_dir_all(&specs).unwrap();
    // 1: 64 MB of files against the default bound of 16 MiB, then waits.
    // 2: 30 MB against its own bound, `storage_gib: 0.1` (about 107 MB).
    let mut roomy = shell_spec(2, "head -c 30000000 /dev/zero > big && echo fits");
    roomy["resources"]["storage_gib"] = serde_json::json!(0.1);
    let bunch = vec![
        serde_json::to_vec(&shell_spec(
            1,
            "for i in 1 2 3 4; do head -c 16000000 /dev/zero > f$i; done; sleep 30",
        ))
        .unwrap(),
        serde_json::to_vec(&roomy).unwrap(),
    ];
    write_local_bunch(&specs, BATCH + 1, "bounds", &bunch).await;
    let driver = EmbeddedDriver::start().await.unwrap();
    let flags = ["--default-job-storage-bytes", "16777216"];
    let serve = ServeChild::start(&data, &specs, driver.url.as_str(), &flags).await;
    let http = reqwest::Client::new();
    for job_id in 1..=2 {
        let created = http
            .post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
            .json(&create_body(BATCH + 1, job_id, "bounds", 1))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::OK);
    }
    let status = |job_id: i64| {
        let url = format!(
            "{}/api/v1alpha/batches/{}/jobs/{job_id}/status",
            serve.base,
            BATCH + 1
        );
        let http = http.clone();
        async move {
            let status: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            status
        }
    };
    // Ended well before its 30 s sleep.
    serve.wait_event(BATCH + 1, 1, "process_exited").await;
    let over = status(1).await;
    assert_eq!(over["state"], "error", "{over}");
    assert_eq!(
        over["batch_worker"]["error_kind"], "storage_exceeded",
        "{over}"
    );
    let main = &over["container_statuses"]["main"];
    assert_eq!(main["short_error"], "storage exceeded", "{over}");
    let message = main["error"].as_str().unwrap();
    assert!(
        message.contains("over its storage bound of 16777216 bytes"),
        "{message}"
    );
    serve.wait_event(BATCH + 1, 2, "process_exited").await;
    let fits = status(2).await;
    assert_eq!(fits["state"], "succeeded", "{fits}");
}
