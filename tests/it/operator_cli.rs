//! The operator's client through the binary, against a real `serve` on
//! loopback: `submit` → `jobs list` → `jobs status` → `jobs log -f` to the
//! end → `jobs events` → `jobs cancel`, and `bunch write` with a raw create.

use std::process::{Command, Output, Stdio};

use batch_worker::demo::driver::EmbeddedDriver;
use serde_json::Value;

use crate::support::{ServeChild, HANG_GUARD};

/// A `serve` child on loopback with its spec store under `dir/specs`,
/// activated by an embedded driver.
struct Worker {
    dir: tempfile::TempDir,
    specs: std::path::PathBuf,
    serve: ServeChild,
    _driver: EmbeddedDriver,
}

impl Worker {
    async fn start() -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let (data, specs) = (dir.path().join("data"), dir.path().join("specs"));
        std::fs::create_dir_all(&specs).unwrap();
        let driver = EmbeddedDriver::start().await.unwrap();
        let serve = ServeChild::start(&data, &specs, driver.url.as_str(), &[]).await;
        Worker {
            dir,
            specs,
            serve,
            _driver: driver,
        }
    }
}

/// Runs the binary with `args` (and `BATCH_WORKER_URL` = `worker`) to its
/// exit, off the test's runtime threads.
async fn cli(worker: &str, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let worker = worker.to_owned();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_batch-worker"))
            .args(&args)
            .env("BATCH_WORKER_URL", worker)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("the binary runs")
    });
    tokio::time::timeout(HANG_GUARD, run)
        .await
        .expect("the command ends")
        .expect("the command's thread")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_submits_lists_reads_follows_and_cancels_through_the_binary() {
    // Given a worker serving on loopback, and a specs file a person wrote
    let Worker {
        dir,
        specs,
        serve,
        _driver,
    } = Worker::start().await;
    let file = dir.path().join("specs.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"process": {"type": "docker", "image": "ubuntu:24.04", "command": ["sh", "-c", "echo one; echo two"]}, "resources": {"cores_mcpu": 250}}"#,
            "\n\n",
            r#"{"process": {"type": "docker", "image": "ubuntu:24.04", "command": ["sh", "-c", "echo failing >&2; exit 3"]}}"#,
            "\n",
        ),
    )
    .unwrap();
    let store = specs.to_str().unwrap();

    // When it is submitted (the store as a plain absolute path)
    let out = cli(
        &serve.base,
        &[
            "submit",
            file.to_str().unwrap(),
            "--store",
            store,
            "--batch",
            "7",
        ],
    )
    .await;
    let (stdout, stderr) = text(&out);

    // Then each job's outcome is printed as it ends, and the exit says one failed
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("7:1  succeeded (exit 0)"), "{stdout}");
    assert!(stdout.contains("7:2  failed (exit 3)"), "{stdout}");
    assert!(
        stdout.contains("2 of 2 jobs ended: 1 succeeded, 1 failed"),
        "{stdout}"
    );
    assert!(stderr.contains("wrote bunch"), "{stderr}");

    // And the list shows both, as a table and as JSON
    let out = cli(&serve.base, &["jobs", "list", "--batch", "7"]).await;
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(stdout.starts_with("JOB"), "{stdout}");
    assert!(stdout.contains("2 jobs: 1 succeeded, 1 failed"), "{stdout}");
    let out = cli(
        &serve.base,
        &["jobs", "list", "--state", "failed", "--json"],
    )
    .await;
    let page: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(page["matched"], 1);
    assert_eq!(page["jobs"][0]["job_id"], 2);
    assert_eq!(page["jobs"][0]["exit_code"], 3);

    // And status reads in words, with the Hail state beside it
    let out = cli(&serve.base, &["jobs", "status", "7:2"]).await;
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("failed (exit 3) [Hail state: failed]"),
        "{stdout}"
    );
    assert!(stdout.contains("task main:"), "{stdout}");

    // When a slow job is submitted without waiting, and its log followed
    let slow = dir.path().join("slow.jsonl");
    std::fs::write(
        &slow,
        concat!(
            r#"{"process": {"type": "docker", "image": "x", "command": ["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.3; done; exit 4"]}}"#,
            "\n",
            r#"{"process": {"type": "docker", "image": "x", "command": ["sleep", "600"]}}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = cli(
        &serve.base,
        &["submit", slow.to_str().unwrap(), "--no-wait"],
    )
    .await;
    assert!(out.status.success(), "{:?}", text(&out));
    // The batch is the next free one, the store the worker's own.
    assert!(text(&out).1.contains("jobs 8:1 to 8:2"), "{:?}", text(&out));
    let out = cli(&serve.base, &["jobs", "log", "-f", "8:1"]).await;

    // Then the whole log arrives, once, and the exit code is the job's
    let (stdout, _) = text(&out);
    assert_eq!(stdout, "line 1\nline 2\nline 3\n");
    assert_eq!(out.status.code(), Some(4));

    // And its events tell the story
    let out = cli(&serve.base, &["jobs", "events", "8:1"]).await;
    let (stdout, _) = text(&out);
    for event in [
        "created",
        "spec_loaded",
        "process_started",
        "process_exited",
    ] {
        assert!(stdout.contains(event), "{event} in {stdout}");
    }

    // When the running job is cancelled
    let out = cli(&serve.base, &["jobs", "cancel", "8:2"]).await;
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(
        text(&out).0.contains("cancel requested"),
        "{:?}",
        text(&out)
    );

    // Then it ends cancelled
    let mut changes = 0;
    let state = loop {
        let out = cli(&serve.base, &["jobs", "status", "8:2", "--json"]).await;
        let status: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        if status["state"] == "cancelled" || changes == 200 {
            break status["state"].clone();
        }
        changes += 1;
        // The child's state is not an event this test can wait on: poll.
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    assert_eq!(state, "cancelled");

    // And an unknown job is an error naming it, exit 1
    let out = cli(&serve.base, &["jobs", "status", "8:77"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("job 8:77 is not on this worker"),
        "{:?}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bunch_write_gives_create_bodies_a_raw_create_runs() {
    // Given a worker and a bunch written by `bunch write`
    let Worker {
        dir,
        specs,
        serve,
        _driver,
    } = Worker::start().await;
    let file = dir.path().join("specs.jsonl");
    std::fs::write(
        &file,
        r#"{"job_id": 99, "process": {"type": "docker", "image": "x", "command": ["echo", "raw"]}}"#,
    )
    .unwrap();
    let creates = dir.path().join("creates.jsonl");
    let out = cli(
        &serve.base,
        &[
            "bunch",
            "write",
            file.to_str().unwrap(),
            "--store",
            specs.to_str().unwrap(),
            "--batch",
            "3",
            "--start-job-id",
            "5",
            "--creates",
            creates.to_str().unwrap(),
        ],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("batch_id=3") && stdout.contains("start_job_id=5"),
        "{stdout}"
    );
    // The line's own job_id is replaced, and the operator told so.
    assert!(stderr.contains("job_id 99 replaced by 5"), "{stderr}");

    // When the create body is posted as is (as curl --data @FILE would)
    let body = std::fs::read_to_string(&creates).unwrap();
    let answer = reqwest::Client::new()
        .post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
        .header("Content-Type", "application/json")
        .body(body.trim().to_owned())
        .send()
        .await
        .unwrap();

    // Then the worker takes it and the job runs to success
    assert!(answer.status().is_success(), "{}", answer.status());
    let out = cli(&serve.base, &["jobs", "log", "-f", "3:5"]).await;
    assert_eq!(text(&out).0, "raw\n");
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_pages_and_refuses_bad_parameters_with_the_envelope() {
    // Given a worker with six jobs of two batches
    let Worker {
        dir,
        specs: _,
        serve,
        _driver,
    } = Worker::start().await;
    let file = dir.path().join("specs.jsonl");
    let line = r#"{"process": {"type": "docker", "image": "x", "command": ["true"]}}"#;
    std::fs::write(&file, format!("{line}\n{line}\n{line}\n")).unwrap();
    for batch in ["2", "1"] {
        let out = cli(
            &serve.base,
            &["submit", file.to_str().unwrap(), "--batch", batch],
        )
        .await;
        assert!(out.status.success(), "{:?}", text(&out));
    }
    let http = reqwest::Client::new();
    let get = |query: &str| {
        let url = format!("{}/batch-worker/v1/jobs?{query}", serve.base);
        let http = http.clone();
        async move {
            let answer = http.get(url).send().await.unwrap();
            (
                answer.status().as_u16(),
                answer.json::<Value>().await.unwrap(),
            )
        }
    };

    // When it is listed two at a time
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = get(&format!("limit=2&after={after}")).await;
        assert_eq!(status, 200);
        for job in page["jobs"].as_array().unwrap() {
            seen.push((
                job["batch_id"].as_i64().unwrap(),
                job["job_id"].as_i64().unwrap(),
            ));
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }

    // Then every job comes once, in (batch, job) order
    assert_eq!(seen, [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]);
    let (_, page) = get("batch_id=2&state=succeeded").await;
    assert_eq!(page["matched"], 3);

    // And bad parameters are 400s naming the parameter
    for (query, field) in [
        ("limit=0", "limit"),
        ("state=runing", "state"),
        ("after=7", "after"),
        ("batch_id=-1", "batch_id"),
    ] {
        let (status, body) = get(query).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_take_different_batches_and_bad_ids_write_nothing() {
    // Given a worker and one specs file
    let Worker {
        dir,
        specs,
        serve,
        _driver,
    } = Worker::start().await;
    let file = dir.path().join("specs.jsonl");
    let line = r#"{"process": {"type": "docker", "image": "x", "command": ["true"]}}"#;
    std::fs::write(&file, format!("{line}\n{line}\n")).unwrap();
    let file = file.to_str().unwrap();

    // When three submits without --batch run at once
    let submit = ["submit", file];
    let (a, b, c) = tokio::join!(
        cli(&serve.base, &submit),
        cli(&serve.base, &submit),
        cli(&serve.base, &submit),
    );

    // Then every one of them creates and runs its two jobs, each in a batch of its own
    for out in [&a, &b, &c] {
        assert!(out.status.success(), "{:?}", text(out));
        assert!(
            text(out).0.contains("2 of 2 jobs ended: 2 succeeded"),
            "{:?}",
            text(out)
        );
    }
    let out = cli(&serve.base, &["jobs", "list", "--json"]).await;
    let page: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(page["matched"], 6, "{page}");

    // And negative ids and job ids past i64::MAX are refused before anything is written
    let before = walk(&specs);
    for args in [
        &["submit", file, "--batch=-1"][..],
        &[
            "bunch",
            "write",
            file,
            "--store",
            specs.to_str().unwrap(),
            "--batch",
            "5",
            "--start-job-id=-5",
        ],
        &[
            "bunch",
            "write",
            file,
            "--store",
            specs.to_str().unwrap(),
            "--batch",
            "5",
            "--start-job-id",
            "9223372036854775807",
        ],
    ] {
        let out = cli(&serve.base, args).await;
        assert!(!out.status.success(), "{args:?}: {:?}", text(&out));
    }
    assert_eq!(walk(&specs), before, "nothing was written");

    // And a Range past the log's end is a 416 in the API's envelope
    let answer = reqwest::Client::new()
        .get(format!(
            "{}/api/v1alpha/batches/1/jobs/1/log/main",
            serve.base
        ))
        .header("Range", "bytes=999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 416);
    let body: Value = answer.json().await.expect("the error envelope");
    assert_eq!(body["error"]["code"], "range_not_satisfiable", "{body}");
}

/// Every file under `dir`, sorted.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
