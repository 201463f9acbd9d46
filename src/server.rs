//! Serving the API: [`serve`] runs the HTTP server until shutdown.
//!
//! The accept loop is hyper-util's, so that connections get the limits a
//! server facing a fleet's driver needs: request headers must arrive within
//! [`HEADER_READ_TIMEOUT`], bodies within [`BODY_READ_TIMEOUT`], and a
//! connection that stalls cannot hold up shutdown for more than
//! [`DRAIN_TIMEOUT`].

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::api::{self, ApiConfig};
use crate::worker::Worker;

/// Longest wait for a request's headers (slow or stalled clients).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a request's whole body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait, at shutdown, for requests in flight to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `worker`'s API (built with `config`: body limit, API token) on
/// `listener` until `shutdown` completes or the
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
    config: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = api::router(worker.clone(), &config);
    let requested = worker.clone();
    let stop = async move {
        tokio::select! {
            () = shutdown => {},
            () = requested.shutdown_requested() => {},
        }
    };
    let connections = accept(&listener, app, stop).await;
    worker.begin_shutdown();
    tracing::info!("shutting down: no new jobs; ending job processes");
    drop(listener);
    tokio::join!(connections.drain(), worker.end_processes());
    let left = worker.drain_reports().await;
    worker.sync_journal().await;
    tracing::info!(reports_left = left, "shut down");
    Ok(())
}

/// Connections [`accept`] started, still being served.
#[must_use = "connections are closed when this is dropped; call drain"]
pub struct Connections(GracefulShutdown);

impl Connections {
    /// Lets requests in flight finish, at most [`DRAIN_TIMEOUT`], then
    /// closes every connection.
    pub async fn drain(self) {
        if tokio::time::timeout(DRAIN_TIMEOUT, self.0.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                timeout_ms = DRAIN_TIMEOUT.as_millis() as u64,
                "requests still open at shutdown; closing them"
            );
        }
    }
}

/// The accept loop: serves `app` on every connection `listener` accepts
/// (HTTP/1.1 with keep-alive, or HTTP/2; headers within
/// [`HEADER_READ_TIMEOUT`]; `TCP_NODELAY`), each on a task of its own,
/// until `stop` completes. Returns the connections still open. Public so
/// that benchmarks can serve other routers on the same stack.
pub async fn accept(
    listener: &TcpListener,
    app: Router,
    stop: impl Future<Output = ()>,
) -> Connections {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
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
            () = &mut stop => break,
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
    Connections(graceful)
}
