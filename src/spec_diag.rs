//! Spec diagnosis (`batch-worker spec show`): reads one job's spec from its
//! bunch the way the worker does and says what it is, or precisely what is
//! wrong — the command an operator runs when a job errored `spec_corrupt`.
//!
//! The verdict comes from the worker's own code: the reads, retries and
//! classification of [`SpecStore::read_spec_bytes`], then
//! [`spec_object`] and [`JobSpec::from_object`], as [`SpecStore::load`]
//! runs them. So [`SpecProblem::kind`] and the `Display` of a problem are
//! the kind and message the worker journals for that bunch
//! ([`SpecProblem::load_error`]). Around the verdict, the diagnosis adds
//! what the worker does not need: both objects' sizes (`head`), the jobs
//! the index covers, an index whose length is not a multiple of 8, where
//! in `specs` an invalid byte is; and the spec's unknown fields, the
//! warnings the worker records (`warn   unknown field ...; did you mean
//! ...?`).

use std::fmt::Write as _;
use std::ops::Range;

use batch_worker_model::{ErrorKind, ProcessKind, UnknownFields};
use object_store::ObjectStoreExt;
use serde_json::{Map, Value};

use crate::bunch::OFFSET_BYTES;
use crate::job_spec::{spec_object, JobSpec, SpecTextError};
use crate::spec_store::{SpecLoadError, SpecReadError, SpecStore};

/// Which job's spec to look at: the create call's `batch_id`, `token`,
/// `start_job_id` and `job_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecQuery {
    /// The batch.
    pub batch_id: i64,
    /// The bunch's token (1–64 ASCII letters and digits).
    pub token: String,
    /// The bunch's first job (`start_job_id`).
    pub start_job_id: i64,
    /// The job.
    pub job_id: i64,
}

/// What a `head` of one of the bunch's objects found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectSize {
    /// The object's size, in bytes.
    Bytes(u64),
    /// The object does not exist.
    Missing,
    /// The store failed (its error, credentials redacted by object_store).
    Error(String),
}

/// Why the job's spec is unusable: the worker's verdict, typed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecProblem {
    /// Reading the spec's bytes failed: a missing object, an index too
    /// short for the job, reversed offsets, offsets beyond `specs`, over
    /// the size cap, store errors.
    #[error(transparent)]
    Read(#[from] SpecReadError),
    /// The bytes are empty, not UTF-8, not JSON or not an object.
    #[error(transparent)]
    Text(#[from] SpecTextError),
    /// The object is not a valid spec; the message names the field and
    /// says what was expected (e.g. `process.command: expected a non-empty
    /// list of strings ...`).
    #[error("{message}")]
    Invalid {
        /// The field's path (`job_id`, `process.command`, `env[0].name`,
        /// `input_files[1].to`, ...), taken from the message's start.
        field: String,
        /// The worker's message.
        message: String,
    },
}

impl SpecProblem {
    /// The kind the worker records: `spec_missing`, `spec_corrupt`,
    /// `spec_timeout` or `spec_unavailable`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SpecProblem::Read(e) => e.kind(),
            SpecProblem::Text(_) | SpecProblem::Invalid { .. } => ErrorKind::SpecCorrupt,
        }
    }

    /// The `Errored{kind, message}` the worker records for this problem.
    pub fn load_error(&self) -> SpecLoadError {
        SpecLoadError {
            kind: self.kind(),
            message: self.to_string(),
        }
    }
}

/// What `spec show` found about one job's spec.
#[derive(Debug, Clone)]
pub struct Diagnosis {
    /// The job asked about.
    pub query: SpecQuery,
    /// `specs.idx`'s key, relative to the store's root.
    pub index_key: String,
    /// `specs`'s key, relative to the store's root.
    pub specs_key: String,
    /// `specs.idx`'s size.
    pub index_size: ObjectSize,
    /// `specs`'s size.
    pub specs_size: ObjectSize,
    /// The bytes of `specs.idx` read (the job's 16-byte entry) and of
    /// `specs` (the job's offsets, `start..end`), when both reads were made.
    pub read: Option<(Range<u64>, Range<u64>)>,
    /// Observations that do not change the verdict (an index length not a
    /// multiple of 8, a process type the worker does not run, ...).
    pub notes: Vec<String>,
    /// The spec's fields that neither the worker nor Hail knows: the
    /// warnings the worker records with the attempt (the job still runs).
    pub unknown_fields: UnknownFields,
    /// The spec's JSON object (validated), or why it is unusable.
    pub verdict: Result<Map<String, Value>, SpecProblem>,
}

