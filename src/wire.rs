//! The wire contract with Hail Batch's driver: the create body, the status
//! JSON and the `job_started` / `job_complete` bodies.
//!
//! Source: `DESIGN.md` ("Wire contract"), checked against the byte-exact
//! samples (copied from the team's `shared/samples/` into `tests/fixtures/samples/`) by the
//! integration tests.
//!
//! This file is long (about 940 lines, a third of them tests) because it is the whole wire
//! contract with the driver in one place: the create body and its
//! field-naming validation, secrets, and the report bodies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::instance_config::QuantifiedResource;

/// The `format_version`s this worker understands: 1 (spec inline in the
/// create body) and 2 through 7 (spec in a bunch in the spec store).
pub const SUPPORTED_FORMAT_VERSIONS: std::ops::RangeInclusive<u32> = 1..=7;

/// Longest accepted `token` and `attempt_id`, in characters.
pub const MAX_ID_CHARS: usize = 64;

/// The version number of the status bodies the worker sends (`status.version`).
pub const STATUS_VERSION: u32 = 5;

/// A secret value: deserialised from the wire, never serialised, shown as
/// `<redacted>` by `Debug`, and overwritten with zeros when dropped (once
/// its job no longer needs it). Read it with [`Secret::expose`].
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret<T: Wipe>(T);

/// A value whose bytes can be overwritten in place before it is freed
/// (`zeroize`); what a [`Secret`] may hold.
pub trait Wipe {
    /// Overwrites every byte with zero (and empties the value).
    fn wipe(&mut self);
}

impl Wipe for Vec<u8> {
    fn wipe(&mut self) {
        zeroize::Zeroize::zeroize(self);
    }
}

impl Wipe for String {
    fn wipe(&mut self) {
        zeroize::Zeroize::zeroize(self);
    }
}

impl Wipe for BTreeMap<String, String> {
    fn wipe(&mut self) {
        for (mut name, mut value) in std::mem::take(self) {
            zeroize::Zeroize::zeroize(&mut name);
            zeroize::Zeroize::zeroize(&mut value);
        }
    }
}

impl<T: Wipe> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.wipe();
    }
}

impl<T: Wipe> Secret<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The secret value, for the one place that must use it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

/// Compares the values (tests compare specs); reveals nothing by itself.
impl<T: PartialEq + Wipe> PartialEq for Secret<T> {
    fn eq(&self, other: &Secret<T>) -> bool {
        self.0 == other.0
    }
}

impl<T: Wipe> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The body of `POST /api/v1alpha/batches/jobs/create`, as sent.
///
/// Unknown fields are ignored. Secrets (`gsa_key`, `job_spec.secrets[].data`)
/// are kept in memory only; see [`CreateJob::redacted_secrets`].
#[derive(Debug, Clone, Deserialize)]
pub struct CreateJobBody {
    /// The batch's id (≥ 0).
    pub batch_id: i64,
    /// The job's id (≥ 0).
    pub job_id: i64,
    /// 1: the whole spec is in `job_spec`; 2..=7: the spec is in a bunch.
    pub format_version: i64,
    /// The bunch's random alphanumeric token (required for format > 1).
    pub token: Option<String>,
    /// The first job id of the bunch (required for format > 1, ≤ `job_id`).
    pub start_job_id: Option<i64>,
    /// The user the job runs for.
    pub user: String,
    /// Credential files, `{file name: base64 content}`. Secret.
    #[serde(default)]
    pub gsa_key: Option<Secret<BTreeMap<String, String>>>,
    /// When the driver queued the job, ms since the Unix epoch.
    #[serde(default)]
    pub queue_time: Option<i64>,
    /// Per-attempt fields (and, for format 1, the whole spec).
    pub job_spec: Map<String, Value>,
}

/// The per-attempt fields the driver sends in `job_spec`, which override the
/// stored spec's.
#[derive(Debug, Clone, Deserialize)]
pub struct AttemptFields {
    /// The attempt's id: non-empty, alphanumeric, at most [`MAX_ID_CHARS`].
    pub attempt_id: String,
    /// The job group (≥ 0).
    pub job_group_id: i64,
    /// Secrets to mount. `data` is secret.
    #[serde(default)]
    pub secrets: Vec<SecretMount>,
    /// Environment variables appended after the spec's own (Hail's driver
    /// sends `KUBECONFIG` here for a job with a service account).
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// The job's Kubernetes service account, `{"namespace", "name"}` or
    /// `null`, as Hail's driver sends it. Its credentials arrive as the
    /// `kube-config` secret; the worker only carries the value.
    #[serde(default)]
    pub service_account: Option<ServiceAccount>,
}

