//! Unknown job-spec fields are warned about, never silently ignored: Hail's
//! own fields never warn; a typo warns once, with the known field it is
//! near, while the job still runs; the warning is in the journal, the
//! status (`batch_worker.spec_warnings`) and the events, and survives a
//! restart.

use batch_worker::job_spec::JobSpec;
use batch_worker::spec_fields::{unknown_fields, Field, Shape, SPEC_FIELDS};
use batch_worker_model::{Event, JobState, Outcome, UnknownField};
use reqwest::StatusCode;
use serde_json::{json, Map, Value};

use batch_worker::demo::driver::EmbeddedDriver;

use crate::support::{
    bunch, create_body, shell_spec, write_local_bunch, Harness, Options, ServeChild,
};

fn sample(path: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/samples/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn object(value: &Value) -> &Map<String, Value> {
    value.as_object().expect("a JSON object")
}

/// Every job spec in the samples: the bunch's specs, and the `job_spec` of
/// every create body (the whole spec for format 1; the per-attempt fields
/// the driver sends for the others).
fn sample_specs() -> Vec<(String, Value)> {
    let mut specs = Vec::new();
    let dir = "bunch/7/bunch/q4w8e2r6t1y9u3i5";
    let data = sample(&format!("{dir}/specs"));
    let index = std::fs::read(format!(
        "{}/tests/fixtures/samples/{dir}/specs.idx",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let offsets: Vec<usize> = index
        .chunks(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
        .collect();
    for (i, pair) in offsets.windows(2).enumerate() {
        let spec = serde_json::from_slice(&data.as_bytes()[pair[0]..pair[1]]).unwrap();
        specs.push((format!("{dir}/specs #{i}"), spec));
    }
    for file in ["create-v1.json", "create-v7.json"] {
        let body: Value = serde_json::from_str(&sample(file)).unwrap();
        specs.push((file.into(), body["job_spec"].clone()));
    }
    let accounts: Value =
        serde_json::from_str(&sample("hail/create-with-service-account.json")).unwrap();
    for (name, body) in object(&accounts) {
        specs.push((
            format!("create-with-service-account {name}"),
            body["job_spec"].clone(),
        ));
    }
    // Hail's recorded exchanges: every create body's `job_spec`.
    for (n, line) in sample("hail/http-requests.txt").lines().enumerate() {
        if let Ok(body) = serde_json::from_str::<Value>(line) {
            if let Some(spec) = body.get("job_spec") {
                specs.push((format!("http-requests.txt line {}", n + 1), spec.clone()));
            }
        }
    }
    specs
}

/// A spec setting every field of the table at once: `"x"` for a plain
/// value, each object and list entry with all its fields, a free-keyed
/// object with a key of its own.
fn every_field(fields: &[Field]) -> Value {
    let mut spec = Map::new();
    for field in fields {
        let value = match field.shape {
            Shape::Value => json!("x"),
            Shape::Object(inner) => every_field(inner),
            Shape::List(inner) => json!([every_field(inner)]),
            Shape::FreeKeys => json!({"any key at all": "x"}),
        };
        spec.insert(field.name.into(), value);
    }
    Value::Object(spec)
}

#[test]
fn hails_own_specs_and_every_field_of_the_table_never_warn() {
    let specs = sample_specs();
    assert!(specs.len() >= 8, "{} sample specs", specs.len());
    for (name, spec) in &specs {
        let found = unknown_fields(object(spec));
        assert!(found.is_empty(), "{name}: {found:?}");
    }
    let all = every_field(SPEC_FIELDS);
    let found = unknown_fields(object(&all));
    assert!(found.is_empty(), "{found:?}");
    // The walk reached every level: an extra key at each one is found.
    let mut typo = all.clone();
    typo["process"]["jar_spec"]["valeu"] = json!(1);
    typo["secrets"][0]["mount_pth"] = json!(1);
    typo["gcsfuse"][0]["bucekt"] = json!(1);
    let found = unknown_fields(object(&typo));
    let paths: Vec<_> = found.fields().iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "gcsfuse[0].bucekt",
            "process.jar_spec.valeu",
            "secrets[0].mount_pth"
        ]
    );
}

/// The spec that sets every field of the table, with the values this
/// worker validates made valid: the worker loads it without a warning.
fn every_field_runnable(job_id: i64) -> Value {
    let mut spec = every_field(SPEC_FIELDS);
    spec["job_id"] = json!(job_id);
    spec["process"]["type"] = json!("docker");
    spec["process"]["command"] = json!(["sh", "-c", "true"]);
    spec["process"]["image"] = json!("ubuntu:24.04");
    spec["env"] = json!([{"name": "STAGE", "value": "x"}]);
    spec["timeout"] = json!(60);
    spec["network"] = json!("private");
    spec["port"] = json!(8000);
    spec["resources"]["cores_mcpu"] = json!(250);
    spec["resources"]["memory_bytes"] = json!(1_000_000);
    spec["resources"]["storage_gib"] = json!(0);
    spec["input_files"] = json!([]);
    spec["output_files"] = json!([]);
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_with_every_hail_field_runs_without_a_warning() {
    let spec = every_field_runnable(1);
    let parsed = JobSpec::parse(spec.to_string().as_bytes(), 1).unwrap();
    assert!(
        parsed.unknown_fields.is_empty(),
        "{:?}",
        parsed.unknown_fields
    );

    let h = Harness::in_memory().await;
    bunch(&h, 5, "everyfield", &[spec]).await;
    h.accept(5, 1, "everyfield").await;
    assert_eq!(
        h.wait_final(5, 1).await,
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
    let (_, status) = h.status(5, 1).await;
    let extension = object(&status["batch_worker"]);
    assert!(!extension.contains_key("spec_warnings"), "{status:#}");
    assert!(
        !extension.contains_key("spec_warnings_omitted"),
        "{status:#}"
    );
}

/// The warnings of the typo'd spec, as `(field, suggestion)`, sorted.
fn expected_typos() -> Vec<(String, Option<String>)> {
    let mut want: Vec<(String, Option<String>)> = [
        ("timout", "timeout"),
        ("evn", "env"),
        ("process.comand", "process.command"),
        ("resources.memroy", "resources.memory"),
        ("input_files[0].form", "input_files[0].from"),
    ]
    .into_iter()
    .map(|(field, near)| (field.to_owned(), Some(near.to_owned())))
    .collect();
    want.sort();
    want
}

fn pairs(fields: &[UnknownField]) -> Vec<(String, Option<String>)> {
    let mut pairs: Vec<_> = fields
        .iter()
        .map(|f| (f.path.clone(), f.suggestion.clone()))
        .collect();
    pairs.sort();
    pairs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typos_warn_once_each_with_their_suggestion_and_the_job_still_succeeds() {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("in.txt"), b"input").unwrap();
    let input = url::Url::from_file_path(scratch.path().join("in.txt")).unwrap();
    // The typo'd `evn` is not applied (STAGE is unset), the input is
    // staged, `comand` does not replace `command`, `timout` bounds nothing.
    let mut spec = shell_spec(1, r#"test -z "$STAGE" && test "$(cat in.txt)" = input"#);
    spec["timout"] = json!(1);
    spec["evn"] = json!([{"name": "STAGE", "value": "align"}]);
    spec["process"]["comand"] = json!(["false"]);
    spec["resources"]["memroy"] = json!("1Gi");
    spec["input_files"] = json!([{"from": input.as_str(), "to": "in.txt", "form": "x"}]);

    let h = Harness::in_memory().await;
    bunch(&h, 6, "typos", &[spec]).await;
    h.accept(6, 1, "typos").await;
    assert_eq!(
        h.wait_final(6, 1).await,
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );

    // The status: each typo once, with its suggestion and message.
    let (code, status) = h.status(6, 1).await;
    assert_eq!(code, StatusCode::OK);
    let warnings = status["batch_worker"]["spec_warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("no spec_warnings: {status:#}"));
    let mut shown: Vec<(String, Option<String>)> = warnings
        .iter()
        .map(|w| {
            (
                w["field"].as_str().unwrap().to_owned(),
                w["suggestion"].as_str().map(str::to_owned),
            )
        })
        .collect();
    shown.sort();
    assert_eq!(shown, expected_typos());
    let timout = warnings.iter().find(|w| w["field"] == "timout").unwrap();
    assert_eq!(
        timout,
        &json!({
            "field": "timout",
            "suggestion": "timeout",
            "message": "unknown field `timout` ignored; did you mean `timeout`?"
        })
    );
    assert!(!object(&status["batch_worker"]).contains_key("spec_warnings_omitted"));

    // The events endpoint serves them in `spec_loaded`.
    let (_, events) = h.get("/api/v1alpha/batches/6/jobs/1/events").await;
    let loaded = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"]["type"] == "spec_loaded")
        .unwrap_or_else(|| panic!("{events:#}"));
    let served: Vec<UnknownField> =
        serde_json::from_value(loaded["event"]["unknown_fields"].clone()).unwrap();
    assert_eq!(pairs(&served), expected_typos());

    // The journal holds them, once.
    let records = h.journal_records();
    let journaled: Vec<&[UnknownField]> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::SpecLoaded { unknown_fields, .. } if r.key.batch_id == 6 => {
                Some(unknown_fields.fields())
            }
            _ => None,
        })
        .collect();
    assert_eq!(journaled.len(), 1);
    assert_eq!(pairs(journaled[0]), expected_typos());

    // A worker opened on that journal shows the same warnings.
    h.wait_event(6, 1, "complete_delivered").await;
    let records = h.journal_records();
    let reopened = Harness::with_options(Options {
        journal: records,
        ..Options::default()
    })
    .await;
    let (code, again) = reopened.status(6, 1).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        again["batch_worker"]["spec_warnings"],
        status["batch_worker"]["spec_warnings"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_junk_keys_keeps_sixteen_warnings_and_counts_the_rest() {
    let mut spec = shell_spec(1, "true");
    for i in 0..10_000 {
        spec[format!("junk{i:05}{}", "j".repeat(100))] = json!(i);
    }
    let h = Harness::in_memory().await;
    bunch(&h, 8, "flood", &[spec]).await;
    h.accept(8, 1, "flood").await;
    assert_eq!(
        h.wait_final(8, 1).await,
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
    let (_, status) = h.status(8, 1).await;
    let warnings = status["batch_worker"]["spec_warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 16);
    assert_eq!(status["batch_worker"]["spec_warnings_omitted"], 10_000 - 16);
    for w in warnings {
        assert!(w["field"].as_str().unwrap().chars().count() <= 65, "{w}");
        assert_eq!(w["suggestion"], Value::Null);
    }
}

/// The lines of `log` that are the unknown-fields warning.
fn warning_lines(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("job spec has unknown fields"))
        .map(str::to_owned)
        .collect()
}

/// Under `serve`: the warning is logged once, when the spec is loaded, at
/// WARN with the attempt and the fields; a restart replays the journal
/// without logging it again, and still shows it in the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warning_is_logged_once_at_warn_with_the_attempt_and_the_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (data, specs) = (dir.path().join("data"), dir.path().join("specs"));
    std::fs::create_dir_all(&specs).unwrap();
    let mut typo = shell_spec(1, "true");
    typo["timout"] = json!(1);
    let bunch: Vec<Vec<u8>> = [typo, shell_spec(2, "true")]
        .iter()
        .map(|s| serde_json::to_vec(s).unwrap())
        .collect();
    write_local_bunch(&specs, 9, "logged", &bunch).await;
    let driver = EmbeddedDriver::start().await.unwrap();
    let log = dir.path().join("serve.log");
    let mut serve = ServeChild::start_logging(&data, &specs, driver.url.as_str(), &[], &log).await;
    let http = reqwest::Client::new();
    for job_id in [1, 2] {
        let answer = http
            .post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
            .json(&create_body(9, job_id, "logged", 1))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
    }
    serve.wait_event(9, 1, "complete_delivered").await;
    serve.wait_event(9, 2, "complete_delivered").await;
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();

    let lines = warning_lines(&log);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    for needle in [
        "WARN",
        "batch_id=9",
        "job_id=1",
        "attempt_id=a1",
        "unknown field `timout` ignored; did you mean `timeout`?",
    ] {
        assert!(lines[0].contains(needle), "{needle:?} not in {}", lines[0]);
    }

    // Restarted on the same data directory: shown, not logged again.
    let again = dir.path().join("serve-again.log");
    let mut serve =
        ServeChild::start_logging(&data, &specs, driver.url.as_str(), &[], &again).await;
    let status: Value = http
        .get(format!(
            "{}/api/v1alpha/batches/9/jobs/1/status",
            serve.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["batch_worker"]["spec_warnings"][0]["field"], "timout",
        "{status:#}"
    );
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    assert_eq!(warning_lines(&again), Vec::<String>::new());
}
