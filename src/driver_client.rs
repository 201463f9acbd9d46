//! The driver client: sends `job_started` and `job_complete` to the driver.
//!
//! Delivery is at-least-once: each report is retried with exponential
//! backoff and jitter until the driver answers 2xx, answers 404 ("this job
//! is not mine any more": stop), or the attempts run out. Every call carries
//! `X-Hail-Instance-Name` and `X-Hail-Instance-Token`.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::StatusCode;
use serde::Serialize;
use url::Url;

use crate::wire::{JobCompleteBody, JobStartedBody};

/// Path of the `job_started` call under the driver's URL.
pub const JOB_STARTED_PATH: &str = "api/v1alpha/instances/job_started";
/// Path of the `job_complete` call under the driver's URL.
pub const JOB_COMPLETE_PATH: &str = "api/v1alpha/instances/job_complete";

/// Retry policy of one report.
#[derive(Debug, Clone)]
pub struct ReportRetry {
    /// First retry delay (default 200 ms); doubles with jitter.
    pub min_backoff: Duration,
    /// Longest delay (default 30 s).
    pub max_backoff: Duration,
    /// Attempts, the first included (default 20: about 7 minutes).
    pub max_attempts: usize,
    /// Timeout of one HTTP call (default 10 s).
    pub request_timeout: Duration,
}

impl Default for ReportRetry {
    fn default() -> Self {
        ReportRetry {
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            max_attempts: 20,
            request_timeout: Duration::from_secs(10),
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
    /// The driver URL could not be joined with the path.
    #[error("bad driver URL: {0}")]
    Url(#[from] url::ParseError),
}

enum CallFailure {
    Gone,
    Retry(String),
}

/// Sends reports to one driver.
#[derive(Debug, Clone)]
pub struct DriverClient {
    http: reqwest::Client,
    base: Url,
    instance_name: String,
    instance_token: String,
    retry: ReportRetry,
}

impl DriverClient {
    /// A client for the driver at `base` (e.g. `http://driver:5000/`).
    ///
    /// # Errors
    /// The HTTP client could not be built (TLS setup).
    pub fn new(
        base: Url,
        instance_name: String,
        instance_token: String,
        retry: ReportRetry,
    ) -> Result<DriverClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(retry.request_timeout)
            .build()?;
        let mut base = base;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(DriverClient {
            http,
            base,
            instance_name,
            instance_token,
            retry,
        })
    }

    /// The driver's base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Sends `job_started`.
    ///
    /// # Errors
    /// [`ReportError`] once retries are spent or the driver says 404.
    pub async fn job_started(&self, body: &JobStartedBody) -> Result<(), ReportError> {
        self.post(JOB_STARTED_PATH, body).await
    }

    /// Sends `job_complete`.
    ///
    /// # Errors
    /// [`ReportError`] once retries are spent or the driver says 404.
    pub async fn job_complete(&self, body: &JobCompleteBody) -> Result<(), ReportError> {
        self.post(JOB_COMPLETE_PATH, body).await
    }

    async fn post<B: Serialize>(&self, path: &'static str, body: &B) -> Result<(), ReportError> {
        let url = self.base.join(path)?;
        let call = || async {
            let response = self
                .http
                .post(url.clone())
                .header("X-Hail-Instance-Name", &self.instance_name)
                .header("X-Hail-Instance-Token", &self.instance_token)
                .json(body)
                .send()
                .await
                .map_err(|e| CallFailure::Retry(e.to_string()))?;
            match response.status() {
                s if s.is_success() => Ok(()),
                StatusCode::NOT_FOUND => Err(CallFailure::Gone),
                s => Err(CallFailure::Retry(format!("HTTP {s}"))),
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry.min_backoff)
            .with_max_delay(self.retry.max_backoff)
            .with_max_times(self.retry.max_attempts.saturating_sub(1))
            .with_jitter();
        call.retry(backoff)
            .when(|f| matches!(f, CallFailure::Retry(_)))
            .notify(|f, delay| {
                if let CallFailure::Retry(why) = f {
                    tracing::warn!(path, delay_ms = delay.as_millis() as u64, error = %why, "driver call failed; retrying");
                }
            })
            .await
            .map_err(|f| match f {
                CallFailure::Gone => ReportError::Gone { path },
                CallFailure::Retry(last) => ReportError::GaveUp {
                    path,
                    attempts: self.retry.max_attempts.max(1),
                    last,
                },
            })
    }
}
