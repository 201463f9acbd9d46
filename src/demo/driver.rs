//! The demo's (and the tests') embedded driver: a real axum server on
//! loopback that activates workers, receives `job_started`,
//! `job_complete`, `billing_update` and `deactivate`, keeps every body, and
//! can be told to fail, slow down or go away and come back on the same
//! port.
//!
//! It checks what Hail's driver handlers (`driver/main.py`
//! `job_started_1`, `job_complete_1`, `billing_update_1`) and the stored
//! procedures behind them need, and records each breach in
//! [`Received::violations`]: the required fields (a typed parse), `state`
//! one of `succeeded`, `failed`, `error`, `status.status` as
//! `db_status` keeps it, `resources` names the instance config has
//! ([`EmbeddedDriver::expect_resources`]), and the order: no
//! `job_complete` while that attempt's `job_started` is unanswered, no
//! `job_started` after its `job_complete`, `marked_job_started` never true
//! for a `job_started` it did not acknowledge (and, in
//! [`Received::unmarked_acknowledged`], false for one it did), and
//! `billing_update` only for attempts started and not complete.

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

use std::collections::{BTreeSet, HashSet};

use crate::driver_client::{
    ACTIVATE_PATH, BILLING_UPDATE_PATH, DEACTIVATE_PATH, JOB_COMPLETE_PATH, JOB_STARTED_PATH,
};
use crate::wire::{BillingUpdateBody, JobCompleteBody, JobStartedBody, QuantifiedResource};

/// An attempt, as the driver's tables key it.
type AttemptKey = (i64, i64, String);

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
    /// `billing_update` bodies, in arrival order.
    pub billing_updates: Vec<BillingUpdateBody>,
    /// `deactivate` calls.
    pub deactivations: usize,
    /// What Hail's driver would have refused or got wrong, one line each
    /// (see the module's docs); empty when every call agreed.
    pub violations: Vec<String>,
    /// Attempts whose `job_complete` said `marked_job_started: false`
    /// although this driver had answered their `job_started` 200: right
    /// only for a worker killed between that answer and its journal's
    /// write of it (Hail's driver then adds the attempt's resources once
    /// more, idempotently); none otherwise.
    pub unmarked_acknowledged: Vec<AttemptKey>,
    /// Attempts whose `job_started` this driver answered 200.
    pub started_acknowledged: HashSet<AttemptKey>,
    /// Attempts whose `job_started` is being answered now.
    started_in_flight: Vec<AttemptKey>,
    /// Attempts whose `job_complete` arrived.
    completed: HashSet<AttemptKey>,
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
    /// The resource names a report may carry (`None`: any).
    resources: Arc<Mutex<Option<BTreeSet<String>>>>,
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
            resources: Arc::default(),
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

    /// Checks every report's `resources` against `names` (the instance
    /// config's resource names, as the driver's `resources` table holds
    /// them): another name is a violation, as an unknown resource fails
    /// Hail's billing insert.
    pub fn expect_resources(&self, names: impl IntoIterator<Item = String>) {
        *self
            .shared
            .resources
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(names.into_iter().collect());
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
        .route(&format!("/{BILLING_UPDATE_PATH}"), post(billing_update))
        .route(&format!("/{DEACTIVATE_PATH}"), post(deactivate))
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
/// for a `job_started` the worker aborted) stops counting. A
/// `job_started`'s attempt is in `started_in_flight` meanwhile.
struct InFlight<'a>(&'a Shared, Option<AttemptKey>);

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared, started: Option<AttemptKey>) -> InFlight<'a> {
        {
            let mut received = shared.received.lock().unwrap_or_else(|p| p.into_inner());
            received.in_flight += 1;
            received.max_in_flight = received.max_in_flight.max(received.in_flight);
            if let Some(key) = &started {
                received.started_in_flight.push(key.clone());
            }
        }
        shared.changes.send_modify(|n| *n += 1);
        InFlight(shared, started)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut received = self.0.received.lock().unwrap_or_else(|p| p.into_inner());
        received.in_flight -= 1;
        if let Some(key) = &self.1 {
            if let Some(at) = received.started_in_flight.iter().position(|k| k == key) {
                received.started_in_flight.swap_remove(at);
            }
        }
    }
}

/// The resource names in `resources` the driver does not know.
fn unknown_resources(shared: &Shared, resources: &[QuantifiedResource]) -> Vec<String> {
    let expected = shared.resources.lock().unwrap_or_else(|p| p.into_inner());
    let Some(names) = expected.as_ref() else {
        return Vec::new();
    };
    if resources.is_empty() {
        return vec!["none: the attempt would be billed nothing".to_owned()];
    }
    resources
        .iter()
        .filter(|r| !names.contains(&r.name) || r.quantity < 0)
        .map(|r| format!("{} = {}", r.name, r.quantity))
        .collect()
}

