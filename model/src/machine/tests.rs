//! Given/when/then tests of every (state, event) pair.
//!
//! This file is long (about 810 lines) because it is the machine's whole
//! transition table: every state against every event, one test per state
//! family, so a new event or state shows up as a gap here and nowhere else.

use super::*;
use crate::event::{ExitStatus, ProcessKind};
use crate::state::{ErrorKind, Outcome, RunPhase};

/// An attempt after the given events (after `Created`).
fn given(events: &[Event]) -> JobAttempt {
    let (mut attempt, _) = JobAttempt::accept();
    for event in events {
        attempt
            .apply(event)
            .unwrap_or_else(|e| panic!("given-history is illegal: {e}"));
    }
    attempt
}

fn docker_loaded() -> Event {
    loaded(0, 0, None)
}

/// A loaded `docker` spec with `inputs` input files, `outputs` output
/// files, and `image` to pull.
fn loaded(inputs: u32, outputs: u32, image: Option<&str>) -> Event {
    Event::SpecLoaded {
        process: ProcessKind::Docker,
        size_bytes: 120,
        unsupported: vec![],
        cores_mcpu: 1000,
        memory_bytes: 1 << 30,
        input_files: inputs,
        output_files: outputs,
        image: image.map(str::to_owned),
        resources: None,
        unknown_fields: Default::default(),
    }
}

/// A loaded spec whose image the worker must pull, with `inputs` input
/// files.
fn loaded_with_image(inputs: u32) -> Event {
    loaded(inputs, 0, Some("registry.example/busybox:1"))
}

fn image_pulled() -> Event {
    Event::ImagePulled {
        image: "registry.example/busybox:1".into(),
        digest: format!("sha256:{}", "ab".repeat(32)),
        pulled: true,
    }
}

fn image_pull_failed() -> Event {
    Event::ImagePullFailed {
        image: "registry.example/busybox:1".into(),
        message: "manifest unknown".into(),
    }
}

/// A loaded spec with `inputs` input files and `outputs` output files.
fn loaded_with_files(inputs: u32, outputs: u32) -> Event {
    loaded(inputs, outputs, None)
}

fn exited(code: i32) -> Event {
    Event::ProcessExited {
        exit: ExitStatus::Code { code },
        duration_ms: 5,
    }
}

/// Named histories reaching every state of the chart.
fn histories() -> Vec<(&'static str, Vec<Event>)> {
    let loading = vec![Event::SpecLoadStarted];
    let waiting = [loading.clone(), vec![docker_loaded()]].concat();
    let starting = [waiting.clone(), vec![Event::ResourcesGranted]].concat();
    let executing = [starting.clone(), vec![Event::process_started(42)]].concat();
    vec![
        ("accepted", vec![]),
        ("loading_spec", loading.clone()),
        ("running.waiting_for_resources", waiting.clone()),
        (
            "running.initializing",
            [
                loading.clone(),
                vec![loaded_with_files(2, 0), Event::ResourcesGranted],
            ]
            .concat(),
        ),
        (
            "running.uploading_outputs",
            [
                loading.clone(),
                vec![
                    loaded_with_files(0, 1),
                    Event::ResourcesGranted,
                    Event::process_started(42),
                    exited(0),
                ],
            ]
            .concat(),
        ),
        ("running.starting", starting.clone()),
        ("running.executing", executing.clone()),
        (
            "running.cancelling",
            [executing.clone(), vec![Event::CancelRequested]].concat(),
        ),
        ("done", [executing.clone(), vec![exited(0)]].concat()),
        ("done", [executing.clone(), vec![exited(3)]].concat()),
        ("done", vec![Event::CancelRequested]),
        (
            "done",
            [waiting.clone(), vec![Event::CancelRequested]].concat(),
        ),
        (
            "errored",
            [
                loading.clone(),
                vec![Event::SpecLoadFailed {
                    kind: ErrorKind::SpecMissing,
                    message: "gone".into(),
                }],
            ]
            .concat(),
        ),
    ]
}

