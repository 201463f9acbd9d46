//! `batch-worker spec show`: every kind of bunch damage is named, with the
//! kind and message the worker itself records for that bunch.
//!
//! The library function ([`spec_diag::diagnose`]) on each kind, checked
//! against [`SpecStore::load`] (the worker's verdict); the real binary on
//! a good spec and three bad ones (exit codes 0, 1 and 2).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use batch_worker::job_spec::SpecTextError;
use batch_worker::spec_diag::{self, Diagnosis, ObjectSize, SpecProblem, SpecQuery};
use batch_worker::spec_store::{SpecLoadConfig, SpecReadError, SpecStore};
use batch_worker::store::FaultStore;
use batch_worker::wire::CreateJob;
use batch_worker_model::ErrorKind;
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use serde_json::json;

use crate::support::{create_body, shell_spec};

const BATCH: i64 = 7;
const TOKEN: &str = "diag42";
const START: i64 = 10;

/// A `file://` spec store in a temporary directory.
struct Bunch {
    dir: tempfile::TempDir,
    specs: SpecStore,
}

impl Bunch {
    /// A bunch of jobs 10, 11, 12 (all good) in a fresh store.
    async fn new() -> Bunch {
        Bunch::with(vec![
            shell_spec(10, "true").to_string().into_bytes(),
            shell_spec(11, "echo 11").to_string().into_bytes(),
            shell_spec(12, "exit 3").to_string().into_bytes(),
        ])
        .await
    }

    /// A bunch of `specs` for jobs 10.. in a fresh store.
    async fn with(specs: Vec<Vec<u8>>) -> Bunch {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let specs_store = SpecStore::on_caller_runtime(store, Default::default(), config());
        specs_store.write_bunch(BATCH, TOKEN, &specs).await.unwrap();
        Bunch {
            dir,
            specs: specs_store,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("{BATCH}/bunch/{TOKEN}/{name}"))
    }

    fn set_index(&self, offsets: &[u64]) {
        let bytes: Vec<u8> = offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        std::fs::write(self.file("specs.idx"), bytes).unwrap();
    }

    /// Diagnoses `job` and checks that the diagnosis agrees with the
    /// worker's own load of the same job: same kind, same message.
    async fn show(&self, job: i64) -> Diagnosis {
        show_in(&self.specs, job, true).await
    }
}

fn config() -> SpecLoadConfig {
    SpecLoadConfig {
        max_spec_bytes: 4096,
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
        max_attempts: 3,
        jitter_seed: Some(1),
        ..SpecLoadConfig::default()
    }
}

/// Diagnoses `job` and checks the verdict against the worker's own load
/// of the job: the same kind, and (`exact`: a store without random faults)
/// the same message. A job before the bunch's start has no create call.
async fn show_in(specs: &SpecStore, job: i64, exact: bool) -> Diagnosis {
    let query = SpecQuery {
        batch_id: BATCH,
        token: TOKEN.into(),
        start_job_id: START,
        job_id: job,
    };
    let diagnosis = spec_diag::diagnose(specs, &query).await;
    let body = serde_json::to_vec(&create_body(BATCH, job, TOKEN, START)).unwrap();
    let Ok(create) = CreateJob::parse(&body) else {
        return diagnosis;
    };
    let worker = specs.load(&create).await;
    match (&diagnosis.verdict, &worker) {
        (Ok(object), Ok(spec)) => assert_eq!(object["job_id"], json!(spec.job_id)),
        (Err(problem), Err(e)) if exact => {
            assert_eq!(&problem.load_error(), e, "the worker's verdict")
        }
        (Err(problem), Err(e)) => assert_eq!(problem.kind(), e.kind, "the worker's kind: {e}"),
        (ours, theirs) => panic!("spec show says {ours:?}, the worker {theirs:?}"),
    }
    diagnosis
}

fn problem(diagnosis: &Diagnosis) -> &SpecProblem {
    diagnosis
        .verdict
        .as_ref()
        .err()
        .unwrap_or_else(|| panic!("expected a problem:\n{}", diagnosis.render()))
}

