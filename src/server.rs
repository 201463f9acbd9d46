//! Serving the API: [`serve`] runs the HTTP server until shutdown.
//!
//! The accept loop is hyper-util's, so that connections get the limits a
//! server facing a fleet's driver needs: request headers must arrive within
//! [`HEADER_READ_TIMEOUT`], bodies within [`BODY_READ_TIMEOUT`], and a
//! connection that stalls cannot hold up shutdown for more than
//! [`DRAIN_TIMEOUT`]. On top of hyper, [`ConnectionLimits`]: at most so
//! many connections at once (more are closed as they are accepted), and a
//! connection with no request in flight and no byte either way for the idle
//! timeout is closed, HTTP/1 or h2c, whether or not it ever sent a byte.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
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
/// Default longest quiet time of a connection with no request in flight.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default most connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// File descriptors kept out of the connection cap, for jobs' files, logs
/// and the journal.
pub const RESERVED_FDS: usize = 256;

/// Bounds on the connections clients may hold.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// A connection with no request in flight and no byte read or written
    /// for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl ConnectionLimits {
    /// These limits with `max_connections` lowered, if need be, to what the
    /// process's open-file limit allows (its soft limit less
    /// [`RESERVED_FDS`]).
    pub fn within_fd_limit(self) -> ConnectionLimits {
        use nix::sys::resource::{getrlimit, Resource};
        let allowed = getrlimit(Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| (soft as usize).saturating_sub(RESERVED_FDS).max(16))
            .unwrap_or(self.max_connections);
        ConnectionLimits {
            max_connections: self.max_connections.min(allowed),
            ..self
        }
    }
}

/// Raises the soft open-file limit to the hard limit (a worker holds a
/// connection, and jobs hold files, by the thousand); returns the limit
/// now in force.
///
/// # Errors
/// The limit cannot be read or set.
pub fn raise_fd_limit() -> nix::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard.max(soft))
}

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
    limits: ConnectionLimits,
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
    let connections = accept(&listener, app, limits, stop).await;
    worker.begin_shutdown();
    tracing::info!("shutting down: no new jobs; ending job processes");
    drop(listener);
    tokio::join!(connections.drain(), worker.end_processes());
    let left = worker.drain_reports().await;
    worker.deactivate().await;
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
/// within `limits`, until `stop` completes. Returns the connections still
/// open. Public so that benchmarks can serve other routers on the same
/// stack.
pub async fn accept(
    listener: &TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
) -> Connections {
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut refused: u64 = 0;
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
        let Ok(permit) = open.clone().try_acquire_owned() else {
            // Closed at once: a client over the cap must not hold a socket
            // (nor fill the listen backlog) while it waits.
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, max_connections = limits.max_connections, refused, "connection refused: too many open");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let service = TowerToHyperService::new(app.clone());
        let service = InFlight {
            inner: service,
            activity: activity.clone(),
        };
        let io = Watched {
            inner: stream,
            activity: activity.clone(),
        };
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let connection = graceful.watch(connection.into_owned());
        let idle_timeout = limits.idle_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            tokio::pin!(connection);
            loop {
                let quiet = activity.quiet_for();
                let wake = idle_timeout
                    .saturating_sub(quiet)
                    .max(Duration::from_millis(10));
                tokio::select! {
                    ended = &mut connection => {
                        if let Err(e) = ended {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        return;
                    }
                    () = tokio::time::sleep(wake) => {
                        if activity.idle(idle_timeout) {
                            tracing::debug!(%peer, idle_ms = idle_timeout.as_millis() as u64, "idle connection closed");
                            return;
                        }
                    }
                }
            }
        });
    }
    Connections(graceful)
}

/// What a connection did last: the time of its last byte either way, and
/// its requests in flight.
#[derive(Debug, Clone)]
struct Activity(Arc<ActivityInner>);

#[derive(Debug)]
struct ActivityInner {
    started: tokio::time::Instant,
    /// ms after `started` of the last byte read or written.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity(Arc::new(ActivityInner {
            started: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }))
    }

    fn touch(&self) {
        let now = self.0.started.elapsed().as_millis() as u64;
        self.0.last_ms.store(now, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.0.last_ms.load(Ordering::Relaxed));
        self.0.started.elapsed().saturating_sub(last)
    }

    /// No request in flight, and quiet for `timeout`.
    fn idle(&self, timeout: Duration) -> bool {
        self.0.in_flight.load(Ordering::Relaxed) == 0 && self.quiet_for() >= timeout
    }
}

/// A connection's socket, noting each byte read or written in its
/// [`Activity`].
struct Watched {
    inner: tokio::net::TcpStream,
    activity: Activity,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connection's service, counting its requests in flight (a request
/// whose handler is still running keeps its connection from being idle).
#[derive(Clone)]
struct InFlight<S> {
    inner: S,
    activity: Activity,
}

/// Decrements the in-flight count when the request's handler is done.
struct InFlightGuard(Activity);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0 .0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

impl<S, R> hyper::service::Service<R> for InFlight<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, request: R) -> Self::Future {
        self.activity.0.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlightGuard(self.activity.clone());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            drop(guard);
            answer
        })
    }
}
