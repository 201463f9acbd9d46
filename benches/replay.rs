//! Replay and recovery speed: `cargo bench --bench replay` builds a journal
//! of about 1,000,000 events (nine in a job that ran and succeeded, five in
//! one whose spec was corrupt; every job finished, its logs uploaded and its
//! `job_complete` delivered), and times
//!
//! - replay: reading the file back and replaying it through the model
//!   (what `batch-worker replay --job B:J` does), in events/s;
//! - recovery: what a worker does at start on a data directory holding that
//!   journal: `open_journal` (read + decode) and `Worker::recover`, in ms.
//!
//! `REPLAY_EVENTS=N` changes the size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use batch_worker::admission::Capacity;
use batch_worker::journal::{
    encode_header, encode_record, journal_dir, open_journal, segment_path, Durability,
    JournalConfig, JournalRecord, WriterMode,
};
use batch_worker::logs_store::LogsStore;
use batch_worker::replay::{replay_path, ReplayOptions};
use batch_worker::runner::HostRunner;
use batch_worker::spec_store::{SpecLoadConfig, SpecStore};
use batch_worker::store::{FaultPlan, FaultStore, StoreOptions};
use batch_worker::worker::{Executor, JournalOptions, Worker};
use batch_worker_model::{ErrorKind, Event, ExitStatus, JobKey, ProcessKind, EVENT_VERSION};
use object_store::memory::InMemory;
use object_store::path::Path;

/// The events of one finished, reported job: a succeeded run (9 events),
/// or, for one job in ten, a corrupt spec (5 events). As a worker writes
/// them: `created` with the user, job group and secret names, `spec_loaded`
/// with the spec's resources as sent.
fn lifecycle(job: i64) -> Vec<Event> {
    let created = Event::Created {
        format_version: 7,
        user: "bench-user".into(),
        job_group_id: 1,
        secret_names: vec!["gsa-key/key.json".into()],
    };
    let mut events = vec![created, Event::SpecLoadStarted];
    if job % 10 == 0 {
        events.push(Event::SpecLoadFailed {
            kind: ErrorKind::SpecCorrupt,
            message: "7/bunch/q4w8e2r6t1y9u3i5/specs.idx is 8 bytes, too short".into(),
        });
    } else {
        events.extend([
            Event::SpecLoaded {
                process: ProcessKind::Docker,
                size_bytes: 311,
                unsupported: vec![],
                cores_mcpu: 1000,
                memory_bytes: 3_750_000_000,
                input_files: 0,
                output_files: 0,
                image: None,
                resources: Some(Box::new(serde_json::json!({
                    "cores_mcpu": 1000, "memory_bytes": 3_750_000_000u64, "storage_gib": 10
                }))),
                unknown_fields: Default::default(),
            },
            Event::ResourcesGranted,
            Event::process_started(4242),
            Event::StartedDelivered,
            Event::ProcessExited {
                exit: ExitStatus::Code { code: 0 },
                duration_ms: 1200,
            },
        ]);
    }
    events.extend([Event::LogsUploaded, Event::CompleteDelivered]);
    events
}

/// A worker like `serve`'s on in-memory stores, with no driver, opened on
/// `data_dir` (its journal read, decoded and recovered).
fn open_worker(data_dir: &std::path::Path) -> Worker {
    let store = Arc::new(FaultStore::new(
        Arc::new(InMemory::new()),
        FaultPlan::default(),
    ));
    let specs = SpecStore::new(store, Path::from("specs"), SpecLoadConfig::default())
        .expect("the spec-io runtime starts");
    Worker::builder(data_dir)
        .name("bench")
        .executor(Executor::Host(Arc::new(HostRunner::default())))
        .specs(specs)
        .logs(LogsStore::new(Arc::new(InMemory::new()), Path::default()))
        .journal(JournalOptions {
            durability: Durability::Flush,
            mode: Some(WriterMode::Inline),
            ..JournalOptions::default()
        })
        .journal_segment_bytes(u64::MAX)
        .retention(Duration::from_secs(3600))
        .capacity(Capacity::of_machine())
        .store_options(StoreOptions::default())
        .open()
        .expect("the worker opens")
}

fn main() {
    let target: usize = std::env::var("REPLAY_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // Ten jobs hold 9 * 9 + 5 = 86 events.
    let jobs = (target * 10).div_ceil(86);
    let mut bytes = encode_header().to_vec();
    let mut seq = 0u64;
    let began = Instant::now();
    for job in 0..jobs as i64 {
        let key = JobKey {
            batch_id: job / 1000,
            job_id: job % 1000,
            attempt_id: "Xq3T9b".into(),
        };
        for event in lifecycle(job) {
            seq += 1;
            let record = JournalRecord {
                seq,
                time_ms: 1_764_504_000_000 + seq as i64,
                event_version: EVENT_VERSION,
                key: key.clone(),
                event,
                attempt: None,
            };
            encode_record(&record, &mut bytes).expect("encodes");
        }
    }
    let encode_s = began.elapsed().as_secs_f64();
    let data = tempfile::tempdir().expect("a temporary directory");
    let journal = journal_dir(data.path());
    std::fs::create_dir_all(&journal).expect("the journal directory");
    let path = segment_path(&journal, 1);
    std::fs::write(&path, &bytes).expect("written");
    // On disk before the clock starts: no writeback competes with the runs.
    std::fs::File::open(&path)
        .and_then(|file| file.sync_all())
        .expect("synced");

    let began = Instant::now();
    let report = replay_path(
        &path,
        ReplayOptions {
            job: Some((-1, -1)),
            ..ReplayOptions::default()
        },
    )
    .expect("replays");
    let replay_s = began.elapsed().as_secs_f64();
    assert!(
        report.problems.is_empty(),
        "{:?}",
        &report.problems[..report.problems.len().min(3)]
    );
    assert_eq!(report.summary.attempts, jobs);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (read_s, recover_s) = runtime.block_on(async {
        // Read + decode alone (what opening does before the fold).
        let began = Instant::now();
        let recovered = open_journal(
            data.path(),
            &JournalConfig {
                segments: Durability::Flush.into(),
                repair: false,
            },
            WriterMode::Inline,
        )
        .expect("the journal opens");
        let read_s = began.elapsed().as_secs_f64();
        assert_eq!(recovered.records.len() as u64, seq);
        assert_eq!(recovered.cut_bytes, 0);
        drop(recovered);
        // The whole open: lock, read + decode, fold every attempt.
        let began = Instant::now();
        let worker = open_worker(data.path());
        let open_s = began.elapsed().as_secs_f64();
        let recovery = worker.recovery();
        assert_eq!((recovery.attempts, recovery.restarted), (jobs, 0));
        (read_s, (open_s - read_s).max(0.0))
    });

    println!(
        "journal: {seq} events, {jobs} jobs, {} bytes ({:.0} bytes/event, {:.0} bytes/job)",
        bytes.len(),
        bytes.len() as f64 / seq as f64,
        bytes.len() as f64 / jobs as f64
    );
    println!(
        "encode: {:.2} s ({:.0} events/s)",
        encode_s,
        seq as f64 / encode_s
    );
    println!(
        "replay (read + decode + replay): {:.2} s ({:.0} events/s)",
        replay_s,
        seq as f64 / replay_s
    );
    println!(
        "recovery: {:.0} ms (Worker::builder().open(); of which open_journal read + decode {:.0} ms alone, the fold of every attempt {:.0} ms)",
        (read_s + recover_s) * 1000.0,
        read_s * 1000.0,
        recover_s * 1000.0
    );
}
