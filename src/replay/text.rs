//! The replay report as text for a person: the summary (final states in
//! words, per-phase durations, the cores' peak), then each attempt's
//! timeline when asked for, then the problems.
//!
//! Times are relative (`+12.345 s`): in the summary to the journal's
//! first record, in a timeline to the attempt's `created` (its header gives
//! the absolute time); [`TimeFormat::Iso`] prints ISO-8601 UTC instead.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use batch_worker_model::{Event, ExitStatus, JobState, Outcome, RunPhase};

use super::phases::Phase;
use super::{Percentiles, Report, Summary, Timeline};

/// How the text shows a moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TimeFormat {
    /// Seconds since a start (`+12.345 s`): the journal's in the summary,
    /// the attempt's in its timeline.
    #[default]
    Relative,
    /// ISO-8601 UTC with milliseconds (`2025-11-30T12:00:00.123Z`).
    Iso,
}

/// What the text holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct RenderOptions {
    /// How times are shown.
    pub time: TimeFormat,
    /// Each reported attempt's timeline after the summary (the CLI sets it
    /// with `--job` or `--timelines`).
    pub timelines: bool,
}

/// At most this many problems are listed (the JSON has every one).
const MAX_PROBLEMS: usize = 50;

/// A moment, ms since the Unix epoch, as ISO-8601 UTC with milliseconds
/// (`2025-11-30T12:00:00.123Z`); a time before 1970 as `<ms> ms`.
pub fn iso(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        Err(_) => format!("{ms} ms since the epoch"),
    }
}

/// An offset in ms as signed seconds with milliseconds: `+12.345 s`.
pub fn relative(ms: i64) -> String {
    let sign = if ms < 0 { '-' } else { '+' };
    let ms = ms.unsigned_abs();
    format!("{sign}{}.{:03} s", ms / 1000, ms % 1000)
}

/// A duration in ms for a person: `12 ms`, `1.991 s`, `2 min 03.4 s`,
/// `1 h 02 min`.
pub fn duration(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let text = if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{}.{:03} s", ms / 1000, ms % 1000)
    } else if ms < 3_600_000 {
        // In tenths of a second, rounded (59.96 s is 1 min 00.0 s).
        let tenths = (ms + 50) / 100;
        let (minutes, rest) = (tenths / 600, tenths % 600);
        format!("{minutes} min {:02}.{} s", rest / 10, rest % 10)
    } else {
        format!("{} h {:02} min", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    };
    format!("{sign}{text}")
}

/// Cores from mcpu: `1`, `0.25`, `2.5`.
pub fn cores(mcpu: u64) -> String {
    let text = format!("{}.{:03}", mcpu / 1000, mcpu % 1000);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn bytes(n: u64) -> String {
    bytesize::ByteSize(n).to_string()
}

/// How a process ended, in words: `exit 3`, `killed by signal 9 (exit
/// 137)`, `timed out after 10.000 s`, ...
pub fn exit_words(exit: &ExitStatus) -> String {
    match *exit {
        ExitStatus::Code { code } => format!("exit {code}"),
        ExitStatus::Signal { signal } => {
            format!("killed by signal {signal} (exit {})", 128 + signal)
        }
        ExitStatus::TimedOut { timeout_ms } => {
            format!(
                "ended at the spec's timeout of {}",
                duration(timeout_ms as i64)
            )
        }
        ExitStatus::StorageExceeded {
            limit_bytes,
            used_bytes,
        } => format!(
            "storage exceeded: {} used of {}",
            bytes(used_bytes),
            bytes(limit_bytes)
        ),
        ExitStatus::OutOfMemory {
            code,
            memory_limit_bytes,
        } => format!(
            "out of memory (limit {}, exit {code})",
            bytes(memory_limit_bytes)
        ),
    }
}

/// The class of a final state, a few words (the keys of
/// [`Summary::by_outcome`]): `succeeded`, `failed`, `timed out`, `out of
/// memory`, `storage exceeded`, `cancelled`, `errored`, or for an attempt
/// the journal ends in, `still waiting for spec`, `still waiting for
/// resources`, `still initializing`, `still starting`, `still running`,
/// `still cancelling`, `still uploading outputs`.
pub fn outcome(state: &JobState) -> &'static str {
    match state {
        JobState::Done { outcome } => match outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Cancelled => "cancelled",
            Outcome::Failed { exit } => match exit {
                ExitStatus::TimedOut { .. } => "timed out",
                ExitStatus::OutOfMemory { .. } => "out of memory",
                ExitStatus::StorageExceeded { .. } => "storage exceeded",
                ExitStatus::Code { .. } | ExitStatus::Signal { .. } => "failed",
            },
        },
        JobState::Errored { .. } => "errored",
        JobState::Accepted | JobState::LoadingSpec => "still waiting for spec",
        JobState::Running { phase } => match phase {
            RunPhase::WaitingForResources => "still waiting for resources",
            RunPhase::Initializing => "still initializing",
            RunPhase::Starting => "still starting",
            RunPhase::Executing { .. } => "still running",
            RunPhase::Cancelling => "still cancelling",
            RunPhase::UploadingOutputs => "still uploading outputs",
        },
    }
}

