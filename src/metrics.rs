//! The worker's Prometheus metrics (`GET /metrics`), in the Prometheus text
//! exposition format (version 0.0.4), through the `prometheus-client` crate.
//!
//! Each [`crate::worker::Worker`] has its own [`Metrics`] and its own
//! registry (no global recorder: tests run many workers in one process).
//! Names follow the Prometheus conventions: the `batch_worker_` prefix, the
//! unit in the name (`_seconds`), `_total` on counters.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `batch_worker_create_duration_seconds` | histogram | |
//! | `batch_worker_spec_load_duration_seconds` | histogram | |
//! | `batch_worker_jobs` | gauge | `state` |
//! | `batch_worker_jobs_created_total` | counter | |
//! | `batch_worker_jobs_ended_total` | counter | `outcome` |
//! | `batch_worker_job_errors_total` | counter | `kind` |
//! | `batch_worker_reports_pending` | gauge | |
//! | `batch_worker_reports_retried_total` | counter | |
//! | `batch_worker_journal_sync_duration_seconds` | histogram | |
//! | `batch_worker_process_exit_codes_total` | counter | `code` |
//!
//! Counters count what this process saw since it started (Prometheus'
//! `rate()` handles the reset at a restart): attempts recovered from the
//! journal are not counted again, but their `worker_restarted` errors are.
//! Label values never carry a job's data: states, outcomes and error kinds
//! are fixed names, exit codes numbers.

use std::sync::Mutex;
use std::time::Duration;

