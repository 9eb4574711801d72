//! The HTTP client a subscription delivers with: hyper's pooled HTTP/1.1 client over rustls,
//! the system's trust store (plus the subscription's private CA and client certificate,
//! `tls`, see `crate::tls`), the subscription's static `headers`, no redirects, one deadline
//! per attempt.
//!
//! Why hyper and not reqwest: a delivery is always the same POST to the same URL, so none
//! of reqwest's layers earn their cost on this path. Its redirect layer and response URL
//! re-parsed the request URL twice per request, about 6% of the delivery CPU in the
//! benchmark's profile (BENCHMARKS.md). Here the URL is parsed once, at start-up.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{
    AUTHORIZATION, HOST, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT,
};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::egress::EgressGuard;

/// A response body longer than this is not read to its end: the connection is closed
/// instead of returned to the pool. Receivers answer a webhook with a few bytes at most.
const MAX_DRAINED_BODY: usize = 64 * 1024;

/// Where and how one subscription's deliveries go.
pub struct WebhookClient {
    client: Client<HttpsConnector<Guarded>, Full<Bytes>>,
    uri: Uri,
    /// Sent with every request: `host`, the subscription's static `headers`, and basic
    /// credentials from the URL's user info (`https://user:pass@host/`) as `authorization`,
    /// kept out of the request line. The last two are marked sensitive.
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

/// The parts of an answer an attempt classifies.
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<HeaderValue>,
}

/// How an attempt refused by the egress guard begins its error (`SendError::EgressDenied`).
pub const EGRESS_DENIED: &str = "egress-denied:";

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The request did not get an answer: connection refused or reset, TLS failure, ...
    #[error("{0}")]
    Failed(String),
    /// The address the URL led to is one `server.egress` does not let deliveries reach.
    #[error(
        "egress-denied: {0} is not reachable under server.egress (add it to allow_networks to deliver there)"
    )]
    EgressDenied(IpAddr),
}

/// A connection refused by the egress guard (see `crate::egress`).
#[derive(Debug, thiserror::Error)]
#[error("egress-denied: {0}")]
struct EgressDenied(IpAddr);

/// The TCP connector with the egress guard, when there is one, checking the address each
/// connection was made to before it is used.
#[derive(Clone)]
pub struct Guarded {
    inner: HttpConnector,
    guard: Option<Arc<EgressGuard>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for Guarded {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let guard = self.guard.clone();
        Box::pin(async move {
            let connection = connecting.await?;
            if let Some(guard) = guard {
                let peer = connection.inner().peer_addr()?.ip();
                if !guard.permits(peer) {
                    // Dropped here: closed before a byte is sent.
                    return Err(Box::new(EgressDenied(peer)) as BoxError);
                }
            }
            Ok(connection)
        })
    }
}

/// The egress guard's refusal, if that is what ended a request.
fn egress_denied(error: &(dyn std::error::Error + 'static)) -> Option<IpAddr> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(denied) = e.downcast_ref::<EgressDenied>() {
            return Some(denied.0);
        }
        cause = e.source();
    }
    None
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("url: {0}")]
    Url(String),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("header {0}: not a valid header")]
    Header(String),
}

/// What a subscription's client is built from.
pub struct ClientOptions<'a> {
    pub url: &'a str,
    pub timeout: Duration,
    /// Connections kept open between deliveries: `max_in_flight`, so a busy subscription
    /// never reconnects.
    pub max_idle: usize,
    pub headers: &'a std::collections::BTreeMap<String, crate::config::Secret>,
    /// The key the TLS settings are under, for errors (`subscriptions[0].tls`).
    pub tls_key: &'a str,
    pub tls: &'a crate::config::TlsConfig,
    /// Checks where each connection goes (`server.egress`); none: anywhere.
    pub egress: Option<Arc<EgressGuard>>,
}

