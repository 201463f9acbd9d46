//! `submit` and `bunch write`: jobs by hand, as Hail's driver sends them
//! (see [`crate::submit`]). `submit` writes a bunch, creates its jobs on a
//! worker and prints each job's outcome as it ends; `bunch write` only
//! writes the bunch and, if asked, the create bodies for `curl`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use futures::StreamExt;
use url::Url;

use super::jobs::{count_line, human_ms, WorkerArgs, POLL_MS};
use super::{CliError, StartError};
use crate::client::{ClientError, WorkerClient};
use crate::spec_store::{SpecLoadConfig, SpecStore};
use crate::store::{open_store_with, redact_url, StoreOptions};
use crate::submit::{read_specs, write_bunch, Bunch, SpecLine};
use crate::worker::{JobSummary, MAX_PAGE_JOBS};

/// How often `submit` says which jobs it still waits for.
const STILL_WAITING_EVERY: Duration = Duration::from_secs(10);

/// Creates in flight at once.
const CREATE_CONCURRENCY: usize = 16;

/// Where a bunch goes, and its ids.
#[derive(Debug, Args)]
pub struct BunchArgs {
    /// A JSON Lines file of job specs: one JSON object per line (blank
    /// lines skipped), e.g. `{"process": {"type": "docker", "command":
    /// ["sh", "-c", "echo hi"]}, "resources": {"cores_mcpu": 250}}`. Each
    /// line's `job_id` is set to the id it gets.
    pub specs: PathBuf,
    /// The first job's id (0 or more); the others follow.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(0..))]
    pub start_job_id: i64,
    /// The bunch's token (1 to 64 letters and digits); random by default.
    #[arg(long)]
    pub token: Option<String>,
    /// The user the jobs run for (the create body's `user`).
    #[arg(long, default_value = "operator")]
    pub user: String,
    /// A file of store options (`NAME=VALUE` lines), over the environment's,
    /// as `serve --store-options`.
    #[arg(long)]
    pub store_options: Option<PathBuf>,
}

/// Flags of `submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The bunch.
    #[command(flatten)]
    pub bunch: BunchArgs,
    /// The spec store the worker reads (`serve --spec-store`): an absolute
    /// path, file:///abs/path, s3://, gs://, az://. By default the worker's
    /// own, when it is local files (`GET /batch-worker/v1/worker` says).
    #[arg(long, value_parser = parse_store)]
    pub store: Option<Url>,
    /// The worker.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// The batch's id (0 or more); by default one more than the largest
    /// the worker holds.
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    pub batch: Option<i64>,
    /// Create the jobs and exit, without waiting for them to end.
    #[arg(long)]
    pub no_wait: bool,
    /// Stop waiting after this many seconds (exit 1 if jobs are still
    /// running; they keep running). Default: wait until every job ends,
    /// saying every 10 s which are still running.
    #[arg(long)]
    pub wait_s: Option<u64>,
}

/// Flags of `bunch write`.
#[derive(Debug, Args)]
pub struct BunchWriteArgs {
    /// The bunch.
    #[command(flatten)]
    pub bunch: BunchArgs,
    /// The spec store: an absolute path, file:///abs/path, s3://, gs://, az://.
    #[arg(long, value_parser = parse_store)]
    pub store: Url,
    /// The batch's id (0 or more).
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    pub batch: i64,
    /// Write each job's create body (one JSON object per line) to this
    /// file, for `curl --data @FILE` (`-`: stdout).
    #[arg(long)]
    pub creates: Option<PathBuf>,
}

/// `bunch` subcommands.
#[derive(Debug, Subcommand)]
pub enum BunchCommand {
    /// Write job specs as a bunch (`specs`, `specs.idx`) in a spec store, as
    /// Hail's driver lays them out, and print its token and job ids.
    Write(BunchWriteArgs),
}

/// A spec store location: an absolute path (a local directory) or a URL.
pub fn parse_store(text: &str) -> Result<Url, String> {
    crate::location::store_url(text).map_err(|e| e.to_string())
}

impl BunchArgs {
    fn open(&self, url: &Url) -> Result<SpecStore, StartError> {
        let options = StoreOptions::from_env();
        let options = match &self.store_options {
            Some(path) => options.with_file(path)?,
            None => options,
        };
        let (store, root) = open_store_with(url, &options)?;
        SpecStore::new(store, root, SpecLoadConfig::default()).map_err(StartError::Runtime)
    }

