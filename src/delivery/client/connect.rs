//! Opening one connection to a subscription's endpoint: TCP (each resolved address in
//! turn), the egress guard's check of the address reached, TLS for `https`, then hyper's
//! HTTP/1.1 handshake. The connection's I/O runs in a task of its own; what comes back is
//! the handle requests are sent through.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::egress::EgressGuard;

/// A connection's handle: requests go in, responses come out, one at a time.
pub type Sender = http1::SendRequest<Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {authority}: {source}")]
    Io {
        authority: String,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {0}: timed out")]
    Timeout(String),
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
    host: String,
    port: u16,
    /// `host:port`, for errors.
    authority: String,
    /// For `https`: the TLS settings and the name the certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    guard: Option<Arc<EgressGuard>>,
    connect_timeout: Duration,
}

impl Connector {
    pub fn new(
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        guard: Option<Arc<EgressGuard>>,
        connect_timeout: Duration,
    ) -> Result<Connector, rustls::pki_types::InvalidDnsNameError> {
        // An IPv6 literal comes bracketed in a URL; neither the resolver nor TLS wants that.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tls = match tls {
            Some(config) => Some((
                TlsConnector::from(config),
                ServerName::try_from(host.to_string())?,
            )),
            None => None,
        };
        Ok(Connector {
            host: host.to_string(),
            port,
            authority: format!("{host}:{port}"),
            tls,
            guard,
            connect_timeout,
        })
    }

    /// A new connection, ready for a request.
    pub async fn connect(&self) -> Result<Sender, ConnectError> {
        let tcp = tokio::time::timeout(self.connect_timeout, self.tcp())
            .await
            .map_err(|_| ConnectError::Timeout(self.authority.clone()))??;
        match &self.tls {
            None => self.handshake(tcp).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| self.io(source))?;
                self.handshake(tls).await
            }
        }
    }

    /// A TCP connection to the first address that takes one, if the guard lets it be used.
    async fn tcp(&self) -> Result<TcpStream, ConnectError> {
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|source| self.io(source))?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
        for address in addresses {
            match TcpStream::connect(address).await {
                Ok(stream) => {
                    let peer = stream.peer_addr().map_err(|source| self.io(source))?.ip();
                    if let Some(guard) = &self.guard
                        && !guard.permits(peer)
                    {
                        // Dropped here: closed before a byte is sent.
                        return Err(ConnectError::EgressDenied(peer));
                    }
                    stream.set_nodelay(true).map_err(|source| self.io(source))?;
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        Err(self.io(last))
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

    fn io(&self, source: io::Error) -> ConnectError {
        ConnectError::Io {
            authority: self.authority.clone(),
            source,
        }
    }
}
