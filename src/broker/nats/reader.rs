//! The reader of one leased partition: pulls bounded batches from the partition's durable
//! consumer and hands the messages to the engine's stream, remembering each one's reply
//! subject until the engine has finished it and it is acked.
//!
//! It pulls one bounded batch at a time (`PULL_BATCH` messages, expiring after
//! `pull_expires`) rather than async-nats's continuous `messages()` stream, whose own count
//! of outstanding requests drifted from the server's under load and left a partition with no
//! request open (BENCHMARKS.md).
//!
//! A batch is over when it is full, when the server says it expired, or when its expiry
//! has passed here: then a round trip to the server (a flush: the server answers it after
//! everything it sent before) brings in whatever was already on its way, so no message is
//! left behind in a request nobody reads. Waiting for the client's own give-up timer instead
//! (five seconds after the expiry) is what made some events wait five seconds when the
//! server's expiry notice did not come.
//!
//! Fencing: a pull is opened only if it will have expired before the tenure runs out, so a
//! replica that could not renew its lease receives nothing after another may own the
//! partition; a revoked tenure ends the reader after its current pull.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{PullConsumer, pull::Batch};
use async_nats::jetstream::Message;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};

use super::KEY_HEADER;
use super::consumer::{Pending, Unit};
use crate::broker::{ConsumedRecord, RecordHeader, Tenure};

/// Messages one pull request asks for.
const PULL_BATCH: usize = 256;
/// How long past a pull's expiry the reader waits for the server's notice before it ends
/// the pull itself.
const EXPIRY_SLACK: Duration = Duration::from_millis(50);

pub struct Reader {
    pub client: async_nats::Client,
    pub consumer: PullConsumer,
    pub unit: Unit,
    pub records: mpsc::Sender<ConsumedRecord>,
    pub pending: Pending,
    pub tenure: watch::Receiver<Tenure>,
    pub pull_expires: Duration,
}

impl Reader {
    pub async fn run(mut self, first_pull_after: Option<Duration>) {
        let (topic, partition) = (self.unit.0.clone(), self.unit.1);
        if let Some(wait) = first_pull_after {
            tracing::info!(%topic, partition, ?wait, "waiting for the previous owner's unacked messages to come back");
            tokio::time::sleep(wait).await;
        }
        // Every sequence up to this one was handed to the engine already.
        let mut highest = 0;
        loop {
            match self.may_pull() {
                Pull::Stop => return,
                Pull::Wait => {
                    let _ = tokio::time::timeout(Duration::from_millis(50), self.tenure.changed())
                        .await;
                    continue;
                }
                Pull::Go => {}
            }
            let opened = Instant::now();
            let batch = match self
                .consumer
                .batch()
                .max_messages(PULL_BATCH)
                .expires(self.pull_expires)
                .messages()
                .await
            {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(%topic, partition, error = %e, "JetStream pull request failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let expired_by = opened + self.pull_expires + EXPIRY_SLACK;
            if !self.read_batch(batch, expired_by, &mut highest).await {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// Whether a pull may be opened now: only while the tenure surely outlasts it.
    fn may_pull(&self) -> Pull {
        if self.records.is_closed() {
            return Pull::Stop;
        }
        match *self.tenure.borrow() {
            Tenure::Revoked => Pull::Stop,
            Tenure::Held { until: None } => Pull::Go,
            Tenure::Held { until: Some(until) } => {
                if Instant::now() + self.pull_expires + EXPIRY_SLACK * 2 < until {
                    Pull::Go
                } else {
                    Pull::Wait
                }
            }
        }
    }

    /// Reads one pull to its end; false if it ended with an error.
    async fn read_batch(&self, mut batch: Batch, expired_by: Instant, highest: &mut u64) -> bool {
        let (topic, partition) = (&self.unit.0, self.unit.1);
        loop {
            let next = tokio::select! {
                next = batch.next() => next,
                _ = tokio::time::sleep_until(expired_by.into()) => {
                    // The server has expired the request: collect what it sent before.
                    if let Err(e) = self.client.flush().await {
                        tracing::warn!(%topic, partition, error = %e, "flush after a pull failed");
                    }
                    while let Some(Some(next)) = batch.next().now_or_never() {
                        match next {
                            Ok(message) => self.take(message, highest).await,
                            Err(_) => break,
                        }
                    }
                    return true;
                }
            };
            match next {
                Some(Ok(message)) => self.take(message, highest).await,
                Some(Err(e)) => {
                    tracing::warn!(%topic, partition, error = %e, "JetStream pull ended with an error");
                    return false;
                }
                None => return true,
            }
        }
    }

    /// Hands a message to the engine, or, if it was handed over already (the server
    /// redelivered it after a late progress ack), refreshes or repeats its ack.
    async fn take(&self, message: Message, highest: &mut u64) {
        let Ok(info) = message.info() else { return };
        let (sequence, published) = (info.stream_sequence, info.published);
        let Some(reply) = message.reply.clone() else {
            return;
        };
        if sequence <= *highest {
            let refreshed = {
                let mut pending = self.pending.lock().expect("pending lock");
                let stored = pending
                    .get_mut(&self.unit)
                    .and_then(|m| m.get_mut(&sequence));
                stored.map(|stored| *stored = reply.clone()).is_some()
            };
            if !refreshed {
                // Done and acked, but the ack was lost: ack it again.
                let _ = self
                    .client
                    .publish(reply, Bytes::from_static(b"+ACK"))
                    .await;
            }
            return;
        }
        *highest = sequence;
        let (topic, partition) = (self.unit.0.clone(), self.unit.1);
        let headers: Vec<RecordHeader> = message
            .headers
            .iter()
            .flat_map(|headers| headers.iter())
            .flat_map(|(name, values)| {
                values.iter().map(move |v| RecordHeader {
                    // One allocation: `to_string` would format, then copy again.
                    name: AsRef::<str>::as_ref(name).to_ascii_lowercase(),
                    value: Bytes::copy_from_slice(v.as_str().as_bytes()),
                })
            })
            .collect();
        let key = message
            .headers
            .as_ref()
            .and_then(|h| h.get(KEY_HEADER))
            .map(|v| Bytes::copy_from_slice(v.as_str().as_bytes()));
        let record = ConsumedRecord {
            topic,
            partition,
            offset: sequence,
            timestamp_ms: (published.unix_timestamp_nanos() / 1_000_000) as i64,
            key,
            headers,
            value: message.payload.clone(),
        };
        if let Some(messages) = self
            .pending
            .lock()
            .expect("pending lock")
            .get_mut(&self.unit)
        {
            messages.insert(sequence, reply);
        }
        // A stream dropped by its worker takes nothing more: the message stays unacked and
        // goes to the next owner.
        let _ = self.records.send(record).await;
    }
}

enum Pull {
    Go,
    /// Not now: the tenure is about to run out unless it is renewed.
    Wait,
    Stop,
}