    /// Reads and checks the specs file, noting each line whose `job_id`
    /// is replaced.
    fn read(&self) -> Result<Vec<SpecLine>, CliError> {
        let specs = read_specs(&self.specs, self.start_job_id)?;
        for spec in specs.iter().filter(|s| s.replaced_job_id.is_some()) {
            eprintln!(
                "note: {} line {}: job_id {} replaced by {}, the id the line gets",
                self.specs.display(),
                spec.line,
                spec.replaced_job_id.as_ref().expect("filtered"),
                spec.job_id
            );
        }
        Ok(specs)
    }

    /// Writes `specs` (from [`BunchArgs::read`]) as a bunch of batch
    /// `batch_id`.
    async fn write(&self, url: &Url, batch_id: i64, specs: &[SpecLine]) -> Result<Bunch, CliError> {
        let token = match &self.token {
            Some(token) => {
                if token.is_empty()
                    || token.len() > 64
                    || !token.chars().all(|c| c.is_ascii_alphanumeric())
                {
                    return Err(StartError::Invalid(format!(
                        "--token: expected 1 to 64 ASCII letters and digits, got {token:?}"
                    ))
                    .into());
                }
                token.clone()
            }
            None => crate::submit::new_token(),
        };
        let store = self.open(url)?;
        let keys = write_bunch(&store, batch_id, &token, specs)
            .await
            .map_err(|e| CliError::Io {
                context: format!("writing the bunch to {}", redact_url(url)),
                source: std::io::Error::other(e),
            })?;
        let last = specs.last().map_or(self.start_job_id, |s| s.job_id);
        let jobs = if specs.len() == 1 {
            format!("1 spec for job {batch_id}:{last}")
        } else {
            format!(
                "{} specs for jobs {batch_id}:{} to {batch_id}:{last}",
                specs.len(),
                self.start_job_id
            )
        };
        eprintln!(
            "wrote bunch {token}: {jobs}, at {}/{}",
            redact_url(url).trim_end_matches('/'),
            store.shown(&keys.specs),
        );
        Ok(Bunch {
            batch_id,
            token,
            start_job_id: self.start_job_id,
            user: self.user.clone(),
        })
    }
}

