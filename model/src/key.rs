//! The identity of one job attempt.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Identifies one attempt of one job: the driver's `(batch_id, job_id)` pair
/// plus the driver-chosen `attempt_id` (a short alphanumeric string).
///
/// A worker holds at most one live attempt per `(batch_id, job_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobKey {
    /// The batch's id, as sent by the driver (non-negative).
    pub batch_id: i64,
    /// The job's id within its batch (non-negative).
    pub job_id: i64,
    /// The attempt's id, e.g. `"Xq3T9b"`.
    pub attempt_id: String,
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.batch_id, self.job_id, self.attempt_id)
    }
}
