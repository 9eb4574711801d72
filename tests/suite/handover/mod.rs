//! G3 across replicas: a partition handed from one replica to another (a replica joining,
//! stopped, killed, or cut off from the broker) is never delivered by both at once, and
//! every event is delivered, in order per key.

mod kafka;
mod nats;
mod overlap;
mod spread;
