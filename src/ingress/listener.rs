//! The ingress's own accept loop, so that slow or too many senders cannot hold it:
//!
//! - a connection cap (`server.max_connections`): past it, the listener stops accepting and
//!   new senders wait in the kernel's backlog instead of each holding a task and a buffer;
//! - a header read timeout (`server.read_timeout`): a connection that does not finish
//!   sending its request head in time is closed (hyper answers nothing then; the body's
//!   timeout, which gets a 408 problem, is the handler's, see `read_body`);
//! - an idle timeout (`server.idle_timeout`): a connection with no request open that long
//!   is closed, HTTP/2 included ([`super::idle`]); an HTTP/2 connection has at most
//!   `MAX_STREAMS` requests open, and a peer that stops answering pings is dropped;
//! - graceful shutdown: no new connections, requests in flight finish;
//! - HTTPS when `server.tls` is set: the handshake runs in the connection's task (bounded by
//!   the read timeout, so a sender that never finishes it holds nothing long), and ALPN
//!   picks HTTP/2 or HTTP/1.1.
//!
//! axum's `serve` offers none of the first two, hence this small loop over hyper.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::idle::Activity;

/// Requests open at once on one HTTP/2 connection.
const MAX_STREAMS: u32 = 100;

/// What bounds the senders' use of the ingress.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits at most `grace` for the
/// connections' requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.read_timeout);
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    // Said once each time the cap is reached, not once per connection.
    let mut at_capacity = false;
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
            () = &mut shutdown => break,
        };
        let full = permits.available_permits() == 0;
        if full && !at_capacity {
            tracing::warn!(
                max_connections = limits.max_connections,
                "the ingress is at server.max_connections; new senders wait"
            );
        }
        at_capacity = full;
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let requests = activity.clone();
        let service = app
            .clone()
            .map_request(move |mut request: hyper::Request<Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                request
            })
            .map_future(move |answer| {
                let open = requests.begin();
                async move {
                    let answered = answer.await;
                    drop(open);
                    answered
                }
            })
            .map_err(|e: Infallible| match e {});
        let service = TowerToHyperService::new(service);
        let (http1, http2, watcher, tls) = (
            http1.clone(),
            http2.clone(),
            graceful.watcher(),
            tls.clone(),
        );
        tokio::spawn(async move {
            let connection = async {
                match tls {
                    None => {
                        watcher
                            .watch(http1.serve_connection(TokioIo::new(stream), service))
                            .await
                    }
                    Some(acceptor) => {
                        let Some(stream) =
                            handshake(acceptor, stream, limits.read_timeout, peer).await
                        else {
                            return Ok(());
                        };
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        let io = TokioIo::new(stream);
                        if h2 {
                            watcher.watch(http2.serve_connection(io, service)).await
                        } else {
                            watcher.watch(http1.serve_connection(io, service)).await
                        }
                    }
                }
            };
            // Idle, the connection is dropped: it has no request to finish.
            let ended = tokio::select! {
                ended = connection => ended,
                () = activity.idle_for(limits.idle_timeout) => {
                    tracing::debug!(%peer, "idle ingress connection closed");
                    Ok(())
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "ingress connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within server.shutdown_timeout");
    }
}

/// The sender's TLS handshake, bounded by the read timeout; `None` (logged) if it fails.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    timeout: Duration,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake with a sender failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake with a sender timed out");
            None
        }
    }
}
