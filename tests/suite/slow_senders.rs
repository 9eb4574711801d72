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

/// POSTs one small webhook on `sender` and returns the start of the answer (within 5 s).
async fn post_one(sender: &mut tokio_rustls::client::TlsStream<TcpStream>) -> String {
    sender
        .write_all(b"POST /hooks/r HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), sender.read(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// Twice `max_connections` idle TLS connections, half HTTP/2 (each sent the client preface
/// and its settings, then nothing), half HTTP/1.1 (nothing at all): the first half takes
/// every slot and the second waits in the backlog; within `idle_timeout` each is closed,
/// and a new sender queued behind all of them gets its 202.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_of_either_protocol_are_closed_and_new_senders_served() {
    const SLOTS: usize = 1_000;
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
    let ca = std::sync::Arc::new(ca);
    let established = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut idle = Vec::new();
    for n in 0..2 * SLOTS {
        let (addr, ca, established) = (addr.clone(), ca.clone(), established.clone());
        // Each holds its connection until the server closes it, and says whether it did.
        let connection = tokio::spawn(async move {
            let mut stream = if n % 2 == 0 {
                let mut h2 = tls_connection(&addr, &ca, b"h2").await;
                // The preface, then an empty SETTINGS frame.
                h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                    .await
                    .unwrap();
                h2
            } else {
                tls_connection(&addr, &ca, b"http/1.1").await
            };
            established.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut rest))
                .await
                .is_ok()
        });
        idle.push(connection);
    }
    // The first half holds every slot; the second half is in the backlog meanwhile.
    let deadline = Instant::now() + Duration::from_secs(60);
    while established.load(std::sync::atomic::Ordering::SeqCst) < SLOTS {
        assert!(Instant::now() < deadline, "{SLOTS} connections established");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A new sender, behind every one of them.
    let mut sender = tokio::time::timeout(
        Duration::from_secs(60),
        tls_connection(&addr, &ca, b"http/1.1"),
    )
    .await
    .expect("accepted once idle connections were closed");
    let answer = post_one(&mut sender).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(
        server.log_text().contains("server.max_connections"),
        "the idle connections took every slot"
    );
    // Every idle connection was closed by the server.
    for connection in idle {
        assert!(connection.await.unwrap(), "an idle connection was closed");
    }
}

/// An HTTP/2 frame: type, flags, stream and payload.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn write_frame(to: &mut (impl AsyncWriteExt + Unpin), frame: Frame) {
    let len = frame.payload.len() as u32;
    let mut bytes = len.to_be_bytes()[1..].to_vec();
    bytes.extend([frame.kind, frame.flags]);
    bytes.extend(frame.stream.to_be_bytes());
    bytes.extend(frame.payload);
    to.write_all(&bytes).await.unwrap();
    // TLS streams buffer what they are given.
    to.flush().await.unwrap();
}

async fn read_frame(from: &mut (impl AsyncReadExt + Unpin)) -> Option<Frame> {
    let mut head = [0u8; 9];
    from.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    from.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// One HTTP/2 connection opening 150 requests that announce a body and never send it: the
/// server takes at most 100 at once (the others are refused with REFUSED_STREAM, so the
/// sender may retry them), answers each taken one 408 after `read_timeout`, and serves a
/// new sender meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_http2_connection_holds_at_most_the_stream_cap() {
    const OPENED: u32 = 150;
    const CAP: usize = 100;
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const END_HEADERS: u8 = 0x4;
    const ACK: u8 = 0x1;
    const REFUSED_STREAM: [u8; 4] = [0, 0, 0, 7];
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::support::tls::Ca::new("streams CA");
    let (cert, key) = ca.server().write(dir.path(), "ingress");
    let limits = format!(
        "  tls: {{ cert: {}, key: {} }}\n",
        yaml_path(&cert),
        yaml_path(&key)
    );
    let config =
        config(dir.path(), &limits).replace("  read_timeout: 1s\n", "  read_timeout: 3s\n");
    let server = Hookbridge::start(dir.path(), &config);
    let addr = addr(&server);
    let mut h2 = tls_connection(&addr, &ca, b"h2").await;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    write_frame(
        &mut h2,
        Frame {
            kind: SETTINGS,
            flags: 0,
            stream: 0,
            payload: vec![],
        },
    )
    .await;
    // Take the server's settings (the stream cap among them) before opening streams.
    loop {
        let frame = read_frame(&mut h2).await.expect("the server's settings");
        if frame.kind == SETTINGS && frame.flags & ACK == 0 {
            write_frame(
                &mut h2,
                Frame {
                    kind: SETTINGS,
                    flags: ACK,
                    stream: 0,
                    payload: vec![],
                },
            )
            .await;
            break;
        }
    }
    // POST /hooks/r with a 10-byte body to come (HPACK: static-table names, literal values).
    let mut block = vec![0x83, 0x87];
    for (prefix, value) in [
        (&[0x04][..], "/hooks/r"),
        (&[0x01][..], "localhost"),
        (&[0x0f, 0x10][..], "application/json"),
        (&[0x0f, 0x0d][..], "10"),
    ] {
        block.extend(prefix);
        block.push(value.len() as u8);
        block.extend(value.as_bytes());
    }
    for n in 0..OPENED {
        let headers = Frame {
            kind: HEADERS,
            flags: END_HEADERS,
            stream: 2 * n + 1,
            payload: block.clone(),
        };
        write_frame(&mut h2, headers).await;
    }
    let opened = Instant::now();
    // Meanwhile, a new sender is served.
    let mut sender = tls_connection(&addr, &ca, b"http/1.1").await;
    let answer = post_one(&mut sender).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");

    let (mut answered, mut refused) = (
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    );
    let mut seen = Vec::new();
    while answered.len() + refused.len() < OPENED as usize {
        let frame = tokio::time::timeout(Duration::from_secs(20), read_frame(&mut h2))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "every stream answered or refused: answered {answered:?} refused {refused:?}"
                )
            })
            .unwrap_or_else(|| panic!("the connection stays open: {seen:?}"));
        seen.push((frame.kind, frame.stream, frame.payload.len()));
        match frame.kind {
            HEADERS => {
                answered.insert(frame.stream);
            }
            RST_STREAM if frame.payload == REFUSED_STREAM => {
                refused.insert(frame.stream);
            }
            _ => {}
        }
    }
    assert_eq!(answered.len(), CAP, "taken at once: {answered:?}");
    assert_eq!(refused.len(), OPENED as usize - CAP, "refused: {refused:?}");
    assert!(
        answered
            .iter()
            .all(|stream| refused.iter().all(|r| r > stream)),
        "the first {CAP} were taken, the rest refused"
    );
    assert!(
        opened.elapsed() >= Duration::from_millis(2_500),
        "the taken ones were answered after read_timeout: {:?}",
        opened.elapsed()
    );
}
