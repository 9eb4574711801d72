//! Slow or too many senders cannot hold the ingress: a body that does not arrive within
//! `server.read_timeout` gets 408 problem+json, a request head that does not arrive in time
//! gets its connection closed, past `server.max_connections` new senders wait until a
//! slot is free instead of each holding a task and a buffer, and connections idle for
//! `server.idle_timeout` (HTTP/2 ones too) are closed, so they cannot hold those slots.

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

/// A TLS connection to the ingress at `addr` that negotiated `alpn`.
async fn tls_connection(
    addr: &str,
    ca: &crate::support::tls::Ca,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector =
        tokio_rustls::TlsConnector::from(crate::support::tls::client_config(ca, &[alpn]));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
    stream
}

/// `max_connections` idle TLS connections, half HTTP/2 (each sent the client preface and
/// its settings, then nothing), half HTTP/1.1 (nothing at all): within `idle_timeout` they
/// are closed, and a new sender gets its 202.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_of_either_protocol_are_closed_and_new_senders_served() {
    const SLOTS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::support::tls::Ca::new("idle CA");
    let (cert, key) = ca.server().write(dir.path(), "ingress");
    let limits = format!(
        "  max_connections: {SLOTS}\n  idle_timeout: 2s\n  tls: {{ cert: {}, key: {} }}\n",
        yaml_path(&cert),
        yaml_path(&key)
    );
    let mut config = config(dir.path(), &limits);
    // The HTTP/1 connections are closed by the read timeout already; made longer than the
    // idle timeout, so that the idle timeout is what closes both kinds here.
    config = config.replace("  read_timeout: 1s\n", "  read_timeout: 30s\n");
    let server = Hookbridge::start(dir.path(), &config);
    let addr = addr(&server);
    let mut idle = Vec::new();
    for n in 0..SLOTS {
        if n % 2 == 0 {
            let mut h2 = tls_connection(&addr, &ca, b"h2").await;
            // The preface, then an empty SETTINGS frame.
            h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                .await
                .unwrap();
            idle.push(h2);
        } else {
            idle.push(tls_connection(&addr, &ca, b"http/1.1").await);
        }
    }
    let started = Instant::now();
    // A new sender (every slot is taken by an idle connection).
    let mut sender = tokio::time::timeout(
        Duration::from_secs(10),
        tls_connection(&addr, &ca, b"http/1.1"),
    )
    .await
    .expect("accepted once idle connections were closed");
    sender
        .write_all(b"POST /hooks/r HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), sender.read(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "it waited for a slot: {:?}",
        started.elapsed()
    );
    // Every idle connection was closed by the server.
    for mut connection in idle {
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), connection.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "an idle connection was closed");
    }
}
