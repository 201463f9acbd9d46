//! `spec show`: one job's spec as the worker would load it, or precisely
//! what is wrong with its bunch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use url::Url;

use super::{CliError, SpecLimitArgs, StartError};
use crate::spec_diag::{diagnose, Diagnosis, SpecQuery};
use crate::spec_store::SpecStore;
use crate::store::{open_store_with, redact_url, StoreOptions};

/// Subcommands of `spec`.
#[derive(Debug, Subcommand)]
pub enum SpecCommand {
    /// Print a job's spec as the worker would load it, or precisely what is
    /// wrong with its bunch (missing objects, index length, offsets, sizes,
    /// UTF-8 position, JSON line and column, invalid fields), and the
    /// unknown fields the worker warns about (`warn   unknown field
    /// `timout` ignored; did you mean `timeout`?`). Exits 0 when
    /// the worker would load the spec, 1 when it would error the job, 2 for
    /// usage errors.
    Show(SpecShowArgs),
}

/// Flags of `spec show`: the create call's fields that locate a spec.
#[derive(Debug, Args)]
pub struct SpecShowArgs {
    /// Root of the spec store, as `serve --spec-store`: an absolute path or
    /// file:///abs/path, s3://bucket/prefix, gs://bucket/prefix,
    /// az://container/prefix.
    #[arg(long, value_parser = crate::location::store_url)]
    pub store: Url,
    /// The job's batch_id.
    #[arg(long)]
    pub batch: i64,
    /// The bunch's token (1 to 64 ASCII letters and digits).
    #[arg(long, value_parser = parse_bunch_token)]
    pub token: String,
    /// The bunch's start_job_id.
    #[arg(long)]
    pub start: i64,
    /// The job_id.
    #[arg(long)]
    pub job: i64,
    /// A file of store options (`NAME=VALUE` lines), over the environment's,
    /// as `serve --store-options`.
    #[arg(long)]
    pub store_options: Option<PathBuf>,
    /// The limits of the spec load, as `serve`'s (a spec over
    /// `--spec-max-bytes` is `spec_corrupt`); only these of `serve`'s
    /// flags apply to one spec read.
    #[command(flatten)]
    pub limits: SpecLimitArgs,
}

impl SpecShowArgs {
    /// Reads and diagnoses the spec these flags name.
    ///
    /// # Errors
    /// [`StartError`] when the store cannot be opened (a bad URL, an
    /// unusable options file, no threads); everything about the bunch is
    /// in the [`Diagnosis`].
    pub async fn diagnose(&self) -> Result<Diagnosis, StartError> {
        let options = StoreOptions::from_env();
        let options = match &self.store_options {
            Some(path) => options.with_file(path)?,
            None => options,
        };
        let (store, root) = open_store_with(&self.store, &options)?;
        let specs =
            SpecStore::new(store, root, self.limits.load_config()).map_err(StartError::Runtime)?;
        let query = SpecQuery {
            batch_id: self.batch,
            token: self.token.clone(),
            start_job_id: self.start,
            job_id: self.job,
        };
        Ok(diagnose(&specs, &query).await)
    }
}

/// A bunch token as the create call takes it: 1 to 64 ASCII letters and
/// digits (it becomes part of object keys).
fn parse_bunch_token(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.len() <= 64 && text.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "expected 1 to 64 ASCII letters and digits, got {text:?}"
        ))
    }
}

/// Runs `spec show`: exits 0 when the worker would load the spec, 1 when
/// it would error the job.
///
/// # Errors
/// The store cannot be opened.
pub async fn run(command: &SpecCommand) -> Result<ExitCode, CliError> {
    let SpecCommand::Show(args) = command;
    let diagnosis = args.diagnose().await?;
    println!("store  {}", redact_url(&args.store));
    print!("{}", diagnosis.render());
    Ok(super::exit(diagnosis.is_good()))
}
