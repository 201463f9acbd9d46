//! The replay tool against a committed corpus of small journals, good and
//! bad (`tests/fixtures/journals/`), each with its expected problems.
//! `BW_WRITE_FIXTURES=1 cargo test --test it replay` rewrites the corpus.

use std::path::PathBuf;

use batch_worker::journal::{encode_header, encode_record, AttemptInfo, JournalRecord};
use batch_worker::replay::{replay_path, ReplayOptions};
use batch_worker::worker::status_of;
use batch_worker_model::{
    ErrorKind, Event, ExitStatus, JobKey, JobState, Outcome, ProcessKind, EVENT_VERSION,
};
use serde_json::json;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journals")
}

fn key(job_id: i64, attempt: &str) -> JobKey {
    JobKey {
        batch_id: 7,
        job_id,
        attempt_id: attempt.into(),
    }
}

/// Records with consecutive sequence numbers from 1, 10 ms apart.
fn records(events: &[(JobKey, Event)]) -> Vec<JournalRecord> {
    events
        .iter()
        .enumerate()
        .map(|(i, (key, event))| JournalRecord {
            seq: i as u64 + 1,
            time_ms: 1_764_504_000_000 + 10 * i as i64,
            event_version: EVENT_VERSION,
            key: key.clone(),
            event: event.clone(),
            attempt: None,
        })
        .collect()
}

fn bytes(records: &[JournalRecord]) -> Vec<u8> {
    let mut out = encode_header().to_vec();
    for record in records {
        encode_record(record, &mut out).unwrap();
    }
    out
}

fn good_events() -> Vec<(JobKey, Event)> {
    let (a, b) = (key(12, "Xq3T9b"), key(14, "Zz9Yy8"));
    vec![
        (
            a.clone(),
            Event::Created {
                format_version: 7,
                user: "alice".into(),
                job_group_id: 2,
                secret_names: vec!["gsa-key/key.json".into()],
            },
        ),
        (b.clone(), Event::created(7)),
        (a.clone(), Event::SpecLoadStarted),
        (b.clone(), Event::SpecLoadStarted),
        (
            a.clone(),
            Event::SpecLoaded {
                process: ProcessKind::Docker,
                size_bytes: 311,
                unsupported: vec![],
                cores_mcpu: 1000,
                memory_bytes: 1 << 30,
                input_files: 0,
                output_files: 0,
                image: None,
                resources: Some(Box::new(
                    json!({"cores_mcpu": 1000, "memory_bytes": 1 << 30, "storage_gib": 2}),
                )),
                unknown_fields: Default::default(),
            },
        ),
        (
            b.clone(),
            Event::SpecLoadFailed {
                kind: ErrorKind::SpecMissing,
                message: "7/bunch/q4w8/specs.idx does not exist in the spec store".into(),
            },
        ),
        (a.clone(), Event::ResourcesGranted),
        (a.clone(), Event::ProcessStarted { pid: 4242 }),
        (
            a,
            Event::ProcessExited {
                exit: ExitStatus::Code { code: 7 },
                duration_ms: 1333,
            },
        ),
    ]
}

/// Every fixture: its name and bytes.
fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let good = records(&good_events());
    let mut gap = good.clone();
    gap.remove(2);
    let mut torn = bytes(&good);
    let mut extra = Vec::new();
    encode_record(&records(&good_events())[0], &mut extra).unwrap();
    torn.extend_from_slice(&extra[..extra.len() / 2]);
    let mut corrupt = bytes(&good);
    let second_payload = bytes(&good[..1]).len() + 12 + 5;
    corrupt[second_payload] ^= 0x20;
    let mut illegal = good_events();
    illegal.insert(1, (key(12, "Xq3T9b"), Event::ProcessStarted { pid: 1 }));
    let mut after_terminal = good_events();
    after_terminal.push((key(14, "Zz9Yy8"), Event::CancelRequested));
    let mut two_live = good_events();
    two_live.insert(3, (key(12, "Other1"), Event::created(7)));
    // Written by a version-1 worker: no admission, so no resources_granted.
    let mut version_1 = records(
        &good_events()
            .into_iter()
            .filter(|(_, e)| *e != Event::ResourcesGranted)
            .collect::<Vec<_>>(),
    );
    for record in &mut version_1 {
        record.event_version = 1;
    }
    // Written by a version-2 worker: the create facts beside `created`
    // events, not in them; `spec_loaded` without the spec's resources.
    let mut version_2 = records(&good_events());
    for record in &mut version_2 {
        record.event_version = 2;
        match &mut record.event {
            Event::Created {
                user,
                job_group_id,
                secret_names,
                ..
            } => {
                record.attempt = Some(Box::new(AttemptInfo {
                    user: std::mem::take(user),
                    job_group_id: std::mem::take(job_group_id),
                    secret_names: std::mem::take(secret_names),
                }));
            }
            Event::SpecLoaded { resources, .. } => *resources = None,
            _ => {}
        }
    }
    vec![
        ("good", bytes(&good)),
        ("sequence_gap", bytes(&gap)),
        ("torn_tail", torn),
        ("corrupt_middle", corrupt),
        ("illegal_transition", bytes(&records(&illegal))),
        ("event_after_terminal", bytes(&records(&after_terminal))),
        ("two_live_attempts", bytes(&records(&two_live))),
        ("version_1", bytes(&version_1)),
        ("version_2", bytes(&version_2)),
    ]
}

