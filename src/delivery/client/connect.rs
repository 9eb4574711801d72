//! Opening one connection to a subscription's endpoint: TCP through hyper-util's connector
//! (DNS outside the connect timeout, the timeout shared among the addresses, the other
//! address family tried after 300 ms), the egress guard's check of the address reached, TLS
//! for `https`, then hyper's HTTP/1.1 handshake. The connection's I/O runs in a task of its
//! own; what comes back is the handle requests are sent through.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tower::ServiceExt;

use crate::egress::EgressGuard;

/// A connection's handle: requests go in, responses come out, one at a time.
pub type Sender = http1::SendRequest<Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {authority}: {reason}")]
    Tcp { authority: String, reason: String },
    #[error("TLS with {authority}: {source}")]
    Tls {
        authority: String,
        #[source]
        source: io::Error,
    },
    /// The address reached is one `server.egress` does not let deliveries use.
    #[error("egress-denied: {0}")]
    EgressDenied(IpAddr),
    #[error("HTTP/1.1 handshake with {authority}: {source}")]
    Handshake {
        authority: String,
        #[source]
        source: hyper::Error,
    },
}

/// Where connections go and how they are secured; made once per subscription.
pub struct Connector {
    tcp: HttpConnector,
    /// The endpoint's URL; the TCP connector reads its scheme, host and port.
    uri: Uri,
    /// `host:port` (an IPv6 host in brackets), for errors.
    authority: String,
    /// For `https`: the TLS settings, and the host the certificate must name.
    tls: Option<(TlsConnector, String)>,
    guard: Option<Arc<EgressGuard>>,
}

impl Connector {
    /// `uri` is the endpoint's URL without user info.
    pub fn new(
        uri: &Uri,
        tls: Option<Arc<rustls::ClientConfig>>,
        guard: Option<Arc<EgressGuard>>,
        connect_timeout: Duration,
    ) -> Connector {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        let host = uri.host().unwrap_or_default();
        let port = uri
            .port_u16()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        // An IPv6 literal comes bracketed in a URL; TLS wants the address alone.
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Connector {
            tcp,
            uri: uri.clone(),
            authority: format!("{host}:{port}"),
            tls: tls.map(|config| (TlsConnector::from(config), bare)),
            guard,
        }
    }

    /// A new connection, ready for a request.
    pub async fn connect(&self) -> Result<Sender, ConnectError> {
        let tcp = self.tcp().await?;
        match &self.tls {
            None => self.handshake(tcp).await,
            Some((connector, host)) => {
                // Made here, not at start-up: a host rustls refuses fails its attempts, as
                // an unreachable one does, rather than the whole config.
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| self.tls_error(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|source| self.tls_error(source))?;
                self.handshake(tls).await
            }
        }
    }

    /// A TCP connection, if the guard lets the address it reached be used.
    async fn tcp(&self) -> Result<TcpStream, ConnectError> {
        let failed = |reason: String| ConnectError::Tcp {
            authority: self.authority.clone(),
            reason,
        };
        let stream = self
            .tcp
            .clone()
            .oneshot(self.uri.clone())
            .await
            .map_err(|e| failed(crate::error_chain(&e)))?
            .into_inner();
        if let Some(guard) = &self.guard {
            let peer = stream.peer_addr().map_err(|e| failed(e.to_string()))?.ip();
            if !guard.permits(peer) {
                // Dropped here: closed before a byte is sent.
                return Err(ConnectError::EgressDenied(peer));
            }
        }
        Ok(stream)
    }

    async fn handshake<S>(&self, stream: S) -> Result<Sender, ConnectError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) =
            http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|source| ConnectError::Handshake {
                    authority: self.authority.clone(),
                    source,
                })?;
        // Ends when the connection closes: by either side, or when its handle is dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    fn tls_error(&self, source: io::Error) -> ConnectError {
        ConnectError::Tls {
            authority: self.authority.clone(),
            source,
        }
    }
}
