//! Replay: a subscription's topics read again from an instant (`since`, found with the
//! broker's time index: Kafka's offsets-for-times, JetStream's start time, the embedded
//! log's timestamps) or from given offsets, up to `until` or the end they had when the
//! replay started; the events that pass the subscription's own type filter and the
//! request's are sent to that subscription again. Its live cursor does not move, and no
//! other subscription of the topics sees anything.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::scan::CHUNK;
use super::selection::EventFilter;
use super::sender::{self, Sender, SentBefore};
use super::{Kind, Operation, OperationError, Operations, ResendRequest};
use crate::broker::Broker;
use crate::config::SubscriptionConfig;
use crate::delivery::{Decode, Event, Filter};

/// One partition's range to read again: `[start, end)`.
struct Range {
    topic: String,
    partition: u32,
    start: u64,
    end: u64,
}

pub fn replay(
    operations: &Operations,
    broker: &Broker,
    sub: &SubscriptionConfig,
    request: ResendRequest,
) -> Result<Arc<Operation>, OperationError> {
    let filter = request.filter()?;
    if filter.since_ms.is_none() && request.offsets.is_none() {
        return Err(OperationError::Invalid(
            "a replay starts from `since` (a time) or `offsets`".into(),
        ));
    }
    if filter.since_ms.is_some() && request.offsets.is_some() {
        return Err(OperationError::Invalid(
            "give `since` or `offsets`, not both".into(),
        ));
    }
    if let Some(unknown) = request
        .offsets
        .iter()
        .flat_map(|o| o.keys())
        .find(|topic| !sub.topics.contains(topic))
    {
        return Err(OperationError::Invalid(format!(
            "`offsets`: `{unknown}` is not a topic of subscription `{}`",
            sub.name
        )));
    }
    let operation = Operation::new(
        Kind::Replay,
        &sub.name,
        request.requested_by.as_deref().unwrap_or("unknown"),
        request.dry_run,
    );
    // The subscription's own filter: what it would not deliver is not copied.
    let wanted = sub.filter.as_ref().map(Filter::new);
    let decode = if wanted.as_ref().is_some_and(Filter::reads_headers) {
        Decode::Full
    } else {
        Decode::Head
    };
    let (broker, sub) = (broker.clone(), sub.clone());
    Ok(operations.start(operation, move |op| async move {
        let resend_topic = sub.resend_topic();
        let ranges = plan(&broker, &sub, &filter, request.offsets.as_ref()).await?;
        if broker.reader.dense() {
            op.update(|p| p.total = Some(ranges.iter().map(|r| r.end - r.start).sum()));
        }
        let sent_before = if request.force {
            SentBefore::default()
        } else {
            SentBefore::read(&broker, &resend_topic).await?
        };
        let mut sender = Sender::new(broker.clone(), request.rate);
        for range in ranges {
            let mut from = range.start;
            loop {
                if op.is_cancelled() {
                    return Ok(());
                }
                let chunk = broker
                    .reader
                    .read(&range.topic, range.partition, from, range.end, CHUNK)
                    .await?;
                let Some(last) = chunk.last() else { break };
                from = last.offset + 1;
                op.update(|p| p.scanned += chunk.len() as u64);
                for record in chunk {
                    let event = Event::from_record(record.clone(), decode);
                    let passes = event.undeliverable.is_none()
                        && wanted
                            .as_ref()
                            .is_none_or(|w| w.wants(&event).unwrap_or(false))
                        && filter.in_time(record.timestamp_ms)
                        && filter.matches(&event.event_type, record.key.as_deref(), &event.id);
                    if !passes {
                        continue;
                    }
                    op.update(|p| p.matched += 1);
                    if sent_before.contains(&record) {
                        op.update(|p| p.skipped += 1);
                        continue;
                    }
                    if op.dry_run {
                        continue;
                    }
                    let copy = sender::copy(&op, &resend_topic, &record, &event.id);
                    if !sender.send(&op, copy).await {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }))
}

/// The range of each partition of the subscription's topics to read again.
async fn plan(
    broker: &Broker,
    sub: &SubscriptionConfig,
    filter: &EventFilter,
    offsets: Option<&BTreeMap<String, BTreeMap<u32, u64>>>,
) -> Result<Vec<Range>, OperationError> {
    let reader = &broker.reader;
    let mut ranges = Vec::new();
    for topic in &sub.topics {
        for partition in 0..reader.partitions(topic).await? {
            let (first, end_now) = reader.bounds(topic, partition).await?;
            let start = match (offsets, filter.since_ms) {
                (Some(offsets), _) => match offsets.get(topic).and_then(|o| o.get(&partition)) {
                    Some(offset) => *offset,
                    None => continue,
                },
                (None, Some(since)) => reader.offset_at(topic, partition, since).await?,
                (None, None) => unreachable!("checked before the operation started"),
            };
            let end = match filter.until_ms {
                Some(until) => reader.offset_at(topic, partition, until).await?,
                None => end_now,
            };
            let start = start.max(first);
            if start < end {
                ranges.push(Range {
                    topic: topic.clone(),
                    partition,
                    start,
                    end: end.min(end_now),
                });
            }
        }
    }
    Ok(ranges)
}
