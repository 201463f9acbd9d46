//! Integration tests: a real worker on a loopback port, real HTTP, real
//! files and processes, an embedded driver receiving the reports.
//!
//! - `support`: the harness, test stores, process-group checks.
//! - `admission`: jobs wait for cores and memory; too big errors.
//! - `cancellation`: cancel in every state; no report for a cancelled job.
//! - `logs_upload`: status.json and the main log, before job_complete.
//! - `report_recovery`: reports survive a SIGKILL; delivered ones are not
//!   sent again.
//! - `shutdown`: SIGTERM / kill drain reports; a second SIGTERM exits.
//! - `compaction`: the journal stays small; expired attempts are forgotten.
//! - `containers`: jobs in runc containers from a registry on loopback:
//!   exit codes, env, secrets, timeout, cancel, OOM, missing image, one pull
//!   per image, cleanup after a crash.
//! - `control_plane`: creates answer at once behind a slow token service.
//! - `file_staging`: input and output files through local files, Azurite
//!   and S3 (checksums), missing inputs and outputs, multipart uploads.
//! - `crash`: SIGKILL a `serve` child at random moments; restart; nothing lost.
//! - `create_api`: create-body validation, duplicates, store-root safety.
//! - `data_dir`: one worker per data directory (a second `serve` is
//!   refused, the first unharmed); a busy port writes nothing.
//! - `hostile_specs`: deep `resources`, a 5 MB argv: the journal still
//!   replays, statuses unchanged across a restart.
//! - `disk_full`: a real tmpfs filled to its last byte under `serve`:
//!   creates refused, nothing unjournaled acted on, healing by itself, the
//!   reserve that lets accepted jobs end and report.
//! - `hostile_clients`: idle, silent, h2c, over-the-cap and trickling
//!   connections on real sockets; the body deadline and budget; 1,100
//!   connections held against a real `serve`.
//! - `escapes`: `setsid`, double-fork and fan-out escapees end with their
//!   job (timeout, cancel, the leader's exit, a restart after `kill -9`)
//!   under cgroup v2 and v1.
//! - `hanging_store`: creates answer while every blob read hangs; cancel.
//! - `reattach`: rounds of SIGKILL of `serve` while jobs run under their
//!   shims: nothing lost, nothing run twice, nothing left running, every
//!   report true.
//! - `replay`: the replay tool against the committed journal corpus.
//! - `reports`: activation, retries through a failing, slow, restarting
//!   driver, the stop on 404, the bound on calls in flight.
//! - `server_limits`: 413 up front, envelopes, shutdown with a stalled
//!   client, a store that blocks threads forever.
//! - `spec_properties`: proptest over corrupt and missing bunches.
//! - `spec_show`: `spec show` names every kind of bunch damage as the worker does.
//! - `spec_warnings`: unknown spec fields warn (with a did-you-mean), Hail's
//!   never do; in the journal, status and events, across a restart.
//! - `job_bounds`: a 50 MB output flood under `serve`: `main.log` and its
//!   uploaded copy keep the first and last parts within `--max-log-bytes`.
//! - `journal_replay`: proptest: the journal replays to the live table.
//! - `metrics`: `/metrics` after a demo run shows the demo's counts; it
//!   agrees with the table and carries no secret.
//! - `processes`: exit codes, timeouts, cancel while running, status and
//!   `job_complete` agree.
//! - `store_config`: options from the environment and a file; credentials
//!   masked where the configuration is printed.
//! - `store_faults`: retries, spec_unavailable, spec_timeout, the load cap.
//! - `wire_samples`: the shared byte-exact samples.
//! - `hail_conformance`: every status and report body in Hail's shapes
//!   (its samples), hailtop's `exit_code` on each outcome, quantified
//!   resources, resource usage, report order against a slow driver,
//!   billing_update, deactivate, service-account creates, new attempts,
//!   format 1.
//! - `sim`: simulated parts: a runner, a driver, a worker on an inline
//!   journal (no sockets, one thread, a paused clock).
//! - `simulation`: deterministic simulation of thousands of jobs per seed
//!   through store faults, driver failures, cancels and crashes
//!   (`SIM_SEED`, `SIM_SEEDS`, `SIM_JOBS`; see TESTING.md).
//! - `model_based`: proptest-state-machine: the worker against a
//!   reference model, step by step.
//! - `fuzz_corpus`: the committed `cargo fuzz` corpus, replayed.

mod admission;
mod auth;
mod cancellation;
mod compaction;
mod config;
mod containers;
mod control_plane;
mod crash;
mod create_api;
mod data_dir;
mod disk_full;
mod escapes;
mod file_staging;
mod fuzz_corpus;
mod hail_conformance;
mod hanging_store;
mod hostile_clients;
mod hostile_specs;
mod job_bounds;
mod job_networks;
mod journal_replay;
mod log_format;
mod logs_upload;
mod metrics;
mod model_based;
mod operator_cli;
mod processes;
mod reattach;
mod replay;
mod report_recovery;
mod reports;
mod secrets;
mod server_limits;
mod shutdown;
mod sim;
mod simulation;
mod skips;
mod spec_properties;
mod spec_show;
mod spec_warnings;
mod store_config;
mod store_faults;
mod support;
mod wire_samples;
