//! Property tests of the journal format: round trips, a journal cut at any
//! byte recovers exactly the whole records before the cut, and a flipped
//! byte is never silently taken for a shorter journal unless it lies in
//! the last record.
//!
//! This file is long (about 600 lines) because every property shares the
//! strategies that generate each kind of event and record.

use batch_worker_model::{
    ErrorKind, Event, ExitStatus, JobKey, ProcessKind, UnknownField, UnknownFields, EVENT_VERSION,
};
use proptest::prelude::*;

use super::codec::FRAME_BYTES;
use super::*;

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (1u32..8).prop_map(Event::created),
        Just(Event::SpecLoadStarted),
        (
            any::<u64>(),
            prop::collection::vec("[a-z_]{1,12}", 0..2),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(("\\PC{1,20}", prop::option::of("[a-z_.]{1,20}")), 0..3),
            0u32..3,
        )
            .prop_map(
                |(size_bytes, unsupported, cores_mcpu, memory_bytes, unknown, omitted)| {
                    Event::SpecLoaded {
                        process: ProcessKind::Docker,
                        size_bytes,
                        unsupported,
                        cores_mcpu,
                        memory_bytes,
                        input_files: 0,
                        output_files: 0,
                        image: None,
                        resources: None,
                        unknown_fields: UnknownFields::new(
                            unknown
                                .into_iter()
                                .map(|(path, suggestion)| UnknownField { path, suggestion })
                                .collect(),
                            omitted,
                        ),
                    }
                }
            ),
        Just(Event::ResourcesGranted),
        Just(Event::StartedDelivered),
        Just(Event::LogsUploaded),
        "\\PC{0,40}".prop_map(|message| Event::ResourcesRefused { message }),
        "\\PC{0,40}".prop_map(|message| Event::LogsUploadFailed { message }),
        "\\PC{0,40}".prop_map(|message| Event::SpecLoadFailed {
            kind: ErrorKind::SpecCorrupt,
            message
        }),
        (any::<u32>(), any::<Option<(u32, Option<u16>)>>()).prop_map(|(pid, network)| {
            Event::ProcessStarted {
                pid,
                network: network.map(|(ip, port)| {
                    Box::new(batch_worker_model::JobAddress {
                        mode: "public".into(),
                        ip: ip.into(),
                        port,
                        host_port: port.map(|p| p.wrapping_add(1)),
                    })
                }),
            }
        }),
        (any::<i32>(), any::<u64>()).prop_map(|(code, duration_ms)| Event::ProcessExited {
            exit: ExitStatus::Code { code },
            duration_ms
        }),
        Just(Event::CancelRequested),
        Just(Event::WorkerRestarted),
    ]
}

fn records() -> impl Strategy<Value = Vec<JournalRecord>> {
    prop::collection::vec(
        (
            any::<i64>(),
            0i64..1000,
            0i64..1000,
            "[A-Za-z0-9]{1,8}",
            event(),
        ),
        1..12,
    )
    .prop_map(|items| {
        items
            .into_iter()
            .enumerate()
            .map(
                |(i, (time_ms, batch_id, job_id, attempt_id, event))| JournalRecord {
                    seq: i as u64 + 1,
                    time_ms,
                    event_version: EVENT_VERSION,
                    key: JobKey {
                        batch_id,
                        job_id,
                        attempt_id,
                    },
                    event,
                    attempt: None,
                },
            )
            .collect()
    })
}

