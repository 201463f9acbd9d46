//! The job-spec fields Hail knows, and the spec fields nobody knows.
//!
//! A spec field this worker does not model is ignored; one Hail does not
//! know either is most likely a typo (`timout`, `evn`), so the worker
//! records it as a warning with the attempt ([`unknown_fields`], journaled
//! in `spec_loaded.unknown_fields`) while the job still runs.
//!
//! [`SPEC_FIELDS`] is every field, at every nesting level, that Hail's
//! client, front end and driver put in a job spec or in a format-1 create
//! body's `job_spec` (which is the spec), so that Hail's own specs never
//! warn. It was read (not copied) from Hail's source at commit
//! [`HAIL_COMMIT`] (`hail-is/hail`):
//!
//! - `batch/batch/front_end/validate.py`: `job_validator`, the fields a
//!   client may send, per level (the deprecated top-level `command`,
//!   `image`, `pvc_size` are rewritten by the front end and never reach a
//!   worker; `gcsfuse` is what it renames `cloudfuse` to);
//! - `hail/python/hailtop/batch_client/aioclient.py` (`_create_job`) and
//!   `client.py` (`create_job`): the fields the client sets;
//! - `batch/batch/front_end/front_end.py` (`_create_jobs`): what the front
//!   end adds before it writes the spec: `job_group_id`, `cloud` (read),
//!   `resources.{req_cpu, req_memory, req_storage, cores_mcpu,
//!   memory_bytes, storage_gib, preemptible}`, `secrets[].mount_in_copy`;
//! - `batch/batch/driver/job.py` (`job_config`) and
//!   `batch/batch/batch_format_version.py`: the create body's `job_spec`
//!   (`attempt_id`, `job_group_id`, `service_account`, `secrets[].data`);
//! - `batch/batch/worker/worker.py` (`Job.__init__`, `DockerJob`,
//!   `JVMJob`, `Worker.create_job_2`): what Hail's worker reads.
//!
//! Every field this worker models (`job_id`, `process.{type, command,
//! image}`, `env[].{name, value}`, `timeout`, `resources.{cores_mcpu,
//! memory_bytes, storage_gib}`, `input_files[]` / `output_files[]`
//! `.{from, to}`, and the create body's per-attempt fields) is one of
//! Hail's, so the table is the whole set of known fields.

use batch_worker_model::{UnknownField, UnknownFields};
use serde_json::{Map, Value};

/// The commit of `hail-is/hail` [`SPEC_FIELDS`] was read from.
pub const HAIL_COMMIT: &str = "fd91ae342ffc0cdf15687047782f0752c31ee32b";

/// Most unknown fields one spec's warnings keep; the rest are counted
/// ([`UnknownFields::omitted`]), so that a spec of 10⁵ junk keys costs the
/// journal and the job table no more than 16.
pub const MAX_UNKNOWN_FIELDS: usize = 16;

/// Longest unknown field name kept, in characters (a longer one is cut and
/// ends with `…`).
pub const MAX_FIELD_NAME_CHARS: usize = 64;

/// What a known field holds, as far as the walk for unknown fields goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A value whose inside has no field names (a number, a string, a
    /// list of numbers or strings): not looked into.
    Value,
    /// An object with these fields.
    Object(&'static [Field]),
    /// A list of objects with these fields.
    List(&'static [Field]),
    /// An object whose keys are the user's (`attributes`, a secret's
    /// `data` file names): any key is fine.
    FreeKeys,
}

/// One known field: its name and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The field's name as it appears in the spec's JSON.
    pub name: &'static str,
    /// What it holds.
    pub shape: Shape,
}

const fn value(name: &'static str) -> Field {
    Field {
        name,
        shape: Shape::Value,
    }
}

const fn object(name: &'static str, fields: &'static [Field]) -> Field {
    Field {
        name,
        shape: Shape::Object(fields),
    }
}

const fn list(name: &'static str, fields: &'static [Field]) -> Field {
    Field {
        name,
        shape: Shape::List(fields),
    }
}

const fn free_keys(name: &'static str) -> Field {
    Field {
        name,
        shape: Shape::FreeKeys,
    }
}

/// `process`: the union of Hail's `docker` (`type`, `command`, `image`,
/// the deprecated `mount_docker_socket`) and `jvm` (`jar_spec`, `profile`)
/// processes.
const PROCESS: &[Field] = &[
    value("type"),
    value("command"),
    value("image"),
    value("mount_docker_socket"),
    object("jar_spec", &[value("type"), value("value")]),
    value("profile"),
];

