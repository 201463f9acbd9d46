//! Job specs: parsing and validating one spec's JSON, and applying the
//! create request's per-attempt overrides.
//!
//! A spec is a JSON object (source: DESIGN.md, "Spec storage"): `job_id`,
//! `process` (`{type: "docker", image, command: [argv...]}` or another
//! type), `resources` (`cores_mcpu`, `memory_bytes`, `storage_gib`),
//! optional `env`, `timeout` (seconds), `input_files`, `output_files`.
//! Any other field is ignored; one that Hail does not know either is
//! recorded as a warning (`JobSpec::unknown_fields`, see
//! [`crate::spec_fields`]).
//!
//! This file is long (about 790 lines, 200 of them tests) because every
//! field's validation and its error message live together: what a spec may
//! hold, and the bounds of what the journal keeps of it (`resources`).

use std::time::Duration;

use batch_worker_model::{Event, ProcessKind, UnknownFields};
use serde_json::{Map, Value};

use crate::network::NetworkKind;
use crate::wire::{truncate, validate_env, AttemptFields, EnvVar};

/// One entry of `input_files` (`{from: URL, to: path}`) or `output_files`
/// (`{from: path, to: URL}`).
///
/// Host processes have no container file system: the path is taken
/// relative to the attempt's working directory (a leading `/` is dropped,
/// so `/io/in.txt` is `io/in.txt` there); `..` is refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileTransfer {
    /// The object's URL in a store (`s3://`, `gs://`, `az://`, `file://`).
    pub url: url::Url,
    /// The file's path under the working directory.
    pub local: std::path::PathBuf,
}

/// CPU reserved for a spec whose `resources.cores_mcpu` is absent: one
/// core, in mcpu.
pub const DEFAULT_CORES_MCPU: u64 = 1000;

/// Why spec bytes are unusable; becomes `Errored{spec_corrupt}` with this
/// text as the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecCorrupt(pub String);

/// Largest `resources` object a spec may have, in bytes of JSON: it is
/// journaled as sent (`spec_loaded`) and shown in the status JSON. Hail's
/// has a few small fields.
pub const MAX_RESOURCES_BYTES: usize = 4096;

/// Deepest nesting of a spec's `resources` (the object itself is level 1):
/// the journal keeps it inside its record, and a reader has a nesting limit.
pub const MAX_RESOURCES_DEPTH: usize = 16;

/// How deeply `value` nests: 0 for a scalar, 1 for a flat object or array.
fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Why spec bytes are not a JSON object: the first check [`JobSpec::parse`]
/// makes, before validating the fields. `Display` is the message the
/// worker records (`spec_corrupt`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecTextError {
    /// The spec has no bytes (its two offsets are equal).
    #[error("the spec is empty (0 bytes)")]
    Empty,
    /// Not UTF-8: `valid_up_to` is the byte offset (0-based, within the
    /// spec) of the first invalid byte; `len` the spec's size in bytes.
    #[error("the spec is not UTF-8: invalid byte at offset {valid_up_to} of {len} bytes")]
    NotUtf8 {
        /// Offset of the first invalid byte, in bytes from the spec's start.
        valid_up_to: usize,
        /// The spec's size, in bytes.
        len: usize,
    },
    /// UTF-8 but not JSON: serde_json's message, which ends with the line
    /// and column it also gives apart.
    #[error("the spec is not valid JSON: {message}")]
    NotJson {
        /// serde_json's error, e.g. `expected value at line 1 column 9`.
        message: String,
        /// Line of the error, 1-based.
        line: usize,
        /// Column of the error, 1-based, as serde_json counts it (in bytes
        /// from the line's start).
        column: usize,
    },
    /// JSON, but not an object; `found` is its type (`array`, `string`, ...).
    #[error("the spec is a JSON {found}, expected an object")]
    NotObject {
        /// The JSON type found.
        found: &'static str,
    },
}

/// The JSON object in spec bytes, checked the way [`JobSpec::parse`] does
/// (not empty, UTF-8, JSON, an object); the fields are not validated.
///
/// # Errors
/// [`SpecTextError`]: which of the four checks failed, and where.
pub fn spec_object(bytes: &[u8]) -> Result<Map<String, Value>, SpecTextError> {
    if bytes.is_empty() {
        return Err(SpecTextError::Empty);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| SpecTextError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
        len: bytes.len(),
    })?;
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(SpecTextError::NotObject {
            found: json_type(&other),
        }),
        Err(e) => Err(SpecTextError::NotJson {
            message: e.to_string(),
            line: e.line(),
            column: e.column(),
        }),
    }
}