/// The journal bytes and the end offset of each record.
fn encode_all(records: &[JournalRecord]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = encode_header().to_vec();
    let mut ends = Vec::new();
    for record in records {
        encode_record(record, &mut bytes).unwrap();
        ends.push(bytes.len());
    }
    (bytes, ends)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn records_round_trip(records in records()) {
        let (bytes, _) = encode_all(&records);
        let decoded = decode(&bytes).unwrap();
        prop_assert_eq!(decoded.records, records);
        prop_assert_eq!(decoded.valid_bytes, bytes.len() as u64);
        prop_assert_eq!(decoded.tail, None);
    }

    #[test]
    fn a_cut_at_any_byte_recovers_the_whole_records_before_it(records in records()) {
        let (bytes, ends) = encode_all(&records);
        for cut in 0..=bytes.len() {
            let decoded = decode(&bytes[..cut]).unwrap();
            let whole = ends.iter().filter(|end| **end <= cut).count();
            prop_assert_eq!(&decoded.records[..], &records[..whole], "cut at {}", cut);
            let boundary = cut == 0 || cut == HEADER_BYTES || ends.contains(&cut);
            prop_assert_eq!(decoded.tail.is_none(), boundary, "cut at {}: {:?}", cut, decoded.tail);
            if let Some(tail) = decoded.tail {
                prop_assert_eq!(tail.offset + tail.bytes, cut as u64);
                prop_assert_eq!(tail.offset, decoded.valid_bytes);
            }
        }
    }

    #[test]
    fn a_flipped_byte_is_never_taken_for_a_shorter_journal_unless_in_the_last_record(
        records in records(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let (mut bytes, ends) = encode_all(&records);
        let position = HEADER_BYTES + at.index(bytes.len() - HEADER_BYTES);
        bytes[position] ^= xor;
        let in_record = ends.iter().position(|end| position < *end).unwrap();
        match decode(&bytes) {
            Err(JournalError::CorruptMiddle { valid_records, .. }) => {
                prop_assert_eq!(valid_records, in_record);
                // What --repair keeps: exactly the records before the damage.
                let (prefix, error) = decode_prefix(&bytes).unwrap();
                prop_assert!(error.is_some());
                prop_assert_eq!(&prefix.records[..], &records[..in_record]);
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
            Ok(decoded) => {
                // Only damage in the last record may pass as a torn write,
                // and what remains is exactly the records before it.
                prop_assert_eq!(in_record, records.len() - 1);
                prop_assert_eq!(&decoded.records[..], &records[..in_record]);
                prop_assert!(decoded.tail.is_some());
            }
        }
    }
}

#[test]
fn headers_that_are_not_ours_are_refused() {
    assert!(matches!(
        decode(b"not a journal at all"),
        Err(JournalError::Header(_))
    ));
    let mut other_version = encode_header();
    other_version[8] = 9;
    assert!(
        matches!(decode(&other_version), Err(JournalError::Header(m)) if m.contains("version 9"))
    );
    assert_eq!(decode(&[]).unwrap().records.len(), 0);
}

#[test]
fn a_zero_filled_tail_is_a_torn_write() {
    let record = JournalRecord {
        seq: 1,
        time_ms: 5,
        event_version: EVENT_VERSION,
        key: JobKey {
            batch_id: 1,
            job_id: 2,
            attempt_id: "a".into(),
        },
        event: Event::SpecLoadStarted,
        attempt: None,
    };
    let (mut bytes, ends) = encode_all(std::slice::from_ref(&record));
    bytes.extend_from_slice(&[0u8; 100]);
    let decoded = decode(&bytes).unwrap();
    assert_eq!(decoded.records, vec![record]);
    let tail = decoded.tail.unwrap();
    assert_eq!((tail.offset, tail.bytes), (ends[0] as u64, 100));
}

fn sample_records(n: u64) -> Vec<JournalRecord> {
    (1..=n)
        .map(|seq| JournalRecord {
            seq,
            time_ms: seq as i64,
            event_version: EVENT_VERSION,
            key: JobKey {
                batch_id: 1,
                job_id: seq as i64,
                attempt_id: "a".into(),
            },
            event: Event::created(7),
            attempt: None,
        })
        .collect()
}

#[tokio::test]
async fn opening_cuts_a_torn_tail_and_refuses_a_corrupt_middle_unless_repairing() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment_path(&journal_dir(dir.path()), 1);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let (bytes, ends) = encode_all(&sample_records(3));
    let handle = tokio::runtime::Handle::current();

    // A torn tail: cut, and the file is left ending at the last whole record.
    std::fs::write(&path, &bytes[..ends[2] - 5]).unwrap();
    let opened = open_journal(dir.path(), &config(false), handle.clone()).unwrap();
    assert_eq!(opened.records, sample_records(2));
    assert_eq!(opened.cut_bytes, (ends[2] - 5 - ends[1]) as u64);
    drop(opened);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), ends[1] as u64);

    // A corrupt middle: refused, with the way out in the message.
    let mut corrupt = bytes.clone();
    corrupt[ends[0] + FRAME_BYTES + 2] ^= 1;
    std::fs::write(&path, &corrupt).unwrap();
    let err = open_journal(dir.path(), &config(false), handle.clone()).unwrap_err();
    assert!(err.to_string().contains("--repair"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        corrupt,
        "nothing is changed without --repair"
    );

    // With repair: every valid record is kept, the damaged one dropped
    // and said so; the kept ones are rewritten as a snapshot.
    let opened = open_journal(dir.path(), &config(true), handle.clone()).unwrap();
    let three = sample_records(3);
    assert_eq!(opened.records, vec![three[0].clone(), three[2].clone()]);
    assert!(opened.cut_reason.as_deref().unwrap().contains("checksum"));
    // The writer appends after the kept records, in a fresh segment.
    let mut more = Vec::new();
    let fourth = JournalRecord {
        seq: 4,
        ..three[2].clone()
    };
    encode_record(&fourth, &mut more).unwrap();
    let (done, wait) = tokio::sync::oneshot::channel();
    opened
        .writer
        .append(more, Box::new(move |ok| done.send(ok).unwrap()));
    assert!(wait.await.unwrap());
    drop(opened);
    // The next start needs no repair.
    let reopened = open_journal(dir.path(), &config(false), handle).unwrap();
    assert_eq!(
        reopened.records,
        vec![three[0].clone(), three[2].clone(), fourth]
    );
}

