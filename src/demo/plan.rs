//! What the demo schedules: one planned kind per job, each with the spec
//! bytes that produce it and the final state it must reach.

use batch_worker_model::ErrorKind;
use serde_json::json;

/// Batch id the demo uses.
pub const DEMO_BATCH_ID: i64 = 1;

/// Largest spec the demo's worker accepts, in bytes (the `TooLarge` case
/// writes one byte more).
pub const DEMO_SPEC_MAX_BYTES: u64 = 256 * 1024;

/// What a job is made to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `echo ...; sleep 0.1`, exit 0.
    Succeeds,
    /// Exits 3.
    ExitsNonZero,
    /// Sleeps past its 1 s timeout.
    TimesOut,
    /// Sleeps 60 s; the demo cancels it.
    Cancelled,
    /// Its program does not exist.
    LaunchFails,
    /// `process.type` is `jvm`.
    Unsupported,
    /// The bunch's `specs` object is deleted.
    SpecsDeleted,
    /// The bunch's `specs.idx` object is deleted.
    IndexDeleted,
    /// `specs.idx` is cut to 8 bytes.
    IndexTruncated,
    /// The index's offsets are swapped.
    OffsetsReversed,
    /// The index's end offset lies past the end of `specs`.
    OffsetsPastEnd,
    /// Start and end offsets are equal.
    SpecEmpty,
    /// The spec bytes are not UTF-8.
    NotUtf8,
    /// The spec is cut mid-JSON.
    NotJson,
    /// The spec is a JSON array.
    NotObject,
    /// The spec's `job_id` is another job's.
    WrongJobId,
    /// `process.command` is an empty list.
    NoCommand,
    /// The spec is one byte over the worker's cap.
    TooLarge,
}

/// The special kinds, spread over the jobs in this order.
pub const SPECIAL: [Kind; 17] = [
    Kind::ExitsNonZero,
    Kind::SpecsDeleted,
    Kind::IndexTruncated,
    Kind::OffsetsReversed,
    Kind::NotUtf8,
    Kind::Cancelled,
    Kind::WrongJobId,
    Kind::LaunchFails,
    Kind::IndexDeleted,
    Kind::OffsetsPastEnd,
    Kind::SpecEmpty,
    Kind::TimesOut,
    Kind::NotJson,
    Kind::NotObject,
    Kind::Unsupported,
    Kind::NoCommand,
    Kind::TooLarge,
];

/// The final state a planned job must reach, as the status JSON says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Expected {
    /// `succeeded`.
    Succeeded,
    /// The process failed: `failed` with this exit code; `None`: it timed
    /// out, which Hail reports as `error` (`short_error` "timed out").
    Failed(Option<i32>),
    /// `cancelled`.
    Cancelled,
    /// `error` of this kind.
    Error(ErrorKind),
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Succeeded => write!(f, "succeeded"),
            Expected::Failed(Some(code)) => write!(f, "failed (exit {code})"),
            Expected::Failed(None) => write!(f, "error (timed out)"),
            Expected::Cancelled => write!(f, "cancelled"),
            Expected::Error(kind) => write!(f, "error: {kind}"),
        }
    }
}

impl Kind {
    /// The final state this kind must reach.
    pub fn expected(self) -> Expected {
        match self {
            Kind::Succeeds => Expected::Succeeded,
            Kind::ExitsNonZero => Expected::Failed(Some(3)),
            Kind::TimesOut => Expected::Failed(None),
            Kind::Cancelled => Expected::Cancelled,
            Kind::LaunchFails => Expected::Error(ErrorKind::LaunchFailed),
            Kind::Unsupported => Expected::Error(ErrorKind::Unsupported),
            Kind::SpecsDeleted | Kind::IndexDeleted => Expected::Error(ErrorKind::SpecMissing),
            _ => Expected::Error(ErrorKind::SpecCorrupt),
        }
    }

    /// Whether the spec is well-formed (it can share a bunch with others);
    /// otherwise the job gets a bunch of its own, damaged after writing.
    pub fn well_formed(self) -> bool {
        matches!(
            self,
            Kind::Succeeds
                | Kind::ExitsNonZero
                | Kind::TimesOut
                | Kind::Cancelled
                | Kind::LaunchFails
                | Kind::Unsupported
        )
    }

    /// A short description for the demo's table.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Succeeds => "runs echo; sleep 0.1",
            Kind::ExitsNonZero => "exits 3",
            Kind::TimesOut => "sleeps past a 1 s timeout",
            Kind::Cancelled => "sleeps; the driver cancels it",
            Kind::LaunchFails => "program does not exist",
            Kind::Unsupported => "process.type jvm",
            Kind::SpecsDeleted => "specs object deleted",
            Kind::IndexDeleted => "specs.idx deleted",
            Kind::IndexTruncated => "specs.idx cut to 8 bytes",
            Kind::OffsetsReversed => "index offsets reversed",
            Kind::OffsetsPastEnd => "index end past end of specs",
            Kind::SpecEmpty => "empty spec",
            Kind::NotUtf8 => "spec bytes not UTF-8",
            Kind::NotJson => "spec cut mid-JSON",
            Kind::NotObject => "spec is a JSON array",
            Kind::WrongJobId => "spec has another job_id",
            Kind::NoCommand => "process.command is []",
            Kind::TooLarge => "spec over the size cap",
        }
    }
}

