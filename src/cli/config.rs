//! `config`: the configuration `serve` would run with (same flags, file
//! and environment), as TOML, each value with its source; secrets masked.

use std::process::ExitCode;

use crate::config::Effective;

/// Prints `effective`; always succeeds.
pub fn run(effective: &Effective) -> ExitCode {
    print!("{}", effective.render());
    ExitCode::SUCCESS
}
