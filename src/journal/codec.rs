//! Encoding and decoding journal bytes.

use std::ops::Range;

use super::JournalRecord;

/// The first 8 bytes of every journal file.
pub const MAGIC: &[u8; 8] = b"BWJOURNL";
/// The version of this byte format (not of the events inside).
pub const FORMAT_VERSION: u32 = 1;
/// Size of the file header, in bytes.
pub const HEADER_BYTES: usize = 16;
/// Largest payload a record may have, in bytes; a larger length field is
/// corruption.
pub const MAX_RECORD_BYTES: u32 = 16 * 1024 * 1024;
/// Size of a record's frame (length, its checksum, the payload's), in bytes.
pub const FRAME_BYTES: usize = 12;

/// Header flag: the segment is a snapshot written by compaction. It holds
/// the whole history of every attempt still kept, with their original
/// sequence numbers (so gaps are expected), and supersedes every earlier
/// segment.
pub const FLAG_SNAPSHOT: u32 = 1;

/// The file header of an appended segment.
pub fn encode_header() -> [u8; HEADER_BYTES] {
    header_with(0)
}

/// The file header of a snapshot segment ([`FLAG_SNAPSHOT`]).
pub fn encode_snapshot_header() -> [u8; HEADER_BYTES] {
    header_with(FLAG_SNAPSHOT)
}

fn header_with(flags: u32) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&flags.to_le_bytes());
    header
}

/// One framed record, appended to `out`.
///
/// # Errors
/// The record does not serialise (it always does for the model's types) or
/// is larger than [`MAX_RECORD_BYTES`].
pub fn encode_record(record: &JournalRecord, out: &mut Vec<u8>) -> Result<(), JournalError> {
    let payload = serde_json::to_vec(record).map_err(|e| JournalError::Encode(e.to_string()))?;
    let length = u32::try_from(payload.len())
        .ok()
        .filter(|n| *n <= MAX_RECORD_BYTES)
        .ok_or(JournalError::Encode(format!(
            "record of {} bytes is over the {MAX_RECORD_BYTES} byte limit",
            payload.len()
        )))?;
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&length.to_le_bytes()).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// What was cut off the end of a journal: the bytes after the last whole,
/// valid record (a write the process did not finish).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailDamage {
    /// Byte offset where the valid prefix ends.
    pub offset: u64,
    /// Bytes after it.
    pub bytes: u64,
    /// Why they are not a record.
    pub reason: String,
}

/// A decoded journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The valid records, in order.
    pub records: Vec<JournalRecord>,
    /// Length of the valid prefix, in bytes (header included).
    pub valid_bytes: u64,
    /// A torn tail, if one was cut off.
    pub tail: Option<TailDamage>,
    /// Whether the file is a compaction snapshot ([`FLAG_SNAPSHOT`]).
    pub snapshot: bool,
}

/// Why journal bytes cannot be used as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// The header is missing, not ours, or of another format version.
    #[error("not a batch-worker journal: {0}")]
    Header(String),
    /// A record before the last one is damaged: the journal lost data in
    /// the middle, which a torn write cannot explain.
    #[error("corrupt record at byte {offset} (after {valid_records} valid records): {reason}")]
    CorruptMiddle {
        /// Byte offset of the damaged record.
        offset: u64,
        /// Records before it.
        valid_records: usize,
        /// What is wrong.
        reason: String,
    },
    /// A record could not be encoded.
    #[error("cannot encode a journal record: {0}")]
    Encode(String),
}

