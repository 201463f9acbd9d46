//! Fuzz targets: the worker's parsers of untrusted bytes, each with the
//! properties that must hold for any input.
//!
//! `cargo fuzz` (`fuzz/fuzz_targets/`) calls these with libFuzzer's inputs;
//! `tests/it/fuzz_corpus.rs` replays the committed corpus (`fuzz/corpus/`)
//! through them as ordinary tests. Every function returns normally for any
//! input; a panic (an `assert!` here, or one inside the code under test) is
//! the finding.

use std::collections::BTreeSet;
use std::sync::Arc;

use batch_worker_model::{ErrorKind, Event, JobKey};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::Value;

use crate::bunch;
use crate::job_spec::JobSpec;
use crate::journal::{self, Decoded, JournalRecord};
use crate::spec_store::{SpecLoadConfig, SpecStore};
use crate::wire::{AttemptFields, CreateJob, SpecSource};

/// The create body parser, [`CreateJob::parse`], and what the create
/// handler does with its result.
///
/// Checks, for any bytes:
/// - an `Err`'s `Display` is not empty;
/// - no secret value (a string inside `gsa_key` or a `job_spec.secrets[]`
///   `data`) appears in the error, in `format!("{:?}", job)`, in
///   [`CreateJob::redacted_secrets`] or in the journal record the handler
///   writes, unless the same text is also a non-secret string of the body;
/// - [`CreateJob::redacted_secrets`] names one entry per `gsa_key` file and
///   per `secrets[]` entry;
/// - the `created` journal record round-trips through the codec;
/// - a format-1 (inline) spec validates without panicking, and keeps its
///   job id.
///
/// Exposes panics in the parser (serde, field paths, id checks, message
/// truncation), in spec validation of inline specs, and secret leaks.
pub fn create_body(data: &[u8]) {
    let secrets = SecretScan::of(data);
    let job = match CreateJob::parse(data) {
        Ok(job) => job,
        Err(e) => {
            let shown = e.to_string();
            assert!(!shown.is_empty(), "an empty error for {data:?}");
            assert!(!e.field.is_empty(), "an error without a field: {shown}");
            secrets.assert_not_in(&shown, "the error");
            return;
        }
    };
    secrets.assert_not_in(&format!("{job:?}"), "Debug of the parsed job");

    let names = job.redacted_secrets();
    let gsa_files = job.gsa_key.as_ref().map_or(0, |k| k.expose().len());
    assert_eq!(names.len(), gsa_files + job.attempt.secrets.len());
    secrets.assert_not_in(&format!("{names:?}"), "redacted_secrets()");

    // The handler journals a `created` record with these facts.
    let record = JournalRecord::new(
        1,
        0,
        JobKey {
            batch_id: job.batch_id,
            job_id: job.job_id,
            attempt_id: job.attempt.attempt_id.clone(),
        },
        Event::Created {
            format_version: job.format_version,
            user: job.user.clone(),
            job_group_id: job.attempt.job_group_id,
            secret_names: names,
        },
    );
    let payload = serde_json::to_string(&record).expect("a record serialises");
    secrets.assert_not_in(&payload, "the journal record");
    let mut bytes = journal::encode_header().to_vec();
    journal::encode_record(&record, &mut bytes).expect("a created record encodes");
    let decoded = journal::decode(&bytes).expect("a created record decodes");
    assert_eq!(decoded.records, [record]);

    // The spec loader's path for format 1.
    if let SpecSource::Inline(map) = &job.spec_source {
        if let Ok(spec) = JobSpec::from_object(map.clone(), job.job_id, 0) {
            assert_eq!(spec.job_id, job.job_id);
            let env = spec.env.len();
            let spec = spec.with_attempt(&job.attempt);
            assert_eq!(spec.env.len(), env + job.attempt.env.len());
        }
    }
}

/// The secret and non-secret strings of a create body, as far as the bytes
/// are JSON: strings inside the top-level `gsa_key` and inside each
/// `job_spec.secrets[].data` are secret (their map keys are neither);
/// every other string, key or value, is not.
#[derive(Default)]
struct SecretScan {
    secret: BTreeSet<String>,
    public: Vec<String>,
}