/// A validated job spec. Serialised (without its secrets) into the
/// attempt's directory when its process starts (`spec.json`), so that a
/// restarted worker re-attaching to the process still has it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobSpec {
    /// The spec's `job_id` (equal to the create request's).
    pub job_id: i64,
    /// `process.type`.
    pub process: ProcessKind,
    /// `process.command`: the argv to run (non-empty for `docker`).
    pub command: Vec<String>,
    /// `process.image`, if any (recorded; host processes ignore it).
    pub image: Option<String>,
    /// The spec's `env`, then the request's `env`.
    pub env: Vec<EnvVar>,
    /// `timeout`, if present and positive.
    pub timeout: Option<Duration>,
    /// `network`: `public` (Hail's default, also when absent or null) or
    /// `private` (Hail's own trusted jobs). Honoured by a worker that gives
    /// each container job its own network (see [`crate::network`]).
    #[serde(default)]
    pub network: Option<NetworkKind>,
    /// `port`: a port (1..=65535) the job serves on, which the worker
    /// publishes on a host port and names in `HAIL_BATCH_WORKER_PORT`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `resources`, as sent (`cores_mcpu`, `memory_bytes`, `storage_gib`).
    pub resources: Value,
    /// `resources.cores_mcpu`: CPU the job reserves, in mcpu
    /// ([`DEFAULT_CORES_MCPU`] when absent).
    pub cores_mcpu: u64,
    /// `resources.memory_bytes`: memory the job reserves, in bytes (0 when
    /// absent).
    pub memory_bytes: u64,
    /// `input_files`: downloaded into the working directory before the
    /// process starts.
    pub input_files: Vec<FileTransfer>,
    /// `output_files`: uploaded from the working directory after the
    /// process exits 0.
    pub output_files: Vec<FileTransfer>,
    /// Spec features this worker cannot honour (none at present; kept so
    /// that a future one errors `unsupported` rather than run without it).
    pub unsupported: Vec<String>,
    /// Size of the spec's JSON text, in bytes.
    pub size_bytes: u64,
    /// The spec's fields that neither this worker nor Hail knows (see
    /// [`crate::spec_fields`]): ignored, recorded as warnings in
    /// `spec_loaded`. In `spec.json` as the keys `unknown_fields` and
    /// `unknown_fields_omitted` (absent when none, and from files written
    /// before).
    #[serde(flatten)]
    pub unknown_fields: UnknownFields,
    /// The create request's `secrets` (never the spec's), with their data:
    /// mounted into the job's container. Never serialised.
    #[serde(skip)]
    pub secrets: Vec<crate::wire::SecretMount>,
}

impl JobSpec {
    /// Parses spec bytes read from a bunch.
    ///
    /// # Errors
    /// [`SpecCorrupt`] when the bytes are empty, not UTF-8, not JSON, not an
    /// object, or the object is not a usable spec for `expected_job_id`.
    pub fn parse(bytes: &[u8], expected_job_id: i64) -> Result<JobSpec, SpecCorrupt> {
        let map = spec_object(bytes).map_err(|e| SpecCorrupt(e.to_string()))?;
        JobSpec::from_object(map, expected_job_id, bytes.len() as u64)
    }