impl WebhookClient {
    pub fn new(options: ClientOptions<'_>) -> Result<WebhookClient, ClientError> {
        let (uri, authorization) = parse_url(options.url)?;
        let tls = crate::tls::client_config(options.tls_key, options.tls)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(options.timeout.min(Duration::from_secs(5))));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(Guarded {
                inner: http,
                guard: options.egress,
            });
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(options.max_idle)
            .build(connector);
        let mut headers = Vec::new();
        for (name, value) in options.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ClientError::Header(name.clone()))?;
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|_| ClientError::Header(name.to_string()))?;
            value.set_sensitive(true);
            headers.push((name, value));
        }
        headers.extend(authorization.map(|value| (AUTHORIZATION, value)));
        // `host` made once here rather than formatted by hyper for every request (1% of a
        // delivery's instructions); a `host` among the configured headers still wins.
        if let Some(authority) = uri.authority() {
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|e| ClientError::Url(e.to_string()))?;
            headers.insert(0, (HOST, host));
        }
        Ok(WebhookClient {
            client,
            uri,
            headers,
            timeout: options.timeout,
        })
    }

    /// The URL as it may be shown: scheme, host and port (see `config::redact_url`).
    pub fn shown(&self) -> String {
        crate::config::redact_url(&self.uri.to_string())
    }

    /// How many headers [`WebhookClient::post`] adds to the ones it is given, so a caller
    /// can make its map with room for them.
    pub fn added_headers(&self) -> usize {
        1 + self.headers.len()
    }

    /// POSTs `body` with `headers`; the answer's body is read and dropped so the connection
    /// goes back to the pool. The whole exchange is bounded by the subscription's timeout.
    pub async fn post(&self, mut headers: HeaderMap, body: Bytes) -> Result<Answer, SendError> {
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = headers;

        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| match egress_denied(&e) {
                        Some(ip) => SendError::EgressDenied(ip),
                        None => SendError::Failed(crate::error_chain(&e)),
                    })?;
            let (parts, mut body) = response.into_parts();
            let mut read = 0;
            while read <= MAX_DRAINED_BODY {
                match body.frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                    // The status is what counts; a body cut short only costs the connection.
                    Some(Err(_)) | None => break,
                }
            }
            Ok(Answer {
                status: parts.status,
                retry_after: parts.headers.get(RETRY_AFTER).cloned(),
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(SendError::Timeout(self.timeout)))
    }
}

const USER_AGENT_VALUE: &str = concat!("hookbridge/", env!("CARGO_PKG_VERSION"));

/// The request URI, and basic credentials if the URL carries user info.
fn parse_url(url: &str) -> Result<(Uri, Option<HeaderValue>), ClientError> {
    let mut parsed = url::Url::parse(url).map_err(|e| ClientError::Url(e.to_string()))?;
    let authorization = if parsed.username().is_empty() && parsed.password().is_none() {
        None
    } else {
        let user = percent_decode(parsed.username());
        let password = parsed.password().map(percent_decode).unwrap_or_default();
        let token = STANDARD.encode(format!("{user}:{password}"));
        let mut value = HeaderValue::from_str(&format!("Basic {token}"))
            .map_err(|e| ClientError::Url(e.to_string()))?;
        value.set_sensitive(true);
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        Some(value)
    };
    let uri = parsed
        .as_str()
        .parse::<Uri>()
        .map_err(|e| ClientError::Url(e.to_string()))?;
    Ok((uri, authorization))
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_becomes_basic_credentials() {
        let (uri, auth) = parse_url("https://hook%40er:p%3Ass@example.com:8443/in?x=1").unwrap();
        assert_eq!(uri.to_string(), "https://example.com:8443/in?x=1");
        let expected = format!("Basic {}", STANDARD.encode("hook@er:p:ss"));
        assert_eq!(auth.unwrap().to_str().unwrap(), expected);

        let (uri, auth) = parse_url("http://127.0.0.1:9000/hooks").unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:9000/hooks");
        assert!(auth.is_none());
    }

    /// `host` as hyper would have made it: the port only when it is not the scheme's
    /// default, no user info; a configured `host` is sent instead.
    #[test]
    fn host_is_made_once_from_the_url() {
        let host = |url: &str, configured: &[(&str, &str)]| {
            let headers = configured
                .iter()
                .map(|(k, v)| (k.to_string(), crate::config::Secret::new(*v)))
                .collect();
            let client = WebhookClient::new(ClientOptions {
                url,
                timeout: Duration::from_secs(1),
                max_idle: 1,
                headers: &headers,
                tls_key: "subscriptions[0].tls",
                tls: &crate::config::TlsConfig::default(),
                egress: None,
            })
            .unwrap();
            let mut sent = HeaderMap::new();
            for (name, value) in &client.headers {
                sent.insert(name.clone(), value.clone());
            }
            sent[HOST].to_str().unwrap().to_string()
        };
        assert_eq!(host("http://u:p@127.0.0.1:9000/x", &[]), "127.0.0.1:9000");
        assert_eq!(host("https://example.com:443/x", &[]), "example.com");
        assert_eq!(host("http://[::1]:8080/", &[]), "[::1]:8080");
        assert_eq!(
            host("http://127.0.0.1:9000/", &[("host", "hooks.example")]),
            "hooks.example"
        );
    }
}
