//! Events: the facts that move a job attempt from state to state.
//!
//! Every event is past tense: it records something that already happened in
//! the shell (a call was accepted, a read finished, a process exited). Events
//! are what the journal stores, so their serde shape is a persistent format:
//! add variants and optional fields, never change existing ones without
//! bumping [`EVENT_VERSION`].
//!
//! This file is long (about 640 lines, 65 of them tests) because the
//! event enum, the values its variants carry (exit status, unknown fields,
//! the job's network address), the version upcast and the truncation of
//! free texts are one persistent format, changed together.

use serde::{Deserialize, Serialize};

use crate::state::ErrorKind;

/// Version of the serialised shape and meaning of [`Event`]; journal
/// records carry it. Version 2 added resource admission (`resources_granted`
/// between `spec_loaded` and the spawn) and the delivery events; version 3
/// keeps the spec's `resources` as sent in `spec_loaded` (absent: the spec
/// had none) and the create facts in `created`; version 4 adds
/// [`ExitStatus::StorageExceeded`] (no older event changes meaning). Read
/// older records through [`upcast`].
pub const EVENT_VERSION: u32 = 4;

/// The events of the current [`EVENT_VERSION`] that one event recorded
/// under `event_version` stands for.
///
/// Version 1 had no resource admission: a `spec_loaded` of a runnable
/// (`docker`, nothing unsupported) spec was followed at once by the spawn,
/// so it becomes `spec_loaded` then `resources_granted`. Before version 3
/// `spec_loaded` did not keep the spec's `resources`: it gets what was
/// known of them, `{"cores_mcpu", "memory_bytes"}`. Every other event means
/// the same in every version.
pub fn upcast(event_version: u32, mut event: Event) -> Vec<Event> {
    if let Event::SpecLoaded {
        resources: resources @ None,
        cores_mcpu,
        memory_bytes,
        ..
    } = &mut event
    {
        if event_version < 3 {
            *resources = Some(Box::new(serde_json::json!({
                "cores_mcpu": *cores_mcpu,
                "memory_bytes": *memory_bytes,
            })));
        }
    }
    let runnable = matches!(
        &event,
        Event::SpecLoaded {
            process: ProcessKind::Docker,
            unsupported,
            ..
        } if unsupported.is_empty()
    );
    if event_version < 2 && runnable {
        vec![event, Event::ResourcesGranted]
    } else {
        vec![event]
    }
}

/// Where a job's network namespace is, as the job and the world see it
/// (the spec's `network` and `port`, and what the worker gave them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAddress {
    /// `"public"` or `"private"`: the spec's `network` (Hail's names).
    pub mode: String,
    /// The job's own IPv4 address, inside its namespace (e.g.
    /// `172.21.0.11`).
    pub ip: std::net::Ipv4Addr,
    /// The TCP port the job serves on (the spec's `port`), if it asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The worker's host port published to `port` (what the job gets in
    /// `HAIL_BATCH_WORKER_PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
}

impl JobAddress {
    /// For people: "public network, 172.21.0.11", then ", port 8080 on
    /// host port 46572" when a port is published.
    pub fn in_words(&self) -> String {
        let mut words = format!("{} network, {}", self.mode, self.ip);
        if let (Some(port), Some(host_port)) = (self.port, self.host_port) {
            words.push_str(&format!(", port {port} on host port {host_port}"));
        }
        words
    }
}

