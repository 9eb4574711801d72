//! A real HTTP receiver for delivery tests: an axum server on a loopback port that records
//! every request and answers as the test tells it (succeed, fail, stall, 429...).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// One request as received, with the answer it got.
#[derive(Clone, Debug)]
pub struct Received {
    /// When the request arrived.
    pub at: Instant,
    /// When its answer was sent.
    pub finished: Instant,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// How to answer one request.
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub retry_after: Option<u64>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
            retry_after: None,
        }
    }
}

type Behaviour = dyn Fn(&HeaderMap, &Bytes) -> Reply + Send + Sync;

pub struct Receiver {
    pub url: String,
    log: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Arc<Behaviour>>>,
}

impl Receiver {
    /// Starts a receiver that answers 200 until told otherwise.
    pub async fn start() -> Receiver {
        Receiver::serve(None).await
    }

    /// Like [`Receiver::start`], over HTTPS with `tls` (`https://localhost:PORT/hook`).
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Receiver {
        Receiver::serve(Some(tls)).await
    }

    async fn serve(tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let log: Arc<Mutex<Vec<Received>>> = Arc::default();
        let behaviour: Arc<Mutex<Arc<Behaviour>>> =
            Arc::new(Mutex::new(Arc::new(|_: &HeaderMap, _: &Bytes| {
                Reply::status(200)
            })));
        let (state_log, state_behaviour) = (log.clone(), behaviour.clone());
        let handler = move |headers: HeaderMap, body: Bytes| {
            let (log, behaviour) = (state_log.clone(), state_behaviour.clone());
            async move {
                let at = Instant::now();
                let decide = behaviour.lock().unwrap().clone();
                let reply = decide(&headers, &body);
                if !reply.delay.is_zero() {
                    tokio::time::sleep(reply.delay).await;
                }
                log.lock().unwrap().push(Received {
                    at,
                    finished: Instant::now(),
                    headers,
                    body,
                    status: reply.status,
                });
                let mut response: Response =
                    StatusCode::from_u16(reply.status).unwrap().into_response();
                if let Some(seconds) = reply.retry_after {
                    response.headers_mut().insert("retry-after", seconds.into());
                }
                response
            }
        };
        let app = axum::Router::new().route("/hook", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match &tls {
            Some(_) => format!("https://localhost:{port}/hook"),
            None => format!("http://127.0.0.1:{port}/hook"),
        };
        match tls {
            None => {
                tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            }
            Some(tls) => {
                tokio::spawn(serve_tls(listener, app, tls));
            }
        }
        Receiver {
            url,
            log,
            behaviour,
        }
    }

    /// Replaces how requests are answered.
    pub fn answer(&self, f: impl Fn(&HeaderMap, &Bytes) -> Reply + Send + Sync + 'static) {
        *self.behaviour.lock().unwrap() = Arc::new(f);
    }

    /// Answers 500 to the events of `key` while `failing` is set, 200 to everything else.
    pub fn fail_key_while(
        &self,
        key: &'static str,
        failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) {
        self.answer(move |_, body| {
            let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            if body["key"] == key && failing.load(std::sync::atomic::Ordering::SeqCst) {
                Reply::status(500)
            } else {
                Reply::status(200)
            }
        });
    }

    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Waits until `done` holds for the requests so far, or panics after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.log.lock().unwrap()) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; {} requests received",
                    self.count()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// HTTPS: a handshake per connection (a failed one, e.g. a client without the certificate
/// the receiver demands, only ends that connection), then HTTP/1.1.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `(key, seq)` of a delivery whose JSON body carries them.
pub fn seq_of(r: &Received) -> (String, u64) {
    let body = r.json();
    (
        body["key"].as_str().unwrap_or_default().to_string(),
        body["seq"].as_u64().unwrap_or(u64::MAX),
    )
}

/// Per key, the first delivery of each event arrived in publish (`seq`) order; repeats of
/// an event already delivered (redeliveries) are ignored.
pub fn assert_first_deliveries_in_order(received: &[Received]) {
    let mut first: std::collections::HashMap<String, Vec<u64>> = Default::default();
    let mut seen = std::collections::HashSet::new();
    for r in received {
        let (key, seq) = seq_of(r);
        if seen.insert(seq) {
            first.entry(key).or_default().push(seq);
        }
    }
    for (key, seqs) in &first {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{key}: first deliveries in publish order: {seqs:?}"
        );
    }
}

/// No two requests for one key were on the wire at the same time: a later event of a key
/// never overlaps an earlier one, whichever replica sent them (G3 across handovers).
pub fn assert_no_overlap_per_key(received: &[Received]) {
    let mut per_key: std::collections::HashMap<String, Vec<&Received>> = Default::default();
    for r in received {
        per_key.entry(seq_of(r).0).or_default().push(r);
    }
    let mut overlaps = Vec::new();
    for (key, mut requests) in per_key {
        requests.sort_by_key(|r| r.at);
        for pair in requests.windows(2) {
            if pair[1].at < pair[0].finished {
                overlaps.push(format!(
                    "{key}: seq {} started {:?} before seq {} was answered",
                    seq_of(pair[1]).1,
                    pair[0].finished - pair[1].at,
                    seq_of(pair[0]).1
                ));
            }
        }
    }
    assert!(
        overlaps.is_empty(),
        "{} overlapping requests for one key, e.g. {:?}",
        overlaps.len(),
        &overlaps[..overlaps.len().min(5)]
    );
}

/// Whether any event of `key` was answered 2xx.
pub fn any_delivered_of(received: &[Received], key: &str) -> bool {
    received.iter().any(|r| r.ok() && seq_of(r).0 == key)
}

/// Every `seq` in `seqs` was answered 2xx at least once.
pub fn all_delivered(received: &[Received], seqs: impl IntoIterator<Item = u64>) -> bool {
    let ok: std::collections::HashSet<u64> = received
        .iter()
        .filter(|r| r.ok())
        .map(|r| seq_of(r).1)
        .collect();
    seqs.into_iter().all(|s| ok.contains(&s))
}
