//! Jobs in runc containers, from images pulled out of a registry on
//! loopback (`scripts/containers.sh` starts it and pushes the busybox test
//! images; it exports `BW_TEST_IMAGE`, `BW_TEST_WHITEOUT_IMAGE` and
//! `BW_TEST_USER_IMAGE`).
//! Without them these tests are skipped, saying so, unless
//! `BW_REQUIRE_CONTAINERS` is set (CI), when they fail.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use batch_worker::container::{ContainerNetwork, RuncConfig, RuncRunner};
use batch_worker::image::{ImageConfig, ImageStore, PullProcess};
use batch_worker_model::{ErrorKind, Event, ExitStatus, JobState, Outcome};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{bunch, create_body, Harness, Options, ServeChild};

/// The test images (busybox, busybox with a whiteout layer), or `None`
/// (the test is skipped) without a registry.
fn images() -> Option<(String, String)> {
    Some((
        test_image("BW_TEST_IMAGE")?,
        test_image("BW_TEST_WHITEOUT_IMAGE")?,
    ))
}

/// The test image named by the variable `var`, or `None` (skip) when unset
/// and `BW_REQUIRE_CONTAINERS` is not.
fn test_image(var: &str) -> Option<String> {
    crate::skips::service_var(crate::skips::Service::Containers, var)
}

fn registry_of(image: &str) -> String {
    image.split('/').next().unwrap().to_owned()
}

/// An image cache under `dir` pulling over plain HTTP from `registries`,
/// as `serve` does: each pull in a child process (this build's binary)
/// limited to 256 MiB.
fn image_config(dir: &Path, registries: &[String]) -> ImageConfig {
    let mut config = ImageConfig::new(dir.join("images"));
    config.insecure_registries = registries.to_vec();
    config.retry_delay = Duration::from_millis(50);
    config.pull_process = Some(PullProcess {
        program: env!("CARGO_BIN_EXE_batch-worker").into(),
        max_memory_bytes: 256 << 20,
    });
    config
}

/// A runc runner keeping its state under `dir`.
fn runc_runner(dir: &Path) -> Arc<RuncRunner> {
    let runner = RuncRunner::new(RuncConfig {
        runc: "runc".into(),
        state_dir: dir.join("runc"),
        network: ContainerNetwork::None,
        job_networks: None,
        kill_grace: Duration::from_millis(500),
    })
    .expect("runc runs");
    Arc::new(runner)
}

/// A runc runner and image cache under `dir`, pulling from the test
/// registry over plain HTTP.
fn executor(dir: &Path, image: &str) -> (Arc<RuncRunner>, Arc<ImageStore>) {
    let config = image_config(dir, &[registry_of(image)]);
    (
        runc_runner(dir),
        Arc::new(ImageStore::new(config).expect("the image cache opens")),
    )
}

/// A harness whose jobs run in containers under `dir`, pulling with
/// `config`; also returns the runner and the cache.
async fn harness_pulling_with(
    dir: &Path,
    config: ImageConfig,
) -> (Harness, Arc<RuncRunner>, Arc<ImageStore>) {
    let runner = runc_runner(dir);
    let images = Arc::new(ImageStore::new(config).expect("the image cache opens"));
    let h = Harness::with_options(Options {
        executor: Some((runner.clone(), images.clone())),
        ..Options::default()
    })
    .await;
    (h, runner, images)
}