/// One sample of every event variant, plus the variants' interesting shapes.
fn all_events() -> Vec<Event> {
    vec![
        Event::created(7),
        Event::SpecLoadStarted,
        docker_loaded(),
        Event::SpecLoaded {
            process: ProcessKind::Other { name: "jvm".into() },
            size_bytes: 10,
            unsupported: vec![],
            cores_mcpu: 0,
            memory_bytes: 0,
            input_files: 0,
            output_files: 0,
            image: None,
            resources: None,
            unknown_fields: Default::default(),
        },
        Event::SpecLoaded {
            process: ProcessKind::Docker,
            size_bytes: 10,
            unsupported: vec!["output_files".into()],
            cores_mcpu: 0,
            memory_bytes: 0,
            input_files: 0,
            output_files: 0,
            image: None,
            resources: None,
            unknown_fields: Default::default(),
        },
        Event::SpecLoadFailed {
            kind: ErrorKind::SpecCorrupt,
            message: "bad".into(),
        },
        Event::SpecLoadFailed {
            kind: ErrorKind::LaunchFailed,
            message: "not a spec error".into(),
        },
        Event::ResourcesGranted,
        Event::ResourcesRefused {
            message: "needs 8000 mcpu, the worker has 2000".into(),
        },
        Event::InputsStaged {
            files: 2,
            size_bytes: 10,
        },
        Event::InputsFailed {
            message: "gs://b/in does not exist".into(),
        },
        loaded_with_image(0),
        image_pulled(),
        image_pull_failed(),
        Event::process_started(7),
        Event::OutputsUploaded {
            files: 1,
            size_bytes: 5,
        },
        Event::OutputsFailed {
            message: "out.txt: no such file".into(),
        },
        Event::LaunchFailed {
            message: "no such file".into(),
        },
        exited(0),
        exited(1),
        Event::ProcessExited {
            exit: ExitStatus::Signal { signal: 9 },
            duration_ms: 1,
        },
        Event::ProcessExited {
            exit: ExitStatus::TimedOut { timeout_ms: 1000 },
            duration_ms: 1000,
        },
        Event::ProcessExited {
            exit: ExitStatus::OutOfMemory {
                code: 137,
                memory_limit_bytes: 1 << 20,
            },
            duration_ms: 30,
        },
        Event::CancelRequested,
        Event::WorkerRestarted,
        Event::StartedDelivered,
        Event::LogsUploaded,
        Event::LogsUploadFailed {
            message: "store down".into(),
        },
        Event::CompleteDelivered,
    ]
}

/// Entering `Errored{kind}` (message not compared): asks for the logs
/// upload only.
fn errored(kind: ErrorKind) -> Option<(JobState, Vec<Effect>)> {
    Some((
        JobState::Errored {
            kind,
            message: String::new(),
        },
        vec![Effect::UploadLogs],
    ))
}