/// One fact about one job attempt.
///
/// Serialised as `{"type": "spec_loaded", ...fields}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The create endpoint accepted the attempt (a well-formed body, no
    /// duplicate). This is always an attempt's first event.
    Created {
        /// The create body's `format_version` (1: spec inline, >1: bunch).
        format_version: u32,
        /// The create body's `user`. Empty in records written before it was
        /// an event field (their journal record carried it beside the event;
        /// the journal moves it here when it reads them).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        user: String,
        /// The create body's `job_spec.job_group_id`.
        #[serde(default, skip_serializing_if = "is_zero_i64")]
        job_group_id: i64,
        /// The names (never the values) of the secrets the create body
        /// carried: `gsa_key/{file}` for each key file, then each
        /// `job_spec.secrets[].name`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        secret_names: Vec<String>,
    },
    /// The spec loader began reading the job spec.
    SpecLoadStarted,
    /// The job spec was read and validated.
    SpecLoaded {
        /// The spec's `process.type`.
        process: ProcessKind,
        /// Size of the spec's JSON text, in bytes.
        size_bytes: u64,
        /// Spec features this worker cannot honour (none at present);
        /// non-empty means the attempt errors `unsupported`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unsupported: Vec<String>,
        /// The spec's `resources.cores_mcpu`: CPU to reserve, in mcpu
        /// (1000 = one core). 0 in records written before admission existed.
        #[serde(default)]
        cores_mcpu: u64,
        /// The spec's `resources.memory_bytes`: memory to reserve, in bytes.
        #[serde(default)]
        memory_bytes: u64,
        /// How many `input_files` the spec has (downloaded before the
        /// process starts).
        #[serde(default, skip_serializing_if = "is_zero")]
        input_files: u32,
        /// How many `output_files` the spec has (uploaded after the process
        /// exits 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        output_files: u32,
        /// The container image to pull before the process starts (the
        /// spec's `process.image`, e.g. `docker.io/library/ubuntu:24.04`).
        /// Recorded only by a worker that runs containers (`--executor
        /// runc`); absent for host processes, which ignore the image.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<String>,
        /// The spec's `resources` object as sent (e.g. `{"cores_mcpu": 250,
        /// "memory_bytes": 0, "storage_gib": 2}`), shown as is in the status
        /// JSON. `None` in records written before it was recorded, and for
        /// a spec without `resources`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resources: Option<Box<serde_json::Value>>,
        /// Fields of the spec that neither this worker nor Hail knows
        /// (typos such as `timout`): ignored, the job runs without them.
        /// Serialised as two keys of the event, both absent when there
        /// are none (and in records written before they were recorded):
        /// `unknown_fields` (at most the worker's cap, each path cut to a
        /// bounded length) and `unknown_fields_omitted` (how many more).
        #[serde(flatten)]
        unknown_fields: UnknownFields,
    },
    /// The worker reserved the job's cores and memory; the process may start.
    ResourcesGranted,
    /// The job asks for more cores or memory than the worker has in all: it
    /// can never run here.
    ResourcesRefused {
        /// What was asked for and what the worker has.
        message: String,
    },
    /// The job spec could not be used; `kind` says why.
    SpecLoadFailed {
        /// One of the spec error kinds (`spec_missing`, `spec_corrupt`,
        /// `spec_timeout`, `spec_unavailable`).
        kind: ErrorKind,
        /// What went wrong, for a person: which object, which field.
        message: String,
    },
    /// Every input file is in the attempt's working directory.
    InputsStaged {
        /// Files downloaded.
        files: u32,
        /// Bytes downloaded.
        size_bytes: u64,
    },
    /// An input file could not be downloaded (after retries).
    InputsFailed {
        /// Which URL, and why.
        message: String,
    },
    /// The job's image is in the worker's image cache, unpacked: pulled
    /// from its registry now (`pulled`), or found there from an earlier job.
    ImagePulled {
        /// The image reference as the spec gives it.
        image: String,
        /// The manifest digest the reference resolved to
        /// (`sha256:<64 hex>`): the cache entry the container runs on.
        digest: String,
        /// Whether this job downloaded it (false: it was in the cache, or
        /// another job pulled it meanwhile).
        pulled: bool,
    },
    /// The job's image could not be pulled: it does not exist, access was
    /// refused, or the registry kept failing through the retries; or a layer
    /// was damaged (digest mismatch) or could not be unpacked.
    ImagePullFailed {
        /// The image reference as the spec gives it.
        image: String,
        /// What went wrong, for a person.
        message: String,
    },
    /// The job's process was spawned.
    ProcessStarted {
        /// The host process id.
        pid: u32,
        /// The job's own network, when it has one (a container with
        /// `--container-network namespace`); absent otherwise (and in
        /// records written before it existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<Box<JobAddress>>,
    },
    /// The job's process could not be spawned (no such program, permission
    /// denied, working directory could not be made, ...).
    LaunchFailed {
        /// The operating system's or runner's error text.
        message: String,
    },
    /// The job's process ended.
    ProcessExited {
        /// How it ended.
        exit: ExitStatus,
        /// Wall time from spawn to exit, in ms.
        duration_ms: u64,
    },
    /// Every output file was uploaded.
    OutputsUploaded {
        /// Files uploaded.
        files: u32,
        /// Bytes uploaded.
        size_bytes: u64,
    },
    /// An output file could not be uploaded (after retries), or is missing.
    OutputsFailed {
        /// Which file and URL, and why.
        message: String,
    },
    /// The driver (or an operator) asked for the attempt to be cancelled.
    CancelRequested,
    /// The worker restarted while the attempt was live; its process, if any,
    /// is gone.
    WorkerRestarted,
    /// The driver acknowledged the attempt's `job_started` (or answered 404).
    /// It changes no state; `job_complete` then says `marked_job_started`.
    StartedDelivered,
    /// The attempt's `status.json` and main log were written to the logs
    /// store. Legal only once the attempt is terminal; it changes no state.
    LogsUploaded,
    /// The status and log upload failed after its retries. The outcome is
    /// unchanged: the job is reported all the same.
    LogsUploadFailed {
        /// The store's error text.
        message: String,
    },
    /// The driver acknowledged the attempt's `job_complete` (or answered
    /// 404: it no longer wants it). Legal only once the attempt is terminal;
    /// it changes no state, and tells a restarted worker not to report again.
    CompleteDelivered,
}

