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
        (a.clone(), Event::process_started(4242)),
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
    illegal.insert(1, (key(12, "Xq3T9b"), Event::process_started(1)));
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
    assert!(text.contains("final states (2 attempts)"), "{text}");
    assert!(!text.contains("attempt 7:12/Xq3T9b"), "{text}");
    assert!(text.ends_with("no problems\n"), "{text}");
    let output = run(&[good.to_str().unwrap(), "--timelines"]);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("attempt 7:12/Xq3T9b: failed (exit 7)"),
        "{text}"
    );

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

// The readable output: a journal with every kind of ending, written by the
// journal's own encoder, through the binary and the library.

/// The events of one attempt of batch `batch_id`, job `job_id`.
type Life = Vec<(JobKey, Event)>;

fn attempt(batch_id: i64, job_id: i64, attempt_id: &str) -> JobKey {
    JobKey {
        batch_id,
        job_id,
        attempt_id: attempt_id.into(),
    }
}

fn loaded(image: Option<&str>, input_files: u32, output_files: u32) -> Event {
    Event::SpecLoaded {
        process: ProcessKind::Docker,
        size_bytes: 300,
        unsupported: vec![],
        cores_mcpu: 1000,
        memory_bytes: 1 << 28,
        input_files,
        output_files,
        image: image.map(str::to_owned),
        resources: None,
        unknown_fields: Default::default(),
    }
}

/// An attempt's life up to its running process (`None`: it stays there).
fn ran(key: &JobKey, exit: Option<ExitStatus>) -> Life {
    let mut life = vec![
        (key.clone(), Event::created(7)),
        (key.clone(), Event::SpecLoadStarted),
        (key.clone(), loaded(None, 0, 0)),
        (key.clone(), Event::ResourcesGranted),
        (key.clone(), Event::process_started(100)),
        (key.clone(), Event::StartedDelivered),
    ];
    if let Some(exit) = exit {
        life.push((
            key.clone(),
            Event::ProcessExited {
                exit,
                duration_ms: 40,
            },
        ));
        life.push((key.clone(), Event::LogsUploaded));
        life.push((key.clone(), Event::CompleteDelivered));
    }
    life
}

/// Eight attempts of seven jobs in two batches, interleaved: succeeded,
/// failed (exit 3), errored (spec_corrupt), cancelled while queued, timed
/// out, a worker restart then a second attempt still running, and (batch 8)
/// a job that pulls an image, stages inputs and uploads outputs.
fn outcomes() -> Vec<JournalRecord> {
    let spec = attempt(7, 23, "Spec01");
    let cancelled = attempt(7, 24, "Canc01");
    let restarted = attempt(7, 26, "Rest01");
    let image = attempt(8, 1, "Imag01");
    let mut restarted_life = ran(&restarted, None);
    restarted_life.extend([
        (restarted.clone(), Event::WorkerRestarted),
        (restarted.clone(), Event::LogsUploaded),
        (restarted.clone(), Event::CompleteDelivered),
    ]);
    let lives: Vec<Life> = vec![
        ran(
            &attempt(7, 21, "Succ01"),
            Some(ExitStatus::Code { code: 0 }),
        ),
        ran(
            &attempt(7, 22, "Fail01"),
            Some(ExitStatus::Code { code: 3 }),
        ),
        vec![
            (spec.clone(), Event::created(7)),
            (spec.clone(), Event::SpecLoadStarted),
            (
                spec.clone(),
                Event::SpecLoadFailed {
                    kind: ErrorKind::SpecCorrupt,
                    message: "7/bunch/b1/specs.idx is 8 bytes, too short".into(),
                },
            ),
            (spec.clone(), Event::LogsUploaded),
            (spec, Event::CompleteDelivered),
        ],
        vec![
            (cancelled.clone(), Event::created(7)),
            (cancelled.clone(), Event::SpecLoadStarted),
            (cancelled.clone(), loaded(None, 0, 0)),
            (cancelled.clone(), Event::CancelRequested),
            (cancelled, Event::LogsUploaded),
        ],
        ran(
            &attempt(7, 25, "Time01"),
            Some(ExitStatus::TimedOut { timeout_ms: 30 }),
        ),
        restarted_life,
        vec![
            (image.clone(), Event::created(7)),
            (image.clone(), Event::SpecLoadStarted),
            (
                image.clone(),
                loaded(Some("docker.io/library/ubuntu:24.04"), 2, 1),
            ),
            (image.clone(), Event::ResourcesGranted),
            (
                image.clone(),
                Event::ImagePulled {
                    image: "docker.io/library/ubuntu:24.04".into(),
                    digest: format!("sha256:{}", "a".repeat(64)),
                    pulled: true,
                },
            ),
            (
                image.clone(),
                Event::InputsStaged {
                    files: 2,
                    size_bytes: 4096,
                },
            ),
            (image.clone(), Event::process_started(200)),
            (
                image.clone(),
                Event::ProcessExited {
                    exit: ExitStatus::Code { code: 0 },
                    duration_ms: 90,
                },
            ),
            (
                image.clone(),
                Event::OutputsUploaded {
                    files: 1,
                    size_bytes: 10,
                },
            ),
            (image.clone(), Event::LogsUploaded),
            (image, Event::CompleteDelivered),
        ],
    ];
    // Round robin over the lives; the second attempt of job 7:26 begins
    // once the first has ended.
    let mut events = Vec::new();
    let mut lives: Vec<std::collections::VecDeque<_>> = lives.into_iter().map(Into::into).collect();
    while lives.iter().any(|life| !life.is_empty()) {
        for life in &mut lives {
            events.extend(life.pop_front());
        }
    }
    events.extend(ran(&attempt(7, 26, "Live01"), None));
    records(&events)
}