/// Decodes journal bytes.
///
/// A damaged *last* record is a torn write: a short frame, a payload cut
/// short, a payload checksum failing on the bytes that end the file, or a
/// zero-filled end. It is reported in [`Decoded::tail`] and the records
/// before it are returned. Any other damage (a length failing its
/// checksum, a bad payload with more bytes after it, a payload that passes
/// its checksum but does not parse) is [`JournalError::CorruptMiddle`].
///
/// # Errors
/// [`JournalError::Header`] or [`JournalError::CorruptMiddle`].
pub fn decode(bytes: &[u8]) -> Result<Decoded, JournalError> {
    if let Some(empty) = header(bytes)? {
        return Ok(empty);
    }
    let (records, valid, end) = frames(bytes);
    let snapshot = is_snapshot(bytes);
    match end {
        End::Clean => Ok(Decoded {
            snapshot,
            ..finish(records, valid, None)
        }),
        End::Torn(tail) => Ok(Decoded {
            snapshot,
            ..finish(records, valid, Some(tail))
        }),
        End::Corrupt(e) => Err(e),
    }
}

/// Like [`decode`], but a corrupt middle still yields the valid prefix
/// before it, with the error beside it (what `--repair` keeps, and what
/// `replay --check` reports on).
///
/// # Errors
/// [`JournalError::Header`] only.
pub fn decode_prefix(bytes: &[u8]) -> Result<(Decoded, Option<JournalError>), JournalError> {
    if let Some(empty) = header(bytes)? {
        return Ok((empty, None));
    }
    let (records, valid, end) = frames(bytes);
    let (mut decoded, error) = match end {
        End::Clean => (finish(records, valid, None), None),
        End::Torn(tail) => (finish(records, valid, Some(tail)), None),
        End::Corrupt(e) => (finish(records, valid, None), Some(e)),
    };
    decoded.snapshot = is_snapshot(bytes);
    Ok((decoded, error))
}

/// Damage that [`decode_resync`] skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Byte offset where the damage starts.
    pub offset: u64,
    /// Bytes skipped, up to the next valid record (or the end).
    pub bytes: u64,
    /// What is wrong at `offset`.
    pub reason: String,
}

/// Decodes journal bytes keeping every valid record: at damage, the
/// decoder resynchronises on the next offset where a whole, valid record
/// starts (its length passes its checksum, its payload its own and
/// parses), skips the bytes between and goes on. What `--repair` keeps:
/// records after damage are not dropped. A torn tail is in
/// [`Decoded::tail`] as with [`decode`].
///
/// # Errors
/// [`JournalError::Header`] only.
pub fn decode_resync(bytes: &[u8]) -> Result<(Decoded, Vec<Skipped>), JournalError> {
    if let Some(empty) = header(bytes)? {
        return Ok((empty, Vec::new()));
    }
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let mut at = HEADER_BYTES;
    loop {
        let (payloads, framed, end) = payloads_from(bytes, at);
        let (mut part, failed) = parse(bytes, &payloads);
        records.append(&mut part);
        let (damage_at, reason) = match (failed, end) {
            (Some((index, e)), _) => (
                payloads[index].start - FRAME_BYTES,
                format!("checksum holds but the record does not parse: {e}"),
            ),
            (None, End::Clean) => {
                let decoded = Decoded {
                    snapshot: is_snapshot(bytes),
                    ..finish(records, framed, None)
                };
                return Ok((decoded, skipped));
            }
            (None, End::Torn(tail)) => {
                let decoded = Decoded {
                    snapshot: is_snapshot(bytes),
                    ..finish(records, framed, Some(tail))
                };
                return Ok((decoded, skipped));
            }
            (None, End::Corrupt(JournalError::CorruptMiddle { reason, .. })) => (framed, reason),
            (None, End::Corrupt(e)) => (framed, e.to_string()),
        };
        let next = (damage_at + 1..bytes.len())
            .find(|&at| valid_frame_at(bytes, at))
            .unwrap_or(bytes.len());
        skipped.push(Skipped {
            offset: damage_at as u64,
            bytes: (next - damage_at) as u64,
            reason,
        });
        if next == bytes.len() {
            let decoded = Decoded {
                snapshot: is_snapshot(bytes),
                ..finish(records, next, None)
            };
            return Ok((decoded, skipped));
        }
        at = next;
    }
}

