//! This file is long (about 730 lines) because it is the one fold of a
//! journal for the replay tool: reading, checking, tallying and the report
//! types the renderers in `replay/` share.
//!
//! Replay: rebuilds every attempt from journal records with the `model`
//! crate's transition function (the one definition of the rules), and
//! reports timelines, a summary and every problem found.
//!
//! `batch-worker replay PATH [--job BATCH:JOB] [--timelines] [--time iso]
//! [--json] [--check] [--until SEQ] [--trace FILE] [--timeline FILE.svg]`
//! reads a journal file, every `*.jnl` file (in name order) of a
//! directory, or a worker's data directory (its `journal/`). The format is
//! [`crate::journal`].
//!
//! This file reads the journal files and folds them, with the problem
//! checks and the summary's tallies (about 720 lines, the replay tool's one
//! job; the fold itself is `AttemptView`). Its parts: [`phases`] (what an
//! attempt was doing when), [`text`] (the report for a person), [`trace`]
//! (a Chrome trace-event file) and [`svg`] (a timeline picture).

pub mod phases;
pub mod svg;
pub mod text;
pub mod trace;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use batch_worker_model::{AttemptView, Event, History, JobKey, JobState};
use serde::Serialize;

use crate::journal::{decode_prefix, JournalError, JournalRecord};
use phases::{CoresPoint, Phase, PhaseSpan, PhaseTracker};

pub use text::{RenderOptions, TimeFormat};

/// One event of one attempt, as replayed.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// The record's sequence number.
    pub seq: u64,
    /// When it was recorded, ms since the Unix epoch.
    pub time_ms: i64,
    /// Time since the attempt's previous event, in ms.
    pub since_prev_ms: Option<i64>,
    /// The event.
    pub event: Event,
    /// The state after it.
    pub state_after: JobState,
}

/// An attempt's history.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    /// The attempt.
    pub key: JobKey,
    /// Its events, in order (illegal ones left out, see the problems).
    pub steps: Vec<Step>,
    /// The state after the last event.
    pub final_state: JobState,
    /// What it was doing when: one span per phase it went through, in
    /// order, without gaps; the last is `open` when the journal ends
    /// inside it.
    pub phases: Vec<PhaseSpan>,
    /// The attempt as its events made it: the same fold the worker keeps
    /// live and rebuilds at start, so its status JSON
    /// ([`crate::worker::status_of`]) is the worker's.
    #[serde(skip)]
    pub view: AttemptView,
}

/// Something wrong with a journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// The journal ends in a torn (partly written) record.
    TornTail {
        /// File the damage is in.
        file: String,
        /// Byte offset of the torn record.
        offset: u64,
        /// Bytes dropped.
        bytes: u64,
        /// Why they are not a record.
        reason: String,
    },
    /// A damaged record with valid records after it; replay stops there.
    CorruptRecord {
        /// File the damage is in.
        file: String,
        /// What is wrong, with its offset.
        reason: String,
    },
    /// The journal ends before its checkpoint, or a segment the checkpoint
    /// names is gone: whole records are missing.
    MissingRecords {
        /// Which segment, which bytes.
        reason: String,
    },
    /// Sequence numbers skip (records lost) or go backwards.
    SequenceGap {
        /// The last sequence number seen.
        after_seq: u64,
        /// The next one.
        next_seq: u64,
    },
    /// An attempt's first event is not `created`.
    FirstEventNotCreated {
        /// The record.
        seq: u64,
        /// The attempt.
        key: JobKey,
        /// The event found.
        event: &'static str,
    },
    /// An event the model rejects in the attempt's state.
    IllegalTransition {
        /// The record.
        seq: u64,
        /// The attempt.
        key: JobKey,
        /// The state it was in.
        state: &'static str,
        /// The rejected event.
        event: &'static str,
    },
    /// An event for an attempt already `done` or `errored`.
    EventAfterTerminal {
        /// The record.
        seq: u64,
        /// The attempt.
        key: JobKey,
        /// The event.
        event: &'static str,
    },
    /// A record this worker cannot have written: a newer event version, or
    /// an attempt key no create could make. Its event is not replayed.
    ForeignRecord {
        /// The record.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// A second attempt of a job was created while another was live.
    TwoLiveAttempts {
        /// The record creating the second attempt.
        seq: u64,
        /// The batch.
        batch_id: i64,
        /// The job.
        job_id: i64,
        /// The live attempt, then the new one.
        attempts: [String; 2],
    },
}