    /// Validates a spec object (from a bunch, or the create body for
    /// format 1).
    ///
    /// # Errors
    /// [`SpecCorrupt`] naming the field: `job_id` missing or not
    /// `expected_job_id`, `process` not an object, `process.type` not a
    /// string, `process.command` not a non-empty list of strings (for
    /// `docker`), bad `env`, `timeout` not a non-negative number,
    /// `resources` not an object or its `cores_mcpu` / `memory_bytes` not
    /// non-negative integers.
    pub fn from_object(
        spec: Map<String, Value>,
        expected_job_id: i64,
        size_bytes: u64,
    ) -> Result<JobSpec, SpecCorrupt> {
        let unknown_fields = crate::spec_fields::unknown_fields(&spec);
        let job_id = spec.get("job_id").and_then(Value::as_i64).ok_or_else(|| {
            SpecCorrupt(format!(
                "job_id: expected an integer, got {}",
                describe(spec.get("job_id"))
            ))
        })?;
        if job_id != expected_job_id {
            return Err(SpecCorrupt(format!(
                "job_id is {job_id} but the create call is for job {expected_job_id}: \
                 the spec belongs to another job"
            )));
        }
        let process = spec
            .get("process")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                SpecCorrupt(format!(
                    "process: expected an object, got {}",
                    describe(spec.get("process"))
                ))
            })?;
        let kind = process.get("type").and_then(Value::as_str).ok_or_else(|| {
            SpecCorrupt(format!(
                "process.type: expected a string, got {}",
                describe(process.get("type"))
            ))
        })?;
        let (process_kind, command) = if kind == "docker" {
            (ProcessKind::Docker, command(process.get("command"))?)
        } else {
            (
                ProcessKind::Other {
                    name: truncate(kind, 64),
                },
                Vec::new(),
            )
        };
        let env: Vec<EnvVar> = match spec.get("env") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                SpecCorrupt(format!("env: expected a list of {{name, value}}: {e}"))
            })?,
        };
        validate_env("env", &env).map_err(|e| SpecCorrupt(e.to_string()))?;
        let timeout = match spec.get("timeout") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let secs = v
                    .as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| {
                        SpecCorrupt(format!(
                            "timeout: expected a non-negative number of seconds, got {}",
                            describe(Some(v))
                        ))
                    })?;
                (secs > 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)))
            }
        };
        let network = match spec.get("network") {
            None | Some(Value::Null) => None,
            Some(Value::String(kind)) if kind == "public" => Some(NetworkKind::Public),
            Some(Value::String(kind)) if kind == "private" => Some(NetworkKind::Private),
            Some(other) => {
                return Err(SpecCorrupt(format!(
                    "network: expected \"public\" or \"private\" (or null: public), got {}",
                    describe(Some(other))
                )))
            }
        };
        let port = match spec.get("port") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| {
                        SpecCorrupt(format!(
                            "port: expected a port number from 1 to 65535, got {}",
                            describe(Some(v))
                        ))
                    })?,
            ),
        };
        let resources = match spec.get("resources") {
            None | Some(Value::Null) => None,
            // Kept as sent in the journal's `spec_loaded` and shown in the
            // status: bounded, so one spec cannot make a record too large.
            Some(Value::Object(map))
                if serde_json::to_vec(map).map_or(usize::MAX, |b| b.len())
                    > MAX_RESOURCES_BYTES =>
            {
                return Err(SpecCorrupt(format!(
                    "resources: expected at most {MAX_RESOURCES_BYTES} bytes of JSON (cores_mcpu, memory_bytes, storage_gib, ...), got a larger object"
                )))
            }
            Some(resources @ Value::Object(_)) if depth(resources) > MAX_RESOURCES_DEPTH => {
                return Err(SpecCorrupt(format!(
                    "resources: expected at most {MAX_RESOURCES_DEPTH} levels of nesting (cores_mcpu, memory_bytes, storage_gib, ...), got {}",
                    depth(resources)
                )))
            }
            Some(Value::Object(map)) => Some(map),
            Some(other) => {
                return Err(SpecCorrupt(format!(
                    "resources: expected an object with cores_mcpu and memory_bytes, got {}",
                    describe(Some(other))
                )))
            }
        };
        let amount = |field: &str, default: u64| match resources.and_then(|r| r.get(field)) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| {
                SpecCorrupt(format!(
                    "resources.{field}: expected a non-negative integer, got {}",
                    describe(Some(v))
                ))
            }),
        };
        let cores_mcpu = amount("cores_mcpu", DEFAULT_CORES_MCPU)?;
        let memory_bytes = amount("memory_bytes", 0)?;
        let input_files = transfers(&spec, "input_files", Direction::In)?;
        let output_files = transfers(&spec, "output_files", Direction::Out)?;
        let unsupported = Vec::new();
        Ok(JobSpec {
            job_id,
            process: process_kind,
            command,
            image: match process.get("image") {
                None | Some(Value::Null) => None,
                Some(Value::String(image)) => Some(image.clone()),
                Some(other) => {
                    return Err(SpecCorrupt(format!(
                        "process.image: expected a string (an image reference), got {}",
                        describe(Some(other))
                    )))
                }
            },
            env,
            timeout,
            network,
            port,
            resources: resources.map_or(Value::Null, |r| Value::Object(r.clone())),
            cores_mcpu,
            memory_bytes,
            input_files,
            output_files,
            unsupported,
            size_bytes,
            unknown_fields,
            secrets: Vec::new(),
        })
    }

    /// Applies the create request's per-attempt fields: its `env` is
    /// appended after the spec's (later entries win when the process
    /// starts). `attempt_id`, `job_group_id` and `secrets` come from the
    /// request wherever the worker uses them; the spec's are never read.
    pub fn with_attempt(mut self, attempt: &AttemptFields) -> JobSpec {
        self.env.extend(attempt.env.iter().cloned());
        self.secrets = attempt.secrets.clone();
        self
    }

    /// Whether the spec can run on this worker's executor: a worker that
    /// runs every job in its image (`containers`, `--executor runc`) needs
    /// `process.image` to be a usable image reference; a host worker
    /// ignores the image.
    ///
    /// # Errors
    /// [`SpecCorrupt`] naming `process.image`: absent, or not a reference.
    pub fn check_executor(&self, containers: bool) -> Result<(), SpecCorrupt> {
        match (containers, &self.image) {
            (false, _) => Ok(()),
            (true, None) => Err(SpecCorrupt(
                "process.image: expected an image reference (this worker runs every job in its image, --executor runc), got none".into(),
            )),
            (true, Some(image)) => crate::image::check_reference(image).map_err(|e| {
                SpecCorrupt(format!(
                    "process.image: {:?} is not an image reference: {e}",
                    truncate(image, 200)
                ))
            }),
        }
    }

    /// The memory limit of the job's process, in bytes: what it reserves
    /// (`resources.memory_bytes`), or, for a job that reserves none, all the
    /// worker may give jobs (`capacity_bytes`): a job is never unlimited.
    pub fn memory_limit_bytes(&self, capacity_bytes: u64) -> u64 {
        match self.memory_bytes {
            0 => capacity_bytes,
            reserved => reserved,
        }
    }

    /// The job's storage bound from `resources.storage_gib` (GiB, 2³⁰
    /// bytes; a fraction allowed), in bytes; `None` when absent, zero or
    /// not a non-negative number (the worker's default applies).
    pub fn storage_bytes(&self) -> Option<u64> {
        self.resources
            .get("storage_gib")
            .and_then(Value::as_f64)
            .filter(|gib| gib.is_finite() && *gib > 0.0)
            .map(|gib| (gib * (1u64 << 30) as f64).min(u64::MAX as f64) as u64)
    }

    /// The `spec_loaded` event of this spec: what the journal keeps of it,
    /// `resources` as sent, and the image only on a worker that pulls
    /// images (`containers`).
    pub fn loaded_event(&self, containers: bool) -> Event {
        Event::SpecLoaded {
            process: self.process.clone(),
            size_bytes: self.size_bytes,
            unsupported: self.unsupported.clone(),
            cores_mcpu: self.cores_mcpu,
            memory_bytes: self.memory_bytes,
            input_files: self.input_files.len() as u32,
            output_files: self.output_files.len() as u32,
            image: self.image.clone().filter(|_| containers),
            resources: Some(self.resources.clone())
                .filter(|r| !r.is_null())
                .map(Box::new),
            unknown_fields: self.unknown_fields.clone(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// `{from: URL, to: path}`.
    In,
    /// `{from: path, to: URL}`.
    Out,
}

/// Parses `input_files` / `output_files`: a list of `{from, to}` (absent
/// or null: none).
fn transfers(
    spec: &Map<String, Value>,
    field: &str,
    direction: Direction,
) -> Result<Vec<FileTransfer>, SpecCorrupt> {
    let list = match spec.get(field) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(SpecCorrupt(format!(
                "{field}: expected a list of {{from, to}}, got {}",
                describe(Some(other))
            )))
        }
    };
    let (url_key, path_key) = match direction {
        Direction::In => ("from", "to"),
        Direction::Out => ("to", "from"),
    };
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let text = |key: &str| {
                entry.get(key).and_then(Value::as_str).ok_or_else(|| {
                    SpecCorrupt(format!(
                        "{field}[{i}].{key}: expected a string, got {}",
                        describe(entry.get(key))
                    ))
                })
            };
            let url_text = text(url_key)?;
            // The parser people's flags use (absolute paths taken as
            // file:///), so a spec gets the same "did you mean".
            let (url, kind) = crate::location::parse_store(url_text).map_err(|e| {
                SpecCorrupt(format!(
                    "{field}[{i}].{url_key}: {:?}: {e}",
                    truncate(&crate::store::redact_text(url_text), 200)
                ))
            })?;
            if kind == crate::location::StoreKind::Memory {
                return Err(SpecCorrupt(format!(
                    "{field}[{i}].{url_key}: memory:// is a store inside one process, not one a \
                     job's files can come from or go to; expected s3://, gs://, az:// or file:///"
                )));
            }
            if url.path().trim_matches('/').is_empty() {
                return Err(SpecCorrupt(format!(
                    "{field}[{i}].{url_key}: {} names a bucket or container, not an object",
                    crate::store::redact_url(&url)
                )));
            }
            let local = local_path(text(path_key)?).ok_or_else(|| {
                SpecCorrupt(format!(
                    "{field}[{i}].{path_key}: expected a non-empty file path without \"..\", got {:?}",
                    truncate(text(path_key).unwrap_or_default(), 200)
                ))
            })?;
            Ok(FileTransfer { url, local })
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|files| distinct_paths(field, direction, files))
}

