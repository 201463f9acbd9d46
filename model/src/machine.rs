//! [`JobAttempt`]: the pure transition function `(state, event) -> (state, effects)`.

use std::fmt;

use statig::blocking::{InitializedStateMachine, IntoStateMachineExt};

use crate::chart::{Decision, Disposition, JobChart};
use crate::effect::Effect;
use crate::event::Event;
use crate::state::JobState;

/// One job attempt's state machine.
///
/// Built by [`JobAttempt::accept`] (the `Created` event), then moved only by
/// [`JobAttempt::apply`]. Cloning is cheap (a few words plus the error
/// message of an `Errored` attempt).
#[derive(Clone)]
pub struct JobAttempt {
    chart: InitializedStateMachine<JobChart>,
}

/// The result of applying one legal event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// What the shell must do now, in order. Empty when absorbed.
    pub effects: Vec<Effect>,
    /// True when the attempt was already terminal and ignored the event.
    pub absorbed: bool,
}

/// An event that is illegal in the attempt's current state (for example
/// `ProcessExited` while `LoadingSpec`). The attempt is left unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IllegalTransition {
    /// The state the attempt was in (see [`JobState::name`]).
    pub state: &'static str,
    /// The rejected event's name (see [`Event::name`]).
    pub event: &'static str,
}

impl fmt::Display for IllegalTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event {} is illegal in state {}", self.event, self.state)
    }
}

impl std::error::Error for IllegalTransition {}

impl JobAttempt {
    /// A new attempt after its `Created` event: state `Accepted`, with the
    /// effect `StartSpecLoad`.
    pub fn accept() -> (JobAttempt, Applied) {
        let mut decision = Decision::default();
        let chart = JobChart::default()
            .uninitialized_state_machine()
            .init_with_context(&mut decision);
        let applied = Applied {
            effects: decision.effects,
            absorbed: false,
        };
        (JobAttempt { chart }, applied)
    }

    /// Applies one event.
    ///
    /// # Errors
    /// [`IllegalTransition`] when the event is not legal in the current
    /// state; the attempt is then unchanged and no effect is asked for.
    /// `Created` is legal only as the first event, through [`JobAttempt::accept`].
    pub fn apply(&mut self, event: &Event) -> Result<Applied, IllegalTransition> {
        let mut decision = Decision::default();
        self.chart.handle_with_context(event, &mut decision);
        match decision.disposition {
            Disposition::Applied => Ok(Applied {
                effects: decision.effects,
                absorbed: false,
            }),
            Disposition::Absorbed => Ok(Applied {
                effects: Vec::new(),
                absorbed: true,
            }),
            // A rejected event leaves the state as it was.
            Disposition::Rejected => Err(IllegalTransition {
                state: self.state().name(),
                event: event.name(),
            }),
        }
    }

    /// Rebuilds an attempt from its whole event history, the way recovery
    /// and the replay tool do. The first event must be `Created`.
    ///
    /// # Errors
    /// The index of the first illegal event and why it is illegal.
    pub fn replay<'a>(
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Result<JobAttempt, (usize, IllegalTransition)> {
        let mut events = events.into_iter();
        match events.next() {
            Some(Event::Created { .. }) => {}
            other => {
                return Err((
                    0,
                    IllegalTransition {
                        state: "none",
                        event: other.map_or("none", Event::name),
                    },
                ))
            }
        }
        let (mut attempt, _) = JobAttempt::accept();
        for (i, event) in events.enumerate() {
            attempt.apply(event).map_err(|e| (i + 1, e))?;
        }
        Ok(attempt)
    }

    /// A snapshot of the current state.
    pub fn state(&self) -> JobState {
        JobState::from(self.chart.state())
    }

    /// Whether the attempt is `Done` or `Errored`.
    pub fn is_terminal(&self) -> bool {
        self.state().is_terminal()
    }
}

impl fmt::Debug for JobAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobAttempt")
            .field("state", &self.state())
            .finish()
    }
}

#[cfg(test)]
mod tests;