const OUTCOME_ATTEMPTS: usize = 8;

/// The outcomes journal in a temporary directory, as a worker's segment.
fn outcomes_journal() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("000001.jnl");
    std::fs::write(&file, bytes(&outcomes())).unwrap();
    (dir, file)
}

fn replay_command(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_batch-worker"))
        .arg("replay")
        .args(args)
        .output()
        .unwrap()
}

/// The replay's stdout (asserting it succeeded).
fn replay_text(file: &std::path::Path, flags: &[&str]) -> String {
    let mut args = vec![file.as_os_str()];
    args.extend(flags.iter().map(std::ffi::OsStr::new));
    let output = replay_command(&args);
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_default_text_is_a_short_summary_with_final_states_in_words_and_per_phase_durations() {
    let (_dir, file) = outcomes_journal();
    let text = replay_text(&file, &[]);
    let line = |start: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no line {start:?} in\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        !text.contains("attempt 7:"),
        "no timeline by default:\n{text}"
    );
    assert!(text.lines().count() < 40, "{text}");
    assert!(text.ends_with("no problems\n"), "{text}");
    assert!(!text.contains('{'), "no JSON in the text:\n{text}");
    // The journal's start, absolute once; everything else relative to it.
    assert!(
        text.contains("+0.000 s is 2025-11-30T12:00:00.000Z"),
        "{text}"
    );
    assert_eq!(line("final states"), "final states (8 attempts):");
    assert_eq!(line("succeeded"), "succeeded 2");
    assert_eq!(line("failed"), "failed 1");
    assert_eq!(line("timed out"), "timed out 1");
    assert_eq!(line("cancelled"), "cancelled 1");
    assert_eq!(
        line("errored"),
        "errored 2 (spec_corrupt 1, worker_restarted 1)"
    );
    assert_eq!(line("still running"), "still running 1");
    // Each phase the journal holds, with its durations (10 ms a record).
    for phase in [
        "waiting for spec",
        "waiting for resources",
        "pulling image",
        "staging inputs",
        "starting process",
        "running",
        "uploading outputs",
        "uploading logs",
        "reporting to driver",
    ] {
        assert!(line(phase).contains(" ms"), "{phase}: {text}");
    }
    // The image job pulled for 7 records' time (round robin over 7 lives).
    assert_eq!(line("pulling image"), "pulling image 1 70 ms 70 ms 70 ms");
    assert!(
        line("cores in use").starts_with("cores in use: peak 5 cores"),
        "{text}"
    );
}

