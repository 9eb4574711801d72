//! `broker.kind: nats`: NATS JetStream.
//!
//! - One stream per topic (file storage, a duplicate window), subjects `<topic>.<partition>`,
//!   the partition chosen with the same murmur2 as Kafka. The partition key travels in the
//!   `Hb-Key` header, since NATS messages have no key of their own.
//! - Publishes set `Nats-Msg-Id` to the envelope id, so the server drops a sender's retry
//!   within the duplicate window, and resolve on the PubAck; many are in flight at once.
//! - Delivery ([`consumer`]): a durable pull consumer per (subscription, topic, partition),
//!   read by a [`reader`] and acked message by message as the engine finishes each one;
//!   partitions are shared among replicas through leases in a JetStream KV bucket
//!   ([`leases`]), handed over without overlap.

pub(crate) mod auth;
mod browse;
mod consumer;
mod leases;
mod names;
pub mod parked;
mod reader;
mod stored;

pub use names::{KEY_HEADER, consumer_name, stream_name, subject};

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::context::CreateStreamErrorKind;
use async_nats::jetstream::{self, stream};
use async_trait::async_trait;

use super::partitioner::Partitioner;
use super::{BrokerError, Publisher, Receipt, Record, StartFrom, Subscriber, Subscription};
use crate::config::NatsConfig;
use crate::envelope;

/// Publishes with the same `Nats-Msg-Id` within this window are stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// A NATS error as the broker's: unavailable for now, worth retrying.
fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

pub struct NatsBroker {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    config: NatsConfig,
    partitioner: Partitioner,
    /// Topics whose stream is known to exist.
    streams: Mutex<HashSet<String>>,
    /// The admin API's subscriptions' bucket, opened on first use (see `stored`).
    subscriptions: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
}

impl NatsBroker {
    pub async fn connect(config: &NatsConfig) -> Result<Arc<NatsBroker>, BrokerError> {
        let client = auth::connect(config).await?;
        let jetstream = jetstream::new(client.clone());
        Ok(Arc::new(NatsBroker {
            client,
            jetstream,
            config: config.clone(),
            partitioner: Partitioner::default(),
            streams: Mutex::new(HashSet::new()),
            subscriptions: Default::default(),
        }))
    }
}

#[async_trait]
impl Publisher for NatsBroker {
    async fn ensure_topics(&self, topics: &[String]) -> Result<(), BrokerError> {
        for topic in topics {
            if self.streams.lock().expect("streams lock").contains(topic) {
                continue;
            }
            let config = stream::Config {
                name: stream_name(topic),
                subjects: vec![format!("{topic}.*")],
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            };
            self.jetstream
                .get_or_create_stream(config)
                .await
                .map_err(|e| {
                    let said = format!("cannot create the stream of topic {topic}: {e}");
                    match e.kind() {
                        // Not reached (restarting, a network blip): worth another try.
                        CreateStreamErrorKind::TimedOut
                        | CreateStreamErrorKind::JetStreamUnavailable => {
                            BrokerError::Unavailable(said)
                        }
                        _ => BrokerError::Rejected(said),
                    }
                })?;
            self.streams
                .lock()
                .expect("streams lock")
                .insert(topic.clone());
        }
        Ok(())
    }

    async fn publish(&self, record: Record) -> Result<Receipt, BrokerError> {
        let partition = self
            .partitioner
            .partition(record.key.as_deref(), self.config.partitions);
        let mut headers = async_nats::HeaderMap::new();
        for header in &record.headers {
            headers.append(
                &*header.name,
                String::from_utf8_lossy(&header.value).as_ref(),
            );
        }
        // The server stores a record once per id within the duplicate window.
        let id = record
            .headers
            .iter()
            .find(|h| h.name == envelope::HEADER_RECORD_ID)
            .or_else(|| {
                record
                    .headers
                    .iter()
                    .find(|h| h.name == envelope::HEADER_ID)
            });
        if let Some(id) = id {
            headers.insert("Nats-Msg-Id", String::from_utf8_lossy(&id.value).as_ref());
        }
        if let Some(key) = &record.key {
            headers.insert(KEY_HEADER, String::from_utf8_lossy(key).as_ref());
        }
        let ack = self
            .jetstream
            .publish_with_headers(subject(&record.topic, partition), headers, record.value)
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        Ok(Receipt {
            partition,
            offset: ack.sequence,
        })
    }

    async fn check(&self) -> Result<(), BrokerError> {
        self.client.flush().await.map_err(unavailable)
    }

    async fn close(&self) {
        let _ = self.client.flush().await;
    }
}

#[async_trait]
impl Subscriber for NatsBroker {
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
        start: StartFrom,
    ) -> Result<Subscription, BrokerError> {
        self.ensure_topics(topics).await?;
        let store = leases::bucket(&self.jetstream, leases::BUCKET, self.config.lease.0).await?;
        let parked = parked::ParkedStore::open(&self.jetstream, group).await?;
        Ok(consumer::subscribe(
            self.client.clone(),
            self.jetstream.clone(),
            store,
            parked,
            group,
            topics,
            self.config.partitions,
            self.config.lease.0,
            start,
        ))
    }
}
