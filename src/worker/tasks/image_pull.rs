//! The image task (`PullImage`): the job's image from the cache, or pulled
//! now (another job's pull of the same image is waited for, not repeated);
//! then `image_pulled` (the image moves into the attempt for the spawn) or
//! `image_pull_failed`. A cancel abandons the pull.

use std::panic::AssertUnwindSafe;

use batch_worker_model::{Event, JobKey};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::super::table::Attach;
use super::super::Worker;
use super::panic_text;

impl Worker {
    /// The image task.
    pub(super) async fn pull_image(self, key: JobKey, image: String, cancel: CancellationToken) {
        let Some(images) = self.inner.ports.images.clone() else {
            // Unreachable: `spec_loaded` names an image only on a worker
            // that runs containers (see `JobSpec::loaded_event`).
            let message = "this worker runs no containers (--executor host)".to_owned();
            self.record(&key, Event::ImagePullFailed { image, message });
            return;
        };
        let started = std::time::Instant::now();
        let pulled = AssertUnwindSafe(images.pull(&image)).catch_unwind();
        let pulled = tokio::select! {
            pulled = pulled => pulled,
            () = cancel.cancelled() => return,
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        match pulled {
            Ok(Ok((pulled_image, pulled))) => {
                tracing::info!(%key, image = %image, digest = %pulled_image.digest, pulled, duration_ms, "image ready");
                let event = Event::ImagePulled {
                    image,
                    digest: pulled_image.digest.clone(),
                    pulled,
                };
                drop(self.record_with(&key, event, Attach::Image(pulled_image)));
            }
            Ok(Err(e)) => {
                tracing::warn!(%key, image = %image, duration_ms, error = %e, "image pull failed");
                let message = e.to_string();
                self.record(&key, Event::ImagePullFailed { image, message });
            }
            Err(panic) => {
                let message = format!("the image pull failed unexpectedly: {}", panic_text(&panic));
                self.record(&key, Event::ImagePullFailed { image, message });
            }
        }
    }
}
