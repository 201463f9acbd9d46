//! Processes that escape their job's process group (`setsid`, a double
//! fork, a fan-out of 200) are ended with the job all the same: each host
//! job has a cgroup of its own, and a timeout, a cancel, the leader's own
//! exit end the whole cgroup. Across a `kill -9` of the worker, a job under
//! its shim runs on, re-attached, and a cancel then ends it whole; a job
//! without a shim (`--job-shim false`) is ended, cgroup and all, by the
//! restart. Both hierarchies this machine has are tested: v2
//! (`cgroup.kill`) and v1 (freezer, pids, cpuacct, memory).

use std::path::Path;
use std::time::Duration;

use batch_worker::demo::driver::EmbeddedDriver;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{
    create_body, let_job_user_pass, shell_spec, write_local_bunch, ServeChild, HANG_GUARD,
};

/// Processes whose command line holds `marker`.
fn with_marker(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(marker) {
            found.push(pid);
        }
    }
    found
}

/// Waits until some process carries `marker` (the job has forked its
/// escapees), then returns how many.
async fn wait_running(marker: &str, at_least: usize) -> usize {
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let n = with_marker(marker).len();
            if n >= at_least {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the job never started {at_least} processes marked {marker}"))
}

async fn state(http: &reqwest::Client, serve: &ServeChild, batch: i64, job_id: i64) -> Value {
    let url = format!(
        "{}/api/v1alpha/batches/{batch}/jobs/{job_id}/status",
        serve.base
    );
    http.get(url).send().await.unwrap().json().await.unwrap()
}

async fn wait_final(http: &reqwest::Client, serve: &ServeChild, batch: i64, job_id: i64) -> Value {
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let status = state(http, serve, batch, job_id).await;
            if ["succeeded", "failed", "error", "cancelled"]
                .contains(&status["state"].as_str().unwrap_or(""))
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the job ends")
}

/// Waits until no process carries `marker`.
async fn wait_gone(marker: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !with_marker(marker).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "processes marked {marker} outlived their job: {:?}",
            with_marker(marker)
        )
    });
}

