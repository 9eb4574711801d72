//! The Kafka tests' config: the Kafka-protocol broker scripts/test starts, four partitions.

use super::{events_config, kafka_bootstrap};

pub fn bootstrap() -> String {
    kafka_bootstrap()
}

pub fn config(bootstrap: &str, topic: &str, subs: &str) -> String {
    let broker =
        format!("  kind: kafka\n  kafka:\n    bootstrap_servers: {bootstrap}\n    partitions: 4\n");
    events_config(&broker, topic, subs)
}
