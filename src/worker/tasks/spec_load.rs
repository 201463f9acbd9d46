//! The spec-load task (`StartSpecLoad`): `spec_load_started`, the two
//! range reads, then `spec_loaded` (the spec moves into the attempt) or
//! `spec_load_failed`. A cancel abandons the read.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use batch_worker_model::{ErrorKind, Event, JobKey};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::super::table::Attach;
use super::super::Worker;
use super::panic_text;
use crate::spec_store::SpecLoadError;
use crate::wire::CreateJob;

impl Worker {
    /// The spec-load task: `SpecLoadStarted`, then the result.
    pub(super) async fn load_spec(
        self,
        key: JobKey,
        request: Arc<CreateJob>,
        cancel: CancellationToken,
    ) {
        self.record(&key, Event::SpecLoadStarted);
        let started = std::time::Instant::now();
        // A store that panics must not strand the job in LoadingSpec.
        let load = AssertUnwindSafe(self.inner.ports.specs.load(&request)).catch_unwind();
        let result = tokio::select! {
            result = load => result.unwrap_or_else(|panic| Err(SpecLoadError {
                kind: ErrorKind::SpecUnavailable,
                message: format!("the spec store failed unexpectedly: {}", panic_text(&panic)),
            })),
            () = cancel.cancelled() => return,
        };
        self.inner.metrics.observe_spec_load(started.elapsed());
        let duration_ms = started.elapsed().as_millis() as u64;
        // A container host needs a usable image reference: a spec without
        // one is unusable here, found before any resources are held.
        let containers = self.inner.ports.images.is_some();
        let result = result.and_then(|spec| match spec.check_executor(containers) {
            Ok(()) => Ok(spec),
            Err(corrupt) => Err(SpecLoadError {
                kind: ErrorKind::SpecCorrupt,
                message: corrupt.0,
            }),
        });
        // Resources the instance config cannot bill (Hail's worker raises
        // in `Job.__init__`): the job errors instead of running unbilled.
        let result = result.and_then(|spec| {
            let storage_gib = spec
                .storage_bytes()
                .map_or(0, |bytes| bytes.div_ceil(1 << 30));
            match self.inner.settings.identity.check_resources(
                spec.cores_mcpu,
                spec.memory_bytes,
                storage_gib,
            ) {
                Ok(()) => Ok(spec),
                Err(e) => Err(SpecLoadError {
                    kind: ErrorKind::SpecCorrupt,
                    message: format!(
                        "resources: this worker's instance config cannot bill them: {e}"
                    ),
                }),
            }
        });
        match result {
            Ok(spec) => {
                tracing::debug!(%key, duration_ms, size_bytes = spec.size_bytes, "spec loaded");
                let unknown = &spec.unknown_fields;
                if !unknown.is_empty() {
                    // Once per attempt, when its spec is loaded (never on replay).
                    let fields: Vec<String> =
                        unknown.fields().iter().map(|f| f.message()).collect();
                    tracing::warn!(
                        batch_id = key.batch_id,
                        job_id = key.job_id,
                        attempt_id = %key.attempt_id,
                        fields = %fields.join("; "),
                        omitted = unknown.omitted(),
                        "job spec has unknown fields, ignored"
                    );
                }
                let event = spec.loaded_event(containers);
                drop(self.record_with(&key, event, Attach::Spec(Arc::new(spec))));
            }
            Err(e) => {
                tracing::debug!(%key, duration_ms, error = %e, "spec load failed");
                self.record(
                    &key,
                    Event::SpecLoadFailed {
                        kind: e.kind,
                        message: e.message,
                    },
                );
            }
        }
    }
}
