//! This file is long (about 700 lines) because every driver call (activate,
//! job_started, job_complete, billing_update, deactivate) shares one
//! transport, one retry policy and one description of a failed call.
//!
//! The driver client: activation, `job_started` and `job_complete`.
//!
//! A worker first activates: `POST {driver}/api/v1alpha/instances/activate`
//! with `{"ip_address": ...}` and its activation token, answered with
//! `{"token": ...}`, the instance token every later call carries (source:
//! Hail Batch's `worker.py`, `activate`).
//!
//! Delivery is at-least-once: each report is retried with exponential
//! backoff and jitter (capped at 2 minutes) until the driver answers 2xx or
//! 404 ("this job is not mine any more": stop); by default it never gives
//! up, since a dropped report means the driver never learns the outcome.
//! At most [`ReportRetry::max_in_flight`] calls are on the wire at once;
//! waiting out a backoff holds no slot. Every call carries
//! `X-Hail-Instance-Name` and `X-Hail-Instance-Token`.
//!
//! The calls go through a [`DriverTransport`]: [`HttpTransport`] (reqwest)
//! in production, a simulated driver in tests, which may fail or delay
//! calls; the retry policy above is the client's either way.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use url::Url;

use crate::wire::{BillingUpdateBody, JobCompleteBody, JobStartedBody};

/// Path of the activation call under the driver's URL.
pub const ACTIVATE_PATH: &str = "api/v1alpha/instances/activate";
/// Path of the `job_started` call under the driver's URL.
pub const JOB_STARTED_PATH: &str = "api/v1alpha/instances/job_started";
/// Path of the `job_complete` call under the driver's URL.
pub const JOB_COMPLETE_PATH: &str = "api/v1alpha/instances/job_complete";
/// `POST` the attempts running on this worker, for billing (Hail's
/// `Worker.send_billing_update`; sample `hail/billing_update.json`).
pub const BILLING_UPDATE_PATH: &str = "api/v1alpha/billing_update";
/// `POST`, no body: this worker is going away; the driver reschedules what
/// ran on it (Hail's `Worker.deactivate`).
pub const DEACTIVATE_PATH: &str = "api/v1alpha/instances/deactivate";

/// Retry policy of one report.
#[derive(Debug, Clone)]
pub struct ReportRetry {
    /// First retry delay (default 200 ms); doubles with jitter.
    pub min_backoff: Duration,
    /// Longest delay (default 2 minutes).
    pub max_backoff: Duration,
    /// Attempts, the first included; `None` (the default): until the
    /// driver answers 2xx or 404.
    pub max_attempts: Option<usize>,
    /// Timeout of one HTTP call (default 10 s).
    pub request_timeout: Duration,
    /// Driver calls on the wire at once, over all reports (default 64).
    pub max_in_flight: usize,
    /// Seed of the backoff jitter; `None` (the default): a random one.
    /// Simulations set it, so that a run repeats.
    pub jitter_seed: Option<u64>,
}

impl Default for ReportRetry {
    fn default() -> Self {
        ReportRetry {
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(120),
            max_attempts: None,
            request_timeout: Duration::from_secs(10),
            max_in_flight: 64,
            jitter_seed: None,
        }
    }
}

/// A report that did not get through.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The driver answered 404: it no longer tracks this attempt.
    #[error("the driver answered 404 to {path}: it does not track this attempt; not retrying")]
    Gone {
        /// The call's path.
        path: &'static str,
    },
    /// Every attempt failed.
    #[error("{path} failed {attempts} times; last error: {last}")]
    GaveUp {
        /// The call's path.
        path: &'static str,
        /// How many attempts were made.
        attempts: usize,
        /// The last failure.
        last: String,
    },
    /// The report could not be serialized as JSON.
    #[error("the report cannot be serialized: {0}")]
    Body(String),
    /// The activation answer had no `token` string usable as a header value.
    /// The report was dropped before it was sent (again): the caller no
    /// longer wanted it (a `job_started` whose job has already ended).
    #[error("{path} no longer wanted; not sent")]
    NotWanted {
        /// The endpoint's path.
        path: &'static str,
    },
    /// The driver refused the call for good (4xx other than 404, 408 and
    /// 429: a bad token, a body it does not take); not retried, as Hail's
    /// `retry_transient_errors` does not.
    #[error("the driver refused {path}: HTTP {status}; not retrying")]
    Refused {
        /// The endpoint's path.
        path: &'static str,
        /// The HTTP status.
        status: u16,
    },
    #[error("the driver's activation answer has no usable \"token\" string: {0}")]
    BadActivation(String),
}

