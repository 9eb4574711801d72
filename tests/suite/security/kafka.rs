//! hookbridge on Kafka secured through `broker.kafka.properties`, against a private Tansu
//! per test: the producer (ingress), the consumer group (delivery) and topic creation all
//! go through the secured connection, and a webhook posted comes out at the receiver. TLS
//! with a private CA, mutual TLS, SASL SCRAM-SHA-256 and SCRAM-SHA-512 (users made with
//! Tansu's own CLI), SASL PLAIN; and a refused password or certificate stops `serve` at
//! start naming the key and the broker's reason.
//!
//! What Tansu 0.6.0 offers, and how the gaps are bridged:
//! - `--cert`/`--key` are accepted but its listener never uses them (the TLS acceptor is
//!   built and dropped), so TLS is terminated by a rustls proxy in front of Tansu, whose
//!   address Tansu advertises: every connection librdkafka makes (bootstrap, partition
//!   leaders, the group coordinator) is TLS to the proxy, the bytes behind it Tansu's.
//! - `--authentication` does SCRAM-SHA-256/512 itself, checking the salted credentials it
//!   stores. Its first user can only be created by an authenticated client, and its memory
//!   storage is per process, so the SCRAM tests run it on SQLite storage: open first, the
//!   users created with `tansu user create`, then restarted on the same file with
//!   `--authentication`.
//! - Its SASL library is built without PLAIN (a PLAIN handshake gets `NoSharedMechanism`),
//!   and librdkafka's mock cluster has no SASL at all; so for PLAIN the proxy itself is the
//!   authenticator: it answers SaslHandshake and SaslAuthenticate as a Kafka broker does
//!   (checking the user and password), passes ApiVersions to Tansu, and closes a connection
//!   that sends anything else before authenticating. librdkafka's side of the exchange,
//!   driven by hookbridge's properties, is the one a real broker sees.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::receiver::Receiver;
use crate::support::tls::{Ca, server_config};
use crate::support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A private Tansu, advertising `localhost:advertised_port` (the TLS proxy) to its clients.
struct Tansu {
    child: Child,
    port: u16,
}

impl Tansu {
    /// On memory storage, open to any client.
    fn start(advertised_port: u16) -> Tansu {
        Tansu::spawn(Path::new("."), advertised_port, "memory://tansu/", false)
    }

    /// On SQLite storage in `dir` with these SCRAM users (`scram256` or `scram512`, user,
    /// password), demanding SASL authentication: started open, the users created through
    /// Tansu's CLI, then restarted on the same storage with `--authentication`.
    fn with_users(dir: &Path, advertised_port: u16, users: &[(&str, &str, &str)]) -> Tansu {
        let storage = "sqlite://tansu.db";
        let open = Tansu::spawn(dir, 0, storage, false);
        for (mechanism, user, password) in users {
            let status = Command::new("tansu")
                .args(["user", "create", "--broker"])
                .arg(format!("tcp://127.0.0.1:{}", open.port))
                .args(["--mechanism", mechanism, user, password])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "tansu user create {user} ({mechanism})");
        }
        drop(open);
        Tansu::spawn(dir, advertised_port, storage, true)
    }

    /// Advertises its own address when `advertised_port` is 0.
    fn spawn(dir: &Path, advertised_port: u16, storage: &str, authentication: bool) -> Tansu {
        let port = free_port();
        let advertised = match advertised_port {
            0 => port,
            proxy => proxy,
        };
        let mut command = Command::new("tansu");
        command
            .current_dir(dir)
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://localhost:{advertised}"))
            .args(["--storage-engine", storage, "--silent"]);
        if authentication {
            command.arg("--authentication");
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu is not installed: run scripts/test, which builds it");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Tansu { child, port }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Terminates TLS on `port` and passes the bytes on to `upstream`; with `plain`, first
/// demands SASL PLAIN with that user and password.
async fn tls_proxy(
    port: u16,
    upstream: u16,
    tls: Arc<rustls::ServerConfig>,
    plain: Option<(&'static str, &'static str)>,
) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut secured) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain_upstream) =
                    tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                if let Some(credentials) = plain
                    && !sasl_plain(&mut secured, &mut plain_upstream, credentials).await
                {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut secured, &mut plain_upstream).await;
            });
        }
    });
}

/// Kafka's API keys and error codes the PLAIN authenticator speaks.
const API_VERSIONS: i16 = 18;

const SASL_HANDSHAKE: i16 = 17;

const SASL_AUTHENTICATE: i16 = 36;

const UNSUPPORTED_SASL_MECHANISM: i16 = 33;