#[test]
fn timelines_read_relative_to_the_attempt_or_in_iso_with_final_states_in_words() {
    let (_dir, file) = outcomes_journal();
    let text = replay_text(&file, &["--timelines"]);
    let headers: Vec<&str> = text.lines().filter(|l| l.starts_with("attempt ")).collect();
    assert_eq!(headers.len(), OUTCOME_ATTEMPTS, "{text}");
    for expected in [
        "attempt 7:21/Succ01: succeeded (exit 0)",
        "attempt 7:22/Fail01: failed (exit 3)",
        "attempt 7:23/Spec01: errored: spec_corrupt: 7/bunch/b1/specs.idx is 8 bytes, too short",
        "attempt 7:24/Canc01: cancelled",
        "attempt 7:25/Time01: timed out (after the spec's timeout of 30 ms)",
        "attempt 7:26/Live01: still running (journal ends while the job is running)",
        "attempt 8:1/Imag01: succeeded (exit 0)",
    ] {
        assert!(headers.contains(&expected), "{expected:?} in {headers:#?}");
    }
    // Each timeline's first event is at +0.000 s, its creation (given in
    // ISO on the line after the header).
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("attempt ") {
            assert!(
                lines[i + 1].contains("created 2025-11-30T12:00:"),
                "{}",
                lines[i + 1]
            );
            assert!(
                lines[i + 2].trim_start().starts_with("+0.000 s  seq"),
                "{}",
                lines[i + 2]
            );
        }
    }
    let spec = lines
        .iter()
        .position(|l| l.starts_with("attempt 7:23/"))
        .unwrap();
    // created at record 3 (t+20 ms), failed at record 17 (t+160 ms).
    assert!(
        lines[spec + 1].contains("created 2025-11-30T12:00:00.020Z (+0.020 s into the journal)")
    );
    assert!(
        lines[spec + 4].trim_start().starts_with("+0.140 s"),
        "{}",
        lines[spec + 4]
    );
    assert!(
        lines[spec + 4].contains("-> errored (spec_corrupt)"),
        "{}",
        lines[spec + 4]
    );

    let iso = replay_text(&file, &["--timelines", "--time", "iso"]);
    assert_eq!(iso, replay_text(&file, &["--timelines", "--iso"]));
    let steps: Vec<&str> = iso.lines().filter(|l| l.contains("  seq ")).collect();
    assert_eq!(steps.len(), outcomes().len(), "{iso}");
    for step in steps {
        assert!(
            step.trim_start().starts_with("2025-11-30T12:00:0"),
            "{step}"
        );
        assert!(!step.contains(" s  seq"), "{step}");
    }
    assert!(
        iso.contains("  2025-11-30T12:00:00.160Z  seq      17  spec_load_failed"),
        "{iso}"
    );
}

#[test]
fn job_narrows_the_summary_to_its_attempts_and_an_unknown_job_exits_1() {
    let (_dir, file) = outcomes_journal();
    // Job 7:26 had two attempts: one ended by a restart, one running.
    let text = replay_text(&file, &["--job", "7:26"]);
    assert!(text.contains("job 7:26: 2 attempts, "), "{text}");
    assert!(text.contains("final states (2 attempts):"), "{text}");
    assert!(!text.contains("succeeded"), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("attempt 7:26/"))
            .count(),
        2,
        "{text}"
    );
    assert!(!text.contains("attempt 7:21"), "{text}");

    let report = replay_path(
        &file,
        ReplayOptions {
            job: Some((7, 26)),
            ..ReplayOptions::default()
        },
    )
    .unwrap();
    let job = report.job_summary.as_ref().unwrap();
    assert_eq!(report.summary.attempts, OUTCOME_ATTEMPTS);
    assert_eq!(job.attempts, 2);
    assert_eq!(job.by_outcome.get("errored"), Some(&1));
    assert_eq!(job.by_outcome.get("still running"), Some(&1));
    let running = job
        .phases
        .iter()
        .find(|p| p.phase == batch_worker::replay::phases::Phase::Running)
        .unwrap();
    // Only the first attempt's run ended (at its restart).
    assert_eq!(running.durations.count, 1);

    let output = replay_command(&[file.as_os_str(), "--job".as_ref(), "7:77".as_ref()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("no attempt of job 7:77 in the journal"),
        "{stderr}"
    );
}