impl SecretScan {
    fn of(data: &[u8]) -> SecretScan {
        let mut scan = SecretScan::default();
        let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(data) else {
            return scan;
        };
        if let Some(key) = body.remove("gsa_key") {
            scan.secret_values(&key);
        }
        if let Some(Value::Object(spec)) = body.get_mut("job_spec") {
            if let Some(Value::Array(mounts)) = spec.get_mut("secrets") {
                for mount in mounts {
                    if let Some(data) = mount.as_object_mut().and_then(|m| m.remove("data")) {
                        scan.secret_values(&data);
                    }
                }
            }
        }
        scan.public_strings(&Value::Object(body));
        scan
    }

    fn secret_values(&mut self, value: &Value) {
        match value {
            Value::String(s) => {
                self.secret.insert(s.clone());
            }
            Value::Array(items) => items.iter().for_each(|v| self.secret_values(v)),
            Value::Object(map) => map.values().for_each(|v| self.secret_values(v)),
            _ => {}
        }
    }

    fn public_strings(&mut self, value: &Value) {
        match value {
            Value::String(s) => self.public.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|v| self.public_strings(v)),
            Value::Object(map) => {
                for (k, v) in map {
                    self.public.push(k.clone());
                    self.public_strings(v);
                }
            }
            _ => {}
        }
    }

    /// Panics if `shown` quotes a secret value. Only ASCII alphanumeric
    /// secrets are checked: for those, `"value"` in Debug or JSON text can
    /// only come from a string that contains the value, so a hit that no
    /// non-secret string explains is a leak.
    fn assert_not_in(&self, shown: &str, what: &str) {
        for secret in &self.secret {
            if secret.is_empty()
                || !secret.bytes().all(|b| b.is_ascii_alphanumeric())
                || self.public.iter().any(|p| p.contains(secret.as_str()))
            {
                continue;
            }
            assert!(
                !shown.contains(&format!("\"{secret}\"")),
                "{what} shows the secret value {secret:?}: {shown}"
            );
        }
    }
}

/// The spec bunch reader: [`SpecStore::load`] over an in-memory store
/// holding a `specs.idx` and a `specs` made from the input, for one job.
///
/// Input layout: byte 0 chooses the job (bits 0-2: its slot in the bunch;
/// bits 3-4: the bunch's `start_job_id`; bit 7: a job before the bunch),
/// and which objects exist (bit 5: no `specs.idx`; bit 6: no `specs`);
/// bytes 1-2 (u16 LE) are the length of `specs.idx`, whose bytes follow;
/// the rest is `specs`.
///
/// Checks that the load never panics, that an `Ok` spec is the asked-for
/// job's and the one an independent reading of the same bytes gives, and
/// that an error is `spec_missing` or `spec_corrupt` (never a transient
/// kind: the store is in memory), with a message, and the same kind the
/// independent reading predicts. Exposes panics and misclassified failures
/// in index arithmetic, range reads, and spec parsing and validation.
pub fn bunch(data: &[u8]) {
    let Some(case) = BunchCase::parse(data) else {
        return;
    };
    BUNCH.with(|fixture| {
        let keys = fixture.specs.bunch_keys(BATCH_ID, TOKEN);
        let job = case.create_job();
        let loaded = fixture.runtime.block_on(async {
            put_or_delete(&fixture.store, &keys.index, case.index).await;
            put_or_delete(&fixture.store, &keys.specs, case.specs).await;
            fixture.specs.load(&job).await
        });
        let expected = case.expect();
        match (&loaded, &expected) {
            (Ok(spec), Ok(bytes)) => {
                assert_eq!(spec.job_id, case.job_id, "the spec of another job");
                let parsed = JobSpec::parse(bytes, case.job_id)
                    .map(|s| s.with_attempt(&job.attempt))
                    .expect("the oracle's bytes parse");
                assert_eq!(spec, &parsed);
            }
            (Err(e), _) => {
                assert!(
                    matches!(e.kind, ErrorKind::SpecMissing | ErrorKind::SpecCorrupt),
                    "unexpected kind from an in-memory store: {e}"
                );
                assert!(!e.message.is_empty(), "an error without a message");
                let predicted = match &expected {
                    Ok(bytes) => JobSpec::parse(bytes, case.job_id)
                        .err()
                        .map(|_| ErrorKind::SpecCorrupt),
                    Err(kind) => Some(*kind),
                };
                assert_eq!(Some(e.kind), predicted, "{e}");
            }
            (Ok(_), Err(kind)) => panic!("loaded a spec where {kind} was expected"),
        }
    });
}