#[test]
fn the_committed_corpus_is_current_and_each_journal_reports_what_it_should() {
    let write = std::env::var_os("BW_WRITE_FIXTURES").is_some();
    for (name, generated) in corpus() {
        let file = fixtures().join(format!("{name}.jnl"));
        if write {
            std::fs::write(&file, &generated).unwrap();
        }
        let committed = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(
            committed, generated,
            "{name}.jnl is stale: BW_WRITE_FIXTURES=1 rewrites it"
        );
        let report = replay_path(&file, ReplayOptions::default()).unwrap();
        let found: Vec<String> = report
            .problems
            .iter()
            .map(|p| {
                p.describe()
                    .replace(&fixtures().display().to_string(), "<dir>")
            })
            .collect();
        let expected_file = fixtures().join(format!("{name}.expected"));
        if write {
            std::fs::write(&expected_file, found.join("\n") + "\n").unwrap();
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap();
        let expected: Vec<&str> = expected.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(found, expected, "{name}");
        assert_eq!(
            found.is_empty(),
            ["good", "version_1", "version_2"].contains(&name),
            "{name}: {found:?}"
        );
    }
}

#[test]
fn a_version_2_journal_replays_to_todays_status_but_for_what_it_never_kept() {
    let status = |name: &str, job_id: i64| {
        let report = replay_path(
            &fixtures().join(format!("{name}.jnl")),
            ReplayOptions::default(),
        )
        .unwrap();
        let timeline = report
            .timelines
            .iter()
            .find(|t| t.key.job_id == job_id)
            .unwrap();
        serde_json::to_value(status_of(
            &timeline.view,
            &batch_worker::worker::Identity::named("w"),
        ))
        .unwrap()
    };
    let (today, old) = (status("good", 12), status("version_2", 12));
    // The create facts beside an old `created` are read into the event.
    assert_eq!(old["user"], "alice");
    assert_eq!(old["job_group_id"], 2);
    assert_eq!(old["batch_worker"]["secrets"], json!(["gsa-key/key.json"]));
    // An old `spec_loaded` did not keep the spec's resources: what it knew.
    assert_eq!(
        old["batch_worker"]["spec_resources"],
        json!({"cores_mcpu": 1000, "memory_bytes": 1 << 30})
    );
    assert_eq!(
        today["batch_worker"]["spec_resources"],
        json!({"cores_mcpu": 1000, "memory_bytes": 1 << 30, "storage_gib": 2})
    );
    let (mut today, mut old) = (today, old);
    today["batch_worker"]["spec_resources"] = json!(null);
    old["batch_worker"]["spec_resources"] = json!(null);
    assert_eq!(today, old);
}

#[test]
fn replay_rebuilds_final_states_and_durations() {
    let report = replay_path(&fixtures().join("good.jnl"), ReplayOptions::default()).unwrap();
    assert_eq!(report.summary.records, 9);
    assert_eq!(report.summary.attempts, 2);
    assert_eq!(report.summary.by_state.get("failed"), Some(&1));
    assert_eq!(report.summary.by_error_kind.get("spec_missing"), Some(&1));
    // created (t+0) -> process_started (t+70); each spec load takes 20 ms
    assert_eq!(report.summary.accepted_to_running.p50_ms, 70);
    assert_eq!(report.summary.spec_load.count, 2);
    assert_eq!(report.summary.spec_load.max_ms, 20);
    let job12 = report
        .timelines
        .iter()
        .find(|t| t.key.job_id == 12)
        .unwrap();
    assert_eq!(
        job12.final_state,
        JobState::Done {
            outcome: Outcome::Failed {
                exit: ExitStatus::Code { code: 7 }
            }
        }
    );
    assert_eq!(job12.steps[1].since_prev_ms, Some(20));

    let until = replay_path(
        &fixtures().join("good.jnl"),
        ReplayOptions {
            job: Some((7, 12)),
            until: Some(5),
            ..ReplayOptions::default()
        },
    )
    .unwrap();
    assert_eq!(until.timelines.len(), 1);
    assert_eq!(
        until.timelines[0].final_state.name(),
        "running.waiting_for_resources"
    );
}

#[test]
fn the_replay_command_checks_text_json_and_exit_codes() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_batch-worker"))
            .arg("replay")
            .args(args)
            .output()
            .unwrap()
    };
    let good = fixtures().join("good.jnl");
    let output = run(&[good.to_str().unwrap(), "--check"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("attempt 7:12/Xq3T9b"), "{text}");
    assert!(text.contains("no problems"), "{text}");

    let bad = fixtures().join("illegal_transition.jnl");
    let output = run(&[bad.to_str().unwrap(), "--check", "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["problems"][0]["problem"], "illegal_transition");
    assert_eq!(json["problems"][0]["event"], "process_started");

    // A whole directory replays too (every *.jnl in name order).
    let output = run(&[fixtures().to_str().unwrap()]);
    assert!(
        output.status.success(),
        "without --check problems do not fail"
    );
}

#[test]
fn a_version_1_journal_replays_to_the_same_states() {
    let now = replay_path(&fixtures().join("good.jnl"), ReplayOptions::default()).unwrap();
    let v1 = replay_path(&fixtures().join("version_1.jnl"), ReplayOptions::default()).unwrap();
    assert!(v1.problems.is_empty(), "{:?}", v1.problems);
    let finals = |r: &batch_worker::replay::Report| -> Vec<JobState> {
        r.timelines.iter().map(|t| t.final_state.clone()).collect()
    };
    assert_eq!(finals(&v1), finals(&now));
}
