//! Opening the broker the config names: its three faces, whichever backend it is.

use std::sync::Arc;

use super::embedded::EmbeddedBroker;
use super::kafka::{KafkaBroker, KafkaTopicReader};
use super::nats::NatsBroker;
use super::{BrokerError, Publisher, Subscriber, SubscriptionStore, TopicReader};
use crate::config::{BrokerKind, Config};

#[derive(Debug, thiserror::Error)]
#[error("cannot open the {kind} broker")]
pub struct OpenError {
    kind: &'static str,
    source: BrokerError,
}

/// The faces of the broker the config names.
#[derive(Clone)]
pub struct Broker {
    pub publisher: Arc<dyn Publisher>,
    pub subscriber: Arc<dyn Subscriber>,
    /// Outside any group, for the operator's dead-letter listings, redrives and replays.
    pub reader: Arc<dyn TopicReader>,
    /// Where the admin API's subscriptions are kept.
    pub subscriptions: Arc<dyn SubscriptionStore>,
}

impl Broker {
    /// Opens the broker the config names.
    pub async fn open(config: &Config) -> Result<Broker, OpenError> {
        let failed = |kind| move |source| OpenError { kind, source };
        match config.broker.kind {
            BrokerKind::Embedded => {
                let broker =
                    EmbeddedBroker::open(&config.broker.embedded).map_err(failed("embedded"))?;
                Ok(Broker {
                    publisher: broker.clone(),
                    subscriber: broker.clone(),
                    reader: broker.clone(),
                    subscriptions: broker,
                })
            }
            BrokerKind::Kafka => {
                let broker = KafkaBroker::connect(&config.broker.kafka).map_err(failed("kafka"))?;
                let reader =
                    KafkaTopicReader::new(&config.broker.kafka).map_err(failed("kafka"))?;
                let subscriptions = broker.subscription_store().map_err(failed("kafka"))?;
                Ok(Broker {
                    publisher: broker.clone(),
                    subscriber: broker,
                    reader: Arc::new(reader),
                    subscriptions: Arc::new(subscriptions),
                })
            }
            BrokerKind::Nats => {
                let broker = NatsBroker::connect(&config.broker.nats)
                    .await
                    .map_err(failed("nats"))?;
                Ok(Broker {
                    publisher: broker.clone(),
                    subscriber: broker.clone(),
                    reader: broker.clone(),
                    subscriptions: broker,
                })
            }
        }
    }
}