/// The kind of job `job_id` (1-based) among `jobs`: every tenth job is
/// special, cycling through [`SPECIAL`]; the rest succeed.
pub fn kind_of(job_id: i64) -> Kind {
    if job_id % 10 == 0 {
        SPECIAL[((job_id / 10 - 1) as usize) % SPECIAL.len()]
    } else {
        Kind::Succeeds
    }
}

/// The spec JSON of job `job_id` of kind `kind` (before any damage).
pub fn spec_json(job_id: i64, kind: Kind) -> Vec<u8> {
    let docker = |command: serde_json::Value| json!({"type": "docker", "image": "ubuntu:24.04", "command": command});
    let mut timeout = serde_json::Value::Null;
    let process = match kind {
        Kind::ExitsNonZero => docker(json!(["sh", "-c", "echo failing on purpose >&2; exit 3"])),
        Kind::TimesOut => {
            timeout = json!(1);
            docker(json!(["sleep", "30"]))
        }
        Kind::Cancelled => docker(json!(["sleep", "60"])),
        Kind::LaunchFails => docker(json!(["/nonexistent/batch-worker-demo-program"])),
        Kind::Unsupported => {
            json!({"type": "jvm", "jar_spec": {"type": "jar_url", "value": "gs://x/y.jar"}, "command": ["is.hail.Main"]})
        }
        Kind::NoCommand => docker(json!([])),
        _ => docker(json!([
            "sh",
            "-c",
            format!("echo \"hello from job {job_id} (é)\"; sleep 0.1")
        ])),
    };
    let spec_job_id = if kind == Kind::WrongJobId {
        job_id + 1
    } else {
        job_id
    };
    let mut spec = json!({
        "always_run": false,
        "job_id": spec_job_id,
        "parent_ids": [],
        "process": process,
        "resources": {"cores_mcpu": 250, "memory_bytes": 268435456, "storage_gib": 0, "preemptible": true},
        "env": [{"name": "STAGE", "value": "demo"}],
        "input_files": [],
        "output_files": [],
        "timeout": timeout,
    });
    if kind == Kind::TooLarge {
        let text = spec.to_string();
        let pad = DEMO_SPEC_MAX_BYTES as usize + 1 - text.len() - ",\"padding\":\"\"".len();
        spec["padding"] = json!("x".repeat(pad));
    }
    let bytes = serde_json::to_vec(&spec).expect("a JSON value serialises");
    match kind {
        Kind::NotUtf8 => {
            let mut b = bytes;
            b[10] = 0xff;
            b
        }
        Kind::NotJson => bytes[..bytes.len() / 2].to_vec(),
        Kind::NotObject => b"[\"not\", \"an\", \"object\"]".to_vec(),
        _ => bytes,
    }
}

/// Damages a one-job bunch's index after writing, for the index kinds.
/// Returns the new `specs.idx` bytes, or `None` to leave it.
pub fn damaged_index(kind: Kind, index: &[u8], specs_len: u64) -> Option<Vec<u8>> {
    match kind {
        Kind::IndexTruncated => Some(index[..8].to_vec()),
        Kind::OffsetsReversed => Some([&index[8..16], &index[..8]].concat()),
        Kind::OffsetsPastEnd => Some([&index[..8], &(specs_len + 100).to_le_bytes()[..]].concat()),
        Kind::SpecEmpty => Some([&index[..8], &index[..8]].concat()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job_spec::JobSpec;

    #[test]
    fn every_special_kind_is_planned_within_the_default_jobs() {
        let planned: std::collections::BTreeSet<Kind> = (1..=200).map(kind_of).collect();
        for kind in SPECIAL {
            assert!(planned.contains(&kind), "{kind:?} not planned in 200 jobs");
        }
    }

    #[test]
    fn well_formed_specs_parse_and_corrupt_ones_do_not() {
        for kind in SPECIAL.into_iter().chain([Kind::Succeeds]) {
            let parsed = JobSpec::parse(&spec_json(20, kind), 20);
            match kind {
                Kind::NotUtf8
                | Kind::NotJson
                | Kind::NotObject
                | Kind::WrongJobId
                | Kind::NoCommand => {
                    assert!(parsed.is_err(), "{kind:?} parsed")
                }
                Kind::TooLarge => {
                    assert_eq!(spec_json(20, kind).len() as u64, DEMO_SPEC_MAX_BYTES + 1)
                }
                _ => assert!(parsed.is_ok(), "{kind:?}: {parsed:?}"),
            }
        }
    }
}
