//! G1's other half: when the broker cannot acknowledge in time, the sender gets 503 with
//! Retry-After, never 202. A publisher that never answers (or fails) stands in for a stalled
//! broker here; what is under test is the ingress's deadline, over a real socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::http_client;
use async_trait::async_trait;
use hookbridge::Ingress;
use hookbridge::broker::{BrokerError, Publisher, Receipt, Record};

/// Never acknowledges, or fails at once.
struct StuckBroker {
    fail: bool,
}

#[async_trait]
impl Publisher for StuckBroker {
    async fn ensure_topics(&self, _: &[String]) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn publish(&self, _: Record) -> Result<Receipt, BrokerError> {
        if self.fail {
            return Err(BrokerError::Unavailable("connection refused".into()));
        }
        std::future::pending().await
    }
    async fn check(&self) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn close(&self) {}
}

async fn serve(fail: bool) -> SocketAddr {
    let yaml =
        "routes:\n  - { name: r, topic: t, verify: { kind: none }, publish_timeout: 300ms }\n";
    let config = hookbridge::config::load_str("test.yaml", yaml, &|_| None).unwrap();
    let ingress = Ingress::new(&config, Arc::new(StuckBroker { fail }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            ingress
                .router()
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

#[tokio::test]
async fn no_ack_within_the_deadline_is_503_with_retry_after() {
    let addr = serve(false).await;
    let started = Instant::now();
    let response = http_client()
        .post(format!("http://{addr}/hooks/r"))
        .body("x")
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["type"], "urn:hookbridge:problem:publish-timeout");
}

#[tokio::test]
async fn a_broker_error_is_503_with_retry_after() {
    let addr = serve(true).await;
    let response = http_client()
        .post(format!("http://{addr}/hooks/r"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["type"], "urn:hookbridge:problem:broker-unavailable");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("connection refused")
    );
}