/// What pulls left in the cache's scratch directory, once their cleanup
/// (on a blocking thread) has run: waits up to 5 s for it to be empty.
async fn scratch_left(images: &ImageStore) -> Vec<PathBuf> {
    let tmp = images.cache_dir().join("tmp");
    let list = || -> Vec<PathBuf> {
        std::fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !list().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    list()
}

/// A harness whose jobs run in containers; also returns the runner, the
/// cache, and the directory holding runc's state and the cache.
async fn container_harness(
    image: &str,
) -> (Harness, Arc<RuncRunner>, Arc<ImageStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (runner, images) = executor(dir.path(), image);
    let h = Harness::with_options(Options {
        executor: Some((runner.clone(), images.clone())),
        ..Options::default()
    })
    .await;
    (h, runner, images, dir)
}

/// A spec running `sh -c script` in `image`.
fn container_spec(job_id: i64, image: &str, script: &str) -> Value {
    json!({
        "job_id": job_id,
        "process": {"type": "docker", "image": image, "command": ["sh", "-c", script]},
        "resources": {"cores_mcpu": 500, "memory_bytes": 64 << 20, "storage_gib": 0},
    })
}

/// Every bundle directory left under the attempts of `data`.
fn bundles(data: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![data.join("jobs")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == "bundle") {
                found.push(path);
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    found
}

/// Mounts (from /proc/self/mountinfo) at or below `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&dir))
        .collect()
}

/// What a finished container job must leave: no container, no bundle, no
/// mount.
fn assert_nothing_left(runner: &RuncRunner, data: &Path) {
    assert_eq!(runner.list().unwrap(), Vec::<String>::new(), "runc list");
    assert_eq!(bundles(data), Vec::<PathBuf>::new(), "bundles");
    assert_eq!(mounts_under(data), Vec::<String>::new(), "mounts");
}

#[tokio::test]
async fn containers_run_the_command_in_the_image_with_its_exit_code_and_env() {
    let Some((image, whiteout)) = images() else {
        return;
    };
    let (h, runner, images, _dir) = container_harness(&image).await;
    let mut env_job = container_spec(
        3,
        &image,
        "echo \"$GREETING $BW_IMAGE_ENV $HAIL_JOB_ID $(hostname) $(pwd)\"",
    );
    env_job["env"] = json!([{"name": "GREETING", "value": "hello"}]);
    bunch(
        &h,
        1,
        "tokC",
        &[
            container_spec(1, &image, "echo ok; exit 0"),
            container_spec(2, &image, "echo failing >&2; exit 3"),
            env_job,
            // Layer 2 of this image deletes /bin/grep (a whiteout) and adds
            // /etc/bw-layer2.
            container_spec(4, &whiteout, "test ! -e /bin/grep && cat /etc/bw-layer2"),
            // The job sees no host file system: the worker's data dir is
            // not there.
            container_spec(5, &image, &format!("test ! -e {}", h.data.path().display())),
            // Docker's capabilities without MKNOD: chown works, device
            // nodes cannot be made.
            container_spec(
                6,
                &image,
                "busybox mknod /tmp/d c 1 3 2>/dev/null && echo mknod-allowed || echo mknod-refused; \
                 busybox chown 1:1 /tmp && echo chown-ok",
            ),
        ],
    )
    .await;
    for job in 1..=6 {
        h.accept(1, job, "tokC").await;
    }
    let ok = JobState::Done {
        outcome: Outcome::Succeeded,
    };
    assert_eq!(h.wait_final(1, 1).await, ok);
    assert_eq!(
        h.wait_final(1, 2).await,
        JobState::Done {
            outcome: Outcome::Failed {
                exit: ExitStatus::Code { code: 3 }
            }
        }
    );
    assert_eq!(h.wait_final(1, 3).await, ok);
    assert_eq!(h.wait_final(1, 4).await, ok, "{}", h.log_text(1, 4).await);
    assert_eq!(h.wait_final(1, 5).await, ok);
    assert_eq!(h.log_text(1, 1).await.trim(), "ok");
    assert!(h.log_text(1, 2).await.contains("failing"));
    // The job's env wins over the image's; the image's config gives cwd.
    assert_eq!(
        h.log_text(1, 3).await.trim(),
        "hello from-image 3 job-3 /",
        "env, hostname and working directory"
    );
    assert_eq!(h.log_text(1, 4).await.trim(), "two");
    assert_eq!(h.wait_final(1, 6).await, ok);
    assert_eq!(
        h.log_text(1, 6)
            .await
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["mknod-refused", "chown-ok"]
    );
    let (_, status) = h.status(1, 2).await;
    assert_eq!(status["state"], "failed");
    assert_eq!(
        status["container_statuses"]["main"]["container_status"]["exit_code"],
        3
    );
    // Two images, each pulled once, although five jobs ran the first.
    assert_eq!(images.downloads(), 2);
    let entries = std::fs::read_dir(images.cache_dir().join("sha256"))
        .unwrap()
        .count();
    assert_eq!(entries, 2, "one cache entry per image");
    for job in 1..=6 {
        h.wait_event(1, job, "logs_uploaded").await;
    }
    assert_nothing_left(&runner, h.data.path());
}

#[tokio::test]
async fn a_job_runs_as_the_images_user_and_owns_its_inputs_and_secrets() {
    let Some(image) = test_image("BW_TEST_USER_IMAGE") else {
        return;
    };
    let (h, runner, _images, _dir) = container_harness(&image).await;
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("in.txt"), "input-bytes").unwrap();
    let base = url::Url::from_directory_path(scratch.path()).unwrap();
    let secret = "user-secret-5521";
    // Ids, HOME and cwd from the image's passwd and config; the staged
    // input, its directory and the secret are the job's; the image's /etc
    // is not.
    let script = format!(
        "id -u; id -g; id -G; echo \"$HOME\"; pwd; cat /io/in.txt; echo; \
         echo result > /io/out.txt && echo wrote-io; \
         (touch /etc/x) 2>/dev/null && echo wrote-etc || echo etc-refused; \
         stat -c '%a %u' /tmp; cat /tmp/staged.txt; echo; \
         test \"$(cat /secrets/app/token)\" = {secret} && echo secret-ok"
    );
    let mut spec = container_spec(1, &image, &script);
    // An input staged in the image's /tmp leaves /tmp 1777 and root's.
    spec["input_files"] = json!([
        {"from": base.join("in.txt").unwrap().as_str(), "to": "/io/in.txt"},
        {"from": base.join("in.txt").unwrap().as_str(), "to": "/tmp/staged.txt"},
    ]);
    spec["output_files"] =
        json!([{"from": "/io/out.txt", "to": base.join("out.txt").unwrap().as_str()}]);
    // A HOME from the spec wins over passwd's.
    let mut own_home = container_spec(2, &image, "id -u; id -g; echo \"$HOME\"");
    own_home["env"] = json!([{"name": "HOME", "value": "/tmp"}]);
    bunch(&h, 9, "tokU", &[spec, own_home]).await;
    let mut body = create_body(9, 1, "tokU", 1);
    body["job_spec"]["secrets"] = json!([{
        "name": "app-token",
        "namespace": "default",
        "mount_path": "/secrets/app",
        "data": {"token": base64::engine::general_purpose::STANDARD.encode(secret)},
    }]);
    let (status, answer) = h.create(&body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let ok = JobState::Done {
        outcome: Outcome::Succeeded,
    };
    assert_eq!(h.wait_final(9, 1).await, ok, "{}", h.log_text(9, 1).await);
    assert_eq!(
        h.log_text(9, 1).await.lines().collect::<Vec<_>>(),
        [
            "1000",
            "1000",
            "1000 2000",
            "/home/app",
            "/home/app",
            "input-bytes",
            "wrote-io",
            "etc-refused",
            "1777 0",
            "input-bytes",
            "secret-ok"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("out.txt")).unwrap(),
        "result\n"
    );
    h.accept(9, 2, "tokU").await;
    assert_eq!(h.wait_final(9, 2).await, ok);
    assert_eq!(
        h.log_text(9, 2).await.lines().collect::<Vec<_>>(),
        ["1000", "1000", "/tmp"]
    );
    h.wait_event(9, 1, "logs_uploaded").await;
    h.wait_event(9, 2, "logs_uploaded").await;
    assert_nothing_left(&runner, h.data.path());
}

#[tokio::test]
async fn concurrent_jobs_of_one_image_pull_it_once_and_show_initializing_meanwhile() {
    let Some((image, _)) = images() else {
        return;
    };
    let (h, _runner, images, _dir) = container_harness(&image).await;
    let specs: Vec<Value> = (1..=6).map(|j| container_spec(j, &image, "true")).collect();
    bunch(&h, 2, "tokP", &specs).await;
    for job in 1..=6 {
        h.accept(2, job, "tokP").await;
    }
    for job in 1..=6 {
        assert_eq!(
            h.wait_final(2, job).await,
            JobState::Done {
                outcome: Outcome::Succeeded
            }
        );
    }
    assert_eq!(images.downloads(), 1, "six jobs, one download");
    let mut pulled_here = 0;
    for job in 1..=6 {
        let events = h.worker.events(2, job).unwrap();
        let pulled = events
            .iter()
            .find_map(|e| match &e.event {
                Event::ImagePulled { pulled, digest, .. } => {
                    Some((*pulled, digest.clone(), e.state_after))
                }
                _ => None,
            })
            .expect("every job records image_pulled");
        assert!(pulled.1.starts_with("sha256:"));
        assert_eq!(pulled.2, "running.starting");
        pulled_here += usize::from(pulled.0);
        // The pull ran in the initializing phase (resources held).
        let granted = events
            .iter()
            .find(|e| e.event == Event::ResourcesGranted)
            .unwrap();
        assert_eq!(granted.state_after, "running.initializing");
    }
    assert_eq!(pulled_here, 1, "exactly one job downloaded the image");
    let metrics = h.http.get(h.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains("batch_worker_image_pulls_total{result=\"downloaded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("batch_worker_image_pulls_total{result=\"cached\"} 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_secret_is_readable_at_its_mount_path_for_the_jobs_life_only() {
    let Some((image, _)) = images() else {
        return;
    };
    let (h, runner, _images, _dir) = container_harness(&image).await;
    let secret = "s3kr1t-value-81723";
    let script = format!(
        "test \"$(cat /secrets/db/password)\" = {secret} && echo read-ok; \
         stat -c %a /secrets/db/password; \
         (echo x > /secrets/db/password) 2>/dev/null && echo writable || echo read-only"
    );
    bunch(&h, 3, "tokS", &[container_spec(1, &image, &script)]).await;
    let mut body = create_body(3, 1, "tokS", 1);
    body["job_spec"]["secrets"] = json!([{
        "name": "db-password",
        "namespace": "default",
        "mount_path": "/secrets/db",
        "data": {"password": base64::engine::general_purpose::STANDARD.encode(secret)},
    }]);
    let (status, answer) = h.create(&body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        h.wait_final(3, 1).await,
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
    assert_eq!(
        h.log_text(3, 1)
            .await
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["read-ok", "400", "read-only"]
    );
    h.wait_event(3, 1, "logs_uploaded").await;
    assert_nothing_left(&runner, h.data.path());
    // The secret's bytes are nowhere under the data dir any more.
    let mut stack = vec![h.data.path().to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(secret),
                    "{} holds the secret",
                    path.display()
                );
            }
        }
    }
}

#[tokio::test]
async fn timeout_and_cancel_end_the_container_and_leave_none() {
    let Some((image, _)) = images() else {
        return;
    };
    let (h, runner, _images, _dir) = container_harness(&image).await;
    let mut timed = container_spec(1, &image, "sleep 60");
    timed["timeout"] = json!(1);
    bunch(
        &h,
        4,
        "tokT",
        &[timed, container_spec(2, &image, "sleep 60")],
    )
    .await;
    h.accept(4, 1, "tokT").await;
    h.accept(4, 2, "tokT").await;
    h.wait_executing(4, 2).await;
    assert!(runner.list().unwrap().contains(&"bw-4-2-a2".to_owned()));
    let (status, _) = h.cancel(4, 2).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h.wait_final(4, 2).await,
        JobState::Done {
            outcome: Outcome::Cancelled
        }
    );
    assert_eq!(
        h.wait_final(4, 1).await,
        JobState::Done {
            outcome: Outcome::Failed {
                exit: ExitStatus::TimedOut { timeout_ms: 1000 }
            }
        }
    );
    h.wait_event(4, 1, "logs_uploaded").await;
    h.wait_event(4, 2, "logs_uploaded").await;
    assert_nothing_left(&runner, h.data.path());
}

#[tokio::test]
async fn a_memory_hog_over_its_limit_fails_out_of_memory() {
    let Some((image, _)) = images() else {
        return;
    };
    let (h, runner, _images, _dir) = container_harness(&image).await;
    let mut hog = container_spec(1, &image, "dd if=/dev/zero of=/dev/null bs=128M count=1");
    hog["resources"]["memory_bytes"] = json!(16 << 20);
    // A job whose child the OOM killer ends, and which exits 0 all the
    // same, decided its own outcome.
    let mut survivor = container_spec(
        2,
        &image,
        "dd if=/dev/zero of=/dev/null bs=128M count=1; echo survived",
    );
    survivor["resources"]["memory_bytes"] = json!(16 << 20);
    bunch(&h, 5, "tokM", &[hog, survivor]).await;
    h.accept(5, 1, "tokM").await;
    h.accept(5, 2, "tokM").await;
    assert_eq!(
        h.wait_final(5, 2).await,
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
    assert!(h.log_text(5, 2).await.contains("survived"));
    match h.wait_final(5, 1).await {
        JobState::Done {
            outcome:
                Outcome::Failed {
                    exit:
                        ExitStatus::OutOfMemory {
                            memory_limit_bytes, ..
                        },
                },
        } => assert_eq!(memory_limit_bytes, 16 << 20),
        other => panic!("expected an out-of-memory failure, got {other:?}"),
    }
    // Hail's reading: `failed`, the container's `short_error` "out of
    // memory", exit code 137; the limit is in our extension.
    let (_, status) = h.status(5, 1).await;
    assert_eq!(status["state"], "failed");
    assert_eq!(
        status["container_statuses"]["main"]["short_error"], "out of memory",
        "{status}"
    );
    assert_eq!(
        status["batch_worker"]["worker_state"]["outcome"]["exit"]["memory_limit_bytes"],
        16 << 20,
        "{status}"
    );
    assert_eq!(
        status["container_statuses"]["main"]["container_status"]["out_of_memory"],
        true
    );
    h.wait_event(5, 1, "logs_uploaded").await;
    h.wait_event(5, 2, "logs_uploaded").await;
    assert_nothing_left(&runner, h.data.path());
}

#[tokio::test]
async fn a_missing_image_errors_image_pull_failed_while_the_create_answers_at_once() {
    let Some((image, _)) = images() else {
        return;
    };
    let (h, runner, images, _dir) = container_harness(&image).await;
    let missing = format!("{}/bw-test/does-not-exist:1", registry_of(&image));
    let mut no_image = container_spec(2, &image, "true");
    no_image["process"].as_object_mut().unwrap().remove("image");
    bunch(
        &h,
        6,
        "tokX",
        &[
            container_spec(1, &missing, "true"),
            no_image,
            container_spec(3, "Not An::Image", "true"),
        ],
    )
    .await;
    let started = Instant::now();
    let (status, answer) = h.create(&create_body(6, 1, "tokX", 1)).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(took < Duration::from_millis(500), "create took {took:?}");
    match h.wait_final(6, 1).await {
        JobState::Errored { kind, message } => {
            assert_eq!(kind, ErrorKind::ImagePullFailed);
            assert!(message.contains(&missing), "{message}");
            assert!(message.contains("does not exist"), "{message}");
        }
        other => panic!("expected image_pull_failed, got {other:?}"),
    }
    let (_, status) = h.status(6, 1).await;
    assert_eq!(status["state"], "error");
    // No image, or not a reference: the spec is unusable here, found at
    // its load, before any resources are held.
    for (job, expected) in [(2, "got none"), (3, "is not an image reference")] {
        h.accept(6, job, "tokX").await;
        match h.wait_final(6, job).await {
            JobState::Errored { kind, message } => {
                assert_eq!(kind, ErrorKind::SpecCorrupt);
                assert!(
                    message.contains("process.image") && message.contains(expected),
                    "{message}"
                );
            }
            other => panic!("expected spec_corrupt, got {other:?}"),
        }
        let events = h.worker.events(6, job).unwrap();
        assert!(events.iter().all(|e| e.event != Event::ResourcesGranted));
    }
    assert_eq!(images.downloads(), 0);
    h.wait_event(6, 1, "complete_delivered").await;
    assert_nothing_left(&runner, h.data.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_leaves_containers_to_their_shims_and_the_restart_reattaches() {
    let Some((image, _)) = images() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let specs = tempfile::tempdir().unwrap();
    let driver = batch_worker::demo::driver::EmbeddedDriver::start()
        .await
        .unwrap();
    let writer = batch_worker::spec_store::SpecStore::new(
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(specs.path()).unwrap()),
        Default::default(),
        Default::default(),
    )
    .unwrap();
    // 1 runs past the crash and the restart; 2 ends (exit 7) while no
    // worker runs; 3 runs without a shim.
    writer
        .write_bunch(
            7,
            "tokR",
            &[
                serde_json::to_vec(&container_spec(1, &image, "sleep 120")).unwrap(),
                serde_json::to_vec(&container_spec(2, &image, "sleep 1; exit 7")).unwrap(),
                serde_json::to_vec(&container_spec(3, &image, "sleep 120")).unwrap(),
                serde_json::to_vec(&{
                    let mut timed = container_spec(4, &image, "sleep 60");
                    timed["timeout"] = json!(1);
                    timed
                })
                .unwrap(),
            ],
        )
        .await
        .unwrap();
    let registry = registry_of(&image);
    let flags = ["--executor", "runc", "--insecure-registry", &registry];
    let http = reqwest::Client::new();
    let create = |base: String, job_id: i64| {
        let http = http.clone();
        async move {
            http.post(format!("{base}/api/v1alpha/batches/jobs/create"))
                .json(&create_body(7, job_id, "tokR", 1))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let status = |base: String, job_id: i64| {
        let http = http.clone();
        async move {
            let status: Value = http
                .get(format!("{base}/api/v1alpha/batches/7/jobs/{job_id}/status"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            status
        }
    };
    let runner = RuncRunner::new(RuncConfig {
        runc: "runc".into(),
        state_dir: data.path().join("runc"),
        network: ContainerNetwork::None,
        job_networks: None,
        kill_grace: Duration::from_millis(500),
    })
    .unwrap();
    let mut first = ServeChild::start(data.path(), specs.path(), driver.url.as_str(), &flags).await;
    for job_id in [1, 2] {
        assert_eq!(create(first.base.clone(), job_id).await, StatusCode::OK);
        first.wait_event(7, job_id, "process_started").await;
    }
    // A crash: both containers outlive the worker, under their shims.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert_eq!(runner.list().unwrap(), ["bw-7-1-a1", "bw-7-2-a2"]);
    // 2 ends meanwhile: its shim records it.
    let root2 = data.path().join("jobs/7/2/a2");
    tokio::time::timeout(Duration::from_secs(30), async {
        while batch_worker::shim::read_exit(&root2).is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("job 2 ends while no worker runs");
    let second = ServeChild::start(data.path(), specs.path(), driver.url.as_str(), &flags).await;
    second.wait_event(7, 2, "process_exited").await;
    let ended = status(second.base.clone(), 2).await;
    assert_eq!(ended["state"], "failed", "its real end: {ended}");
    assert_eq!(
        ended["container_statuses"]["main"]["container_status"]["exit_code"], 7,
        "{ended}"
    );
    let running = status(second.base.clone(), 1).await;
    assert_eq!(running["state"], "running", "re-attached: {running}");
    // Under its shim, a container's timeout is the shim's: `runc kill`.
    assert_eq!(create(second.base.clone(), 4).await, StatusCode::OK);
    second.wait_event(7, 4, "process_exited").await;
    let timed = status(second.base.clone(), 4).await;
    assert_eq!(timed["state"], "error", "{timed}");
    assert_eq!(
        timed["container_statuses"]["main"]["short_error"],
        "timed out"
    );
    // The re-attached container is cancelled whole.
    http.delete(format!(
        "{}/api/v1alpha/batches/7/jobs/1/delete",
        second.base
    ))
    .send()
    .await
    .unwrap();
    second.wait_event(7, 1, "process_exited").await;
    for job_id in [1, 2, 4] {
        second.wait_event(7, job_id, "logs_uploaded").await;
    }
    assert_nothing_left(&runner, data.path());
    // Without a shim, `runc run` is the worker's child: a crash leaves the
    // container, and the restart removes it and reports the job
    // worker_restarted.
    let mut second = second;
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    let no_shim = [
        "--executor",
        "runc",
        "--insecure-registry",
        &registry,
        "--job-shim",
        "false",
    ];
    let mut third =
        ServeChild::start(data.path(), specs.path(), driver.url.as_str(), &no_shim).await;
    assert_eq!(create(third.base.clone(), 3).await, StatusCode::OK);
    third.wait_event(7, 3, "process_started").await;
    third.child.kill().unwrap();
    third.child.wait().unwrap();
    assert_eq!(
        runner.list().unwrap(),
        ["bw-7-3-a3"],
        "the crash left the container"
    );
    let mut fourth =
        ServeChild::start(data.path(), specs.path(), driver.url.as_str(), &no_shim).await;
    fourth.wait_event(7, 3, "worker_restarted").await;
    assert_nothing_left(&runner, data.path());
    fourth.child.kill().unwrap();
    fourth.child.wait().unwrap();
}

/// A "registry" on loopback that accepts connections and never answers:
/// its address, the count of connections so far, and its task.
async fn silent_registry() -> (
    String,
    tokio::sync::watch::Receiver<usize>,
    tokio::task::JoinHandle<()>,
) {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_at = silent.local_addr().unwrap().to_string();
    let (connected, connections) = tokio::sync::watch::channel(0usize);
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket);
            connected.send_replace(sockets.len());
        }
    });
    (silent_at, connections, held)
}

#[tokio::test]
async fn a_cancel_while_the_registry_hangs_ends_the_job_at_once() {
    if images().is_none() {
        return;
    }
    let (silent_at, mut connections, held) = silent_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = image_config(dir.path(), std::slice::from_ref(&silent_at));
    config.pull_timeout = Duration::from_secs(2);
    let (h, runner, images) = harness_pulling_with(dir.path(), config).await;
    let hanging = format!("{silent_at}/bw-test/busybox:1");
    bunch(
        &h,
        8,
        "tokH",
        &[
            container_spec(1, &hanging, "true"),
            container_spec(2, &hanging, "true"),
        ],
    )
    .await;
    let started = Instant::now();
    h.accept(8, 1, "tokH").await;
    assert!(started.elapsed() < Duration::from_millis(500));
    // The pull is under way: the job holds its resources, initializing.
    let state = h
        .wait_for(8, 1, |s| s.name() == "running.initializing")
        .await;
    assert_eq!(state.wire_state().as_str(), "initializing");
    // The pull has reached the registry, which holds it.
    connections.wait_for(|n| *n >= 1).await.unwrap();
    assert_eq!(
        h.worker.state_of(8, 1).unwrap().name(),
        "running.initializing"
    );
    let cancelled_at = Instant::now();
    let (status, _) = h.cancel(8, 1).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h.wait_final(8, 1).await,
        JobState::Done {
            outcome: Outcome::Cancelled
        }
    );
    assert!(cancelled_at.elapsed() < Duration::from_secs(2));
    h.wait_event(8, 1, "logs_uploaded").await;
    // Not cancelled, the same pull ends at --image-pull-timeout-s.
    h.accept(8, 2, "tokH").await;
    match h.wait_final(8, 2).await {
        JobState::Errored { kind, message } => {
            assert_eq!(kind, ErrorKind::ImagePullFailed);
            assert!(message.contains("did not finish within 2 s"), "{message}");
        }
        other => panic!("expected image_pull_failed, got {other:?}"),
    }
    assert_nothing_left(&runner, h.data.path());
    assert_eq!(scratch_left(&images).await, Vec::<PathBuf>::new());
    held.abort();
}

#[tokio::test]
async fn pulls_beyond_the_bound_wait_for_one_to_end() {
    if images().is_none() {
        return;
    }
    let (silent_at, mut connections, held) = silent_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = image_config(dir.path(), std::slice::from_ref(&silent_at));
    config.max_concurrent_pulls = 1;
    let (h, _runner, images) = harness_pulling_with(dir.path(), config).await;
    // Two different images: two pulls, one at a time.
    bunch(
        &h,
        10,
        "tokQ",
        &[
            container_spec(1, &format!("{silent_at}/one:1"), "true"),
            container_spec(2, &format!("{silent_at}/two:1"), "true"),
        ],
    )
    .await;
    h.accept(10, 1, "tokQ").await;
    connections.wait_for(|n| *n >= 1).await.unwrap();
    h.accept(10, 2, "tokQ").await;
    h.wait_for(10, 2, |s| s.name() == "running.initializing")
        .await;
    // Job 2's pull waits for the permit, and has not reached the registry.
    tokio::time::timeout(crate::support::HANG_GUARD, async {
        while images.pulls_waiting() != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the second pull waits for the first");
    assert_eq!(*connections.borrow(), 1, "the second pull did not wait");
    h.cancel(10, 1).await;
    connections.wait_for(|n| *n >= 2).await.unwrap();
    h.cancel(10, 2).await;
    h.wait_final(10, 2).await;
    held.abort();
}

#[tokio::test]
async fn a_registry_sending_an_endless_manifest_fails_one_pull_not_the_worker() {
    let Some((image, _)) = images() else {
        return;
    };
    // A "registry" whose every manifest is JSON whitespace without end: the
    // registry client reads a manifest whole.
    let hostile = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hostile_at = hostile.local_addr().unwrap().to_string();
    let endless = || async {
        let chunk = bytes::Bytes::from(vec![b' '; 64 << 10]);
        let body = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
        (
            [("content-type", "application/vnd.oci.image.manifest.v1+json")],
            axum::body::Body::from_stream(body),
        )
    };
    let app = axum::Router::new()
        .route("/v2/", axum::routing::get(|| async { "{}" }))
        .route("/v2/{*rest}", axum::routing::get(endless));
    let served = tokio::spawn(async move { axum::serve(hostile, app).await });
    let dir = tempfile::tempdir().unwrap();
    let config = image_config(dir.path(), &[hostile_at.clone(), registry_of(&image)]);
    let (h, runner, images) = harness_pulling_with(dir.path(), config).await;
    let bomb = format!("{hostile_at}/bw-test/bomb:1");
    bunch(
        &h,
        9,
        "tokB",
        &[
            container_spec(1, &bomb, "true"),
            container_spec(2, &image, "echo still-here"),
        ],
    )
    .await;
    h.accept(9, 1, "tokB").await;
    match h.wait_final(9, 1).await {
        JobState::Errored { kind, message } => {
            assert_eq!(kind, ErrorKind::ImagePullFailed);
            assert!(message.contains(&bomb), "{message}");
            assert!(message.contains("memory limit"), "{message}");
        }
        other => panic!("expected image_pull_failed, got {other:?}"),
    }
    // The worker (this test process) is untouched and runs the next job.
    h.accept(9, 2, "tokB").await;
    assert_eq!(
        h.wait_final(9, 2).await,
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
    assert_eq!(h.log_text(9, 2).await.trim(), "still-here");
    h.wait_event(9, 2, "logs_uploaded").await;
    assert_nothing_left(&runner, h.data.path());
    assert_eq!(scratch_left(&images).await, Vec::<PathBuf>::new());
    served.abort();
}