impl Diagnosis {
    /// Whether the worker would load this spec (exit code 0 of `spec show`).
    pub fn is_good(&self) -> bool {
        self.verdict.is_ok()
    }

    /// The report `spec show` prints: the objects and their sizes, the
    /// bytes read, notes, then the verdict (`ok` and the spec as pretty
    /// JSON, URLs' passwords and queries masked; or `{kind}: {message}`
    /// and where, in detail).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let q = &self.query;
        let _ = writeln!(
            out,
            "job    {} of batch {}, bunch {} (jobs from {})",
            q.job_id, q.batch_id, q.token, q.start_job_id
        );
        let index = match &self.index_size {
            ObjectSize::Bytes(size) => {
                let offsets = size / OFFSET_BYTES;
                let jobs = match offsets.checked_sub(1) {
                    Some(0) | None => "no job".to_owned(),
                    Some(n) => format!(
                        "jobs {}..={}",
                        q.start_job_id,
                        q.start_job_id.saturating_add(n as i64 - 1)
                    ),
                };
                format!("{size} bytes, {offsets} offsets ({jobs})")
            }
            other => shown_size(other),
        };
        let _ = writeln!(out, "index  {}: {index}", self.index_key);
        let _ = writeln!(
            out,
            "specs  {}: {}",
            self.specs_key,
            shown_size(&self.specs_size)
        );
        if let Some((entry, range)) = &self.read {
            let _ = writeln!(
                out,
                "read   specs.idx bytes {}..{}: offsets {}..{}",
                entry.start, entry.end, range.start, range.end
            );
            let _ = writeln!(
                out,
                "read   specs bytes {}..{} ({} bytes)",
                range.start,
                range.end,
                range.end - range.start
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "note   {note}");
        }
        for field in self.unknown_fields.fields() {
            let _ = writeln!(out, "warn   {}", field.message());
        }
        if self.unknown_fields.omitted() > 0 {
            let _ = writeln!(
                out,
                "warn   and {} more unknown fields ignored",
                self.unknown_fields.omitted()
            );
        }
        match &self.verdict {
            Ok(object) => {
                let _ = writeln!(out, "ok: the worker loads this spec");
                let shown = Value::Object(masked(object.clone()));
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&shown).unwrap_or_default()
                );
            }
            Err(problem) => {
                let _ = writeln!(out, "{}: {problem}", problem.kind());
                if let Some(detail) = self.detail(problem) {
                    let _ = writeln!(out, "       {detail}");
                }
            }
        }
        out
    }

    /// One more line locating a problem, where there is more to say than
    /// the worker's message.
    fn detail(&self, problem: &SpecProblem) -> Option<String> {
        match problem {
            SpecProblem::Text(SpecTextError::NotUtf8 { valid_up_to, .. }) => {
                let start = self.read.as_ref().map(|(_, range)| range.start)?;
                Some(format!(
                    "first invalid byte: offset {valid_up_to} in the spec, byte {} of specs",
                    start + *valid_up_to as u64
                ))
            }
            SpecProblem::Text(SpecTextError::NotJson { line, column, .. }) => {
                Some(format!("at line {line}, column {column} of the spec"))
            }
            SpecProblem::Invalid { field, .. } => Some(format!("field: {field}")),
            SpecProblem::Read(SpecReadError::NotFound { key }) => Some(format!("not found: {key}")),
            _ => None,
        }
    }
}

fn shown_size(size: &ObjectSize) -> String {
    match size {
        ObjectSize::Bytes(size) => format!("{size} bytes"),
        ObjectSize::Missing => "missing (not found)".into(),
        ObjectSize::Error(e) => format!("unknown (the store failed: {e})"),
    }
}

/// The spec with the URLs of `input_files` and `output_files` shown without
/// passwords and queries (SAS tokens).
fn masked(mut object: Map<String, Value>) -> Map<String, Value> {
    for field in ["input_files", "output_files"] {
        if let Some(Value::Array(list)) = object.get_mut(field) {
            for entry in list.iter_mut().filter_map(Value::as_object_mut) {
                for value in entry.values_mut() {
                    if let Value::String(text) = value {
                        *text = match url::Url::parse(text) {
                            Ok(url) => crate::store::redact_url(&url),
                            Err(_) => crate::store::redact_text(text),
                        };
                    }
                }
            }
        }
    }
    object
}

