//! Opening a worker's journal at start: read the segments from the last
//! snapshot on, cut a torn tail, and refuse damage anywhere else — a
//! corrupt record, a sequence number that repeats, goes back or skips, a
//! journal that ends before its checkpoint, a journal missing beside the
//! attempts it ran. With repair, every valid record is kept (the decoder
//! resynchronises after damage), the records are put back in sequence
//! order and written as a snapshot before anything else is written, and
//! the writer starts after them.

use std::path::{Path, PathBuf};

use super::checkpoint::{read_checkpoint, Checkpoint};
use super::writer::{segment_path, segments, write_snapshot_segment, SegmentOptions, WriterMode};
use super::{decode_resync, JournalError, JournalRecord, JournalWriter, HEADER_BYTES};

/// The journal directory of a data directory.
pub fn journal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("journal")
}

/// How the journal is opened.
#[derive(Debug, Clone, Default)]
pub struct JournalConfig {
    /// How segments are written (durability, preallocation).
    pub segments: SegmentOptions,
    /// Start on a damaged journal, keeping every valid record (default
    /// false: refuse, and say how to repair).
    pub repair: bool,
}

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// IO on the journal failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a journal, or is damaged before its end (and repair
    /// was not asked for).
    #[error("journal {path}: {source}{hint}")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        source: JournalError,
        /// What to do about it.
        hint: &'static str,
    },
    /// Whole records are missing or out of order: the journal ends before
    /// its checkpoint, a segment is gone, the journal is gone beside the
    /// attempts it ran, or sequence numbers repeat, go back or skip.
    #[error("journal {path}: {reason}{hint}")]
    Inconsistent {
        /// The journal directory.
        path: String,
        /// What is wrong.
        reason: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// A record this worker cannot have written (see [`super::foreign`]):
    /// a later worker's journal, or an edited one.
    #[error("journal {path}: {reason}{hint}")]
    Foreign {
        /// The journal directory.
        path: String,
        /// Which record, and why.
        reason: String,
        /// What to do about it.
        hint: &'static str,
    },
}

/// What opening the journal found.
#[derive(Debug)]
pub struct Recovered {
    /// The writer, positioned after the valid records.
    pub writer: JournalWriter,
    /// The valid records, in order (from the last snapshot on).
    pub records: Vec<JournalRecord>,
    /// Bytes cut off (a torn tail, or with repair every damaged range).
    pub cut_bytes: u64,
    /// What was cut or repaired, for the log.
    pub cut_reason: Option<String>,
}

const REPAIR_HINT: &str = "; check it with `batch-worker replay --check DATA_DIR`, then start with --repair to keep every valid record (damaged bytes are dropped)";

/// Checks the journal's `checkpoint` against the segments read: `live`
/// holds, from the last snapshot on, each segment's number and the bytes
/// of its whole, valid records. `Err` says what is missing. A checkpoint
/// in a segment before the snapshot was superseded by it.
///
/// # Errors
/// The message a person reads: which segment, which bytes.
pub fn check_checkpoint(checkpoint: Checkpoint, live: &[(u64, u64)]) -> Result<(), String> {
    let Some(&(first, _)) = live.first() else {
        return Err(format!(
            "no segment is left, but the checkpoint says segment {:06}.jnl was written through byte {}",
            checkpoint.segment, checkpoint.offset
        ));
    };
    if checkpoint.segment < first {
        return Ok(());
    }
    match live.iter().find(|(n, _)| *n == checkpoint.segment) {
        Some((_, valid)) if *valid >= checkpoint.offset => Ok(()),
        Some((n, valid)) => Err(format!(
            "segment {n:06}.jnl holds whole records through byte {valid}, but the checkpoint says it was written through byte {}: {} bytes of records are missing",
            checkpoint.offset,
            checkpoint.offset - valid
        )),
        None => Err(format!(
            "segment {:06}.jnl, written through byte {} by the checkpoint, is missing",
            checkpoint.segment, checkpoint.offset
        )),
    }
}