/// The driver's answer to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverAnswer {
    /// HTTP status code.
    pub status: u16,
    /// The answer's body.
    pub body: Bytes,
}

/// Carries one driver call; retries are the [`DriverClient`]'s.
#[async_trait]
pub trait DriverTransport: Send + Sync + fmt::Debug {
    /// POSTs the JSON `body` to `path` (one of [`ACTIVATE_PATH`],
    /// [`JOB_STARTED_PATH`], [`JOB_COMPLETE_PATH`]) with the headers
    /// `X-Hail-Instance-Name: instance_name` and
    /// `X-Hail-Instance-Token: token`.
    ///
    /// # Errors
    /// The call got no answer (connection refused, timeout), described.
    async fn post(
        &self,
        path: &'static str,
        instance_name: &str,
        token: &str,
        body: Bytes,
    ) -> Result<DriverAnswer, String>;

    /// Where the calls go, for logs (e.g. `http://driver:5000/`).
    fn describe(&self) -> String;
}

/// Driver calls over HTTP.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    http: reqwest::Client,
    base: Url,
    timeout: Duration,
}

/// Why an HTTP call failed, in words (see [`call_cause`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallCause {
    /// The cause: "connection refused", "timed out after 10 s", "DNS
    /// lookup failed for host driver", "connection reset", ...
    pub words: String,
    /// What kind of cause it is.
    pub kind: CauseKind,
    /// The error's source chain, each message once, joined by `: `.
    pub detail: String,
}

/// The kinds of [`CallCause`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CauseKind {
    /// No answer within the call's timeout.
    Timeout,
    /// The host name did not resolve.
    Dns,
    /// Anything else: refused, reset, unreachable.
    Connection,
}

/// The cause of a failed HTTP call, found by walking the error's source
/// chain to the `std::io::Error` under it; `timeout` is the call's (for
/// the words of a timeout). Shared by the driver's calls and
/// [`crate::client::WorkerClient`].
pub fn call_cause(error: &reqwest::Error, url: &Url, timeout: Duration) -> CallCause {
    use std::error::Error as _;
    use std::io::ErrorKind;
    let host = url.host_str().unwrap_or_default();
    let mut chain: Vec<String> = Vec::new();
    let mut io_kind = None;
    let mut dns = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        dns |= text.starts_with("dns error") || text.contains("failed to lookup address");
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind = io_kind.or(Some(io.kind()));
        }
        if !chain.iter().any(|seen| seen.contains(&text)) {
            chain.push(text);
        }
        source = e.source();
    }
    let detail = if chain.is_empty() {
        error.to_string()
    } else {
        chain.join(": ")
    };
    let (words, kind) = if error.is_timeout() || io_kind == Some(ErrorKind::TimedOut) {
        (
            format!("timed out after {} s", timeout.as_secs_f64()),
            CauseKind::Timeout,
        )
    } else if dns {
        (format!("DNS lookup failed for host {host}"), CauseKind::Dns)
    } else {
        let named = match io_kind {
            Some(ErrorKind::ConnectionRefused) => "connection refused",
            Some(ErrorKind::ConnectionReset) => "connection reset",
            Some(ErrorKind::ConnectionAborted) => "connection aborted",
            Some(ErrorKind::NotConnected) => "not connected",
            Some(ErrorKind::BrokenPipe) => "connection closed while sending",
            Some(ErrorKind::UnexpectedEof) => "connection closed before an answer",
            Some(ErrorKind::HostUnreachable) => "host unreachable",
            Some(ErrorKind::NetworkUnreachable) => "network unreachable",
            Some(ErrorKind::AddrNotAvailable) => "address not available",
            Some(ErrorKind::PermissionDenied) => "permission denied (a firewall?)",
            _ if error.is_connect() => "cannot connect",
            _ => "the call failed",
        };
        (named.to_owned(), CauseKind::Connection)
    };
    CallCause {
        words,
        kind,
        detail,
    }
}

/// A failed driver call in words: its cause ([`call_cause`]), the URL
/// called, and what to check (is the driver at `base` running, is
/// `--driver-url` right).
pub fn describe_call_error(
    error: &reqwest::Error,
    url: &Url,
    base: &Url,
    timeout: Duration,
) -> String {
    let cause = call_cause(error, url, timeout);
    let check = format!(
        "is the driver at {} running and reachable from this host? (--driver-url)",
        crate::store::redact_url(base)
    );
    let advice = match cause.kind {
        CauseKind::Timeout => format!("the driver did not answer in time; {check}"),
        CauseKind::Dns => format!(
            "check the host name in --driver-url ({})",
            crate::store::redact_url(base)
        ),
        CauseKind::Connection => check,
    };
    format!(
        "{} calling {} ({}); {advice}",
        cause.words,
        crate::store::redact_url(url),
        cause.detail
    )
}