async fn note(
    shared: &Shared,
    headers: &HeaderMap,
    started: Option<AttemptKey>,
    add: impl FnOnce(&mut Received),
) -> StatusCode {
    let in_flight = InFlight::new(shared, started);
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
    let s = &body.status;
    let key: AttemptKey = (s.batch_id, s.job_id, s.attempt_id.clone());
    {
        let unknown = unknown_resources(&shared, &s.resources);
        let mut received = shared.received.lock().unwrap_or_else(|p| p.into_inner());
        if received.completed.contains(&key) {
            received
                .violations
                .push(format!("job_started of {key:?} after its job_complete"));
        }
        if s.start_time <= 0 {
            received.violations.push(format!(
                "job_started of {key:?}: start_time {}",
                s.start_time
            ));
        }
        if !unknown.is_empty() {
            received.violations.push(format!(
                "job_started of {key:?}: resources the driver does not bill: {unknown:?}"
            ));
        }
    }
    let answered_key = key.clone();
    note(&shared, &headers, Some(key), |r| {
        r.started_acknowledged.insert(answered_key);
        r.started.push(body);
    })
    .await
}

async fn job_complete(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<JobCompleteBody>,
) -> StatusCode {
    let s = &body.status;
    let key: AttemptKey = (s.batch_id, s.job_id, s.attempt_id.clone());
    {
        let unknown = unknown_resources(&shared, &s.resources);
        let mut received = shared.received.lock().unwrap_or_else(|p| p.into_inner());
        let mut violations = Vec::new();
        if received.started_in_flight.contains(&key) {
            violations.push("job_complete while its job_started is unanswered".to_owned());
        }
        let acknowledged = received.started_acknowledged.contains(&key);
        if body.marked_job_started && !acknowledged {
            violations
                .push("marked_job_started true but job_started was never acknowledged".to_owned());
        }
        if !body.marked_job_started && acknowledged {
            received.unmarked_acknowledged.push(key.clone());
        }
        if !matches!(s.state.as_str(), "succeeded" | "failed" | "error") {
            violations.push(format!(
                "state {:?} (Hail's driver asserts succeeded, failed or error)",
                s.state
            ));
        }
        let status_ok = match &s.status {
            serde_json::Value::Array(pair) => {
                pair.len() == 2
                    && (pair[0].is_null() || pair[0].is_i64())
                    && (pair[1].is_null() || pair[1].is_i64())
            }
            serde_json::Value::Object(full) => full.contains_key("state"),
            _ => false,
        };
        if !status_ok {
            violations.push(format!(
                "status.status {} is not what db_status keeps",
                s.status
            ));
        }
        if s.start_time <= 0 || s.end_time < s.start_time {
            violations.push(format!(
                "start_time {} end_time {}",
                s.start_time, s.end_time
            ));
        }
        if !unknown.is_empty() {
            violations.push(format!("resources the driver does not bill: {unknown:?}"));
        }
        received.completed.insert(key.clone());
        received.violations.extend(
            violations
                .into_iter()
                .map(|v| format!("job_complete of {key:?}: {v}")),
        );
    }
    note(&shared, &headers, None, |r| r.complete.push(body)).await
}

async fn billing_update(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<BillingUpdateBody>,
) -> StatusCode {
    {
        let mut received = shared.received.lock().unwrap_or_else(|p| p.into_inner());
        let mut violations = Vec::new();
        if body.attempts.is_empty() {
            violations.push("billing_update with no attempt (Hail sends none then)".to_owned());
        }
        for a in &body.attempts {
            let key: AttemptKey = (a.batch_id, a.job_id, a.attempt_id.clone());
            if !received.started_acknowledged.contains(&key) || received.completed.contains(&key) {
                violations.push(format!(
                    "billing_update names {key:?}, not running as far as the driver knows"
                ));
            }
        }
        received.violations.extend(violations);
    }
    note(&shared, &headers, None, |r| r.billing_updates.push(body)).await
}

/// `POST .../instances/deactivate`: no body.
async fn deactivate(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    if !body.is_empty() {
        let mut received = shared.received.lock().unwrap_or_else(|p| p.into_inner());
        received
            .violations
            .push(format!("deactivate with a {}-byte body", body.len()));
    }
    note(&shared, &headers, None, |r| r.deactivations += 1).await
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
