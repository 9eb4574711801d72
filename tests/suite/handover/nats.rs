//! NATS partition leases: replicas share the partitions by lease and the survivor takes a
//! killed replica's within a lease period; a replica that cannot renew its leases fences
//! itself before they expire, so the next owner never overlaps with it; and a previous
//! owner's late write of its parked keys is refused.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::nats::{Proxied, config, publish_foreign};
use crate::support::receiver::{
    Receiver, Reply, all_delivered, assert_first_deliveries_in_order, assert_no_overlap_per_key,
    seq_of,
};
use crate::support::*;
use async_nats::jetstream;

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
        received.iter().filter(|r| !r.abandoned).count() - EVENTS as usize
    );
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
        topic: Some("hookbridge.park.orders".into()),
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

/// A lease found taken by another member at renewal is lost, not handed over: the replica
/// stops delivering the partition at once, its attempt on the wire included, instead of
/// letting that attempt run on while the new holder may already deliver the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_lease_taken_by_another_member_stops_delivery_at_once() {
    let nats = NatsServer::start();
    let receiver = Receiver::start().await;
    receiver.answer(|_, _| Reply {
        status: 200,
        delay: Duration::from_secs(15),
        retry_after: None,
    });
    let subs = format!(
        "  - name: stolen\n    topics: [jobs]\n    url: {}\n    timeout: 30s\n",
        receiver.url
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(
        dir.path(),
        &events_config(&nats_broker(&nats.url(), 1), "jobs", &subs),
    );
    server
        .wait_assigned(3, "the replica holds its partitions")
        .await;
    let response = http_client()
        .post(server.hook_url("events"))
        .json(&serde_json::json!({"key": "k", "seq": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.on_the_wire() == 0 {
        assert!(Instant::now() < deadline, "the event is on the wire");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another member takes every lease of the group (as one would after a partition of
    // the network that this replica did not notice).
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let leases = js.get_key_value("hookbridge_leases").await.unwrap();
    let mut keys = leases.keys().await.unwrap();
    use futures_util::StreamExt;
    let mut taken = 0;
    while let Some(key) = keys.next().await {
        let key = key.unwrap();
        if key.starts_with("l.") {
            leases.put(&key, "another-member".into()).await.unwrap();
            taken += 1;
        }
    }
    assert!(taken >= 1, "the replica's leases were in the bucket");
    let stolen_at = Instant::now();
    while receiver.on_the_wire() > 0 {
        assert!(
            stolen_at.elapsed() < Duration::from_secs(5),
            "the attempt on the wire is still there {:?} after the lease was lost; the log:\n{}",
            stolen_at.elapsed(),
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = &receiver.received()[0];
    assert!(first.abandoned, "the attempt was cut off, not answered");
}

/// A partition being handed over keeps its lease renewed until its worker lets go, and
/// the worker lets its attempts on the wire run for the subscription's `timeout`. If the
/// replica then cannot renew (its connection to NATS stalls), the lease expires and the
/// next owner starts: the worker must have stopped by then, handover or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_partition_handed_over_is_still_fenced_when_its_lease_is_not_renewed() {
    let Proxied {
        nats,
        proxy,
        topic,
        receiver,
        subs,
    } = Proxied::start("handfence", Duration::from_secs(20), 8).await;
    let subs = format!("{subs}    timeout: 30s\n");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Hookbridge::start(
        dir_a.path(),
        &events_config(&nats_broker(&proxy.url(), 2), &topic, &subs),
    );
    a.wait_assigned(6, "the first replica holds every partition")
        .await;
    for seq in 0..8u64 {
        let response = http_client()
            .post(a.hook_url("events"))
            .json(&serde_json::json!({"key": format!("k{seq}"), "seq": seq}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.on_the_wire() < 4 {
        assert!(
            Instant::now() < deadline,
            "events on the wire from both partitions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // B joins: A hands one partition number over, and lets its attempts run.
    let _b = Hookbridge::start(
        dir_b.path(),
        &events_config(&nats_broker(&nats.url(), 2), &topic, &subs),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.log_text().contains("handing a partition over") {
        assert!(Instant::now() < deadline, "A hands a partition over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let on_the_wire = receiver.on_the_wire();
    proxy.stall(true);
    let stalled_at = Instant::now();
    // The lease period is 2 s: by then every attempt of A has been cut off.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let cut_off = receiver
        .received()
        .iter()
        .filter(|r| r.at < stalled_at && r.abandoned)
        .count();
    assert_eq!(
        cut_off,
        on_the_wire,
        "every attempt A had on the wire was cut off before its leases could expire; A's log:\n{}",
        a.log_text()
    );
}