/// Two inputs must not write the same file, nor one inside the other
/// (`a` and `a/b`): they would overwrite each other's bytes.
fn distinct_paths(
    field: &str,
    direction: Direction,
    files: Vec<FileTransfer>,
) -> Result<Vec<FileTransfer>, SpecCorrupt> {
    if direction == Direction::In {
        for (i, a) in files.iter().enumerate() {
            for (j, b) in files.iter().enumerate().skip(i + 1) {
                if a.local.starts_with(&b.local) || b.local.starts_with(&a.local) {
                    return Err(SpecCorrupt(format!(
                        "{field}[{i}].to and {field}[{j}].to overlap ({} and {}): \
                         expected distinct files",
                        a.local.display(),
                        b.local.display()
                    )));
                }
            }
        }
    }
    Ok(files)
}

/// `path` relative to the working directory: leading `/` dropped, `.`
/// skipped; `None` if it has `..` or names no file.
fn local_path(path: &str) -> Option<std::path::PathBuf> {
    let mut local = std::path::PathBuf::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part if part.contains('\0') => return None,
            part => local.push(part),
        }
    }
    (!local.as_os_str().is_empty()).then_some(local)
}

fn command(value: Option<&Value>) -> Result<Vec<String>, SpecCorrupt> {
    let bad = || {
        SpecCorrupt(format!(
            "process.command: expected a non-empty list of strings whose first \
             element names a program, got {}",
            describe(value)
        ))
    };
    let list = value.and_then(Value::as_array).ok_or_else(bad)?;
    let argv: Vec<String> = list
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    if argv.first().is_none_or(|p| p.is_empty()) || argv.iter().any(|a| a.contains('\0')) {
        return Err(bad());
    }
    Ok(argv)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A short description of a JSON value for error messages.
fn describe(value: Option<&Value>) -> String {
    match value {
        None => "nothing (field missing)".into(),
        Some(v @ (Value::Array(_) | Value::Object(_))) => {
            format!("{} {}", json_type(v), truncate(&v.to_string(), 60))
        }
        Some(v) => truncate(&v.to_string(), 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<JobSpec, SpecCorrupt> {
        JobSpec::parse(text.as_bytes(), 12)
    }

    #[test]
    fn a_resources_object_past_its_bound_is_corrupt_naming_it() {
        let padding = "x".repeat(MAX_RESOURCES_BYTES);
        let spec = serde_json::json!({
            "job_id": 1,
            "process": {"type": "docker", "command": ["true"]},
            "resources": {"cores_mcpu": 250, "note": padding},
        });
        let err = JobSpec::parse(spec.to_string().as_bytes(), 1).unwrap_err();
        assert!(
            err.0.starts_with("resources: expected at most 4096 bytes"),
            "{err}"
        );
        // Within the bound, it is kept as sent, and `spec_loaded` carries it.
        let spec = serde_json::json!({
            "job_id": 1,
            "process": {"type": "docker", "command": ["true"]},
            "resources": {"cores_mcpu": 250, "memory_bytes": 0, "storage_gib": 2},
        });
        let spec = JobSpec::parse(spec.to_string().as_bytes(), 1).unwrap();
        let Event::SpecLoaded { resources, .. } = spec.loaded_event(false) else {
            panic!("spec_loaded")
        };
        assert_eq!(
            resources,
            Some(Box::new(
                serde_json::json!({"cores_mcpu": 250, "memory_bytes": 0, "storage_gib": 2})
            ))
        );
    }

    #[test]
    fn a_good_spec_parses() {
        let s = spec(
            r#"{"job_id":12,"process":{"type":"docker","image":"ubuntu","command":["sh","-c","exit 3"]},
               "env":[{"name":"A","value":"1"}],"timeout":2.5,"resources":{"cores_mcpu":250}}"#,
        )
        .unwrap();
        assert_eq!(s.command, ["sh", "-c", "exit 3"]);
        assert_eq!(s.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(s.process, ProcessKind::Docker);
        assert!(s.unsupported.is_empty());
        assert_eq!((s.network, s.port), (None, None));
        let s = spec(
            r#"{"job_id":12,"process":{"type":"docker","command":["x"]},"network":"private","port":8000}"#,
        )
        .unwrap();
        assert_eq!(
            (s.network, s.port),
            (Some(NetworkKind::Private), Some(8000))
        );
        let s = spec(r#"{"job_id":12,"process":{"type":"docker","command":["x"]},"network":"public","port":null}"#).unwrap();
        assert_eq!((s.network, s.port), (Some(NetworkKind::Public), None));
    }

    #[test]
    fn each_defect_names_its_field() {
        let cases = [
            ("", "empty"),
            ("[1]", "JSON array"),
            ("{\"job_id\":12", "not valid JSON"),
            ("{\"job_id\":13,\"process\":{}}", "job_id is 13"),
            ("{\"process\":{}}", "job_id: expected an integer"),
            ("{\"job_id\":12}", "process: expected an object"),
            ("{\"job_id\":12,\"process\":{}}", "process.type"),
            ("{\"job_id\":12,\"process\":{\"type\":\"docker\"}}", "process.command"),
            ("{\"job_id\":12,\"process\":{\"type\":\"docker\",\"command\":[]}}", "process.command"),
            ("{\"job_id\":12,\"process\":{\"type\":\"docker\",\"command\":[1]}}", "process.command"),
            ("{\"job_id\":12,\"process\":{\"type\":\"docker\",\"command\":[\"\"]}}", "process.command"),
            ("{\"job_id\":12,\"process\":{\"type\":\"docker\",\"command\":[\"x\"]},\"timeout\":-1}", "timeout"),
            ("{\"job_id\":12,\"process\":{\"type\":\"docker\",\"command\":[\"x\"]},\"network\":\"hostile\"}", "network"),
            ("{\"job_id\":12,\"process\":{\"type\":\"docker\",\"command\":[\"x\"]},\"network\":3}", "network"),
            ("{\"job_id\":12,\"process\":{\"type\":\"docker\",\"command\":[\"x\"]},\"port\":0}", "port"),
            ("{\"job_id\":12,\"process\":{\"type\":\"docker\",\"command\":[\"x\"]},\"port\":70000}", "port"),
            ("{\"job_id\":12,\"process\":{\"type\":\"docker\",\"command\":[\"x\"]},\"port\":\"80\"}", "port"),
            ("{\"job_id\":12,\"process\":{\"type\":\"docker\",\"command\":[\"x\"]},\"env\":[{\"name\":\"A=B\",\"value\":\"\"}]}", "env[0].name"),
        ];
        for (text, needle) in cases {
            let err = spec(text).unwrap_err();
            assert!(err.0.contains(needle), "{text:?}: {err} lacks {needle:?}");
        }
        let err = JobSpec::parse(b"{\"job_id\":\xff}", 12).unwrap_err();
        assert!(
            err.0.contains("not UTF-8: invalid byte at offset 10"),
            "{err}"
        );
    }

    #[test]
    fn an_image_that_is_not_a_string_is_corrupt_naming_the_field() {
        for image in ["5", "true", "[]", "{}"] {
            let text = format!(
                r#"{{"job_id":12,"process":{{"type":"docker","image":{image},"command":["true"]}}}}"#
            );
            let err = spec(&text).unwrap_err().to_string();
            assert!(
                err.starts_with("process.image: expected a string"),
                "{image}: {err}"
            );
        }
        let s =
            spec(r#"{"job_id":12,"process":{"type":"docker","image":null,"command":["true"]}}"#);
        assert_eq!(s.unwrap().image, None);
    }

    #[test]
    fn other_process_types_are_flagged_not_rejected() {
        let s = spec(r#"{"job_id":12,"process":{"type":"jvm"}}"#).unwrap();
        assert_eq!(s.process, ProcessKind::Other { name: "jvm".into() });
    }

    #[test]
    fn file_transfers_are_urls_and_paths_inside_the_working_directory() {
        let s = spec(
            r#"{"job_id":12,"process":{"type":"docker","command":["true"]},
               "input_files":[{"from":"s3://b/in/data.csv","to":"/io/./data.csv"}],
               "output_files":[{"from":"out/r.txt","to":"az://c/results/r.txt"}]}"#,
        )
        .unwrap();
        assert_eq!(s.input_files[0].url.as_str(), "s3://b/in/data.csv");
        assert_eq!(s.input_files[0].local, std::path::Path::new("io/data.csv"));
        assert_eq!(s.output_files[0].local, std::path::Path::new("out/r.txt"));
        assert_eq!(s.output_files[0].url.as_str(), "az://c/results/r.txt");
        // An absolute path is a local file, as on the command line.
        let s = spec(
            r#"{"job_id":12,"process":{"type":"docker","command":["true"]},
               "input_files":[{"from":"/data/in.csv","to":"in.csv"}]}"#,
        )
        .unwrap();
        assert_eq!(s.input_files[0].url.as_str(), "file:///data/in.csv");
        for (bad, needle) in [
            (
                r#""input_files":[{"from":"s3://b/x","to":"/io/../../etc/passwd"}]"#,
                "input_files[0].to",
            ),
            (
                r#""input_files":[{"from":"not a url","to":"x"}]"#,
                "input_files[0].from",
            ),
            (
                r#""output_files":[{"from":"/","to":"s3://b/x"}]"#,
                "output_files[0].from",
            ),
            (
                r#""output_files":[{"from":"x","to":7}]"#,
                "output_files[0].to",
            ),
            (r#""output_files":"x""#, "output_files: expected a list"),
            (
                r#""input_files":[{"from":"s3://b/x","to":"a"},{"from":"s3://b/y","to":"/a"}]"#,
                "overlap",
            ),
            (
                r#""input_files":[{"from":"s3://b/x","to":"a"},{"from":"s3://b/y","to":"a/b"}]"#,
                "overlap",
            ),
            (
                r#""input_files":[{"from":"s3://bucket","to":"a"}]"#,
                "not an object",
            ),
            (
                r#""output_files":[{"from":"a","to":"memory:///x"}]"#,
                "memory://",
            ),
            (
                r#""input_files":[{"from":"file://tmp/x","to":"a"}]"#,
                "input_files[0].from: \"file://tmp/x\": file URLs need three slashes",
            ),
            (
                r#""input_files":[{"from":"file://tmp/x","to":"a"}]"#,
                "did you mean file:///tmp/x?",
            ),
            (
                r#""output_files":[{"from":"a","to":"s3:/bucket/x"}]"#,
                "output_files[0].to: \"s3:/bucket/x\": not a store URL: did you mean s3://bucket/x?",
            ),
            (
                r#""input_files":[{"from":"ftp://h/x","to":"a"}]"#,
                "ftp:// is not a store this worker opens",
            ),
        ] {
            let text = format!(
                r#"{{"job_id":12,"process":{{"type":"docker","command":["true"]}},{bad}}}"#
            );
            let err = spec(&text).unwrap_err();
            assert!(err.0.contains(needle), "{bad}: {err}");
        }
    }
}
