//! batch-worker: a worker agent for batch job systems, wire-compatible with
//! Hail Batch's driver.
//!
//! A create call is answered from memory: the handler validates the body,
//! records the attempt's `Created` event and starts the attempt's own task.
//! The job spec is read later, inside that task, so blob-store latency and
//! failures never reach the driver's scheduling loop: a missing or corrupt
//! spec ends that one job as `Errored`, reported to the driver as `error`.
//!
//! The rules of an attempt's life live in the `batch-worker-model` crate
//! (a pure `statig` state machine); this crate is the shell that performs
//! the effects the machine asks for.
//!
//! # Layout
//!
//! - [`api`]: the HTTP API (axum): thin handlers and the one error envelope.
//! - [`client`]: [`client::WorkerClient`], the API from the other side,
//!   for `jobs` and `submit`; [`submit`]: writing bunches and creating
//!   their jobs by hand.
//! - [`cli`], [`config`]: the flags, and where their values come from (TOML
//!   file, environment, command line).
//! - [`server`]: [`server::serve`], the API until a shutdown future completes.
//! - [`worker`]: the worker: the job table of attempt views, recording each
//!   event (journal first, then its work), the tasks, the lifecycle, and
//!   [`worker::WorkerBuilder`], the one way to open one.
//! - [`wire`]: the driver's wire formats: create body, report bodies.
//! - [`bunch`]: the spec bunch layout (`specs`, `specs.idx`).
//! - [`job_spec`]: parsing and validating one spec.
//! - [`journal`]: the event journal: byte format (framing, checksums, torn
//!   tails), the group-commit writer, segments, snapshots and recovery.
//! - [`spec_store`]: loading a spec over `object_store`, classifying failures.
//! - [`spec_fields`]: the spec fields Hail knows, and the unknown ones a
//!   spec is warned about.
//! - [`spec_diag`]: `spec show`: one job's spec, or what is wrong with its
//!   bunch, in the worker's own terms.
//! - [`location`]: store locations and the driver's URL as people type
//!   them, each refused with a "did you mean" where the intent is clear.
//! - [`dirs`]: making the worker's directories, with errors naming the
//!   file in the way or the directory not writable.
//! - [`store`]: opening stores from URLs; latency injection; the seeded
//!   fault-injecting [`store::FaultStore`].
//! - [`admission`]: the first-come-first-served queue for cores and memory.
//! - [`runner`]: the [`runner::Runner`] trait and the host-process runner.
//! - [`container`]: the runc executor: a bundle and an OCI container per job.
//! - [`network`]: a network namespace per container job (public or
//!   private), pooled, with its iptables chains and published ports.
//! - [`image`]: pulling images from OCI registries into the image cache;
//!   [`image::layer`] applies layers (digests, whiteouts).
//! - [`logs_store`]: finished attempts' `status.json` and main log in a store.
//! - [`transfer`]: a job's `input_files` and `output_files`, streamed.
//! - [`driver_client`]: activation, `job_started` / `job_complete`, retried
//!   until acknowledged, with a bound on calls in flight, over a
//!   [`driver_client::DriverTransport`] (HTTP, or a simulated driver).
//! - [`metrics`]: the worker's Prometheus metrics (`GET /metrics`), one
//!   registry per worker.
//! - [`replay`]: rebuilds attempts from journal records; `--check` reports.
//! - [`cli`]: the command line, one module per subcommand.
//!
//! # API boundary
//!
//! Library users open a [`worker::Worker`] with [`worker::WorkerBuilder`]
//! and serve it with [`server::serve`] and [`api::router`]; the model
//! crate (`batch-worker-model`) gives the events, states and
//! [`batch_worker_model::AttemptView`]. The journal, stores, runners and
//! the wire types are public for the binary, the tests and the benches, and
//! are documented as such. Two modules exist only for this repository and
//! are hidden from the docs: `demo` (the embedded end-to-end demo and the
//! tests' driver stub) and `fuzzing` (the fuzz targets' bodies, which
//! `cargo fuzz` drives and `tests/it/fuzz_corpus.rs` replays).

pub mod admission;
pub mod api;
pub mod bunch;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod config;
pub mod container;
#[doc(hidden)]
pub mod demo;
pub mod dirs;
pub mod driver_client;
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod instance_config;
pub mod job_spec;
pub mod journal;
pub mod location;
pub mod logs_store;
pub mod metrics;
pub mod network;
pub mod replay;
pub mod resource_usage;
pub mod runner;
pub mod server;
pub mod shim;
pub mod spec_diag;
pub mod spec_fields;
pub mod spec_store;
pub mod store;
pub mod submit;
pub mod transfer;
pub mod wire;
pub mod worker;
