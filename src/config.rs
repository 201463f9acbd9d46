//! Configuration of `serve` (and `config`, which prints it): a TOML file
//! (`--config FILE`), environment variables, then flags, each overriding
//! the one before; built-in defaults under all three.
//!
//! - **File**: a TOML table whose keys are the flags' long names
//!   (`data-dir = "/srv/worker"`, `cores = 1.5`, `repair = true`;
//!   `data_dir` is accepted too). An unknown key, or a value that is an
//!   array or a table, is an error naming the key.
//! - **Environment**: `BATCH_WORKER_<FLAG>`, the flag's name in capitals
//!   with `_` for `-` (`BATCH_WORKER_DATA_DIR`).
//! - **Flags**: as `--help` lists them.
//!
//! The file's values become clap defaults, so clap parses and checks every
//! value the same way whatever its source; [`Effective`] says where each
//! came from. Secrets ([`SECRET_FLAGS`]) are printed masked.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::cli::Cli;
use crate::store::redact_url;

/// Prefix of the environment variables that set `serve`'s flags.
pub const ENV_PREFIX: &str = "BATCH_WORKER_";

/// The subcommands whose flags the file and the environment set.
const CONFIGURED: [&str; 2] = ["serve", "config"];

/// Flags holding URLs, printed without password or query string.
const URL_FLAGS: [&str; 3] = ["spec_store", "logs_store", "driver_url"];

/// Arguments no file or environment variable sets (ids, as clap names
/// them; the same as their long names).
const NOT_CONFIGURABLE: [&str; 4] = ["config", "help", "help_all", "version"];

/// Largest config file read, in bytes (a config file is a few KiB).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Flags whose values are never printed (ids, as clap names them).
pub const SECRET_FLAGS: [&str; 1] = ["activation_token"];

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config file {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("the config file {path} is {size_bytes} bytes; the limit is {MAX_FILE_BYTES}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
    },
    /// The file is not TOML (the message gives line and column, not the
    /// line's text).
    #[error("the config file {path} is not valid TOML: {message}")]
    NotToml {
        /// The file.
        path: PathBuf,
        /// The parser's message (line and column included).
        message: String,
    },
    /// A key names no flag of `serve`.
    #[error("the config file {path} has an unknown key {key:?}; expected one of: {expected}")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The flags' names, comma-separated.
        expected: String,
    },
    /// One flag is set twice, as `data-dir` and `data_dir`.
    #[error("the config file {path} sets one flag twice, as {first:?} and {second:?}")]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The first spelling.
        first: String,
        /// The second.
        second: String,
    },
    /// A value is an array, a table or a date.
    #[error(
        "the config file {path} gives {key:?} a value of the wrong type; expected a string, \
         number or boolean"
    )]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A value from the file or the environment is invalid for its flag.
    #[error("{message} (the value comes from {origin})")]
    BadValue {
        /// clap's message: the value, the flag, what was wrong.
        message: String,
        /// `the config file PATH` or `the environment variable NAME`.
        origin: String,
    },
    /// The command line is invalid; clap's error, printed and exited with
    /// by its `exit()`.
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

/// Where a value came from, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// A `BATCH_WORKER_*` environment variable.
    Environment,
    /// The `--config` file.
    File,
    /// The built-in default.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Flag => "flag",
            Source::Environment => "environment",
            Source::File => "config file",
            Source::Default => "default",
        })
    }
}

/// One flag's effective value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The flag's long name (`data-dir`).
    pub name: String,
    /// Its value as given (`None`: unset), `<redacted>` for a secret.
    pub value: Option<String>,
    /// Where it came from.
    pub source: Source,
}

/// The effective configuration of `serve` (or `config`), flag by flag in
/// the order the flags are declared (`--help` groups them by heading);
/// empty for other subcommands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effective(pub Vec<Setting>);

/// What `serve` makes of one flag beyond the text given, for
/// [`Effective::render`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// The value `serve` uses, as the flag would take it, where that is
    /// not the text given (`8000000000` for `8G`), or, for an unset flag,
    /// the default `serve` derives (`file:///srv/worker/specs`).
    pub value: Option<String>,
    /// What the value is or where it comes from (`8.0 GB (7.45 GiB)`,
    /// `{data-dir}/specs`).
    pub note: Option<String>,
}