#[tokio::test]
async fn a_good_spec_is_shown_with_the_bytes_read() {
    let bunch = Bunch::new().await;
    let d = bunch.show(11).await;
    let object = d.verdict.as_ref().expect("a good spec");
    assert_eq!(object["process"]["command"][2], "echo 11");
    let first = shell_spec(10, "true").to_string().len() as u64;
    let second = shell_spec(11, "echo 11").to_string().len() as u64;
    assert_eq!(d.read, Some((8..24, first..first + second)));
    assert_eq!(d.index_size, ObjectSize::Bytes(32));
    assert!(d.notes.is_empty(), "{:?}", d.notes);
    let text = d.render();
    assert!(text.contains("ok: the worker loads this spec"), "{text}");
    assert!(text.contains("\"echo 11\""), "{text}");
    assert!(
        text.contains("7/bunch/diag42/specs.idx: 32 bytes, 4 offsets (jobs 10..=12)"),
        "{text}"
    );
}

#[tokio::test]
async fn a_missing_index_is_spec_missing_naming_the_key() {
    let bunch = Bunch::new().await;
    std::fs::remove_file(bunch.file("specs.idx")).unwrap();
    let d = bunch.show(10).await;
    assert_eq!(
        problem(&d),
        &SpecProblem::Read(SpecReadError::NotFound {
            key: "7/bunch/diag42/specs.idx".into()
        })
    );
    assert_eq!(problem(&d).kind(), ErrorKind::SpecMissing);
    assert_eq!(d.index_size, ObjectSize::Missing);
    assert!(d.render().contains("not found: 7/bunch/diag42/specs.idx"));
}

#[tokio::test]
async fn a_missing_specs_object_is_spec_missing_naming_the_key() {
    let bunch = Bunch::new().await;
    std::fs::remove_file(bunch.file("specs")).unwrap();
    let d = bunch.show(12).await;
    assert_eq!(
        problem(&d),
        &SpecProblem::Read(SpecReadError::NotFound {
            key: "7/bunch/diag42/specs".into()
        })
    );
    assert_eq!(d.specs_size, ObjectSize::Missing);
    assert_eq!(d.index_size, ObjectSize::Bytes(32));
}

#[tokio::test]
async fn a_short_index_is_too_short_for_the_job_and_not_a_multiple_of_8() {
    let bunch = Bunch::new().await;
    let index = std::fs::read(bunch.file("specs.idx")).unwrap();
    std::fs::write(bunch.file("specs.idx"), &index[..20]).unwrap();
    let d = bunch.show(11).await;
    assert!(
        matches!(problem(&d), SpecProblem::Read(SpecReadError::IndexTooShort { size: 20, entry, .. }) if *entry == (8..24)),
        "{:?}",
        d.verdict
    );
    assert_eq!(problem(&d).kind(), ErrorKind::SpecCorrupt);
    assert!(
        d.notes
            .iter()
            .any(|n| n.contains("not a multiple of 8") && n.contains("4 stray bytes")),
        "{:?}",
        d.notes
    );
    // A job past the end of an intact index: too short as well.
    let whole = Bunch::new().await;
    let d = whole.show(13).await;
    assert!(matches!(
        problem(&d),
        SpecProblem::Read(SpecReadError::IndexTooShort { size: 32, .. })
    ));
    // A job before the bunch's start.
    let d = whole.show(9).await;
    assert!(matches!(
        problem(&d),
        SpecProblem::Read(SpecReadError::NotInBunch {
            job_id: 9,
            start_job_id: 10
        })
    ));
}

#[tokio::test]
async fn offsets_out_of_order_or_beyond_the_specs_object_are_named() {
    let bunch = Bunch::new().await;
    let size = std::fs::metadata(bunch.file("specs")).unwrap().len();
    bunch.set_index(&[0, 50, 20, size + 100]);
    let d = bunch.show(11).await;
    assert_eq!(
        problem(&d),
        &SpecProblem::Read(SpecReadError::OffsetsReversed {
            key: "7/bunch/diag42/specs.idx".into(),
            job_id: 11,
            start: 50,
            end: 20,
        })
    );
    let d = bunch.show(12).await;
    assert_eq!(
        problem(&d),
        &SpecProblem::Read(SpecReadError::SpecsTooShort {
            key: "7/bunch/diag42/specs".into(),
            size,
            range: 20..size + 100,
        })
    );
    assert!(d.render().contains(&format!(
        "spec_corrupt: 7/bunch/diag42/specs is {size} bytes, but the index places the spec at bytes 20..{}",
        size + 100
    )));
    // Over the size cap: decided from the index alone.
    bunch.set_index(&[0, 5000]);
    let d = bunch.show(10).await;
    assert!(matches!(
        problem(&d),
        SpecProblem::Read(SpecReadError::OverCap {
            size: 5000,
            cap: 4096,
            ..
        })
    ));
}

