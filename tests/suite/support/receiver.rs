//! A real HTTP receiver for delivery tests: an axum server on a loopback port that records
//! every request and answers as the test tells it (succeed, fail, stall, 429...).
//!
//! A request is recorded when it starts, and ends either when its answer is sent or when
//! hookbridge goes away first (its timeout, a stop, a kill, a fenced replica dropping its
//! attempts): axum then drops the handler mid-flight, and a guard records the request as
//! abandoned at that moment. An abandoned request was on the wire until then, so the overlap
//! check sees it, but it is not a delivery.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// One request as received: when it started, when and how it ended.
#[derive(Clone, Debug)]
pub struct Received {
    /// When the request arrived.
    pub at: Instant,
    /// When it ended: its answer was sent or, if `abandoned`, hookbridge went away.
    pub finished: Instant,
    /// Hookbridge went away before the answer (the connection closed mid-flight): on the
    /// wire from `at` to `finished`, but not a delivery (`ok()` is false).
    pub abandoned: bool,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status it was answered with (if abandoned: would have been).
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
    /// Delivered: answered, and answered 2xx.
    pub fn ok(&self) -> bool {
        !self.abandoned && (200..300).contains(&self.status)
    }
}

/// Every request so far.
#[derive(Default)]
struct Log {
    /// Requests on the wire now, by arrival number.
    on_the_wire: BTreeMap<u64, Received>,
    arrivals: u64,
    /// Requests that ended (answered or abandoned), in the order they ended.
    ended: Vec<Received>,
}

/// A request on the wire: recorded in the log when it starts; moved to the ended ones when
/// it is answered, or, dropped unanswered (axum drops the handler when the client goes
/// away), as abandoned at the moment of the drop.
struct OnTheWire {
    log: Arc<Mutex<Log>>,
    arrival: u64,
    ended: bool,
}

impl OnTheWire {
    fn start(log: &Arc<Mutex<Log>>, request: Received) -> OnTheWire {
        let mut entries = log.lock().unwrap();
        let arrival = entries.arrivals;
        entries.arrivals += 1;
        entries.on_the_wire.insert(arrival, request);
        OnTheWire {
            log: log.clone(),
            arrival,
            ended: false,
        }
    }

    /// The answer is being sent.
    fn answered(mut self) {
        self.end(false);
    }

    fn end(&mut self, abandoned: bool) {
        self.ended = true;
        // Also called while a panicking test unwinds: a poisoned log is still the log.
        let mut entries = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut request) = entries.on_the_wire.remove(&self.arrival) {
            request.finished = Instant::now();
            request.abandoned = abandoned;
            entries.ended.push(request);
        }
    }
}

impl Drop for OnTheWire {
    fn drop(&mut self) {
        if !self.ended {
            self.end(true);
        }
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
    log: Arc<Mutex<Log>>,
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
        let log: Arc<Mutex<Log>> = Arc::default();
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
                // Should hookbridge go away before the answer, axum drops this future here
                // and the guard records the request as abandoned.
                let on_the_wire = OnTheWire::start(
                    &log,
                    Received {
                        at,
                        finished: at,
                        abandoned: false,
                        headers,
                        body,
                        status: reply.status,
                    },
                );
                if !reply.delay.is_zero() {
                    tokio::time::sleep(reply.delay).await;
                }
                on_the_wire.answered();
                let mut response: Response =
                    StatusCode::from_u16(reply.status).unwrap().into_response();
                if let Some(seconds) = reply.retry_after {
                    response.headers_mut().insert("retry-after", seconds.into());
                }
                response
            }
        };
        // Any path: a subscriber URL may carry more than `/hook` (a Slack-style secret path).
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(handler.clone()))
            .route("/{*rest}", axum::routing::post(handler));
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

    /// The requests that ended so far (answered or abandoned), in the order they ended.
    /// A request still on the wire is not among them yet.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().ended.clone()
    }

    /// How many requests ended so far (answered or abandoned).
    pub fn count(&self) -> usize {
        self.log.lock().unwrap().ended.len()
    }

    /// How many requests are on the wire now.
    pub fn on_the_wire(&self) -> usize {
        self.log.lock().unwrap().on_the_wire.len()
    }

    /// Waits until `done` holds for the requests ended so far, or panics after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.log.lock().unwrap().ended) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; {} requests received, {} on the wire",
                    self.count(),
                    self.on_the_wire()
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

/// Per key, the first request of each event started in publish (`seq`) order; repeats of an
/// event already sent (retries, redeliveries) are ignored. Every request counts, abandoned
/// ones too: hookbridge sent them, whatever became of them.
pub fn assert_first_deliveries_in_order(received: &[Received]) {
    let mut by_arrival: Vec<&Received> = received.iter().collect();
    by_arrival.sort_by_key(|r| r.at);
    let mut first: std::collections::HashMap<String, Vec<u64>> = Default::default();
    let mut seen = std::collections::HashSet::new();
    for r in by_arrival {
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

/// No two requests for one key were on the wire at the same time: a request of a key never
/// starts before every earlier one of that key has ended, answered or abandoned (a request
/// hookbridge cut off mid-flight was on the wire until then), whichever replica sent them
/// (G3 across handovers).
pub fn assert_no_overlap_per_key(received: &[Received]) {
    let mut per_key: std::collections::HashMap<String, Vec<&Received>> = Default::default();
    for r in received {
        per_key.entry(seq_of(r).0).or_default().push(r);
    }
    let mut overlaps = Vec::new();
    for (key, mut requests) in per_key {
        requests.sort_by_key(|r| r.at);
        // Of the key's requests started so far, the one that ended last.
        let mut last_to_end: Option<&Received> = None;
        for r in requests {
            if let Some(earlier) = last_to_end
                && r.at < earlier.finished
            {
                overlaps.push(format!(
                    "{key}: seq {} started {:?} before seq {} was {}",
                    seq_of(r).1,
                    earlier.finished - r.at,
                    seq_of(earlier).1,
                    if earlier.abandoned {
                        "abandoned"
                    } else {
                        "answered"
                    }
                ));
            }
            if last_to_end.is_none_or(|earlier| r.finished > earlier.finished) {
                last_to_end = Some(r);
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

/// Whether any event of `key` was answered 2xx (delivered).
pub fn any_delivered_of(received: &[Received], key: &str) -> bool {
    received.iter().any(|r| r.ok() && seq_of(r).0 == key)
}

/// Every `seq` in `seqs` was answered 2xx (delivered) at least once.
pub fn all_delivered(received: &[Received], seqs: impl IntoIterator<Item = u64>) -> bool {
    let ok: std::collections::HashSet<u64> = received
        .iter()
        .filter(|r| r.ok())
        .map(|r| seq_of(r).1)
        .collect();
    seqs.into_iter().all(|s| ok.contains(&s))
}
