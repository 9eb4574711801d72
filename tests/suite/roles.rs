//! `hookbridge serve --role ingress|delivery`: the two halves in separate processes, meeting
//! only through the broker, as the Helm chart's split topology runs them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::backend::Backend;
use crate::support::receiver::{Receiver, all_delivered, assert_first_deliveries_in_order};
use crate::support::*;

/// An ingress-only replica and a delivery-only replica on one broker: every event posted to
/// the first is delivered, in per-key order, by the second; the ingress joins no consumer
/// group and the delivery replica binds no ingress listener.
async fn split_roles_deliver_through_the_broker(backend: Backend) {
    const EVENTS: u64 = 400;
    let topic = unique("roles");
    let receiver = Receiver::start().await;
    let subs = format!(
        "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n",
        receiver.url
    );
    let config = events_config(&backend.broker(4), &topic, &subs);
    let (ingress_dir, delivery_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ingress = Hookbridge::start_with(ingress_dir.path(), &config, &["--role", "ingress"]);
    let delivery = Hookbridge::start_with(delivery_dir.path(), &config, &["--role", "delivery"]);
    // Its topic and its parking topic, four partitions each.
    delivery
        .wait_assigned(8, "the delivery replica owns every partition")
        .await;

    let events: Vec<(String, u64)> = (0..EVENTS)
        .map(|seq| (format!("k{}", seq % 20), seq))
        .collect();
    post_events(
        Arc::new(Mutex::new(vec![ingress.ingress.clone()])),
        events,
        8,
        Duration::ZERO,
    )
    .await;
    receiver
        .wait_for("every event delivered", Duration::from_secs(60), |r| {
            all_delivered(r, 0..EVENTS)
        })
        .await;
    assert_first_deliveries_in_order(&receiver.received());

    assert_eq!(
        ingress.assigned(),
        0,
        "the ingress replica consumes nothing"
    );
    assert!(
        delivery.ingress.ends_with("none"),
        "the delivery replica binds no ingress listener: {}",
        delivery.ingress
    );
    let client = http_client();
    for replica in [&ingress, &delivery] {
        let ready = client
            .get(format!("{}/readyz", replica.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "both roles answer readiness");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_split_roles_deliver_through_the_broker() {
    split_roles_deliver_through_the_broker(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_split_roles_deliver_through_the_broker() {
    split_roles_deliver_through_the_broker(Backend::kafka()).await;
}

/// The embedded log belongs to one process: a split role on it is refused at start-up, with
/// the reason.
#[test]
fn the_embedded_broker_refuses_a_split_role() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, base_config(dir.path())).unwrap();
    for role in ["ingress", "delivery"] {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--role", role, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--role {role} on embedded must fail");
        assert!(
            stderr.contains(&format!(
                "--role {role} needs a broker other processes can reach"
            )),
            "the error says why: {stderr}"
        );
    }
}