impl Event {
    /// The event's snake_case name, as in its serde tag (`"spec_loaded"`).
    pub fn name(&self) -> &'static str {
        match self {
            Event::Created { .. } => "created",
            Event::SpecLoadStarted => "spec_load_started",
            Event::SpecLoaded { .. } => "spec_loaded",
            Event::SpecLoadFailed { .. } => "spec_load_failed",
            Event::ResourcesGranted => "resources_granted",
            Event::ResourcesRefused { .. } => "resources_refused",
            Event::InputsStaged { .. } => "inputs_staged",
            Event::InputsFailed { .. } => "inputs_failed",
            Event::ImagePulled { .. } => "image_pulled",
            Event::ImagePullFailed { .. } => "image_pull_failed",
            Event::ProcessStarted { .. } => "process_started",
            Event::LaunchFailed { .. } => "launch_failed",
            Event::ProcessExited { .. } => "process_exited",
            Event::OutputsUploaded { .. } => "outputs_uploaded",
            Event::OutputsFailed { .. } => "outputs_failed",
            Event::CancelRequested => "cancel_requested",
            Event::WorkerRestarted => "worker_restarted",
            Event::StartedDelivered => "started_delivered",
            Event::LogsUploaded => "logs_uploaded",
            Event::LogsUploadFailed { .. } => "logs_upload_failed",
            Event::CompleteDelivered => "complete_delivered",
        }
    }

    /// An [`Event::Created`] with only its `format_version` (no user, job
    /// group or secrets), as tests and old records have it.
    pub fn created(format_version: u32) -> Event {
        Event::Created {
            format_version,
            user: String::new(),
            job_group_id: 0,
            secret_names: Vec::new(),
        }
    }

    /// An [`Event::ProcessStarted`] of `pid` without a network of its own.
    pub fn process_started(pid: u32) -> Event {
        Event::ProcessStarted { pid, network: None }
    }

    /// The event with each of its free texts (messages, image references,
    /// digests) cut to at most `max_bytes` (at a character boundary, saying
    /// how much was cut), so that no record of it can outgrow the journal's
    /// limit, whatever an error message quotes.
    pub fn bounded(mut self, max_bytes: usize) -> Event {
        let cut = |text: &mut String| {
            if text.len() > max_bytes {
                let mut end = max_bytes;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                let cut_bytes = text.len() - end;
                text.truncate(end);
                text.push_str(&format!("… ({cut_bytes} bytes cut)"));
            }
        };
        match &mut self {
            Event::ResourcesRefused { message }
            | Event::SpecLoadFailed { message, .. }
            | Event::InputsFailed { message }
            | Event::LaunchFailed { message }
            | Event::OutputsFailed { message }
            | Event::LogsUploadFailed { message } => cut(message),
            Event::ImagePullFailed { image, message } => {
                cut(image);
                cut(message);
            }
            Event::ImagePulled { image, digest, .. } => {
                cut(image);
                cut(digest);
            }
            _ => {}
        }
        self
    }

    /// Whether this is [`Event::Created`], an attempt's first event.
    pub fn is_created(&self) -> bool {
        matches!(self, Event::Created { .. })
    }

    /// Whether the event only records the delivery of a report or upload
    /// (`started_delivered`, `logs_uploaded`, `logs_upload_failed`,
    /// `complete_delivered`): it never moves the attempt to another state.
    pub fn is_delivery(&self) -> bool {
        matches!(
            self,
            Event::StartedDelivered
                | Event::LogsUploaded
                | Event::LogsUploadFailed { .. }
                | Event::CompleteDelivered
        )
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

/// A field of a job spec that neither the worker nor Hail knows: ignored,
/// and warned about (`spec_loaded.unknown_fields`).
///
/// Serialised as `{"path": "process.comand", "suggestion":
/// "process.command"}` (`suggestion` absent when there is none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownField {
    /// Where the field is in the spec: its name, after the names of the
    /// objects and the indexes of the lists it is in (`timout`,
    /// `process.comand`, `input_files[2].form`).
    pub path: String,
    /// The known field at the same place whose name is nearest, as a path
    /// (`process.command`), when one is near enough to be a likely typo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
}

