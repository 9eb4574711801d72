//! The embedded broker through the broker traits, as the delivery engine and the ingress
//! use them: ordered partition streams, commits and resumption, durability across reopen,
//! retention, and the data-dir lock.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hookbridge::broker::embedded::EmbeddedBroker;
use hookbridge::broker::partitioner::partition_for_key;
use hookbridge::broker::{
    BrokerError, Completion, PartitionEvent, PartitionStream, Progress, Publisher, Record,
    StartFrom, Subscriber,
};
use hookbridge::config::{EmbeddedConfig, RetentionConfig};

fn open(dir: &Path) -> Arc<EmbeddedBroker> {
    EmbeddedBroker::open(&EmbeddedConfig {
        dir: dir.to_path_buf(),
        partitions: 3,
        retention: RetentionConfig {
            max_age: None,
            max_bytes: None,
        },
    })
    .expect("open")
}

fn record(topic: &str, key: &str, value: String) -> Record {
    Record {
        topic: topic.into(),
        key: Some(Bytes::from(key.to_string())),
        headers: vec![],
        value: Bytes::from(value),
    }
}

async fn publish_many(broker: &Arc<EmbeddedBroker>, topic: &str, range: std::ops::Range<usize>) {
    // Concurrent publishes share group commits; each still gets its own receipt.
    let tasks: Vec<_> = range
        .map(|i| {
            let broker = broker.clone();
            let topic = topic.to_string();
            tokio::spawn(async move {
                broker
                    .publish(record(&topic, &format!("k{}", i % 7), format!("v{i}")))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("published");
    }
}

async fn streams(
    broker: &Arc<EmbeddedBroker>,
    group: &str,
    topic: &str,
    start: StartFrom,
) -> (hookbridge::broker::Subscription, Vec<PartitionStream>) {
    let mut subscription = broker
        .subscribe(group, &[topic.to_string()], start)
        .await
        .unwrap();
    let mut streams = Vec::new();
    while streams.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), subscription.next_event())
            .await
            .unwrap()
        {
            Some(PartitionEvent::Assigned(stream)) => streams.push(stream),
            None => panic!("expected an assignment, the subscription ended"),
        }
    }
    streams.sort_by_key(|s| s.partition);
    (subscription, streams)
}

/// Pulls until `count` records came or nothing arrives for a while.
async fn drain(
    stream: &mut PartitionStream,
    count: usize,
) -> Vec<hookbridge::broker::ConsumedRecord> {
    let mut out = Vec::new();
    while out.len() < count {
        match tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
            Ok(Some(record)) => out.push(record),
            _ => break,
        }
    }
    out
}

#[tokio::test]
async fn partitions_stream_in_order_and_resume_from_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    publish_many(&broker, "orders", 0..300).await;

    let (subscription, mut parts) = streams(&broker, "g", "orders", StartFrom::Earliest).await;
    let mut per_partition = HashMap::new();
    for stream in parts.iter_mut() {
        let records = drain(stream, usize::MAX).await;
        let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(
            offsets,
            (0..records.len() as u64).collect::<Vec<_>>(),
            "dense, ordered offsets"
        );
        for r in &records {
            assert_eq!(
                r.partition,
                partition_for_key(r.key.as_ref().unwrap(), 3),
                "murmur2 placement"
            );
        }
        // Per key, values are in publish order within the partition.
        per_partition.insert(stream.partition, records.len());
        stream
            .calls()
            .commit(Progress {
                completion: &Completion::at(10),
                done: &[],
            })
            .await
            .unwrap();
    }
    assert_eq!(per_partition.values().sum::<usize>(), 300);
    drop(parts);
    drop(subscription);
    assert_eq!(broker.committed("g", "orders", 0).unwrap(), Some(10));

    // Rejoining starts at the committed offsets; another group starts at the beginning.
    let (_s, mut parts) = streams(&broker, "g", "orders", StartFrom::Earliest).await;
    for stream in parts.iter_mut() {
        let first = drain(stream, 1).await;
        assert_eq!(
            first[0].offset, 10,
            "partition {} resumes at its commit",
            stream.partition
        );
    }
    let (_s2, mut other) = streams(&broker, "other", "orders", StartFrom::Earliest).await;
    assert_eq!(drain(&mut other[0], 1).await[0].offset, 0);
}

