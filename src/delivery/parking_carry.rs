//! Parked events carried over to a new parking topic.
//!
//! A partition's parked keys name the parking topic their events went to. When the
//! subscription's parking topic changes (a live reload, or a restart with another config),
//! its group reads only the new one: events still waiting in the former one would never be
//! delivered, and their keys would wait for them for ever. So before a live partition takes
//! its first record, its worker copies the events of its keys parked elsewhere that are not
//! done there (as the group's last commit of that partition says) to the current parking
//! topic, in order, and points each key at its last copy; a key with nothing left there is
//! unparked. Its new events then follow the copies as they followed the originals.
//!
//! A key is pointed at its copies only once all of its partition's keys are copied: a
//! worker stopped half-way stores the keys where they were, and the next owner copies
//! again. Those events are delivered twice, in order (at least once, G8). While replicas of
//! both configurations run (a rolling change), the former topic is still delivered by the
//! old ones, so a carried event may be delivered twice too.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;

use super::parked_keys::Stranded;
use super::parking;
use super::runtime::SubscriptionRuntime;
use super::side_topic;
use crate::broker::completion::key_hash;
use crate::broker::{BrokerError, Completion, PartitionCalls, Receipt};

/// Records read from the former topic at a time.
const READ_BATCH: usize = 256;

/// Where each stranded key went: its last copy, or `None` when none of its events was left.
pub type Carried = HashMap<u64, Option<Receipt>>;

/// Copies the events of `stranded` keys of the partition `calls` is for that are not done
/// in their former parking partition to the current parking topic. `Ok(None)` when asked
/// to stop first.
pub async fn carry(
    sub: &SubscriptionRuntime,
    calls: &PartitionCalls,
    stranded: &Stranded,
    stop: &CancellationToken,
) -> Result<Option<Carried>, BrokerError> {
    let (topic, partition) = (&*stranded.topic, stranded.partition);
    if let Err(BrokerError::Rejected(e)) = sub.reader.partitions(topic).await {
        // Deleted by an operator: what was parked there is gone with it.
        tracing::error!(subscription = %sub.name, %topic, error = %e, "the former parking topic is gone: the events parked there cannot be carried over; their keys are unparked");
        return Ok(Some(stranded.keys.keys().map(|&key| (key, None)).collect()));
    }
    let done = calls
        .stored(topic, partition)
        .await?
        .unwrap_or_else(|| Completion::at(0));
    let (oldest, next) = sub.reader.bounds(topic, partition).await?;
    let last = stranded.keys.values().copied().max().unwrap_or_default();
    let end = next.min(last + 1);
    let mut from = oldest.max(done.next_offset);
    let mut carried = Carried::new();
    loop {
        let records = sub
            .reader
            .read(topic, partition, from, end, READ_BATCH)
            .await?;
        let Some(newest) = records.last() else { break };
        from = newest.offset + 1;
        for record in &records {
            let Some(key) = &record.key else { continue };
            let hash = key_hash(key);
            let ours = stranded
                .keys
                .get(&hash)
                .is_some_and(|&last| record.offset <= last)
                && parking::came_from(record, calls.topic(), calls.partition());
            if !ours || done.is_done(record.offset) {
                continue;
            }
            let copy = parking::copy_over(sub, record);
            let Some(receipt) = side_topic::publish(sub, copy, stop).await else {
                return Ok(None);
            };
            carried.insert(hash, Some(receipt));
        }
    }
    for &key in stranded.keys.keys() {
        carried.entry(key).or_insert(None);
    }
    Ok(Some(carried))
}
