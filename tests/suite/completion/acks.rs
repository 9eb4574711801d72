//! On NATS a commit acks the server: more messages than a consumer may have unacked all get
//! delivered, its ack floor reaches the last one, and a restart redelivers none of them.

use std::time::{Duration, Instant};

use crate::support::nats::{config, stream_created};
use crate::support::receiver::Receiver;
use crate::support::*;
use hookbridge::broker::nats::{consumer_name, stream_name};

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
