//! Parsing a record's payload, with a fast path for the shape the encoder
//! writes.
//!
//! [`Event`] is an internally tagged enum (`{"type": "spec_loaded", ...}`);
//! serde's derived `Deserialize` for it buffers every field before it reads
//! the tag, which is most of a record's parse time. The encoder always
//! writes the tag first, so the fast path reads it first and then the
//! variant's fields directly. Anything else — the tag elsewhere or twice,
//! an unknown event, any error — is parsed again by the derived
//! `Deserialize` of [`JournalRecord`], which decides: the fast path never
//! accepts a payload the derived one would not, nor gives another value.

use batch_worker_model::{
    ErrorKind, Event, ExitStatus, JobAddress, JobKey, ProcessKind, UnknownField, UnknownFields,
};
use serde::de::value::MapAccessDeserializer;
use serde::de::{Error as _, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{AttemptInfo, JournalRecord};

/// Parses one record's payload (JSON of a [`JournalRecord`]).
///
/// # Errors
/// The derived `Deserialize`'s error when the payload is not a record.
pub(super) fn parse_record(payload: &[u8]) -> Result<JournalRecord, serde_json::Error> {
    match serde_json::from_slice::<FastRecord>(payload) {
        Ok(FastRecord {
            seq,
            time_ms,
            event_version,
            key,
            event: TagFirst(event),
            attempt,
        }) => Ok(JournalRecord {
            seq,
            time_ms,
            event_version,
            key,
            event,
            attempt,
        }),
        Err(_) => serde_json::from_slice(payload),
    }
}

/// [`JournalRecord`]'s fields and serde attributes, with the event read by
/// [`TagFirst`].
#[derive(Deserialize)]
struct FastRecord {
    seq: u64,
    time_ms: i64,
    event_version: u32,
    key: JobKey,
    event: TagFirst,
    #[serde(default)]
    attempt: Option<Box<AttemptInfo>>,
}

/// An [`Event`] whose `type` is its first field.
struct TagFirst(Event);

impl<'de> Deserialize<'de> for TagFirst {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TagFirst, D::Error> {
        deserializer.deserialize_map(TagFirstVisitor)
    }
}

struct TagFirstVisitor;

impl<'de> Visitor<'de> for TagFirstVisitor {
    type Value = TagFirst;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event with its type first")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TagFirst, A::Error> {
        if map.next_key::<&str>()? != Some("type") {
            return Err(A::Error::custom("the type is not the first field"));
        }
        let tag: &str = map.next_value()?;
        let fields = MapAccessDeserializer::new(map);
        let event = match tag {
            "created" => {
                let Created {
                    format_version,
                    user,
                    job_group_id,
                    secret_names,
                    ..
                } = fields_of(fields)?;
                Event::Created {
                    format_version,
                    user,
                    job_group_id,
                    secret_names,
                }
            }
            "spec_load_started" => unit(fields, Event::SpecLoadStarted)?,
            "spec_loaded" => {
                let SpecLoaded {
                    process,
                    size_bytes,
                    unsupported,
                    cores_mcpu,
                    memory_bytes,
                    input_files,
                    output_files,
                    image,
                    resources,
                    unknown_fields,
                    unknown_fields_omitted,
                    ..
                } = fields_of(fields)?;
                Event::SpecLoaded {
                    process,
                    size_bytes,
                    unsupported,
                    cores_mcpu,
                    memory_bytes,
                    input_files,
                    output_files,
                    image,
                    resources,
                    unknown_fields: UnknownFields::new(unknown_fields, unknown_fields_omitted),
                }
            }
            "resources_granted" => unit(fields, Event::ResourcesGranted)?,
            "resources_refused" => Event::ResourcesRefused {
                message: message(fields)?,
            },
            "spec_load_failed" => {
                let SpecLoadFailed { kind, message, .. } = fields_of(fields)?;
                Event::SpecLoadFailed { kind, message }
            }
            "inputs_staged" => {
                let Files {
                    files, size_bytes, ..
                } = fields_of(fields)?;
                Event::InputsStaged { files, size_bytes }
            }
            "inputs_failed" => Event::InputsFailed {
                message: message(fields)?,
            },
            "image_pulled" => {
                let ImagePulled {
                    image,
                    digest,
                    pulled,
                    ..
                } = fields_of(fields)?;
                Event::ImagePulled {
                    image,
                    digest,
                    pulled,
                }
            }
            "image_pull_failed" => {
                let ImagePullFailed { image, message, .. } = fields_of(fields)?;
                Event::ImagePullFailed { image, message }
            }
            "process_started" => {
                let ProcessStarted { pid, network, .. } = fields_of(fields)?;
                Event::ProcessStarted { pid, network }
            }
            "launch_failed" => Event::LaunchFailed {
                message: message(fields)?,
            },
            "process_exited" => {
                let ProcessExited {
                    exit, duration_ms, ..
                } = fields_of(fields)?;
                Event::ProcessExited { exit, duration_ms }
            }
            "outputs_uploaded" => {
                let Files {
                    files, size_bytes, ..
                } = fields_of(fields)?;
                Event::OutputsUploaded { files, size_bytes }
            }
            "outputs_failed" => Event::OutputsFailed {
                message: message(fields)?,
            },
            "cancel_requested" => unit(fields, Event::CancelRequested)?,
            "worker_restarted" => unit(fields, Event::WorkerRestarted)?,
            "started_delivered" => unit(fields, Event::StartedDelivered)?,
            "logs_uploaded" => unit(fields, Event::LogsUploaded)?,
            "logs_upload_failed" => Event::LogsUploadFailed {
                message: message(fields)?,
            },
            "complete_delivered" => unit(fields, Event::CompleteDelivered)?,
            _ => return Err(A::Error::custom("an event the fast path does not know")),
        };
        Ok(TagFirst(event))
    }
}