async fn escapes_end_with_their_job(mode: &str, batch: i64) {
    let dir = tempfile::tempdir().unwrap();
    let (data, specs) = (dir.path().join("data"), dir.path().join("specs"));
    std::fs::create_dir_all(&specs).unwrap();
    let_job_user_pass(&data);
    // Distinct per mode and run: `sleep` takes a fractional number.
    let marker = |job: i64| format!("300.{batch}{job}{}", std::process::id());
    let scripts = [
        // 1: a setsid escapee, then the job runs past its timeout.
        format!("setsid sleep {} & sleep 600", marker(1)),
        // 2: a double fork into a new session, then the job is cancelled.
        format!(
            "(setsid sh -c 'sleep {} & sleep {}' &) ; sleep 600",
            marker(2),
            marker(2)
        ),
        // 3: a fan-out of 200 escapees, then the leader exits by itself.
        format!(
            "for i in $(seq 200); do setsid sleep {} & done; sleep 1; exit 0",
            marker(3)
        ),
        // 4: an escapee left running when the worker is killed (the job
        // runs on under its shim, re-attached).
        format!("setsid sleep {} & sleep 600", marker(4)),
        // 5: the same without a shim: the restart ends it.
        format!("setsid sleep {} & sleep 600", marker(5)),
    ];
    let bunch: Vec<Vec<u8>> = scripts
        .iter()
        .enumerate()
        .map(|(i, script)| {
            let mut spec = shell_spec(i as i64 + 1, script);
            if i == 0 {
                spec["timeout"] = json!(1);
            }
            serde_json::to_vec(&spec).unwrap()
        })
        .collect();
    write_local_bunch(&specs, batch, "esc", &bunch).await;
    let driver = EmbeddedDriver::start().await.unwrap();
    let flags = ["--job-cgroups", mode];
    let serve = ServeChild::start(&data, &specs, driver.url.as_str(), &flags).await;
    let http = reqwest::Client::new();
    for job_id in 1..=4 {
        let created = http
            .post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
            .json(&create_body(batch, job_id, "esc", 1))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::OK);
    }
    // 1: the timeout ends the escapee too.
    wait_running(&marker(1), 2).await;
    let status = wait_final(&http, &serve, batch, 1).await;
    // Hail's reading of a timeout: `error`, the container `timed out`.
    assert_eq!(status["state"], "error", "{status}");
    assert_eq!(
        status["container_statuses"]["main"]["short_error"],
        "timed out"
    );
    wait_gone(&marker(1)).await;
    // 2: the cancel ends the double-forked pair.
    wait_running(&marker(2), 3).await;
    let cancelled = http
        .delete(format!(
            "{}/api/v1alpha/batches/{batch}/jobs/2/delete",
            serve.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    wait_gone(&marker(2)).await;
    // 3: the leader's exit ends all 200.
    // 200 escapees, and the job's shell (its script names the marker).
    let n = wait_running(&marker(3), 201).await;
    assert_eq!(n, 201);
    let status = wait_final(&http, &serve, batch, 3).await;
    assert_eq!(status["state"], "succeeded", "{status}");
    wait_gone(&marker(3)).await;
    // 4: kill -9 of the worker: the job and its escapee run on under the
    // shim; the restarted worker re-attaches, and a cancel ends both.
    wait_running(&marker(4), 2).await;
    let mut serve = serve;
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    assert!(
        with_marker(&marker(4)).len() >= 2,
        "the job outlives the worker's kill -9"
    );
    let serve = ServeChild::start(&data, &specs, driver.url.as_str(), &flags).await;
    let status = state(&http, &serve, batch, 4).await;
    assert_eq!(status["state"], "running", "re-attached: {status}");
    assert!(with_marker(&marker(4)).len() >= 2);
    http.delete(format!(
        "{}/api/v1alpha/batches/{batch}/jobs/4/delete",
        serve.base
    ))
    .send()
    .await
    .unwrap();
    wait_gone(&marker(4)).await;
    let status = wait_final(&http, &serve, batch, 4).await;
    assert_eq!(status["state"], "cancelled", "{status}");
    // 5: without a shim the job is the worker's child: a kill -9 leaves it
    // (and its escapee) running, and the restart ends its cgroup before it
    // reports it worker_restarted.
    let mut serve = serve;
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    let no_shim = ["--job-cgroups", mode, "--job-shim", "false"];
    let mut serve = ServeChild::start(&data, &specs, driver.url.as_str(), &no_shim).await;
    let created = http
        .post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
        .json(&create_body(batch, 5, "esc", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    wait_running(&marker(5), 2).await;
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    assert!(
        !with_marker(&marker(5)).is_empty(),
        "the escapee outlives the worker's kill -9"
    );
    let serve = ServeChild::start(&data, &specs, driver.url.as_str(), &no_shim).await;
    wait_gone(&marker(5)).await;
    let status = wait_final(&http, &serve, batch, 5).await;
    assert_eq!(
        status["batch_worker"]["error_kind"], "worker_restarted",
        "{status}"
    );
    // No job cgroup is left behind.
    drop(serve);
    assert_no_job_cgroups(&data);
}

/// No `job-*` cgroup of this data directory is left in any hierarchy.
fn assert_no_job_cgroups(data: &Path) {
    let hash = format!(
        "{:08x}",
        crc32c::crc32c(
            std::path::absolute(data)
                .unwrap()
                .as_os_str()
                .as_encoded_bytes()
        )
    );
    let mut left = Vec::new();
    let mut stack = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if path.parent().is_some_and(|p| p.ends_with(&hash)) {
                    left.push(path.clone());
                }
                stack.push(path);
            }
        }
    }
    assert!(left.is_empty(), "job cgroups left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escapees_end_with_their_job_under_cgroup_v2() {
    escapes_end_with_their_job("v2", 31).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escapees_end_with_their_job_under_cgroup_v1() {
    escapes_end_with_their_job("v1", 32).await;
}