/// p50 / p99 / max of a set of durations, in ms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// How many durations.
    pub count: usize,
    /// Median.
    pub p50_ms: i64,
    /// 99th percentile.
    pub p99_ms: i64,
    /// Largest.
    pub max_ms: i64,
}

impl Percentiles {
    fn of(mut values: Vec<i64>) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_unstable();
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Percentiles {
            count: values.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: *values.last().expect("not empty"),
        }
    }
}

/// The durations of one phase over the attempts (its closed spans only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseStats {
    /// The phase.
    pub phase: Phase,
    /// Its durations, in ms.
    #[serde(flatten)]
    pub durations: Percentiles,
}

/// Counts and durations over a set of attempts: every attempt replayed
/// ([`Report::summary`]) or one job's ([`Report::job_summary`]).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Records replayed (of these attempts).
    pub records: usize,
    /// Attempts seen.
    pub attempts: usize,
    /// Attempts by final state as the driver names it (`succeeded`,
    /// `error`, ...; a timeout is `error`, as Hail's).
    pub by_state: BTreeMap<String, usize>,
    /// Errored attempts by kind.
    pub by_error_kind: BTreeMap<String, usize>,
    /// Attempts by final state in words (`succeeded`, `failed`, `timed
    /// out`, `errored`, `cancelled`, `still running`, ...; see
    /// [`text::outcome`]).
    pub by_outcome: BTreeMap<String, usize>,
    /// From `created` to `process_started`.
    pub accepted_to_running: Percentiles,
    /// From `spec_load_started` to `spec_loaded` or `spec_load_failed`.
    pub spec_load: Percentiles,
    /// Each phase some attempt finished, in [`Phase::ALL`] order: its
    /// durations (a span the journal ends in is not counted).
    pub phases: Vec<PhaseStats>,
    /// The first record's time, ms since the Unix epoch (`None`: no record).
    pub first_ms: Option<i64>,
    /// The last record's time, ms since the Unix epoch.
    pub last_ms: Option<i64>,
    /// The most cores in use at once (see [`phases::cores_in_use`]), mcpu.
    pub peak_cores_mcpu: u64,
    /// When that peak began, ms since the Unix epoch.
    pub peak_at_ms: Option<i64>,
}

/// The result of a replay.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Timelines (of the selected job only, with `--job`).
    pub timelines: Vec<Timeline>,
    /// Summary over every attempt.
    pub summary: Summary,
    /// With [`ReplayOptions::job`]: the summary of that job's attempts
    /// only (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_summary: Option<Summary>,
    /// Problems found; `--check` fails when there is any.
    pub problems: Vec<Problem>,
    /// The cores in use over the whole journal (every attempt, whatever
    /// the job selected), a step function.
    #[serde(skip)]
    pub cores_in_use: Vec<CoresPoint>,
}

/// What to replay.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayOptions {
    /// Only this `(batch_id, job_id)`'s timelines, and its own
    /// [`Report::job_summary`] (checks and [`Report::summary`] still cover
    /// all).
    pub job: Option<(i64, i64)>,
    /// Stop after this sequence number (the state at a past moment).
    pub until: Option<u64>,
    /// Sequence gaps up to this number are expected (a compaction snapshot
    /// dropped finished attempts); set by [`replay_path`].
    pub gaps_allowed_through: u64,
}

/// A journal that cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The path could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A directory holds no `*.jnl` file (nor a `journal/` or
    /// `worker/journal/` directory that does).
    #[error("no journal in {path}: expected *.jnl files, a worker's data dir (with journal/), or a demo's (with worker/journal/)")]
    NoJournal {
        /// The directory.
        path: String,
    },
    /// A file is not a journal.
    #[error("{path}: {source}")]
    Journal {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: JournalError,
    },
}