/// `job_spec.service_account` (Hail's driver, `driver/job.py` `job_config`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ServiceAccount {
    /// Its Kubernetes namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// One `job_spec.secrets[]` entry.
///
/// Hail's driver (`driver/job.py` `job_config`) sends the user's key secret
/// with `namespace` and `mount_in_copy`, and, for a job with a service
/// account, a `kube-config` secret with neither (sample
/// `create-with-service-account.json`): both are optional here.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct SecretMount {
    /// The secret's name.
    pub name: String,
    /// Its Kubernetes namespace, when the driver names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Whether Hail mounts it in the input and output copy containers too
    /// (absent: false). This worker stages files itself, so it only shows
    /// the flag.
    #[serde(default)]
    pub mount_in_copy: bool,
    /// Where the job expects the files.
    pub mount_path: String,
    /// `{file name: base64 content}`. Secret: never serialised.
    #[serde(default, skip_serializing)]
    pub data: Option<Secret<BTreeMap<String, String>>>,
}

impl SecretMount {
    /// The secret's files, decoded: `(file name, bytes)`, in name order.
    /// The bytes are secret: write them only into the job's secret mount.
    /// Validated at create, so decoding cannot fail here; a file that
    /// would is skipped.
    pub fn files(&self) -> Vec<(String, Secret<Vec<u8>>)> {
        use base64::Engine;
        let Some(data) = &self.data else {
            return Vec::new();
        };
        data.expose()
            .iter()
            .filter_map(|(name, content)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(content)
                    .ok()?;
                Some((name.clone(), Secret::new(bytes)))
            })
            .collect()
    }
}

