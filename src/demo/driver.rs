//! The demo's embedded driver endpoint: receives `job_started` and
//! `job_complete` on loopback and keeps every body.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::driver_client::{JOB_COMPLETE_PATH, JOB_STARTED_PATH};
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
}

#[derive(Clone)]
struct Shared {
    received: Arc<Mutex<Received>>,
    changes: watch::Sender<usize>,
    /// The next `.0` calls are answered `.1` instead of 200.
    refuse: Arc<Mutex<(usize, StatusCode)>>,
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
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = Url::parse(&format!("http://{}/", listener.local_addr()?))
            .expect("a socket address makes a URL");
        let shared = Shared {
            received: Arc::default(),
            changes: watch::channel(0).0,
            refuse: Arc::new(Mutex::new((0, StatusCode::OK))),
        };
        let app = Router::new()
            .route(&format!("/{JOB_STARTED_PATH}"), post(job_started))
            .route(&format!("/{JOB_COMPLETE_PATH}"), post(job_complete))
            .with_state(shared.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Ok(EmbeddedDriver { url, shared, stop })
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

    /// A receiver that changes on every call received.
    pub fn changes(&self) -> watch::Receiver<usize> {
        self.shared.changes.subscribe()
    }
}

impl Drop for EmbeddedDriver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn note(shared: &Shared, headers: &HeaderMap, add: impl FnOnce(&mut Received)) -> StatusCode {
    let refused = {
        let mut refuse = shared.refuse.lock().unwrap_or_else(|p| p.into_inner());
        (refuse.0 > 0).then(|| {
            refuse.0 -= 1;
            refuse.1
        })
    };
    {
        let mut received = shared.received.lock().unwrap_or_else(|p| p.into_inner());
        if !headers.contains_key("x-hail-instance-name") {
            received.missing_instance_header += 1;
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
    note(&shared, &headers, |r| r.started.push(body))
}

async fn job_complete(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<JobCompleteBody>,
) -> StatusCode {
    note(&shared, &headers, |r| r.complete.push(body))
}