/// The legal transitions of live states: (state name, event) → (state
/// after, effects). Every pair not listed must be rejected. Entering a
/// terminal state always asks for `UploadLogs` (and nothing else): the
/// report follows the upload's result.
fn legal(state: &str, event: &Event) -> Option<(JobState, Vec<Effect>)> {
    use Effect::*;
    let done = |outcome, mut effects: Vec<Effect>| {
        effects.push(UploadLogs);
        Some((JobState::Done { outcome }, effects))
    };
    let running = |phase| JobState::Running { phase };
    match (state, event) {
        ("accepted", Event::SpecLoadStarted) => Some((JobState::LoadingSpec, vec![])),
        ("accepted" | "loading_spec", Event::CancelRequested) => {
            done(Outcome::Cancelled, vec![AbortSpecLoad])
        }
        (
            "loading_spec",
            Event::SpecLoaded {
                process: ProcessKind::Docker,
                unsupported,
                ..
            },
        ) if unsupported.is_empty() => Some((
            running(RunPhase::WaitingForResources),
            vec![RequestResources],
        )),
        ("loading_spec", Event::SpecLoaded { .. }) => errored(ErrorKind::Unsupported),
        ("loading_spec", Event::SpecLoadFailed { kind, .. }) if kind.is_spec_error() => {
            errored(*kind)
        }
        ("running.waiting_for_resources", Event::ResourcesGranted) => {
            Some((running(RunPhase::Starting), vec![SpawnProcess]))
        }
        ("running.waiting_for_resources", Event::ResourcesRefused { .. }) => {
            errored(ErrorKind::InsufficientResources)
        }
        ("running.waiting_for_resources", Event::CancelRequested) => {
            done(Outcome::Cancelled, vec![CancelResourceRequest])
        }
        ("running.initializing", Event::InputsStaged { .. }) => {
            Some((running(RunPhase::Starting), vec![SpawnProcess]))
        }
        ("running.initializing", Event::InputsFailed { .. }) => errored(ErrorKind::InputFailed),
        ("running.initializing" | "running.uploading_outputs", Event::CancelRequested) => {
            done(Outcome::Cancelled, vec![AbortTransfers])
        }
        ("running.uploading_outputs", Event::OutputsUploaded { .. }) => {
            done(Outcome::Succeeded, vec![])
        }
        ("running.uploading_outputs", Event::OutputsFailed { .. }) => {
            errored(ErrorKind::OutputFailed)
        }
        ("running.uploading_outputs", Event::StartedDelivered) => {
            Some((running(RunPhase::UploadingOutputs), vec![]))
        }
        ("running.starting", Event::ProcessStarted { pid, .. }) => Some((
            running(RunPhase::Executing { pid: *pid }),
            vec![ReportStarted],
        )),
        ("running.starting", Event::LaunchFailed { .. }) => errored(ErrorKind::LaunchFailed),
        ("running.starting" | "running.executing", Event::CancelRequested) => {
            Some((running(RunPhase::Cancelling), vec![KillProcess]))
        }
        ("running.executing", Event::ProcessExited { exit, .. }) => {
            let outcome = if exit.is_success() {
                Outcome::Succeeded
            } else {
                Outcome::Failed { exit: *exit }
            };
            done(outcome, vec![])
        }
        ("running.executing", Event::StartedDelivered) => {
            Some((running(RunPhase::Executing { pid: 42 }), vec![]))
        }
        (
            "running.cancelling",
            Event::ProcessStarted { .. } | Event::CancelRequested | Event::StartedDelivered,
        ) => Some((running(RunPhase::Cancelling), vec![])),
        (
            "running.cancelling",
            Event::LaunchFailed { .. } | Event::ProcessExited { .. } | Event::WorkerRestarted,
        ) => done(Outcome::Cancelled, vec![]),
        (
            "accepted"
            | "loading_spec"
            | "running.waiting_for_resources"
            | "running.initializing"
            | "running.starting"
            | "running.executing"
            | "running.uploading_outputs",
            Event::WorkerRestarted,
        ) => errored(ErrorKind::WorkerRestarted),
        _ => None,
    }
}

/// What a terminal state does with `event`: `Some(effects)` when it takes
/// it without a change of state, `None` when it absorbs it.
fn terminal_takes(state: &JobState, event: &Event) -> Option<Vec<Effect>> {
    let cancelled = *state
        == JobState::Done {
            outcome: Outcome::Cancelled,
        };
    match event {
        Event::StartedDelivered | Event::CompleteDelivered => Some(vec![]),
        Event::LogsUploaded | Event::LogsUploadFailed { .. } if cancelled => Some(vec![]),
        Event::LogsUploaded | Event::LogsUploadFailed { .. } => Some(vec![Effect::ReportComplete]),
        _ => None,
    }
}

/// Compares states, ignoring error messages (checked separately).
fn same_state(a: &JobState, b: &JobState) -> bool {
    match (a, b) {
        (JobState::Errored { kind: x, .. }, JobState::Errored { kind: y, .. }) => x == y,
        _ => a == b,
    }
}