impl HttpTransport {
    /// Calls to the driver at `base` (a missing trailing `/` is added),
    /// each with `timeout`.
    ///
    /// # Errors
    /// The HTTP client could not be built (TLS setup).
    pub fn new(base: Url, timeout: Duration) -> Result<HttpTransport, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(timeout).build()?;
        let mut base = base;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(HttpTransport {
            http,
            base,
            timeout,
        })
    }
}

#[async_trait]
impl DriverTransport for HttpTransport {
    async fn post(
        &self,
        path: &'static str,
        instance_name: &str,
        token: &str,
        body: Bytes,
    ) -> Result<DriverAnswer, String> {
        let url = self.base.join(path).map_err(|e| e.to_string())?;
        let described = |e: reqwest::Error| describe_call_error(&e, &url, &self.base, self.timeout);
        let response = self
            .http
            .post(url.clone())
            .header("X-Hail-Instance-Name", instance_name)
            .header("X-Hail-Instance-Token", token)
            .header(reqwest::header::CONTENT_LENGTH, body.len())
            .header(
                reqwest::header::CONTENT_TYPE,
                // As Hail's client: JSON bodies, and an empty deactivate.
                if body.is_empty() {
                    "application/octet-stream"
                } else {
                    "application/json"
                },
            )
            .body(body)
            .send()
            .await
            .map_err(described)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(described)?;
        Ok(DriverAnswer { status, body })
    }

    fn describe(&self) -> String {
        self.base.to_string()
    }
}

enum CallFailure {
    Gone,
    NotWanted,
    Refused(u16),
    Retry(String),
}

/// Sends reports to one driver.
#[derive(Debug, Clone)]
pub struct DriverClient {
    transport: Arc<dyn DriverTransport>,
    instance_name: String,
    /// The activation token until [`DriverClient::activate`] replaces it
    /// with the instance token.
    instance_token: Arc<RwLock<String>>,
    retry: ReportRetry,
    in_flight: Arc<tokio::sync::Semaphore>,
    /// `job_started` and `job_complete` calls that failed and were retried
    /// (shared by clones; the worker exports it).
    retried: Counter,
}

impl DriverClient {
    /// A client for the driver at `base` (e.g. `http://driver:5000/`),
    /// sending `token` (the activation token, or the instance token when
    /// activation is skipped) until [`DriverClient::activate`] replaces it.
    ///
    /// # Errors
    /// The HTTP client could not be built (TLS setup).
    pub fn new(
        base: Url,
        instance_name: String,
        instance_token: String,
        retry: ReportRetry,
    ) -> Result<DriverClient, reqwest::Error> {
        let transport = HttpTransport::new(base, retry.request_timeout)?;
        Ok(DriverClient::with_transport(
            Arc::new(transport),
            instance_name,
            instance_token,
            retry,
        ))
    }

    /// A client whose calls go through `transport` (a simulated driver in
    /// tests); otherwise as [`DriverClient::new`].
    pub fn with_transport(
        transport: Arc<dyn DriverTransport>,
        instance_name: String,
        instance_token: String,
        retry: ReportRetry,
    ) -> DriverClient {
        DriverClient {
            transport,
            instance_name,
            instance_token: Arc::new(RwLock::new(instance_token)),
            in_flight: Arc::new(tokio::sync::Semaphore::new(retry.max_in_flight.max(1))),
            retry,
            retried: Counter::default(),
        }
    }

