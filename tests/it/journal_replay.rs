//! Property: whatever the interleaving of creates, spec outcomes, process
//! exits and cancels, replaying the worker's journal through the model
//! gives exactly the live job table, state by state and status JSON by
//! status JSON, and `replay --check` finds no problem in it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use batch_worker::replay::{replay_records, ReplayOptions};
use batch_worker::worker::status_of;
use object_store::memory::InMemory;
use object_store::path::Path;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use reqwest::StatusCode;

use crate::support::{create_body, shell_spec, Harness};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Succeeds,
    Fails,
    Sleeps,
    Missing,
}

#[derive(Debug, Clone)]
struct Op {
    kind: Kind,
    /// Cancel after this many ms (None: never).
    cancel_after_ms: Option<u64>,
}

fn op() -> impl Strategy<Value = Op> {
    (
        prop_oneof![
            Just(Kind::Succeeds),
            Just(Kind::Fails),
            Just(Kind::Sleeps),
            Just(Kind::Missing)
        ],
        prop::option::of(0u64..150),
    )
        .prop_map(|(kind, cancel_after_ms)| Op {
            kind,
            cancel_after_ms,
        })
}

struct World {
    runtime: tokio::runtime::Runtime,
    harness: Harness,
    next_batch: AtomicI64,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let harness = runtime.block_on(Harness::start(
            Arc::new(InMemory::new()),
            Path::from("s"),
            Default::default(),
        ));
        World {
            runtime,
            harness,
            next_batch: AtomicI64::new(1),
        }
    })
}

async fn check(world: &World, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let h = &world.harness;
    let batch_id = world.next_batch.fetch_add(1, Ordering::SeqCst);
    // Every job gets a one-spec bunch of its own (none for `Missing`).
    let mut bodies = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let job_id = i as i64 + 1;
        let token = format!("j{job_id}");
        let script = match op.kind {
            Kind::Succeeds => "true",
            Kind::Fails => "exit 3",
            Kind::Sleeps => "sleep 0.2",
            Kind::Missing => {
                bodies.push(create_body(batch_id, job_id, &token, job_id));
                continue;
            }
        };
        let spec = serde_json::to_vec(&shell_spec(job_id, script)).unwrap();
        h.writer
            .write_bunch(batch_id, &token, &[spec])
            .await
            .unwrap();
        bodies.push(create_body(batch_id, job_id, &token, job_id));
    }
    let ops_with_ids: Vec<(i64, Op)> = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| (i as i64 + 1, op))
        .collect();
    let work = ops_with_ids
        .iter()
        .zip(bodies)
        .map(|((job_id, op), body)| async move {
            assert_eq!(h.create(&body).await.0, StatusCode::OK);
            if let Some(ms) = op.cancel_after_ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                assert_eq!(h.cancel(batch_id, *job_id).await.0, StatusCode::OK);
            }
        });
    futures::future::join_all(work).await;
    for (job_id, _) in &ops_with_ids {
        h.wait_final(batch_id, *job_id).await;
        // The end's uploads are timed in the status (Hail's uploading
        // steps): settled before the live and replayed statuses compare.
        h.wait_event(batch_id, *job_id, "logs_uploaded").await;
    }
    // What the live table says now; the journal holds at least that once
    // synced (a delivery, such as `complete_delivered`, may land in
    // between: it changes no state).
    let live: Vec<_> = ops_with_ids
        .iter()
        .map(|(job_id, _)| h.worker.events(batch_id, *job_id).unwrap())
        .collect();
    h.worker.sync_journal().await;
    let report = replay_records(&h.journal_records(), ReplayOptions::default());
    prop_assert!(report.problems.is_empty(), "{:?}", report.problems);
    for ((job_id, _), live) in ops_with_ids.iter().zip(live) {
        let replayed = report
            .timelines
            .iter()
            .find(|t| t.key.batch_id == batch_id && t.key.job_id == *job_id)
            .expect("every attempt is in the journal");
        prop_assert_eq!(
            &replayed.final_state,
            &h.worker.state_of(batch_id, *job_id).unwrap()
        );
        // One fold: the replayed view's status JSON is the live one, field
        // by field (deliveries since change no field of it).
        prop_assert_eq!(
            serde_json::to_value(status_of(&replayed.view, h.worker.identity())).unwrap(),
            serde_json::to_value(h.worker.status(batch_id, *job_id).unwrap()).unwrap(),
            "job {}",
            job_id
        );
        let live_steps: Vec<(&str, &str)> = live
            .iter()
            .map(|e| (e.event.name(), e.state_after))
            .collect();
        let replayed_steps: Vec<(&str, &str)> = replayed
            .steps
            .iter()
            .map(|s| (s.event.name(), s.state_after.name()))
            .collect();
        prop_assert!(replayed_steps.len() >= live_steps.len(), "job {}", job_id);
        prop_assert_eq!(
            &replayed_steps[..live_steps.len()],
            &live_steps[..],
            "job {}",
            job_id
        );
        prop_assert!(
            replayed.steps[live_steps.len()..]
                .iter()
                .all(|s| s.event.is_delivery()),
            "job {}: {:?}",
            job_id,
            replayed_steps
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config {
        cases: 24,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/journal_replay.txt"))),
        ..Config::default()
    })]

    #[test]
    fn replaying_the_journal_gives_the_live_table_state_by_state(ops in prop::collection::vec(op(), 1..8)) {
        let world = world();
        world.runtime.block_on(check(world, ops))?;
    }
}
