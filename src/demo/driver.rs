//! The demo's (and the tests') embedded driver: a real axum server on
//! loopback that activates workers, receives `job_started` and
//! `job_complete`, keeps every body, and can be told to fail, slow down or
//! go away and come back on the same port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::driver_client::{ACTIVATE_PATH, JOB_COMPLETE_PATH, JOB_STARTED_PATH};
use crate::wire::{JobCompleteBody, JobStartedBody};

/// Everything the driver received.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// `job_started` bodies, in arrival order.
    pub started: Vec<JobStartedBody>,
    /// `job_complete` bodies, in arrival order.
    pub complete: Vec<JobCompleteBody>,
    /// Calls that lacked the `X-Hail-Instance-Name` header.
    pub missing_instance_header: usize,
    /// Calls answered with an injected failure (not in `started`/`complete`).
    pub refused: usize,
    /// Activation calls answered with a token.
    pub activations: usize,
    /// Report calls whose `X-Hail-Instance-Token` was not the token the
    /// activation handed out.
    pub wrong_token: usize,
    /// Report calls being answered right now.
    pub in_flight: usize,
    /// The most report calls ever answered at once.
    pub max_in_flight: usize,
}

/// The instance token the embedded driver hands out on activation.
pub const INSTANCE_TOKEN: &str = "embedded-instance-token";

#[derive(Clone)]
struct Shared {
    received: Arc<Mutex<Received>>,
    changes: watch::Sender<usize>,
    /// The next `.0` calls are answered `.1` instead of 200.
    refuse: Arc<Mutex<(usize, StatusCode)>>,
    /// Added before answering each call.
    delay: Arc<Mutex<Duration>>,
    /// While true, calls wait (after the delay) before being answered.
    held: watch::Sender<bool>,
}

/// A running embedded driver.
pub struct EmbeddedDriver {
    /// Its base URL, `http://127.0.0.1:PORT/`.
    pub url: Url,
    shared: Shared,
    stop: CancellationToken,
}

impl EmbeddedDriver {
    /// Binds a free loopback port and serves.
    ///
    /// # Errors
    /// The bind's IO error.
    pub async fn start() -> std::io::Result<EmbeddedDriver> {
        let shared = Shared {
            received: Arc::default(),
            changes: watch::channel(0).0,
            refuse: Arc::new(Mutex::new((0, StatusCode::OK))),
            delay: Arc::default(),
            held: watch::channel(false).0,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = Url::parse(&format!("http://{}/", listener.local_addr()?))
            .expect("a socket address makes a URL");
        let stop = serve(listener, shared.clone());
        Ok(EmbeddedDriver { url, shared, stop })
    }

    /// Stops serving (calls then fail to connect) and returns what was
    /// received; [`EmbeddedDriver::restart`] brings it back.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Serves again on the same port after [`EmbeddedDriver::stop`], keeping
    /// what was received (a driver that restarted).
    ///
    /// # Errors
    /// The bind's IO error (the port was taken meanwhile).
    pub async fn restart(&mut self) -> std::io::Result<()> {
        let addr: SocketAddr = format!(
            "{}:{}",
            self.url.host_str().unwrap_or("127.0.0.1"),
            self.url.port().unwrap_or(80)
        )
        .parse()
        .map_err(std::io::Error::other)?;
        self.stop.cancel();
        // The old listener closes once its server has wound down.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 250 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.stop = serve(listener, self.shared.clone());
        Ok(())
    }

    /// Answers every later call only after `delay` (a slow driver).
    pub fn set_delay(&self, delay: Duration) {
        *self.shared.delay.lock().unwrap_or_else(|p| p.into_inner()) = delay;
    }

    /// Holds every call, received now or later, unanswered until
    /// [`EmbeddedDriver::release`] (a driver that stalls; the calls count
    /// in [`Received::in_flight`] meanwhile).
    pub fn hold(&self) {
        self.shared.held.send_replace(true);
    }

    /// Answers the calls [`EmbeddedDriver::hold`] held, and every later one.
    pub fn release(&self) {
        self.shared.held.send_replace(false);
    }

    /// A copy of what was received so far.
    pub fn received(&self) -> Received {
        self.shared
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Answers the next `calls` calls with `status` instead of 200 (to test
    /// the worker's retries, or its stop on 404).
    pub fn refuse_next(&self, calls: usize, status: StatusCode) {
        *self.shared.refuse.lock().unwrap_or_else(|p| p.into_inner()) = (calls, status);
    }

    /// A receiver that changes on every call received (as it arrives and
    /// as it is answered).
    pub fn changes(&self) -> watch::Receiver<usize> {
        self.shared.changes.subscribe()
    }
}

impl Drop for EmbeddedDriver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves the driver's routes on `listener` until the returned token is
/// cancelled.
fn serve(listener: TcpListener, shared: Shared) -> CancellationToken {
    let app = Router::new()
        .route(&format!("/{ACTIVATE_PATH}"), post(activate))
        .route(&format!("/{JOB_STARTED_PATH}"), post(job_started))
        .route(&format!("/{JOB_COMPLETE_PATH}"), post(job_complete))
        .with_state(shared);
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stopped.cancelled_owned())
            .await;
    });
    stop
}