/// `resources`: the client's (`cpu`, `memory`, `storage`, `machine_type`,
/// `preemptible`) and what the front end turns them into.
const RESOURCES: &[Field] = &[
    value("cpu"),
    value("memory"),
    value("storage"),
    value("machine_type"),
    value("preemptible"),
    value("req_cpu"),
    value("req_memory"),
    value("req_storage"),
    value("cores_mcpu"),
    value("memory_bytes"),
    value("storage_gib"),
];

/// `input_files[]` and `output_files[]`.
const TRANSFER: &[Field] = &[value("from"), value("to")];

/// `env[]`.
const ENV: &[Field] = &[value("name"), value("value")];

/// `cloudfuse[]` (and `gcsfuse[]`, its name once the front end stored it).
const CLOUDFUSE: &[Field] = &[value("bucket"), value("mount_path"), value("read_only")];

/// `secrets[]`: the client's and front end's, then the driver's `data`.
const SECRET: &[Field] = &[
    value("namespace"),
    value("name"),
    value("mount_path"),
    value("mount_in_copy"),
    free_keys("data"),
];

/// `service_account`.
const SERVICE_ACCOUNT: &[Field] = &[value("namespace"), value("name")];

/// Every field of a job spec Hail knows, top level first (see the module
/// documentation for where each comes from).
pub const SPEC_FIELDS: &[Field] = &[
    // validate.py `job_validator` (client fields).
    value("always_copy_output"),
    value("always_run"),
    free_keys("attributes"),
    list("env", ENV),
    list("cloudfuse", CLOUDFUSE),
    list("input_files", TRANSFER),
    value("job_id"),
    value("mount_tokens"),
    value("network"),
    value("n_max_attempts"),
    value("unconfined"),
    list("output_files", TRANSFER),
    value("parent_ids"),
    value("absolute_parent_ids"),
    value("in_update_parent_ids"),
    value("absolute_job_group_id"),
    value("in_update_job_group_id"),
    value("port"),
    object("process", PROCESS),
    value("regions"),
    value("requester_pays_project"),
    object("resources", RESOURCES),
    list("secrets", SECRET),
    object("service_account", SERVICE_ACCOUNT),
    value("timeout"),
    value("user_code"),
    // front_end.py `_create_jobs`: added or read before the spec is written.
    value("job_group_id"),
    value("cloud"),
    list("gcsfuse", CLOUDFUSE),
    // driver/job.py `job_config`: the format-1 create body's `job_spec`.
    value("attempt_id"),
];

/// The number of fields in [`SPEC_FIELDS`], every level counted (a field
/// of a list's entries once).
pub fn table_size() -> usize {
    fn count(fields: &[Field]) -> usize {
        fields
            .iter()
            .map(|f| {
                1 + match f.shape {
                    Shape::Object(inner) | Shape::List(inner) => count(inner),
                    Shape::Value | Shape::FreeKeys => 0,
                }
            })
            .sum()
    }
    count(SPEC_FIELDS)
}

/// The unknown fields found so far: the first [`MAX_UNKNOWN_FIELDS`], and
/// how many more.
#[derive(Default)]
struct Found {
    fields: Vec<UnknownField>,
    omitted: u32,
}

impl Found {
    fn found(&mut self, prefix: &str, name: &str, level: &[Field]) {
        if self.fields.len() >= MAX_UNKNOWN_FIELDS {
            self.omitted = self.omitted.saturating_add(1);
            return;
        }
        self.fields.push(UnknownField {
            path: format!("{prefix}{}", shown_name(name)),
            suggestion: nearest(name, level).map(|near| format!("{prefix}{near}")),
        });
    }
}

/// The fields of `spec` that are not in [`SPEC_FIELDS`] at their level:
/// the first [`MAX_UNKNOWN_FIELDS`] in the spec's order (a level's own
/// fields before those inside them), each once, and how many more. The
/// walk looks only inside known objects and lists, so it takes time
/// linear in the spec's size.
pub fn unknown_fields(spec: &Map<String, Value>) -> UnknownFields {
    let mut found = Found::default();
    walk(spec, SPEC_FIELDS, "", &mut found);
    UnknownFields::new(found.fields, found.omitted)
}

