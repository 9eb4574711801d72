//! hookbridge on Kafka secured through `broker.kafka.properties`, against a private Apache
//! Kafka node per test with the listener under test: the producer (ingress), the consumer
//! group (delivery) and topic creation all go through the secured connection, and a webhook
//! posted comes out at the receiver. TLS with a private CA, mutual TLS, SASL SCRAM-SHA-256
//! and SCRAM-SHA-512 (users made when the node's storage is formatted), SASL PLAIN; and a
//! refused password or certificate stops `serve` at start naming the key and the broker's
//! reason. Kafka's own listeners do the TLS and SASL, as on any cluster users run.

use std::path::Path;
use std::time::Duration;

use crate::support::kafka::KafkaNode;
use crate::support::receiver::Receiver;
use crate::support::tls::Ca;
use crate::support::*;

/// A config on Kafka at `bootstrap` with `properties` (YAML flow-map entries).
fn kafka_config(bootstrap: &str, topic: &str, receiver: &str, properties: &str) -> String {
    let broker = format!(
        "  kind: kafka\n  kafka:\n    bootstrap_servers: \"{bootstrap}\"\n    partitions: 2\n    properties: {{ {properties} }}\n"
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
    ca_file: std::path::PathBuf,
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
            ca_file: ca_path,
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

/// How the node's secured listener is set up.
struct Listener {
    /// `SSL` or `SASL_SSL`.
    protocol: &'static str,
    /// Whether clients must present a certificate the CA signed.
    client_auth: bool,
    /// The broker's certificate comes from this CA instead of the PKI's.
    other_ca: bool,
}

/// A private Kafka node with a secured listener on `localhost` (its certificate signed by
/// the PKI's CA), SASL PLAIN (`hookbridge` / `plain-pass`) and SCRAM users from `scram`
/// (mechanism, password) for `hookbridge` on SASL listeners; and the PKI.
struct Secured {
    pki: Pki,
    bootstrap: String,
    _node: KafkaNode,
    _dir: tempfile::TempDir,
}

fn secured(listener: Listener, scram: &[(&str, &str)]) -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let server = if listener.other_ca {
        Ca::new("Another CA").server()
    } else {
        pki.ca.server()
    };
    // Kafka's PEM key store: the unencrypted PKCS#8 key, then the certificate chain.
    let keystore = dir.path().join("broker-keystore.pem");
    std::fs::write(&keystore, format!("{}{}", server.key, server.cert)).unwrap();
    let port = free_port();
    let name = listener.protocol.to_lowercase();
    let protocol = listener.protocol;
    let ca = pki.ca_file.display().to_string();
    let keystore = keystore.display().to_string();
    let extra = move |plain: u16, controller: u16| {
        let mut lines = vec![
            format!(
                "listeners=PLAINTEXT://127.0.0.1:{plain},{protocol}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}"
            ),
            format!(
                "advertised.listeners=PLAINTEXT://127.0.0.1:{plain},{protocol}://localhost:{port}"
            ),
            format!(
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,{protocol}:{protocol},CONTROLLER:PLAINTEXT"
            ),
            format!("listener.name.{name}.ssl.keystore.type=PEM"),
            format!("listener.name.{name}.ssl.keystore.location={keystore}"),
        ];
        if listener.client_auth {
            lines.push(format!("listener.name.{name}.ssl.truststore.type=PEM"));
            lines.push(format!("listener.name.{name}.ssl.truststore.location={ca}"));
            lines.push(format!("listener.name.{name}.ssl.client.auth=required"));
        }
        if protocol == "SASL_SSL" {
            lines.push("sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512".into());
            lines.push(format!("listener.name.{name}.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_hookbridge=\"plain-pass\";"));
            for mechanism in ["scram-sha-256", "scram-sha-512"] {
                lines.push(format!("listener.name.{name}.{mechanism}.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"));
            }
        }
        lines.join("\n") + "\n"
    };
    let format_args: Vec<String> = scram
        .iter()
        .flat_map(|(mechanism, password)| {
            [
                "--add-scram".to_string(),
                format!("{mechanism}=[name=hookbridge,password={password}]"),
            ]
        })
        .collect();
    let node = KafkaNode::start(extra, &format_args);
    Secured {
        pki,
        bootstrap: format!("localhost:{port}"),
        _node: node,
        _dir: dir,
    }
}

const SSL: Listener = Listener {
    protocol: "SSL",
    client_auth: false,
    other_ca: false,
};
const SASL_SSL: Listener = Listener {
    protocol: "SASL_SSL",
    client_auth: false,
    other_ca: false,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let kafka = secured(SSL, &[]);
    round_trip(&kafka.bootstrap, &kafka.pki.tls("SSL")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    let mutual = Listener {
        client_auth: true,
        ..SSL
    };
    let kafka = secured(mutual, &[]);
    round_trip(&kafka.bootstrap, &kafka.pki.mutual_tls("SSL")).await;
    // Without the client certificate the broker refuses the handshake: `serve` stops at
    // start, naming the key and the broker's answer.
    let said = refused(&kafka.bootstrap, &kafka.pki.tls("SSL"));
    assert_names(
        &said,
        "broker.kafka.properties",
        "the broker refused the tls handshake",
    );
    assert_names(&said, "broker.kafka.properties", "bad certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_sha_256_over_tls() {
    let kafka = secured(SASL_SSL, &[("SCRAM-SHA-256", "s3cret-256")]);
    let tls = kafka.pki.tls("SASL_SSL");
    round_trip(&kafka.bootstrap, &sasl(&tls, "SCRAM-SHA-256", "s3cret-256")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_sha_512_over_mutual_tls() {
    let mutual = Listener {
        client_auth: true,
        ..SASL_SSL
    };
    let kafka = secured(mutual, &[("SCRAM-SHA-512", "s3cret-512")]);
    let tls = kafka.pki.mutual_tls("SASL_SSL");
    // At trace level: the password stays out of hookbridge's log.
    let properties = sasl(&tls, "SCRAM-SHA-512", "s3cret-512");
    let log = round_trip_logged(&kafka.bootstrap, &properties, "trace").await;
    assert!(log.contains("TRACE"), "a trace-level log");
    assert!(!log.contains("s3cret-512"), "the password was logged");

    // The same user with a wrong password: refused at start, with the broker's answer.
    let said = refused(&kafka.bootstrap, &sasl(&tls, "SCRAM-SHA-512", "not-it"));
    assert_names(&said, "broker.kafka.properties", "authentication failed");
    assert!(
        !said.contains("not-it"),
        "the password was printed:\n{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plain_over_tls() {
    let kafka = secured(SASL_SSL, &[]);
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
    // The broker's certificate comes from a CA hookbridge was not told of.
    let untrusted = Listener {
        other_ca: true,
        ..SSL
    };
    let kafka = secured(untrusted, &[]);
    let said = refused(&kafka.bootstrap, &kafka.pki.tls("SSL"));
    assert_names(
        &said,
        "broker.kafka.properties",
        "certificate verify failed",
    );
}