const BATCH_ID: i64 = 7;
const TOKEN: &str = "q4w8e2r6t1y9u3i5";
/// The spec size cap of the bunch target, in bytes (small, so that the
/// fuzzer can reach it).
const SPEC_CAP: u64 = 2048;
/// The bunch starts byte 0 chooses from.
const STARTS: [i64; 4] = [11, 0, 1 << 40, i64::MAX - 4];

/// The store, loader and runtime of the bunch target, made once per thread.
struct BunchFixture {
    store: Arc<InMemory>,
    specs: SpecStore,
    runtime: tokio::runtime::Runtime,
}

thread_local! {
    static BUNCH: BunchFixture = {
        let store = Arc::new(InMemory::new());
        // One attempt per read: an in-memory store has no transient errors.
        let config = SpecLoadConfig {
            max_spec_bytes: SPEC_CAP,
            max_attempts: 1,
            ..SpecLoadConfig::default()
        };
        let dyn_store: Arc<dyn ObjectStore> = store.clone();
        BunchFixture {
            specs: SpecStore::new(dyn_store, Path::from("specs"), config)
                .expect("the spec-io runtime starts"),
            store,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a current-thread runtime starts"),
        }
    };
}

async fn put_or_delete(store: &InMemory, key: &Path, bytes: Option<&[u8]>) {
    let done = match bytes {
        Some(b) => store.put(key, PutPayload::from(b.to_vec())).await.map(drop),
        None => store.delete(key).await.or_else(|e| match e {
            object_store::Error::NotFound { .. } => Ok(()),
            e => Err(e),
        }),
    };
    done.expect("the in-memory store accepts puts and deletes");
}

/// One decoded bunch input.
struct BunchCase<'a> {
    job_id: i64,
    start_job_id: i64,
    index: Option<&'a [u8]>,
    specs: Option<&'a [u8]>,
}

impl<'a> BunchCase<'a> {
    fn parse(data: &'a [u8]) -> Option<BunchCase<'a>> {
        let (&[choice, len_lo, len_hi], rest) = data.split_first_chunk::<3>()?;
        let index_len = usize::from(u16::from_le_bytes([len_lo, len_hi])).min(rest.len());
        let (index, specs) = rest.split_at(index_len);
        let slot = i64::from(choice & 0b111);
        let start_job_id = STARTS[usize::from((choice >> 3) & 0b11)];
        let job_id = if choice & 0x80 == 0 {
            start_job_id.checked_add(slot)
        } else {
            start_job_id.checked_sub(slot + 1)
        }
        .unwrap_or(start_job_id);
        Some(BunchCase {
            job_id,
            start_job_id,
            index: (choice & 0x20 == 0).then_some(index),
            specs: (choice & 0x40 == 0).then_some(specs),
        })
    }

    fn create_job(&self) -> CreateJob {
        CreateJob {
            batch_id: BATCH_ID,
            job_id: self.job_id,
            format_version: 7,
            user: "fuzz".into(),
            spec_source: SpecSource::Bunch {
                token: TOKEN.into(),
                start_job_id: self.start_job_id,
            },
            attempt: AttemptFields {
                attempt_id: "Fuzz1".into(),
                job_group_id: 0,
                secrets: Vec::new(),
                env: Vec::new(),
                service_account: None,
            },
            queue_time: None,
            gsa_key: None,
        }
    }

    /// The independent reading: the spec's bytes per the bunch layout, or
    /// the kind of failure, written from `crate::bunch`'s docs alone.
    fn expect(&self) -> Result<&'a [u8], ErrorKind> {
        let slot = self
            .job_id
            .checked_sub(self.start_job_id)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or(ErrorKind::SpecCorrupt)?;
        let index = self.index.ok_or(ErrorKind::SpecMissing)?;
        let at = slot.checked_mul(8).ok_or(ErrorKind::SpecCorrupt)?;
        let entry = index
            .get(at..at.saturating_add(16))
            .ok_or(ErrorKind::SpecCorrupt)?;
        let (start, end) = bunch::decode_entry(entry).ok_or(ErrorKind::SpecCorrupt)?;
        if end < start || end - start > SPEC_CAP {
            return Err(ErrorKind::SpecCorrupt);
        }
        if end == start {
            return Ok(&[]);
        }
        let specs = self.specs.ok_or(ErrorKind::SpecMissing)?;
        let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else {
            return Err(ErrorKind::SpecCorrupt);
        };
        specs.get(start..end).ok_or(ErrorKind::SpecCorrupt)
    }
}

