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
pub mod preflight;
pub mod problem;
pub mod reload;
pub mod rfc3339;
pub mod server;
pub mod standard_webhooks;
pub mod telemetry;
pub mod tls;
pub mod tracecontext;

/// An error with its causes, outermost first: "client error (Connect): tcp connect error:
/// Connection refused (os error 111)" rather than only the outer layer. A cause whose text
/// the message already holds (many errors repeat their source) is not repeated.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