/// `payload` framed as a record, with valid checksums.
fn framed(payload: &[u8]) -> Vec<u8> {
    let length = (payload.len() as u32).to_le_bytes();
    let mut out = length.to_vec();
    out.extend_from_slice(&crc32c::crc32c(&length).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn a_journal_parsed_on_several_threads_decodes_as_one_parsed_in_order() {
    // Large enough to be split into runs, one per thread.
    let records = sample_records(40_000);
    let (bytes, ends) = encode_all(&records);
    let decoded = decode(&bytes).unwrap();
    assert_eq!(decoded.records, records);
    assert_eq!(decoded.valid_bytes, bytes.len() as u64);
    assert_eq!(decoded.tail, None);

    // A record whose checksum holds but that does not parse, in a later
    // run: exactly the records before it are kept, and it is the damage.
    let bad = 30_000;
    let mut damaged = bytes[..ends[bad - 1]].to_vec();
    damaged.extend(framed(b"{\"seq\": not json"));
    damaged.extend_from_slice(&bytes[ends[bad - 1]..]);
    match decode(&damaged) {
        Err(JournalError::CorruptMiddle {
            offset,
            valid_records,
            reason,
        }) => {
            assert_eq!(offset, ends[bad - 1] as u64);
            assert_eq!(valid_records, bad);
            assert!(reason.contains("does not parse"), "{reason}");
        }
        other => panic!("expected a corrupt middle, got {other:?}"),
    }
    let (prefix, error) = decode_prefix(&damaged).unwrap();
    assert_eq!(prefix.records, records[..bad]);
    assert_eq!(prefix.valid_bytes, ends[bad - 1] as u64);
    assert!(error.is_some());
}

#[test]
fn a_created_record_from_before_the_event_held_the_user_reads_as_todays_event() {
    // Given a `created` record as workers wrote it before the event carried
    // the user, job group and secret names (beside it, in `attempt`)
    let payload = br#"{"seq":1,"time_ms":5,"event_version":2,"key":{"batch_id":1,"job_id":2,"attempt_id":"a"},"event":{"type":"created","format_version":7},"attempt":{"user":"alice","job_group_id":3,"secret_names":["ns/gsa"]}}"#;
    let mut bytes = encode_header().to_vec();
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&(payload.len() as u32).to_le_bytes()).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    // When it is read
    let decoded = decode(&bytes).unwrap();
    // Then its event holds them, as the worker writes it today
    assert_eq!(
        decoded.records[0].events().into_owned(),
        vec![Event::Created {
            format_version: 7,
            user: "alice".into(),
            job_group_id: 3,
            secret_names: vec!["ns/gsa".into()],
        }]
    );
    // and today's record of that event has no `attempt` beside it.
    let today = JournalRecord::new(
        1,
        5,
        decoded.records[0].key.clone(),
        decoded.records[0].events()[0].clone(),
    );
    let json = serde_json::to_string(&today).unwrap();
    assert!(!json.contains("\"attempt\""), "{json}");
    assert_eq!(
        decode(&encode_all(std::slice::from_ref(&today)).0)
            .unwrap()
            .records,
        vec![today]
    );
}

#[tokio::test]
async fn opening_refuses_records_this_worker_cannot_have_written() {
    let handle = tokio::runtime::Handle::current();
    let write = |dir: &std::path::Path, records: &[JournalRecord]| {
        let path = segment_path(&journal_dir(dir), 1);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, encode_all(records).0).unwrap();
    };
    // An attempt id that would be a path: refused, or dropped with repair.
    let dir = tempfile::tempdir().unwrap();
    let mut records = sample_records(3);
    records[1].key.attempt_id = "/tmp/victim".into();
    write(dir.path(), &records);
    let err = open_journal(dir.path(), &config(false), handle.clone()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("seq 2: attempt 1:2/\"/tmp/victim\" is not one a create could make"),
        "{message}"
    );
    assert!(message.contains("--repair"), "{message}");
    let opened = open_journal(dir.path(), &config(true), handle.clone()).unwrap();
    assert_eq!(opened.records, vec![records[0].clone(), records[2].clone()]);
    assert!(opened
        .cut_reason
        .as_deref()
        .unwrap()
        .contains("1 records of impossible attempts dropped"));
    drop(opened);
    // They left the files too: the next start needs no repair.
    let reopened = open_journal(dir.path(), &config(false), handle.clone()).unwrap();
    assert_eq!(
        reopened.records,
        vec![records[0].clone(), records[2].clone()]
    );
    drop(reopened);
    // A newer worker's record: refused even with repair.
    let dir = tempfile::tempdir().unwrap();
    let mut records = sample_records(2);
    records[1].event_version = EVENT_VERSION + 96;
    write(dir.path(), &records);
    let err = open_journal(dir.path(), &config(true), handle).unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "written by a newer worker (event version {}",
            EVENT_VERSION + 96
        )),
        "{err}"
    );
    // and `replay` reports the same records.
    let report = crate::replay::replay_records(&records, Default::default());
    assert!(matches!(
        &report.problems[..],
        [crate::replay::Problem::ForeignRecord { seq: 2, .. }]
    ));
}