const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// The broker's side of a SASL PLAIN authentication (KIP-43 handshake, KIP-152
/// authenticate, both at versions 0-1 as librdkafka sends them): true once the client has
/// authenticated; false when it must be disconnected.
async fn sasl_plain(
    client: &mut (impl AsyncRead + AsyncWrite + Unpin),
    broker: &mut tokio::net::TcpStream,
    (user, password): (&str, &str),
) -> bool {
    let mut mechanism_ok = false;
    loop {
        let Some(request) = read_frame(client).await else {
            return false;
        };
        let api_key = i16::from_be_bytes([request[0], request[1]]);
        let version = i16::from_be_bytes([request[2], request[3]]);
        let correlation = &request[4..8];
        // Request header v1: the client id (a nullable string) follows the correlation id.
        let client_id_len = i16::from_be_bytes([request[8], request[9]]).max(0) as usize;
        let body = &request[10 + client_id_len..];
        let mut response = correlation.to_vec();
        match api_key {
            API_VERSIONS => {
                // The broker's own versions, which include both SASL requests.
                if write_frame(broker, &request).await.is_none() {
                    return false;
                }
                let Some(answer) = read_frame(broker).await else {
                    return false;
                };
                let _ = write_frame(client, &answer).await;
                continue;
            }
            SASL_HANDSHAKE => {
                let len = i16::from_be_bytes([body[0], body[1]]) as usize;
                mechanism_ok = &body[2..2 + len] == b"PLAIN";
                let code = if mechanism_ok {
                    0
                } else {
                    UNSUPPORTED_SASL_MECHANISM
                };
                response.extend_from_slice(&code.to_be_bytes());
                response.extend_from_slice(&1i32.to_be_bytes());
                response.extend_from_slice(&5i16.to_be_bytes());
                response.extend_from_slice(b"PLAIN");
                let _ = write_frame(client, &response).await;
                if !mechanism_ok {
                    return false;
                }
            }
            SASL_AUTHENTICATE if mechanism_ok => {
                // authzid NUL authcid NUL password
                let len = i32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
                let fields: Vec<&[u8]> = body[4..4 + len].split(|b| *b == 0).collect();
                let accepted = fields.len() == 3
                    && fields[1] == user.as_bytes()
                    && fields[2] == password.as_bytes();
                if accepted {
                    response.extend_from_slice(&0i16.to_be_bytes());
                    response.extend_from_slice(&(-1i16).to_be_bytes());
                } else {
                    let message = b"Authentication failed: Invalid username or password";
                    response.extend_from_slice(&SASL_AUTHENTICATION_FAILED.to_be_bytes());
                    response.extend_from_slice(&(message.len() as i16).to_be_bytes());
                    response.extend_from_slice(message);
                }
                response.extend_from_slice(&0i32.to_be_bytes());
                if version >= 1 {
                    response.extend_from_slice(&0i64.to_be_bytes());
                }
                let _ = write_frame(client, &response).await;
                return accepted;
            }
            // Anything else before authenticating: a broker demanding SASL hangs up.
            _ => return false,
        }
    }
}

/// One size-prefixed Kafka frame.
async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let len = stream.read_i32().await.ok()?;
    let mut frame = vec![0; usize::try_from(len).ok()?];
    stream.read_exact(&mut frame).await.ok()?;
    Some(frame)
}

async fn write_frame(stream: &mut (impl AsyncWrite + Unpin), frame: &[u8]) -> Option<()> {
    stream.write_i32(frame.len() as i32).await.ok()?;
    stream.write_all(frame).await.ok()?;
    stream.flush().await.ok()
}

/// A config on Kafka at `bootstrap` with `properties` (YAML flow-map entries).
fn kafka_config(bootstrap: &str, topic: &str, receiver: &str, properties: &str) -> String {
    let broker = format!(
        "  kind: kafka\n  kafka:\n    bootstrap_servers: \"{bootstrap}\"\n    partitions: 2\n    properties: {{ fetch.wait.max.ms: \"10\", {properties} }}\n"
    );
    events_config(&broker, topic, &subscription("out", topic, receiver, ""))
}

/// A webhook in and out through Kafka at `bootstrap` with `properties`: publish, consumer
/// group, topic creation. Returns hookbridge's log.
async fn round_trip(bootstrap: &str, properties: &str) -> String {
    round_trip_logged(bootstrap, properties, "info").await
}

/// [`round_trip`] with hookbridge's `RUST_LOG`.
async fn round_trip_logged(bootstrap: &str, properties: &str, rust_log: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let topic = unique("secured");
    let server = Hookbridge::start_with_env(
        dir.path(),
        &kafka_config(bootstrap, &topic, &receiver.url, properties),
        &[],
        &[("RUST_LOG", rust_log)],
    );
    post_accepted(&server, 3, |_| "k".into()).await;
    receiver
        .wait_for("three deliveries", Duration::from_secs(90), |r| {
            r.len() >= 3
        })
        .await;
    server.log_text()
}