#[tokio::test]
async fn live_subscribers_see_new_records_and_latest_skips_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    publish_many(&broker, "events", 0..30).await;
    let (_s, mut parts) = streams(&broker, "late", "events", StartFrom::Latest).await;
    publish_many(&broker, "events", 30..60).await;
    let mut values = Vec::new();
    for stream in parts.iter_mut() {
        values.extend(
            drain(stream, usize::MAX)
                .await
                .into_iter()
                .map(|r| String::from_utf8(r.value.to_vec()).unwrap()),
        );
    }
    values.sort_by_key(|v| v[1..].parse::<usize>().unwrap());
    assert_eq!(
        values,
        (30..60).map(|i| format!("v{i}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn records_survive_reopen_and_offsets_continue() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = open(dir.path());
        publish_many(&broker, "t", 0..50).await;
        broker.close().await;
    }
    let broker = reopen(dir.path()).await;
    let before = broker.read_topic("t").unwrap().len();
    assert_eq!(before, 50);
    let receipt = broker
        .publish(record("t", "k0", "after".into()))
        .await
        .unwrap();
    let partition_records = broker.read("t", receipt.partition, 0, 1000).unwrap();
    assert_eq!(
        receipt.offset,
        partition_records.len() as u64 - 1,
        "no offset is reused after a restart"
    );
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_dir() {
    let dir = tempfile::tempdir().unwrap();
    let _broker = open(dir.path());
    let err = EmbeddedBroker::open(&EmbeddedConfig {
        dir: dir.path().to_path_buf(),
        partitions: 3,
        retention: RetentionConfig::default(),
    })
    .err()
    .expect("the second open fails");
    assert!(matches!(err, BrokerError::Locked(_)));
    let message = err.to_string();
    assert!(
        message.contains(&std::process::id().to_string()) && message.contains("in use"),
        "{message}"
    );
}

#[tokio::test]
async fn retention_removes_the_oldest_records_first() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    for i in 0..100 {
        broker
            .publish(Record {
                topic: "r".into(),
                key: Some(Bytes::from_static(b"same")),
                headers: vec![],
                value: Bytes::from(vec![b'x'; 1000 + i]),
            })
            .await
            .unwrap();
    }
    let partition = partition_for_key(b"same", 3);
    broker.enforce_retention(None, Some(20_000)).await.unwrap();
    let left = broker.read("r", partition, 0, 1000).unwrap();
    assert!(
        left.len() < 25 && left.len() >= 15,
        "about 20 KB stay: {} records",
        left.len()
    );
    assert_eq!(left.last().unwrap().offset, 99, "the newest records stay");
    assert_eq!(
        left.first().unwrap().offset,
        100 - left.len() as u64,
        "the oldest went first, contiguously"
    );

    // Age: everything is older than a zero-length window... of 1 ms, after a pause.
    tokio::time::sleep(Duration::from_millis(20)).await;
    broker
        .enforce_retention(Some(Duration::from_millis(1)), None)
        .await
        .unwrap();
    assert!(broker.read("r", partition, 0, 1000).unwrap().is_empty());

    // A consumer that starts from the earliest now starts past the removed records.
    let receipt = broker
        .publish(record("r", "same", "fresh".into()))
        .await
        .unwrap();
    assert_eq!(receipt.offset, 100, "offsets keep counting after retention");
    let (_s, mut parts) = streams(&broker, "g", "r", StartFrom::Earliest).await;
    let got = drain(&mut parts[partition as usize], usize::MAX).await;
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), [100]);
}

/// Reopens after a close; the storage engine releases its files when its last handle goes.
async fn reopen(dir: &Path) -> Arc<EmbeddedBroker> {
    for _ in 0..100 {
        match EmbeddedBroker::open(&EmbeddedConfig {
            dir: dir.to_path_buf(),
            partitions: 3,
            retention: RetentionConfig {
                max_age: None,
                max_bytes: None,
            },
        }) {
            Ok(broker) => return broker,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("could not reopen the log");
}
