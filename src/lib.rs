//! hookbridge bridges HTTP webhooks and event streams.
//!
//! The data path, module by module:
//! - in: [`ingress`] (route → verify → envelope) → [`broker`] publish;
//! - out: [`broker`] partition streams → [`delivery`] (lanes → attempt → commit).
//!
//! [`config`] is the contract operators write; [`server`] wires it all together; [`admin`]
//! serves the operator's API, whose redrives and replays are [`operations`].

pub mod admin;
pub mod broker;
pub mod config;
pub mod crypto;
pub mod delivery;
pub mod envelope;
pub mod ingress;
pub mod metrics;
pub mod operations;
pub mod reload;
pub mod server;
pub mod standard_webhooks;
pub mod telemetry;
pub mod tls;
pub mod tracecontext;
