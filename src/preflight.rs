//! Start-up's preflight: every file the config names (TLS certificates and keys, NATS creds)
//! read as start-up will, so that `serve` and `check-config` refuse a config whose files
//! are missing or wrong before anything starts, naming the key.

use crate::config::{BrokerKind, Config, Problem};
use crate::tls::{TlsError, client_config, server_config};

/// Reads every TLS file and NATS creds file the config names, as start-up will: each
/// problem names its key (`subscriptions[0].tls.ca`) and the cause. Run by `serve` before
/// anything starts and by `check-config`.
pub fn check_files(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !config.server.tls.is_empty()
        && let Err(e) = server_config("server.tls", &config.server.tls)
    {
        problems.push(problem(e));
    }
    if config.broker.kind == BrokerKind::Nats {
        if !config.broker.nats.tls.is_empty()
            && let Err(e) = client_config("broker.nats.tls", &config.broker.nats.tls)
        {
            problems.push(problem(e));
        }
        problems.extend(crate::broker::nats::auth::check_creds(&config.broker.nats));
    }
    for (i, sub) in config.subscriptions.iter().enumerate() {
        if !sub.tls.is_empty()
            && let Err(e) = client_config(&format!("subscriptions[{i}].tls"), &sub.tls)
        {
            problems.push(problem(e));
        }
    }
    problems
}

/// Splits an error into the key it names and the rest of its message.
fn problem(e: TlsError) -> Problem {
    let key = match &e {
        TlsError::Read { key, .. }
        | TlsError::NoCertificate { key, .. }
        | TlsError::NoKey { key, .. }
        | TlsError::Mismatch { key, .. }
        | TlsError::Invalid { key, .. } => key.clone(),
    };
    let message = e.to_string();
    let message = message
        .strip_prefix(&format!("{key}: "))
        .unwrap_or(&message)
        .to_string();
    Problem::new(key, message)
}
