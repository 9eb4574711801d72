//! The HTTP client a subscription delivers with: HTTP/1.1 over rustls through a pool of
//! its own ([`pool`], [`connect`]), the system's trust store (plus the subscription's
//! private CA and client certificate, `tls`, see `crate::tls`), the subscription's static
//! `headers`, no redirects, one deadline per attempt.
//!
//! Why not reqwest or hyper-util's pooled client: a delivery is always the same POST to the
//! same URL, so none of their layers earn their cost on this path. reqwest's redirect layer
//! re-parsed the request URL twice per request (about 6% of the delivery CPU); hyper-util's
//! pool hashed its key and boxed a future per request (BENCHMARKS.md). Here the URL is
//! parsed once, at start-up, and a request goes straight to a kept connection.

mod connect;
mod pool;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{
    AUTHORIZATION, HOST, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT,
};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};

use crate::egress::EgressGuard;
use connect::{ConnectError, Connector};
use pool::Pool;

/// A response body longer than this is not read to its end: the connection is closed
/// instead of kept. Receivers answer a webhook with a few bytes at most.
const MAX_DRAINED_BODY: usize = 64 * 1024;

/// Where and how one subscription's deliveries go.
pub struct WebhookClient {
    connector: Connector,
    pool: Pool,
    /// The URL as given (redacted when shown).
    uri: Uri,
    /// The request line's target: the URL's path and query.
    target: Uri,
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

impl From<ConnectError> for SendError {
    fn from(error: ConnectError) -> SendError {
        match error {
            ConnectError::EgressDenied(ip) => SendError::EgressDenied(ip),
            other => SendError::Failed(crate::error_chain(&other)),
        }
    }
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
        // Built for `http` URLs too, so a bad `tls` is reported whatever the scheme.
        let tls = Arc::new(crate::tls::client_config(options.tls_key, options.tls)?);
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let authority = uri
            .authority()
            .ok_or_else(|| ClientError::Url("no host".to_string()))?;
        let connector = Connector::new(
            &uri,
            https.then_some(tls),
            options.egress,
            options.timeout.min(Duration::from_secs(5)),
        );
        let target = match uri.path_and_query() {
            Some(target) => Uri::from(target.clone()),
            None => Uri::from_static("/"),
        };
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
        // `host` made once here; a `host` among the configured headers still wins.
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| ClientError::Url(e.to_string()))?;
        headers.insert(0, (HOST, host));
        Ok(WebhookClient {
            connector,
            pool: Pool::new(options.max_idle),
            uri,
            target,
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
    /// can be kept. The whole exchange is bounded by the subscription's timeout.
    pub async fn post(&self, mut headers: HeaderMap, body: Bytes) -> Result<Answer, SendError> {
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.target.clone();
        *request.headers_mut() = headers;
        tokio::time::timeout(self.timeout, self.exchange(request))
            .await
            .unwrap_or(Err(SendError::Timeout(self.timeout)))
    }

    /// Sends `request` on a kept connection, or a new one when none is left, and reads the
    /// answer. A kept connection the receiver closed just as it was taken fails the request
    /// before a byte of it is written: it goes again on the next connection.
    async fn exchange(&self, mut request: Request<Full<Bytes>>) -> Result<Answer, SendError> {
        loop {
            let (mut sender, kept) = match self.pool.take() {
                Some(sender) => (sender, true),
                // Boxed: connecting (TLS above all) takes kilobytes of state, which every
                // attempt's future would otherwise carry, and copy, for the rare one that
                // connects.
                None => (Box::pin(self.connector.connect()).await?, false),
            };
            if let Err(e) = sender.ready().await {
                if kept {
                    continue;
                }
                return Err(SendError::Failed(crate::error_chain(&e)));
            }
            let response = match sender.try_send_request(request).await {
                Ok(response) => response,
                Err(mut e) => match e.take_message() {
                    Some(unsent) if kept => {
                        request = unsent;
                        continue;
                    }
                    _ => return Err(SendError::Failed(crate::error_chain(e.error()))),
                },
            };
            let (parts, mut body) = response.into_parts();
            let mut read = 0;
            while read <= MAX_DRAINED_BODY {
                match body.frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                    // The status is what counts; a body cut short only costs the connection.
                    Some(Err(_)) => break,
                    None => {
                        self.pool.give_back(sender);
                        break;
                    }
                }
            }
            return Ok(Answer {
                status: parts.status,
                retry_after: parts.headers.get(RETRY_AFTER).cloned(),
            });
        }
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

    /// A receiver speaking HTTP/1.1 by hand: answers 200 to each request, counting the
    /// connections it accepted, and after each answer either keeps the connection,
    /// announces `connection: close`, or closes it without a word.
    async fn receiver(after: &'static str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/in", listener.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buffer.len() < end + 4 + length {
                            let n = socket.read(&mut chunk).await.unwrap();
                            buffer.extend_from_slice(&chunk[..n]);
                        }
                        buffer.drain(..end + 4 + length);
                        let close = if after == "announce" {
                            "connection: close\r\n"
                        } else {
                            ""
                        };
                        let answer =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{close}\r\nok");
                        socket.write_all(answer.as_bytes()).await.unwrap();
                        if after != "keep" {
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    fn client(url: &str) -> WebhookClient {
        WebhookClient::new(ClientOptions {
            url,
            timeout: Duration::from_secs(5),
            max_idle: 4,
            headers: &Default::default(),
            tls_key: "subscriptions[0].tls",
            tls: &crate::config::TlsConfig::default(),
            egress: None,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_kept_connection_carries_the_next_request() {
        let (url, accepted) = receiver("keep").await;
        let client = client(&url);
        for _ in 0..5 {
            let answer = client
                .post(HeaderMap::new(), Bytes::from_static(b"{}"))
                .await;
            assert_eq!(answer.unwrap().status, StatusCode::OK);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// Whether the receiver says it closes or just closes, the next request goes on a new
    /// connection and gets its answer.
    #[tokio::test]
    async fn a_connection_the_receiver_closed_is_not_used_again() {
        for after in ["announce", "close"] {
            let (url, accepted) = receiver(after).await;
            let client = client(&url);
            for _ in 0..5 {
                let answer = client
                    .post(HeaderMap::new(), Bytes::from_static(b"{}"))
                    .await;
                assert_eq!(answer.unwrap().status, StatusCode::OK, "{after}");
                // Let the close reach the client, as it does between deliveries.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(
                accepted.load(std::sync::atomic::Ordering::SeqCst),
                5,
                "{after}"
            );
        }
    }

    /// A connection idle past the pool's limit is not used again: after a quiet spell the
    /// next request goes on a new one.
    #[tokio::test]
    async fn a_connection_idle_too_long_is_not_used_again() {
        let (url, accepted) = receiver("keep").await;
        let mut client = client(&url);
        client.pool = Pool::with_idle_timeout(4, Duration::from_millis(50));
        for _ in 0..2 {
            let answer = client
                .post(HeaderMap::new(), Bytes::from_static(b"{}"))
                .await;
            assert_eq!(answer.unwrap().status, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// A host `url` takes and rustls does not (a label ending in `-`) fails the attempts
    /// that would connect to it, as an unreachable host does, not the whole config: the
    /// client is built (`client` unwraps).
    #[test]
    fn a_host_tls_refuses_fails_attempts_not_the_config() {
        let host = "bad-.example.com";
        assert!(rustls::pki_types::ServerName::try_from(host).is_err());
        client(&format!("https://{host}/in"));
    }
}
