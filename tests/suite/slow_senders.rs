//! Slow or too many senders cannot hold the ingress: a body that does not arrive within
//! `server.read_timeout` gets 408 problem+json, a request head that does not arrive in time
//! gets its connection closed, and past `server.max_connections` new senders wait until a
//! slot is free instead of each holding a task and a buffer.

use std::time::{Duration, Instant};

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(dir: &std::path::Path, limits: &str) -> String {
    format!(
        "{}  read_timeout: 1s\n{limits}routes:\n  - {{ name: r, topic: t, verify: {{ kind: none }} }}\n",
        base_config(dir)
    )
}

fn addr(server: &Hookbridge) -> String {
    server.ingress.trim_start_matches("http://").to_string()
}

/// Reads what the server sends until it closes the connection (or 10 s pass).
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_is_408() {
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(dir.path(), &config(dir.path(), ""));
    let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"POST /hooks/r HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"partial\":")
        .await
        .unwrap();
    let answer = read_to_close(&mut stream).await;
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(
        answer.contains("urn:hookbridge:problem:request-timeout"),
        "{answer}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "answered after the read timeout: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_does_not_arrive_in_time_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(dir.path(), &config(dir.path(), ""));
    let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"POST /hooks/r HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let _ = read_to_close(&mut stream).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after the read timeout: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_senders_wait_for_a_slot() {
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(dir.path(), &config(dir.path(), "  max_connections: 2\n"));
    // Two senders that open a connection and send nothing hold both slots...
    let _idle_a = TcpStream::connect(addr(&server)).await.unwrap();
    let _idle_b = TcpStream::connect(addr(&server)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so a third waits until the read timeout closes one of them, then is served.
    let started = Instant::now();
    let response = http_client()
        .post(server.hook_url("r"))
        .json(&serde_json::json!({"n": 1}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(response.status(), 202);
    assert!(
        took >= Duration::from_millis(500),
        "the third sender waited for a slot: {took:?}"
    );
    assert!(
        server.log_text().contains("server.max_connections"),
        "the cap is logged"
    );
}
