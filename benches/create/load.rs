//! The load: 64 (or `connections`) keep-alive HTTP/1.1 connections, one
//! request in flight on each, as a driver's connection pool would hold.
//! Latency is from writing the request to reading the whole answer, on the
//! client's side, in µs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use batch_worker::api::CREATE_PATH;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What one run of the load measured.
pub struct Measured {
    /// Latency of every answered request after the warm-up, in µs.
    pub latency_us: Histogram<u64>,
    /// Answers other than 200.
    pub not_ok: u64,
    /// Requests that failed at the HTTP level (connection errors).
    pub failed: u64,
    /// Requests answered after the warm-up, per second of the measured
    /// window.
    pub per_s: f64,
}

/// How the requests are paced.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// `per_s` requests a second in all, spread evenly over the
    /// connections (each connection sends on its own schedule).
    Rate { per_s: u64 },
    /// Each connection sends its next request as soon as the last is
    /// answered (saturation).
    Closed,
}

/// Sends the creates in `bodies` over `connections` connections to
/// `addr`, at `pace`, for `warmup + measure` (or until the bodies run
/// out); only answers completed after `warmup` are counted.
pub fn run(
    client: &tokio::runtime::Runtime,
    addr: SocketAddr,
    bodies: Arc<Vec<Bytes>>,
    connections: usize,
    pace: Pace,
    warmup: Duration,
    measure: Duration,
) -> Measured {
    client.block_on(async move {
        let began = Instant::now();
        let measured_from = began + warmup;
        let end = measured_from + measure;
        let tasks: Vec<_> = (0..connections)
            .map(|c| {
                let bodies = bodies.clone();
                tokio::spawn(connection(
                    addr,
                    bodies,
                    c,
                    connections,
                    pace,
                    measured_from,
                    end,
                ))
            })
            .collect();
        let mut total = Measured {
            latency_us: new_histogram(),
            not_ok: 0,
            failed: 0,
            per_s: 0.0,
        };
        let mut answered = 0u64;
        for task in tasks {
            let one = task.await.expect("a load task");
            total.latency_us.add(&one.latency_us).expect("same bounds");
            total.not_ok += one.not_ok;
            total.failed += one.failed;
            answered += one.latency_us.len();
        }
        let window = Instant::now()
            .min(end)
            .saturating_duration_since(measured_from);
        total.per_s = answered as f64 / window.as_secs_f64().max(1e-9);
        total
    })
}

/// A histogram of µs from 1 µs to 1 h, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// One connection's share: bodies `index`, `index + connections`, ...
async fn connection(
    addr: SocketAddr,
    bodies: Arc<Vec<Bytes>>,
    index: usize,
    connections: usize,
    pace: Pace,
    measured_from: Instant,
    end: Instant,
) -> Measured {
    let mut measured = Measured {
        latency_us: new_histogram(),
        not_ok: 0,
        failed: 0,
        per_s: 0.0,
    };
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/1.1 handshake");
    tokio::spawn(conn);
    // Paced: each connection sends every `period`, the connections offset
    // evenly within it, so the server sees a steady `per_s`.
    let mut ticks = match pace {
        Pace::Rate { per_s } => {
            let period = Duration::from_secs_f64(connections as f64 / per_s as f64);
            let first =
                tokio::time::Instant::now() + period.mul_f64(index as f64 / connections as f64);
            let mut ticks = tokio::time::interval_at(first, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            Some(ticks)
        }
        Pace::Closed => None,
    };
    for body in bodies.iter().skip(index).step_by(connections) {
        if let Some(ticks) = &mut ticks {
            ticks.tick().await;
        }
        if Instant::now() >= end {
            break;
        }
        if sender.ready().await.is_err() {
            measured.failed += 1;
            break;
        }
        let request = hyper::Request::post(CREATE_PATH)
            .header("host", "worker")
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .expect("a request");
        let sent = Instant::now();
        match sender.send_request(request).await {
            Ok(answer) => {
                let status = answer.status();
                let _ = answer.into_body().collect().await;
                let done = Instant::now();
                if status != hyper::StatusCode::OK {
                    measured.not_ok += 1;
                }
                if sent >= measured_from {
                    let us = done.duration_since(sent).as_micros().max(1) as u64;
                    measured.latency_us.saturating_record(us);
                }
            }
            Err(_) => {
                measured.failed += 1;
                break;
            }
        }
    }
    measured
}