/// Reads the journal at `path` (a file, or a directory of `*.jnl` files)
/// and replays it.
///
/// # Errors
/// [`ReplayError`] when a file cannot be read or is not a journal.
pub fn replay_path(path: &Path, options: ReplayOptions) -> Result<Report, ReplayError> {
    let io = |source| ReplayError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let mut checkpoint = None;
    // A worker's data directory, or a demo's: its journal directory.
    let worker_journal = path.join("journal");
    let demo_journal = path.join("worker").join("journal");
    let path = if worker_journal.is_dir() {
        worker_journal.as_path()
    } else if demo_journal.is_dir() {
        demo_journal.as_path()
    } else {
        path
    };
    if path.is_dir() {
        // Read before the segments: it is written after its records, so
        // the files read next hold at least what it says.
        match crate::journal::read_checkpoint(path) {
            Ok(found) => checkpoint = found,
            Err(e) => problems.push(Problem::MissingRecords {
                reason: e.to_string(),
            }),
        }
        for entry in std::fs::read_dir(path).map_err(io)? {
            let file = entry.map_err(io)?.path();
            if file.extension().is_some_and(|e| e == "jnl") {
                files.push(file);
            }
        }
        // In segment order: by number (`000123.jnl`), as the worker reads
        // them, whatever their names' widths.
        files.sort_by_key(|file| {
            let number = file
                .file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(|stem| stem.parse::<u64>().ok());
            (number.unwrap_or(u64::MAX), file.clone())
        });
        if files.is_empty() {
            return Err(ReplayError::NoJournal {
                path: path.display().to_string(),
            });
        }
    } else {
        files.push(path.to_owned());
    }
    let mut records = Vec::new();
    // A snapshot (written by compaction) supersedes the files before it;
    // its records keep their sequence numbers, so gaps are expected up to
    // the first record after it.
    let mut decoded_files = Vec::new();
    for file in &files {
        let name = file.display().to_string();
        let bytes = std::fs::read(file).map_err(|source| ReplayError::Io {
            path: name.clone(),
            source,
        })?;
        let decoded = decode_prefix(&bytes).map_err(|source| ReplayError::Journal {
            path: name.clone(),
            source,
        })?;
        decoded_files.push((name, decoded));
    }
    let start = decoded_files
        .iter()
        .rposition(|(_, (decoded, _))| decoded.snapshot)
        .unwrap_or(0);
    let live = &decoded_files[start..];
    let gaps_allowed_through = crate::journal::gaps_allowed_through(
        live.iter()
            .map(|(_, (decoded, _))| (decoded.snapshot, decoded.records.as_slice())),
    );
    if let Some(checkpoint) = checkpoint {
        let sizes: Vec<(u64, u64)> = live
            .iter()
            .filter_map(|(name, (decoded, _))| {
                let number = Path::new(name)
                    .file_stem()
                    .and_then(|stem| stem.to_str())
                    .and_then(|stem| stem.parse::<u64>().ok())?;
                Some((number, decoded.valid_bytes))
            })
            .collect();
        if let Err(reason) = crate::journal::check_checkpoint(checkpoint, &sizes) {
            problems.push(Problem::MissingRecords { reason });
        }
    }
    for (name, (decoded, corrupt)) in decoded_files.into_iter().skip(start) {
        if records.is_empty() {
            records = decoded.records;
        } else {
            records.extend(decoded.records);
        }
        if let Some(tail) = decoded.tail {
            problems.push(Problem::TornTail {
                file: name.clone(),
                offset: tail.offset,
                bytes: tail.bytes,
                reason: tail.reason,
            });
        }
        if let Some(error) = corrupt {
            problems.push(Problem::CorruptRecord {
                file: name.clone(),
                reason: error.to_string(),
            });
        }
    }
    let options = ReplayOptions {
        gaps_allowed_through,
        ..options
    };
    let mut report = replay_records(&records, options);
    problems.append(&mut report.problems);
    report.problems = problems;
    Ok(report)
}

/// One attempt while it is replayed.
struct Replayed {
    /// The fold of its events (without a history of its own: the steps
    /// below keep the full states for the report).
    view: AttemptView,
    /// Its steps, kept only for the attempts whose timeline is reported.
    steps: Option<Vec<Step>>,
    /// Its phase now.
    tracker: PhaseTracker,
    /// Its phases so far, kept with its steps.
    spans: Option<Vec<PhaseSpan>>,
}

/// Counts gathered during the fold, for one [`Summary`].
#[derive(Default)]
struct Tally {
    records: usize,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
    /// Closed spans' durations, by [`Phase::index`], in ms.
    phases: [Vec<i64>; Phase::ALL.len()],
}

impl Tally {
    fn record(&mut self, time_ms: i64) {
        self.records += 1;
        self.first_ms = Some(self.first_ms.map_or(time_ms, |t| t.min(time_ms)));
        self.last_ms = Some(self.last_ms.map_or(time_ms, |t| t.max(time_ms)));
    }