/// Checks `job_spec.secrets`: each `mount_path` absolute, without `.` or
/// `..` components, not `/`, and not mounted twice; each file name a
/// single path component; each file's content base64. The messages never
/// show a secret's content.
fn validate_secrets(secrets: &[SecretMount]) -> Result<(), FieldError> {
    use base64::Engine;
    use std::path::{Component, Path};
    let mut seen: std::collections::BTreeSet<std::path::PathBuf> =
        std::collections::BTreeSet::new();
    for (i, secret) in secrets.iter().enumerate() {
        let field = format!("job_spec.secrets[{i}].mount_path");
        let path = Path::new(&secret.mount_path);
        // `components()` drops `.`: the text is checked too.
        let plain = path
            .components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
            && !secret.mount_path.split('/').any(|part| part == ".");
        if !path.is_absolute()
            || !plain
            || path.parent().is_none()
            || secret.mount_path.contains('\0')
            || secret.mount_path.len() > 1024
        {
            return Err(FieldError::new(
                field,
                format!(
                    "expected an absolute path below / without . or .., at most 1024 bytes (e.g. /gsa-key), got {:?}",
                    truncate(&secret.mount_path, 200)
                ),
            ));
        }
        let normal: std::path::PathBuf = path.components().collect();
        // The container's own /proc and /sys: runc refuses mounts there.
        if let Some(system) = ["/proc", "/sys"]
            .into_iter()
            .find(|s| normal.starts_with(s))
        {
            return Err(FieldError::new(
                field,
                format!(
                    "{:?} is inside {system}, which the container runtime mounts itself",
                    truncate(&secret.mount_path, 200)
                ),
            ));
        }
        // One mount inside another would hide it (runc fails the start):
        // refused here, naming the other. Ordered by components, the paths
        // below `normal` follow it in `seen`, so each check is a lookup.
        let clash = normal
            .ancestors()
            .find(|a| seen.contains(*a))
            .map(|a| {
                (
                    a.to_path_buf(),
                    if a == normal { "is" } else { "is inside" },
                )
            })
            .or_else(|| {
                seen.range(normal.clone()..)
                    .next()
                    .filter(|below| below.starts_with(&normal))
                    .map(|below| (below.clone(), "contains"))
            });
        if let Some((other, relation)) = clash {
            return Err(FieldError::new(
                field,
                format!(
                    "{:?} {relation} {:?}, the mount path of an earlier secret (mount paths must differ and not nest)",
                    truncate(&secret.mount_path, 200),
                    truncate(&other.to_string_lossy(), 200),
                ),
            ));
        }
        seen.insert(normal);
        for (name, content) in secret.data.iter().flat_map(|d| d.expose()) {
            let field = format!("job_spec.secrets[{i}].data");
            let one_component = !name.is_empty()
                && name != "."
                && name != ".."
                && !name.contains('/')
                && !name.contains('\0');
            if !one_component {
                return Err(FieldError::new(
                    field,
                    format!(
                        "file name {:?}: expected a name without / (not . or ..)",
                        truncate(name, 200)
                    ),
                ));
            }
            if base64::engine::general_purpose::STANDARD
                .decode(content)
                .is_err()
            {
                return Err(FieldError::new(
                    field,
                    format!(
                        "file {name:?}: expected base64 content (not shown: the field is secret)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// One environment variable, `{name, value}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct EnvVar {
    /// Non-empty, without `=` or NUL.
    pub name: String,
    /// Without NUL.
    pub value: String,
}

/// A create body that failed validation: which field, what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field's path, e.g. `job_spec.attempt_id`, or `body` for the
    /// whole body.
    pub field: String,
    /// What was expected and what came.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Where a job's spec comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecSource {
    /// Format 1: the create body's `job_spec` is the spec.
    Inline(Map<String, Value>),
    /// Format > 1: a bunch in the spec store.
    Bunch {
        /// The bunch's token (validated alphanumeric).
        token: String,
        /// The bunch's first job id (≤ the job's id).
        start_job_id: i64,
    },
}

/// A validated create request.
#[derive(Debug, Clone)]
pub struct CreateJob {
    /// The batch's id.
    pub batch_id: i64,
    /// The job's id.
    pub job_id: i64,
    /// The body's `format_version` (in [`SUPPORTED_FORMAT_VERSIONS`]).
    pub format_version: u32,
    /// The user.
    pub user: String,
    /// Where the spec is.
    pub spec_source: SpecSource,
    /// The per-attempt overrides.
    pub attempt: AttemptFields,
    /// Queue time, ms since the Unix epoch.
    pub queue_time: Option<i64>,
    /// Credential files. Secret: kept in memory only.
    pub gsa_key: Option<Secret<BTreeMap<String, String>>>,
}

impl CreateJob {
    /// Parses and validates a create body.
    ///
    /// # Errors
    /// A [`FieldError`] naming the first offending field: `body` for bytes
    /// that are not a JSON object, otherwise the field's path.
    pub fn parse(bytes: &[u8]) -> Result<CreateJob, FieldError> {
        let body: CreateJobBody = from_json(bytes, "")?;
        CreateJob::validate(body)
    }

    fn validate(body: CreateJobBody) -> Result<CreateJob, FieldError> {
        non_negative("batch_id", body.batch_id)?;
        non_negative("job_id", body.job_id)?;
        let format_version = u32::try_from(body.format_version)
            .ok()
            .filter(|v| SUPPORTED_FORMAT_VERSIONS.contains(v))
            .ok_or_else(|| {
                FieldError::new(
                    "format_version",
                    format!(
                        "expected an integer in {}..={}, got {}",
                        SUPPORTED_FORMAT_VERSIONS.start(),
                        SUPPORTED_FORMAT_VERSIONS.end(),
                        body.format_version
                    ),
                )
            })?;
        if body.user.is_empty() {
            return Err(FieldError::new("user", "expected a non-empty string"));
        }
        if body.user.len() > MAX_USER_BYTES {
            return Err(FieldError::new(
                "user",
                format!(
                    "expected at most {MAX_USER_BYTES} bytes, got {}",
                    body.user.len()
                ),
            ));
        }
        let attempt: AttemptFields = serde_path_to_error::deserialize(Value::Object(
            body.job_spec.clone(),
        ))
        .map_err(|e| {
            let path = e.path().to_string();
            field_from_serde("job_spec", &path, e.inner())
        })?;
        safe_id("job_spec.attempt_id", &attempt.attempt_id)?;
        non_negative("job_spec.job_group_id", attempt.job_group_id)?;
        validate_env("job_spec.env", &attempt.env)?;
        validate_secrets(&attempt.secrets)?;
        if let Some(token) = &body.token {
            safe_id("token", token)?;
        }
        let spec_source = if format_version == 1 {
            // The secrets' data must not travel with the spec.
            let mut spec = body.job_spec;
            spec.remove("secrets");
            SpecSource::Inline(spec)
        } else {
            let token = body.token.ok_or_else(|| {
                FieldError::new(
                    "token",
                    format!(
                        "expected the bunch's token (format_version {format_version}), got null"
                    ),
                )
            })?;
            safe_id("token", &token)?;
            let start_job_id = body.start_job_id.ok_or_else(|| {
                FieldError::new(
                    "start_job_id",
                    format!("expected the bunch's first job id (format_version {format_version}), got null"),
                )
            })?;
            non_negative("start_job_id", start_job_id)?;
            if start_job_id > body.job_id {
                return Err(FieldError::new(
                    "start_job_id",
                    format!(
                        "expected at most job_id ({}), got {start_job_id}",
                        body.job_id
                    ),
                ));
            }
            SpecSource::Bunch {
                token,
                start_job_id,
            }
        };
        let job = CreateJob {
            batch_id: body.batch_id,
            job_id: body.job_id,
            format_version,
            user: body.user,
            spec_source,
            attempt,
            queue_time: body.queue_time,
            gsa_key: body.gsa_key,
        };
        // The names are journaled with the attempt and shown in its status.
        let names_bytes = |names: &mut dyn Iterator<Item = usize>| names.sum::<usize>();
        let key_files = names_bytes(
            &mut job
                .gsa_key
                .iter()
                .flat_map(|files| files.expose().keys().map(|f| f.len() + 8)),
        );
        let secrets = names_bytes(&mut job.attempt.secrets.iter().map(|s| s.name.len()));
        for (field, bytes) in [("gsa_key", key_files), ("job_spec.secrets", secrets)] {
            if bytes > MAX_SECRET_NAMES_BYTES {
                return Err(FieldError::new(
                    field,
                    format!(
                        "expected names of at most {MAX_SECRET_NAMES_BYTES} bytes in all, got {bytes}"
                    ),
                ));
            }
        }
        Ok(job)
    }

    /// The names of the secrets this request carries (`gsa_key` files and
    /// `secrets[].name`), never their values: what logs and status may show.
    pub fn redacted_secrets(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .gsa_key
            .iter()
            .flat_map(|files| files.expose().keys().map(|f| format!("gsa_key/{f}")))
            .collect();
        names.extend(self.attempt.secrets.iter().map(|s| s.name.clone()));
        names
    }
}

/// Longest `user` taken, in bytes (it is journaled with every attempt).
pub const MAX_USER_BYTES: usize = 1024;

/// Most bytes of secret names (`gsa_key` file names, `job_spec.secrets[]`
/// names) one create may carry, per field: they are journaled with the
/// attempt and shown in its status.
pub const MAX_SECRET_NAMES_BYTES: usize = 64 * 1024;

/// Deserialises JSON, naming the failing field (`prefix` + serde's path).
///
/// # Errors
/// `body` (or `prefix`) when the bytes are empty or not JSON; the field's
/// path when a value has the wrong type or a required field is missing.
pub fn from_json<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    prefix: &str,
) -> Result<T, FieldError> {
    let whole = if prefix.is_empty() { "body" } else { prefix };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(FieldError::new(
            whole,
            "expected a JSON object, got an empty body",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            return FieldError::new(whole, format!("expected a JSON object: {inner}"));
        }
        field_from_serde(prefix, &path, &inner)
    })?;
    de.end().map_err(|e| {
        FieldError::new(whole, format!("unexpected data after the JSON value: {e}"))
    })?;
    Ok(value)
}

/// Turns serde's message into a field error; "missing field `x`" names `x`.
/// For secret fields (`gsa_key`, `job_spec.secrets[].data`) the offending
/// value is not repeated, only what was expected.
fn field_from_serde(prefix: &str, path: &str, err: &serde_json::Error) -> FieldError {
    let text = err.to_string();
    let mut text = text.split(" at line ").next().unwrap_or(&text).to_owned();
    let mut field = join_path(prefix, if path == "." { "" } else { path });
    // Names no value, so also for secret fields.
    if let Some(name) = text
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        field = join_path(&field, name);
        return FieldError::new(field, "required field is missing");
    }
    if is_secret_field(&field) {
        let expected = text.rsplit_once(", expected ").map(|(_, e)| e.to_owned());
        text = match expected {
            Some(e) => format!("invalid value (not shown: the field is secret), expected {e}"),
            None => "invalid value (not shown: the field is secret)".to_owned(),
        };
    }
    if field.is_empty() {
        field = "body".into();
    }
    FieldError::new(field, text)
}

/// `gsa_key` and anything in a `secrets` list (or the list itself, when
/// it is not a list) is never echoed.
fn is_secret_field(field: &str) -> bool {
    field == "gsa_key"
        || field.starts_with("gsa_key.")
        || field.ends_with("secrets")
        || field.contains("secrets[")
}

fn join_path(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (false, true) => a.to_owned(),
        (false, false) => format!("{a}.{b}"),
    }
}

fn non_negative(field: &str, value: i64) -> Result<(), FieldError> {
    if value < 0 {
        return Err(FieldError::new(
            field,
            format!("expected a non-negative integer, got {value}"),
        ));
    }
    Ok(())
}

/// Ids that become parts of object keys and directory names: non-empty,
/// ASCII alphanumeric, at most [`MAX_ID_CHARS`] characters.
fn safe_id(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty()
        || value.chars().count() > MAX_ID_CHARS
        || !value.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(FieldError::new(
            field,
            format!(
                "expected 1 to {MAX_ID_CHARS} ASCII letters and digits, got {:?}",
                truncate(value, 80)
            ),
        ));
    }
    Ok(())
}

