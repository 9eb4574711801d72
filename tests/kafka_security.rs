//! hookbridge on Kafka with TLS set through `broker.kafka.properties`, against a private
//! Tansu per test: the producer (ingress), the consumer group (delivery) and topic
//! creation all go through the secured connection, and a webhook posted comes out at the
//! receiver.
//!
//! What Tansu 0.6.0 offers, and how the gaps are bridged:
//! - `--cert`/`--key` are accepted but its listener never uses them (the TLS acceptor is
//!   built and dropped), so TLS is terminated by a rustls proxy in front of Tansu, whose
//!   address Tansu advertises: every connection librdkafka makes (bootstrap, partition
//!   leaders, the group coordinator) is TLS to the proxy, the bytes behind it Tansu's.
//! - `--authentication` offers SCRAM-SHA-256/512 only (its SASL library is built without
//!   PLAIN), and the first SCRAM user can only be created by an authenticated client
//!   (AlterUserScramCredentials is refused before authentication; memory storage is per
//!   process, so a user made on an open broker does not carry over). SASL is therefore not
//!   proven here, nor against librdkafka's mock cluster, which has no SASL either.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::tls::{Ca, server_config};
use common::*;

/// A private Tansu, advertising `localhost:advertised_port` (the TLS proxy) to its clients.
struct Tansu {
    child: Child,
    port: u16,
}

impl Tansu {
    fn start(advertised_port: u16) -> Tansu {
        let port = free_port();
        let advertised = advertised_port;
        let mut command = Command::new("tansu");
        command
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://localhost:{advertised}"))
            .args(["--storage-engine", "memory://tansu/", "--silent"]);
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

/// Terminates TLS on `port` and passes the bytes on to `upstream`.
async fn tls_proxy(port: u16, upstream: u16, tls: Arc<rustls::ServerConfig>) {
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
                let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut secured, &mut plain).await;
            });
        }
    });
}

/// A webhook in and out through Kafka at `bootstrap` with `properties` (YAML flow-map
/// entries): publish, consumer group, topic creation.
async fn round_trip(bootstrap: &str, properties: &str) {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let topic = unique("secured");
    let broker = format!(
        "  kind: kafka\n  kafka:\n    bootstrap_servers: \"{bootstrap}\"\n    partitions: 2\n    properties: {{ fetch.wait.max.ms: \"10\", {properties} }}\n"
    );
    let server = Hookbridge::start(
        dir.path(),
        &events_config(
            &broker,
            &topic,
            &subscription("out", &topic, &receiver.url, ""),
        ),
    );
    post_accepted(&server, 3, |_| "k".into()).await;
    receiver
        .wait_for("three deliveries", Duration::from_secs(90), |r| {
            r.len() >= 3
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Kafka CA");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let (cert, key) = ca.client("hookbridge").write(dir.path(), "client");
    let proxy_port = free_port();
    let tansu = Tansu::start(proxy_port);
    tls_proxy(
        proxy_port,
        tansu.port,
        server_config(&ca.server(), Some(&ca)),
    )
    .await;
    round_trip(
        &format!("localhost:{proxy_port}"),
        &format!(
            "security.protocol: SSL, ssl.ca.location: {}, ssl.certificate.location: {}, ssl.key.location: {}",
            yaml_path(&ca_path),
            yaml_path(&cert),
            yaml_path(&key)
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Kafka CA");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let proxy_port = free_port();
    let tansu = Tansu::start(proxy_port);
    tls_proxy(proxy_port, tansu.port, server_config(&ca.server(), None)).await;
    round_trip(
        &format!("localhost:{proxy_port}"),
        &format!(
            "security.protocol: SSL, ssl.ca.location: {}",
            yaml_path(&ca_path)
        ),
    )
    .await;
}
