//! The admission task (`RequestResources`): waits its turn for the spec's
//! cores and memory, then `resources_granted` (the grant moves into the
//! attempt) or `resources_refused`. A cancel leaves the queue.

use batch_worker_model::{Event, JobKey};
use tokio_util::sync::CancellationToken;

use super::super::table::Attach;
use super::super::Worker;
use crate::admission::Request;

impl Worker {
    /// The admission task.
    pub(super) async fn admit(self, key: JobKey, request: Request, cancel: CancellationToken) {
        let admitted = tokio::select! {
            admitted = self.inner.admission.request(request) => admitted,
            () = cancel.cancelled() => return,
        };
        match admitted {
            Ok(grant) => {
                tracing::debug!(%key, cores_mcpu = request.cores_mcpu, memory_bytes = request.memory_bytes, "resources granted");
                // If the event is not taken (cancelled meanwhile), the grant
                // is dropped with it: freed.
                drop(self.record_with(&key, Event::ResourcesGranted, Attach::Grant(grant)));
            }
            Err(refused) => {
                let message = refused.to_string();
                self.record(&key, Event::ResourcesRefused { message });
            }
        }
    }
}
