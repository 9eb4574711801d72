//! How hookbridge connects to NATS: the servers (`broker.nats.url`, comma-separated for a
//! cluster), the credentials (`broker.nats.auth`) and TLS (`broker.nats.tls`), each through
//! async-nats's own options.
//!
//! Rotation: a `.creds` file is read again on every connect and reconnect (an auth callback
//! signs the server's nonce with the seed read then), and the TLS files are re-read when
//! they change (`crate::tls`); user, password, token and nkey seed come from the config and
//! change with a restart.
//!
//! A server that refuses the credentials or the TLS handshake at start-up is an error
//! naming the key; a server that cannot be reached yet is waited for in the background, as
//! before (it may be starting alongside hookbridge).

use std::path::Path;
use std::time::Duration;

use async_nats::{Auth, AuthError, ConnectErrorKind, ConnectOptions, ServerAddr};

use crate::broker::BrokerError;
use crate::config::{NatsConfig, Problem, redact_url};

/// The servers of `broker.nats.url`.
pub fn servers(config: &NatsConfig) -> Result<Vec<ServerAddr>, BrokerError> {
    config
        .url
        .expose()
        .split(',')
        .map(str::trim)
        .map(|url| {
            url.parse::<ServerAddr>().map_err(|e| {
                let url = redact_url(url);
                BrokerError::Rejected(format!("broker.nats.url: `{url}` is not a server URL: {e}"))
            })
        })
        .collect()
}

/// Connect options with the configured credentials and TLS.
pub fn options(config: &NatsConfig) -> Result<ConnectOptions, BrokerError> {
    let auth = &config.auth;
    let mut options = match &auth.creds {
        Some(path) => {
            let path = path.to_path_buf();
            ConnectOptions::with_auth_callback(move |nonce| {
                let path = path.clone();
                async move { sign_with_creds(&path, &nonce) }
            })
        }
        None => ConnectOptions::new(),
    };
    if let Some(seed) = &auth.nkey_seed {
        options = options.nkey(seed.expose().to_string());
    }
    if let (Some(user), Some(password)) = (&auth.user, &auth.password) {
        options = options.user_and_password(user.clone(), password.expose().to_string());
    }
    if let Some(token) = &auth.token {
        options = options.token(token.expose().to_string());
    }
    if !config.tls.is_empty() {
        let tls = crate::tls::client_config("broker.nats.tls", &config.tls)
            .map_err(|e| BrokerError::Rejected(e.to_string()))?;
        options = options.tls_client_config(tls).require_tls(true);
    }
    Ok(options
        .name("hookbridge")
        .connection_timeout(Duration::from_secs(5)))
}

/// Connects: at once if the servers answer, refusing credentials or a handshake they
/// refuse; in the background while none can be reached yet.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, BrokerError> {
    let servers = servers(config)?;
    match options(config)?.connect(servers.clone()).await {
        Ok(client) => Ok(client),
        Err(e) => match e.kind() {
            ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                let credentials = if config.auth.ways() > 0 {
                    "the server refused the credentials"
                } else {
                    "the server demands credentials and none are set"
                };
                Err(BrokerError::Rejected(format!(
                    "broker.nats.auth: {credentials}: {}",
                    crate::error_chain(&e)
                )))
            }
            // A refused handshake comes as an I/O error around rustls's own.
            _ if e.kind() == ConnectErrorKind::Tls || tls_failure(&e) => {
                Err(BrokerError::Rejected(format!(
                    "broker.nats.tls: the TLS handshake with the server failed: {}",
                    crate::error_chain(&e)
                )))
            }
            _ => {
                tracing::warn!(error = %e, "NATS is not reachable yet; connecting in the background");
                options(config)?
                    .retry_on_initial_connect()
                    .connect(servers)
                    .await
                    .map_err(|e| BrokerError::Unavailable(e.to_string()))
            }
        },
    }
}

/// Whether rustls is somewhere in the error's causes: the certificate was not trusted, or
/// the server refused ours.
fn tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The user JWT and nkey seed of a `.creds` file: the first and second decorated blocks.
fn parse_creds(text: &str) -> Result<(String, nkeys::KeyPair), String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line.starts_with("---")
            && line.contains("BEGIN")
            && let Some(content) = lines.next()
        {
            blocks.push(content.to_string());
        }
    }
    let [jwt, seed, ..] = blocks.as_slice() else {
        return Err("not a .creds file (a user JWT block, then an nkey seed block)".into());
    };
    let key_pair = nkeys::KeyPair::from_seed(seed)
        .map_err(|_| "its nkey seed block holds no nkey seed".to_string())?;
    Ok((jwt.clone(), key_pair))
}

/// Reads the creds file now and signs the server's nonce with its seed.
fn sign_with_creds(path: &Path, nonce: &[u8]) -> Result<Auth, AuthError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuthError::new(format!("{}: {e}", path.display())))?;
    let (jwt, key_pair) =
        parse_creds(&text).map_err(|e| AuthError::new(format!("{}: {e}", path.display())))?;
    let signature = key_pair.sign(nonce).map_err(AuthError::new)?;
    let mut auth = Auth::new();
    auth.jwt = Some(jwt);
    auth.signature = Some(signature);
    Ok(auth)
}

/// `broker.nats.auth.creds` read as a connect will, for start-up and `check-config`.
pub fn check_creds(config: &NatsConfig) -> Option<Problem> {
    let path = config.auth.creds.as_ref()?;
    let key = "broker.nats.auth.creds";
    match std::fs::read_to_string(path) {
        Err(e) => Some(Problem::new(
            key,
            format!("cannot read {}: {e}", path.display()),
        )),
        Ok(text) => parse_creds(&text)
            .err()
            .map(|e| Problem::new(key, format!("{}: {e}", path.display()))),
    }
}
