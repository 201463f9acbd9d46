//! Serving the API: [`serve`] runs the HTTP server until shutdown.

use std::future::Future;

use tokio::net::TcpListener;

use crate::api;
use crate::supervisor::Worker;

/// Serves `worker`'s API on `listener` until `shutdown` completes or the
/// API's kill call arrives. Then it stops taking jobs (creates get 503),
/// finishes in-flight requests, and ends every job's process group (see
/// [`Worker::end_processes`]) before returning.
///
/// # Errors
/// An IO error of the listener.
pub async fn serve(
    listener: TcpListener,
    worker: Worker,
    max_body_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = api::router(worker.clone(), max_body_bytes);
    let stopping = worker.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown => {},
                () = stopping.shutdown_requested() => {},
            }
            stopping.begin_shutdown();
            tracing::info!("shutting down: no new jobs");
        })
        .await?;
    worker.end_processes().await;
    Ok(())
}
