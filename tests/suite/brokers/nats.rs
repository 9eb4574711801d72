//! The NATS JetStream backend against a real nats-server (a private one per test):
//! envelopes on partitioned subjects, stored once however often a sender retries; a message
//! another service published becomes a webhook; two subscriptions' dead letters of one
//! envelope are kept apart; steady load is delivered without stalls; and a stalled call to
//! the server does not hold up the deliveries already in hand.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::nats::{Proxied, config, publish_foreign, stream_created, stream_messages};
use crate::support::receiver::{
    Receiver, Reply, all_delivered, assert_first_deliveries_in_order, assert_no_overlap_per_key,
    seq_of,
};
use crate::support::*;
use hookbridge::broker::nats::stream_name;
use hookbridge::broker::partitioner::partition_for_key;
use hookbridge::envelope::Envelope;

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

/// A partition worker's own calls to the broker (commits, lag reads) do not hold up its
/// lanes: while the connection to NATS is stalled (shorter than the lease), the records
/// already read keep being delivered at the receiver's pace, though every lag read on the
/// way waits for its timeout. Afterwards everything is delivered, in order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_stalled_broker_call_does_not_hold_up_deliveries_in_hand() {
    const KEYS: u64 = 20;
    const EVENTS: u64 = 300;
    const STALL: Duration = Duration::from_secs(8);
    // About 20 deliveries a second: far fewer than the records read ahead before the stall.
    let Proxied {
        nats,
        proxy,
        topic,
        receiver,
        subs,
    } = Proxied::start("stall", Duration::from_millis(200), 4).await;
    let dir = tempfile::tempdir().unwrap();
    // A lease well beyond the stall: the replica keeps its partition throughout.
    let broker = format!(
        "  kind: nats\n  nats: {{ url: \"{}\", partitions: 1, lease: 60s }}\n",
        proxy.url()
    );
    let server = Hookbridge::start(dir.path(), &events_config(&broker, &topic, &subs));
    server
        .wait_assigned(2, "the partition and its parking partition")
        .await;

    publish_foreign(&nats, &topic, EVENTS, KEYS, 1).await;
    receiver
        .wait_for("deliveries under way", Duration::from_secs(30), |r| {
            r.len() >= 20
        })
        .await;

    proxy.stall(true);
    let stalled_at = Instant::now();
    tokio::time::sleep(STALL).await;
    let during: Vec<Instant> = receiver
        .received()
        .iter()
        .filter(|r| !r.abandoned)
        .map(|r| r.at)
        .filter(|at| *at >= stalled_at)
        .collect();
    proxy.stall(false);

    // The longest wait between two deliveries while the connection was stalled, the ends
    // of the stall included.
    let mut marks = vec![stalled_at];
    marks.extend(&during);
    marks.push(stalled_at + STALL);
    let longest = marks
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap();
    assert!(
        during.len() >= 40 && longest < Duration::from_millis(2_500),
        "deliveries went on through the stall: {} delivered in {STALL:?}, longest pause {longest:?}",
        during.len()
    );

    receiver
        .wait_for("every event delivered", Duration::from_secs(60), |r| {
            all_delivered(r, 0..EVENTS)
        })
        .await;
    let received = receiver.received();
    assert_no_overlap_per_key(&received);
    assert_first_deliveries_in_order(&received);
    eprintln!(
        "{} delivered during the {STALL:?} stall, longest pause {longest:?}",
        during.len()
    );
}

/// `broker.nats.lease` changed between two runs: the partitions' consumers, which outlive
/// the process, take the new lease's `ack_wait` (half of it). Left on the old one, a longer
/// lease would see held messages redelivered under their owner before it renews.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_lease_reaches_the_existing_consumers() {
    use futures_util::StreamExt;
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    let subs = format!(
        "  - name: leased\n    topics: [jobs]\n    url: {}\n",
        receiver.url
    );
    let dir = tempfile::tempdir().unwrap();
    let with_lease = |lease: &str| {
        events_config(
            &format!(
                "  kind: nats\n  nats: {{ url: \"{}\", partitions: 2, lease: {lease} }}\n",
                nats.url()
            ),
            "jobs",
            &subs,
        )
    };
    let ack_waits = || async {
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let stream = js.get_stream("jobs").await.unwrap();
        let names: Vec<String> = stream
            .consumer_names()
            .map(|name| name.unwrap())
            .collect()
            .await;
        let mut waits = Vec::new();
        for name in names {
            let info = stream.consumer_info(&name).await.unwrap();
            waits.push(info.config.ack_wait);
        }
        waits
    };
    let mut first = Hookbridge::start(dir.path(), &with_lease("2s"));
    first.wait_assigned(6, "the partitions are held").await;
    assert_eq!(ack_waits().await, vec![Duration::from_secs(1); 2]);
    assert!(first.terminate().success());

    let second = Hookbridge::start(dir.path(), &with_lease("6s"));
    second
        .wait_assigned(6, "the partitions are held again")
        .await;
    assert_eq!(
        ack_waits().await,
        vec![Duration::from_secs(3); 2],
        "the consumers wait half of the new lease"
    );
}

/// A replica started while NATS cannot be reached (the server restarting, a network blip)
/// waits for it and starts once it answers, instead of exiting at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_nats_is_unreachable_starts_once_it_answers() {
    let nats = NatsServer::start();
    let proxy = crate::support::nats::StallableProxy::start(nats.port).await;
    proxy.stall(true);
    let topic = unique("late");
    let receiver = Receiver::start().await;
    let subs = subscription(&topic, &topic, &receiver.url, "");
    let config = events_config(&nats_broker(&proxy.url(), 1), &topic, &subs);
    let dir = tempfile::tempdir().unwrap();
    let unstalled = tokio::spawn(async move {
        // Longer than a JetStream request's timeout.
        tokio::time::sleep(Duration::from_secs(15)).await;
        proxy.stall(false);
        proxy
    });
    let server = tokio::task::block_in_place(|| Hookbridge::start(dir.path(), &config));
    let _proxy = unstalled.await.unwrap();
    crate::support::post_accepted(&server, 3, |_| "K".into()).await;
    receiver
        .wait_for("the three events", Duration::from_secs(30), |r| {
            all_delivered(r, 0..3)
        })
        .await;
}
