//! Memory behind a subscriber that never answers does not grow with the backlog: what is
//! held is the storage engine's fixed budget and each partition's bounded buffers.

use std::time::Duration;

use crate::support::delivery::config;
use crate::support::*;

/// Fills the `events` topic of a data dir with `n` foreign records of `bytes` each (as any
/// producer would), starts hookbridge on it with a subscriber that never answers, and
/// returns the peak RSS over a few seconds of trying to deliver.
async fn peak_rss_with_backlog(n: usize, bytes: usize) -> u64 {
    use hookbridge::broker::{Publisher, Record};
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open_log(dir.path());
        let mut pending = tokio::task::JoinSet::new();
        for i in 0..n {
            let log = log.clone();
            pending.spawn(async move {
                let record = Record {
                    topic: "events".into(),
                    key: Some(bytes::Bytes::from(format!("key-{}", i % 1000))),
                    headers: vec![],
                    value: bytes::Bytes::from(vec![b'x'; bytes]),
                };
                log.publish(record).await.unwrap();
            });
            if pending.len() >= (64 << 20) / bytes.max(32 << 10) {
                pending.join_next().await;
            }
        }
        while pending.join_next().await.is_some() {}
        log.close().await;
    }
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", stalled.local_addr().unwrap());
    let sockets = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = stalled.accept().await {
            held.push(socket);
        }
    });
    let subs =
        format!("  - name: stalled\n    topics: [events]\n    url: {url}\n    timeout: 60s\n");
    let server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let mut peak = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(rss_bytes(server.pid()));
    }
    sockets.abort();
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_does_not_grow_with_the_backlog() {
    const MIB: u64 = 1 << 20;
    let small = peak_rss_with_backlog(10, 512).await;
    let large = peak_rss_with_backlog(200_000, 512).await;
    eprintln!(
        "peak RSS behind a stalled subscriber: {} MiB with 10 events, {} MiB with 200,000",
        small / MIB,
        large / MIB
    );
    // 200,000 events of 512 bytes are about 100 MiB of payload. What may be held is the
    // storage engine's fixed budget (a 16 MiB memtable and a 16 MiB block cache, filled by
    // any backlog bigger than they are) and each partition's read-ahead and lane buffer.
    assert!(
        large < 64 * MIB,
        "peak RSS {} MiB over the 64 MiB bound",
        large / MIB
    );
    assert!(
        large < small + 32 * MIB,
        "{} MiB vs {} MiB: memory grew with the backlog",
        large / MIB,
        small / MIB
    );
}

/// Large records: what a partition reads ahead and holds is bounded in bytes too, not only
/// in records (256 read ahead and 256 held, of 256 KiB each, were 128 MiB per partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_behind_large_records_is_bounded_in_bytes() {
    const MIB: u64 = 1 << 20;
    let small = peak_rss_with_backlog(10, 256 << 10).await;
    let large = peak_rss_with_backlog(2_000, 256 << 10).await;
    eprintln!(
        "peak RSS behind a stalled subscriber: {} MiB with 10 events of 256 KiB, {} MiB with 2,000 (500 MiB)",
        small / MIB,
        large / MIB
    );
    // Four partitions, each reading 4 MiB ahead and holding 16 MiB, and the storage engine's
    // budget.
    assert!(
        large < small + 128 * MIB,
        "{} MiB vs {} MiB: memory grew with the backlog",
        large / MIB,
        small / MIB
    );
}