fn walk(object: &Map<String, Value>, level: &[Field], prefix: &str, found: &mut Found) {
    let mut nested = Vec::new();
    for (name, value) in object {
        match level.iter().find(|f| f.name == name.as_str()) {
            None => found.found(prefix, name, level),
            Some(field) => match (field.shape, value) {
                (Shape::Object(inner), Value::Object(_))
                | (Shape::List(inner), Value::Array(_)) => nested.push((field.name, inner, value)),
                _ => {}
            },
        }
    }
    for (name, inner, value) in nested {
        match value {
            Value::Object(map) => walk(map, inner, &format!("{prefix}{name}."), found),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Object(map) = item {
                        walk(map, inner, &format!("{prefix}{name}[{i}]."), found);
                    }
                }
            }
            _ => {}
        }
    }
}

/// `name` as a warning shows it: at most [`MAX_FIELD_NAME_CHARS`]
/// characters, control characters escaped (`\n`).
fn shown_name(name: &str) -> String {
    let mut shown = String::new();
    for (i, c) in name.chars().enumerate() {
        if i == MAX_FIELD_NAME_CHARS {
            shown.push('…');
            break;
        }
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// The known field of `level` nearest to `name` (Damerau–Levenshtein
/// distance, letter case ignored), if it is near enough to be a typo: at
/// most 1 edit for a name of up to 4 characters, 2 for a longer one.
fn nearest(name: &str, level: &[Field]) -> Option<&'static str> {
    // No known name is longer than 24 characters: a longer one is no typo.
    if name.chars().count() > 24 {
        return None;
    }
    let lower = name.to_lowercase();
    let limit = if lower.chars().count() <= 4 { 1 } else { 2 };
    level
        .iter()
        .map(|f| (strsim::damerau_levenshtein(&lower, f.name), f.name))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, near)| near)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(spec: Value) -> Vec<(String, Option<String>)> {
        let Value::Object(map) = spec else {
            panic!("an object")
        };
        unknown_fields(&map)
            .fields()
            .iter()
            .map(|f| (f.path.clone(), f.suggestion.clone()))
            .collect()
    }

    #[test]
    fn typos_are_found_at_their_level_with_the_nearest_known_name() {
        let found = unknown(serde_json::json!({
            "job_id": 1,
            "timout": 3,
            "evn": [],
            "process": {"type": "docker", "comand": ["true"]},
            "resources": {"memroy": "1Gi"},
            "input_files": [{"from": "s3://b/x", "to": "x"}, {"form": "s3://b/y", "to": "y"}],
            "secrets": [{"name": "n", "mount_path": "/m", "data": {"any name": "eA=="}}],
            "attributes": {"anything": "goes"},
            "zzzzzz": 1,
        }));
        let near = |path: &str, near: Option<&str>| (path.to_owned(), near.map(str::to_owned));
        assert_eq!(
            found,
            [
                near("evn", Some("env")),
                near("timout", Some("timeout")),
                near("zzzzzz", None),
                near("input_files[1].form", Some("input_files[1].from")),
                near("process.comand", Some("process.command")),
                near("resources.memroy", Some("resources.memory")),
            ]
        );
    }

    #[test]
    fn a_flood_of_junk_keys_keeps_sixteen_short_names_and_counts_the_rest() {
        let mut map = Map::new();
        map.insert("job_id".into(), 1.into());
        for i in 0..100_000 {
            map.insert(format!("{}{i}", "k".repeat(200)), Value::Null);
        }
        let found = unknown_fields(&map);
        assert_eq!(found.fields().len(), MAX_UNKNOWN_FIELDS);
        assert_eq!(found.omitted(), 100_000 - MAX_UNKNOWN_FIELDS as u32);
        for field in found.fields() {
            assert_eq!(field.path.chars().count(), MAX_FIELD_NAME_CHARS + 1);
            assert!(field.path.ends_with('…'), "{}", field.path);
        }
    }

    #[test]
    fn control_characters_in_a_name_are_escaped() {
        let found = unknown(serde_json::json!({"a\nb": 1}));
        assert_eq!(found[0].0, "a\\nb");
    }

    #[test]
    fn the_table_has_no_duplicate_names_at_a_level() {
        fn check(fields: &[Field]) {
            let mut names: Vec<_> = fields.iter().map(|f| f.name).collect();
            names.sort_unstable();
            let count = names.len();
            names.dedup();
            assert_eq!(names.len(), count, "{names:?}");
            for f in fields {
                if let Shape::Object(inner) | Shape::List(inner) = f.shape {
                    check(inner);
                }
            }
        }
        check(SPEC_FIELDS);
        assert!(table_size() > 50, "{}", table_size());
    }
}
