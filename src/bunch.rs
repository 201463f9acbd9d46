//! The bunch format: how a batch's job specs are laid out in the spec store.
//!
//! A bunch covers consecutive job ids from `start_job_id` and is two objects
//! (source: DESIGN.md, "Spec storage"):
//!
//! - `{root}/{batch_id}/bunch/{token}/specs`: the UTF-8 JSON specs, concatenated;
//! - `{root}/{batch_id}/bunch/{token}/specs.idx`: unsigned 64-bit
//!   little-endian byte offsets into `specs`, one per job plus a final end
//!   offset.
//!
//! Job `j`'s spec is `specs[idx[j - start_job_id] .. idx[j - start_job_id + 1])`.

use std::ops::Range;

use object_store::path::Path;

/// Width of one `specs.idx` entry, in bytes.
pub const OFFSET_BYTES: u64 = 8;

/// The two object keys of one bunch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BunchKeys {
    /// `{root}/{batch_id}/bunch/{token}/specs`.
    pub specs: Path,
    /// `{root}/{batch_id}/bunch/{token}/specs.idx`.
    pub index: Path,
}

impl BunchKeys {
    /// The keys of bunch `token` of batch `batch_id` under `root`.
    ///
    /// `token` must already be validated alphanumeric (the create endpoint
    /// does), so the keys cannot leave `root`.
    pub fn new(root: &Path, batch_id: i64, token: &str) -> BunchKeys {
        let dir = root
            .clone()
            .join(batch_id.to_string())
            .join("bunch")
            .join(token);
        BunchKeys {
            specs: dir.clone().join("specs"),
            index: dir.join("specs.idx"),
        }
    }
}

/// The byte range of `specs.idx` holding job `job_id`'s start and end
/// offsets (16 bytes), or `None` when the arithmetic overflows (such a job
/// cannot be in any bunch).
pub fn index_range(job_id: i64, start_job_id: i64) -> Option<Range<u64>> {
    let slot = u64::try_from(job_id.checked_sub(start_job_id)?).ok()?;
    let start = slot.checked_mul(OFFSET_BYTES)?;
    Some(start..start.checked_add(2 * OFFSET_BYTES)?)
}

/// Decodes the 16 bytes of an index entry into a `[start, end)` range of
/// `specs`. Returns `None` if `entry` is not exactly 16 bytes.
pub fn decode_entry(entry: &[u8]) -> Option<(u64, u64)> {
    let entry: &[u8; 16] = entry.try_into().ok()?;
    let start = u64::from_le_bytes(entry[..8].try_into().ok()?);
    let end = u64::from_le_bytes(entry[8..].try_into().ok()?);
    Some((start, end))
}

/// Encodes specs into a bunch: the concatenated `specs` bytes and the
/// `specs.idx` bytes (`specs.len() + 1` offsets). Used by the demo and tests
/// to write bunches the way the driver does.
pub fn encode<S: AsRef<[u8]>>(specs: &[S]) -> (Vec<u8>, Vec<u8>) {
    let mut data = Vec::new();
    let mut index = Vec::with_capacity((specs.len() + 1) * OFFSET_BYTES as usize);
    for spec in specs {
        index.extend_from_slice(&(data.len() as u64).to_le_bytes());
        data.extend_from_slice(spec.as_ref());
    }
    index.extend_from_slice(&(data.len() as u64).to_le_bytes());
    (data, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout() {
        let keys = BunchKeys::new(&Path::from("root/specs"), 7, "q4w8");
        assert_eq!(keys.specs.as_ref(), "root/specs/7/bunch/q4w8/specs");
        assert_eq!(keys.index.as_ref(), "root/specs/7/bunch/q4w8/specs.idx");
        let keys = BunchKeys::new(&Path::default(), 1, "t");
        assert_eq!(keys.index.as_ref(), "1/bunch/t/specs.idx");
    }

    #[test]
    fn encode_then_decode_every_entry() {
        let specs = ["{\"a\":1}", "", "{\"é\":2}"];
        let (data, index) = encode(&specs);
        assert_eq!(index.len(), 32);
        for (i, spec) in specs.iter().enumerate() {
            let range = index_range(10 + i as i64, 10).unwrap();
            let (start, end) =
                decode_entry(&index[range.start as usize..range.end as usize]).unwrap();
            assert_eq!(&data[start as usize..end as usize], spec.as_bytes());
        }
    }

    #[test]
    fn index_range_rejects_overflow_and_negative_slots() {
        assert_eq!(index_range(12, 11), Some(8..24));
        assert_eq!(index_range(1, 2), None);
        assert_eq!(index_range(i64::MAX, 0), None);
        assert_eq!(decode_entry(&[0; 15]), None);
    }
}
