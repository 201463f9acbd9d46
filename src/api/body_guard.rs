//! The guard on request bodies: one deadline for the whole body, counted
//! from the moment the request's headers were read (a body sent a byte at
//! a time cannot stretch it), and one budget of bytes for the bodies of
//! every connection at once (past it, a new body's bytes get 503, and the
//! worker's memory stays bounded whatever clients send).
//!
//! tower-http's `RequestBodyTimeoutLayer` restarts its timer on every
//! frame; this one does not, so the guard is ours.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The body did not arrive whole within its deadline (408).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {deadline_ms} ms of its headers")]
pub struct BodyDeadlineExceeded {
    /// The deadline, in ms.
    pub deadline_ms: u64,
}

/// The bodies being read at once already hold the budget's bytes (503).
#[derive(Debug, thiserror::Error)]
#[error(
    "the worker is reading {budget_bytes} bytes of request bodies at once, its limit; retry later"
)]
pub struct BodyBudgetExhausted {
    /// The budget, in bytes.
    pub budget_bytes: usize,
}

/// The shared part of the guard: the deadline and the budget.
#[derive(Debug, Clone)]
pub struct BodyGuard {
    deadline: Duration,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
}

impl BodyGuard {
    /// Bodies must arrive within `deadline` of their headers; at most
    /// `budget_bytes` of body bytes are held at once (clamped to
    /// [`Semaphore::MAX_PERMITS`]).
    pub fn new(deadline: Duration, budget_bytes: usize) -> BodyGuard {
        let budget_bytes = budget_bytes.min(Semaphore::MAX_PERMITS);
        BodyGuard {
            deadline,
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
        }
    }

    /// Body bytes held now by requests being read.
    pub fn held_bytes(&self) -> usize {
        self.budget_bytes - self.budget.available_permits()
    }

    /// The middleware: wraps the request's body in the guard.
    pub async fn layer(
        axum::extract::State(guard): axum::extract::State<BodyGuard>,
        request: Request,
        next: Next,
    ) -> Response {
        let (parts, body) = request.into_parts();
        let guarded = GuardedBody {
            inner: body,
            sleep: Box::pin(tokio::time::sleep(guard.deadline)),
            guard,
            held: None,
        };
        next.run(Request::from_parts(parts, Body::new(guarded)))
            .await
    }
}

/// A request body under a [`BodyGuard`]: its bytes hold permits of the
/// budget until it is dropped (once the handler has read it).
struct GuardedBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    guard: BodyGuard,
    held: Option<OwnedSemaphorePermit>,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.sleep.as_mut().poll(cx).is_ready() {
            let deadline_ms = self.guard.deadline.as_millis() as u64;
            return Poll::Ready(Some(Err(Box::new(BodyDeadlineExceeded { deadline_ms }))));
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let size = data.len();
            if size > 0 {
                let taken = u32::try_from(size)
                    .ok()
                    .and_then(|n| self.guard.budget.clone().try_acquire_many_owned(n).ok());
                match (taken, self.held.as_mut()) {
                    (Some(permit), Some(held)) => held.merge(permit),
                    (Some(permit), None) => self.held = Some(permit),
                    (None, _) => {
                        let budget_bytes = self.guard.budget_bytes;
                        return Poll::Ready(Some(Err(Box::new(BodyBudgetExhausted {
                            budget_bytes,
                        }))));
                    }
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future as _;
