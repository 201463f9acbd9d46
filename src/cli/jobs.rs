//! This file is long (about 650 lines) because the five `jobs`
//! subcommands share their flags, their renderers and the log follow loop;
//! each renderer is a pure function the tests call.
//!
//! `jobs list | status | events | log [-f] | cancel`: one worker's jobs
//! from the shell, as tables for people or `--json` for programs, over the
//! worker's API ([`crate::client::WorkerClient`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use batch_worker_model::{JobState, WireState};
use clap::{Args, Subcommand};
use serde_json::Value;
use url::Url;

use super::CliError;
use crate::api::ApiToken;
use crate::client::{ClientError, EventLine, WorkerClient};
use crate::wire::printable;
use crate::worker::{JobSummary, MAX_PAGE_JOBS};

/// How often `log -f` and `submit` ask the worker again, in ms.
pub const POLL_MS: u64 = 250;

/// The worker a client subcommand talks to.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// The worker's API, as `serve --listen` gives it: `http://HOST:PORT`
    /// (`HOST:PORT` alone means `http://HOST:PORT`).
    #[arg(
        long,
        env = "BATCH_WORKER_URL",
        default_value = "http://127.0.0.1:5000",
        value_parser = parse_worker_url
    )]
    pub worker: Url,
    /// A file holding the worker's API token (as `serve --api-token-file`).
    #[arg(long, env = "BATCH_WORKER_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
}

impl WorkerArgs {
    /// A client of the worker.
    ///
    /// # Errors
    /// The token file is unusable.
    pub fn client(&self) -> Result<WorkerClient, CliError> {
        let token = self
            .api_token_file
            .as_deref()
            .map(ApiToken::from_file)
            .transpose()?;
        Ok(WorkerClient::new(self.worker.clone(), token))
    }
}

/// `--worker`'s value: an http(s) URL, or `HOST:PORT` taken as http.
pub fn parse_worker_url(text: &str) -> Result<Url, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "a port alone is not the worker's URL; did you mean http://127.0.0.1:{text}?"
        ));
    }
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| {
        format!("{e}; expected the worker's API as http://HOST:PORT, e.g. http://127.0.0.1:5000")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!(
            "expected an http:// or https:// URL with a host, e.g. http://127.0.0.1:5000, got {text:?}"
        ));
    }
    Ok(url)
}

/// A job as `BATCH:JOB` (`1:3`).
pub fn parse_job(text: &str) -> Result<(i64, i64), String> {
    let (batch, job) = text
        .split_once(':')
        .ok_or_else(|| format!("expected BATCH:JOB, e.g. 1:3, got {text:?}"))?;
    let id = |name: &str, s: &str| {
        s.trim()
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .ok_or_else(|| {
                format!("expected a non-negative integer {name} in BATCH:JOB, got {s:?}")
            })
    };
    Ok((id("batch id", batch)?, id("job id", job)?))
}

/// A Hail state name, for `--state`.
fn parse_state(text: &str) -> Result<WireState, String> {
    crate::api::extension::parse_state(text).map_err(|e| e.to_string())
}

/// `jobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List the jobs the worker holds (running, waiting, and finished ones
    /// it still keeps), by batch and job.
    List(ListArgs),
    /// One job's status: its state in words, times, resources, warnings.
    Status(JobArgs),
    /// One job's recorded events, oldest first: what happened, when.
    Events(JobArgs),
    /// One task's log (`main` by default); `-f` follows it until the job ends.
    Log(LogArgs),
    /// Cancel a job (Hail's delete call).
    Cancel(JobArgs),
}

/// Flags of `jobs list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The worker.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Only this batch's jobs.
    #[arg(long)]
    pub batch: Option<i64>,
    /// Only jobs in these states (Hail's names: pending, initializing,
    /// running, succeeded, failed, error, cancelled), comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_state)]
    pub state: Vec<WireState>,
    /// At most this many jobs (1 to 1000); the last line says how to see
    /// the next page.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub limit: u16,
    /// Start after this job (a previous page's last, as BATCH:JOB).
    #[arg(long)]
    pub after: Option<String>,
    /// Every page, not only the first.
    #[arg(long)]
    pub all: bool,
    /// Print the worker's JSON pages instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of the subcommands about one job.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job, as BATCH:JOB (`1:3`).
    #[arg(value_parser = parse_job)]
    pub job: (i64, i64),
    /// The worker.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Print the worker's JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `jobs log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// The job, as BATCH:JOB (`1:3`).
    #[arg(value_parser = parse_job)]
    pub job: (i64, i64),
    /// The worker.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Which task's log: `input` (downloads), `main` (the job's process)
    /// or `output` (uploads).
    #[arg(long, default_value = "main", value_parser = ["input", "main", "output"])]
    pub task: String,
    /// Keep printing what the task writes until the job ends; then exit
    /// with the job's exit code (1 if it has none: an error, a cancel).
    #[arg(short, long)]
    pub follow: bool,
}

