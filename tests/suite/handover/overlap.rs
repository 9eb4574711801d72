//! The guarantees at the seams, on every backend: a partition handed from one replica to
//! another is never delivered by both at once, a lease that cannot be renewed fences its
//! replica, a key that keeps failing holds only its own events, and a stalled call to the
//! broker does not hold up the deliveries already in hand.
//!
//! NATS runs on a private nats-server; Kafka on the Kafka-protocol broker scripts/test
//! starts (HOOKBRIDGE_TEST_KAFKA).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::backend::Backend;
use common::receiver::{
    Receiver, Reply, all_delivered, any_delivered_of, assert_first_deliveries_in_order,
    assert_no_overlap_per_key, seq_of,
};
use common::*;

/// One partition; key A fails until every other event is delivered. 20,000 events of 50
/// other keys go through the same partition meanwhile, then A recovers and is delivered
/// in order.
async fn a_failing_key_holds_only_its_own_events(backend: Backend) {
    const OTHERS: u64 = 20_000;
    let topic = unique("poison");
    let receiver = Receiver::start().await;
    let healed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failing = healed.clone();
    receiver.answer(move |_, body| {
        let key: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let is_a = key["key"] == "A";
        Reply::status(
            if is_a && !failing.load(std::sync::atomic::Ordering::SeqCst) {
                500
            } else {
                200
            },
        )
    });
    let subs = format!(
        "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n    max_in_flight: 32\n{RETRY_WITHOUT_END}",
        receiver.url
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(
        dir.path(),
        &events_config(&backend.broker(1), &topic, &subs),
    );
    let ingresses = Arc::new(Mutex::new(vec![server.ingress.clone()]));

    // A's events: the first one before any other, then one every 2,000.
    let mut events = vec![("A".to_string(), 0)];
    for seq in 1..=OTHERS {
        events.push((format!("k{}", seq % 50), seq));
        if seq % 2_000 == 0 {
            events.push(("A".to_string(), OTHERS + seq / 2_000));
        }
    }
    let a_seqs: Vec<u64> = events
        .iter()
        .filter(|(k, _)| k == "A")
        .map(|(_, s)| *s)
        .collect();
    // A's first event goes first, alone, so every other event is behind it.
    post_events(ingresses.clone(), events[..1].to_vec(), 1, Duration::ZERO).await;
    post_events(ingresses.clone(), events[1..].to_vec(), 16, Duration::ZERO).await;

    let started = Instant::now();
    let mut peak_rss = 0;
    let deadline = started + Duration::from_secs(240);
    while !all_delivered(&receiver.received(), 1..=OTHERS) {
        peak_rss = peak_rss.max(rss_mib(server.pid()));
        let delivered = receiver.received().iter().filter(|r| r.ok()).count();
        assert!(
            Instant::now() < deadline,
            "every other key is delivered while A fails: {delivered} of {OTHERS}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !any_delivered_of(&receiver.received(), "A"),
        "A was failing all along"
    );
    eprintln!(
        "{OTHERS} events of other keys delivered past a failing key in {:?}, peak RSS {peak_rss} MiB",
        started.elapsed()
    );
    healed.store(true, std::sync::atomic::Ordering::SeqCst);
    receiver
        .wait_for(
            "A's events, once A recovers",
            Duration::from_secs(60),
            |r| all_delivered(r, a_seqs.iter().copied()),
        )
        .await;
    let received = receiver.received();
    assert_first_deliveries_in_order(&received);
    let a_order: Vec<u64> = received
        .iter()
        .filter(|r| r.ok() && seq_of(r).0 == "A")
        .map(|r| seq_of(r).1)
        .collect();
    assert_eq!(a_order, a_seqs, "A delivered once each, in publish order");
    assert!(
        peak_rss < 200,
        "memory stays bounded behind a failing key: {peak_rss} MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_failing_key_holds_only_its_own_events() {
    a_failing_key_holds_only_its_own_events(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_failing_key_holds_only_its_own_events() {
    a_failing_key_holds_only_its_own_events(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_failing_key_holds_only_its_own_events() {
    a_failing_key_holds_only_its_own_events(Backend::kafka()).await;
}

/// One replica delivers under load to a receiver that takes 200 ms, with a backlog building
/// up (posted faster than it is delivered); a second replica joins; the first is stopped with
/// SIGTERM and a third joins; then, with a second burst being delivered, the second is
/// killed with -9. The receiver sees no two requests of one key at the same time, every key's first
/// deliveries in order, and every event.
async fn replicas_come_and_go_without_overlap(backend: Backend) {
    const EVENTS: u64 = 3_000;
    const BURST: u64 = 1_500;
    const EVENTS_ALL: u64 = EVENTS + BURST;
    let topic = unique("handover");
    let receiver = Receiver::start().await;
    receiver.answer(|_, _| Reply {
        status: 200,
        delay: Duration::from_millis(200),
        retry_after: None,
    });
    let subs = format!(
        "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n    max_in_flight: 32\n",
        receiver.url
    );
    backend.create_topics(&topic, 4);
    let config = events_config(&backend.broker(4), &topic, &subs);
    let (dir_a, dir_b, dir_c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut a = Hookbridge::start(dir_a.path(), &config);
    a.wait_assigned(
        8,
        "the first replica owns every partition (and its parking partitions)",
    )
    .await;
    let ingresses = Arc::new(Mutex::new(vec![a.ingress.clone()]));
    let events = |seqs: std::ops::Range<u64>| -> Vec<(String, u64)> {
        seqs.map(|s| (format!("k{}", s % 30), s)).collect()
    };
    // Posted faster than the receiver answers (30 keys, 200 ms each), so every handover
    // finds a backlog: the replicas come and go while it is delivered.
    let load = tokio::spawn(post_events(
        ingresses.clone(),
        events(0..EVENTS),
        8,
        Duration::from_millis(10),
    ));

    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut b = Hookbridge::start(dir_b.path(), &config);
    ingresses.lock().unwrap().push(b.ingress.clone());
    b.wait_assigned(1, "the second replica takes partitions")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    ingresses.lock().unwrap().retain(|i| *i != a.ingress);
    let a_stopped = Instant::now();
    assert!(a.terminate().success(), "SIGTERM: clean exit");
    let c = Hookbridge::start(dir_c.path(), &config);
    ingresses.lock().unwrap().push(c.ingress.clone());
    // Its share, so that the group has settled before the next replica dies: librdkafka's
    // mock cluster refuses every commit while a group rebalances (for the session timeout
    // less a second; Kafka itself accepts them until the new generation is chosen), and a
    // replica killed in that window takes what it could not record with it.
    c.wait_assigned(4, "the third replica takes its share")
        .await;
    load.await.unwrap();
    // The first backlog may be delivered by now: a second burst keeps the lanes busy. It is
    // posted to the third replica only: a post cut off by the kill would be retried after
    // later ones of its key, and publish order would no longer be seq order.
    ingresses.lock().unwrap().retain(|i| *i != b.ingress);
    let burst = tokio::spawn(post_events(
        ingresses.clone(),
        events(EVENTS..EVENTS + BURST),
        8,
        Duration::ZERO,
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b_killed = Instant::now();
    b.kill();
    burst.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !all_delivered(&receiver.received(), 0..EVENTS_ALL) {
        if Instant::now() > deadline {
            let ok: std::collections::HashSet<u64> = receiver
                .received()
                .iter()
                .filter(|r| r.ok())
                .map(|r| seq_of(r).1)
                .collect();
            let missing: Vec<u64> = (0..EVENTS_ALL).filter(|s| !ok.contains(s)).collect();
            panic!(
                "{} events never delivered, e.g. {:?}; the last replica's log:\n{}",
                missing.len(),
                &missing[..missing.len().min(10)],
                c.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = receiver.received();
    assert_no_overlap_per_key(&received);
    assert_first_deliveries_in_order(&received);
    let redelivered = received.len() as u64 - EVENTS_ALL;
    eprintln!(
        "{EVENTS_ALL} events through two joins, a SIGTERM and a kill -9: {} requests, {redelivered} redelivered",
        received.len()
    );
    // A handover repeats at most what was on the wire and what finished after the last
    // commit (200 ms), not the partition's whole backlog: three handovers, 32 in flight.
    if redelivered > 4 * 32 {
        // When the repeats came, against the SIGTERM of the first replica and the kill of
        // the second: which handover let them through.
        let mut seen = std::collections::HashSet::new();
        let repeats: Vec<String> = received
            .iter()
            .filter(|r| !seen.insert(seq_of(r).1))
            .map(|r| {
                let since = |t: Instant| r.at.saturating_duration_since(t).as_secs_f64();
                format!(
                    "seq {} at +{:.1}s after the SIGTERM, +{:.1}s after the kill",
                    seq_of(r).1,
                    since(a_stopped),
                    since(b_killed)
                )
            })
            .collect();
        panic!(
            "{redelivered} events delivered again through three handovers:\n{}\nthe last replica's log:\n{}",
            repeats.join("\n"),
            c.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_replicas_come_and_go_without_overlap() {
    replicas_come_and_go_without_overlap(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_replicas_come_and_go_without_overlap() {
    replicas_come_and_go_without_overlap(Backend::kafka_mock()).await;
}

/// A key or event type with a line break in it is refused with 422 problem+json on every
/// backend alike (NATS headers cannot carry it), nothing is published, and the ingress
/// goes on serving.
async fn line_breaks_in_extracted_values_are_refused(backend: Backend) {
    let topic = unique("crlf");
    let receiver = Receiver::start().await;
    let subs = format!(
        "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n",
        receiver.url
    );
    backend.create_topics(&topic, 1);
    let dir = tempfile::tempdir().unwrap();
    let config = events_config(&backend.broker(1), &topic, &subs).replace(
        "event_type: { header: X-Type, default: test }",
        "event_type: { json: /type }",
    );
    let server = Hookbridge::start(dir.path(), &config);
    let client = http_client();
    for (what, body) in [
        (
            "key with CR LF",
            serde_json::json!({"key": "a\r\nInjected: 1", "type": "t", "seq": 1}),
        ),
        (
            "key with LF",
            serde_json::json!({"key": "a\nb", "type": "t", "seq": 2}),
        ),
        (
            "type with CR",
            serde_json::json!({"key": "k", "type": "t\rx", "seq": 3}),
        ),
        (
            "type with NUL",
            serde_json::json!({"key": "k", "type": "t\u{0}", "seq": 4}),
        ),
    ] {
        let response = client
            .post(server.hook_url("events"))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: the connection was dropped: {e}"));
        assert_eq!(response.status(), 422, "{what}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            problem["type"], "urn:hookbridge:problem:extractor-control-character",
            "{what}: {problem}"
        );
    }
    let fine = serde_json::json!({"key": "k", "type": "t", "seq": 5});
    let response = client
        .post(server.hook_url("events"))
        .json(&fine)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    receiver
        .wait_for("the one good event", Duration::from_secs(30), |r| {
            !r.is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seqs: Vec<u64> = receiver.received().iter().map(|r| seq_of(r).1).collect();
    assert_eq!(seqs, vec![5], "nothing refused was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_line_breaks_in_extracted_values_are_refused() {
    line_breaks_in_extracted_values_are_refused(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_line_breaks_in_extracted_values_are_refused() {
    line_breaks_in_extracted_values_are_refused(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_line_breaks_in_extracted_values_are_refused() {
    line_breaks_in_extracted_values_are_refused(Backend::kafka()).await;
}

/// A replica whose connection to NATS stalls cannot renew its leases: it stops delivering
/// before they expire, so the replica that takes its partitions never overlaps with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_replica_that_cannot_renew_its_leases_fences_itself() {
    const KEYS: u64 = 40;
    const EVENTS: u64 = 1_200;
    let Proxied {
        nats,
        proxy,
        topic,
        receiver,
        subs,
    } = Proxied::start("fence", Duration::from_millis(100), 16).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Replica A reaches NATS through the proxy.
    let mut a = Hookbridge::start(
        dir_a.path(),
        &events_config(&nats_broker(&proxy.url(), 4), &topic, &subs),
    );
    a.wait_assigned(
        8,
        "the first replica owns every partition (and its parking partitions)",
    )
    .await;

    // A backlog of foreign messages, published straight to the partitions' subjects.
    publish_foreign(&nats, &topic, EVENTS, KEYS, 4).await;
    receiver
        .wait_for("A delivering", Duration::from_secs(30), |r| r.len() >= 100)
        .await;

    // A's NATS connection stalls; B joins and takes the partitions once A's leases expire.
    proxy.stall(true);
    let stalled_at = Instant::now();
    let b = Hookbridge::start(
        dir_b.path(),
        &events_config(&nats_broker(&nats.url(), 4), &topic, &subs),
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    while !all_delivered(&receiver.received(), 0..EVENTS) {
        assert!(
            Instant::now() < deadline,
            "every event delivered after the takeover; B's log:\n{}",
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = receiver.received();
    assert_no_overlap_per_key(&received);
    assert_first_deliveries_in_order(&received);
    let fenced = a.log_text().matches("stopped delivering it").count();
    assert!(
        fenced >= 1,
        "A says it fenced itself; its log:\n{}",
        a.log_text()
    );
    eprintln!(
        "A fenced {fenced} partitions; every event delivered {:?} after the stall, {} requests",
        stalled_at.elapsed(),
        received.len()
    );
    a.kill();
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

/// Publishes `events` foreign messages (`{"key", "seq"}` bodies over `keys` keys, the key in
/// `Hb-Key`) straight to the subjects of `topic`'s `partitions`, once hookbridge has made its
/// stream, and waits until JetStream has stored them all.
async fn publish_foreign(nats: &NatsServer, topic: &str, events: u64, keys: u64, partitions: u32) {
    use hookbridge::broker::nats::stream_name;
    use hookbridge::broker::partitioner::partition_for_key;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while js.get_stream(stream_name(topic)).await.is_err() {
        assert!(Instant::now() < deadline, "the stream exists");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut acks = Vec::new();
    for seq in 0..events {
        let key = format!("k{}", seq % keys);
        let partition = partition_for_key(key.as_bytes(), partitions);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Hb-Key", key.as_str());
        let body = serde_json::json!({"key": key, "seq": seq}).to_string();
        acks.push(
            js.publish_with_headers(format!("{topic}.{partition}"), headers, body.into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// A private nats-server reached through a proxy that can stall, a receiver answering 200
/// after a delay, and a subscription (named as its topic) delivering to it.
struct Proxied {
    nats: NatsServer,
    proxy: StallableProxy,
    topic: String,
    receiver: Receiver,
    subs: String,
}

impl Proxied {
    async fn start(prefix: &str, answer_after: Duration, max_in_flight: u32) -> Proxied {
        let nats = NatsServer::start();
        let proxy = StallableProxy::start(nats.port).await;
        let topic = unique(prefix);
        let receiver = Receiver::start().await;
        receiver.answer(move |_, _| Reply {
            status: 200,
            delay: answer_after,
            retry_after: None,
        });
        let subs = format!(
            "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n    max_in_flight: {max_in_flight}\n",
            receiver.url
        );
        Proxied {
            nats,
            proxy,
            topic,
            receiver,
            subs,
        }
    }
}