    /// Activates the worker: sends its `ip_address`, keeps the instance
    /// token the driver answers with for every later call. Retried until
    /// it succeeds (with backoff, capped at [`ReportRetry::max_backoff`]):
    /// transient failures, and also a 404 or an answer without a usable
    /// `token` (a driver being deployed may answer either for a while), each
    /// of which is logged as an error.
    ///
    /// # Errors
    /// Only with [`ReportRetry::max_attempts`] set: the last failure once
    /// the attempts are spent.
    pub async fn activate(&self, ip_address: &str) -> Result<(), ReportError> {
        let body = serde_json::json!({ "ip_address": ip_address });
        let once = || async {
            let answer = self.post(ACTIVATE_PATH, &body).await?;
            let token = serde_json::from_slice::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v.get("token")?.as_str().map(str::to_owned))
                .filter(|t| reqwest::header::HeaderValue::from_str(t).is_ok())
                .ok_or_else(|| {
                    ReportError::BadActivation(
                        String::from_utf8_lossy(&answer).chars().take(200).collect(),
                    )
                })?;
            Ok::<_, ReportError>(token)
        };
        let token = once
            .retry(self.backoff())
            .notify(|e, delay| {
                tracing::error!(error = %e, delay_ms = delay.as_millis() as u64, "activation refused; retrying")
            })
            .await?;
        *self
            .instance_token
            .write()
            .unwrap_or_else(|p| p.into_inner()) = token;
        Ok(())
    }

    /// Exponential backoff with jitter per [`ReportRetry`].
    fn backoff(&self) -> ExponentialBuilder {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry.min_backoff)
            .with_max_delay(self.retry.max_backoff)
            .with_jitter();
        let backoff = match self.retry.jitter_seed {
            Some(seed) => backoff.with_jitter_seed(seed),
            None => backoff,
        };
        match self.retry.max_attempts {
            Some(n) => backoff.with_max_times(n.saturating_sub(1)),
            None => backoff.without_max_times(),
        }
    }

    fn token(&self) -> String {
        self.instance_token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The count of `job_started` and `job_complete` calls that failed and
    /// were retried (activation calls are not counted), shared with this
    /// client: `batch_worker_reports_retried_total`.
    pub fn retried_reports(&self) -> Counter {
        self.retried.clone()
    }

    /// Where the calls go, for logs: the driver's base URL.
    pub fn describe(&self) -> String {
        self.transport.describe()
    }

    /// Sends `job_started` while `wanted()` holds: it is checked before
    /// every try, and a report no longer wanted (its job ended meanwhile,
    /// as Hail's `post_job_started_1` checks `job.done()`) is dropped
    /// unsent. Transient failures (5xx, 408, 429, no answer) are retried;
    /// any other 4xx is final, as in Hail's `retry_transient_errors`.
    ///
    /// # Errors
    /// [`ReportError::NotWanted`], [`ReportError::Refused`], `Gone` (404),
    /// or `GaveUp` once retries are spent.
    pub async fn job_started(
        &self,
        body: &JobStartedBody,
        wanted: impl Fn() -> bool + Send + Sync,
    ) -> Result<(), ReportError> {
        let wanted: &(dyn Fn() -> bool + Send + Sync) = &wanted;
        self.post_with(JOB_STARTED_PATH, body, Some(wanted), false)
            .await
            .map(drop)
    }

    /// Sends `job_complete`; every failure but a 404 is retried (Hail's
    /// `post_job_complete` retries them all).
    ///
    /// # Errors
    /// [`ReportError`] once retries are spent or the driver says 404.
    pub async fn job_complete(&self, body: &JobCompleteBody) -> Result<(), ReportError> {
        self.post(JOB_COMPLETE_PATH, body).await.map(drop)
    }

    /// Sends `billing_update` (body `{"timestamp": ms, "attempts":
    /// [{batch_id, job_id, attempt_id}]}`), retrying transient failures.
    ///
    /// # Errors
    /// As [`DriverClient::job_started`], without `NotWanted`.
    pub async fn billing_update(&self, body: &BillingUpdateBody) -> Result<(), ReportError> {
        self.post_with(BILLING_UPDATE_PATH, body, None, false)
            .await
            .map(drop)
    }

    /// Sends `deactivate` once, with no body (`Content-Length: 0`), not
    /// retried: Hail's driver cleans up after a worker whose call is lost.
    ///
    /// # Errors
    /// The one failure, as a `GaveUp` after 1 attempt (or `Gone` / `Refused`).
    pub async fn deactivate(&self) -> Result<(), ReportError> {
        let _slot = self.in_flight.acquire().await;
        let answer = self
            .transport
            .post(
                DEACTIVATE_PATH,
                &self.instance_name,
                &self.token(),
                Bytes::new(),
            )
            .await
            .map_err(|last| ReportError::GaveUp {
                path: DEACTIVATE_PATH,
                attempts: 1,
                last,
            })?;
        match answer.status {
            200..=299 => Ok(()),
            404 => Err(ReportError::Gone {
                path: DEACTIVATE_PATH,
            }),
            status => Err(ReportError::Refused {
                path: DEACTIVATE_PATH,
                status,
            }),
        }
    }

    /// POSTs `body`, retrying every failure but a 404; returns the 2xx
    /// answer's body.
    async fn post<B: Serialize>(
        &self,
        path: &'static str,
        body: &B,
    ) -> Result<bytes::Bytes, ReportError> {
        self.post_with(path, body, None, true).await
    }

    /// POSTs `body` with retries while `wanted` (if given) holds; with
    /// `retry_refusals` false a 4xx other than 404, 408 and 429 is final.
    async fn post_with<B: Serialize>(
        &self,
        path: &'static str,
        body: &B,
        wanted: Option<&(dyn Fn() -> bool + Send + Sync)>,
        retry_refusals: bool,
    ) -> Result<bytes::Bytes, ReportError> {
        let body =
            Bytes::from(serde_json::to_vec(body).map_err(|e| ReportError::Body(e.to_string()))?);
        let call = || async {
            if wanted.is_some_and(|wanted| !wanted()) {
                return Err(CallFailure::NotWanted);
            }
            // Waiting out a backoff holds no slot; only the call does.
            let _slot = self.in_flight.acquire().await;
            let answer = self
                .transport
                .post(path, &self.instance_name, &self.token(), body.clone())
                .await
                .map_err(CallFailure::Retry)?;
            match answer.status {
                200..=299 => Ok(answer.body),
                404 => Err(CallFailure::Gone),
                s @ 400..=499 if !retry_refusals && s != 408 && s != 429 => {
                    Err(CallFailure::Refused(s))
                }
                s => Err(CallFailure::Retry(format!("the driver answered HTTP {s}"))),
            }
        };
        call.retry(self.backoff())
            .when(|f| matches!(f, CallFailure::Retry(_)))
            .notify(|f, delay| {
                if let CallFailure::Retry(why) = f {
                    if path != ACTIVATE_PATH {
                        self.retried.inc();
                    }
                    tracing::warn!(path, delay_ms = delay.as_millis() as u64, error = %why, "driver call failed; retrying");
                }
            })
            .await
            .map_err(|f| match f {
                CallFailure::Gone => ReportError::Gone { path },
                CallFailure::NotWanted => ReportError::NotWanted { path },
                CallFailure::Refused(status) => ReportError::Refused { path, status },
                CallFailure::Retry(last) => ReportError::GaveUp {
                    path,
                    attempts: self.retry.max_attempts.unwrap_or(usize::MAX).max(1),
                    last,
                },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(url: &str, timeout: Duration) -> HttpTransport {
        HttpTransport::new(Url::parse(url).unwrap(), timeout).unwrap()
    }

    #[tokio::test]
    async fn a_closed_port_is_named_connection_refused_with_what_to_check() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let base = format!("http://127.0.0.1:{port}/");
        let error = transport(&base, Duration::from_secs(10))
            .post(JOB_COMPLETE_PATH, "w", "t", Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(
            error.starts_with(&format!(
                "connection refused calling {base}{JOB_COMPLETE_PATH}"
            )),
            "{error}"
        );
        assert!(
            error.contains(&format!("is the driver at {base} running")),
            "{error}"
        );
        assert!(error.contains("--driver-url"), "{error}");
    }

    #[tokio::test]
    async fn a_host_that_does_not_resolve_is_named_a_dns_failure() {
        // `.invalid` never resolves (RFC 2606).
        let error = transport(
            "http://no-such-driver.invalid:5000/",
            Duration::from_secs(10),
        )
        .post(ACTIVATE_PATH, "w", "t", Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
        assert!(
            error.starts_with("DNS lookup failed for host no-such-driver.invalid calling"),
            "{error}"
        );
        assert!(
            error.contains("check the host name in --driver-url"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_driver_that_never_answers_is_named_a_timeout() {
        // Connections complete in the backlog; nothing ever answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        let error = transport(&base, Duration::from_millis(300))
            .post(ACTIVATE_PATH, "w", "t", Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(
            error.starts_with("timed out after 0.3 s calling"),
            "{error}"
        );
        assert!(error.contains("did not answer in time"), "{error}");
        drop(listener);
    }

    #[tokio::test]
    async fn a_connection_closed_without_an_answer_is_named() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            // Read the request's first bytes, then close without answering.
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
        });
        let error = transport(&base, Duration::from_secs(10))
            .post(JOB_STARTED_PATH, "w", "t", Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        server.await.unwrap();
        assert!(
            error.starts_with("connection closed before an answer")
                || error.starts_with("connection reset")
                || error.starts_with("the call failed"),
            "{error}"
        );
        assert!(error.contains(JOB_STARTED_PATH), "{error}");
    }
}