/// An attempt's final state in words: `succeeded (exit 0)`, `failed (exit
/// 3)`, `errored: spec_corrupt: <message>`, `cancelled`, `timed out (...)`,
/// `still running (journal ends while the job is running)`, ...
pub fn final_words(state: &JobState) -> String {
    match state {
        JobState::Done { outcome } => match outcome {
            Outcome::Succeeded => "succeeded (exit 0)".to_owned(),
            Outcome::Cancelled => "cancelled".to_owned(),
            Outcome::Failed {
                exit: ExitStatus::TimedOut { timeout_ms },
            } => format!(
                "timed out (after the spec's timeout of {})",
                duration(*timeout_ms as i64)
            ),
            Outcome::Failed { exit } => format!("failed ({})", exit_words(exit)),
        },
        JobState::Errored { kind, message } => format!("errored: {kind}: {message}"),
        JobState::Accepted => {
            "still waiting for its spec (journal ends before its spec load began)".to_owned()
        }
        JobState::LoadingSpec => {
            "still waiting for its spec (journal ends while the spec is read)".to_owned()
        }
        JobState::Running { phase } => match phase {
            RunPhase::WaitingForResources => {
                "still waiting for resources (journal ends while it is queued for cores and memory)"
            }
            RunPhase::Initializing => {
                "still initializing (journal ends while its image is pulled or inputs staged)"
            }
            RunPhase::Starting => "still starting (journal ends while its process is spawned)",
            RunPhase::Executing { .. } => "still running (journal ends while the job is running)",
            RunPhase::Cancelling => {
                "still cancelling (journal ends while its process is being ended)"
            }
            RunPhase::UploadingOutputs => {
                "still uploading outputs (journal ends while its outputs are uploaded)"
            }
        }
        .to_owned(),
    }
}

/// A state in a timeline's column: `waiting for resources`, `running (pid
/// 42)`, `failed (exit 3)`, `errored (spec_missing)`.
fn state_words(state: &JobState) -> String {
    match state {
        JobState::Accepted => "accepted".to_owned(),
        JobState::LoadingSpec => "loading spec".to_owned(),
        JobState::Running { phase } => match phase {
            RunPhase::WaitingForResources => "waiting for resources".to_owned(),
            RunPhase::Initializing => "initializing".to_owned(),
            RunPhase::Starting => "starting process".to_owned(),
            RunPhase::Executing { pid } => format!("running (pid {pid})"),
            RunPhase::Cancelling => "cancelling".to_owned(),
            RunPhase::UploadingOutputs => "uploading outputs".to_owned(),
        },
        JobState::Errored { kind, .. } => format!("errored ({kind})"),
        done => final_words(done),
    }
}