/// Opens (or creates) the journal of `data_dir`.
///
/// # Errors
/// [`RecoveryError`]: IO failure; a file that is not a journal; unless
/// `config.repair`, damage anywhere but a torn final record
/// ([`RecoveryError::Damaged`], [`RecoveryError::Inconsistent`]); records
/// of a newer worker, always ([`RecoveryError::Foreign`]).
pub fn open_journal(
    data_dir: &Path,
    config: &JournalConfig,
    mode: impl Into<WriterMode>,
) -> Result<Recovered, RecoveryError> {
    let repair = config.repair;
    let dir = journal_dir(data_dir);
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| RecoveryError::Io { path, source }
    };
    let inconsistent = |reason: String| RecoveryError::Inconsistent {
        path: dir.display().to_string(),
        reason,
        hint: REPAIR_HINT,
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    remove_partial_snapshots(&dir).map_err(io(&dir))?;
    let mut problems: Vec<String> = Vec::new();
    // Read first: it is written after its records, so the files read
    // next hold at least what it says.
    let checkpoint = match read_checkpoint(&dir) {
        Ok(checkpoint) => checkpoint,
        Err(e) if repair => {
            problems.push(e.to_string());
            None
        }
        Err(e) => return Err(inconsistent(e.to_string())),
    };
    let all = segments(&dir).map_err(io(&dir))?;
    if all.is_empty() {
        let attempts = attempt_dirs(data_dir);
        let reason = match (checkpoint, attempts) {
            (Some(checkpoint), _) => check_checkpoint(checkpoint, &[]).err(),
            (None, 0) => None,
            (None, n) => Some(format!(
                "the journal is missing, but {n} attempt directories are under {}",
                data_dir.join("jobs").display()
            )),
        };
        if let Some(reason) = reason {
            if !repair {
                return Err(inconsistent(reason));
            }
            problems.push(reason);
        }
    }
    // A snapshot supersedes every segment before it (a compaction that
    // stopped before deleting them leaves them behind).
    let start = all
        .iter()
        .rposition(|(_, path)| is_snapshot(path))
        .unwrap_or(0);
    for (_, old) in &all[..start] {
        std::fs::remove_file(old).map_err(io(old))?;
    }
    let live = &all[start..];
    let mut records = Vec::new();
    let mut cut_bytes = 0;
    let mut cut_reason = None;
    let mut position = (live.first().map_or(1, |(n, _)| *n), None);
    let mut sizes = Vec::with_capacity(live.len());
    let mut per_segment = Vec::with_capacity(live.len());
    for (i, (number, path)) in live.iter().enumerate() {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(io(path))?;
        let (decoded, skipped) =
            decode_resync(&bytes).map_err(|source| RecoveryError::Damaged {
                path: name.clone(),
                source,
                hint: "",
            })?;
        let last = i + 1 == live.len();
        sizes.push((*number, decoded.valid_bytes));
        per_segment.push((decoded.snapshot, decoded.records.len()));
        if let Some(first) = skipped.first() {
            if !repair {
                return Err(RecoveryError::Damaged {
                    path: name,
                    source: JournalError::CorruptMiddle {
                        offset: first.offset,
                        valid_records: records.len() + decoded.records.len(),
                        reason: first.reason.clone(),
                    },
                    hint: REPAIR_HINT,
                });
            }
            for skip in &skipped {
                cut_bytes += skip.bytes;
                problems.push(format!(
                    "{name}: {} bytes skipped at byte {} ({})",
                    skip.bytes, skip.offset, skip.reason
                ));
            }
        }
        match decoded.tail {
            Some(tail) if last => {
                cut_bytes += tail.bytes;
                cut_reason = Some(format!("torn tail of {name}: {}", tail.reason));
                position = (*number, Some(decoded.valid_bytes.max(HEADER_BYTES as u64)));
            }
            Some(tail) if repair => {
                cut_bytes += tail.bytes;
                problems.push(format!(
                    "{name}: torn record ({}) in a segment that is not the last",
                    tail.reason
                ));
            }
            Some(tail) => {
                return Err(RecoveryError::Damaged {
                    path: name,
                    source: JournalError::CorruptMiddle {
                        offset: tail.offset,
                        valid_records: records.len() + decoded.records.len(),
                        reason: format!(
                            "a torn record ({}) in a segment that is not the last",
                            tail.reason
                        ),
                    },
                    hint: REPAIR_HINT,
                });
            }
            None => position = (*number, None),
        }
        if records.is_empty() {
            records = decoded.records;
        } else {
            records.extend(decoded.records);
        }
    }
    if let Some(checkpoint) = checkpoint {
        if let Err(reason) = check_checkpoint(checkpoint, &sizes) {
            if !repair {
                return Err(inconsistent(reason));
            }
            problems.push(reason);
        }
    }
    // Sequence numbers: each follows the last by one, except where a
    // snapshot left gaps.
    let mut from = 0;
    let through = super::gaps_allowed_through(per_segment.iter().map(|&(snapshot, n)| {
        let part = &records[from..from + n];
        from += n;
        (snapshot, part)
    }));
    let mut last = None;
    let mut out_of_order = None;
    for record in &records {
        if !super::sequence_follows(last, record.seq, through) {
            out_of_order = Some(format!(
                "seq {} follows seq {}: records are missing, repeated or out of order",
                record.seq,
                last.unwrap_or(0)
            ));
            break;
        }
        last = Some(record.seq);
    }
    if let Some(reason) = out_of_order {
        if !repair {
            return Err(inconsistent(reason));
        }
        // In sequence order, each number once (the first copy kept).
        records.sort_by_key(|r| r.seq);
        records.dedup_by_key(|r| r.seq);
        problems.push(reason);
    }
    // Records this worker cannot have written are refused (a newer
    // worker's always; with repair, impossible keys are dropped and said).
    let mut dropped = 0;
    let mut refused = None;
    records.retain(|record| match super::foreign(record) {
        None => true,
        Some(reason) if !repair || record.event_version > super::EVENT_VERSION => {
            refused.get_or_insert(reason);
            true
        }
        Some(_) => {
            dropped += 1;
            false
        }
    });
    if let Some(reason) = refused {
        let newer = reason.contains("newer worker");
        return Err(RecoveryError::Foreign {
            path: dir.display().to_string(),
            reason,
            hint: if newer {
                "; start the worker version that wrote it"
            } else {
                "; start with --repair to drop such records and keep the rest"
            },
        });
    }
    if dropped > 0 {
        problems.push(format!("{dropped} records of impossible attempts dropped"));
    }
    if !problems.is_empty() {
        // What is kept must replay clean: records the attempts' fold
        // rejects (an event whose predecessors the damage took) go too.
        let rejected = drop_rejected(&mut records);
        if rejected > 0 {
            problems.push(format!(
                "{rejected} records their attempt's events no longer allow dropped"
            ));
        }
        let repaired = format!("repair: {}", problems.join("; "));
        cut_reason = Some(match cut_reason {
            Some(earlier) => format!("{earlier}; {repaired}"),
            None => repaired,
        });
        // What was kept replaces the files before anything else is
        // written: a snapshot of the kept records, so that the next start
        // needs no repair.
        let mut bytes = Vec::new();
        for record in &records {
            super::encode_record(record, &mut bytes).map_err(|e| RecoveryError::Io {
                path: dir.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        let next = live.last().map_or(1, |(n, _)| n + 1);
        write_snapshot_segment(&dir, next, &bytes, config.segments.preallocate_bytes)
            .map_err(io(&segment_path(&dir, next)))?;
        position = (next + 1, None);
    }
    let writer = JournalWriter::open(&dir, position.0, position.1, config.segments.clone(), mode)
        .map_err(io(&segment_path(&dir, position.0)))?;
    Ok(Recovered {
        writer,
        records,
        cut_bytes,
        cut_reason,
    })
}

/// Drops the records `replay` rejects (an illegal transition, an event
/// after a terminal state or before `created`, a second live attempt),
/// until none is left; returns how many were dropped.
fn drop_rejected(records: &mut Vec<JournalRecord>) -> usize {
    use crate::replay::{replay_records, Problem, ReplayOptions};
    let before = records.len();
    loop {
        let options = ReplayOptions {
            gaps_allowed_through: u64::MAX,
            ..ReplayOptions::default()
        };
        let rejected: std::collections::HashSet<u64> = replay_records(records, options)
            .problems
            .iter()
            .filter_map(|problem| match problem {
                Problem::IllegalTransition { seq, .. }
                | Problem::EventAfterTerminal { seq, .. }
                | Problem::FirstEventNotCreated { seq, .. }
                | Problem::TwoLiveAttempts { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        if rejected.is_empty() {
            return before - records.len();
        }
        records.retain(|r| !rejected.contains(&r.seq));
    }
}

/// Attempt directories under `data_dir/jobs` (`jobs/BATCH/JOB/ATTEMPT`).
fn attempt_dirs(data_dir: &Path) -> usize {
    let children = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    children(&data_dir.join("jobs"))
        .iter()
        .flat_map(|batch| children(batch))
        .map(|job| children(&job).len())
        .sum()
}

/// Removes what a compaction that stopped half way left (`*.jnl.partial`).
fn remove_partial_snapshots(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(".jnl.partial") {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Whether the segment at `path` starts with a snapshot header.
fn is_snapshot(path: &Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; HEADER_BYTES];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok()
        && u32::from_le_bytes(header[12..16].try_into().expect("4 bytes")) & super::FLAG_SNAPSHOT
            != 0
}
