//! Replay speed: `cargo bench --bench replay` builds a journal of 1M events
//! (jobs of six events each), writes it to a temporary file, and times
//! reading it back and replaying it through the model. Prints events/s.
//! `REPLAY_EVENTS=N` changes the size.

use std::time::Instant;

use batch_worker::journal::{encode_header, encode_record, JournalRecord};
use batch_worker::replay::{replay_path, ReplayOptions};
use batch_worker_model::{ErrorKind, Event, ExitStatus, JobKey, ProcessKind, EVENT_VERSION};

fn main() {
    let events: usize = std::env::var("REPLAY_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let jobs = events / 6;
    let mut bytes = encode_header().to_vec();
    let mut seq = 0u64;
    let began = Instant::now();
    for job in 0..jobs as i64 {
        let key = JobKey {
            batch_id: job / 1000,
            job_id: job % 1000,
            attempt_id: "Xq3T9b".into(),
        };
        let failed = job % 10 == 0;
        let mut lifecycle = vec![Event::Created { format_version: 7 }, Event::SpecLoadStarted];
        if failed {
            lifecycle.push(Event::SpecLoadFailed {
                kind: ErrorKind::SpecCorrupt,
                message: "7/bunch/q4w8e2r6t1y9u3i5/specs.idx is 8 bytes, too short".into(),
            });
            lifecycle.push(Event::LogsUploaded);
            lifecycle.push(Event::CompleteDelivered);
        } else {
            lifecycle.extend([
                Event::SpecLoaded {
                    process: ProcessKind::Docker,
                    size_bytes: 311,
                    unsupported: vec![],
                    cores_mcpu: 1000,
                    memory_bytes: 3_750_000_000,
                    input_files: 0,
                    output_files: 0,
                },
                Event::ResourcesGranted,
                Event::ProcessStarted { pid: 4242 },
                Event::StartedDelivered,
                Event::ProcessExited {
                    exit: ExitStatus::Code { code: 0 },
                    duration_ms: 1200,
                },
                Event::LogsUploaded,
                Event::CompleteDelivered,
            ]);
        }
        for event in lifecycle {
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
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("bench.jnl");
    std::fs::write(&path, &bytes).expect("written");
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
    println!(
        "journal: {seq} events, {} jobs, {} bytes ({:.0} bytes/event, {:.0} bytes/job)",
        jobs,
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
        "read + decode + replay: {:.2} s ({:.0} events/s)",
        replay_s,
        seq as f64 / replay_s
    );
}
