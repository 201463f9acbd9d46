//! Submitting jobs by hand, as Hail's driver does: job specs from a JSON
//! Lines file become one bunch in the spec store (`specs` and `specs.idx`,
//! see [`crate::bunch`]), and each job a create call naming it. Used by
//! `batch-worker submit` and `batch-worker bunch write`.
//!
//! A spec line is written as given except its `job_id`, which is set to
//! the job id the line gets (`start_job_id` + its index), as Hail's front
//! end does; a line whose own `job_id` differs is reported, not refused.

use std::path::{Path, PathBuf};

use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Map, Value};

use crate::bunch::BunchKeys;
use crate::spec_store::SpecStore;

/// Characters in a bunch token this module chooses (Hail's are 22 to 32).
pub const TOKEN_CHARS: usize = 22;

/// Characters in an attempt id this module chooses (Hail's are 6).
pub const ATTEMPT_ID_CHARS: usize = 6;

/// Create bodies carry this `format_version` (Hail's current, 7: the spec
/// is in a bunch).
pub const FORMAT_VERSION: i64 = 7;

/// Most specs one file may hold.
pub const MAX_SPECS: usize = 100_000;

/// A specs file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecsFileError {
    /// The file could not be read.
    #[error("cannot read the specs file {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a JSON object.
    #[error("{path}, line {line}: {message}; each non-empty line must be one job spec, a JSON object such as {{\"process\": {{\"type\": \"docker\", \"command\": [\"echo\", \"hi\"]}}}}")]
    NotAnObject {
        /// The file.
        path: PathBuf,
        /// The line's number, from 1.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file holds no spec.
    #[error("{path} holds no job spec (one JSON object per line)")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A line is not UTF-8.
    #[error("{path}, line {line}: not UTF-8 (byte {byte} of the line); a specs file is UTF-8 JSON, one spec per line")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// The line's number, from 1.
        line: usize,
        /// The offset of the first bad byte in the line, from 0.
        byte: usize,
    },
    /// The job ids would pass `i64::MAX`.
    #[error("{path}: {count} specs from job id {start_job_id} would pass the largest job id ({}); pass a smaller --start-job-id", i64::MAX)]
    JobIdOverflow {
        /// The file.
        path: PathBuf,
        /// The first job id.
        start_job_id: i64,
        /// How many specs.
        count: usize,
    },
    /// The file holds more than [`MAX_SPECS`] specs.
    #[error("{path} holds more than {MAX_SPECS} specs; split it into several bunches")]
    TooMany {
        /// The file.
        path: PathBuf,
    },
}

/// One spec of a specs file, with the job id it gets.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecLine {
    /// The line's number in the file, from 1.
    pub line: usize,
    /// The job id it gets.
    pub job_id: i64,
    /// The spec, with `job_id` set.
    pub spec: Map<String, Value>,
    /// The `job_id` the line itself gave, when it differs from `job_id`.
    pub replaced_job_id: Option<Value>,
}

/// Reads a JSON Lines file of job specs (blank lines skipped); the `i`th
/// spec gets job id `start_job_id + i`.
///
/// # Errors
/// [`SpecsFileError`], naming the line.
pub fn read_specs(path: &Path, start_job_id: i64) -> Result<Vec<SpecLine>, SpecsFileError> {
    let bytes = std::fs::read(path).map_err(|source| SpecsFileError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    // A UTF-8 byte order mark (some editors write one) is not JSON.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let before = &bytes[..e.valid_up_to()];
        let line_start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        SpecsFileError::NotUtf8 {
            path: path.to_owned(),
            line: before.iter().filter(|b| **b == b'\n').count() + 1,
            byte: e.valid_up_to() - line_start,
        }
    })?;
    parse_specs(text, path, start_job_id)
}

/// [`read_specs`] of `text` (`path` names it in errors).
///
/// # Errors
/// [`SpecsFileError`].
pub fn parse_specs(
    text: &str,
    path: &Path,
    start_job_id: i64,
) -> Result<Vec<SpecLine>, SpecsFileError> {
    let mut specs = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        if specs.len() == MAX_SPECS {
            return Err(SpecsFileError::TooMany {
                path: path.to_owned(),
            });
        }
        let not_object = |message: String| SpecsFileError::NotAnObject {
            path: path.to_owned(),
            line: line_number,
            message,
        };
        let mut spec = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(spec)) => spec,
            Ok(other) => {
                return Err(not_object(format!(
                    "expected a JSON object, got {}",
                    crate::wire::truncate(&other.to_string(), 60)
                )))
            }
            Err(e) => return Err(not_object(format!("not JSON: {e}"))),
        };
        let job_id = start_job_id
            .checked_add(specs.len() as i64)
            .ok_or_else(|| SpecsFileError::JobIdOverflow {
                path: path.to_owned(),
                start_job_id,
                count: specs.len() + 1,
            })?;
        let replaced_job_id = spec
            .insert("job_id".to_owned(), json!(job_id))
            .filter(|given| given != &json!(job_id));
        specs.push(SpecLine {
            line: line_number,
            job_id,
            spec,
            replaced_job_id,
        });
    }
    if specs.is_empty() {
        return Err(SpecsFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(specs)
}

/// A new random bunch token ([`TOKEN_CHARS`] alphanumeric characters).
pub fn new_token() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), TOKEN_CHARS)
}