/// Checks environment variables: names non-empty without `=` or NUL,
/// values without NUL.
///
/// # Errors
/// The first bad entry, e.g. `job_spec.env[2].name`.
pub fn validate_env(field: &str, env: &[EnvVar]) -> Result<(), FieldError> {
    for (i, var) in env.iter().enumerate() {
        if var.name.is_empty() || var.name.contains(['=', '\0']) {
            return Err(FieldError::new(
                format!("{field}[{i}].name"),
                format!(
                    "expected a non-empty name without '=' or NUL, got {:?}",
                    truncate(&var.name, 80)
                ),
            ));
        }
        if var.value.contains('\0') {
            return Err(FieldError::new(
                format!("{field}[{i}].value"),
                "expected a value without NUL",
            ));
        }
    }
    Ok(())
}

/// `text` safe to print on a terminal: newlines and tabs kept, every other
/// control character (ESC, NUL, ...) and every bidirectional formatting
/// character (U+202A..U+202E, U+2066..U+2069, U+200E, U+200F) written as
/// its `\u{..}` escape, so that a job's user name or message cannot move
/// the cursor, recolour or reorder what follows.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// What [`truncate`] puts where it cut.
pub const CUT_MARKER: &str = " […]";

/// `s` shortened for an error message: unchanged up to `max` characters
/// (chars, not bytes), else cut at its last word boundary (before a space,
/// or after punctuation such as `,`, `;`, `/`, `)`) within the first `max`
/// characters and followed by [`CUT_MARKER`]; only when no boundary falls
/// in the last third of those characters (one long token: an id, a path
/// without separators) is a word cut, and then the marker says so too.
/// At most `max` + 4 characters.
pub fn truncate(s: &str, max: usize) -> String {
    let Some((at, _)) = s.char_indices().nth(max) else {
        return s.to_owned();
    };
    let head = &s[..at];
    // A boundary is looked for in the last third of what fits.
    let floor = head
        .char_indices()
        .nth(max - max / 3)
        .map_or(head.len(), |(i, _)| i);
    let boundary = if s[at..].starts_with(char::is_whitespace) {
        Some(at)
    } else {
        head.char_indices()
            .rev()
            .take_while(|(i, _)| *i >= floor)
            .find_map(|(i, c)| {
                if c.is_whitespace() {
                    Some(i)
                } else if matches!(c, ',' | ';' | ':' | '.' | '!' | '?' | ')' | ']' | '}' | '/') {
                    Some(i + c.len_utf8())
                } else {
                    None
                }
            })
    };
    let kept = boundary.map_or(head, |i| head[..i].trim_end());
    if kept.is_empty() {
        format!("{head}{CUT_MARKER}")
    } else {
        format!("{kept}{CUT_MARKER}")
    }
}