/// Opening options: no fsync, no preallocation, repair as given.
fn config(repair: bool) -> JournalConfig {
    JournalConfig {
        segments: SegmentOptions {
            durability: Durability::Flush,
            preallocate_bytes: 0,
            faults: None,
        },
        repair,
    }
}

/// Appends `records` through `writer`, each waited for.
async fn append_all(writer: &JournalWriter, records: &[JournalRecord]) {
    for record in records {
        let mut bytes = Vec::new();
        encode_record(record, &mut bytes).unwrap();
        let (done, wait) = tokio::sync::oneshot::channel();
        writer.append(bytes, Box::new(move |ok| done.send(ok).unwrap()));
        assert!(wait.await.unwrap(), "written");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_append_is_cut_back_and_retried_and_nothing_waits_past_it() {
    let dir = tempfile::tempdir().unwrap();
    // Appends 2 and 3 fail: the first torn half way, the next with nothing
    // written; the fourth try succeeds.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = calls.clone();
    let faults = WriteFaults(std::sync::Arc::new(move |size| {
        match counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            1 => Some(WriteFault::Torn(size / 2)),
            2 => Some(WriteFault::Full),
            _ => None,
        }
    }));
    let config = JournalConfig {
        segments: SegmentOptions {
            faults: Some(faults),
            ..config(false).segments
        },
        repair: false,
    };
    let opened = open_journal(dir.path(), &config, WriterMode::Inline).unwrap();
    let records = sample_records(3);
    append_all(&opened.writer, &records[..1]).await;
    // The second is queued behind a failing write; so is the third, and
    // neither callback runs until the write succeeds.
    let mut waits = Vec::new();
    for record in &records[1..] {
        let mut bytes = Vec::new();
        encode_record(record, &mut bytes).unwrap();
        let (done, wait) = tokio::sync::oneshot::channel();
        opened
            .writer
            .append(bytes, Box::new(move |ok| done.send(ok).unwrap()));
        waits.push(wait);
    }
    assert!(opened.writer.is_failing());
    let path = segment_path(&journal_dir(dir.path()), 1);
    // Cut back at once: the file holds only whole records.
    assert_eq!(decode(&std::fs::read(&path).unwrap()).unwrap().tail, None);
    for wait in waits {
        assert!(wait.await.unwrap());
    }
    assert!(!opened.writer.is_failing());
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 5);
    let decoded = decode(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(decoded.records, records);
    assert_eq!(decoded.tail, None);
}

#[tokio::test]
async fn a_journal_cut_short_of_its_checkpoint_is_refused_and_replay_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let opened = open_journal(dir.path(), &config(false), WriterMode::Inline).unwrap();
    append_all(&opened.writer, &sample_records(4)).await;
    drop(opened);
    let path = segment_path(&journal_dir(dir.path()), 1);
    let (_, ends) = encode_all(&sample_records(4));
    // Cut at a record boundary: it looks like a clean end, but the
    // checkpoint says two more records were written.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(ends[1] as u64).unwrap();
    let err = open_journal(dir.path(), &config(false), WriterMode::Inline).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("records are missing"), "{message}");
    assert!(message.contains("--repair"), "{message}");
    let report = crate::replay::replay_path(dir.path(), Default::default()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| matches!(p, crate::replay::Problem::MissingRecords { .. })),
        "{:?}",
        report.problems
    );
    // Repair keeps the two left and starts clean.
    let opened = open_journal(dir.path(), &config(true), WriterMode::Inline).unwrap();
    assert_eq!(opened.records, sample_records(2));
    drop(opened);
    assert!(open_journal(dir.path(), &config(false), WriterMode::Inline).is_ok());
}

