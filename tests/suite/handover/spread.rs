//! How replicas share a subscription's partitions: every topic's partitions spread evenly
//! (the parking and resend topics never take a replica's share of the live one), and
//! partition `p` of every topic of the subscription held by one replica, so a key's live,
//! parked and resent events are delivered by one process.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::support::backend::Backend;
use crate::support::receiver::Receiver;
use crate::support::*;

const TOKEN: &str = "spread-admin-token-0123456789";
const PARTITIONS: u32 = 4;

/// The (topic, partition) pairs a replica delivers, from its admin API.
async fn held(server: &Hookbridge, sub: &str) -> BTreeSet<(String, u32)> {
    let status = admin_get(&server.admin, &format!("/v1/subscriptions/{sub}"), TOKEN).await;
    status["partitions"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    (
                        row["topic"].as_str().unwrap_or_default().to_string(),
                        row["partition"].as_u64().unwrap_or_default() as u32,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Per topic, the partition numbers held.
fn by_topic(held: &BTreeSet<(String, u32)>) -> BTreeMap<String, BTreeSet<u32>> {
    let mut topics: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for (topic, partition) in held {
        topics.entry(topic.clone()).or_default().insert(*partition);
    }
    topics
}

async fn two_replicas_share_every_topic_evenly_and_by_partition_number(backend: Backend) {
    let topic = unique("spread");
    let receiver = Receiver::start().await;
    let subs = subscription(&topic, &topic, &receiver.url, "");
    let config = with_admin_token(
        &events_config(&backend.broker(PARTITIONS), &topic, &subs),
        TOKEN,
    );
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Hookbridge::start(dir_a.path(), &config);
    a.wait_assigned(
        3 * PARTITIONS as usize,
        "the first replica holds everything",
    )
    .await;
    let b = Hookbridge::start(dir_b.path(), &config);

    // Settled: every partition of the three topics held once, by one of the two.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (held_a, held_b) = loop {
        let (held_a, held_b) = (held(&a, &topic).await, held(&b, &topic).await);
        let settled = held_a.len() + held_b.len() == 3 * PARTITIONS as usize
            && held_a.is_disjoint(&held_b)
            && !held_a.is_empty()
            && !held_b.is_empty();
        if settled {
            // Still so a moment later: not a step of a rebalance.
            tokio::time::sleep(Duration::from_secs(3)).await;
            if (held(&a, &topic).await, held(&b, &topic).await) == (held_a.clone(), held_b.clone())
            {
                break (held_a, held_b);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the partitions settled between the replicas: a={held_a:?} b={held_b:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for (name, held) in [("a", &held_a), ("b", &held_b)] {
        let topics = by_topic(held);
        assert_eq!(
            topics.len(),
            3,
            "replica {name} delivers part of every topic: {held:?}"
        );
        for (topic, partitions) in &topics {
            assert_eq!(
                partitions.len(),
                PARTITIONS as usize / 2,
                "replica {name} holds half of {topic}: {held:?}"
            );
        }
        let numbers: BTreeSet<&BTreeSet<u32>> = topics.values().collect();
        assert_eq!(
            numbers.len(),
            1,
            "replica {name} holds the same partition numbers of every topic: {held:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_two_replicas_share_every_topic_evenly_and_by_partition_number() {
    two_replicas_share_every_topic_evenly_and_by_partition_number(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_two_replicas_share_every_topic_evenly_and_by_partition_number() {
    two_replicas_share_every_topic_evenly_and_by_partition_number(Backend::kafka()).await;
}

/// Three NATS replicas over four partition numbers: each holds some (2, 1, 1), none is
/// left idle with the others at the larger share (2, 2, 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_three_replicas_over_four_partitions_all_deliver() {
    let backend = Backend::nats();
    let topic = unique("three");
    let receiver = Receiver::start().await;
    let subs = subscription(&topic, &topic, &receiver.url, "");
    let config = with_admin_token(
        &events_config(&backend.broker(PARTITIONS), &topic, &subs),
        TOKEN,
    );
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for dir in &dirs {
        replicas.push(Hookbridge::start(dir.path(), &config));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut held_by = Vec::new();
        for replica in &replicas {
            held_by.push(held(replica, &topic).await);
        }
        let all: usize = held_by.iter().map(BTreeSet::len).sum();
        let numbers: Vec<usize> = held_by
            .iter()
            .map(|h| by_topic(h).values().next().map_or(0, BTreeSet::len))
            .collect();
        if all == 3 * PARTITIONS as usize && numbers.iter().all(|n| *n >= 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "every replica holds partition numbers: {numbers:?} ({held_by:?})"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
