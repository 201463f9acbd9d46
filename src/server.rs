//! Serving the API: [`serve`] runs the HTTP server until shutdown.
//!
//! The accept loop is hyper-util's, so that connections get the limits a
//! server facing a fleet's driver needs: request headers must arrive within
//! [`HEADER_READ_TIMEOUT`], bodies within [`BODY_READ_TIMEOUT`], and a
//! connection that stalls cannot hold up shutdown for more than
//! [`DRAIN_TIMEOUT`].

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::api;
use crate::supervisor::Worker;

/// Longest wait for a request's headers (slow or stalled clients).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a request's whole body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait, at shutdown, for requests in flight to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `worker`'s API on `listener` until `shutdown` completes or the
/// API's kill call arrives. Then it stops accepting (creates that still
/// arrive on open connections get 503), and, at the same time, lets
/// requests in flight finish (at most [`DRAIN_TIMEOUT`]) and ends every
/// job's process group (see [`Worker::end_processes`]); then it lets
/// reports drain (see [`Worker::drain_reports`]), waits until the journal
/// holds every record, and returns.
///
/// # Errors
/// An IO error of the listener other than a failed accept (which is
/// logged and retried).
pub async fn serve(
    listener: TcpListener,
    worker: Worker,
    max_body_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = api::router(worker.clone(), max_body_bytes)
        .layer(RequestBodyTimeoutLayer::new(BODY_READ_TIMEOUT));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
            () = worker.shutdown_requested() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    worker.begin_shutdown();
    tracing::info!("shutting down: no new jobs; ending job processes");
    drop(listener);
    let drain = async {
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                timeout_ms = DRAIN_TIMEOUT.as_millis() as u64,
                "requests still open at shutdown; closing them"
            );
        }
    };
    tokio::join!(drain, worker.end_processes());
    let left = worker.drain_reports().await;
    worker.sync_journal().await;
    tracing::info!(reports_left = left, "shut down");
    Ok(())
}