    /// The summary of `views` (the attempts this tally counted), whose
    /// cores are `cores`.
    fn summary<'a>(
        self,
        views: impl Iterator<Item = &'a AttemptView>,
        cores: &[CoresPoint],
    ) -> Summary {
        let mut by_state = BTreeMap::new();
        let mut by_error_kind = BTreeMap::new();
        let mut by_outcome = BTreeMap::new();
        let mut accepted_to_running = Vec::new();
        let mut spec_load = Vec::new();
        let mut attempts = 0;
        for view in views {
            attempts += 1;
            accepted_to_running.extend(view.accepted_to_running_ms());
            spec_load.extend(view.spec_load_ms());
            let state = view.state_ref();
            *by_state.entry(state.wire_state().as_str()).or_default() += 1;
            *by_outcome.entry(text::outcome(state)).or_default() += 1;
            if let JobState::Errored { kind, .. } = state {
                *by_error_kind.entry(kind.as_str()).or_default() += 1;
            }
        }
        let peak = phases::peak(cores);
        Summary {
            records: self.records,
            attempts,
            by_state: owned_keys(by_state),
            by_error_kind: owned_keys(by_error_kind),
            by_outcome: owned_keys(by_outcome),
            accepted_to_running: Percentiles::of(accepted_to_running),
            spec_load: Percentiles::of(spec_load),
            phases: Phase::ALL
                .into_iter()
                .zip(self.phases)
                .filter(|(_, durations)| !durations.is_empty())
                .map(|(phase, durations)| PhaseStats {
                    phase,
                    durations: Percentiles::of(durations),
                })
                .collect(),
            first_ms: self.first_ms,
            last_ms: self.last_ms,
            peak_cores_mcpu: peak.map_or(0, |p| p.mcpu),
            peak_at_ms: peak.filter(|p| p.mcpu > 0).map(|p| p.time_ms),
        }
    }
}

/// Replays records already decoded.
///
/// Every attempt is folded through the model and checked; only the
/// selected job's (or, without [`ReplayOptions::job`], every) attempt keeps
/// its steps for the report.
pub fn replay_records(records: &[JournalRecord], options: ReplayOptions) -> Report {
    let created = records.iter().filter(|r| r.event.is_created()).count();
    let mut attempts: HashMap<&JobKey, Replayed> = HashMap::with_capacity(created);
    let mut live: HashMap<(i64, i64), &str> = HashMap::new();
    let mut problems = Vec::new();
    let mut last_seq: Option<u64> = None;
    let mut all = Tally::default();
    let mut selected = Tally::default();
    let is_selected = |key: &JobKey| {
        options
            .job
            .is_some_and(|job| job == (key.batch_id, key.job_id))
    };
    let keeps_steps = |key: &JobKey| options.job.is_none() || is_selected(key);
    for record in records {
        if options.until.is_some_and(|until| record.seq > until) {
            break;
        }
        all.record(record.time_ms);
        if !crate::journal::sequence_follows(last_seq, record.seq, options.gaps_allowed_through) {
            problems.push(Problem::SequenceGap {
                after_seq: last_seq.unwrap_or(0),
                next_seq: record.seq,
            });
        }
        last_seq = Some(record.seq);
        if let Some(reason) = crate::journal::foreign(record) {
            problems.push(Problem::ForeignRecord {
                seq: record.seq,
                reason,
            });
            continue;
        }
        let events = record.events();
        let key = &record.key;
        let slot = (key.batch_id, key.job_id);
        let chosen = is_selected(key);
        if chosen {
            selected.record(record.time_ms);
        }
        for event in events.iter() {
            let step = |state_after: &JobState, since_prev_ms| Step {
                seq: record.seq,
                time_ms: record.time_ms,
                since_prev_ms,
                event: event.clone(),
                state_after: state_after.clone(),
            };
            let Some(replaying) = attempts.get_mut(key) else {
                if !matches!(event, Event::Created { .. }) {
                    problems.push(Problem::FirstEventNotCreated {
                        seq: record.seq,
                        key: key.clone(),
                        event: event.name(),
                    });
                    continue;
                }
                if let Some(other) = live.get(&slot) {
                    problems.push(Problem::TwoLiveAttempts {
                        seq: record.seq,
                        batch_id: key.batch_id,
                        job_id: key.job_id,
                        attempts: [(*other).to_owned(), key.attempt_id.clone()],
                    });
                }
                let (view, _) = match AttemptView::created(
                    key.clone(),
                    record.seq,
                    record.time_ms,
                    event,
                    History::Dropped,
                ) {
                    Ok(created) => created,
                    Err(illegal) => unreachable!("created begins an attempt: {illegal}"),
                };
                live.insert(slot, &key.attempt_id);
                let keep = keeps_steps(key);
                let steps = keep.then(|| vec![step(view.state_ref(), None)]);
                attempts.insert(
                    key,
                    Replayed {
                        view,
                        steps,
                        tracker: PhaseTracker::created(record.time_ms),
                        spans: keep.then(Vec::new),
                    },
                );
                continue;
            };
            match replaying.view.apply(record.seq, record.time_ms, event) {
                Ok(applied) if applied.absorbed => {
                    problems.push(Problem::EventAfterTerminal {
                        seq: record.seq,
                        key: key.clone(),
                        event: event.name(),
                    });
                    continue;
                }
                Ok(_) => {}
                Err(illegal) => {
                    problems.push(Problem::IllegalTransition {
                        seq: record.seq,
                        key: key.clone(),
                        state: illegal.state,
                        event: illegal.event,
                    });
                    continue;
                }
            }
            let state = replaying.view.state_ref();
            if state.is_terminal() && live.get(&slot) == Some(&key.attempt_id.as_str()) {
                live.remove(&slot);
            }
            if let Some(span) = replaying.tracker.advance(record.time_ms, event, state) {
                all.phases[span.phase.index()].push(span.duration_ms());
                if chosen {
                    selected.phases[span.phase.index()].push(span.duration_ms());
                }
                if let Some(spans) = &mut replaying.spans {
                    spans.push(span);
                }
            }
            if let Some(steps) = &mut replaying.steps {
                let previous = steps.last().map(|s| s.time_ms);
                steps.push(step(state, previous.map(|p| record.time_ms - p)));
            }
        }
    }
    let end_ms = all.last_ms.unwrap_or_default();
    // A worker without a driver never records a delivery: its finished
    // attempts are not "reporting" until the journal ends.
    let driver_seen = records
        .iter()
        .any(|r| matches!(r.event, Event::StartedDelivered | Event::CompleteDelivered));
    let cores_in_use = phases::cores_in_use(attempts.values().map(|r| &r.view), end_ms);
    let job_summary = options.job.map(|_| {
        let chosen = || {
            attempts
                .iter()
                .filter(|(key, _)| is_selected(key))
                .map(|(_, r)| &r.view)
        };
        let cores = phases::cores_in_use(chosen(), end_ms);
        std::mem::take(&mut selected).summary(chosen(), &cores)
    });
    let summary = all.summary(attempts.values().map(|r| &r.view), &cores_in_use);
    let mut timelines: Vec<Timeline> = attempts
        .into_iter()
        .filter_map(|(key, replaying)| {
            let mut phases = replaying.spans?;
            phases.extend(
                replaying
                    .tracker
                    .open_span(end_ms)
                    .filter(|span| driver_seen || span.phase != phases::Phase::Reporting),
            );
            Some(Timeline {
                key: key.clone(),
                steps: replaying.steps?,
                final_state: replaying.view.state(),
                phases,
                view: replaying.view,
            })
        })
        .collect();
    timelines.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Report {
        timelines,
        summary,
        job_summary,
        problems,
        cores_in_use,
    }
}

