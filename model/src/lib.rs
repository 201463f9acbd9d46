//! The pure core of batch-worker: one job attempt as an explicit state machine.
//!
//! A job attempt moves `Accepted → LoadingSpec → Running → Done | Errored`,
//! driven only by [`Event`]s that the worker's shell records (the create
//! endpoint, the spec loader, the process runner). Applying an event yields
//! [`Effect`]s: commands for the shell (load the spec, spawn the process, kill
//! it, report to the driver). This crate performs none of them.
//!
//! This crate depends on no tokio, axum or object_store, does no IO and never
//! reads the clock: the same events always give the same states and effects,
//! which is what lets the journal be replayed.
//!
//! # Layout
//!
//! - [`event`]: the one past-tense [`Event`] enum and its payload types.
//! - [`effect`]: the [`Effect`] enum, the shell's instructions.
//! - [`state`]: the serialisable snapshot [`JobState`], outcomes and error kinds.
//! - [`machine`]: the `statig` state machine and [`JobAttempt`], the
//!   `(state, event) -> (state, effects)` function the worker and the replay
//!   tool share.
//! - [`key`]: [`JobKey`], the identity of one attempt.
//! - [`view`]: [`AttemptView`], the one fold of an attempt's events into
//!   every fact its status, reports and replay summary show.
#![deny(missing_docs)]

mod chart;
pub mod effect;
pub mod event;
pub mod key;
pub mod machine;
pub mod state;
pub mod view;

pub use effect::Effect;
pub use event::{
    upcast, Event, ExitStatus, JobAddress, ProcessKind, UnknownField, UnknownFields, EVENT_VERSION,
};
pub use key::JobKey;
pub use machine::{Applied, IllegalTransition, JobAttempt};
pub use state::{ErrorKind, JobState, Outcome, RunPhase, WireState};
pub use view::{AttemptView, EventRecord, History, Steps};