/// `POST {driver}/api/v1alpha/instances/job_started` body.
/// Sample: `tests/fixtures/samples/job_started.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStartedBody {
    /// The attempt's status.
    pub status: JobStartedStatus,
}

/// The `status` object of [`JobStartedBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStartedStatus {
    /// Always [`STATUS_VERSION`].
    pub version: u32,
    /// The batch's id.
    pub batch_id: i64,
    /// The job's id.
    pub job_id: i64,
    /// The attempt's id.
    pub attempt_id: String,
    /// When the job's cores were granted (Hail's `start_time`), ms since
    /// the Unix epoch.
    pub start_time: i64,
    /// What the attempt is billed for: Hail's
    /// `instance_config.quantified_resources(...)`, `[{name, quantity}]`
    /// (`[]` on a worker without an instance config).
    pub resources: Vec<QuantifiedResource>,
}

/// `POST {driver}/api/v1alpha/billing_update` body (Hail's
/// `Worker.send_billing_update`; sample `hail/billing_update.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BillingUpdateBody {
    /// When the worker took the list, ms since the Unix epoch: the driver
    /// sets each attempt's `rollup_time` to it.
    pub timestamp: i64,
    /// The attempts whose `job_started` was acknowledged and that have not
    /// ended, in the worker's table order.
    pub attempts: Vec<BillingAttempt>,
}