/// The field path a validation message starts with (`process.command`,
/// `env[0].name`, `job_id`), or `spec` when it names none.
fn field_of(message: &str) -> String {
    let end = message
        .find(|c: char| !(c.is_ascii_alphanumeric() || "_.[]".contains(c)))
        .unwrap_or(message.len());
    let field = &message[..end];
    if field.is_empty() {
        "spec".into()
    } else {
        field.into()
    }
}

/// Diagnoses the spec of `query.job_id`: `head`s both objects, then reads
/// and checks the spec exactly as the worker's [`SpecStore::load`] does
/// (with `specs`' limits: size cap, retries, deadline).
pub async fn diagnose(specs: &SpecStore, query: &SpecQuery) -> Diagnosis {
    let keys = specs.bunch_keys(query.batch_id, &query.token);
    let store = specs.object_store();
    let size = |result: object_store::Result<object_store::ObjectMeta>| match result {
        Ok(meta) => ObjectSize::Bytes(meta.size),
        Err(object_store::Error::NotFound { .. }) => ObjectSize::Missing,
        Err(e) => ObjectSize::Error(e.to_string()),
    };
    let index_size = size(store.head(&keys.index).await);
    let specs_size = size(store.head(&keys.specs).await);
    let mut notes = Vec::new();
    if let ObjectSize::Bytes(bytes) = index_size {
        if bytes % OFFSET_BYTES != 0 {
            notes.push(format!(
                "specs.idx is {bytes} bytes, not a multiple of {OFFSET_BYTES}: {} whole offsets \
                 and {} stray bytes (a truncated or damaged index)",
                bytes / OFFSET_BYTES,
                bytes % OFFSET_BYTES
            ));
        }
    }
    let mut read = None;
    let mut unknown_fields = UnknownFields::default();
    let verdict = match specs
        .read_spec_bytes(
            query.batch_id,
            query.job_id,
            &query.token,
            query.start_job_id,
        )
        .await
    {
        Err(e) => Err(SpecProblem::Read(e)),
        Ok(bytes) => {
            read = Some((bytes.entry.clone(), bytes.range.clone()));
            check(&bytes.bytes, query.job_id, &mut notes, &mut unknown_fields)
        }
    };
    Diagnosis {
        query: query.clone(),
        index_key: specs.shown(&keys.index),
        specs_key: specs.shown(&keys.specs),
        index_size,
        specs_size,
        read,
        notes,
        unknown_fields,
        verdict,
    }
}

/// The checks of [`JobSpec::parse`], typed: the object, or the problem;
/// the spec's unknown fields into `unknown_fields`.
fn check(
    bytes: &[u8],
    job_id: i64,
    notes: &mut Vec<String>,
    unknown_fields: &mut UnknownFields,
) -> Result<Map<String, Value>, SpecProblem> {
    let object = spec_object(bytes)?;
    let spec = JobSpec::from_object(object.clone(), job_id, bytes.len() as u64).map_err(|e| {
        SpecProblem::Invalid {
            field: field_of(&e.0),
            message: e.0,
        }
    })?;
    *unknown_fields = spec.unknown_fields;
    if let ProcessKind::Other { name } = &spec.process {
        notes.push(format!(
            "process.type {name:?}: this worker runs only \"docker\" specs; the job errors as \
             unsupported"
        ));
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_is_the_message_s_leading_path() {
        assert_eq!(
            field_of("process.command: expected a list"),
            "process.command"
        );
        assert_eq!(field_of("job_id is 3 but the create call"), "job_id");
        assert_eq!(field_of("env[0].name: expected"), "env[0].name");
        assert_eq!(field_of(": odd"), "spec");
    }

    #[test]
    fn urls_in_file_lists_are_masked() {
        let object = serde_json::json!({
            "input_files": [{"from": "https://a.blob/c/x?sig=SECRET", "to": "/in"}],
            "env": [{"name": "A", "value": "1"}],
        });
        let Value::Object(map) = object else {
            unreachable!()
        };
        let shown = Value::Object(masked(map)).to_string();
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("\"/in\""));
    }
}