impl Effective {
    /// As TOML a `--config` file could hold, each line commented with its
    /// source and with what `serve` makes of it (`resolutions`, by flag
    /// name). Unset flags are commented out, with the value `serve`
    /// derives for them where there is one.
    pub fn render(&self, resolutions: &BTreeMap<String, Resolution>) -> String {
        let mut out = String::new();
        let none = Resolution::default();
        for setting in &self.0 {
            let resolution = resolutions.get(&setting.name).unwrap_or(&none);
            let note = |comment: String| match &resolution.note {
                Some(note) => format!("{comment}: {note}"),
                None => comment,
            };
            // Hail's own variables, read when the flag is not given.
            let hail = match setting.name.as_str() {
                "instance-config" => std::env::var("INSTANCE_CONFIG")
                    .ok()
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| {
                        (
                            format!("<base64, {} bytes>", v.trim().len()),
                            "INSTANCE_CONFIG",
                        )
                    }),
                "region" => std::env::var("REGION").ok().map(|v| (v, "REGION")),
                _ => None,
            };
            let (line, comment) = match (&setting.value, hail, &resolution.value) {
                (Some(given), _, Some(value)) if value != given => (
                    format!("{} = {}", setting.name, toml_value(value)),
                    match &resolution.note {
                        Some(note) => format!("{}: {given} = {note}", setting.source),
                        None => format!("{}: {given}", setting.source),
                    },
                ),
                (Some(value), _, _) => (
                    format!("{} = {}", setting.name, toml_value(value)),
                    note(setting.source.to_string()),
                ),
                (None, Some((value, variable)), _) => (
                    format!("{} = {}", setting.name, toml_value(&value)),
                    format!("environment ({variable}, as on Hail's workers)"),
                ),
                (None, None, Some(value)) => (
                    format!("# {} = {}", setting.name, toml_value(value)),
                    note("unset".to_owned()),
                ),
                (None, None, None) => (
                    format!("# {} (unset)", setting.name),
                    note(setting.source.to_string()),
                ),
            };
            out.push_str(&format!("{line:<60} # {comment}\n"));
        }
        out
    }
}

/// `value` as a TOML value: bare when it is a number or a boolean, else
/// a quoted string.
fn toml_value(value: &str) -> String {
    // Bare only when TOML reads it back as the same text ("007", ".5" and
    // "1e3" are quoted).
    let bare = value == "true"
        || value == "false"
        || value.parse::<i64>().is_ok_and(|n| n.to_string() == value)
        || value
            .parse::<f64>()
            .is_ok_and(|x| x.is_finite() && x.to_string() == value && value.contains('.'));
    if bare {
        value.to_owned()
    } else {
        toml::Value::String(value.to_owned()).to_string()
    }
}

/// Parses `args` (the program name first) into the [`Cli`], with the
/// environment variables and the `--config` file applied to `serve`'s and
/// `config`'s flags, and says where each of their values came from.
///
/// # Errors
/// [`ConfigError`]: the file (unreadable, not TOML, unknown key, wrong
/// type) or clap's error for the command line.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<(Cli, Effective), ConfigError> {
    let args: Vec<OsString> = args.into_iter().collect();
    let file = match config_path(&args) {
        Some(path) => read_file(&path)?,
        None => BTreeMap::new(),
    };
    let mut command = Cli::command();
    if asks_help_all(&args) {
        command = unhide_all(command);
    }
    for name in CONFIGURED {
        command = command.mut_subcommand(name, |sub| {
            let ids: Vec<String> = configurable(&sub).collect();
            ids.into_iter().fold(sub, |sub, id| {
                let value = file.get(&id).cloned();
                let secret = SECRET_FLAGS.contains(&id.as_str());
                sub.mut_arg(id.as_str(), |arg| {
                    let (hide_default, hide_env) = (
                        arg.is_hide_default_value_set(),
                        arg.is_hide_env_values_set(),
                    );
                    let arg = arg
                        .env(format!("{ENV_PREFIX}{}", id.to_uppercase()))
                        .hide_default_value(secret || hide_default)
                        .hide_env_values(secret || hide_env);
                    match value {
                        Some((_, value)) => arg.default_value(value),
                        None => arg,
                    }
                })
            })
        });
    }
    if let Some(key) = file.keys().find(|key| {
        !command
            .find_subcommand("serve")
            .is_some_and(|serve| configurable(serve).any(|id| &id == *key))
    }) {
        let path = config_path(&args).unwrap_or_default();
        return Err(unknown_key(&command, path, &file[key].0));
    }
    let matches = command
        .try_get_matches_from(&args)
        .map_err(|e| with_origin(e, &args, &file))?;
    let cli = Cli::from_arg_matches(&matches)?;
    let effective = match matches.subcommand() {
        Some((name, sub)) if CONFIGURED.contains(&name) => {
            let command = Cli::command();
            let sub_command = command
                .find_subcommand(name)
                .expect("a configured subcommand");
            effective(sub_command, sub, &file)
        }
        _ => Effective::default(),
    };
    Ok((cli, effective))
}

/// Whether `args` hold `--help-all` (before any `--`).
fn asks_help_all(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--help-all")
}

/// `command` with every argument of it and of its subcommands shown in
/// help, the hidden test and benchmark knobs included (for `--help-all`).
fn unhide_all(command: clap::Command) -> clap::Command {
    let names: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    names
        .into_iter()
        .fold(command.mut_args(|arg| arg.hide(false)), |command, name| {
            command.mut_subcommand(name, unhide_all)
        })
}