use batch_worker_model::{ErrorKind, Event, ExitStatus, JobState, Outcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of `GET /metrics`: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every value of the `state` label of `batch_worker_jobs`: the names
/// [`JobState::name`] gives, each exported (0 when no attempt is in it).
pub const JOB_STATES: [&str; 10] = [
    "accepted",
    "loading_spec",
    "running.waiting_for_resources",
    "running.initializing",
    "running.starting",
    "running.executing",
    "running.cancelling",
    "running.uploading_outputs",
    "done",
    "errored",
];

/// Every value of the `outcome` label of `batch_worker_jobs_ended_total`.
pub const OUTCOMES: [&str; 4] = ["succeeded", "failed", "errored", "cancelled"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Every value of the `result` label of `batch_worker_image_pulls_total`.
pub const PULL_RESULTS: [&str; 3] = ["downloaded", "cached", "failed"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

/// One worker's metric families and the registry that exports them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Held while a scrape sets the gauges and encodes, so that two
    /// scrapes at once do not mix their gauge values.
    scrape: Mutex<()>,
    /// `batch_worker_create_duration_seconds`: time in the create handler
    /// (parsing, validating, the `Created` record's journal write), in
    /// seconds, every answer included; buckets 100 µs to 3.3 s.
    create_duration: Histogram,
    /// `batch_worker_spec_load_duration_seconds`: one spec load (permit
    /// wait, both range reads with their retries, parsing), in seconds,
    /// loaded or failed (not when cancelled); buckets 1 ms to 65 s.
    spec_load_duration: Histogram,
    /// `batch_worker_jobs{state}`: attempts in the worker's table by state
    /// ([`JOB_STATES`]), counted at scrape time.
    jobs: Family<StateLabel, Gauge>,
    /// `batch_worker_jobs_created_total`: create calls accepted (answered
    /// 200; their `Created` record written).
    jobs_created: Counter,
    /// `batch_worker_jobs_ended_total{outcome}`: attempts that reached a
    /// terminal state: `succeeded`, `failed` (non-zero exit, signal or
    /// timeout), `errored`, `cancelled`.
    jobs_ended: Family<OutcomeLabel, Counter>,
    /// `batch_worker_job_errors_total{kind}`: attempts that ended
    /// `Errored`, by [`ErrorKind`] wire name (`spec_corrupt`, ...).
    job_errors: Family<KindLabel, Counter>,
    /// `batch_worker_reports_pending`: report tasks (`job_started`,
    /// `job_complete` and the logs uploads before it) not finished, at
    /// scrape time.
    reports_pending: Gauge,
    // `batch_worker_reports_retried_total` (`job_started` and
    // `job_complete` calls that failed and were retried) is the driver
    // client's counter, registered only.
    /// `batch_worker_journal_sync_duration_seconds`: writing one journal
    /// batch and making it durable (`fdatasync` with `--durability fsync`),
    /// in seconds; buckets 50 µs to 1.6 s.
    journal_sync_duration: Histogram,
    /// `batch_worker_process_exit_codes_total{code}`: job processes that
    /// exited, by exit code (`128 + n` for signal n, `timeout` when the
    /// worker ended it at the spec's timeout).
    exit_codes: Family<CodeLabel, Counter>,
    /// `batch_worker_image_pulls_total{result}`: container jobs' images
    /// made ready (`--executor runc`): `downloaded` from the registry,
    /// `cached` (already in the image cache, or pulled by another job
    /// meanwhile), or `failed` (the job errored `image_pull_failed`).
    image_pulls: Family<ResultLabel, Counter>,
}

impl Metrics {
    /// A fresh registry with every family. `reports_retried` is the driver
    /// client's retry counter ([`crate::driver_client::DriverClient::retried_reports`]),
    /// or a counter that stays 0 for a worker without a driver.
    pub fn new(reports_retried: Counter) -> Metrics {
        let mut registry = Registry::with_prefix("batch_worker");
        let create_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register_with_unit(
            "create_duration",
            "Time in the create handler (parse, validate, journal the created record)",
            Unit::Seconds,
            create_duration.clone(),
        );
        let spec_load_duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register_with_unit(
            "spec_load_duration",
            "Time to load one job spec (permit, range reads with retries, parse)",
            Unit::Seconds,
            spec_load_duration.clone(),
        );
        let jobs = Family::<StateLabel, Gauge>::default();
        registry.register(
            "jobs",
            "Job attempts in the worker's table, by state",
            jobs.clone(),
        );
        let jobs_created = Counter::default();
        registry.register(
            "jobs_created",
            "Create calls accepted",
            jobs_created.clone(),
        );
        let jobs_ended = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "jobs_ended",
            "Job attempts that reached a final state, by outcome",
            jobs_ended.clone(),
        );
        let job_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "job_errors",
            "Job attempts that ended as errors, by error kind",
            job_errors.clone(),
        );
        let reports_pending = Gauge::default();
        registry.register(
            "reports_pending",
            "Reports to the driver (and the logs uploads before job_complete) not finished",
            reports_pending.clone(),
        );
        registry.register(
            "reports_retried",
            "job_started and job_complete calls that failed and were retried",
            reports_retried.clone(),
        );
        let journal_sync_duration = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        registry.register_with_unit(
            "journal_sync_duration",
            "Time to write one journal batch and make it durable",
            Unit::Seconds,
            journal_sync_duration.clone(),
        );
        let exit_codes = Family::<CodeLabel, Counter>::default();
        registry.register(
            "process_exit_codes",
            "Job processes that exited, by exit code (timeout: ended at the spec's timeout)",
            exit_codes.clone(),
        );
        let image_pulls = Family::<ResultLabel, Counter>::default();
        registry.register(
            "image_pulls",
            "Container jobs' images made ready, by result (downloaded, cached, failed)",
            image_pulls.clone(),
        );
        for result in PULL_RESULTS {
            drop(image_pulls.get_or_create(&ResultLabel { result }));
        }
        // Every fixed series exists from the start, at 0, so that a query
        // over them never sees a gap.
        for outcome in OUTCOMES {
            drop(jobs_ended.get_or_create(&OutcomeLabel { outcome }));
        }
        for kind in ErrorKind::ALL {
            drop(job_errors.get_or_create(&KindLabel {
                kind: kind.as_str(),
            }));
        }
        for state in JOB_STATES {
            drop(jobs.get_or_create(&StateLabel { state }));
        }
        Metrics {
            registry,
            scrape: Mutex::new(()),
            create_duration,
            spec_load_duration,
            jobs,
            jobs_created,
            jobs_ended,
            job_errors,
            reports_pending,
            journal_sync_duration,
            exit_codes,
            image_pulls,
        }
    }

    /// Observes one create call's handler time.
    pub fn observe_create(&self, elapsed: Duration) {
        self.create_duration.observe(elapsed.as_secs_f64());
    }

    /// Observes one finished spec load.
    pub fn observe_spec_load(&self, elapsed: Duration) {
        self.spec_load_duration.observe(elapsed.as_secs_f64());
    }

    /// A hook for the journal writer: observes one batch's write and sync.
    pub fn journal_sync_observer(&self) -> impl Fn(Duration) + Send + Sync + 'static {
        let histogram = self.journal_sync_duration.clone();
        move |elapsed| histogram.observe(elapsed.as_secs_f64())
    }

    /// Counts one accepted create call.
    pub fn job_created(&self) {
        self.jobs_created.inc();
    }

    /// Counts what one recorded event says: an exit code for
    /// `ProcessExited`, and the outcome (and error kind) when the event
    /// made the attempt final (`ended`). `state` is the state after it.
    pub fn event_recorded(&self, event: &Event, state: &JobState, ended: bool) {
        match event {
            Event::ImagePulled { pulled, .. } => {
                let result = if *pulled { "downloaded" } else { "cached" };
                self.image_pulls
                    .get_or_create(&ResultLabel { result })
                    .inc();
            }
            Event::ImagePullFailed { .. } => {
                let result = "failed";
                self.image_pulls
                    .get_or_create(&ResultLabel { result })
                    .inc();
            }
            _ => {}
        }
        if let Event::ProcessExited { exit, .. } = event {
            let code = match exit {
                ExitStatus::TimedOut { .. } => "timeout".to_owned(),
                other => other
                    .exit_code()
                    .map_or_else(|| "unknown".to_owned(), |c| c.to_string()),
            };
            self.exit_codes.get_or_create(&CodeLabel { code }).inc();
        }
        if !ended {
            return;
        }
        let outcome = match state {
            JobState::Done {
                outcome: Outcome::Succeeded,
            } => "succeeded",
            JobState::Done {
                outcome: Outcome::Failed { .. },
            } => "failed",
            JobState::Done {
                outcome: Outcome::Cancelled,
            } => "cancelled",
            JobState::Errored { kind, .. } => {
                self.job_errors
                    .get_or_create(&KindLabel {
                        kind: kind.as_str(),
                    })
                    .inc();
                "errored"
            }
            _ => return,
        };
        self.jobs_ended
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// The exposition text, with the gauges set from the worker's table at
    /// scrape time: `jobs_by_state` (state names as [`JOB_STATES`], with
    /// their counts; absent states are 0) and `reports_pending`.
    pub fn render(
        &self,
        jobs_by_state: impl IntoIterator<Item = (&'static str, i64)>,
        reports_pending: usize,
    ) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        for state in JOB_STATES {
            self.jobs.get_or_create(&StateLabel { state }).set(0);
        }
        for (state, count) in jobs_by_state {
            self.jobs.get_or_create(&StateLabel { state }).set(count);
        }
        self.reports_pending
            .set(i64::try_from(reports_pending).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn names_carry_units_and_counters_end_in_total() {
        let metrics = Metrics::new(Counter::default());
        metrics.job_created();
        metrics.observe_create(Duration::from_micros(300));
        metrics.event_recorded(
            &Event::ProcessExited {
                exit: ExitStatus::Code { code: 3 },
                duration_ms: 5,
            },
            &JobState::Done {
                outcome: Outcome::Failed {
                    exit: ExitStatus::Code { code: 3 },
                },
            },
            true,
        );
        metrics.event_recorded(
            &Event::SpecLoadFailed {
                kind: ErrorKind::SpecCorrupt,
                message: "x".into(),
            },
            &JobState::Errored {
                kind: ErrorKind::SpecCorrupt,
                message: "x".into(),
            },
            true,
        );
        let text = metrics.render([("done", 1), ("errored", 1)], 2);
        assert_eq!(value(&text, "batch_worker_jobs_created_total"), Some(1.0));
        assert_eq!(
            value(&text, "batch_worker_create_duration_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "batch_worker_jobs_ended_total{outcome=\"failed\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                "batch_worker_jobs_ended_total{outcome=\"succeeded\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &text,
                "batch_worker_job_errors_total{kind=\"spec_corrupt\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "batch_worker_process_exit_codes_total{code=\"3\"}"),
            Some(1.0)
        );
        assert_eq!(value(&text, "batch_worker_jobs{state=\"done\"}"), Some(1.0));
        assert_eq!(
            value(&text, "batch_worker_jobs{state=\"loading_spec\"}"),
            Some(0.0)
        );
        assert_eq!(value(&text, "batch_worker_reports_pending"), Some(2.0));
        assert!(text.contains("# TYPE batch_worker_journal_sync_duration_seconds histogram"));
        assert!(text.contains("# TYPE batch_worker_spec_load_duration_seconds histogram"));
        assert!(text.contains("# TYPE batch_worker_reports_retried_total counter"));
        // A later scrape sets the gauges again.
        let text = metrics.render([], 0);
        assert_eq!(value(&text, "batch_worker_jobs{state=\"done\"}"), Some(0.0));
    }

    #[test]
    fn every_state_name_is_a_label_value() {
        use batch_worker_model::RunPhase;
        let states = [
            JobState::Accepted,
            JobState::LoadingSpec,
            JobState::Running {
                phase: RunPhase::WaitingForResources,
            },
            JobState::Running {
                phase: RunPhase::Initializing,
            },
            JobState::Running {
                phase: RunPhase::Starting,
            },
            JobState::Running {
                phase: RunPhase::Executing { pid: 1 },
            },
            JobState::Running {
                phase: RunPhase::Cancelling,
            },
            JobState::Running {
                phase: RunPhase::UploadingOutputs,
            },
            JobState::Done {
                outcome: Outcome::Succeeded,
            },
            JobState::Errored {
                kind: ErrorKind::SpecMissing,
                message: String::new(),
            },
        ];
        for state in states {
            assert!(JOB_STATES.contains(&state.name()), "{}", state.name());
        }
    }
}