/// The journal codec: [`journal::decode`] and [`journal::decode_prefix`].
///
/// Checks, for any bytes: neither panics; they agree (the same records,
/// the same error); the valid prefix lies inside the input and a torn tail
/// covers exactly the rest; the valid prefix alone decodes cleanly to the
/// same records; and the records re-encode ([`journal::encode_record`]) to
/// bytes that decode to the same records. Exposes panics in framing and
/// checksum arithmetic, records that do not survive a rewrite (what
/// compaction and `--repair` do), and torn-tail / corrupt-middle
/// misclassification.
pub fn journal(data: &[u8]) {
    let whole = journal::decode(data);
    let prefix = journal::decode_prefix(data);
    let (decoded, error) = match (whole, prefix) {
        (Err(e @ journal::JournalError::Header(_)), Err(p)) => {
            assert_eq!(e, p);
            assert!(!e.to_string().is_empty());
            return;
        }
        (Ok(d), Ok((p, None))) => {
            assert_eq!(d, p);
            (d, None)
        }
        (Err(e), Ok((p, Some(pe)))) => {
            assert_eq!(e, pe);
            assert!(p.tail.is_none(), "a tail beside a corrupt middle");
            (p, Some(e))
        }
        (whole, prefix) => panic!("decode {whole:?} and decode_prefix {prefix:?} disagree"),
    };
    let valid = usize::try_from(decoded.valid_bytes).expect("valid_bytes fits");
    assert!(valid <= data.len());
    match (&decoded.tail, &error) {
        (Some(tail), _) => {
            assert_eq!(tail.offset, decoded.valid_bytes);
            assert_eq!(tail.offset + tail.bytes, data.len() as u64);
        }
        (None, Some(journal::JournalError::CorruptMiddle { offset, .. })) => {
            assert_eq!(*offset, decoded.valid_bytes);
            assert!(valid < data.len());
        }
        (None, _) => assert_eq!(valid, data.len()),
    }

    let clean = journal::decode(&data[..valid]).expect("the valid prefix decodes");
    assert!(clean.tail.is_none(), "the valid prefix has a tail");
    assert_eq!(clean.records, decoded.records);
    assert_eq!(clean.snapshot, decoded.snapshot);

    let mut again = if decoded.snapshot {
        journal::encode_snapshot_header()
    } else {
        journal::encode_header()
    }
    .to_vec();
    for record in &decoded.records {
        journal::encode_record(record, &mut again).expect("a decoded record re-encodes");
    }
    let rewritten: Decoded = journal::decode(&again).expect("re-encoded records decode");
    assert_eq!(rewritten.records, decoded.records);
    assert!(rewritten.tail.is_none());
    assert_eq!(rewritten.snapshot, decoded.snapshot);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/samples/bunch/7/bunch/q4w8e2r6t1y9u3i5/"
    );

    #[test]
    fn a_quoted_secret_is_a_leak_unless_a_public_string_explains_it() {
        let body = br#"{"user":"alice","gsa_key":{"k.json":"Sekret1","b":"alice"}}"#;
        let scan = SecretScan::of(body);
        let leak = std::panic::catch_unwind(|| scan.assert_not_in("x: \"Sekret1\"", "test"));
        assert!(leak.is_err());
        scan.assert_not_in("user: \"alice\", k.json, Sekret1 unquoted", "test");
    }

    #[test]
    fn the_bunch_oracle_reads_the_sample_bunch() {
        let index = std::fs::read(format!("{SAMPLE}specs.idx")).unwrap();
        let specs = std::fs::read(format!("{SAMPLE}specs")).unwrap();
        for (choice, expected) in [(1u8, Ok(342..653)), (3, Err(ErrorKind::SpecCorrupt))] {
            let mut input = vec![choice];
            input.extend_from_slice(&(index.len() as u16).to_le_bytes());
            input.extend_from_slice(&index);
            input.extend_from_slice(&specs);
            let case = BunchCase::parse(&input).unwrap();
            assert_eq!(case.job_id, 11 + i64::from(choice));
            assert_eq!(case.expect(), expected.map(|r| &specs[r]));
            bunch(&input);
        }
    }
}
