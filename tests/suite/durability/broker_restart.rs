//! A broker killed under a steady load: nats-server killed and restarted (the outage shows
//! as 503s and nothing else), and one node of a three-node Kafka cluster killed with
//! SIGKILL, so that the leaders of its partitions and its group coordinator move to the
//! others, then started again. Every webhook acknowledged with 202 is stored and delivered.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::kafka::KafkaCluster;
use crate::support::nats::{config, stream_messages};
use crate::support::receiver::{Receiver, seq_of};
use crate::support::*;
use hookbridge::envelope::Envelope;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_under_load_loses_nothing_acknowledged() {
    let mut nats = NatsServer::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: steady\n    topics: [payments]\n    url: {}\n",
        receiver.url
    );
    let server = Hookbridge::start(dir.path(), &config(&nats, "payments", &subs));

    let (accepted, unavailable) = under_load(&server, async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        nats.kill();
        tokio::time::sleep(Duration::from_secs(3)).await;
        nats.restart();
        tokio::time::sleep(Duration::from_secs(4)).await;
    })
    .await;
    assert!(unavailable > 0, "the outage was visible as 503s");

    // Everything acknowledged is stored, and delivered.
    let stored: HashSet<u64> = stream_messages(&nats, "payments")
        .await
        .iter()
        .map(|m| {
            let envelope: Envelope = prost::Message::decode(m.payload.clone()).unwrap();
            serde_json::from_slice::<serde_json::Value>(&envelope.body).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let missing: Vec<_> = accepted.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged webhooks are not in the stream",
        missing.len()
    );
    all_delivered(&receiver, &accepted).await;
    eprintln!(
        "nats-server killed and restarted under load: {} accepted (all stored and delivered), {unavailable} refused with 503",
        accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_node_killed_under_load_loses_nothing_acknowledged() {
    let cluster = KafkaCluster::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: steady\n    topics: [payments]\n    url: {}\n",
        receiver.url
    );
    let broker = format!(
        "  kind: kafka\n  kafka: {{ bootstrap_servers: \"{}\", partitions: 4, replication_factor: 3 }}\n",
        cluster.bootstrap
    );
    let server = Hookbridge::start(dir.path(), &events_config(&broker, "payments", &subs));
    let (accepted, unavailable) = under_load(&server, async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.kill(1);
        tokio::time::sleep(Duration::from_secs(6)).await;
        cluster.start_stopped_nodes();
        tokio::time::sleep(Duration::from_secs(3)).await;
    })
    .await;
    all_delivered(&receiver, &accepted).await;
    eprintln!(
        "one of three Kafka nodes killed and restarted under load: {} accepted (all delivered), {unavailable} refused with 503",
        accepted.len()
    );
}

/// Posts a steady load (16 senders, 13 keys) to `server` while `during` runs: the webhooks
/// answered 202 (by seq), and how many were answered 503. Any other answer fails the test.
async fn under_load(
    server: &Hookbridge,
    during: impl Future<Output = ()>,
) -> (HashSet<u64>, usize) {
    let url = server.hook_url("events");
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..16u64 {
        let (client, url, stop) = (http_client(), url.clone(), stop.clone());
        workers.spawn(async move {
            let mut outcomes = Vec::new();
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                let n = w * 1_000_000 + seq;
                seq += 1;
                let body = serde_json::json!({"key": format!("k{}", n % 13), "seq": n});
                let status = match client.post(&url).json(&body).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                outcomes.push((n, status));
            }
            outcomes
        });
    }
    during.await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    while let Some(done) = workers.join_next().await {
        outcomes.extend(done.unwrap());
    }
    let accepted: HashSet<u64> = outcomes
        .iter()
        .filter(|(_, s)| *s == 202)
        .map(|(n, _)| *n)
        .collect();
    let other: Vec<_> = outcomes
        .iter()
        .filter(|(_, s)| ![202, 503].contains(s))
        .collect();
    assert!(
        other.is_empty(),
        "only 202 or 503: {:?}",
        &other[..other.len().min(5)]
    );
    let unavailable = outcomes.iter().filter(|(_, s)| *s == 503).count();
    (accepted, unavailable)
}

/// Waits until every webhook in `accepted` was delivered (answered 2xx).
async fn all_delivered(receiver: &Receiver, accepted: &HashSet<u64>) {
    receiver
        .wait_for(
            "every accepted event delivered",
            Duration::from_secs(90),
            |r| {
                let delivered: HashSet<u64> =
                    r.iter().filter(|r| r.ok()).map(|r| seq_of(r).1).collect();
                accepted.is_subset(&delivered)
            },
        )
        .await;
}