impl UnknownField {
    /// The warning for a person: ``unknown field `timout` ignored; did you
    /// mean `timeout`?`` (without the question when there is no
    /// suggestion).
    pub fn message(&self) -> String {
        match &self.suggestion {
            Some(near) => format!(
                "unknown field `{}` ignored; did you mean `{near}`?",
                self.path
            ),
            None => format!("unknown field `{}` ignored", self.path),
        }
    }
}

/// The unknown fields of one spec, as `spec_loaded` records them: the
/// fields kept and how many more there were.
///
/// One pointer wide, and no allocation when there are none: it is inside
/// every [`Event`] a job's history holds, so it must not make a waiting
/// job's events larger. Serialised as the map `{"unknown_fields": [...],
/// "unknown_fields_omitted": N}` (each key absent when empty or 0), so
/// that a flattened field adds those two keys to its event; deserialised
/// from a map with those keys (any other key is ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnknownFields(Option<Box<KeptFields>>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct KeptFields {
    fields: Vec<UnknownField>,
    omitted: u32,
}

impl UnknownFields {
    /// No unknown field.
    pub const fn none() -> UnknownFields {
        UnknownFields(None)
    }

    /// `fields` kept, and `omitted` more that were not.
    pub fn new(fields: Vec<UnknownField>, omitted: u32) -> UnknownFields {
        if fields.is_empty() && omitted == 0 {
            UnknownFields(None)
        } else {
            UnknownFields(Some(Box::new(KeptFields { fields, omitted })))
        }
    }

    /// The fields kept, in the spec's order.
    pub fn fields(&self) -> &[UnknownField] {
        self.0.as_deref().map_or(&[], |kept| &kept.fields)
    }

    /// How many more unknown fields the spec had than [`Self::fields`].
    pub fn omitted(&self) -> u32 {
        self.0.as_deref().map_or(0, |kept| kept.omitted)
    }

    /// Whether the spec had none.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl Serialize for UnknownFields {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let fields = self.fields();
        let omitted = self.omitted();
        let len = usize::from(!fields.is_empty()) + usize::from(omitted > 0);
        let mut map = serializer.serialize_map(Some(len))?;
        if !fields.is_empty() {
            map.serialize_entry("unknown_fields", fields)?;
        }
        if omitted > 0 {
            map.serialize_entry("unknown_fields_omitted", &omitted)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for UnknownFields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Keys {
            #[serde(default)]
            unknown_fields: Vec<UnknownField>,
            #[serde(default)]
            unknown_fields_omitted: u32,
        }
        let keys = Keys::deserialize(deserializer)?;
        Ok(UnknownFields::new(
            keys.unknown_fields,
            keys.unknown_fields_omitted,
        ))
    }
}

