//! Opening a worker's journal at start: read what is there, cut a torn
//! tail, refuse (or, with repair, cut at) a corrupt middle, and start the
//! writer after the valid records.

use std::path::{Path, PathBuf};

use super::{decode_prefix, Durability, JournalError, JournalRecord, JournalWriter};

/// The journal file of a data directory.
pub fn journal_path(data_dir: &Path) -> PathBuf {
    data_dir.join("journal").join("000001.jnl")
}

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// IO on the journal failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a journal, or is damaged in the middle (and repair
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
}

/// What opening the journal found.
#[derive(Debug)]
pub struct Recovered {
    /// The writer, positioned after the valid records.
    pub writer: JournalWriter,
    /// The valid records, in order.
    pub records: Vec<JournalRecord>,
    /// Bytes cut off the end (a torn tail, or with repair everything from
    /// the corrupt record on).
    pub cut_bytes: u64,
    /// What was cut, for the log.
    pub cut_reason: Option<String>,
}

/// Opens (or creates) the journal of `data_dir`.
///
/// # Errors
/// [`RecoveryError`]: IO failure; a file that is not a journal; a corrupt
/// record in the middle unless `repair` (then the valid prefix is kept and
/// the rest cut, and said so).
pub fn open_journal(
    data_dir: &Path,
    durability: Durability,
    repair: bool,
    runtime: tokio::runtime::Handle,
) -> Result<Recovered, RecoveryError> {
    let path = journal_path(data_dir);
    let name = path.display().to_string();
    let io = |source| RecoveryError::Io {
        path: name.clone(),
        source,
    };
    std::fs::create_dir_all(path.parent().expect("a journal path has a parent")).map_err(io)?;
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(e)),
    };
    let (decoded, corrupt) = decode_prefix(&bytes).map_err(|source| RecoveryError::Damaged {
        path: name.clone(),
        source,
        hint: "",
    })?;
    let (cut_bytes, cut_reason) = match (&corrupt, &decoded.tail) {
        (Some(error), _) if !repair => {
            return Err(RecoveryError::Damaged {
                path: name.clone(),
                source: error.clone(),
                hint: "; start with --repair to keep the records before it and drop the rest",
            })
        }
        (Some(error), _) => (
            bytes.len() as u64 - decoded.valid_bytes,
            Some(error.to_string()),
        ),
        (None, Some(tail)) => (tail.bytes, Some(format!("torn tail: {}", tail.reason))),
        (None, None) => (0, None),
    };
    let valid = (cut_bytes > 0).then_some(decoded.valid_bytes);
    let writer = JournalWriter::open(&path, valid, durability, runtime).map_err(io)?;
    Ok(Recovered {
        writer,
        records: decoded.records,
        cut_bytes,
        cut_reason,
    })
}
