//! A recognisable secret sent in a create call (`gsa_key` and a mounted
//! secret's `data`) appears in nothing the worker says or keeps: not in
//! its log (at `debug`), the job's status, events or log, `/metrics`, or
//! the journal.

use batch_worker::demo::driver::EmbeddedDriver;
use batch_worker::journal::{journal_dir, segments};
use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use object_store::local::LocalFileSystem;
use serde_json::json;

use crate::support::{create_body, shell_spec, ServeChild};

/// In `gsa_key` as sent; the mounted secret's data is its base64.
const SECRET: &str = "SECRET-c0ffee-5a1t-never-shown";
const SECRET_B64: &str = "U0VDUkVULWMwZmZlZS01YTF0LW5ldmVyLXNob3du";

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn no_secret_value_reaches_logs_status_events_metrics_or_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (data, specs) = (dir.path().join("data"), dir.path().join("specs"));
    std::fs::create_dir_all(&specs).unwrap();
    let store = std::sync::Arc::new(LocalFileSystem::new_with_prefix(&specs).unwrap());
    SpecStore::new(store, Default::default(), SpecLoadConfig::default())
        .unwrap()
        .write_bunch(
            4,
            "secretbunch",
            &[serde_json::to_vec(&shell_spec(1, "echo ran")).unwrap()],
        )
        .await
        .unwrap();
    let driver = EmbeddedDriver::start().await.unwrap();
    let log = dir.path().join("serve.log");
    let serve = ServeChild::start_logging(&data, &specs, driver.url.as_str(), &[], &log).await;

    let mut body = create_body(4, 1, "secretbunch", 1);
    body["gsa_key"] = json!({"key.json": SECRET});
    body["job_spec"]["secrets"] = json!([{
        "namespace": "default", "name": "user-gsa-key", "mount_path": "/gsa-key",
        "mount_in_copy": true, "data": {"key.json": SECRET_B64}
    }]);
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    serve.wait_event(4, 1, "complete_delivered").await;

    let mut said = Vec::new();
    for path in ["status", "events", "log/main"] {
        let url = format!("{}/api/v1alpha/batches/4/jobs/1/{path}", serve.base);
        said.extend(http.get(url).send().await.unwrap().bytes().await.unwrap());
    }
    let status = http
        .get(format!(
            "{}/api/v1alpha/batches/4/jobs/1/status",
            serve.base
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        status.contains("user-gsa-key"),
        "the secret's name is shown: {status}"
    );
    said.extend(
        http.get(format!("{}/metrics", serve.base))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    );
    let mut serve = serve;
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    said.extend(std::fs::read(&log).unwrap());
    for (_, segment) in segments(&journal_dir(&data)).unwrap() {
        said.extend(std::fs::read(segment).unwrap());
    }
    assert!(holds(&said, "job_complete delivered") || holds(&said, "complete_delivered"));
    for secret in [SECRET, SECRET_B64] {
        assert!(!holds(&said, secret), "{secret} was shown");
    }
}

/// As root, `serve` runs host jobs as `nobody` and is not dumpable: a job
/// can read neither the worker's memory (where other jobs' secrets are)
/// nor its maps, and its files are its own.
#[tokio::test]
async fn a_host_job_runs_as_nobody_and_cannot_read_the_workers_memory() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs as root (as CI does): it checks the switch to nobody"
    );
    let dir = tempfile::tempdir().unwrap();
    let (data, specs) = (dir.path().join("data"), dir.path().join("specs"));
    std::fs::create_dir_all(&specs).unwrap();
    let script = "id -u; touch mine && echo WROTE-CWD; \
        (head -c 16 /proc/$PPID/mem > /dev/null 2>&1 && echo MEM-READABLE) || echo MEM-DENIED; \
        (cat /proc/$PPID/environ > /dev/null 2>&1 && echo ENV-READABLE) || echo ENV-DENIED";
    let store = std::sync::Arc::new(LocalFileSystem::new_with_prefix(&specs).unwrap());
    SpecStore::new(store, Default::default(), SpecLoadConfig::default())
        .unwrap()
        .write_bunch(
            6,
            "nobody",
            &[serde_json::to_vec(&shell_spec(1, script)).unwrap()],
        )
        .await
        .unwrap();
    let driver = EmbeddedDriver::start().await.unwrap();
    let serve = ServeChild::start(&data, &specs, driver.url.as_str(), &[]).await;
    let mut body = create_body(6, 1, "nobody", 1);
    body["gsa_key"] = json!({"key.json": SECRET});
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::OK);
    serve.wait_event(6, 1, "process_exited").await;
    let log = http
        .get(format!(
            "{}/api/v1alpha/batches/6/jobs/1/log/main",
            serve.base
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert!(log.contains(&format!("{}\n", nobody.uid)), "{log}");
    assert!(log.contains("WROTE-CWD"), "{log}");
    assert!(log.contains("MEM-DENIED"), "{log}");
    assert!(log.contains("ENV-DENIED"), "{log}");
    assert!(!holds(log.as_bytes(), SECRET), "{log}");
}
