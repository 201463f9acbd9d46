//! `input_files` are downloaded before the process starts and
//! `output_files` uploaded after it exits 0, through a real store API:
//! local files always, Azurite and moto's S3 when their variables are set
//! (always in CI). A missing input errors `input_failed` naming its URL; a
//! missing output errors `output_failed`; a 64 MiB output goes up in parts.

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rand::RngCore;
use serde_json::{json, Value};

use batch_worker::store::open_store;
use batch_worker_model::{ErrorKind, JobState, Outcome};

use crate::support::{bunch, shell_spec, Harness};

/// The stores to run against: (name, base URL for this test's files).
fn stores(scratch: &std::path::Path) -> Vec<(&'static str, String)> {
    let mut all = vec![(
        "local files",
        url::Url::from_directory_path(scratch).unwrap().to_string(),
    )];
    for (name, var) in [
        ("Azurite", "BW_TEST_AZ_ROOT"),
        ("S3 (moto)", "BW_TEST_S3_ROOT"),
    ] {
        // `az://bw-test/specs` → `az://bw-test/files/`
        if let Some(root) = crate::skips::service_var(crate::skips::Service::Emulators, var) {
            all.push((name, format!("{}/files/", root.trim_end_matches("/specs"))));
        }
    }
    all
}

fn object(url: &str) -> (std::sync::Arc<dyn ObjectStore>, Path) {
    open_store(&url::Url::parse(url).unwrap()).unwrap()
}

fn spec_with_files(job_id: i64, script: &str, inputs: Value, outputs: Value) -> Value {
    let mut spec = shell_spec(job_id, script);
    spec["input_files"] = inputs;
    spec["output_files"] = outputs;
    spec
}

