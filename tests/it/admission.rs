//! Resource admission: jobs wait for cores (and, with `--admit-by-memory`,
//! memory), first come first served; a job that can never fit errors
//! `insufficient_resources`. By default memory is each job's limit, as on
//! Hail's workers.

use batch_worker::admission::Capacity;
use batch_worker::worker::Worker;
use batch_worker_model::{ErrorKind, Event, JobState, Outcome, RunPhase};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{bunch, create_body, shell_spec, Harness, Options, HANG_GUARD};

async fn worker_with(capacity: Capacity) -> Harness {
    let options = Options {
        capacity,
        ..Options::default()
    };
    Harness::with_options(options).await
}

/// The processes of jobs `1..=jobs` of batch `batch_id` executing now.
fn executing(w: &Worker, batch_id: i64, jobs: i64) -> usize {
    (1..=jobs)
        .filter_map(|j| w.state_of(batch_id, j).ok())
        .filter(|s| {
            matches!(
                s,
                JobState::Running {
                    phase: RunPhase::Executing { .. }
                }
            )
        })
        .count()
}

#[tokio::test]
async fn four_one_core_standard_jobs_on_a_four_core_worker_all_run_at_once() {
    // A 4-core worker with a 15 GiB-class machine's memory, less what the
    // system keeps; each job asks for Hail's standard 3.75 GiB per core.
    let h = worker_with(Capacity {
        cores_mcpu: 4000,
        memory_bytes: 14 << 30,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let wait_for_go = format!("while [ ! -e '{}' ]; do sleep 0.01; done", go.display());
    let specs: Vec<_> = (1..=4)
        .map(|job_id| {
            let mut spec = shell_spec(job_id, &wait_for_go);
            spec["resources"] = json!({"cores_mcpu": 1000, "memory_bytes": 3840u64 << 20});
            spec
        })
        .collect();
    bunch(&h, 4, "std", &specs).await;
    for job_id in 1..=4 {
        h.accept(4, job_id, "std").await;
    }
    tokio::time::timeout(HANG_GUARD, h.worker.wait_until(|w| executing(w, 4, 4) == 4))
        .await
        .unwrap_or_else(|_| panic!("not all four ran at once: {:?}", h.worker.snapshot()));
    std::fs::write(&go, b"").unwrap();
    for job_id in 1..=4 {
        assert_eq!(
            h.wait_final(4, job_id).await,
            JobState::Done {
                outcome: Outcome::Succeeded
            }
        );
    }
}

const TWO_CORES: Capacity = Capacity {
    cores_mcpu: 2000,
    memory_bytes: 4 << 30,
};

#[tokio::test]
async fn four_one_core_jobs_on_a_two_core_worker_run_at_most_two_at_a_time() {
    let h = worker_with(TWO_CORES).await;
    // Each job runs until the test lets them all end, once two of them run
    // side by side and two wait for a core (a fixed sleep may end before
    // a loaded machine has started the next job).
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let wait_for_go = format!("while [ ! -e '{}' ]; do sleep 0.01; done", go.display());
    let specs: Vec<_> = (1..=4)
        .map(|job_id| {
            let mut spec = shell_spec(job_id, &wait_for_go);
            spec["resources"] = json!({"cores_mcpu": 1000, "memory_bytes": 1 << 30});
            spec
        })
        .collect();
    bunch(&h, 2, "four", &specs).await;
    for job_id in 1..=4 {
        h.accept(2, job_id, "four").await;
    }
    let phases = |w: &Worker| {
        let states: Vec<JobState> = (1..=4).filter_map(|j| w.state_of(2, j).ok()).collect();
        let count = |want: fn(&JobState) -> bool| states.iter().filter(|s| want(s)).count();
        (
            count(|s| {
                matches!(
                    s,
                    JobState::Running {
                        phase: RunPhase::Executing { .. }
                    }
                )
            }),
            count(|s| {
                *s == JobState::Running {
                    phase: RunPhase::WaitingForResources,
                }
            }),
        )
    };
    tokio::time::timeout(HANG_GUARD, h.worker.wait_until(|w| phases(w) == (2, 2)))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "(executing, waiting) never (2, 2): {:?}",
                h.worker.snapshot()
            )
        });
    std::fs::write(&go, b"").unwrap();
    for job_id in 1..=4 {
        assert_eq!(
            h.wait_final(2, job_id).await,
            JobState::Done {
                outcome: Outcome::Succeeded
            }
        );
    }
    h.worker.sync_journal().await;
    // Walk the journal in sequence order (a total order of what happened):
    // a process counts from `process_started` to `process_exited`.
    let mut running = 0i32;
    let mut most = 0;
    let mut granted = 0;
    for record in h.journal_records() {
        match record.event {
            Event::ResourcesGranted => granted += 1,
            Event::ProcessStarted { .. } => {
                running += 1;
                most = most.max(running);
            }
            Event::ProcessExited { .. } => running -= 1,
            _ => {}
        }
    }
    eprintln!("most processes at once: {most}");
    assert_eq!(granted, 4);
    assert!(most <= 2, "{most} one-core jobs ran at once on two cores");
    assert_eq!(most, 2, "two jobs do run side by side");
    assert_eq!(h.worker.resources_available(), (2000, 4096));
}

#[tokio::test]
async fn a_job_that_can_never_fit_errors_insufficient_resources() {
    // Memory counts only when admitting by memory.
    let h = Harness::with_options(Options {
        capacity: TWO_CORES,
        admit_by_memory: true,
        ..Options::default()
    })
    .await;
    let mut too_many_cores = shell_spec(1, "echo never");
    too_many_cores["resources"]["cores_mcpu"] = json!(4000);
    let mut too_much_memory = shell_spec(2, "echo never");
    too_much_memory["resources"]["memory_bytes"] = json!(8u64 << 30);
    let mut bad = shell_spec(3, "echo never");
    bad["resources"]["cores_mcpu"] = json!("two");
    bunch(&h, 3, "big", &[too_many_cores, too_much_memory, bad]).await;
    for job_id in 1..=3 {
        assert_eq!(
            h.create(&create_body(3, job_id, "big", 1)).await.0,
            StatusCode::OK,
            "the create call does not depend on the spec"
        );
    }
    for (job_id, needle) in [(1, "4000 mcpu"), (2, "8589934592 bytes")] {
        let state = h.wait_final(3, job_id).await;
        assert!(
            matches!(&state, JobState::Errored { kind: ErrorKind::InsufficientResources, message }
                if message.contains(needle) && message.contains("2000 mcpu")),
            "job {job_id}: {state:?}"
        );
    }
    let state = h.wait_final(3, 3).await;
    assert!(
        matches!(&state, JobState::Errored { kind: ErrorKind::SpecCorrupt, message }
            if message.contains("resources.cores_mcpu")),
        "{state:?}"
    );
    h.wait_reports(3).await;
    assert!(h
        .driver
        .received()
        .complete
        .iter()
        .all(|c| c.status.state == "error"));
}
