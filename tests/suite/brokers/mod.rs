//! What is particular to each broker, proven against a real one: the embedded log through
//! the broker traits; how Kafka and NATS carry hookbridge's envelopes and other services'
//! records; and the seams of each client that belong to no guarantee of their own.

mod embedded;
mod kafka;
mod nats;
