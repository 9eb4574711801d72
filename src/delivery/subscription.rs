//! A subscription joins its consumer group and runs a worker per partition it is given.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::partition;
use super::runtime::SubscriptionRuntime;
use crate::broker::{PartitionEvent, StartFrom, Subscriber};

/// Joins the subscription's group and runs a worker per assigned partition until `stop`.
pub async fn run(
    sub: Arc<SubscriptionRuntime>,
    subscriber: Arc<dyn Subscriber>,
    stop: CancellationToken,
) {
    let group = sub.group();
    let mut subscription = loop {
        match subscriber
            .subscribe(&group, &sub.group_topics(), StartFrom::Earliest)
            .await
        {
            Ok(subscription) => break subscription,
            Err(e) => {
                tracing::warn!(subscription = %sub.name, error = %e, "cannot join the consumer group; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    };
    tracing::info!(subscription = %sub.name, %group, topics = ?sub.topics, url = %sub.settings().client.shown(), "subscription running");
    let mut partitions = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            event = subscription.next_event() => match event {
                // The worker hands the partition back by itself when the backend revokes it.
                Some(PartitionEvent::Assigned(stream)) => {
                    partitions.spawn(partition::run(sub.clone(), stream, stop.clone()));
                }
                None => break,
            },
        }
    }
    while partitions.join_next().await.is_some() {}
}
