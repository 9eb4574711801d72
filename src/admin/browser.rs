//! Requests a web browser makes on a page's behalf, refused: the `/v1` API is for the CLI
//! and scripts, which send no `Origin`.
//!
//! A page on any site can make a browser send a request to `http://127.0.0.1:9090` (a form
//! post pauses a subscription), and a page whose name an attacker re-points at 127.0.0.1
//! after it loaded (DNS rebinding) can even read the answers (dead letters in full). So a
//! request that says it comes from another origin (`Origin`, `Sec-Fetch-Site`) is refused,
//! token or not; and without `server.admin_token` (the listener is then on loopback) so is
//! one whose `Host` is not a loopback address or `localhost`: a rebound page's `Host` is its
//! own name. Behind a token any `Host` is fine (a Kubernetes Service's name, say): a page
//! cannot make a browser send the token.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::state::AdminState;
use crate::problem::Problem;

pub async fn refuse_browsers(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(request.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
        .to_ascii_lowercase();
    let tokenless = state.token_digest().is_none();
    match refusal(request.headers(), &host, tokenless) {
        Some(why) => {
            Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", why).into_response()
        }
        None => next.run(request).await,
    }
}

/// Why a request from `host` with `headers` is a browser's on another site's behalf.
fn refusal(headers: &HeaderMap, host: &str, tokenless: bool) -> Option<String> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Some(format!(
            "a browser's request from another site (Sec-Fetch-Site: {site}) is refused: the admin API is for the hookbridge CLI and scripts"
        ));
    }
    if let Some(origin) = text(header::ORIGIN.as_str())
        && authority(origin) != Some(host)
    {
        return Some(format!(
            "a request from another origin ({origin}) is refused: the admin API is for the hookbridge CLI and scripts"
        ));
    }
    if tokenless && !is_loopback(host) {
        return Some(format!(
            "Host {host} is not a loopback address or localhost: without server.admin_token the admin API answers only those (a web page can point its own name at this address)"
        ));
    }
    None
}

/// `host[:port]` of an origin (`scheme://host[:port]`).
fn authority(origin: &str) -> Option<&str> {
    origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'))
}

/// Whether `host[:port]` names this machine: a loopback address, `localhost` or a name
/// under it.
fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => name == "localhost" || name.ends_with(".localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_addresses_and_localhost_names() {
        for host in [
            "127.0.0.1:9090",
            "127.0.0.1",
            "[::1]:9090",
            "localhost",
            "api.localhost:1",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9090",
            "10.0.0.1:9090",
            "localhost.evil.example",
            "",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn an_origin_of_this_host_passes_and_any_other_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, "http://127.0.0.1:9090".parse().unwrap());
        assert_eq!(refusal(&headers, "127.0.0.1:9090", true), None);
        assert!(refusal(&headers, "127.0.0.1:9091", false).is_some());
        headers.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(
            refusal(&headers, "127.0.0.1:9090", false).is_some(),
            "a sandboxed page"
        );
    }
}
