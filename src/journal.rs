//! The event journal's on-disk format: a versioned header, then records,
//! each framed with its length and a CRC32C checksum.
//!
//! This module holds the format (encode, and a decode that tells a torn
//! tail from a corrupt middle) and the group-commit writer.
//!
//! ```text
//! header:  b"BWJOURNL" | format version: u32 LE | flags: u32 LE (1: snapshot)    16 bytes
//! record:  length n: u32 LE | crc32c(length bytes): u32 LE | crc32c(payload): u32 LE
//!          | payload                                                      12 + n bytes
//! payload: JSON of a JournalRecord
//! ```
//!
//! The length has a checksum of its own so that a damaged length is seen as
//! damage, not as a record running past the end of the file (which would
//! look like a torn write and silently drop every later record).

mod checkpoint;
mod codec;
mod parse;
mod recovery;
#[cfg(test)]
mod tests;
mod writer;

pub use checkpoint::{checkpoint_path, read_checkpoint, Checkpoint};
pub use codec::{
    decode, decode_prefix, decode_resync, encode_header, encode_record, encode_snapshot_header,
    Decoded, JournalError, Skipped, TailDamage, FLAG_SNAPSHOT, FORMAT_VERSION, HEADER_BYTES, MAGIC,
    MAX_RECORD_BYTES,
};
pub use recovery::{
    check_checkpoint, journal_dir, open_journal, JournalConfig, Recovered, RecoveryError,
};

pub use writer::{
    segment_path, segments, AfterWrite, Durability, JournalWriter, SegmentOptions, WriteFault,
    WriteFaults, WriterMode, DEFAULT_PREALLOCATE_BYTES, RETRY_FIRST, RETRY_MOST,
};

use std::borrow::Cow;

use batch_worker_model::{upcast, Event, JobKey, EVENT_VERSION};
use serde::{Deserialize, Serialize};

/// One journal record: one event of one attempt.
///
/// Secrets never appear here: events carry none, and keys are ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// Position in the journal, from 1, without gaps.
    pub seq: u64,
    /// When the event was recorded, ms since the Unix epoch.
    pub time_ms: i64,
    /// The serde shape version of `event` ([`batch_worker_model::EVENT_VERSION`]).
    pub event_version: u32,
    /// The attempt.
    pub key: JobKey,
    /// The event.
    pub event: Event,
    /// Only in `created` records written before [`Event::Created`] carried
    /// the user, job group and secret names itself: those facts, which
    /// [`JournalRecord::events`] moves into the event. Never written now.
    /// Boxed: most records have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<Box<AttemptInfo>>,
}

impl JournalRecord {
    /// A record of one event as the worker writes it today.
    pub fn new(seq: u64, time_ms: i64, key: JobKey, event: Event) -> JournalRecord {
        JournalRecord {
            seq,
            time_ms,
            event_version: EVENT_VERSION,
            key,
            event,
            attempt: None,
        }
    }

    /// The record's event in today's events: the event itself when it was
    /// written at today's [`EVENT_VERSION`] (borrowed, no copy), else what
    /// [`upcast`] makes of it (none, one or more events). A `created`
    /// record with the older [`AttemptInfo`] beside its event gets those
    /// facts moved into the event.
    pub fn events(&self) -> Cow<'_, [Event]> {
        let event = match (&self.event, &self.attempt) {
            (
                Event::Created {
                    format_version,
                    user,
                    ..
                },
                Some(info),
            ) if user.is_empty() => Cow::Owned(Event::Created {
                format_version: *format_version,
                user: info.user.clone(),
                job_group_id: info.job_group_id,
                secret_names: info.secret_names.clone(),
            }),
            _ => Cow::Borrowed(&self.event),
        };
        match (self.event_version >= EVENT_VERSION, event) {
            (true, Cow::Borrowed(event)) => Cow::Borrowed(std::slice::from_ref(event)),
            (true, Cow::Owned(event)) => Cow::Owned(vec![event]),
            (false, event) => Cow::Owned(upcast(self.event_version, event.into_owned())),
        }
    }
}

/// Up to which sequence number gaps are expected, given the records of
/// each segment read (in order, from the last snapshot on) and whether it
/// is a snapshot: a snapshot keeps only the attempts compaction kept, with
/// their original numbers, so its records skip, and so may the first
/// record after it. Everywhere else each record follows the last by one.
pub fn gaps_allowed_through<'a>(
    segments: impl IntoIterator<Item = (bool, &'a [JournalRecord])>,
) -> u64 {
    let mut through = 0;
    let mut after_snapshot = false;
    for (snapshot, records) in segments {
        if snapshot {
            through = records.last().map_or(through, |r| r.seq);
            after_snapshot = true;
        } else if after_snapshot {
            if let Some(first) = records.first() {
                through = through.max(first.seq);
                after_snapshot = false;
            }
        }
    }
    through
}

/// Whether `seq` may follow `last` (none: the first record): by exactly
/// one, or by more while at most `gaps_allowed_through` (see
/// [`gaps_allowed_through`]). A number that repeats or goes back never may.
pub fn sequence_follows(last: Option<u64>, seq: u64, gaps_allowed_through: u64) -> bool {
    let expected = last.map_or(1, |s| s + 1);
    seq == expected || (seq > expected && seq <= gaps_allowed_through)
}

/// Why `record` cannot be one this worker wrote, if so: an event version
/// newer than this worker's [`EVENT_VERSION`] (a later worker's journal),
/// or an attempt key no create could have made (a negative id, an
/// `attempt_id` that is not 1 to 64 ASCII letters and digits: an edited
/// journal, whose ids would become paths under the data directory).
/// Opening refuses such a journal and `replay` reports it.
pub fn foreign(record: &JournalRecord) -> Option<String> {
    if record.event_version > EVENT_VERSION {
        return Some(format!(
            "seq {}: written by a newer worker (event version {}; this worker reads up to {EVENT_VERSION})",
            record.seq, record.event_version
        ));
    }
    let key = &record.key;
    let id = &key.attempt_id;
    let valid_attempt = !id.is_empty()
        && id.len() <= crate::wire::MAX_ID_CHARS
        && id.chars().all(|c| c.is_ascii_alphanumeric());
    if key.batch_id < 0 || key.job_id < 0 || !valid_attempt {
        return Some(format!(
            "seq {}: attempt {}:{}/{:?} is not one a create could make (non-negative ids; an attempt_id of 1 to {} ASCII letters and digits)",
            record.seq,
            key.batch_id,
            key.job_id,
            crate::wire::truncate(id, 80),
            crate::wire::MAX_ID_CHARS
        ));
    }
    None
}

/// The non-secret facts of a create request, as `created` records carried
/// them beside the event before [`Event::Created`] held them (read only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptInfo {
    /// The user.
    pub user: String,
    /// The job group.
    pub job_group_id: i64,
    /// Names of the secrets it carried (never values).
    pub secret_names: Vec<String>,
}
