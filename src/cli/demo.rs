//! `demo`: a worker and an embedded driver on loopback, jobs with good,
//! failing, missing and corrupt specs, and what became of each.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use url::Url;

use super::{heading, CliError};
use crate::journal::Durability;

/// Flags of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many jobs to schedule (at least 1).
    #[arg(long, default_value_t = 200, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub jobs: usize,
    /// Added latency of every blob read, in ms.
    #[arg(long, default_value_t = 0, help_heading = heading::TESTING)]
    pub blob_latency_ms: u64,
    /// Keep what the demo writes (specs, logs, journal) in this directory;
    /// default: a temporary directory, removed at exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The worker's journal durability.
    #[arg(long, value_enum, default_value = "fsync")]
    pub durability: Durability,
    /// The median token wait before every store request, in ms (as
    /// `serve --token-latency-ms`, which `serve --help-all` lists); 0: off.
    #[arg(long, default_value_t = 0, help_heading = heading::TESTING)]
    pub token_latency_ms: u64,
    /// Write the specs to this store and have the worker read them from it:
    /// an absolute path or a URL, as `serve --spec-store` (`s3://`, `az://`,
    /// `gs://`, `file:///`, `memory:///`; options from the `AWS_*`,
    /// `AZURE_*`, `GOOGLE_*` variables). Default: local files under the
    /// data directory.
    #[arg(long, value_parser = crate::location::store_url)]
    pub spec_store: Option<Url>,
    /// Inject seeded faults into the worker's spec reads. PLAN is
    /// comma-separated NAME=VALUE: seed (the same seed repeats the same
    /// faults), latency_ms (median delay per read) and sigma (its
    /// log-normal spread; 0 = fixed), and per-read rates in [0, 1]:
    /// error (transient, retried), hang (never answers: the job waits for
    /// the 60 s spec deadline, so the run lasts a minute), not_found,
    /// short_read (bytes cut short) and flip (one byte changed). E.g.
    /// "seed=3,latency_ms=100,sigma=1,error=0.1,not_found=0.02,flip=0.02".
    /// A job whose bunch a fault hit may end as an error of its spec read.
    #[arg(long, help_heading = heading::TESTING)]
    pub store_faults: Option<crate::store::FaultPlan>,
}

/// Runs `demo`: exits 1 unless every job ended as planned and no create
/// call failed.
///
/// # Errors
/// The demo could not be set up.
pub async fn run(args: &DemoArgs) -> Result<ExitCode, CliError> {
    let report = crate::demo::run(args).await?;
    print!("{}", report.render());
    Ok(super::exit(report.passed()))
}
