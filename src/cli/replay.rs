//! `replay`: a journal's summary, problems and (when asked) timelines, as
//! text or JSON; a Chrome trace (`--trace`) and an SVG picture
//! (`--timeline`) of it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::CliError;
use crate::replay::{replay_path, RenderOptions, ReplayOptions, TimeFormat};

/// Flags of `replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A journal file, a directory of `*.jnl` files, a worker's data
    /// directory (its `journal/`) or a demo's (`worker/journal/`).
    pub path: PathBuf,
    /// Only this job, as BATCH:JOB: its summary and its attempts'
    /// timelines (the problems still cover the whole journal). A job the
    /// journal does not hold exits 1.
    #[arg(long, value_parser = parse_job)]
    pub job: Option<(i64, i64)>,
    /// Print every attempt's timeline after the summary (the default
    /// text is the summary and the problems only).
    #[arg(long, alias = "all")]
    pub timelines: bool,
    /// How times are shown: `relative` (`+12.345 s`, from the journal's
    /// start in the summary, from the attempt's creation in a timeline) or
    /// `iso` (ISO-8601 UTC).
    #[arg(long, value_enum, default_value_t = TimeFormat::Relative)]
    pub time: TimeFormat,
    /// Same as `--time iso`.
    #[arg(long, conflicts_with = "time")]
    pub iso: bool,
    /// Print the report as JSON instead of text (every attempt's steps and
    /// phases, the summary, every problem).
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
    /// Write a Chrome trace-event file (JSON) here, for Perfetto
    /// (ui.perfetto.dev) or chrome://tracing: a track per attempt, a slice
    /// per phase, grouped by batch. `-`: standard output (then alone).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Write an SVG picture here: a row per attempt, its phases as
    /// coloured bars over time, and the cores in use beneath. `-`:
    /// standard output (then alone).
    #[arg(long, value_name = "FILE.svg")]
    pub timeline: Option<PathBuf>,
}

fn parse_job(text: &str) -> Result<(i64, i64), String> {
    let (batch, job) = text
        .split_once(':')
        .ok_or_else(|| format!("expected BATCH:JOB (e.g. 1:3), got {text:?}"))?;
    let id = |s: &str| s.parse::<i64>().map_err(|e| format!("{s:?}: {e}"));
    Ok((id(batch)?, id(job)?))
}

/// `1 attempt`, `3 attempts`.
fn attempts(n: usize) -> String {
    format!("{n} attempt{}", if n == 1 { "" } else { "s" })
}

/// Where an output went, for a person.
fn shown(path: &Path) -> String {
    if path.as_os_str() == "-" {
        "standard output".to_owned()
    } else {
        path.display().to_string()
    }
}

fn write_file(path: &Path, what: &str, bytes: &[u8]) -> Result<(), CliError> {
    // `-`: standard output, as a person pipes it.
    let written = if path.as_os_str() == "-" {
        std::io::Write::write_all(&mut std::io::stdout(), bytes)
    } else {
        std::fs::write(path, bytes)
    };
    written.map_err(|source| CliError::Io {
        context: format!("writing the {what} to {}", path.display()),
        source,
    })
}

/// Runs `replay`: exits 1 with `--check` when there is any problem, and
/// when `--job` names a job the journal does not hold.
///
/// # Errors
/// The journal cannot be read; the trace or picture cannot be written.
pub fn run(args: &ReplayArgs) -> Result<ExitCode, CliError> {
    let options = ReplayOptions {
        job: args.job,
        until: args.until,
        ..Default::default()
    };
    let report = replay_path(&args.path, options)?;
    if let (Some((batch_id, job_id)), true) = (args.job, report.timelines.is_empty()) {
        eprintln!(
            "error: no attempt of job {batch_id}:{job_id} in the journal {} ({} attempts in all); \
             run without --job for the whole journal's summary, with --timelines for every attempt",
            args.path.display(),
            report.summary.attempts
        );
        return Ok(ExitCode::FAILURE);
    }
    if let Some(path) = &args.trace {
        let trace = serde_json::to_vec(&report.chrome_trace()).map_err(|e| CliError::Io {
            context: "encoding the trace".into(),
            source: e.into(),
        })?;
        write_file(path, "trace", &trace)?;
        eprintln!(
            "trace of {} written to {} (open it in ui.perfetto.dev or chrome://tracing)",
            attempts(report.timelines.len()),
            shown(path)
        );
    }
    if let Some(path) = &args.timeline {
        write_file(path, "timeline picture", report.timeline_svg().as_bytes())?;
        eprintln!(
            "timeline of {} written to {} (open it in a browser)",
            attempts(report.timelines.len()),
            shown(path)
        );
    }
    let to_stdout = |path: &Option<PathBuf>| path.as_ref().is_some_and(|p| p.as_os_str() == "-");
    if to_stdout(&args.trace) || to_stdout(&args.timeline) {
        // Standard output holds the trace or the picture alone.
    } else if args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| CliError::Io {
            context: "printing the report".into(),
            source: e.into(),
        })?;
        println!("{json}");
    } else {
        // A user name or message in the journal cannot drive the terminal.
        print!(
            "{}",
            crate::wire::printable(&report.render(RenderOptions {
                time: if args.iso { TimeFormat::Iso } else { args.time },
                timelines: args.timelines || args.job.is_some(),
            }))
        );
    }
    Ok(super::exit(!args.check || report.problems.is_empty()))
}
