//! nats-server killed and restarted under a steady load: the outage shows as 503s and
//! nothing else, and every webhook acknowledged with 202 is in the stream and delivered.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.restart();
    tokio::time::sleep(Duration::from_secs(4)).await;
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
    let unavailable = outcomes.iter().filter(|(_, s)| *s == 503).count();
    let other: Vec<_> = outcomes
        .iter()
        .filter(|(_, s)| ![202, 503].contains(s))
        .collect();
    assert!(
        other.is_empty(),
        "only 202 or 503: {:?}",
        &other[..other.len().min(5)]
    );
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
    receiver
        .wait_for(
            "every accepted event delivered",
            Duration::from_secs(60),
            |r| {
                let delivered: HashSet<u64> =
                    r.iter().filter(|r| r.ok()).map(|r| seq_of(r).1).collect();
                accepted.is_subset(&delivered)
            },
        )
        .await;
    eprintln!(
        "nats-server killed and restarted under load: {} accepted (all stored and delivered), {unavailable} refused with 503",
        accepted.len()
    );
}
