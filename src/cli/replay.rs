//! `replay`: a journal's timelines, summary and problems.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::CliError;
use crate::replay::{replay_path, ReplayOptions};

/// Flags of `replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A journal file, a directory of `*.jnl` files, a worker's data
    /// directory (its `journal/`) or a demo's (`worker/journal/`).
    pub path: PathBuf,
    /// Show only this job's timelines, as BATCH:JOB.
    #[arg(long, value_parser = parse_job)]
    pub job: Option<(i64, i64)>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 if there is any problem (illegal transition, sequence gap,
    /// torn or corrupt record, two live attempts, event after a terminal
    /// state).
    #[arg(long)]
    pub check: bool,
    /// Replay only records up to this sequence number.
    #[arg(long)]
    pub until: Option<u64>,
}

fn parse_job(text: &str) -> Result<(i64, i64), String> {
    let (batch, job) = text
        .split_once(':')
        .ok_or_else(|| format!("expected BATCH:JOB, got {text:?}"))?;
    let id = |s: &str| s.parse::<i64>().map_err(|e| format!("{s:?}: {e}"));
    Ok((id(batch)?, id(job)?))
}

/// Runs `replay`: exits 1 with `--check` when there is any problem.
///
/// # Errors
/// The journal cannot be read.
pub fn run(args: &ReplayArgs) -> Result<ExitCode, CliError> {
    let options = ReplayOptions {
        job: args.job,
        until: args.until,
        ..Default::default()
    };
    let report = replay_path(&args.path, options)?;
    if let (Some((batch_id, job_id)), true) = (args.job, report.timelines.is_empty()) {
        eprintln!("no attempt of job {batch_id}:{job_id} in the journal");
    }
    if args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| CliError::Io {
            context: "printing the report".into(),
            source: e.into(),
        })?;
        println!("{json}");
    } else {
        print!("{}", report.render());
    }
    Ok(super::exit(!args.check || report.problems.is_empty()))
}