/// Runs a `jobs` subcommand.
///
/// # Errors
/// [`CliError::Client`] when the worker cannot be reached or refuses.
pub async fn run(command: &JobsCommand) -> Result<ExitCode, CliError> {
    match command {
        JobsCommand::List(args) => list(args).await,
        JobsCommand::Status(args) => status(args).await,
        JobsCommand::Events(args) => events(args).await,
        JobsCommand::Log(args) => log(args).await,
        JobsCommand::Cancel(args) => cancel(args).await,
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values serialise")
    );
}

/// A duration in ms for people: `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`.
pub fn human_ms(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {:02} s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{} h {:02} min", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// A time in ms since the Unix epoch as ISO-8601 UTC, to the ms.
pub fn iso_ms(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// The `TIME` column: how long the job ran, runs, or has waited.
fn time_column(job: &JobSummary, now_ms: i64) -> String {
    match (job.started_at_ms, job.ended_at_ms) {
        (Some(start), Some(end)) => format!("ran {}", human_ms(end - start)),
        (Some(start), None) => format!("running {}", human_ms(now_ms - start)),
        (None, Some(end)) => format!("after {}", human_ms(end - job.accepted_at_ms)),
        (None, None) => format!("waiting {}", human_ms(now_ms - job.accepted_at_ms)),
    }
}

/// The list's table: a header, one line per job, no trailing summary.
pub fn render_table(jobs: &[JobSummary], now_ms: i64) -> String {
    let rows: Vec<[String; 5]> = jobs
        .iter()
        .map(|j| {
            [
                format!("{}:{}", j.batch_id, j.job_id),
                j.attempt_id.clone(),
                j.state.as_str().to_owned(),
                time_column(j, now_ms),
                j.summary.clone(),
            ]
        })
        .collect();
    let header = ["JOB", "ATTEMPT", "STATE", "TIME", "WHAT"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Counts by Hail state, in the order a job goes through them: `3
/// running, 8 succeeded, 1 failed`.
pub fn count_line(jobs: &[JobSummary]) -> String {
    let parts: Vec<String> = crate::api::extension::STATE_NAMES
        .iter()
        .filter_map(|state| {
            let n = jobs.iter().filter(|j| j.state == *state).count();
            (n > 0).then(|| format!("{n} {}", state.as_str()))
        })
        .collect();
    if parts.is_empty() {
        return "none".to_owned();
    }
    parts.join(", ")
}

async fn list(args: &ListArgs) -> Result<ExitCode, CliError> {
    let client = args.worker.client()?;
    let limit = usize::from(args.limit).clamp(1, MAX_PAGE_JOBS);
    let mut after = args.after.clone();
    let mut jobs = Vec::new();
    let (matched, next) = loop {
        let page = client
            .list(args.batch, &args.state, after.as_deref(), limit)
            .await?;
        if args.json {
            print_json(&page);
        }
        let matched = jobs.len() + page.matched;
        jobs.extend(page.jobs);
        match page.next {
            Some(next) if args.all => after = Some(next),
            next => break (matched, next),
        }
    };
    if args.json {
        return Ok(ExitCode::SUCCESS);
    }
    if jobs.is_empty() {
        println!("no jobs{}", filter_words(args));
        return Ok(ExitCode::SUCCESS);
    }
    print!(
        "{}",
        printable(&render_table(&jobs, crate::worker::now_ms()))
    );
    println!(
        "{} job{}: {}",
        jobs.len(),
        plural(jobs.len()),
        count_line(&jobs)
    );
    if let Some(next) = next {
        println!(
            "{} more; the next page: --after {next} (or --all)",
            matched - jobs.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn filter_words(args: &ListArgs) -> String {
    let mut words = String::new();
    if let Some(batch) = args.batch {
        words.push_str(&format!(" in batch {batch}"));
    }
    if !args.state.is_empty() {
        let names: Vec<&str> = args.state.iter().map(|s| s.as_str()).collect();
        words.push_str(&format!(" in state {}", names.join(" or ")));
    }
    words
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The status JSON for a person: one `label: value` line per fact.
pub fn render_status(status: &Value) -> String {
    let ext = &status[crate::worker::EXTENSION_KEY];
    let words = serde_json::from_value::<JobState>(ext["worker_state"].clone())
        .map(|s| s.in_words())
        .unwrap_or_else(|_| status["state"].as_str().unwrap_or("?").to_owned());
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut add = |label: &str, value: String| lines.push((label.to_owned(), value));
    add(
        "job",
        format!(
            "{}:{} attempt {} (user {}, format {})",
            status["batch_id"],
            status["job_id"],
            text(&status["attempt_id"]),
            text(&status["user"]),
            status["format_version"]
        ),
    );
    add(
        "state",
        format!("{words} [Hail state: {}]", text(&status["state"])),
    );
    if let Some(error) = status["error"].as_str() {
        add("error", error.to_owned());
    }
    let (start, end) = (status["start_time"].as_i64(), status["end_time"].as_i64());
    match (start, end) {
        (Some(s), Some(e)) => add(
            "time",
            format!(
                "started {}, ended {} ({})",
                iso_ms(s),
                iso_ms(e),
                human_ms(e - s)
            ),
        ),
        (Some(s), None) => add(
            "time",
            format!(
                "started {} ({} ago)",
                iso_ms(s),
                human_ms(crate::worker::now_ms() - s)
            ),
        ),
        (None, Some(e)) => add("time", format!("ended {} without starting", iso_ms(e))),
        (None, None) => add("time", "not started".to_owned()),
    }
    if let Some(resources) = ext["spec_resources"].as_object() {
        let parts: Vec<String> = resources
            .iter()
            .map(|(k, v)| format!("{k} {}", resource_value(k, v)))
            .collect();
        add("asked for", parts.join(", "));
    }
    if let Some(billed) = status["resources"].as_array().filter(|r| !r.is_empty()) {
        let parts: Vec<String> = billed
            .iter()
            .map(|r| format!("{} × {}", text(&r["name"]), r["quantity"]))
            .collect();
        add("billed", parts.join(", "));
    }
    if let Ok(network) =
        serde_json::from_value::<batch_worker_model::JobAddress>(ext["network"].clone())
    {
        add("network", network.in_words());
    }
    for task in ["input", "main", "output"] {
        let t = &status["container_statuses"][task];
        if t.is_null() {
            continue;
        }
        let mut value = text(&t["state"]);
        if let Some(code) = t["container_status"]["exit_code"].as_i64() {
            value.push_str(&format!(", exit {code}"));
        }
        if let Some(short) = t["short_error"].as_str() {
            value.push_str(&format!(", {short}"));
        }
        if let Some(ms) = task_ms(t) {
            value.push_str(&format!(", {}", human_ms(ms)));
        }
        add(&format!("task {task}"), value);
    }
    for warning in ext["spec_warnings"].as_array().into_iter().flatten() {
        let message = warning["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| warning.to_string());
        add("warning", message);
    }
    if let Some(secrets) = ext["secrets"].as_array().filter(|s| !s.is_empty()) {
        let names: Vec<String> = secrets.iter().map(text).collect();
        add("secrets", names.join(", "));
    }
    let width = lines.iter().map(|(l, _)| l.len() + 1).max().unwrap_or(0);
    lines
        .into_iter()
        .map(|(label, value)| format!("{:<width$}  {value}\n", format!("{label}:")))
        .collect()
}

/// A resource's value with its unit (`memory_bytes 3.8 GiB`).
fn resource_value(name: &str, value: &Value) -> String {
    match (name, value.as_u64()) {
        ("memory_bytes", Some(bytes)) => bytesize::ByteSize(bytes).display().iec().to_string(),
        ("cores_mcpu", Some(mcpu)) => format!("{mcpu} ({} cores)", mcpu as f64 / 1000.0),
        _ => value.to_string(),
    }
}

/// How long a task ran: its `running` step's duration.
fn task_ms(task: &Value) -> Option<i64> {
    task["timing"]["running"]["duration"].as_i64()
}

/// A JSON string without quotes; other values as JSON.
fn text(value: &Value) -> String {
    value
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| value.to_string())
}

async fn status(args: &JobArgs) -> Result<ExitCode, CliError> {
    let (batch_id, job_id) = args.job;
    let status = args.worker.client()?.status(batch_id, job_id).await?;
    if args.json {
        print_json(&status);
    } else {
        print!("{}", printable(&render_status(&status)));
    }
    Ok(ExitCode::SUCCESS)
}

/// The events for a person: time since the first event, the event, the
/// state after it, and the event's fields.
pub fn render_events(events: &[EventLine]) -> String {
    let Some(first) = events.first() else {
        return "no events\n".to_owned();
    };
    let mut out = format!("first event at {}\n", iso_ms(first.time_ms));
    let name_width = events
        .iter()
        .map(|e| e.event["type"].as_str().unwrap_or("?").len())
        .max()
        .unwrap_or(0);
    let state_width = events
        .iter()
        .map(|e| e.state_after.len())
        .max()
        .unwrap_or(0);
    for e in events {
        let name = e.event["type"].as_str().unwrap_or("?");
        let fields: Vec<String> = e
            .event
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != "type")
            .map(|(k, v)| format!("{k}={}", crate::wire::truncate(&text(v), 120)))
            .collect();
        let line = format!(
            "{:>10}  {name:<name_width$}  → {:<state_width$}  {}",
            format!("+{:.3} s", (e.time_ms - first.time_ms) as f64 / 1000.0),
            e.state_after,
            fields.join(" ")
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

async fn events(args: &JobArgs) -> Result<ExitCode, CliError> {
    let (batch_id, job_id) = args.job;
    let events = args.worker.client()?.events(batch_id, job_id).await?;
    if args.json {
        let values: Vec<Value> = events
            .iter()
            .map(|e| {
                serde_json::json!({
                    "seq": e.seq, "time_ms": e.time_ms, "event": e.event,
                    "state_after": e.state_after,
                })
            })
            .collect();
        print_json(&values);
    } else {
        print!("{}", printable(&render_events(&events)));
    }
    Ok(ExitCode::SUCCESS)
}

async fn cancel(args: &JobArgs) -> Result<ExitCode, CliError> {
    let (batch_id, job_id) = args.job;
    let answer = args.worker.client()?.cancel(batch_id, job_id).await?;
    if args.json {
        print_json(&answer);
    } else {
        let state = serde_json::from_value::<JobState>(answer["worker_state"].clone()).ok();
        let words = state
            .as_ref()
            .map(JobState::in_words)
            .unwrap_or_else(|| text(&answer["state"]));
        if state.as_ref().is_some_and(JobState::is_terminal) {
            println!(
                "job {batch_id}:{job_id} had already ended ({}); nothing to cancel",
                printable(&words)
            );
        } else {
            println!(
                "job {batch_id}:{job_id}: cancel requested; now {}",
                printable(&words)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn log(args: &LogArgs) -> Result<ExitCode, CliError> {
    let (batch_id, job_id) = args.job;
    let client = args.worker.client()?;
    let mut offset = 0u64;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    loop {
        // The state first: a log read after the job ended is its whole log.
        let ended = if args.follow {
            let status = client.status(batch_id, job_id).await?;
            terminal(&status).then_some(status)
        } else {
            None
        };
        offset += client
            .log_to(batch_id, job_id, &args.task, offset, &mut out)
            .await?;
        out.flush().map_err(|source| CliError::Io {
            context: "writing the log to stdout".into(),
            source,
        })?;
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = ended {
            return Ok(exit_code_of(&status));
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// Whether a status JSON's job has ended.
fn terminal(status: &Value) -> bool {
    matches!(
        status["state"].as_str(),
        Some("succeeded" | "failed" | "error" | "cancelled")
    )
}

/// The job's exit code as this process's: 0 for a job that succeeded, its
/// main task's exit code for one that failed, else 1.
pub fn exit_code_of(status: &Value) -> ExitCode {
    let main_exit = status["container_statuses"]["main"]["container_status"]["exit_code"].as_i64();
    match (status["state"].as_str(), main_exit) {
        (Some("succeeded"), _) => ExitCode::SUCCESS,
        (Some("failed"), Some(code)) => ExitCode::from(code.clamp(1, 255) as u8),
        _ => ExitCode::FAILURE,
    }
}

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> CliError {
        CliError::Client(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_with_a_network_names_its_address_and_published_port() {
        let status = serde_json::json!({
            "batch_id": 1, "job_id": 3, "state": "Running",
            "batch_worker": {
                "worker_state": "running.executing",
                "network": {"mode": "public", "ip": "172.21.0.11", "port": 8000, "host_port": 46572}
            }
        });
        let text = render_status(&status);
        assert!(
            text.lines().any(|l| l.starts_with("network")
                && l.ends_with("public network, 172.21.0.11, port 8000 on host port 46572")),
            "{text}"
        );
        let without =
            serde_json::json!({"batch_id": 1, "job_id": 3, "state": "Running", "batch_worker": {}});
        assert!(!render_status(&without).contains("network"));
    }
}
