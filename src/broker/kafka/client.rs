//! The settings every hookbridge Kafka client starts from, and `broker.kafka.properties`
//! applied over them.

use rdkafka::ClientConfig;

use crate::broker::BrokerError;
use crate::config::KafkaConfig;

/// The client settings every hookbridge Kafka client starts from.
pub fn base_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.bootstrap_servers);
    client.set("client.id", "hookbridge");
    client
}

/// Applies `broker.kafka.properties` over the defaults.
pub fn with_properties(mut client: ClientConfig, config: &KafkaConfig) -> ClientConfig {
    for (key, value) in &config.properties {
        client.set(key, value.expose());
    }
    client
}

/// A librdkafka error as the broker's: unavailable for now, worth retrying.
pub fn kafka_error(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}