/// At most `max` characters of `text`, with `…` when cut.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// `n thing` or `n things`.
fn count(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// The facts an event carries, short (empty when it carries none).
fn event_detail(event: &Event) -> String {
    match event {
        Event::Created { user, .. } if !user.is_empty() => format!("user {user}"),
        Event::SpecLoaded {
            cores_mcpu,
            memory_bytes,
            input_files,
            output_files,
            image,
            ..
        } => {
            let mut text = format!("{} cores, {}", cores(*cores_mcpu), bytes(*memory_bytes));
            if let Some(image) = image {
                let _ = write!(text, ", image {image}");
            }
            if *input_files > 0 {
                let _ = write!(text, ", {input_files} inputs");
            }
            if *output_files > 0 {
                let _ = write!(text, ", {output_files} outputs");
            }
            text
        }
        Event::SpecLoadFailed { kind, message } => format!("{kind}: {message}"),
        Event::ResourcesRefused { message }
        | Event::InputsFailed { message }
        | Event::LaunchFailed { message }
        | Event::OutputsFailed { message }
        | Event::LogsUploadFailed { message } => message.clone(),
        Event::InputsStaged { files, size_bytes }
        | Event::OutputsUploaded { files, size_bytes } => {
            format!("{files} files, {}", bytes(*size_bytes))
        }
        Event::ImagePulled { image, pulled, .. } => {
            format!("{image}, {}", if *pulled { "pulled" } else { "cached" })
        }
        Event::ImagePullFailed { image, message } => format!("{image}: {message}"),
        Event::ProcessStarted { pid, network } => match network {
            None => format!("pid {pid}"),
            Some(n) => format!("pid {pid}, {}", n.in_words()),
        },
        Event::ProcessExited { exit, duration_ms } => {
            format!(
                "{} after {}",
                exit_words(exit),
                duration(*duration_ms as i64)
            )
        }
        _ => String::new(),
    }
}

impl Report {
    /// The report as text: the summary (of the selected job, with
    /// [`super::ReplayOptions::job`]), the timelines if asked for, then the
    /// problems. Its last line is the problems' count or `no problems`.
    pub fn render(&self, options: RenderOptions) -> String {
        let mut out = String::new();
        let origin = self.summary.first_ms.unwrap_or_default();
        let moment = |ms: i64| match options.time {
            TimeFormat::Relative => relative(ms - origin),
            TimeFormat::Iso => iso(ms),
        };
        let s = &self.summary;
        match (s.first_ms, s.last_ms) {
            (Some(first), Some(last)) => {
                let _ = writeln!(
                    out,
                    "journal: {} records, {} attempts, {} to {} ({})",
                    s.records,
                    s.attempts,
                    iso(first),
                    iso(last),
                    duration(last - first)
                );
                if options.time == TimeFormat::Relative {
                    let _ = writeln!(
                        out,
                        "times are from the journal's start: +0.000 s is {}",
                        iso(first)
                    );
                }
            }
            _ => {
                let _ = writeln!(out, "journal: no records");
            }
        }
        let shown = match (&self.job_summary, self.timelines.first()) {
            (Some(job), Some(first)) => {
                let _ = writeln!(
                    out,
                    "\njob {}:{}: {}, {}; the summary below is of this job only",
                    first.key.batch_id,
                    first.key.job_id,
                    count(job.attempts, "attempt"),
                    count(job.records, "record")
                );
                job
            }
            _ => s,
        };
        render_summary(&mut out, shown, &moment);
        if options.timelines {
            for timeline in &self.timelines {
                render_timeline(&mut out, timeline, origin, options.time);
            }
        }
        if self.problems.is_empty() {
            let _ = writeln!(out, "\nno problems");
        } else {
            let _ = writeln!(out, "\n{} problem(s):", self.problems.len());
            for problem in self.problems.iter().take(MAX_PROBLEMS) {
                let _ = writeln!(out, "  {}", problem.describe());
            }
            if self.problems.len() > MAX_PROBLEMS {
                let _ = writeln!(
                    out,
                    "  ... and {} more (--json lists every one)",
                    self.problems.len() - MAX_PROBLEMS
                );
            }
        }
        out
    }
}

/// The order final states are listed in.
const OUTCOMES: [&str; 14] = [
    "succeeded",
    "failed",
    "timed out",
    "out of memory",
    "storage exceeded",
    "errored",
    "cancelled",
    "still waiting for spec",
    "still waiting for resources",
    "still initializing",
    "still starting",
    "still running",
    "still cancelling",
    "still uploading outputs",
];

fn render_summary(out: &mut String, s: &Summary, moment: &dyn Fn(i64) -> String) {
    let _ = writeln!(out, "\nfinal states ({}):", count(s.attempts, "attempt"));
    for name in OUTCOMES {
        let Some(n) = s.by_outcome.get(name) else {
            continue;
        };
        let _ = write!(out, "  {name:<28} {n:>6}");
        if name == "errored" {
            let kinds: Vec<String> = s
                .by_error_kind
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect();
            let _ = write!(out, "   ({})", kinds.join(", "));
        }
        let _ = writeln!(out);
    }
    let row = |out: &mut String, name: &str, p: &Percentiles| {
        if p.count == 0 {
            return;
        }
        let _ = writeln!(
            out,
            "  {name:<28} {:>6} {:>12} {:>12} {:>12}",
            p.count,
            duration(p.p50_ms),
            duration(p.p99_ms),
            duration(p.max_ms)
        );
    };
    let _ = writeln!(
        out,
        "\n{:<30} {:>6} {:>12} {:>12} {:>12}",
        "phases", "count", "p50", "p99", "max"
    );
    for stats in &s.phases {
        row(out, stats.phase.label(), &stats.durations);
    }
    row(out, "created -> process started", &s.accepted_to_running);
    if let Some(at) = s.peak_at_ms {
        let _ = writeln!(
            out,
            "\ncores in use: peak {} core{} ({} mcpu) at {}",
            cores(s.peak_cores_mcpu),
            if s.peak_cores_mcpu == 1000 { "" } else { "s" },
            s.peak_cores_mcpu,
            moment(at)
        );
    }
    let median = |phase: Phase| {
        s.phases
            .iter()
            .find(|stats| stats.phase == phase)
            .map(|stats| stats.durations.p50_ms)
    };
    if let (Some(waiting), Some(running)) =
        (median(Phase::WaitingForResources), median(Phase::Running))
    {
        if waiting > running {
            let _ = writeln!(
                out,
                "queued for cores: the median attempt waited {} for resources and ran {}; the worker's cores were the bottleneck",
                duration(waiting),
                duration(running)
            );
        }
    }
}

fn render_timeline(out: &mut String, timeline: &Timeline, origin: i64, time: TimeFormat) {
    let start = timeline
        .steps
        .first()
        .map_or(timeline.view.accepted_at_ms(), |s| s.time_ms);
    let _ = writeln!(
        out,
        "\nattempt {}: {}",
        timeline.key,
        final_words(&timeline.final_state)
    );
    let _ = writeln!(
        out,
        "  created {} ({} into the journal){}",
        iso(start),
        relative(start - origin),
        if time == TimeFormat::Relative {
            "; times below are from then"
        } else {
            ""
        }
    );
    let mut previous: Option<&JobState> = None;
    for step in &timeline.steps {
        let at = match time {
            TimeFormat::Relative => relative(step.time_ms - start),
            TimeFormat::Iso => iso(step.time_ms),
        };
        let detail = event_detail(&step.event);
        let event = if detail.is_empty() {
            step.event.name().to_owned()
        } else {
            format!("{} ({})", step.event.name(), clip(&detail, 60))
        };
        // The state only where it changes.
        let state = if previous == Some(&step.state_after) {
            String::new()
        } else {
            format!(" -> {}", state_words(&step.state_after))
        };
        previous = Some(&step.state_after);
        let line = format!("  {at:>12}  seq {:>7}  {event:<40}{state}", step.seq);
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let spans: Vec<String> = timeline
        .phases
        .iter()
        .map(|span| {
            format!(
                "{} {}{}",
                span.phase.label(),
                duration(span.duration_ms()),
                if span.open { " (journal ends)" } else { "" }
            )
        })
        .collect();
    let _ = writeln!(out, "  phases: {}", spans.join(", "));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_offsets_read_as_a_person_writes_them() {
        assert_eq!(duration(12), "12 ms");
        assert_eq!(duration(1991), "1.991 s");
        assert_eq!(duration(123_400), "2 min 03.4 s");
        // Rounded to tenths without a "60.0 s".
        assert_eq!(duration(179_990), "3 min 00.0 s");
        assert_eq!(duration(3_720_000), "1 h 02 min");
        assert_eq!(relative(12_345), "+12.345 s");
        assert_eq!(relative(-10), "-0.010 s");
        assert_eq!(iso(1_764_504_000_123), "2025-11-30T12:00:00.123Z");
        assert_eq!(cores(250), "0.25");
        assert_eq!(cores(2000), "2");
    }
}