/// One attempt of a [`BillingUpdateBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingAttempt {
    /// The batch.
    pub batch_id: i64,
    /// The job.
    pub job_id: i64,
    /// The attempt.
    pub attempt_id: String,
}

/// `POST {driver}/api/v1alpha/instances/job_complete` body.
/// Samples: `tests/fixtures/samples/job_complete-failed.json`, `-error.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCompleteBody {
    /// The attempt's final status.
    pub status: JobCompleteStatus,
    /// Whether a `job_started` for this attempt reached the driver.
    pub marked_job_started: bool,
}

/// The `status` object of [`JobCompleteBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCompleteStatus {
    /// Always [`STATUS_VERSION`].
    pub version: u32,
    /// The batch's id.
    pub batch_id: i64,
    /// The job's id.
    pub job_id: i64,
    /// The attempt's id.
    pub attempt_id: String,
    /// The job group.
    pub job_group_id: i64,
    /// `succeeded`, `failed` or `error`.
    pub state: String,
    /// When the job's cores were granted (or, if it ended before, its
    /// end), ms since the Unix epoch.
    pub start_time: i64,
    /// When the attempt ended, ms since the Unix epoch.
    pub end_time: i64,
    /// What the attempt is billed for, as in `job_started`.
    pub resources: Vec<QuantifiedResource>,
    /// Hail's `BatchFormatVersion.db_status` of the full status: for
    /// format 1 the whole status object; else `[exit code or null,
    /// end_time - start_time in ms or null]` (samples
    /// `hail/job_complete-fv*.json`).
    pub status: Value,
}

#[cfg(test)]
mod tests {
    #[test]
    fn printable_escapes_terminal_controls_and_bidi_overrides_only() {
        assert_eq!(printable("a\tb\nc ü"), "a\tb\nc ü");
        assert_eq!(
            printable("x\u{1b}[31mred\u{0}\u{202e}y"),
            "x\\u{1b}[31mred\\u{0}\\u{202e}y"
        );
    }