/// The Trace Event Format's required fields (JSON object form).
fn trace_event_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "required": ["traceEvents"],
        "properties": {
            "displayTimeUnit": {"enum": ["ms", "ns"]},
            "traceEvents": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "ph", "pid", "tid"],
                    "properties": {
                        "name": {"type": "string"},
                        "ph": {"type": "string"},
                        "pid": {"type": "integer"},
                        "tid": {"type": "integer"},
                        "args": {"type": "object"}
                    },
                    "allOf": [
                        {
                            "if": {"properties": {"ph": {"const": "X"}}},
                            "then": {
                                "required": ["ts", "dur"],
                                "properties": {
                                    "ts": {"type": "number", "minimum": 0},
                                    "dur": {"type": "number", "minimum": 0}
                                }
                            }
                        },
                        {
                            "if": {"properties": {"ph": {"const": "M"}}},
                            "then": {
                                "required": ["args"],
                                "properties": {
                                    "name": {"enum": ["process_name", "thread_name"]},
                                    "args": {
                                        "type": "object",
                                        "required": ["name"],
                                        "properties": {"name": {"type": "string"}}
                                    }
                                }
                            }
                        },
                        {
                            "if": {"properties": {"ph": {"const": "i"}}},
                            "then": {
                                "required": ["ts", "s"],
                                "properties": {"s": {"enum": ["g", "p", "t"]}}
                            }
                        }
                    ]
                }
            }
        }
    })
}

