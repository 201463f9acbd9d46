//! The demo's progress line on stderr while it works: jobs created, jobs
//! ended of the total, and what it waits for. Drawn by indicatif to
//! `ProgressDrawTarget::stderr()`, which draws nothing when stderr is not
//! a terminal (or `TERM` is `dumb`): piped or in CI, the demo prints only
//! its report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use batch_worker_model::{JobState, RunPhase};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the line is redrawn while nothing changes (its clock and
/// spinner move, so a wait does not look like a hang).
const TICK: Duration = Duration::from_millis(250);

/// The progress lines (counts, then what the demo waits for); clones
/// draw the same lines.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: ProgressBar,
    total: u64,
    created: Arc<AtomicU64>,
}

impl Progress {
    /// A line for `total` jobs, on stderr when it is a terminal.
    pub fn new(total: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
            .with_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix}, {pos}/{len} ended [{bar:30}] {elapsed}\n  {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
        bar.enable_steady_tick(TICK);
        let progress = Progress {
            bar,
            total,
            created: Arc::default(),
        };
        progress.show_created(0);
        progress
    }

    /// Whether nothing is drawn (stderr is not a terminal).
    pub fn is_hidden(&self) -> bool {
        self.bar.is_hidden()
    }

    /// One more create call answered (whatever the answer).
    pub fn created_one(&self) {
        let created = self.created.fetch_add(1, Ordering::Relaxed) + 1;
        self.show_created(created);
    }

    fn show_created(&self, created: u64) {
        self.bar
            .set_prefix(format!("{created}/{} created", self.total));
    }

    /// `ended` jobs are final.
    pub fn ended(&self, ended: u64) {
        self.bar.set_position(ended);
    }

    /// What the demo does or waits for now.
    pub fn doing(&self, what: impl Into<String>) {
        self.bar.set_message(what.into());
    }

    /// Clears the line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// What the demo waits for, for the progress line: the jobs not final
/// (`states` of every planned job) by what they do, and then the
/// `job_complete` reports still missing. `held_reads`: spec reads the
/// injected faults hold (`--store-faults` hang); they end at the spec
/// deadline.
///
/// E.g. `waiting for 12 jobs: 12 reading their spec (3 reads held by the
/// store until the spec deadline)`.
pub fn waiting_for<'a>(
    states: impl IntoIterator<Item = &'a JobState>,
    reports_missing: usize,
    held_reads: u64,
) -> String {
    let mut doing: BTreeMap<u8, (usize, &str)> = BTreeMap::new();
    let mut waiting = 0;
    for state in states {
        let (order, what) = match state {
            JobState::Done { .. } | JobState::Errored { .. } => continue,
            JobState::Accepted | JobState::LoadingSpec => (0, "reading their spec"),
            JobState::Running { phase } => match phase {
                RunPhase::WaitingForResources => (1, "waiting for cores"),
                RunPhase::Initializing | RunPhase::Starting => (2, "starting"),
                RunPhase::Executing { .. } => (3, "running"),
                RunPhase::UploadingOutputs => (4, "uploading outputs"),
                RunPhase::Cancelling => (5, "being cancelled"),
            },
        };
        waiting += 1;
        doing.entry(order).or_insert((0, what)).0 += 1;
    }
    if waiting == 0 {
        return if reports_missing > 0 {
            format!("waiting for {reports_missing} job_complete reports")
        } else {
            "collecting the results".to_owned()
        };
    }
    let parts: Vec<String> = doing
        .into_iter()
        .map(|(order, (n, what))| {
            if order == 0 && held_reads > 0 {
                format!("{n} {what} ({held_reads} reads held by the store until the spec deadline)")
            } else {
                format!("{n} {what}")
            }
        })
        .collect();
    format!(
        "waiting for {waiting} job{}: {}",
        if waiting == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use batch_worker_model::ErrorKind;

    #[test]
    fn the_message_names_what_the_jobs_wait_for() {
        let running = JobState::Running {
            phase: RunPhase::Executing { pid: 7 },
        };
        let errored = JobState::Errored {
            kind: ErrorKind::SpecMissing,
            message: String::new(),
        };
        let states = [
            JobState::LoadingSpec,
            JobState::Accepted,
            running.clone(),
            errored,
        ];
        assert_eq!(
            waiting_for(&states, 0, 2),
            "waiting for 3 jobs: 2 reading their spec (2 reads held by the store until the spec deadline), 1 running"
        );
        assert_eq!(
            waiting_for(&[running], 0, 0),
            "waiting for 1 job: 1 running"
        );
        assert_eq!(waiting_for(&[], 4, 0), "waiting for 4 job_complete reports");
    }

    #[test]
    fn the_line_draws_nothing_when_stderr_is_not_a_terminal() {
        let progress = Progress::new(3);
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr())
            && std::env::var("TERM").is_ok_and(|t| t != "dumb");
        assert_eq!(progress.is_hidden(), !terminal);
        progress.finish();
    }
}
