//! Who may talk to hookbridge and whom it talks to, and what never leaks: TLS on the
//! connections it makes and accepts, NATS authentication, Kafka TLS and SASL, and no secret
//! in logs, errors or `Debug` output; the admin API refuses what a web page makes a
//! browser send; deliveries kept from private addresses (`server.egress`). (The admin API's
//! bearer token: `operations::token`.)

mod admin;
mod egress;
mod kafka;
mod nats;
mod secrets;
mod tls;