/// A private CA, its PEM file in `dir`, and client certificate files it signed.
struct Pki {
    ca: Ca,
    ca_path: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca = Ca::new("Kafka CA");
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let (cert, key) = ca.client("hookbridge").write(dir, "client");
        Pki {
            ca,
            ca_path: yaml_path(&ca_path),
            client_cert: yaml_path(&cert),
            client_key: yaml_path(&key),
        }
    }

    /// The properties of a TLS connection trusting this CA.
    fn tls(&self, protocol: &str) -> String {
        format!(
            "security.protocol: {protocol}, ssl.ca.location: {}",
            self.ca_path
        )
    }

    /// The properties of a TLS connection with this CA's client certificate.
    fn mutual_tls(&self, protocol: &str) -> String {
        format!(
            "{}, ssl.certificate.location: {}, ssl.key.location: {}",
            self.tls(protocol),
            self.client_cert,
            self.client_key
        )
    }
}

/// A private Tansu behind a TLS proxy, and the PKI of both.
struct Secured {
    pki: Pki,
    bootstrap: String,
    _tansu: Tansu,
    _dir: tempfile::TempDir,
}

/// Tansu open on memory storage (no `users`) or demanding SCRAM with `users`, behind a TLS
/// proxy that demands a client certificate if `client_ca`, and SASL PLAIN with `plain`.
async fn secured(
    users: &[(&str, &str, &str)],
    client_ca: bool,
    plain: Option<(&'static str, &'static str)>,
) -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let proxy_port = free_port();
    let tansu = match users {
        [] => Tansu::start(proxy_port),
        users => Tansu::with_users(dir.path(), proxy_port, users),
    };
    let tls = server_config(&pki.ca.server(), client_ca.then_some(&pki.ca));
    tls_proxy(proxy_port, tansu.port, tls, plain).await;
    Secured {
        pki,
        bootstrap: format!("localhost:{proxy_port}"),
        _tansu: tansu,
        _dir: dir,
    }
}

/// `serve`'s error output on Kafka at `bootstrap` with `properties` it must refuse.
fn refused(bootstrap: &str, properties: &str) -> String {
    refused_at_start(&kafka_config(
        bootstrap,
        "refused",
        "http://127.0.0.1:9/hook",
        properties,
    ))
}

/// SASL properties over TLS (`tls` being [`Pki::tls`] or [`Pki::mutual_tls`] properties).
fn sasl(tls: &str, mechanism: &str, password: &str) -> String {
    format!(
        "{tls}, sasl.mechanism: {mechanism}, sasl.username: hookbridge, sasl.password: {password}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let kafka = secured(&[], false, None).await;
    round_trip(&kafka.bootstrap, &kafka.pki.tls("SSL")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    let kafka = secured(&[], true, None).await;
    round_trip(&kafka.bootstrap, &kafka.pki.mutual_tls("SSL")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_sha_256_over_tls() {
    let kafka = secured(&[("scram256", "hookbridge", "s3cret-256")], false, None).await;
    let tls = kafka.pki.tls("SASL_SSL");
    round_trip(&kafka.bootstrap, &sasl(&tls, "SCRAM-SHA-256", "s3cret-256")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_sha_512_over_mutual_tls() {
    let kafka = secured(&[("scram512", "hookbridge", "s3cret-512")], true, None).await;
    let tls = kafka.pki.mutual_tls("SASL_SSL");
    // At trace level: the password stays out of hookbridge's log.
    let properties = sasl(&tls, "SCRAM-SHA-512", "s3cret-512");
    let log = round_trip_logged(&kafka.bootstrap, &properties, "trace").await;
    assert!(log.contains("TRACE"), "a trace-level log");
    assert!(!log.contains("s3cret-512"), "the password was logged");

    // The same user with a wrong password: refused at start, with Tansu's answer.
    let said = refused(&kafka.bootstrap, &sasl(&tls, "SCRAM-SHA-512", "not-it"));
    assert_names(
        &said,
        "broker.kafka.properties",
        "the broker refused the sasl authentication",
    );
    assert!(
        !said.contains("not-it"),
        "the password was printed:\n{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plain_over_tls() {
    let kafka = secured(&[], false, Some(("hookbridge", "plain-pass"))).await;
    let tls = kafka.pki.tls("SASL_SSL");
    round_trip(&kafka.bootstrap, &sasl(&tls, "PLAIN", "plain-pass")).await;
    let said = refused(&kafka.bootstrap, &sasl(&tls, "PLAIN", "not-it"));
    assert_names(
        &said,
        "broker.kafka.properties",
        "invalid username or password",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_stops_serve_with_the_verifiers_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let proxy_port = free_port();
    let tansu = Tansu::start(proxy_port);
    // The broker's certificate comes from a CA hookbridge was not told of.
    let other = Ca::new("Another CA");
    tls_proxy(
        proxy_port,
        tansu.port,
        server_config(&other.server(), None),
        None,
    )
    .await;
    let said = refused(&format!("localhost:{proxy_port}"), &pki.tls("SSL"));
    assert_names(
        &said,
        "broker.kafka.properties",
        "certificate verify failed",
    );
}
