//! hookbridge bridges HTTP webhooks and event streams. ARCHITECTURE.md, at the root of the
//! repository, is the map; this is the crate's door.
//!
//! The data path, module by module:
//! - in: [`ingress`] (route → verify → envelope) → [`broker`] publish;
//! - out: [`broker`] partition streams → [`delivery`] (subscription → partition → lanes →
//!   attempt → commit | dead letter | parking).
//!
//! Around it: [`config`] is the contract operators write, checked at start by [`preflight`];
//! [`server`] wires everything together and stops it (every stop signal is a
//! `CancellationToken`);
//! [`reload`] applies a changed config; [`admin`] serves the operator's API, whose redrives
//! and replays are [`operations`]; [`metrics`] and [`telemetry`] are what it shows.
//!
//! The crate's surface is narrow on purpose: the config contract ([`config`]), the record
//! format on the broker ([`envelope`]), the broker seam the engine is built on ([`broker`]),
//! and what the `hookbridge` binary runs (re-exported below). The rest is private to the
//! crate; the integration tests drive the service through the binary, its HTTP APIs and the
//! broker, as a user does.

mod admin;
pub mod broker;
pub mod config;
mod crypto;
mod delivery;
mod egress;
pub mod envelope;
pub mod expression;
mod glob;
mod ingress;
mod metrics;
mod operations;
mod preflight;
mod problem;
mod reload;
mod rfc3339;
mod server;
pub mod standard_webhooks;
mod telemetry;
mod tls;
mod tracecontext;

// What the `hookbridge` binary runs.
pub use ingress::Ingress;
pub use preflight::check_files;
pub use reload::ConfigFile;
pub use rfc3339::rfc3339;
pub use server::{Bound, Role, ServeError, serve};
pub use telemetry::{LogFormat, Telemetry, init as init_telemetry};

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