/// `e`, or, when it is about a value the command line did not give (so it
/// came from the environment or the file), [`ConfigError::BadValue`]
/// saying where it came from.
fn with_origin(
    e: clap::Error,
    args: &[OsString],
    file: &BTreeMap<String, (String, String)>,
) -> ConfigError {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return e.into();
    }
    // "--cores <CORES>" → "cores"
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return e.into();
    };
    let Some(long) = arg
        .strip_prefix("--")
        .and_then(|a| a.split([' ', '=']).next())
    else {
        return e.into();
    };
    let given = args.iter().any(|a| {
        let a = a.to_string_lossy();
        a == format!("--{long}") || a.starts_with(&format!("--{long}="))
    });
    let id = long.replace('-', "_");
    let variable = format!("{ENV_PREFIX}{}", id.to_uppercase());
    let origin = if given {
        return e.into();
    } else if std::env::var_os(&variable).is_some() {
        format!("the environment variable {variable}")
    } else if file.contains_key(&id) {
        let path = config_path(args).unwrap_or_default();
        format!("the config file {}", path.display())
    } else {
        return e.into();
    };
    let message = e.to_string();
    let message = message
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned();
    ConfigError::BadValue { message, origin }
}

/// The ids of `command`'s arguments that the file and the environment may
/// set: all but [`NOT_CONFIGURABLE`].
fn configurable(command: &clap::Command) -> impl Iterator<Item = String> + '_ {
    command
        .get_arguments()
        .filter(|arg| arg.get_long().is_some())
        .map(|arg| arg.get_id().as_str().to_owned())
        .filter(|id| !NOT_CONFIGURABLE.contains(&id.as_str()))
}

/// The value of `--config FILE` or `--config=FILE` in `args`, if any.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
        if text == "--" {
            break;
        }
    }
    None
}

/// The file's values by argument id (`data_dir`), each with the key as
/// written and the value as clap would take it from a flag.
fn read_file(path: &Path) -> Result<BTreeMap<String, (String, String)>, ConfigError> {
    let unreadable = |source| ConfigError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let size_bytes = std::fs::metadata(path).map_err(unreadable)?.len();
    if size_bytes > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
            size_bytes,
        });
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    // toml's Display quotes the offending line, which may hold a secret:
    // say where, not what.
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e.span().map_or(String::new(), |span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" at line {line}, column {column}")
        });
        ConfigError::NotToml {
            path: path.to_owned(),
            message: format!("{}{at}", e.message()),
        }
    })?;
    let mut values: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (key, value) in table {
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                return Err(ConfigError::WrongType {
                    path: path.to_owned(),
                    key,
                })
            }
        };
        let id = key.replace('-', "_");
        if let Some((first, _)) = values.get(&id) {
            return Err(ConfigError::Duplicate {
                path: path.to_owned(),
                first: first.clone(),
                second: key,
            });
        }
        values.insert(id, (key, text));
    }
    Ok(values)
}

fn unknown_key(command: &clap::Command, path: PathBuf, key: &str) -> ConfigError {
    let expected: BTreeSet<String> = command
        .find_subcommand("serve")
        .map(|serve| {
            serve
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|long| !NOT_CONFIGURABLE.contains(&long.replace('-', "_").as_str()))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    ConfigError::UnknownKey {
        path,
        key: key.to_owned(),
        expected: expected.into_iter().collect::<Vec<_>>().join(", "),
    }
}

/// Each configurable flag of `command` with its value in `matches` and
/// its source (the file's values reach clap as defaults).
fn effective(
    command: &clap::Command,
    matches: &ArgMatches,
    file: &BTreeMap<String, (String, String)>,
) -> Effective {
    let settings = command
        .get_arguments()
        .filter(|arg| arg.get_long().is_some())
        .filter(|arg| !NOT_CONFIGURABLE.contains(&arg.get_id().as_str()))
        .map(|arg| {
            let id = arg.get_id().as_str();
            let value = matches.get_raw(id).map(|values| {
                values
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            });
            let source = match matches.value_source(id) {
                Some(ValueSource::CommandLine) => Source::Flag,
                Some(ValueSource::EnvVariable) => Source::Environment,
                _ if file.contains_key(id) => Source::File,
                _ => Source::Default,
            };
            let value = if SECRET_FLAGS.contains(&id) {
                value.map(|v| {
                    if v.is_empty() {
                        v
                    } else {
                        "<redacted>".to_owned()
                    }
                })
            } else if URL_FLAGS.contains(&id) {
                // Passwords and query strings (SAS tokens) are credentials.
                value.map(|v| url::Url::parse(&v).map_or(v, |url| redact_url(&url)))
            } else {
                value
            };
            Setting {
                name: arg.get_long().unwrap_or(id).to_owned(),
                value,
                source,
            }
        })
        .collect();
    Effective(settings)
}
