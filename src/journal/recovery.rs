//! Opening a worker's journal at start: read the segments from the last
//! snapshot on, cut a torn tail, refuse (or, with repair, cut at) damage
//! anywhere else, and start the writer after the valid records.

use std::path::{Path, PathBuf};

use super::writer::{segment_path, segments, write_snapshot_segment, WriterMode};
use super::{
    decode_prefix, Durability, JournalError, JournalRecord, JournalWriter, FLAG_SNAPSHOT,
    HEADER_BYTES,
};

/// The journal directory of a data directory.
pub fn journal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("journal")
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
    /// Bytes cut off (a torn tail, or with repair everything from the
    /// damage on).
    pub cut_bytes: u64,
    /// What was cut, for the log.
    pub cut_reason: Option<String>,
}

const REPAIR_HINT: &str = "; start with --repair to keep the records before it and drop the rest";

/// Opens (or creates) the journal of `data_dir`.
///
/// # Errors
/// [`RecoveryError`]: IO failure; a file that is not a journal; a damaged
/// record before the end of the last segment unless `repair` (then the
/// valid prefix is kept, the rest cut, and said so).
pub fn open_journal(
    data_dir: &Path,
    durability: Durability,
    repair: bool,
    mode: impl Into<WriterMode>,
) -> Result<Recovered, RecoveryError> {
    let dir = journal_dir(data_dir);
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| RecoveryError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let all = segments(&dir).map_err(io(&dir))?;
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
    for (i, (number, path)) in live.iter().enumerate() {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(io(path))?;
        let (decoded, corrupt) =
            decode_prefix(&bytes).map_err(|source| RecoveryError::Damaged {
                path: name.clone(),
                source,
                hint: "",
            })?;
        let last = i + 1 == live.len();
        let decoded_records = decoded.records.len();
        if records.is_empty() {
            records = decoded.records;
        } else {
            records.extend(decoded.records);
        }
        position = (*number, None);
        let damage = match (corrupt, decoded.tail) {
            (Some(error), _) => Some(error),
            (None, Some(tail)) if last => {
                cut_bytes += tail.bytes;
                cut_reason = Some(format!("torn tail of {name}: {}", tail.reason));
                position = (*number, Some(decoded.valid_bytes));
                None
            }
            (None, Some(tail)) => Some(JournalError::CorruptMiddle {
                offset: tail.offset,
                valid_records: decoded_records,
                reason: format!(
                    "a torn record ({}) in a segment that is not the last",
                    tail.reason
                ),
            }),
            (None, None) => None,
        };
        if let Some(error) = damage {
            if !repair {
                return Err(RecoveryError::Damaged {
                    path: name,
                    source: error,
                    hint: REPAIR_HINT,
                });
            }
            cut_bytes += bytes.len() as u64 - decoded.valid_bytes;
            for (_, later) in &live[i + 1..] {
                cut_bytes += std::fs::metadata(later).map_or(0, |m| m.len());
                std::fs::remove_file(later).map_err(io(later))?;
            }
            cut_reason = Some(format!("repair: {name}: {error}; later segments dropped"));
            position = (*number, Some(decoded.valid_bytes.max(HEADER_BYTES as u64)));
            break;
        }
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
        let reason = format!("repair: {dropped} records of impossible attempts dropped");
        cut_reason = Some(match cut_reason {
            Some(earlier) => format!("{earlier}; {reason}"),
            None => reason,
        });
    }
    if dropped > 0 {
        // The dropped records leave the files too, before anything else is
        // written: a snapshot of the kept ones replaces every segment, so
        // the next start needs no repair.
        let mut bytes = Vec::new();
        for record in &records {
            super::encode_record(record, &mut bytes).map_err(|e| RecoveryError::Io {
                path: dir.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        let next = position.0 + 1;
        write_snapshot_segment(&dir, next, &bytes).map_err(io(&segment_path(&dir, next)))?;
        position = (next, None);
    }
    let writer = JournalWriter::open(&dir, position.0, position.1, durability, mode)
        .map_err(io(&segment_path(&dir, position.0)))?;
    Ok(Recovered {
        writer,
        records,
        cut_bytes,
        cut_reason,
    })
}

/// Whether the segment at `path` starts with a snapshot header.
fn is_snapshot(path: &Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; HEADER_BYTES];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok()
        && u32::from_le_bytes(header[12..16].try_into().expect("4 bytes")) & FLAG_SNAPSHOT != 0
}
