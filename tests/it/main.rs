//! Integration tests: a real worker on a loopback port, real HTTP, real
//! files and processes, an embedded driver receiving the reports.
//!
//! - `support`: the harness and test stores.
//! - `compaction`: the journal stays small; expired attempts are forgotten.
//! - `crash`: SIGKILL a `serve` child at random moments; restart; nothing lost.
//! - `create_api`: create-body validation, duplicates, store-root safety.
//! - `hanging_store`: creates answer while every blob read hangs; cancel.
//! - `replay`: the replay tool against the committed journal corpus.
//! - `reports`: report retries and the stop on 404.
//! - `server_limits`: 413 up front, envelopes, shutdown with a stalled
//!   client, a store that blocks threads forever.
//! - `spec_properties`: proptest over corrupt and missing bunches.
//! - `journal_replay`: proptest: the journal replays to the live table.
//! - `processes`: exit codes, timeouts, cancel while running, status and
//!   `job_complete` agree.
//! - `store_faults`: retries, spec_unavailable, spec_timeout, the load cap.
//! - `wire_samples`: the shared byte-exact samples.

mod compaction;
mod crash;
mod create_api;
mod hanging_store;
mod journal_replay;
mod processes;
mod replay;
mod reports;
mod server_limits;
mod spec_properties;
mod store_faults;
mod support;
mod wire_samples;