    #[test]
    fn truncate_cuts_at_a_word_boundary_with_a_marker() {
        use super::{truncate, CUT_MARKER};
        // Short enough: unchanged.
        assert_eq!(truncate("this job", 8), "this job");
        assert_eq!(truncate("", 0), "");
        // The cuts a user saw ("deadl…", "this job …"): whole words now.
        let deadline = "the spec load exceeded its deadline of 60 s";
        assert_eq!(truncate(deadline, 32), "the spec load exceeded its […]");
        let this_job = "a spec read failed for this job because its bunch is gone";
        assert_eq!(truncate(this_job, 30), "a spec read failed for this […]");
        assert_eq!(truncate(this_job, 27), "a spec read failed for this […]");
        // The next character a space: everything that fits is kept.
        assert_eq!(truncate("retry this job now", 14), "retry this job […]");
        // After punctuation.
        assert_eq!(
            truncate("gs://bucket/batch/specs/abcdef", 26),
            "gs://bucket/batch/specs/ […]"
        );
        assert_eq!(truncate("job 3: deadline", 9), "job 3: […]");
        // One long token: a character cut, marked.
        assert_eq!(truncate("abcdefghijklmnop", 6), "abcdef […]");
        // A boundary far back is not used: "a " and 29 letters cut at 20.
        let long = format!("a {}", "x".repeat(29));
        assert_eq!(
            truncate(&long, 20),
            format!("a {}{CUT_MARKER}", "x".repeat(18))
        );
        // Multi-byte text: cut at characters, never inside one.
        assert_eq!(
            truncate("délai dépassé pour ce travail", 16),
            "délai dépassé […]"
        );
        assert_eq!(truncate("ジョブの期限を超えました", 5), "ジョブの期 […]");
        assert_eq!(truncate("ééééé", 3), "ééé […]");
        for max in 0..40 {
            let cut = truncate(deadline, max);
            assert!(cut.chars().count() <= max + 4, "{max}: {cut}");
            assert!(cut.ends_with(CUT_MARKER), "{max}: {cut}");
            let kept = cut.trim_end_matches(CUT_MARKER);
            assert!(deadline.starts_with(kept), "{max}: {cut}");
            assert!(
                !kept.contains("deadl") || kept.contains("deadline"),
                "{max}: {cut}"
            );
        }
    }

    use super::*;

    #[test]
    fn a_user_or_secret_names_past_their_bounds_are_refused_naming_the_field() {
        let body = |user: &str, key_files: usize| {
            let files: serde_json::Map<String, Value> = (0..key_files)
                .map(|i| (format!("key-file-{i:08}.json"), Value::from("c2VjcmV0")))
                .collect();
            serde_json::json!({
                "batch_id": 1, "job_id": 1, "format_version": 7, "token": "t",
                "start_job_id": 1, "user": user, "gsa_key": files, "queue_time": null,
                "job_spec": {"attempt_id": "a", "job_group_id": 0, "secrets": []},
            })
            .to_string()
        };
        assert!(CreateJob::parse(body("u", 10).as_bytes()).is_ok());
        let long = "u".repeat(MAX_USER_BYTES + 1);
        let err = CreateJob::parse(body(&long, 0).as_bytes()).unwrap_err();
        assert_eq!(err.field, "user");
        let err = CreateJob::parse(body("u", 3000).as_bytes()).unwrap_err();
        assert_eq!(err.field, "gsa_key");
        assert!(
            err.message.contains("at most 65536 bytes"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("c2VjcmV0"), "{}", err.message);
    }

    fn mounts(paths: &[&str]) -> Vec<SecretMount> {
        paths
            .iter()
            .map(|p| SecretMount {
                name: "s".into(),
                namespace: Some("n".into()),
                mount_in_copy: false,
                mount_path: (*p).into(),
                data: None,
            })
            .collect()
    }

    #[test]
    fn secret_mount_paths_must_differ_and_not_nest() {
        // Siblings sharing a prefix of letters are not nested.
        validate_secrets(&mounts(&[
            "/gsa-key",
            "/gsa-key2",
            "/a/b",
            "/a/c",
            "/b",
            "/procfs",
        ]))
        .unwrap();
        for bad in ["/a/./b", "/a/.", "/proc/x", "/sys", "/sys/fs/x"] {
            let err = validate_secrets(&mounts(&[bad])).unwrap_err();
            assert_eq!(err.field, "job_spec.secrets[0].mount_path", "{bad}");
        }
        for (paths, message) in [
            (
                &["/a", "/a/"][..],
                r#"secrets[1].mount_path: "/a/" is "/a", the mount path of an earlier secret"#,
            ),
            (
                &["/a", "/b", "/a/b/c"][..],
                r#"secrets[2].mount_path: "/a/b/c" is inside "/a", the mount path"#,
            ),
            (
                &["/x/y/z", "/b", "/x"][..],
                r#"secrets[2].mount_path: "/x" contains "/x/y/z", the mount path"#,
            ),
        ] {
            let err = validate_secrets(&mounts(paths)).unwrap_err();
            let shown = format!(
                "{}: {}",
                err.field.trim_start_matches("job_spec."),
                err.message
            );
            assert!(shown.contains(message), "{shown}");
            assert!(shown.contains("must differ and not nest"), "{shown}");
        }
    }
}
