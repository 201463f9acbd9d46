//! The journal's checkpoint: the segment and byte offset the writer has
//! written through, overwritten after every batch. Opening the journal
//! compares it with the segments it finds, so that a journal cut short (a
//! lost run of whole records, a segment deleted) is seen as damage rather
//! than taken for a clean end.
//!
//! ```text
//! checkpoint:  b"BWCHKPT1" | segment: u64 LE | offset: u64 LE | crc32c(previous 24 bytes): u32 LE
//! ```
//!
//! It is written after its batch is durable and is not synced itself: on
//! disk it may lag the journal (after a power loss), never lead it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"BWCHKPT1";
const BYTES: usize = 28;

/// Where the writer had written through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The segment number.
    pub segment: u64,
    /// Bytes of that segment written (header included).
    pub offset: u64,
}

impl Checkpoint {
    fn encode(self) -> [u8; BYTES] {
        let mut bytes = [0u8; BYTES];
        bytes[..8].copy_from_slice(MAGIC);
        bytes[8..16].copy_from_slice(&self.segment.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.offset.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..24]);
        bytes[24..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        if bytes.len() != BYTES || &bytes[..8] != MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(bytes[24..].try_into().ok()?);
        (crc32c::crc32c(&bytes[..24]) == crc).then(|| Checkpoint {
            segment: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
            offset: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
        })
    }
}

/// The checkpoint file of journal directory `dir`.
pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint")
}

/// Reads the checkpoint of journal directory `dir`: `Ok(None)` when there
/// is none (a new journal, or one written before checkpoints).
///
/// # Errors
/// It cannot be read, or is not a valid checkpoint (the message says which).
pub fn read_checkpoint(dir: &Path) -> std::io::Result<Option<Checkpoint>> {
    match std::fs::read(checkpoint_path(dir)) {
        // Created but not yet written: as good as none.
        Ok(bytes) if bytes.is_empty() => Ok(None),
        Ok(bytes) => Checkpoint::decode(&bytes).map(Some).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is damaged ({} bytes, expected {BYTES} with a valid checksum)",
                    checkpoint_path(dir).display(),
                    bytes.len()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The open checkpoint file, overwritten in place (one `pwrite` of 28
/// bytes: no new blocks, so it is written on a full disk too).
#[derive(Debug)]
pub(super) struct CheckpointFile(File);

impl CheckpointFile {
    /// Opens (or creates) the checkpoint of `dir`.
    pub(super) fn open(dir: &Path) -> std::io::Result<CheckpointFile> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(checkpoint_path(dir))?;
        Ok(CheckpointFile(file))
    }

    /// Overwrites the checkpoint with `now`.
    pub(super) fn write(&self, now: Checkpoint) -> std::io::Result<()> {
        self.0.write_all_at(&now.encode(), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_reads_back_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), None);
        let file = CheckpointFile::open(dir.path()).unwrap();
        let at = Checkpoint {
            segment: 3,
            offset: 4096,
        };
        file.write(at).unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), Some(at));
        let mut bytes = std::fs::read(checkpoint_path(dir.path())).unwrap();
        bytes[10] ^= 1;
        std::fs::write(checkpoint_path(dir.path()), &bytes).unwrap();
        let err = read_checkpoint(dir.path()).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
