//! Reading JetStream topics outside any consumer group (see [`TopicReader`]): each read is
//! a short-lived ephemeral consumer on the partition's subject that acknowledges nothing,
//! deleted when the read is done (and dropped by the server if hookbridge dies first).
//!
//! Offsets are stream sequences, which the stream's partitions share; a partition's
//! retained range is reported as the stream's.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream;
use async_trait::async_trait;
use futures_util::StreamExt;

use super::names::{stream_name, subject};
use super::reader::to_record;
use super::{NatsBroker, unavailable};
use crate::broker::{BrokerError, ConsumedRecord, TopicReader};

/// The server forgets a reader's consumer this long after its last use.
const INACTIVE: Duration = Duration::from_secs(30);

impl NatsBroker {
    /// The topic's stream: `Rejected` when there is none, `Unavailable` when the server
    /// could not say.
    async fn stream_of(&self, topic: &str) -> Result<Stream, BrokerError> {
        use async_nats::jetstream::ErrorCode;
        use async_nats::jetstream::context::GetStreamErrorKind;
        self.jetstream
            .get_stream(stream_name(topic))
            .await
            .map_err(|e| match e.kind() {
                GetStreamErrorKind::JetStream(error)
                    if error.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    BrokerError::Rejected(format!("topic {topic} does not exist"))
                }
                _ => BrokerError::Unavailable(format!("topic {topic}: {e}")),
            })
    }

    /// Up to `max` messages of the partition from the `deliver` position on.
    async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        deliver: DeliverPolicy,
        max: usize,
    ) -> Result<Vec<ConsumedRecord>, BrokerError> {
        let stream = self.stream_of(topic).await?;
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: subject(topic, partition),
                deliver_policy: deliver,
                ack_policy: AckPolicy::None,
                inactive_threshold: INACTIVE,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let name = consumer.cached_info().name.clone();
        let fetched = async {
            // `fetch` answers what is there now, up to `max`, without waiting for more.
            let mut messages = consumer
                .fetch()
                .max_messages(max)
                .messages()
                .await
                .map_err(unavailable)?;
            let topic: Arc<str> = Arc::from(topic);
            let mut records = Vec::new();
            while let Some(message) = messages.next().await {
                let message = message.map_err(unavailable)?;
                let info = message.info().map_err(unavailable)?;
                let timestamp_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
                let sequence = info.stream_sequence;
                records.push(to_record(
                    topic.clone(),
                    partition,
                    &message,
                    sequence,
                    timestamp_ms,
                ));
            }
            Ok(records)
        }
        .await;
        let _ = stream.delete_consumer(&name).await;
        fetched
    }
}

#[async_trait]
impl TopicReader for NatsBroker {
    async fn partitions(&self, topic: &str) -> Result<u32, BrokerError> {
        self.stream_of(topic).await?;
        Ok(self.config.partitions)
    }

    async fn bounds(&self, topic: &str, _partition: u32) -> Result<(u64, u64), BrokerError> {
        let mut stream = self.stream_of(topic).await?;
        let state = &stream.info().await.map_err(unavailable)?.state;
        let end = state.last_sequence + 1;
        Ok((state.first_sequence.min(end), end))
    }

    async fn offset_at(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, BrokerError> {
        let (_, end) = self.bounds(topic, partition).await?;
        let start_time =
            time::OffsetDateTime::from_unix_timestamp_nanos(timestamp_ms as i128 * 1_000_000)
                .map_err(|e| BrokerError::Rejected(format!("timestamp {timestamp_ms}: {e}")))?;
        let first = self
            .fetch(
                topic,
                partition,
                DeliverPolicy::ByStartTime { start_time },
                1,
            )
            .await?;
        Ok(first.first().map_or(end, |record| record.offset))
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        end: u64,
        max: usize,
    ) -> Result<Vec<ConsumedRecord>, BrokerError> {
        if from >= end || max == 0 {
            return Ok(Vec::new());
        }
        let deliver = DeliverPolicy::ByStartSequence {
            start_sequence: from.max(1),
        };
        let mut records = self.fetch(topic, partition, deliver, max).await?;
        records.retain(|record| record.offset < end);
        Ok(records)
    }

    fn dense(&self) -> bool {
        false
    }
}
