//! `config`: the configuration `serve` would run with (same flags, file
//! and environment), as TOML, each value with its source; secrets masked.
//! Derived defaults are resolved as `serve` resolves them
//! ([`ServeArgs::resolved`]): the data directory and the paths under it,
//! the stores, the machine's cores and memory; sizes in bytes with their
//! units beside them.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::str::FromStr;

use super::derived::{self, Resolved};
use super::{ServeArgs, StartError};
use crate::config::{Effective, Resolution};

/// Flags taking a size with a unit (bytesize's: `8G`, `8GiB`), printed in
/// bytes.
const SIZE_FLAGS: [&str; 3] = ["memory", "image-max-bytes", "image-pull-max-memory"];

/// Prints `effective` with what `serve` derives from `args`.
///
/// # Errors
/// [`StartError`] when the data directory cannot be made absolute or
/// `--cores` is unusable.
pub fn run(effective: &Effective, args: &ServeArgs) -> Result<ExitCode, StartError> {
    let resolved = args.resolved()?;
    print!("{}", effective.render(&resolutions(effective, &resolved)));
    Ok(ExitCode::SUCCESS)
}

/// What `serve` makes of each flag of `effective`, by flag name: derived
/// defaults of unset flags, sizes in bytes with their units.
pub fn resolutions(effective: &Effective, resolved: &Resolved) -> BTreeMap<String, Resolution> {
    let mut out = BTreeMap::new();
    let mut add = |name: &str, value: Option<String>, note: String| {
        out.insert(
            name.to_owned(),
            Resolution {
                value,
                note: Some(note),
            },
        );
    };
    let path = |p: &std::path::Path| p.display().to_string();
    add(
        "data-dir",
        None,
        format!(
            "{}, its journal in {}",
            path(&resolved.data_dir),
            path(&resolved.journal_dir)
        ),
    );
    for (name, value, derived) in [
        (
            "spec-store",
            resolved.spec_store.clone(),
            format!("{{data-dir}}/{}", derived::SPECS_DIR),
        ),
        (
            "logs-store",
            resolved.logs_store.clone(),
            format!("{{data-dir}}/{}", derived::LOGS_DIR),
        ),
        (
            "image-cache-dir",
            path(&resolved.image_cache_dir),
            format!("{{data-dir}}/{}", derived::IMAGES_DIR),
        ),
        (
            "runc-root",
            path(&resolved.runc_root),
            format!("{{data-dir}}/{}", derived::RUNC_DIR),
        ),
        (
            "cores",
            derived::cores(resolved.capacity.cores_mcpu),
            "the machine's".to_owned(),
        ),
        (
            "name",
            crate::worker::default_name(),
            "the host name".to_owned(),
        ),
    ] {
        if is_unset(effective, name) {
            add(name, Some(value), derived);
        }
    }
    if is_unset(effective, "driver-url") {
        add("driver-url", None, "no activation, no reports".to_owned());
    }
    for setting in &effective.0 {
        let Some(given) = &setting.value else {
            continue;
        };
        let bytes = if SIZE_FLAGS.contains(&setting.name.as_str()) {
            bytesize::ByteSize::from_str(given).ok().map(|b| b.as_u64())
        } else if setting.name.ends_with("-bytes") {
            given.parse::<u64>().ok()
        } else {
            None
        };
        if let Some(bytes) = bytes.filter(|b| *b >= 1000) {
            add(
                &setting.name,
                Some(bytes.to_string()),
                derived::human_bytes(bytes),
            );
        }
    }
    if is_unset(effective, "memory") {
        let bytes = resolved.capacity.memory_bytes;
        add(
            "memory",
            Some(bytes.to_string()),
            format!("the machine's, {}", derived::human_bytes(bytes)),
        );
    }
    out
}

/// Whether flag `name` of `effective` has no value.
fn is_unset(effective: &Effective, name: &str) -> bool {
    effective
        .0
        .iter()
        .any(|s| s.name == name && s.value.is_none())
}