/// Runs `bunch write`.
///
/// # Errors
/// The specs file or the store is unusable.
pub async fn run_bunch(command: &BunchCommand) -> Result<ExitCode, CliError> {
    let BunchCommand::Write(args) = command;
    // The create bodies' file is opened first: a path that cannot be
    // written (or is the specs file itself) stops before the bunch is.
    let mut creates: Option<Box<dyn Write>> = match &args.creates {
        None => None,
        Some(path) if path.as_os_str() == "-" => Some(Box::new(std::io::stdout())),
        Some(path) => {
            let same = std::fs::canonicalize(path).ok().is_some_and(|p| {
                std::fs::canonicalize(&args.bunch.specs).is_ok_and(|specs| specs == p)
            });
            if same {
                return Err(StartError::Invalid(format!(
                    "--creates: {} is the specs file; pass another file",
                    path.display()
                ))
                .into());
            }
            let file = std::fs::File::create(path).map_err(|source| CliError::Io {
                context: format!("creating {} (--creates)", path.display()),
                source,
            })?;
            Some(Box::new(std::io::BufWriter::new(file)))
        }
    };
    let specs = args.bunch.read()?;
    let bunch = args.bunch.write(&args.store, args.batch, &specs).await?;
    println!(
        "batch_id={} token={} start_job_id={} jobs={}",
        bunch.batch_id,
        bunch.token,
        bunch.start_job_id,
        specs.len()
    );
    if let Some(out) = &mut creates {
        let mut written = Ok(());
        for spec in &specs {
            let line = serde_json::to_string(&bunch.create_body(spec.job_id)).expect("JSON");
            written = written.and_then(|()| writeln!(out, "{line}"));
        }
        written
            .and_then(|()| out.flush())
            .map_err(|source| CliError::Io {
                context: "writing the create bodies (--creates)".into(),
                source,
            })?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `submit`: exits 0 when every job succeeded (or, with
/// `--no-wait`, every create was accepted), else 1.
///
/// # Errors
/// The specs file, the store or the worker is unusable.
pub async fn run(args: &SubmitArgs) -> Result<ExitCode, CliError> {
    let client = args.worker.client()?;
    // A worker that does not take jobs (not activated yet, shutting down)
    // is found before the bunch is written.
    let info = client.about().await?;
    if !info.taking_jobs {
        return Err(StartError::Invalid(format!(
            "--worker: the worker {} is not taking jobs now (not yet activated with its driver, shutting down, or its journal cannot be written); its log says which",
            info.name
        ))
        .into());
    }
    let store = match &args.store {
        Some(url) => url.clone(),
        None => worker_store(&info)?,
    };
    // The specs are checked before anything is written or created.
    let specs = args.bunch.read()?;
    let mut tries = 0;
    // With no --batch, the next free batch; a concurrent submit may take
    // the same one first: its first create then gets 403 and the next free
    // batch is tried (a few times).
    let mut batch_id = match args.batch {
        Some(batch) => batch,
        None => next_batch(&client, 0).await?,
    };
    let (bunch, first) = loop {
        let bunch = args.bunch.write(&store, batch_id, &specs).await?;
        let first_job = specs[0].job_id;
        let body = bunch.create_body(first_job);
        let outcome = client.create(&body).await;
        let taken = outcome
            .as_ref()
            .err()
            .and_then(ClientError::status)
            .is_some_and(|s| s == reqwest::StatusCode::FORBIDDEN);
        tries += 1;
        if taken && args.batch.is_none() && tries < BATCH_TRIES {
            eprintln!("batch {batch_id} was taken meanwhile (403 for its first job); trying the next free batch");
            batch_id = next_batch(&client, batch_id).await?;
            continue;
        }
        break (bunch, (first_job, attempt_of(&body), outcome));
    };
    let job_ids: Vec<i64> = specs.iter().map(|s| s.job_id).collect();
    let mut outcomes = vec![first];
    // Once the worker cannot be reached (or an answer is lost), the rest
    // are not tried: their outcome would be the same wait.
    let unreachable = std::sync::atomic::AtomicBool::new(matches!(
        outcomes[0].2,
        Err(ClientError::Unreachable { .. })
    ));
    let rest: Vec<(i64, String, Result<(), ClientError>)> =
        futures::stream::iter(job_ids[1..].iter().copied())
            .map(|job_id| {
                let (client, body, unreachable) =
                    (&client, bunch.create_body(job_id), &unreachable);
                async move {
                    let attempt_id = attempt_of(&body);
                    if unreachable.load(std::sync::atomic::Ordering::Relaxed) {
                        return (job_id, attempt_id, Err(ClientError::NotTried));
                    }
                    let outcome = client.create(&body).await;
                    if matches!(outcome, Err(ClientError::Unreachable { .. })) {
                        unreachable.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    (job_id, attempt_id, outcome)
                }
            })
            .buffered(CREATE_CONCURRENCY)
            .collect()
            .await;
    outcomes.extend(rest);
    // The attempt each job was created as: a job the worker already
    // held (finished) is waited for under its new attempt only.
    let mut created = BTreeMap::new();
    let mut not_tried = 0;
    for (job_id, attempt_id, outcome) in outcomes {
        match outcome {
            Ok(()) => {
                created.insert(job_id, attempt_id);
            }
            Err(ClientError::NotTried) => not_tried += 1,
            Err(e @ ClientError::Unreachable { .. }) => println!(
                "{batch_id}:{job_id}  not known whether created (no answer; see `batch-worker jobs status {batch_id}:{job_id}` once the worker answers): {e}"
            ),
            Err(e) => println!("{batch_id}:{job_id}  not created: {e}"),
        }
    }
    if not_tried > 0 {
        println!("{not_tried} more job{} not created: the worker stopped answering, so they were not tried", if not_tried == 1 { "" } else { "s" });
    }
    let refused = job_ids.len() - created.len();
    eprintln!(
        "created {} job{} on {}{}",
        created.len(),
        if created.len() == 1 { "" } else { "s" },
        client.base(),
        if refused > 0 {
            format!(" ({refused} refused)")
        } else {
            String::new()
        }
    );
    if args.no_wait || created.is_empty() {
        return Ok(super::exit(refused == 0));
    }
    let ended = wait(
        &client,
        batch_id,
        &created,
        args.wait_s.map(Duration::from_secs),
    )
    .await?;
    let succeeded = ended
        .values()
        .filter(|j| j.state == batch_worker_model::WireState::Succeeded)
        .count();
    let finished: Vec<JobSummary> = ended.into_values().collect();
    println!(
        "{} of {} job{} ended: {}",
        finished.len(),
        created.len(),
        if created.len() == 1 { "" } else { "s" },
        count_line(&finished)
    );
    Ok(super::exit(refused == 0 && succeeded == created.len()))
}

/// The worker's spec store, when it is local files this process can write.
fn worker_store(info: &crate::worker::WorkerInfo) -> Result<Url, CliError> {
    match info.spec_store.as_deref().map(Url::parse) {
        Some(Ok(url)) if url.scheme() == "file" => Ok(url),
        Some(_) => Err(StartError::Invalid(format!(
            "--store: the worker {} reads specs from {}, not local files; pass that store's URL as --store (with its credentials in the environment or --store-options)",
            info.name,
            info.spec_store.as_deref().unwrap_or_default()
        ))
        .into()),
        None => Err(StartError::Invalid(format!(
            "--store: the worker {} does not say where it reads specs; pass its `serve --spec-store` as --store",
            info.name
        ))
        .into()),
    }
}

/// The create body's attempt id.
fn attempt_of(body: &serde_json::Value) -> String {
    body["job_spec"]["attempt_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// How many batches `submit` tries when the free one it chose is taken
/// by a concurrent submit.
const BATCH_TRIES: usize = 5;

/// One more than the largest batch id the worker holds and than `after`
/// (1 for none).
///
/// # Errors
/// The worker cannot be reached, or it holds batch `i64::MAX`.
async fn next_batch(client: &WorkerClient, after: i64) -> Result<i64, CliError> {
    let mut largest = after;
    let mut cursor = None;
    loop {
        let page = client
            .list(None, &[], cursor.as_deref(), MAX_PAGE_JOBS)
            .await?;
        largest = page.jobs.iter().map(|j| j.batch_id).fold(largest, i64::max);
        match page.next {
            Some(next) => cursor = Some(next),
            None => {
                return largest.checked_add(1).ok_or_else(|| {
                    StartError::Invalid(format!(
                        "--batch: the worker holds batch {largest}, the largest there is, so there is no next one; pass --batch"
                    ))
                    .into()
                })
            }
        }
    }
}

/// Waits until every job of `created` has ended (or `limit` passes),
/// printing each as it ends; returns the ended jobs by id.
async fn wait(
    client: &WorkerClient,
    batch_id: i64,
    created: &BTreeMap<i64, String>,
    limit: Option<Duration>,
) -> Result<BTreeMap<i64, JobSummary>, CliError> {
    let began = Instant::now();
    let mut last_note = began;
    let mut ended: BTreeMap<i64, JobSummary> = BTreeMap::new();
    let terminal = [
        batch_worker_model::WireState::Succeeded,
        batch_worker_model::WireState::Failed,
        batch_worker_model::WireState::Error,
        batch_worker_model::WireState::Cancelled,
    ];
    while ended.len() < created.len() {
        if limit.is_some_and(|l| began.elapsed() >= l) {
            eprintln!(
                "stopped waiting after {}: {} job{} still running (see `batch-worker jobs list --batch {batch_id}`)",
                human_ms(began.elapsed().as_millis() as i64),
                created.len() - ended.len(),
                if created.len() - ended.len() == 1 { " is" } else { "s are" }
            );
            break;
        }
        let mut after = None;
        loop {
            let page = client
                .list(Some(batch_id), &terminal, after.as_deref(), MAX_PAGE_JOBS)
                .await?;
            for job in page.jobs {
                let ours = created.get(&job.job_id) == Some(&job.attempt_id);
                if ours && !ended.contains_key(&job.job_id) {
                    let time = match (job.started_at_ms, job.ended_at_ms) {
                        (Some(s), Some(e)) => format!("  ran {}", human_ms(e - s)),
                        _ => String::new(),
                    };
                    let line = format!("{batch_id}:{}  {}{time}", job.job_id, job.summary);
                    println!("{}", crate::wire::printable(&line));
                    ended.insert(job.job_id, job);
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        if ended.len() < created.len() {
            if last_note.elapsed() >= STILL_WAITING_EVERY {
                last_note = Instant::now();
                let waiting: Vec<String> = created
                    .keys()
                    .filter(|id| !ended.contains_key(*id))
                    .take(5)
                    .map(|id| format!("{batch_id}:{id}"))
                    .collect();
                let left = created.len() - ended.len();
                eprintln!(
                    "still waiting for {left} job{} ({}{}) after {}; --wait-s bounds the wait, and the jobs keep running if this stops",
                    if left == 1 { "" } else { "s" },
                    waiting.join(", "),
                    if left > waiting.len() { ", ..." } else { "" },
                    human_ms(began.elapsed().as_millis() as i64)
                );
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }
    Ok(ended)
}