/// Waits out the injected delay and any hold, then takes one injected
/// refusal, if any.
async fn delay_then_refusal(shared: &Shared) -> Option<StatusCode> {
    let delay = *shared.delay.lock().unwrap_or_else(|p| p.into_inner());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let _ = shared.held.subscribe().wait_for(|held| !*held).await;
    let mut refuse = shared.refuse.lock().unwrap_or_else(|p| p.into_inner());
    (refuse.0 > 0).then(|| {
        refuse.0 -= 1;
        refuse.1
    })
}

/// Counts one call in [`Received::in_flight`] while alive: also a call
/// whose client went away mid-answer (hyper then drops the handler, e.g.
/// for a `job_started` the worker aborted) stops counting.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared) -> InFlight<'a> {
        {
            let mut received = shared.received.lock().unwrap_or_else(|p| p.into_inner());
            received.in_flight += 1;
            received.max_in_flight = received.max_in_flight.max(received.in_flight);
        }
        shared.changes.send_modify(|n| *n += 1);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut received = self.0.received.lock().unwrap_or_else(|p| p.into_inner());
        received.in_flight -= 1;
    }
}

async fn note(shared: &Shared, headers: &HeaderMap, add: impl FnOnce(&mut Received)) -> StatusCode {
    let in_flight = InFlight::new(shared);
    let refused = delay_then_refusal(shared).await;
    drop(in_flight);
    {
        let mut received = shared.received.lock().unwrap_or_else(|p| p.into_inner());
        if !headers.contains_key("x-hail-instance-name") {
            received.missing_instance_header += 1;
        }
        let token = headers
            .get("x-hail-instance-token")
            .and_then(|t| t.to_str().ok());
        if token != Some(INSTANCE_TOKEN) {
            received.wrong_token += 1;
        }
        match refused {
            Some(_) => received.refused += 1,
            None => add(&mut received),
        }
    }
    shared.changes.send_modify(|n| *n += 1);
    refused.unwrap_or(StatusCode::OK)
}

async fn job_started(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<JobStartedBody>,
) -> StatusCode {
    note(&shared, &headers, |r| r.started.push(body)).await
}

async fn job_complete(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<JobCompleteBody>,
) -> StatusCode {
    note(&shared, &headers, |r| r.complete.push(body)).await
}

/// `POST /api/v1alpha/instances/activate`: answers `{"token": ...}` to a
/// call carrying the instance's name (Hail's driver also checks the
/// activation token; this one takes any).
async fn activate(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(_body): Json<serde_json::Value>,
) -> (StatusCode, Json<serde_json::Value>) {
    let refused = delay_then_refusal(&shared).await;
    {
        let mut received = shared.received.lock().unwrap_or_else(|p| p.into_inner());
        match refused {
            Some(_) => received.refused += 1,
            None if !headers.contains_key("x-hail-instance-name") => {
                received.missing_instance_header += 1
            }
            None => received.activations += 1,
        }
    }
    shared.changes.send_modify(|n| *n += 1);
    match refused {
        Some(status) => (status, Json(serde_json::json!({}))),
        None => (
            StatusCode::OK,
            Json(serde_json::json!({ "token": INSTANCE_TOKEN })),
        ),
    }
}
