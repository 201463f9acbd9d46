//! Compaction: the journal stays a few segments however many jobs run;
//! finished, reported attempts older than the retention window are
//! forgotten (a repeated create is accepted again); what is kept replays to
//! the live table with no problem.

use std::sync::Arc;
use std::time::Duration;

use batch_worker::journal::{journal_dir, segments};
use batch_worker::replay::{replay_path, ReplayOptions};
use batch_worker_model::{Event, JobState};
use object_store::memory::InMemory;
use object_store::path::Path;
use reqwest::StatusCode;

use crate::support::{create_body, shell_spec, Harness, HANG_GUARD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_stays_small_and_forgets_only_what_is_reported_and_expired() {
    let h = Harness::start_with_journal(
        Arc::new(InMemory::new()),
        Path::from("r"),
        Default::default(),
        8 * 1024,
        Duration::ZERO,
    )
    .await;
    let jobs = 80;
    let specs: Vec<Vec<u8>> = (1..=jobs)
        .map(|job_id| serde_json::to_vec(&shell_spec(job_id, "true")).unwrap())
        .collect();
    h.writer.write_bunch(3, "all", &specs).await.unwrap();
    for job_id in 1..=jobs {
        h.accept(3, job_id, "all").await;
    }
    // Every job ends and its job_complete is acknowledged.
    tokio::time::timeout(HANG_GUARD, async {
        let mut changes = h.worker.changes();
        loop {
            let delivered = (1..=jobs)
                .filter(|job_id| {
                    h.worker.events(3, *job_id).map_or(true, |events| {
                        events.iter().any(|e| e.event == Event::CompleteDelivered)
                    })
                })
                .count();
            if delivered == jobs as usize {
                break;
            }
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("every report is acknowledged");
    // A little more work makes the journal compact again, now that every
    // earlier attempt is reported and (retention 0) expired.
    let more: Vec<Vec<u8>> = vec![serde_json::to_vec(&shell_spec(1, "true")).unwrap()];
    h.writer.write_bunch(4, "more", &more).await.unwrap();
    h.accept(4, 1, "more").await;
    h.wait_final(4, 1).await;
    h.worker.sync_journal().await;
    let forgotten = (1..=jobs)
        .filter(|job_id| h.worker.state_of(3, *job_id).is_err())
        .count();
    assert!(forgotten > 0, "compaction forgot no reported attempt");
    let files = segments(&journal_dir(h.data.path())).unwrap();
    assert!(files.len() <= 2, "journal segments: {files:?}");
    // A forgotten attempt's job may be created again (retention 0).
    let again = (1..=jobs)
        .find(|job_id| h.worker.state_of(3, *job_id).is_err())
        .unwrap();
    let mut body = create_body(3, again, "all", 1);
    body["job_spec"]["attempt_id"] = "again".into();
    assert_eq!(h.create(&body).await.0, StatusCode::OK);
    h.wait_final(3, again).await;

    // What the journal keeps replays to the live table, without a problem.
    h.worker.sync_journal().await;
    let live = h.worker.snapshot();
    let report = replay_path(h.data.path(), ReplayOptions::default()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    for (key, state) in &live {
        let replayed = report
            .timelines
            .iter()
            .find(|t| t.key == *key)
            .unwrap_or_else(|| panic!("{key} kept live but not in the journal"));
        assert_eq!(&replayed.final_state, state, "{key}");
    }
    assert!(live.iter().all(|(_, s)| matches!(s, JobState::Done { .. })));
}