/// A new random attempt id ([`ATTEMPT_ID_CHARS`] alphanumeric characters).
pub fn new_attempt_id() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), ATTEMPT_ID_CHARS)
}

/// Writes `specs` as bunch `token` of batch `batch_id` (`specs` first,
/// then `specs.idx`, as the driver does).
///
/// # Errors
/// The store's error.
pub async fn write_bunch(
    store: &SpecStore,
    batch_id: i64,
    token: &str,
    specs: &[SpecLine],
) -> Result<BunchKeys, object_store::Error> {
    let bytes: Vec<Vec<u8>> = specs
        .iter()
        .map(|s| serde_json::to_vec(&s.spec).expect("a JSON map serialises"))
        .collect();
    store.write_bunch(batch_id, token, &bytes).await
}

/// What a create body names, besides the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bunch {
    /// The batch's id.
    pub batch_id: i64,
    /// The bunch's token.
    pub token: String,
    /// Its first job id.
    pub start_job_id: i64,
    /// The user the jobs run for.
    pub user: String,
}

impl Bunch {
    /// The create body of job `job_id` of this bunch, as Hail's driver
    /// sends it (`tests/fixtures/samples/create-v7.json`): format 7, a new
    /// attempt id, job group 0, no secrets.
    pub fn create_body(&self, job_id: i64) -> Value {
        json!({
            "batch_id": self.batch_id,
            "job_id": job_id,
            "format_version": FORMAT_VERSION,
            "token": self.token,
            "start_job_id": self.start_job_id,
            "user": self.user,
            "gsa_key": null,
            "job_spec": {
                "attempt_id": new_attempt_id(),
                "job_group_id": 0,
                "secrets": [],
                "env": [],
            },
            "queue_time": crate::worker::now_ms(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_get_consecutive_job_ids_and_a_differing_job_id_is_reported() {
        let text = "{\"process\": {}}\n\n{\"job_id\": 9}\n{\"job_id\": 12}\n";
        let specs = parse_specs(text, Path::new("s.jsonl"), 11).expect("parses");
        let ids: Vec<i64> = specs.iter().map(|s| s.job_id).collect();
        assert_eq!(ids, [11, 12, 13]);
        assert_eq!(specs[1].line, 3);
        assert_eq!(specs[1].spec["job_id"], json!(12));
        assert_eq!(specs[1].replaced_job_id, Some(json!(9)));
        assert_eq!(specs[2].replaced_job_id, Some(json!(12)));
        assert_eq!(specs[0].replaced_job_id, None);
    }

    #[test]
    fn job_ids_past_the_largest_are_refused_and_bad_bytes_named_by_line() {
        let err = parse_specs("{}\n{}\n", Path::new("s.jsonl"), i64::MAX).expect_err("overflows");
        assert!(
            matches!(err, SpecsFileError::JobIdOverflow { count: 2, .. }),
            "{err}"
        );
        assert_eq!(
            parse_specs("{}\n", Path::new("s.jsonl"), i64::MAX).expect("one fits")[0].job_id,
            i64::MAX
        );
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("s.jsonl");
        std::fs::write(&file, b"\xEF\xBB\xBF{}\n{\"a\": \"\xFF\"}\n").expect("written");
        let err = read_specs(&file, 1).expect_err("not UTF-8");
        assert!(
            matches!(
                err,
                SpecsFileError::NotUtf8 {
                    line: 2,
                    byte: 7,
                    ..
                }
            ),
            "{err}"
        );
        std::fs::write(&file, b"\xEF\xBB\xBF{}\n").expect("written");
        assert_eq!(read_specs(&file, 1).expect("a BOM is skipped").len(), 1);
    }

    #[test]
    fn a_line_that_is_not_an_object_is_named() {
        let err = parse_specs("{}\n[1]\n", Path::new("s.jsonl"), 1).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("s.jsonl, line 2"), "{text}");
        assert!(text.contains("expected a JSON object"), "{text}");
        let err = parse_specs("{\"a\": \n", Path::new("s.jsonl"), 1).expect_err("refused");
        assert!(err.to_string().contains("line 1: not JSON"), "{err}");
        let err = parse_specs("\n  \n", Path::new("s.jsonl"), 1).expect_err("refused");
        assert!(matches!(err, SpecsFileError::Empty { .. }));
    }

    #[test]
    fn a_create_body_parses_as_the_worker_parses_it() {
        let bunch = Bunch {
            batch_id: 4,
            token: new_token(),
            start_job_id: 1,
            user: "operator".into(),
        };
        let body = serde_json::to_vec(&bunch.create_body(3)).expect("serialises");
        let job = crate::wire::CreateJob::parse(&body).expect("the worker accepts it");
        assert_eq!((job.batch_id, job.job_id, job.format_version), (4, 3, 7));
        assert_eq!(job.attempt.attempt_id.len(), ATTEMPT_ID_CHARS);
    }
}
