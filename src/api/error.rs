//! [`ApiError`]: every error answer of the API, with one JSON envelope:
//! `{"error": {"status": 400, "code": "bad_request", "field": "token", "message": "..."}}`
//! (`field` only for 400s that name one).

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::wire::FieldError;
use crate::worker::{CreateError, UnknownJob};

/// An error answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; names the field.
    #[error("{0}")]
    BadRequest(FieldError),
    /// 401: the API token is required and was not given (see
    /// [`super::ApiToken`]).
    #[error("{0}")]
    Unauthorized(String),
    /// 408: the body did not arrive in time (`ApiConfig::body_read_timeout`).
    #[error("the request body did not arrive in time: {0}")]
    RequestTimeout(String),
    /// 413: the body is larger than the limit.
    #[error("the body is larger than the worker's limit: {0}")]
    PayloadTooLarge(String),
    /// 403: this `(batch_id, job_id)` is already present.
    #[error("{0}")]
    Duplicate(CreateError),
    /// 404: unknown job, container or endpoint.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 416: a log read's `Range` starts at or past the log's end, or
    /// asks for several ranges.
    #[error("{0}")]
    RangeNotSatisfiable(String),
    /// 503: shutting down, or a resource of the worker failed.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// Maps axum's body rejection: 413 stays 413, the body deadline
    /// ([`super::BodyDeadlineExceeded`] in the error's sources) is 408, the
    /// body budget ([`super::BodyBudgetExhausted`]) 503, anything else is a
    /// 400 on `body`.
    pub fn from_body_rejection(rejection: BytesRejection) -> ApiError {
        let mut sources = std::iter::successors(
            Some(&rejection as &(dyn std::error::Error + 'static)),
            |e| e.source(),
        );
        let found = sources.find_map(|e| {
            if let Some(deadline) = e.downcast_ref::<super::BodyDeadlineExceeded>() {
                Some(ApiError::RequestTimeout(deadline.to_string()))
            } else {
                e.downcast_ref::<super::BodyBudgetExhausted>()
                    .map(|budget| ApiError::Unavailable(budget.to_string()))
            }
        });
        if let Some(error) = found {
            error
        } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(rejection.body_text())
        } else {
            ApiError::BadRequest(FieldError {
                field: "body".into(),
                message: rejection.body_text(),
            })
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Duplicate(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Duplicate(_) => "duplicate_job",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::RangeNotSatisfiable(_) => "range_not_satisfiable",
            ApiError::Unavailable(_) => "unavailable",
        }
    }
}

/// `Retry-After` of every 503, in seconds: the worker is starting, ending,
/// or short of disk; the driver may retry here later, or elsewhere now.
pub const RETRY_AFTER_SECONDS: &str = "5";

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::BadRequest(e)
    }
}

impl From<CreateError> for ApiError {
    fn from(e: CreateError) -> Self {
        match e {
            CreateError::Duplicate { .. } => ApiError::Duplicate(e),
            CreateError::ShuttingDown
            | CreateError::NotActivated
            | CreateError::JournalUnavailable(_)
            | CreateError::DiskFull { .. } => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<UnknownJob> for ApiError {
    fn from(e: UnknownJob) -> Self {
        ApiError::NotFound(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut error = json!({
            "status": status.as_u16(),
            "code": self.code(),
            "message": self.to_string(),
        });
        if let ApiError::BadRequest(field) = &self {
            error["field"] = json!(field.field);
            error["message"] = json!(field.message);
        }
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}
