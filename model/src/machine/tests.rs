//! Given/when/then tests of every (state, event) pair.

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
    Event::SpecLoaded {
        process: ProcessKind::Docker,
        size_bytes: 120,
        unsupported: vec![],
    }
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
    let starting = [loading.clone(), vec![docker_loaded()]].concat();
    let executing = [starting.clone(), vec![Event::ProcessStarted { pid: 42 }]].concat();
    vec![
        ("accepted", vec![]),
        ("loading_spec", loading.clone()),
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
        Event::Created { format_version: 7 },
        Event::SpecLoadStarted,
        docker_loaded(),
        Event::SpecLoaded {
            process: ProcessKind::Other { name: "jvm".into() },
            size_bytes: 10,
            unsupported: vec![],
        },
        Event::SpecLoaded {
            process: ProcessKind::Docker,
            size_bytes: 10,
            unsupported: vec!["output_files".into()],
        },
        Event::SpecLoadFailed {
            kind: ErrorKind::SpecCorrupt,
            message: "bad".into(),
        },
        Event::SpecLoadFailed {
            kind: ErrorKind::LaunchFailed,
            message: "not a spec error".into(),
        },
        Event::ProcessStarted { pid: 7 },
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
        Event::CancelRequested,
        Event::WorkerRestarted,
        Event::CompleteDelivered,
    ]
}

/// The legal transitions: (state name, event) → (state after, effects).
/// Every pair not listed must be rejected in a live state and absorbed in a
/// terminal one.
fn legal(state: &str, event: &Event) -> Option<(JobState, Vec<Effect>)> {
    use Effect::*;
    let errored = |kind| JobState::Errored {
        kind,
        message: String::new(),
    };
    let done = |outcome| JobState::Done { outcome };
    let running = |phase| JobState::Running { phase };
    match (state, event) {
        ("accepted", Event::SpecLoadStarted) => Some((JobState::LoadingSpec, vec![])),
        ("accepted" | "loading_spec", Event::CancelRequested) => {
            Some((done(Outcome::Cancelled), vec![AbortSpecLoad]))
        }
        (
            "loading_spec",
            Event::SpecLoaded {
                process: ProcessKind::Docker,
                unsupported,
                ..
            },
        ) if unsupported.is_empty() => Some((running(RunPhase::Starting), vec![SpawnProcess])),
        ("loading_spec", Event::SpecLoaded { .. }) => {
            Some((errored(ErrorKind::Unsupported), vec![ReportComplete]))
        }
        ("loading_spec", Event::SpecLoadFailed { kind, .. }) if kind.is_spec_error() => {
            Some((errored(*kind), vec![ReportComplete]))
        }
        ("running.starting", Event::ProcessStarted { pid }) => Some((
            running(RunPhase::Executing { pid: *pid }),
            vec![ReportStarted],
        )),
        ("running.starting", Event::LaunchFailed { .. }) => {
            Some((errored(ErrorKind::LaunchFailed), vec![ReportComplete]))
        }
        ("running.starting" | "running.executing", Event::CancelRequested) => {
            Some((running(RunPhase::Cancelling), vec![KillProcess]))
        }
        ("running.executing", Event::ProcessExited { exit, .. }) => {
            let outcome = if exit.is_success() {
                Outcome::Succeeded
            } else {
                Outcome::Failed { exit: *exit }
            };
            Some((done(outcome), vec![ReportComplete]))
        }
        ("running.cancelling", Event::ProcessStarted { .. } | Event::CancelRequested) => {
            Some((running(RunPhase::Cancelling), vec![]))
        }
        (
            "running.cancelling",
            Event::LaunchFailed { .. } | Event::ProcessExited { .. } | Event::WorkerRestarted,
        ) => Some((done(Outcome::Cancelled), vec![])),
        (
            "accepted" | "loading_spec" | "running.starting" | "running.executing",
            Event::WorkerRestarted,
        ) => Some((errored(ErrorKind::WorkerRestarted), vec![ReportComplete])),
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
                (true, _) if event == Event::CompleteDelivered => {
                    assert_eq!(
                        result,
                        Ok(Applied {
                            effects: vec![],
                            absorbed: false
                        }),
                        "{name} takes complete_delivered"
                    );
                    assert_eq!(attempt.state(), before);
                }
                (true, _) => {
                    assert_eq!(
                        result,
                        Ok(Applied {
                            effects: vec![],
                            absorbed: true
                        }),
                        "{name} must absorb {event:?}"
                    );
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
fn happy_path_reports_started_then_complete() {
    let mut attempt = given(&[Event::SpecLoadStarted, docker_loaded()]);
    let started = attempt.apply(&Event::ProcessStarted { pid: 9 }).unwrap();
    assert_eq!(started.effects, vec![Effect::ReportStarted]);
    let done = attempt.apply(&exited(0)).unwrap();
    assert_eq!(done.effects, vec![Effect::ReportComplete]);
    assert_eq!(
        attempt.state(),
        JobState::Done {
            outcome: Outcome::Succeeded
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
        Event::Created { format_version: 7 },
        Event::SpecLoadStarted,
        docker_loaded(),
        Event::ProcessStarted { pid: 3 },
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
    let history = [
        Event::Created { format_version: 7 },
        Event::ProcessStarted { pid: 3 },
    ];
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
