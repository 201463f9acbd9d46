//! batch-worker: a worker agent for batch job systems, wire-compatible with
//! Hail Batch's driver.
pub mod bunch;
pub mod job_spec;
pub mod spec_store;
pub mod wire;
pub mod runner;
pub mod driver_client;
pub mod supervisor;
pub mod api;
pub mod server;
pub mod cli;
pub mod demo;
