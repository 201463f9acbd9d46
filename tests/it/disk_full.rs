//! A full disk, for real: `serve` (release build, host executor, fsync
//! journal) with its data directory on a small tmpfs that the test mounts,
//! fills to its last byte, frees, and unmounts.
//!
//! - Without a reserve, the journal's appends fail with `ENOSPC`: creates
//!   are refused (503, `Retry-After`), the jobs already accepted wait
//!   rather than act on events that are not written, and once space is
//!   back the worker goes on by itself. A `kill -9` and a restart then
//!   find a clean journal: every acknowledged job is there, each job ran
//!   once and got one `job_complete`.
//! - With the reserve (preallocated segments, a free-space floor), creates
//!   are refused below the floor while the jobs already accepted still end
//!   and are reported on the full disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use batch_worker::demo::driver::EmbeddedDriver;
use reqwest::StatusCode;
use serde_json::Value;
use url::Url;

use crate::support::{create_body, shell_spec, write_local_bunch, ServeChild, HANG_GUARD};

const BATCH: i64 = 11;

/// A tmpfs of a fixed size, mounted for the test's life.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_bytes: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root): {status}"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the file system is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        // The last bytes: smaller writes until not even one fits.
        for size in [4096, 512, 1] {
            while file.write_all(&chunk[..size]).is_ok() {}
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Specs for jobs 1..=n: each appends its job id to `runs` (outside the
/// full disk; made writable by the job user), then sleeps `sleep_s`.
async fn write_specs(specs: &Path, runs: &Path, n: i64, sleep_s: f64) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(runs, "").unwrap();
    std::fs::set_permissions(runs, std::fs::Permissions::from_mode(0o666)).unwrap();
    crate::support::let_job_user_pass(runs);
    let bunch: Vec<Vec<u8>> = (1..=n)
        .map(|job_id| {
            let script = format!("echo {job_id} >> {}; sleep {sleep_s}", runs.display());
            serde_json::to_vec(&shell_spec(job_id, &script)).unwrap()
        })
        .collect();
    write_local_bunch(specs, BATCH, "full", &bunch).await;
}

async fn create(http: &reqwest::Client, serve: &ServeChild, job_id: i64) -> reqwest::Response {
    http.post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
        .json(&create_body(BATCH, job_id, "full", 1))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap()
}

async fn state(http: &reqwest::Client, serve: &ServeChild, job_id: i64) -> String {
    let url = format!(
        "{}/api/v1alpha/batches/{BATCH}/jobs/{job_id}/status",
        serve.base
    );
    let status: Value = http.get(url).send().await.unwrap().json().await.unwrap();
    status["state"].as_str().unwrap_or("missing").to_owned()
}

/// Waits until every job in `jobs` is `succeeded`.
async fn wait_succeeded(http: &reqwest::Client, serve: &ServeChild, jobs: &[i64]) {
    let waited = tokio::time::timeout(HANG_GUARD, async {
        for job_id in jobs {
            while state(http, serve, *job_id).await != "succeeded" {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await;
    if waited.is_err() {
        let mut states = Vec::new();
        for job_id in jobs {
            let url = format!(
                "{}/api/v1alpha/batches/{BATCH}/jobs/{job_id}/status",
                serve.base
            );
            let status: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            states.push(status.to_string());
        }
        panic!("not every accepted job succeeded: {states:#?}");
    }
}

/// Job ids in `runs`, with how often each ran.
fn runs(runs: &Path) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(runs).unwrap_or_default().lines() {
        *counts
            .entry(line.trim().parse::<i64>().unwrap())
            .or_default() += 1;
    }
    counts
}

fn replay_check(data: &Path) -> String {
    let check = Command::new(env!("CARGO_BIN_EXE_batch-worker"))
        .arg("replay")
        .arg(data)
        .arg("--check")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(check.status.success(), "replay --check: {out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_without_a_reserve_delays_jobs_loses_nothing_and_heals_by_itself() {
    let disk = Tmpfs::mount(16 * 1024 * 1024);
    let outside = tempfile::tempdir().unwrap();
    let (specs, logs) = (outside.path().join("specs"), outside.path().join("logs"));
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::create_dir_all(&logs).unwrap();
    let ran = outside.path().join("runs");
    write_specs(&specs, &ran, 40, 1.0).await;
    let data = disk.path().join("data");
    let driver = EmbeddedDriver::start().await.unwrap();
    let logs_url = Url::from_directory_path(&logs).unwrap().to_string();
    let flags = [
        "--journal-preallocate-bytes",
        "0",
        "--min-free-bytes",
        "0",
        "--logs-store",
        logs_url.as_str(),
    ];
    let serve = ServeChild::start(&data, &specs, driver.url.as_str(), &flags).await;
    let http = reqwest::Client::new();
    let mut accepted = Vec::new();
    for job_id in 1..=10 {
        assert_eq!(create(&http, &serve, job_id).await.status(), StatusCode::OK);
        accepted.push(job_id);
    }
    // Full while those ten run: their ends cannot be journaled.
    let filler = disk.fill();
    let mut refused = 0;
    for job_id in 11..=30 {
        let response = create(&http, &serve, job_id).await;
        match response.status() {
            StatusCode::OK => accepted.push(job_id),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(response.headers().contains_key("retry-after"));
                let body: Value = response.json().await.unwrap();
                let message = body["error"]["message"].as_str().unwrap();
                assert!(message.contains("journal"), "{message}");
                refused += 1;
            }
            other => panic!("create of job {job_id} answered {other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refused >= 15,
        "creates are refused on a full disk: {refused} of 20"
    );
    // Nothing the journal could not hold was acted on: no job is reported
    // while its end is not written.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reported_while_full = driver.received().complete.len();
    assert_eq!(
        reported_while_full, 0,
        "a job_complete was sent for an event not journaled"
    );
    // Space is back: the worker goes on without a restart.
    std::fs::remove_file(&filler).unwrap();
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let response = create(&http, &serve, 31).await;
            if response.status() == StatusCode::OK {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("creates are accepted again once space is back");
    accepted.push(31);
    wait_succeeded(&http, &serve, &accepted).await;
    // kill -9, and a restart on the same data finds a clean journal.
    let mut serve = serve;
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    replay_check(&data);
    let serve = ServeChild::start(&data, &specs, driver.url.as_str(), &flags).await;
    for job_id in &accepted {
        assert_eq!(
            state(&http, &serve, *job_id).await,
            "succeeded",
            "job {job_id}"
        );
    }
    // Each accepted job ran once, and no refused one ran at all.
    let counts = runs(&ran);
    let expected: BTreeMap<i64, usize> = accepted.iter().map(|j| (*j, 1)).collect();
    assert_eq!(counts, expected);
    // One job_complete per job, all `succeeded`.
    tokio::time::timeout(HANG_GUARD, async {
        while driver.received().complete.len() < accepted.len() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every job is reported");
    let mut per_job: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for complete in driver.received().complete {
        per_job
            .entry(complete.status.job_id)
            .or_default()
            .push(complete.status.state.clone());
    }
    for (job_id, states) in &per_job {
        assert!(
            states.iter().all(|s| s == "succeeded"),
            "job {job_id}: {states:?}"
        );
    }
    drop(serve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_reserve_accepted_jobs_end_and_report_on_a_full_disk() {
    let disk = Tmpfs::mount(24 * 1024 * 1024);
    let outside = tempfile::tempdir().unwrap();
    let (specs, logs) = (outside.path().join("specs"), outside.path().join("logs"));
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::create_dir_all(&logs).unwrap();
    let ran = outside.path().join("runs");
    write_specs(&specs, &ran, 20, 1.0).await;
    let data = disk.path().join("data");
    let driver = EmbeddedDriver::start().await.unwrap();
    let logs_url = Url::from_directory_path(&logs).unwrap().to_string();
    let flags = [
        "--journal-preallocate-bytes",
        "1048576",
        "--min-free-bytes",
        "4194304",
        "--logs-store",
        logs_url.as_str(),
    ];
    let serve = ServeChild::start(&data, &specs, driver.url.as_str(), &flags).await;
    let http = reqwest::Client::new();
    let accepted: Vec<i64> = (1..=10).collect();
    for job_id in &accepted {
        assert_eq!(
            create(&http, &serve, *job_id).await.status(),
            StatusCode::OK
        );
    }
    let filler = disk.fill();
    let response = create(&http, &serve, 11).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers()["retry-after"],
        batch_worker::api::RETRY_AFTER_SECONDS
    );
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("below the floor of 4194304"), "{message}");
    // The accepted jobs end and are reported while the disk stays full.
    wait_succeeded(&http, &serve, &accepted).await;
    tokio::time::timeout(HANG_GUARD, async {
        while driver.received().complete.len() < accepted.len() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every accepted job is reported on the full disk");
    assert!(std::fs::metadata(&filler).is_ok(), "still full");
    let mut serve = serve;
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    std::fs::remove_file(&filler).unwrap();
    replay_check(&data);
    let expected: BTreeMap<i64, usize> = accepted.iter().map(|j| (*j, 1)).collect();
    assert_eq!(runs(&ran), expected);
}