/// A count map with owned names (as [`Summary`] holds them).
fn owned_keys(counts: BTreeMap<&str, usize>) -> BTreeMap<String, usize> {
    counts
        .into_iter()
        .map(|(name, n)| (name.to_owned(), n))
        .collect()
}

impl Problem {
    /// One line a person can act on.
    pub fn describe(&self) -> String {
        match self {
            Problem::TornTail {
                file,
                offset,
                bytes,
                reason,
            } => {
                format!("torn tail in {file}: {bytes} bytes at offset {offset} ({reason})")
            }
            Problem::CorruptRecord { file, reason } => {
                format!("corrupt record in {file}: {reason}")
            }
            Problem::MissingRecords { reason } => format!("records missing: {reason}"),
            Problem::SequenceGap {
                after_seq,
                next_seq,
            } => {
                format!("sequence gap: seq {next_seq} follows seq {after_seq}")
            }
            Problem::FirstEventNotCreated { seq, key, event } => {
                format!("seq {seq}: attempt {key} begins with {event}, not created")
            }
            Problem::IllegalTransition {
                seq,
                key,
                state,
                event,
            } => {
                format!("seq {seq}: illegal transition for {key}: {event} in state {state}")
            }
            Problem::EventAfterTerminal { seq, key, event } => {
                format!("seq {seq}: {event} for {key} after its terminal state")
            }
            Problem::ForeignRecord { reason, .. } => {
                format!("foreign record: {reason}")
            }
            Problem::TwoLiveAttempts {
                seq,
                batch_id,
                job_id,
                attempts,
            } => format!(
                "seq {seq}: two live attempts of job {batch_id}:{job_id}: {} and {}",
                attempts[0], attempts[1]
            ),
        }
    }
}