/// Whether a whole, valid record starts at byte `at` of `bytes`.
fn valid_frame_at(bytes: &[u8], at: usize) -> bool {
    let Some(frame) = bytes.get(at..at + FRAME_BYTES) else {
        return false;
    };
    let length_bytes: [u8; 4] = frame[..4].try_into().expect("4 bytes");
    let length = u32::from_le_bytes(length_bytes);
    if length == 0
        || length > MAX_RECORD_BYTES
        || crc32c::crc32c(&length_bytes) != u32::from_le_bytes(frame[4..8].try_into().expect("4"))
    {
        return false;
    }
    let Some(payload) = bytes.get(at + FRAME_BYTES..at + FRAME_BYTES + length as usize) else {
        return false;
    };
    crc32c::crc32c(payload) == u32::from_le_bytes(frame[8..12].try_into().expect("4"))
        && super::parse::parse_record(payload).is_ok()
}

/// How the records end.
enum End {
    Clean,
    Torn(TailDamage),
    Corrupt(JournalError),
}

/// Journals of at least this many records are parsed on more than one
/// thread.
const PARALLEL_RECORDS: usize = 16 * 1024;

/// Most threads that parse one journal's records.
const MAX_PARSE_THREADS: usize = 4;

/// Reads the records after a valid header: the records, the length of the
/// valid prefix, and how it ends.
fn frames(bytes: &[u8]) -> (Vec<JournalRecord>, usize, End) {
    let (payloads, framed, end) = payloads(bytes);
    let (records, failed) = parse(bytes, &payloads);
    match failed {
        None => (records, framed, end),
        // The checksum held: these bytes were written as they are, so
        // this is not a torn write.
        Some((index, e)) => {
            let at = payloads[index].start - FRAME_BYTES;
            let error = JournalError::CorruptMiddle {
                offset: at as u64,
                valid_records: index,
                reason: format!("checksum holds but the record does not parse: {e}"),
            };
            (records, at, End::Corrupt(error))
        }
    }
}

/// Walks the frames after a valid header, checking lengths and checksums:
/// the byte ranges of the payloads, the length of the framed prefix, and
/// how the frames end. Payloads are not parsed.
fn payloads(bytes: &[u8]) -> (Vec<Range<usize>>, usize, End) {
    payloads_from(bytes, HEADER_BYTES)
}

/// [`payloads`] from byte `start` on (a frame boundary).
fn payloads_from(bytes: &[u8], start: usize) -> (Vec<Range<usize>>, usize, End) {
    let mut payloads = Vec::new();
    let mut at = start;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn = |reason: String| TailDamage {
            offset: at as u64,
            bytes: rest.len() as u64,
            reason,
        };
        let corrupt = |reason: String| JournalError::CorruptMiddle {
            offset: at as u64,
            valid_records: payloads.len(),
            reason,
        };
        if rest.iter().all(|b| *b == 0) {
            // Space the file system allocated but the write never filled.
            return (payloads, at, End::Torn(torn("zero-filled tail".into())));
        }
        if rest.len() < FRAME_BYTES {
            let tail = torn(format!("{} bytes of a record frame", rest.len()));
            return (payloads, at, End::Torn(tail));
        }
        let length_bytes: [u8; 4] = rest[..4].try_into().expect("4 bytes");
        let length = u32::from_le_bytes(length_bytes);
        let length_check = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let checksum = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        if crc32c::crc32c(&length_bytes) != length_check {
            let error = corrupt("the length field fails its checksum".into());
            return (payloads, at, End::Corrupt(error));
        }
        if length > MAX_RECORD_BYTES {
            let error = corrupt(format!(
                "length {length} is over the {MAX_RECORD_BYTES} byte limit"
            ));
            return (payloads, at, End::Corrupt(error));
        }
        let end = FRAME_BYTES + length as usize;
        if rest.len() < end {
            let tail = torn(format!(
                "{} of {length} payload bytes",
                rest.len() - FRAME_BYTES
            ));
            return (payloads, at, End::Torn(tail));
        }
        let last = end == rest.len();
        if crc32c::crc32c(&rest[FRAME_BYTES..end]) != checksum {
            let reason = "checksum mismatch".to_owned();
            let end = match last {
                true => End::Torn(torn(reason)),
                false => End::Corrupt(corrupt(reason)),
            };
            return (payloads, at, end);
        }
        payloads.push(at + FRAME_BYTES..at + end);
        at += end;
    }
    (payloads, at, End::Clean)
}