#[tokio::test]
async fn a_journal_missing_beside_attempt_directories_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("jobs/1/2/a")).unwrap();
    let err = open_journal(dir.path(), &config(false), WriterMode::Inline).unwrap_err();
    assert!(
        err.to_string()
            .contains("the journal is missing, but 1 attempt directories are under"),
        "{err}"
    );
    // No segment was made by the refusal.
    assert!(segments(&journal_dir(dir.path())).unwrap().is_empty());
}

#[tokio::test]
async fn swapped_or_repeated_sequence_numbers_are_refused_and_repair_restores_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment_path(&journal_dir(dir.path()), 1);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut records = sample_records(4);
    records.swap(1, 2);
    records.push(records[3].clone());
    std::fs::write(&path, encode_all(&records).0).unwrap();
    let err = open_journal(dir.path(), &config(false), WriterMode::Inline).unwrap_err();
    assert!(err.to_string().contains("seq 3 follows seq 1"), "{err}");
    let opened = open_journal(dir.path(), &config(true), WriterMode::Inline).unwrap();
    assert_eq!(opened.records, sample_records(4));
}

#[tokio::test]
async fn a_repaired_journal_replays_clean_even_when_the_damage_took_an_attempts_middle() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment_path(&journal_dir(dir.path()), 1);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let key = JobKey {
        batch_id: 1,
        job_id: 1,
        attempt_id: "a".into(),
    };
    let events = [
        Event::created(7),
        Event::SpecLoadStarted,
        Event::SpecLoadFailed {
            kind: ErrorKind::SpecMissing,
            message: "gone".into(),
        },
    ];
    let records: Vec<JournalRecord> = events
        .into_iter()
        .enumerate()
        .map(|(i, event)| JournalRecord::new(i as u64 + 1, 5, key.clone(), event))
        .collect();
    let (mut bytes, ends) = encode_all(&records);
    // The middle record (spec_load_started) is damaged.
    bytes[ends[0] + FRAME_BYTES + 3] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let opened = open_journal(dir.path(), &config(true), WriterMode::Inline).unwrap();
    // spec_load_failed cannot follow created: it goes with the damage.
    assert_eq!(opened.records, records[..1].to_vec());
    assert!(
        opened
            .cut_reason
            .as_deref()
            .unwrap()
            .contains("no longer allow"),
        "{:?}",
        opened.cut_reason
    );
    drop(opened);
    let report = crate::replay::replay_path(dir.path(), Default::default()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