/// The `process.type` of a job spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProcessKind {
    /// `{"type": "docker", "command": [...]}`: run `command`.
    Docker,
    /// Any other type (e.g. `"jvm"`), which this worker cannot run yet.
    Other {
        /// The type named in the spec.
        name: String,
    },
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExitStatus {
    /// Exited by itself with this code.
    Code {
        /// The exit code (0 is success).
        code: i32,
    },
    /// Ended by this signal (not sent by the worker's timeout).
    Signal {
        /// The signal number, e.g. 9 for SIGKILL.
        signal: i32,
    },
    /// Ended by the worker because it ran past the spec's `timeout`.
    TimedOut {
        /// The spec's timeout, in ms.
        timeout_ms: u64,
    },
    /// Ended by the worker because the job's files (its working directory)
    /// took more than its storage bound: `resources.storage_gib`, or the
    /// worker's default for a spec without one.
    StorageExceeded {
        /// The bound, in bytes.
        limit_bytes: u64,
        /// What the job's files took when it was ended, in bytes.
        used_bytes: u64,
    },
    /// The kernel's out-of-memory killer ended a process of the job's
    /// container: it used more than its memory limit. (Host processes have
    /// no limit and never end this way.)
    OutOfMemory {
        /// The exit code the container's process ended with (usually 137,
        /// 128 + SIGKILL).
        code: i32,
        /// The container's memory limit, in bytes (the spec's
        /// `resources.memory_bytes`).
        memory_limit_bytes: u64,
    },
}

impl ExitStatus {
    /// The exit code reported to the driver: the code itself, `128 + signal`
    /// for a signal (the shell convention), and `None` for a timeout.
    pub fn exit_code(&self) -> Option<i32> {
        match *self {
            ExitStatus::Code { code } => Some(code),
            ExitStatus::Signal { signal } => Some(128 + signal),
            ExitStatus::TimedOut { .. } | ExitStatus::StorageExceeded { .. } => None,
            ExitStatus::OutOfMemory { code, .. } => Some(code),
        }
    }

    /// Whether this counts as success (exit code 0).
    pub fn is_success(&self) -> bool {
        matches!(self, ExitStatus::Code { code: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_two_keys_of_spec_loaded_absent_when_none_and_one_pointer_wide() {
        assert_eq!(
            std::mem::size_of::<UnknownFields>(),
            std::mem::size_of::<usize>()
        );
        let loaded = |unknown_fields| Event::SpecLoaded {
            process: ProcessKind::Docker,
            size_bytes: 5,
            unsupported: vec![],
            cores_mcpu: 0,
            memory_bytes: 0,
            input_files: 0,
            output_files: 0,
            image: None,
            resources: None,
            unknown_fields,
        };
        let old = r#"{"type":"spec_loaded","process":{"type":"docker"},"size_bytes":5,"cores_mcpu":0,"memory_bytes":0}"#;
        let none = loaded(UnknownFields::none());
        assert_eq!(serde_json::to_string(&none).unwrap(), old);
        assert_eq!(serde_json::from_str::<Event>(old).unwrap(), none);

        let typo = UnknownField {
            path: "timout".into(),
            suggestion: Some("timeout".into()),
        };
        assert_eq!(
            typo.message(),
            "unknown field `timout` ignored; did you mean `timeout`?"
        );
        let some = loaded(UnknownFields::new(vec![typo], 2));
        let text = serde_json::to_string(&some).unwrap();
        assert!(
            text.ends_with(r#""unknown_fields":[{"path":"timout","suggestion":"timeout"}],"unknown_fields_omitted":2}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), some);
    }

    #[test]
    fn bounded_cuts_free_texts_at_a_character_boundary_and_says_so() {
        let message = "é".repeat(10); // 20 bytes
        let event = Event::LaunchFailed { message }.bounded(7);
        let Event::LaunchFailed { message } = event else {
            panic!()
        };
        assert_eq!(message, "ééé… (14 bytes cut)");
        let short = Event::InputsFailed {
            message: "short".into(),
        };
        assert_eq!(short.clone().bounded(7), short);
        let pulled = Event::ImagePullFailed {
            image: "i".repeat(10),
            message: "m".repeat(10),
        }
        .bounded(4);
        assert_eq!(
            pulled,
            Event::ImagePullFailed {
                image: "iiii… (6 bytes cut)".into(),
                message: "mmmm… (6 bytes cut)".into(),
            }
        );
    }
}