#[tokio::test]
async fn invalid_utf8_is_named_with_the_byte_position() {
    let mut bad = br#"{"job_id": 11, "x": "caf"#.to_vec();
    bad.extend_from_slice(&[0xC3, 0x28]);
    bad.extend_from_slice(br#""}"#);
    let first = shell_spec(10, "true").to_string().into_bytes();
    let at = first.len() as u64;
    let bunch = Bunch::with(vec![first, bad]).await;
    let d = bunch.show(11).await;
    assert_eq!(
        problem(&d),
        &SpecProblem::Text(SpecTextError::NotUtf8 {
            valid_up_to: 24,
            len: 28
        })
    );
    let text = d.render();
    assert!(
        text.contains(&format!(
            "first invalid byte: offset 24 in the spec, byte {} of specs",
            at + 24
        )),
        "{text}"
    );
}

#[tokio::test]
async fn invalid_json_is_named_with_line_and_column() {
    let bad = b"{\"job_id\": 10,\n  \"process\": {\"type\": \"docker\",}\n}".to_vec();
    let bunch = Bunch::with(vec![bad]).await;
    let d = bunch.show(10).await;
    let SpecProblem::Text(SpecTextError::NotJson { line, column, .. }) = problem(&d) else {
        panic!("{:?}", d.verdict);
    };
    assert_eq!((*line, *column), (2, 32));
    assert!(d.render().contains("at line 2, column 32 of the spec"));
    // Empty, and JSON that is not an object.
    let bunch = Bunch::with(vec![Vec::new(), b"[1, 2]".to_vec()]).await;
    assert_eq!(
        problem(&bunch.show(10).await),
        &SpecProblem::Text(SpecTextError::Empty)
    );
    assert_eq!(
        problem(&bunch.show(11).await),
        &SpecProblem::Text(SpecTextError::NotObject { found: "array" })
    );
}

#[tokio::test]
async fn a_spec_that_fails_validation_names_the_field_and_what_was_expected() {
    let mut no_command = shell_spec(10, "true");
    no_command["process"]["command"] = json!([]);
    let mut bad_memory = shell_spec(11, "true");
    bad_memory["resources"]["memory_bytes"] = json!(-1);
    let cases = [
        (
            no_command,
            "process.command",
            "expected a non-empty list of strings",
        ),
        (
            bad_memory,
            "resources.memory_bytes",
            "expected a non-negative integer",
        ),
        (
            shell_spec(99, "true"),
            "job_id",
            "the spec belongs to another job",
        ),
    ];
    let bunch = Bunch::with(cases.iter().map(|c| c.0.to_string().into_bytes()).collect()).await;
    for (i, (_, field, expected)) in cases.iter().enumerate() {
        let d = bunch.show(START + i as i64).await;
        let SpecProblem::Invalid {
            field: named,
            message,
        } = problem(&d)
        else {
            panic!("{:?}", d.verdict);
        };
        assert_eq!(named, field);
        assert!(message.contains(expected), "{message}");
        assert!(d.render().contains(&format!("field: {field}")));
    }
}

#[tokio::test]
async fn short_reads_and_store_errors_are_spec_unavailable() {
    let bunch = Bunch::new().await;
    let local: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(bunch.dir.path()).unwrap());
    for (plan, why) in [
        ("seed=1,short_read=1", "short read"),
        ("seed=1,error=1", ""),
    ] {
        let faulty = FaultStore::new(local.clone(), plan.parse().unwrap());
        let specs = SpecStore::on_caller_runtime(Arc::new(faulty), Default::default(), config());
        let d = show_in(&specs, 10, false).await;
        let SpecProblem::Read(SpecReadError::Unreadable {
            attempts, reason, ..
        }) = problem(&d)
        else {
            panic!("{plan}: {:?}", d.verdict);
        };
        assert_eq!(*attempts, 3);
        assert!(reason.contains(why), "{reason}");
        assert_eq!(problem(&d).kind(), ErrorKind::SpecUnavailable);
    }
}