/// A variant's fields that also say whether a second `type` came along.
trait Fields {
    fn second_tag(&self) -> bool;
}

/// The rest of the map as a variant's fields; a second `type` is an error
/// here (the derived path decides what it is).
fn fields_of<'de, T, A>(fields: MapAccessDeserializer<A>) -> Result<T, A::Error>
where
    T: Deserialize<'de> + Fields,
    A: MapAccess<'de>,
{
    let value = T::deserialize(fields)?;
    match value.second_tag() {
        true => Err(A::Error::custom("a second type")),
        false => Ok(value),
    }
}

fn unit<'de, A: MapAccess<'de>>(
    fields: MapAccessDeserializer<A>,
    event: Event,
) -> Result<Event, A::Error> {
    let Unit { .. } = fields_of(fields)?;
    Ok(event)
}

fn message<'de, A: MapAccess<'de>>(fields: MapAccessDeserializer<A>) -> Result<String, A::Error> {
    let Message { message, .. } = fields_of(fields)?;
    Ok(message)
}

/// Declares the private mirror of a variant's fields (with the same serde
/// attributes as in [`Event`]), plus a catch for a second `type`.
macro_rules! variant_fields {
    ($($name:ident { $($(#[$attr:meta])* $field:ident: $ty:ty),* $(,)? })*) => {$(
        #[derive(Deserialize)]
        struct $name {
            $($(#[$attr])* $field: $ty,)*
            #[serde(rename = "type", default)]
            second_tag: Option<IgnoredAny>,
        }

        impl Fields for $name {
            fn second_tag(&self) -> bool {
                self.second_tag.is_some()
            }
        }
    )*};
}

variant_fields! {
    Unit {}
    Created {
        format_version: u32,
        #[serde(default)]
        user: String,
        #[serde(default)]
        job_group_id: i64,
        #[serde(default)]
        secret_names: Vec<String>,
    }
    SpecLoaded {
        process: ProcessKind,
        size_bytes: u64,
        #[serde(default)]
        unsupported: Vec<String>,
        #[serde(default)]
        cores_mcpu: u64,
        #[serde(default)]
        memory_bytes: u64,
        #[serde(default)]
        input_files: u32,
        #[serde(default)]
        output_files: u32,
        #[serde(default)]
        image: Option<String>,
        #[serde(default)]
        resources: Option<Box<serde_json::Value>>,
        #[serde(default)]
        unknown_fields: Vec<UnknownField>,
        #[serde(default)]
        unknown_fields_omitted: u32,
    }
    Message { message: String }
    ImagePulled { image: String, digest: String, pulled: bool }
    ImagePullFailed { image: String, message: String }
    SpecLoadFailed { kind: ErrorKind, message: String }
    Files { files: u32, size_bytes: u64 }
    ProcessStarted {
        pid: u32,
        #[serde(default)]
        network: Option<Box<JobAddress>>,
    }
    ProcessExited { exit: ExitStatus, duration_ms: u64 }
}

#[cfg(test)]
mod tests {
    use batch_worker_model::EVENT_VERSION;

    use super::*;

    fn every_event() -> Vec<Event> {
        let message = || "a \"quoted\" message\nwith ünïcode".to_owned();
        vec![
            Event::created(7),
            Event::Created {
                format_version: 2,
                user: "alice".into(),
                job_group_id: 3,
                secret_names: vec!["ns/gsa-key".into()],
            },
            Event::SpecLoadStarted,
            Event::SpecLoaded {
                process: ProcessKind::Other { name: "jvm".into() },
                size_bytes: 311,
                unsupported: vec!["gpu".into()],
                cores_mcpu: 1000,
                memory_bytes: 3_750_000_000,
                input_files: 2,
                output_files: 3,
                image: Some("registry.example:5000/team/image:1.2".into()),
                resources: Some(Box::new(
                    serde_json::json!({"cores_mcpu": 250, "storage_gib": 2}),
                )),
                unknown_fields: UnknownFields::new(
                    vec![
                        UnknownField {
                            path: "process.comand".into(),
                            suggestion: Some("process.command".into()),
                        },
                        UnknownField {
                            path: "x-ünïcode \"key\"".into(),
                            suggestion: None,
                        },
                    ],
                    3,
                ),
            },
            Event::ResourcesGranted,
            Event::ImagePulled {
                image: "ubuntu:24.04".into(),
                digest: format!("sha256:{}", "0f".repeat(32)),
                pulled: true,
            },
            Event::ImagePullFailed {
                image: "ubuntu:24.04".into(),
                message: message(),
            },
            Event::ProcessExited {
                exit: ExitStatus::OutOfMemory {
                    code: 137,
                    memory_limit_bytes: 1 << 30,
                },
                duration_ms: 12,
            },
            Event::ResourcesRefused { message: message() },
            Event::SpecLoadFailed {
                kind: ErrorKind::SpecTimeout,
                message: message(),
            },
            Event::InputsStaged {
                files: 2,
                size_bytes: 1 << 40,
            },
            Event::InputsFailed { message: message() },
            Event::process_started(4242),
            Event::LaunchFailed { message: message() },
            Event::ProcessExited {
                exit: ExitStatus::Signal { signal: 9 },
                duration_ms: 1200,
            },
            Event::OutputsUploaded {
                files: 3,
                size_bytes: 12,
            },
            Event::OutputsFailed { message: message() },
            Event::CancelRequested,
            Event::WorkerRestarted,
            Event::StartedDelivered,
            Event::LogsUploaded,
            Event::LogsUploadFailed { message: message() },
            Event::CompleteDelivered,
        ]
    }

    #[test]
    fn every_event_the_encoder_writes_takes_the_fast_path_to_the_same_record() {
        for (i, event) in every_event().into_iter().enumerate() {
            let record = JournalRecord {
                seq: i as u64 + 1,
                time_ms: 1_764_504_000_000,
                event_version: EVENT_VERSION,
                key: JobKey {
                    batch_id: 1,
                    job_id: 2,
                    attempt_id: "Xq3T9b".into(),
                },
                event,
                attempt: (i == 0).then(|| {
                    Box::new(AttemptInfo {
                        user: "u".into(),
                        job_group_id: 3,
                        secret_names: vec!["s".into()],
                    })
                }),
            };
            let payload = serde_json::to_vec(&record).unwrap();
            let fast = serde_json::from_slice::<FastRecord>(&payload)
                .unwrap_or_else(|e| panic!("{}: {e}", record.event.name()));
            assert_eq!(fast.event.0, record.event);
            assert_eq!(parse_record(&payload).unwrap(), record);
        }
    }

    #[test]
    fn payloads_off_the_fast_path_parse_as_the_derived_deserialize_says() {
        let key = r#""key":{"batch_id":1,"job_id":2,"attempt_id":"a"}"#;
        for event in [
            // The tag after a field, twice, unknown, escaped, missing.
            r#"{"pid":3,"type":"process_started"}"#,
            r#"{"type":"process_started","pid":3,"type":"process_started"}"#,
            r#"{"type":"process_started","type":"logs_uploaded"}"#,
            r#"{"type":"no_such_event"}"#,
            r#"{"type":"process_\u0073tarted","pid":3}"#,
            r#"{"pid":3}"#,
            r#"{}"#,
            // Extra fields, missing fields, wrong types.
            r#"{"type":"logs_uploaded","pid":3}"#,
            r#"{"type":"process_started","pid":3,"extra":[1,{"a":null}]}"#,
            r#"{"type":"process_started"}"#,
            r#"{"type":"process_started","pid":-1}"#,
            r#"{"type":"process_started","pid":3.0}"#,
            r#"{"type":"created","format_version":"7"}"#,
            r#"{"type":"spec_loaded","process":{"type":"docker"},"size_bytes":1}"#,
            r#"{"type":"process_exited","exit":{"code":0,"type":"code"},"duration_ms":1}"#,
            r#""logs_uploaded""#,
        ] {
            let payload =
                format!(r#"{{"seq":1,"time_ms":2,"event_version":2,{key},"event":{event}}}"#);
            let derived = serde_json::from_slice::<JournalRecord>(payload.as_bytes());
            let parsed = parse_record(payload.as_bytes());
            match (&derived, &parsed) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{event}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{event}"),
                _ => panic!("{event}: derived {derived:?}, parsed {parsed:?}"),
            }
        }
    }
}
