//! The replay as a Chrome trace-event file, which Perfetto
//! (<https://ui.perfetto.dev>) and `chrome://tracing` open.
//!
//! Format: the "JSON Object Format" of the Trace Event Format
//! (<https://docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU>):
//! `{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}`.
//! Each batch is a process (`pid` = batch_id, named `batch N`), each
//! attempt a thread of it (`tid` numbered from 1 in key order, named `job
//! J attempt A`), and each phase the attempt went through a complete
//! event (`ph: "X"`, `ts` and `dur` in µs from the journal's first
//! record). Instant events (`ph: "i"`, `s: "t"`) mark cancels, restarts
//! and ends other than success; a counter (`ph: "C"`) under a `worker`
//! process gives the cores in use.

use std::collections::BTreeSet;

use batch_worker_model::{Event, JobState, Outcome};
use serde_json::{json, Value};

use super::text::{final_words, iso, outcome};
use super::Report;

impl Report {
    /// The report's timelines as a Chrome trace (see the module's doc).
    pub fn chrome_trace(&self) -> Value {
        let origin = self.summary.first_ms.unwrap_or_default();
        let us = |ms: i64| (ms - origin) * 1000;
        let mut events = Vec::new();
        let batches: BTreeSet<i64> = self.timelines.iter().map(|t| t.key.batch_id).collect();
        for batch in &batches {
            events.push(json!({
                "name": "process_name", "ph": "M", "pid": batch, "tid": 0,
                "args": {"name": format!("batch {batch}")},
            }));
        }
        for (i, timeline) in self.timelines.iter().enumerate() {
            let (pid, tid) = (timeline.key.batch_id, i + 1);
            let attempt = timeline.key.to_string();
            events.push(json!({
                "name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                "args": {"name": format!(
                    "job {} attempt {}", timeline.key.job_id, timeline.key.attempt_id
                )},
            }));
            let last = timeline.phases.len().saturating_sub(1);
            for (n, span) in timeline.phases.iter().enumerate() {
                let mut args = json!({
                    "attempt": attempt,
                    "phase": span.phase.name(),
                    "journal_ends_inside": span.open,
                });
                if n == last {
                    args["final_state"] = json!(final_words(&timeline.final_state));
                }
                events.push(json!({
                    "name": span.phase.label(), "cat": "phase", "ph": "X",
                    "ts": us(span.start_ms), "dur": span.duration_ms() * 1000,
                    "pid": pid, "tid": tid, "args": args,
                }));
            }
            for step in &timeline.steps {
                let name = match (&step.event, &step.state_after) {
                    (Event::CancelRequested, _) => "cancel requested".to_owned(),
                    (Event::WorkerRestarted, _) => "worker restarted".to_owned(),
                    (event, state @ (JobState::Done { .. } | JobState::Errored { .. }))
                        if !event.is_delivery()
                            && !matches!(
                                state,
                                JobState::Done {
                                    outcome: Outcome::Succeeded
                                }
                            ) =>
                    {
                        outcome(state).to_owned()
                    }
                    _ => continue,
                };
                events.push(json!({
                    "name": name, "cat": "event", "ph": "i", "s": "t",
                    "ts": us(step.time_ms), "pid": pid, "tid": tid,
                    "args": {
                        "attempt": attempt,
                        "seq": step.seq,
                        "event": step.event.name(),
                        "state_after": step.state_after.in_words(),
                    },
                }));
            }
        }
        if !self.cores_in_use.is_empty() {
            // A process of its own, numbered past every batch (batch ids
            // are never negative: -1 when the last is i64::MAX).
            let pid = batches
                .last()
                .map_or(Some(0), |b| b.checked_add(1))
                .unwrap_or(-1);
            events.push(json!({
                "name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                "args": {"name": "worker"},
            }));
            for point in &self.cores_in_use {
                events.push(json!({
                    "name": "cores in use", "ph": "C", "pid": pid, "tid": 0,
                    "ts": us(point.time_ms),
                    "args": {"cores": point.mcpu as f64 / 1000.0},
                }));
            }
        }
        json!({
            "traceEvents": events,
            "displayTimeUnit": "ms",
            "otherData": {
                "source": "batch-worker replay",
                "journal_start": self.summary.first_ms.map(iso),
                "time_origin": "ts 0 is the journal's first record",
            },
        })
    }
}