/// Runs `batch-worker spec show --store file://{dir} --batch 7 --start 10`
/// with `extra` (`--token`, `--job`).
fn run(dir: &Path, extra: &[&str]) -> std::process::Output {
    let store = url::Url::from_directory_path(dir).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_batch-worker"))
        .args(["spec", "show", "--store", store.as_str()])
        .args(["--batch", "7", "--start", "10"])
        .args(extra)
        .output()
        .expect("batch-worker runs")
}

#[tokio::test]
async fn the_command_exits_0_for_a_good_spec_1_for_a_bad_one_2_for_usage() {
    let bunch = Bunch::with(vec![
        shell_spec(10, "echo good").to_string().into_bytes(),
        b"{\"job_id\": 11,\n \"process\": }".to_vec(),
    ])
    .await;
    let dir = bunch.dir.path();

    let good = run(dir, &["--token", TOKEN, "--job", "10"]);
    let out = String::from_utf8_lossy(&good.stdout);
    assert_eq!(good.status.code(), Some(0), "{out}");
    assert!(out.contains("ok: the worker loads this spec"), "{out}");
    assert!(out.contains("\"echo good\""), "{out}");
    assert!(out.contains("read   specs.idx bytes 0..16"), "{out}");

    let json = run(dir, &["--token", TOKEN, "--job", "11"]);
    let out = String::from_utf8_lossy(&json.stdout);
    assert_eq!(json.status.code(), Some(1), "{out}");
    assert!(
        out.contains("spec_corrupt: the spec is not valid JSON"),
        "{out}"
    );
    assert!(out.contains("at line 2, column 13 of the spec"), "{out}");

    std::fs::remove_file(bunch.file("specs")).unwrap();
    let missing = run(dir, &["--token", TOKEN, "--job", "10"]);
    let out = String::from_utf8_lossy(&missing.stdout);
    assert_eq!(missing.status.code(), Some(1), "{out}");
    assert!(out.contains("spec_missing"), "{out}");
    assert!(out.contains("not found: 7/bunch/diag42/specs"), "{out}");

    let usage = run(dir, &["--token", TOKEN, "--job", "ten"]);
    assert_eq!(usage.status.code(), Some(2));
    let usage = run(dir, &["--token", "../x", "--job", "10"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[tokio::test]
async fn unknown_fields_are_listed_with_did_you_mean_as_the_worker_records_them() {
    let mut typo = shell_spec(10, "true");
    typo["timout"] = json!(1);
    typo["process"]["comand"] = json!(["false"]);
    let bunch = Bunch::with(vec![
        typo.to_string().into_bytes(),
        shell_spec(11, "true").to_string().into_bytes(),
    ])
    .await;

    let d = bunch.show(10).await;
    assert!(d.is_good(), "{}", d.render());
    // The same fields the worker's own load finds.
    let body = serde_json::to_vec(&create_body(BATCH, 10, TOKEN, START)).unwrap();
    let loaded = bunch.specs.load(&CreateJob::parse(&body).unwrap()).await;
    assert_eq!(d.unknown_fields, loaded.unwrap().unknown_fields);

    let shown = run(bunch.dir.path(), &["--token", TOKEN, "--job", "10"]);
    let out = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.status.code(), Some(0), "{out}");
    assert!(
        out.contains("warn   unknown field `timout` ignored; did you mean `timeout`?\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "warn   unknown field `process.comand` ignored; did you mean `process.command`?\n"
        ),
        "{out}"
    );
    // A good spec has no warning line.
    let good = run(bunch.dir.path(), &["--token", TOKEN, "--job", "11"]);
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(!out.contains("warn "), "{out}");
}
