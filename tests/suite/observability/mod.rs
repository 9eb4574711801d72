//! What an operator can see: the contract's metrics count what happened and a real
//! Prometheus scrapes them; one OTLP trace runs from the sender to the subscriber, and a
//! collector in trouble blocks nothing.

mod metrics;
mod traces;
