//! Hostile clients against real sockets: connections that idle (HTTP/1
//! after a request, h2c after its preface, or silent from the start) are
//! closed; connections past the cap are closed as they come; a body
//! trickled a byte at a time gets 408 at its deadline, counted from its
//! headers; bodies past the buffered-bytes budget get 503; and a real
//! `serve` with 1,100 idle or trickling connections open still answers
//! healthchecks and creates, and runs jobs (its open-file limit raised).

use std::time::{Duration, Instant};

use batch_worker::api::ApiConfig;
use batch_worker::demo::driver::EmbeddedDriver;
use batch_worker::server::ConnectionLimits;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    create_body, shell_spec, write_local_bunch, Harness, Options, ServeChild, HANG_GUARD,
};

/// The host:port of a harness.
fn address(h: &Harness) -> String {
    format!("{}:{}", h.base.host_str().unwrap(), h.base.port().unwrap())
}

/// Reads until the server closes the connection (EOF or reset); returns
/// what it sent. Panics if that takes longer than `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_silent_http1_and_h2c() {
    let h = Harness::with_options(Options {
        limits: ConnectionLimits {
            idle_timeout: Duration::from_millis(400),
            ..ConnectionLimits::default()
        },
        ..Options::default()
    })
    .await;
    let addr = address(&h);
    // Never sends a byte.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    // One HTTP/1.1 request on a keep-alive connection, then nothing.
    let mut kept = TcpStream::connect(&addr).await.unwrap();
    kept.write_all(b"GET /healthcheck HTTP/1.1\r\nHost: w\r\n\r\n")
        .await
        .unwrap();
    // h2c with prior knowledge: the preface and an empty SETTINGS frame.
    let mut h2c = TcpStream::connect(&addr).await.unwrap();
    h2c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let began = Instant::now();
    let within = Duration::from_secs(10);
    assert!(read_until_closed(&mut silent, within).await.is_empty());
    let answer = read_until_closed(&mut kept, within).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let settings = read_until_closed(&mut h2c, within).await;
    assert!(!settings.is_empty(), "the server spoke h2 before closing");
    eprintln!(
        "idle connections closed after {} ms",
        began.elapsed().as_millis()
    );
    // The server still serves.
    let (status, _) = h.get("/healthcheck").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_as_they_come() {
    let h = Harness::with_options(Options {
        limits: ConnectionLimits {
            max_connections: 8,
            ..ConnectionLimits::default()
        },
        ..Options::default()
    })
    .await;
    let addr = address(&h);
    let mut held = Vec::new();
    for _ in 0..8 {
        // Answered: the server has taken it (and keeps it alive).
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET /healthcheck HTTP/1.1\r\nHost: w\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200");
        held.push(stream);
    }
    let mut ninth = TcpStream::connect(&addr).await.unwrap();
    ninth
        .write_all(b"GET /healthcheck HTTP/1.1\r\nHost: w\r\n\r\n")
        .await
        .ok();
    let answer = read_until_closed(&mut ninth, Duration::from_secs(5)).await;
    assert!(answer.is_empty(), "over the cap: closed without an answer");
    drop(held);
    // Room again once they are gone.
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Ok(response) = h.http.get(h.base.join("healthcheck").unwrap()).send().await {
                if response.status() == StatusCode::OK {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("served again below the cap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_at_its_deadline_not_after_the_trickle() {
    let h = Harness::with_options(Options {
        api: ApiConfig {
            body_read_timeout: Duration::from_millis(800),
            ..ApiConfig::new(1 << 20)
        },
        ..Options::default()
    })
    .await;
    let mut stream = TcpStream::connect(address(&h)).await.unwrap();
    stream
        .write_all(
            b"POST /api/v1alpha/batches/jobs/create HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        )
        .await
        .unwrap();
    let began = Instant::now();
    // One byte every 100 ms: each chunk well inside any per-chunk timer,
    // the whole far past the deadline (10 s).
    let trickle = async {
        for _ in 0..100 {
            if stream.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // The trickle stops when the server answers and closes, or after 5 s.
    let _ = tokio::time::timeout(Duration::from_secs(5), trickle).await;
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "answered before the trickle ended"
    );
    let mut response = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut response))
        .await
        .expect("answered")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&response[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("within 800 ms of its headers"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_the_buffered_bytes_budget_get_503() {
    let h = Harness::with_options(Options {
        api: ApiConfig {
            max_buffered_body_bytes: 256 * 1024,
            ..ApiConfig::new(1 << 20)
        },
        ..Options::default()
    })
    .await;
    let head = |length: usize| {
        format!(
            "POST /api/v1alpha/batches/jobs/create HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
    };
    // The first holds 200 KiB of its 300 KiB body and stalls.
    let mut first = TcpStream::connect(address(&h)).await.unwrap();
    first.write_all(head(300 * 1024).as_bytes()).await.unwrap();
    first.write_all(&vec![b' '; 200 * 1024]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The second's bytes do not fit beside it.
    let mut second = TcpStream::connect(address(&h)).await.unwrap();
    second.write_all(head(100 * 1024).as_bytes()).await.unwrap();
    let _ = second.write_all(&vec![b' '; 100 * 1024]).await;
    let mut response = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut response))
        .await
        .expect("answered")
        .unwrap();
    let text = String::from_utf8_lossy(&response[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: "),
        "{text}"
    );
    assert!(text.contains("request bodies at once"), "{text}");
    // Once the first is gone, its bytes are free again: a create fits.
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = h.create(&create_body(3, 1, "t", 1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_hundred_idle_or_trickling_connections_starve_nothing() {
    // This test process holds 1,100 sockets too.
    batch_worker::server::raise_fd_limit().expect("the open-file limit can be raised");
    let dir = tempfile::tempdir().unwrap();
    let (data, specs) = (dir.path().join("data"), dir.path().join("specs"));
    std::fs::create_dir_all(&specs).unwrap();
    let bunch = vec![serde_json::to_vec(&shell_spec(1, "echo hi")).unwrap()];
    write_local_bunch(&specs, 5, "many", &bunch).await;
    let driver = EmbeddedDriver::start().await.unwrap();
    let serve = ServeChild::start(&data, &specs, driver.url.as_str(), &[]).await;
    // Its soft open-file limit was raised to the hard one.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", serve.child.id())).unwrap();
    let files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(files[3], files[4], "soft == hard: {limits}");
    let addr = serve.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for i in 0..1100 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        if i % 11 == 0 {
            // A create body that trickles: headers, then a byte now.
            stream
                .write_all(b"POST /api/v1alpha/batches/jobs/create HTTP/1.1\r\nHost: w\r\nContent-Length: 1000\r\n\r\n ")
                .await
                .unwrap();
        }
        held.push(stream);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let began = Instant::now();
    let health = http
        .get(format!("{}/healthcheck", serve.base))
        .send()
        .await
        .expect("healthcheck answered within the driver's 2 s");
    assert_eq!(health.status(), StatusCode::OK);
    let healthcheck_ms = began.elapsed().as_millis();
    let began = Instant::now();
    let created = http
        .post(format!("{}/api/v1alpha/batches/jobs/create", serve.base))
        .json(&create_body(5, 1, "many", 1))
        .send()
        .await
        .expect("create answered within the driver's 2 s");
    assert_eq!(created.status(), StatusCode::OK);
    let create_ms = began.elapsed().as_millis();
    eprintln!(
        "with 1,100 connections held: healthcheck {healthcheck_ms} ms, create {create_ms} ms"
    );
    // The job runs: no EMFILE anywhere.
    let status: Value = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let status: Value = http
                .get(format!(
                    "{}/api/v1alpha/batches/5/jobs/1/status",
                    serve.base
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if ["succeeded", "failed", "error", "cancelled"]
                .contains(&status["state"].as_str().unwrap_or(""))
            {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(status["state"], "succeeded", "{status}");
    drop(held);
}
