//! batch-worker: a worker agent for batch job systems, wire-compatible with
//! Hail Batch's driver.
pub mod api;
pub mod bunch;
pub mod cli;
pub mod demo;
pub mod driver_client;
pub mod job_spec;
pub mod runner;
pub mod server;
pub mod spec_store;
pub mod store;
pub mod supervisor;
pub mod wire;