#[test]
fn every_state_event_pair_is_legal_rejected_or_absorbed() {
    let mut checked = 0;
    for (name, history) in histories() {
        for event in all_events() {
            // Given
            let mut attempt = given(&history);
            let before = attempt.state();
            assert_eq!(before.name(), name);
            // When
            let result = attempt.apply(&event);
            // Then
            match (before.is_terminal(), legal(name, &event)) {
                (true, _) => {
                    let expected = match terminal_takes(&before, &event) {
                        Some(effects) => Applied {
                            effects,
                            absorbed: false,
                        },
                        None => Applied {
                            effects: vec![],
                            absorbed: true,
                        },
                    };
                    assert_eq!(result, Ok(expected), "{name} + {event:?}");
                    assert_eq!(attempt.state(), before);
                }
                (false, Some((state, effects))) => {
                    let applied = result
                        .unwrap_or_else(|e| panic!("{name} + {event:?} should be legal: {e}"));
                    assert!(!applied.absorbed);
                    assert_eq!(applied.effects, effects, "{name} + {event:?}");
                    assert!(
                        same_state(&attempt.state(), &state),
                        "{name} + {event:?}: got {:?}, want {state:?}",
                        attempt.state()
                    );
                }
                (false, None) => {
                    assert_eq!(
                        result,
                        Err(IllegalTransition {
                            state: name,
                            event: event.name()
                        })
                    );
                    assert_eq!(attempt.state(), before, "a rejected event changes nothing");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, histories().len() * all_events().len());
}

#[test]
fn accept_asks_for_the_spec_load() {
    let (attempt, applied) = JobAttempt::accept();
    assert_eq!(attempt.state(), JobState::Accepted);
    assert_eq!(applied.effects, vec![Effect::StartSpecLoad]);
}

#[test]
fn happy_path_waits_for_resources_then_uploads_logs_before_reporting() {
    // Given a loaded spec
    let mut attempt = given(&[Event::SpecLoadStarted]);
    // When / then, step by step
    let loaded = attempt.apply(&docker_loaded()).unwrap();
    assert_eq!(loaded.effects, vec![Effect::RequestResources]);
    assert_eq!(attempt.state().wire_state(), crate::WireState::Pending);
    let granted = attempt.apply(&Event::ResourcesGranted).unwrap();
    assert_eq!(granted.effects, vec![Effect::SpawnProcess]);
    let started = attempt.apply(&Event::process_started(9)).unwrap();
    assert_eq!(started.effects, vec![Effect::ReportStarted]);
    attempt.apply(&Event::StartedDelivered).unwrap();
    let done = attempt.apply(&exited(0)).unwrap();
    assert_eq!(done.effects, vec![Effect::UploadLogs]);
    let uploaded = attempt.apply(&Event::LogsUploaded).unwrap();
    assert_eq!(uploaded.effects, vec![Effect::ReportComplete]);
    assert_eq!(
        attempt.apply(&Event::CompleteDelivered).unwrap(),
        Applied {
            effects: vec![],
            absorbed: false
        }
    );
    assert_eq!(
        attempt.state(),
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
}

#[test]
fn a_failed_logs_upload_still_reports_and_keeps_the_outcome() {
    let mut attempt = given(&[
        Event::SpecLoadStarted,
        docker_loaded(),
        Event::ResourcesGranted,
        Event::process_started(9),
        exited(2),
    ]);
    let failed = attempt
        .apply(&Event::LogsUploadFailed {
            message: "503".into(),
        })
        .unwrap();
    assert_eq!(failed.effects, vec![Effect::ReportComplete]);
    assert!(matches!(
        attempt.state(),
        JobState::Done {
            outcome: Outcome::Failed { .. }
        }
    ));
}

#[test]
fn a_job_too_big_for_the_worker_errors_insufficient_resources() {
    let mut attempt = given(&[Event::SpecLoadStarted, docker_loaded()]);
    attempt
        .apply(&Event::ResourcesRefused {
            message: "needs 8000 mcpu; the worker has 2000 mcpu in all".into(),
        })
        .unwrap();
    assert_eq!(
        attempt.state(),
        JobState::Errored {
            kind: ErrorKind::InsufficientResources,
            message: "needs 8000 mcpu; the worker has 2000 mcpu in all".into()
        }
    );
}

#[test]
fn spec_loaded_records_from_before_admission_still_parse() {
    let old = r#"{"type":"spec_loaded","process":{"type":"docker"},"size_bytes":5}"#;
    assert_eq!(
        serde_json::from_str::<Event>(old).unwrap(),
        Event::SpecLoaded {
            process: ProcessKind::Docker,
            size_bytes: 5,
            unsupported: vec![],
            cores_mcpu: 0,
            memory_bytes: 0,
            input_files: 0,
            output_files: 0,
            image: None,
            resources: None,
            unknown_fields: Default::default(),
        }
    );
}

#[test]
fn spec_failure_keeps_kind_and_message() {
    let mut attempt = given(&[Event::SpecLoadStarted]);
    attempt
        .apply(&Event::SpecLoadFailed {
            kind: ErrorKind::SpecCorrupt,
            message: "specs.idx is 8 bytes long".into(),
        })
        .unwrap();
    assert_eq!(
        attempt.state(),
        JobState::Errored {
            kind: ErrorKind::SpecCorrupt,
            message: "specs.idx is 8 bytes long".into()
        }
    );
}

#[test]
fn unsupported_process_type_names_the_type() {
    let mut attempt = given(&[Event::SpecLoadStarted]);
    attempt
        .apply(&Event::SpecLoaded {
            process: ProcessKind::Other { name: "jvm".into() },
            size_bytes: 1,
            unsupported: vec![],
            cores_mcpu: 0,
            memory_bytes: 0,
            input_files: 0,
            output_files: 0,
            image: None,
            resources: None,
            unknown_fields: Default::default(),
        })
        .unwrap();
    match attempt.state() {
        JobState::Errored { kind, message } => {
            assert_eq!(kind, ErrorKind::Unsupported);
            assert!(message.contains("\"jvm\""), "{message}");
        }
        other => panic!("want errored, got {other:?}"),
    }
}

#[test]
fn replay_rebuilds_the_same_state() {
    let history = [
        Event::created(7),
        Event::SpecLoadStarted,
        docker_loaded(),
        Event::ResourcesGranted,
        Event::process_started(3),
        exited(3),
    ];
    let attempt = JobAttempt::replay(&history).unwrap();
    assert_eq!(
        attempt.state(),
        JobState::Done {
            outcome: Outcome::Failed {
                exit: ExitStatus::Code { code: 3 }
            }
        }
    );
}

#[test]
fn replay_names_the_first_illegal_event() {
    let history = [Event::created(7), Event::process_started(3)];
    let (index, err) = JobAttempt::replay(&history).unwrap_err();
    assert_eq!(index, 1);
    assert_eq!(err.state, "accepted");
    assert_eq!(err.event, "process_started");
    assert_eq!(
        JobAttempt::replay(&[Event::SpecLoadStarted]).unwrap_err().0,
        0
    );
}

#[test]
fn events_and_states_round_trip_through_json() {
    for event in all_events() {
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), event);
    }
    for (_, history) in histories() {
        let state = given(&history).state();
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<JobState>(&text).unwrap(), state);
    }
    assert_eq!(
        serde_json::to_string(&Event::SpecLoadFailed {
            kind: ErrorKind::SpecMissing,
            message: "m".into()
        })
        .unwrap(),
        r#"{"type":"spec_load_failed","kind":"spec_missing","message":"m"}"#
    );
}

#[test]
fn version_1_histories_replay_through_upcast() {
    // Given a version-1 history: the spawn followed spec_loaded at once
    let v1 = [
        Event::SpecLoadStarted,
        docker_loaded(),
        Event::process_started(3),
        exited(0),
    ];
    // When it is upcast and replayed
    let mut attempt = given(&[]);
    for event in v1 {
        for event in crate::upcast(1, event) {
            attempt.apply(&event).unwrap();
        }
    }
    // Then it reaches the same end
    assert_eq!(
        attempt.state(),
        JobState::Done {
            outcome: Outcome::Succeeded
        }
    );
    assert_eq!(crate::upcast(3, docker_loaded()), vec![docker_loaded()]);
}

#[test]
fn a_spec_loaded_from_before_version_3_gets_the_resources_it_knew() {
    let upcast = crate::upcast(2, docker_loaded());
    let [Event::SpecLoaded {
        resources: Some(resources),
        cores_mcpu,
        memory_bytes,
        ..
    }] = &upcast[..]
    else {
        panic!("{upcast:?}")
    };
    assert_eq!(
        **resources,
        serde_json::json!({"cores_mcpu": cores_mcpu, "memory_bytes": memory_bytes})
    );
    // Resources it carries (or a version-3 spec without any) stay as they are.
    let Event::SpecLoaded { resources, .. } = &crate::upcast(3, docker_loaded())[0] else {
        panic!()
    };
    assert_eq!(*resources, None);
}

/// The legal transitions of `running.initializing` while the image is still
/// to be pulled (`inputs` input files after it).
fn legal_while_pulling(inputs: u32, event: &Event) -> Option<(JobState, Vec<Effect>)> {
    use Effect::*;
    let running = |phase| JobState::Running { phase };
    match event {
        Event::ImagePulled { .. } if inputs > 0 => {
            Some((running(RunPhase::Initializing), vec![StageInputs]))
        }
        Event::ImagePulled { .. } => Some((running(RunPhase::Starting), vec![SpawnProcess])),
        Event::ImagePullFailed { .. } => errored(ErrorKind::ImagePullFailed),
        Event::WorkerRestarted => errored(ErrorKind::WorkerRestarted),
        Event::CancelRequested => Some((
            JobState::Done {
                outcome: Outcome::Cancelled,
            },
            vec![AbortTransfers, UploadLogs],
        )),
        _ => None,
    }
}

#[test]
fn while_the_image_is_pulled_only_its_result_a_cancel_or_a_restart_is_legal() {
    for inputs in [0, 2] {
        for event in all_events() {
            // Given a granted job whose image is being pulled
            let history = [
                Event::SpecLoadStarted,
                loaded_with_image(inputs),
                Event::ResourcesGranted,
            ];
            let mut attempt = given(&history);
            assert_eq!(attempt.state().name(), "running.initializing");
            assert_eq!(attempt.state().wire_state(), crate::WireState::Initializing);
            // When
            let result = attempt.apply(&event);
            // Then
            match legal_while_pulling(inputs, &event) {
                Some((state, effects)) => {
                    let applied = result.unwrap_or_else(|e| panic!("{event:?}: {e}"));
                    assert_eq!(applied.effects, effects, "{inputs} inputs + {event:?}");
                    assert!(same_state(&attempt.state(), &state), "{event:?}");
                }
                None => {
                    assert!(
                        result.is_err(),
                        "{inputs} inputs + {event:?} should be illegal"
                    );
                    assert_eq!(attempt.state().name(), "running.initializing");
                }
            }
        }
    }
}

#[test]
fn a_granted_job_with_an_image_pulls_it_then_stages_inputs_then_spawns() {
    // Given a loaded spec with an image and two input files
    let mut attempt = given(&[Event::SpecLoadStarted, loaded_with_image(2)]);
    // When resources come, the pull is asked for first
    let granted = attempt.apply(&Event::ResourcesGranted).unwrap();
    assert_eq!(granted.effects, vec![Effect::PullImage]);
    // Then the inputs, then the spawn; a second pull result is illegal
    let pulled = attempt.apply(&image_pulled()).unwrap();
    assert_eq!(pulled.effects, vec![Effect::StageInputs]);
    assert!(attempt.apply(&image_pulled()).is_err());
    let staged = attempt
        .apply(&Event::InputsStaged {
            files: 2,
            size_bytes: 3,
        })
        .unwrap();
    assert_eq!(staged.effects, vec![Effect::SpawnProcess]);
    assert_eq!(attempt.state().name(), "running.starting");
}

#[test]
fn a_failed_pull_errors_the_job_naming_the_image() {
    let mut attempt = given(&[
        Event::SpecLoadStarted,
        loaded_with_image(0),
        Event::ResourcesGranted,
    ]);
    let failed = attempt.apply(&image_pull_failed()).unwrap();
    assert_eq!(failed.effects, vec![Effect::UploadLogs]);
    match attempt.state() {
        JobState::Errored { kind, message } => {
            assert_eq!(kind, ErrorKind::ImagePullFailed);
            assert!(message.contains("registry.example/busybox:1"), "{message}");
            assert!(message.contains("manifest unknown"), "{message}");
        }
        other => panic!("expected errored, got {other:?}"),
    }
}

#[test]
fn an_out_of_memory_exit_is_a_failure_with_exit_code_137() {
    let exit = ExitStatus::OutOfMemory {
        code: 137,
        memory_limit_bytes: 1 << 20,
    };
    let mut attempt = given(&[
        Event::SpecLoadStarted,
        docker_loaded(),
        Event::ResourcesGranted,
        Event::process_started(3),
    ]);
    attempt
        .apply(&Event::ProcessExited {
            exit,
            duration_ms: 9,
        })
        .unwrap();
    assert_eq!(
        attempt.state(),
        JobState::Done {
            outcome: Outcome::Failed { exit }
        }
    );
    assert_eq!(exit.exit_code(), Some(137));
    assert!(!exit.is_success());
}

#[test]
fn a_job_over_its_storage_bound_errors_storage_exceeded_with_both_sizes_said() {
    let mut attempt = given(&[
        Event::SpecLoadStarted,
        docker_loaded(),
        Event::ResourcesGranted,
        Event::process_started(3),
    ]);
    let applied = attempt
        .apply(&Event::ProcessExited {
            exit: ExitStatus::StorageExceeded {
                limit_bytes: 1000,
                used_bytes: 1500,
            },
            duration_ms: 9,
        })
        .unwrap();
    match attempt.state() {
        JobState::Errored { kind, message } => {
            assert_eq!(kind, ErrorKind::StorageExceeded);
            assert!(message.contains("1500 bytes"), "{message}");
            assert!(message.contains("bound of 1000 bytes"), "{message}");
        }
        other => panic!("expected errored, got {other:?}"),
    }
    // Its logs are uploaded, then it is reported, as every error.
    assert_eq!(applied.effects, vec![Effect::UploadLogs]);
}