fn sha256_hex(bytes: &[u8]) -> String {
    // `sha256sum` in the job computes the same; here the test compares
    // bytes, and the job's own checksum travels as an output.
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_and_outputs_round_trip_through_each_store() {
    let scratch = tempfile::tempdir().unwrap();
    let h = Harness::in_memory().await;
    let run = std::process::id();
    for (i, (name, base)) in stores(scratch.path()).into_iter().enumerate() {
        let job_id = i as i64 + 1;
        let mut input = vec![0u8; 3 * 1024 * 1024 + 17];
        rand::rng().fill_bytes(&mut input);
        let input_url = format!("{base}{run}/{job_id}/in/data.bin");
        let (store, key) = object(&input_url);
        store
            .put(&key, PutPayload::from(input.clone()))
            .await
            .unwrap();
        let sum_url = format!("{base}{run}/{job_id}/out/sum.txt");
        let copy_url = format!("{base}{run}/{job_id}/out/copy.bin");
        let spec = spec_with_files(
            job_id,
            "mkdir -p out && sha256sum io/data.bin > out/sum.txt && cp io/data.bin out/copy.bin",
            json!([{"from": input_url, "to": "/io/data.bin"}]),
            json!([
                {"from": "out/sum.txt", "to": sum_url},
                {"from": "/out/copy.bin", "to": copy_url},
            ]),
        );
        bunch(&h, 40, &format!("files{job_id}"), &[spec]).await;
        let mut body = crate::support::create_body(40, job_id, &format!("files{job_id}"), job_id);
        body["start_job_id"] = json!(job_id);
        assert_eq!(h.create(&body).await.0, reqwest::StatusCode::OK);
        let state = h.wait_final(40, job_id).await;
        assert_eq!(
            state,
            JobState::Done {
                outcome: Outcome::Succeeded
            },
            "{name}: {:?}",
            h.worker.events(40, job_id)
        );
        let (store, key) = object(&copy_url);
        let copy = store.get(&key).await.unwrap().bytes().await.unwrap();
        assert!(copy == input, "{name}: the output differs from the input");
        let (store, key) = object(&sum_url);
        let sum = store.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(&sum[..64], sha256_hex(&input).as_bytes(), "{name}");
        let names: Vec<&str> = h
            .worker
            .events(40, job_id)
            .unwrap()
            .iter()
            .map(|e| e.event.name())
            .collect();
        let staged = names.iter().position(|n| *n == "inputs_staged").unwrap();
        let started = names.iter().position(|n| *n == "process_started").unwrap();
        let uploaded = names.iter().position(|n| *n == "outputs_uploaded").unwrap();
        assert!(staged < started && started < uploaded, "{name}: {names:?}");
        eprintln!(
            "{name}: {} bytes in, 2 files out, checksums match",
            input.len()
        );
    }
}

#[tokio::test]
async fn a_missing_input_errors_the_job_naming_the_url() {
    let scratch = tempfile::tempdir().unwrap();
    let h = Harness::in_memory().await;
    let base = url::Url::from_directory_path(scratch.path()).unwrap();
    let missing = format!("{base}nothing/here.bin");
    let spec = spec_with_files(
        1,
        "echo never",
        json!([{"from": missing, "to": "in.bin"}]),
        json!([]),
    );
    bunch(&h, 41, "missing", &[spec]).await;
    h.accept(41, 1, "missing").await;
    let state = h.wait_final(41, 1).await;
    assert!(
        matches!(&state, JobState::Errored { kind: ErrorKind::InputFailed, message }
            if message.contains(&missing)),
        "{state:?}"
    );
    h.wait_reports(1).await;
    assert_eq!(h.driver.received().complete[0].status.state, "error");
    // The resources held while initializing were freed.
    assert_eq!(
        h.worker.resources_available().0,
        batch_worker::admission::Capacity::unlimited().cores_mcpu
    );
}

#[tokio::test]
async fn a_missing_output_file_errors_output_failed() {
    let scratch = tempfile::tempdir().unwrap();
    let h = Harness::in_memory().await;
    let base = url::Url::from_directory_path(scratch.path()).unwrap();
    let spec = spec_with_files(
        1,
        "echo forgot to write it",
        json!([]),
        json!([{"from": "result.txt", "to": format!("{base}result.txt")}]),
    );
    bunch(&h, 42, "noout", &[spec]).await;
    h.accept(42, 1, "noout").await;
    let state = h.wait_final(42, 1).await;
    assert!(
        matches!(&state, JobState::Errored { kind: ErrorKind::OutputFailed, message }
            if message.contains("result.txt")),
        "{state:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_output_goes_up_in_parts() {
    let Some(root) = crate::skips::service_var(crate::skips::Service::Emulators, "BW_TEST_S3_ROOT")
    else {
        return;
    };
    let h = Harness::in_memory().await;
    let url = format!(
        "{}/files/{}/big.bin",
        root.trim_end_matches("/specs"),
        std::process::id()
    );
    let spec = spec_with_files(
        1,
        "head -c 67108864 /dev/urandom > big.bin",
        json!([]),
        json!([{"from": "big.bin", "to": url}]),
    );
    bunch(&h, 43, "big", &[spec]).await;
    h.accept(43, 1, "big").await;
    assert_eq!(
        h.wait_final(43, 1).await,
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
    let (store, key) = object(&url);
    let meta = store.head(&key).await.unwrap();
    assert_eq!(meta.size, 64 * 1024 * 1024);
    // S3 gives a multipart object the ETag "{md5 of the parts' md5s}-{parts}".
    let etag = meta.e_tag.unwrap_or_default();
    eprintln!("64 MiB output: ETag {etag}");
    assert!(
        etag.trim_matches('"').contains('-'),
        "not multipart: {etag}"
    );
}

#[tokio::test]
async fn an_output_that_links_outside_the_working_directory_is_not_uploaded() {
    let scratch = tempfile::tempdir().unwrap();
    let h = Harness::in_memory().await;
    let base = url::Url::from_directory_path(scratch.path()).unwrap();
    let spec = spec_with_files(
        1,
        "ln -s /etc/hostname leak.txt",
        json!([]),
        json!([{"from": "leak.txt", "to": format!("{base}leak.txt")}]),
    );
    bunch(&h, 44, "leak", &[spec]).await;
    h.accept(44, 1, "leak").await;
    let state = h.wait_final(44, 1).await;
    assert!(
        matches!(&state, JobState::Errored { kind: ErrorKind::OutputFailed, message }
            if message.contains("outside the job's working directory")),
        "{state:?}"
    );
    assert!(!scratch.path().join("leak.txt").exists());
}

#[tokio::test]
async fn fifos_and_the_workers_own_directory_are_refused_not_waited_on() {
    let scratch = tempfile::tempdir().unwrap();
    let h = Harness::in_memory().await;
    let base = url::Url::from_directory_path(scratch.path()).unwrap();
    let own = url::Url::from_file_path(h.data.path().join("journal/000001.jnl")).unwrap();
    let fifo = scratch.path().join("in.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let specs = [
        // An output FIFO: opening it would block until a writer comes.
        spec_with_files(
            1,
            "mkfifo out.fifo",
            json!([]),
            json!([{"from": "out.fifo", "to": format!("{base}out")}]),
        ),
        // An input FIFO.
        spec_with_files(
            2,
            "echo never",
            json!([{"from": url::Url::from_file_path(&fifo).unwrap().to_string(), "to": "in"}]),
            json!([]),
        ),
        // An output over the worker's own journal.
        spec_with_files(
            3,
            "echo x > x",
            json!([]),
            json!([{"from": "x", "to": own.to_string()}]),
        ),
    ];
    bunch(&h, 45, "odd", &specs).await;
    for job_id in 1..=3 {
        h.accept(45, job_id, "odd").await;
    }
    for (job_id, kind, needle) in [
        (1, ErrorKind::OutputFailed, "not a regular file"),
        (2, ErrorKind::InputFailed, "not a regular file"),
        (3, ErrorKind::OutputFailed, "data directory"),
    ] {
        let state = h.wait_final(45, job_id).await;
        assert!(
            matches!(&state, JobState::Errored { kind: k, message } if *k == kind && message.contains(needle)),
            "job {job_id}: {state:?}"
        );
    }
}

#[tokio::test]
async fn a_file_url_with_two_slashes_errors_the_job_naming_the_field_and_the_url_meant() {
    let h = Harness::in_memory().await;
    let spec = spec_with_files(
        1,
        "echo never",
        json!([{"from": "file://tmp/x", "to": "in.bin"}]),
        json!([]),
    );
    bunch(&h, 42, "twoslash", &[spec]).await;
    // The create is taken (the spec is read later); the job errors.
    h.accept(42, 1, "twoslash").await;
    let state = h.wait_final(42, 1).await;
    assert!(
        matches!(&state, JobState::Errored { kind: ErrorKind::SpecCorrupt, message }
            if message.contains("input_files[0].from")
                && message.contains("file URLs need three slashes")
                && message.contains("did you mean file:///tmp/x?")),
        "{state:?}"
    );
}
