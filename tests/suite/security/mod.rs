//! Who may talk to hookbridge and whom it talks to, and what never leaks: TLS on the
//! connections it makes and accepts, NATS authentication, Kafka TLS and SASL, and no secret
//! in logs, errors or `Debug` output. (The admin API's bearer token:
//! `operations::token`.)

mod kafka;
mod nats;
mod secrets;
mod tls;