/// Parses the payloads at `payloads` in `bytes`, in order: the records
/// before the first that does not parse, and that one's index and error.
/// A large journal is split into consecutive runs parsed on scoped
/// threads (at most [`MAX_PARSE_THREADS`]); the result is the same.
fn parse(
    bytes: &[u8],
    payloads: &[Range<usize>],
) -> (Vec<JournalRecord>, Option<(usize, serde_json::Error)>) {
    let threads = match payloads.len() {
        n if n < PARALLEL_RECORDS => 1,
        _ => std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(MAX_PARSE_THREADS),
    };
    if threads <= 1 {
        return parse_run(bytes, payloads, payloads.len());
    }
    let mut runs = payloads.chunks(payloads.len().div_ceil(threads));
    let first = runs.next().unwrap_or_default();
    std::thread::scope(|scope| {
        let others: Vec<_> = runs
            .map(|run| {
                let parsing = std::thread::Builder::new()
                    .name("journal-parse".into())
                    .spawn_scoped(scope, move || parse_run(bytes, run, run.len()));
                (run, parsing.ok())
            })
            .collect();
        // The first run's vector holds them all, so the rest are moved
        // once and the first not at all.
        let (mut records, mut failed) = parse_run(bytes, first, payloads.len());
        let mut before = first.len();
        for (run, parsing) in others {
            let (part, part_failed) = match parsing {
                Some(thread) => thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                // No thread could be started: parse it here.
                None => parse_run(bytes, run, run.len()),
            };
            if failed.is_none() {
                records.extend(part);
                failed = part_failed.map(|(index, e)| (before + index, e));
            }
            before += run.len();
        }
        (records, failed)
    })
}

/// Parses one run of payloads into a vector of `capacity`: the records
/// before the first that does not parse, and its index in the run.
fn parse_run(
    bytes: &[u8],
    payloads: &[Range<usize>],
    capacity: usize,
) -> (Vec<JournalRecord>, Option<(usize, serde_json::Error)>) {
    let mut records = Vec::with_capacity(capacity);
    for (index, payload) in payloads.iter().enumerate() {
        match super::parse::parse_record(&bytes[payload.clone()]) {
            Ok(record) => records.push(record),
            Err(e) => return (records, Some((index, e))),
        }
    }
    (records, None)
}

/// Whether a (valid) header carries [`FLAG_SNAPSHOT`].
fn is_snapshot(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_BYTES
        && u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) & FLAG_SNAPSHOT != 0
}

/// Checks the header. `Some` is the empty journal of a file cut inside its
/// header; `None` means records follow.
fn header(bytes: &[u8]) -> Result<Option<Decoded>, JournalError> {
    if bytes.len() < HEADER_BYTES {
        // A file cut inside its header holds no record: an empty journal.
        if MAGIC.starts_with(&bytes[..bytes.len().min(MAGIC.len())]) {
            return Ok(Some(Decoded {
                snapshot: false,
                records: Vec::new(),
                valid_bytes: 0,
                tail: (!bytes.is_empty()).then(|| TailDamage {
                    offset: 0,
                    bytes: bytes.len() as u64,
                    reason: "the file ends inside its header".into(),
                }),
            }));
        }
        return Err(JournalError::Header(
            "the file does not start with the journal magic".into(),
        ));
    }
    if &bytes[..8] != MAGIC {
        return Err(JournalError::Header(
            "the file does not start with the journal magic".into(),
        ));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(JournalError::Header(format!(
            "format version {version}; this worker reads version {FORMAT_VERSION}"
        )));
    }
    Ok(None)
}

fn finish(records: Vec<JournalRecord>, valid: usize, tail: Option<TailDamage>) -> Decoded {
    Decoded {
        snapshot: false,
        records,
        valid_bytes: valid as u64,
        tail,
    }
}