#[test]
fn the_trace_is_valid_trace_event_json_with_ordered_slices_per_attempt() {
    let (dir, file) = outcomes_journal();
    let trace_file = dir.path().join("trace.json");
    replay_text(&file, &["--trace", trace_file.to_str().unwrap()]);
    let trace: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&trace_file).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&trace_event_schema()).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&trace)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let events = trace["traceEvents"].as_array().unwrap();
    // One named track per attempt; one named process per batch.
    let threads: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .collect();
    assert_eq!(threads.len(), OUTCOME_ATTEMPTS);
    let processes: Vec<&str> = events
        .iter()
        .filter(|e| e["name"] == "process_name")
        .map(|e| e["args"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(processes, ["batch 7", "batch 8", "worker"]);
    for thread in threads {
        let (pid, tid) = (&thread["pid"], &thread["tid"]);
        let slices: Vec<(i64, i64, &str)> = events
            .iter()
            .filter(|e| e["ph"] == "X" && e["pid"] == *pid && e["tid"] == *tid)
            .map(|e| {
                (
                    e["ts"].as_i64().unwrap(),
                    e["dur"].as_i64().unwrap(),
                    e["name"].as_str().unwrap(),
                )
            })
            .collect();
        assert!(!slices.is_empty(), "{thread}");
        assert_eq!(slices[0].2, "waiting for spec");
        for pair in slices.windows(2) {
            // In order, without overlap or gap: each begins as the last ends.
            assert_eq!(pair[0].0 + pair[0].1, pair[1].0, "{thread}: {pair:?}");
        }
        if thread["args"]["name"] == "job 1 attempt Imag01" {
            let names: Vec<&str> = slices.iter().map(|s| s.2).collect();
            assert_eq!(
                names,
                [
                    "waiting for spec",
                    "waiting for resources",
                    "pulling image",
                    "staging inputs",
                    "starting process",
                    "running",
                    "uploading outputs",
                    "uploading logs",
                    "reporting to driver"
                ]
            );
        }
    }
    // The notable moments: the cancel, and the ends other than success.
    let instants: Vec<&str> = events
        .iter()
        .filter(|e| e["ph"] == "i")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for moment in [
        "cancel requested",
        "worker restarted",
        "errored",
        "failed",
        "timed out",
    ] {
        assert!(instants.contains(&moment), "{moment}: {instants:?}");
    }
}

/// The `g.attempt` rows of an SVG document: (data-job, data-attempt, title).
fn svg_rows(svg: &str) -> Vec<(String, String, String)> {
    let doc = roxmltree::Document::parse(svg).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("g") && n.attribute("class") == Some("attempt"))
        .map(|g| {
            let title = g
                .children()
                .find(|c| c.has_tag_name("title"))
                .and_then(|t| t.text())
                .unwrap_or_default();
            (
                g.attribute("data-job").unwrap().to_owned(),
                g.attribute("data-attempt").unwrap().to_owned(),
                title.to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_timeline_svg_parses_with_one_row_per_attempt_a_legend_and_the_cores_chart() {
    let (dir, file) = outcomes_journal();
    let svg_file = dir.path().join("timeline.svg");
    replay_text(&file, &["--timeline", svg_file.to_str().unwrap()]);
    let svg = std::fs::read_to_string(&svg_file).unwrap();
    let rows = svg_rows(&svg);
    assert_eq!(rows.len(), OUTCOME_ATTEMPTS);
    let mut keys: Vec<String> = rows.iter().map(|(j, a, _)| format!("{j}/{a}")).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "7:21/Succ01",
            "7:22/Fail01",
            "7:23/Spec01",
            "7:24/Canc01",
            "7:25/Time01",
            "7:26/Live01",
            "7:26/Rest01",
            "8:1/Imag01"
        ]
    );
    let spec = rows.iter().find(|r| r.1 == "Spec01").unwrap();
    assert!(
        spec.2.starts_with("7:23/Spec01: errored: spec_corrupt:"),
        "{}",
        spec.2
    );
    for label in ["waiting for resources", "pulling image", "running"] {
        assert!(svg.contains(&format!(">{label}</text>")), "legend {label}");
    }
    assert!(svg.contains("cores in use"));
    // Five jobs hold a core each from the 4th round of records to the 7th.
    assert!(svg.contains(">peak 5 cores at +"), "the peak is marked");
}

#[test]
fn a_2000_attempt_timeline_stays_small_and_the_text_stays_short() {
    // 2,000 jobs, each a whole life, 20 at a time.
    let mut events = Vec::new();
    for wave in 0..100 {
        let lives: Vec<Life> = (0..20)
            .map(|i| {
                let key = attempt(3, wave * 20 + i, &format!("A{wave}x{i}"));
                ran(
                    &key,
                    Some(ExitStatus::Code {
                        code: (i % 4) as i32,
                    }),
                )
            })
            .collect();
        for step in 0..lives[0].len() {
            events.extend(lives.iter().map(|life| life[step].clone()));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("000001.jnl");
    std::fs::write(&file, bytes(&records(&events))).unwrap();
    let report = replay_path(&file, ReplayOptions::default()).unwrap();
    let began = std::time::Instant::now();
    let svg = report.timeline_svg();
    let took = began.elapsed();
    assert_eq!(svg_rows(&svg).len(), 2000);
    assert!(svg.len() < 2_000_000, "{} bytes", svg.len());
    eprintln!("2,000 attempts: SVG {} bytes in {took:?}", svg.len());
    let trace = serde_json::to_vec(&report.chrome_trace()).unwrap();
    eprintln!("2,000 attempts: trace {} bytes", trace.len());
    let text = replay_text(&file, &[]);
    assert!(text.lines().count() < 40, "{text}");
}

#[test]
fn a_trace_or_picture_to_standard_output_comes_alone() {
    // Given the good journal
    let journal = fixtures().join("good.jnl");
    for (flag, check) in [("--trace", "JSON"), ("--timeline", "SVG")] {
        // When the trace or the picture is asked for on standard output
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_batch-worker"))
            .arg("replay")
            .arg(&journal)
            .args([flag, "-"])
            .output()
            .expect("replay runs");

        // Then standard output holds it alone, and no file named `-` is made
        assert!(out.status.success(), "{flag}: {out:?}");
        let stdout = String::from_utf8(out.stdout).expect("UTF-8");
        match check {
            "JSON" => {
                let trace: serde_json::Value =
                    serde_json::from_str(&stdout).expect("one JSON value");
                assert!(trace["traceEvents"].is_array());
            }
            _ => {
                roxmltree::Document::parse(&stdout).expect("one SVG document");
            }
        }
        assert!(String::from_utf8_lossy(&out.stderr).contains("standard output"));
        assert!(!std::path::Path::new("-").exists());
    }
}
