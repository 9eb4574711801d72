//! The NATS JetStream backend against a real nats-server (a private one per test, so it can
//! be restarted): envelopes on partitioned subjects, server-side deduplication, foreign
//! messages, leases shared by replicas, and a server restart under load.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::receiver::{Receiver, Reply, assert_first_deliveries_in_order, seq_of};
use common::*;
use futures_util::StreamExt;
use hookbridge::broker::nats::{consumer_name, stream_name};
use hookbridge::broker::partitioner::partition_for_key;
use hookbridge::envelope::Envelope;

fn config(nats: &NatsServer, topic: &str, subs: &str) -> String {
    events_config(&nats_broker(&nats.url(), 4), topic, subs)
}

/// A JetStream client, once hookbridge has created the topic's stream.
async fn stream_created(nats: &NatsServer, topic: &str) -> jetstream::Context {
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while js.get_stream(stream_name(topic)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "hookbridge created the stream of {topic}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    js
}

/// Every message of a topic's stream, read by a plain client.
async fn stream_messages(nats: &NatsServer, topic: &str) -> Vec<jetstream::Message> {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let mut stream = js.get_stream(stream_name(topic)).await.unwrap();
    let count = stream.info().await.unwrap().state.messages as usize;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while out.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        out.push(message);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_land_on_partition_subjects_and_retries_are_stored_once() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Hookbridge::start(dir.path(), &config(&nats, "orders", "  []\n"));
    let client = http_client();
    let mut ids = HashSet::new();
    for i in 0..30 {
        let body = serde_json::json!({"key": format!("customer-{}", i % 7), "n": i});
        // Every third request is sent twice, as a sender's retry would be.
        for _ in 0..(1 + usize::from(i % 3 == 0)) {
            let response = client
                .post(server.hook_url("events"))
                .header("idempotency-key", format!("delivery-{i}"))
                .header("x-type", "order.paid")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            ids.insert(
                response.json::<serde_json::Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    assert!(server.terminate().success());

    let messages = stream_messages(&nats, "orders").await;
    assert_eq!(
        messages.len(),
        30,
        "retried deliveries were deduplicated by Nats-Msg-Id"
    );
    for message in &messages {
        let envelope: Envelope = prost::Message::decode(message.payload.clone()).unwrap();
        assert!(ids.contains(&envelope.id));
        let headers = message.headers.as_ref().unwrap();
        assert_eq!(headers.get("Nats-Msg-Id").unwrap().as_str(), envelope.id);
        assert_eq!(headers.get("hb-type").unwrap().as_str(), "order.paid");
        assert_eq!(headers.get("Hb-Key").unwrap().as_str(), envelope.key);
        let partition = partition_for_key(envelope.key.as_bytes(), 4);
        assert_eq!(
            message.subject.as_str(),
            format!("orders.{partition}"),
            "subject partition is murmur2 of the key"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_message_becomes_a_webhook() {
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: foreign\n    topics: [inventory]\n    url: {}\n",
        receiver.url
    );
    let _server = Hookbridge::start(dir.path(), &config(&nats, "unused", &subs));

    // hookbridge creates the stream; any service publishes to <topic>.<partition>.
    let js = stream_created(&nats, "inventory").await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("content-type", "application/json");
    headers.insert("x-warehouse", "north");
    js.publish_with_headers("inventory.2", headers, r#"{"sku":"A-1","qty":3}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();

    receiver
        .wait_for("the foreign message", Duration::from_secs(30), |r| {
            !r.is_empty()
        })
        .await;
    let got = &receiver.received()[0];
    assert_eq!(got.json(), serde_json::json!({"sku": "A-1", "qty": 3}));
    assert_eq!(got.header("content-type"), "application/json");
    assert!(!got.header("webhook-id").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_partitions_by_lease_and_survive_kill_9() {
    const EVENTS: u64 = 600;
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    receiver.answer(|_, _| Reply {
        status: 200,
        delay: Duration::from_millis(10),
        retry_after: None,
    });
    let subs = format!(
        "  - name: shared\n    topics: [jobs]\n    url: {}\n    max_in_flight: 8\n",
        receiver.url
    );
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Hookbridge::start(dir_a.path(), &config(&nats, "jobs", &subs));
    let b = Hookbridge::start(dir_b.path(), &config(&nats, "jobs", &subs));
    let taken = |server: &Hookbridge| server.log_text().matches("partition lease taken").count();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(taken(&a) >= 1 && taken(&b) >= 1) {
        assert!(
            Instant::now() < deadline,
            "both replicas hold partitions: a={} b={}",
            taken(&a),
            taken(&b)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let client = http_client();
    for seq in 0..EVENTS {
        let body = serde_json::json!({"key": format!("k{}", seq % 24), "seq": seq});
        let target = if seq % 2 == 0 { &a } else { &b };
        assert_eq!(
            client
                .post(target.hook_url("events"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .status(),
            202
        );
    }
    receiver
        .wait_for("a fifth delivered", Duration::from_secs(60), |r| {
            r.len() >= EVENTS as usize / 5
        })
        .await;
    let b_before = taken(&b);
    a.kill();
    let killed = Instant::now();
    // The dead replica's leases expire within one lease period (2s); the survivor's next
    // renewal tick takes them.
    while taken(&b) == b_before {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the survivor took over the dead replica's partitions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_secs(6),
        "partitions moved within the lease period and a tick: {takeover:?}"
    );
    receiver
        .wait_for(
            "every event after the takeover",
            Duration::from_secs(120),
            |r| {
                r.iter()
                    .filter(|r| r.ok())
                    .map(seq_of)
                    .collect::<HashSet<_>>()
                    .len()
                    >= EVENTS as usize
            },
        )
        .await;
    let moved_in = killed.elapsed();
    let received = receiver.received();
    assert_first_deliveries_in_order(&received);
    eprintln!(
        "kill -9 of one replica: partitions moved in {takeover:?}, all {EVENTS} delivered {moved_in:?} after the kill, {} redelivered",
        received.len() - EVENTS as usize
    );
}

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

/// A commit acks the server: more messages than one partition may have unacked
/// (`max_ack_pending`, 2,048) all get delivered, the consumer ends with nothing pending and
/// its ack floor on the last message, and a restarted hookbridge redelivers none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_ack_the_server_and_a_restart_redelivers_nothing() {
    const MESSAGES: u64 = 3_000;
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: acks\n    topics: [stock]\n    url: {}\n",
        receiver.url
    );
    let config = config(&nats, "unused", &subs);
    let mut server = Hookbridge::start(dir.path(), &config);

    let js = stream_created(&nats, "stock").await;
    let mut acks = Vec::new();
    for n in 0..MESSAGES {
        acks.push(
            js.publish("stock.1", format!(r#"{{"n":{n}}}"#).into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    receiver
        .wait_for("every message", Duration::from_secs(60), |r| {
            r.len() >= MESSAGES as usize
        })
        .await;

    // The consumer hookbridge reads partition 1 with.
    let name = consumer_name("hookbridge.acks", "stock", 1);
    let stream = js.get_stream(stream_name("stock")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = stream.consumer_info(&name).await.unwrap();
        if info.ack_floor.stream_sequence == MESSAGES && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acked up to the last message: floor {}, {} pending",
            info.ack_floor.stream_sequence,
            info.num_ack_pending
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert!(server.terminate().success());
    let _restarted = Hookbridge::start(dir.path(), &config);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        receiver.count(),
        MESSAGES as usize,
        "nothing is redelivered after the restart"
    );
}

/// Two subscriptions that dead-letter the same envelope into one topic store two dead
/// letters: the server's de-duplication is keyed per subscription, not per envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscriptions_dead_lettering_one_envelope_store_two_dead_letters() {
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    // 400 is permanent: each subscription dead-letters at once.
    receiver.answer(|_, _| Reply::status(400));
    let subs = format!(
        "  - name: first\n    topics: [orders]\n    url: {url}\n    dead_letter_topic: shared.dlq\n  - name: second\n    topics: [orders]\n    url: {url}\n    dead_letter_topic: shared.dlq\n",
        url = receiver.url
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(dir.path(), &config(&nats, "orders", &subs));
    let response = http_client()
        .post(server.hook_url("events"))
        .json(&serde_json::json!({"key": "k", "seq": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    receiver
        .wait_for(
            "both subscriptions' attempts",
            Duration::from_secs(30),
            |r| r.len() >= 2,
        )
        .await;
    let js = stream_created(&nats, "shared.dlq").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = js.get_stream(stream_name("shared.dlq")).await.unwrap();
        let stored = stream.info().await.unwrap().state.messages;
        if stored == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both dead letters are stored: {stored} of 2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let subscriptions: HashSet<String> = stream_messages(&nats, "shared.dlq")
        .await
        .iter()
        .map(|m| {
            m.headers
                .as_ref()
                .and_then(|h| h.get("hb-dlq-subscription"))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        subscriptions,
        HashSet::from(["first".to_string(), "second".to_string()])
    );
}

/// Ordinary steady load: ~300 webhooks a second for 30 s over 8 partitions and 500 keys.
/// No event waits more than a second between its 202 and its delivery (the goal is
/// milliseconds; the bound leaves room for a busy machine). A partition's reader used to
/// leave some events waiting five seconds, for the client's give-up timer on a pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_is_delivered_without_stalls() {
    const RATE: u64 = 300;
    const SECONDS: u64 = 30;
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    let subs = format!(
        "  - name: steady\n    topics: [steady]\n    url: {}\n",
        receiver.url
    );
    let broker = nats_broker(&nats.url(), 8);
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(dir.path(), &events_config(&broker, "steady", &subs));
    // Every partition owned and every connection open before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.log_text().matches("partition assigned").count() < 8 {
        assert!(Instant::now() < deadline, "all partitions owned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = http_client();
    for seq in 0..50u64 {
        let body = serde_json::json!({"key": format!("warm{seq}"), "seq": 1_000_000 + seq});
        client
            .post(server.hook_url("events"))
            .json(&body)
            .send()
            .await
            .unwrap();
    }
    receiver
        .wait_for("the warm-up", Duration::from_secs(30), |r| r.len() >= 50)
        .await;

    // Open loop: each request leaves on its schedule, whatever the others are doing.
    let accepted: Arc<std::sync::Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let start = tokio::time::Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for seq in 0..RATE * SECONDS {
        tokio::time::sleep_until(start + Duration::from_micros(seq * 1_000_000 / RATE)).await;
        let (client, url, accepted) = (client.clone(), server.hook_url("events"), accepted.clone());
        sends.spawn(async move {
            let body = serde_json::json!({"key": format!("k{}", seq % 500), "seq": seq});
            let response = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 202);
            accepted.lock().unwrap().push((seq, Instant::now()));
        });
    }
    while sends.join_next().await.is_some() {}
    receiver
        .wait_for("every event", Duration::from_secs(60), |r| {
            r.iter().filter(|r| seq_of(r).1 < RATE * SECONDS).count() >= (RATE * SECONDS) as usize
        })
        .await;
    let delivered: std::collections::HashMap<u64, Instant> = receiver
        .received()
        .iter()
        .map(|r| (seq_of(r).1, r.at))
        .collect();
    let mut waits: Vec<Duration> = accepted
        .lock()
        .unwrap()
        .iter()
        .map(|(seq, at)| delivered[seq].saturating_duration_since(*at))
        .collect();
    waits.sort();
    let p = |q: f64| waits[((waits.len() as f64 * q) as usize).min(waits.len() - 1)];
    eprintln!(
        "{} events at {RATE}/s: 202 to delivery p50 {:?}, p99 {:?}, max {:?}",
        waits.len(),
        p(0.5),
        p(0.99),
        waits.last().unwrap()
    );
    assert!(
        *waits.last().unwrap() < Duration::from_secs(1),
        "no event waits a second: p99 {:?}, max {:?}",
        p(0.99),
        waits.last().unwrap()
    );
}

/// A partition's parked keys (G8) are written fenced: once a new owner has claimed them, the
/// previous owner's writes are refused (a replica frozen past its lease cannot overwrite
/// the new owner's keys), and the new owner's go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_owners_late_write_of_parked_keys_is_refused() {
    use hookbridge::broker::completion::ParkedKey;
    use hookbridge::broker::nats::parked::ParkedStore;
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let key = |key: u64, last: u64| ParkedKey {
        key,
        partition: 0,
        last,
    };
    // Two replicas of one group, each with its own view of the bucket.
    let old_owner = ParkedStore::open(&js, "hookbridge.orders").await.unwrap();
    let new_owner = ParkedStore::open(&js, "hookbridge.orders").await.unwrap();

    assert!(old_owner.claim("orders", 3).await.unwrap().is_empty());
    old_owner.write("orders", 3, &[key(1, 10)]).await.unwrap();
    // The partition moves: the new owner claims it and sees the old owner's keys.
    assert_eq!(
        new_owner.claim("orders", 3).await.unwrap(),
        vec![key(1, 10)]
    );
    // The old owner wakes up late and writes what it had: refused, then and after.
    assert!(old_owner.write("orders", 3, &[]).await.is_err());
    assert!(old_owner.write("orders", 3, &[key(2, 11)]).await.is_err());
    // The new owner's writes go through, and they are what is stored.
    new_owner
        .write("orders", 3, &[key(1, 10), key(3, 12)])
        .await
        .unwrap();
    assert_eq!(
        old_owner.keys("orders", 3).await.unwrap(),
        vec![key(1, 10), key(3, 12)]
    );
    // Other partitions are not affected by the claim.
    old_owner.write("orders", 4, &[key(5, 1)]).await.unwrap();
    assert_eq!(new_owner.keys("orders", 4).await.unwrap(), vec![key(5, 1)]);
}
