//! The load generator and the receiver.
//!
//! Every webhook body carries the moment it was sent (`t`, microseconds since the run
//! started) and its key, padded to the body size, so the receiver can measure end-to-end
//! latency without any clock but this process's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use axum::http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::stats::Latencies;

static START: OnceLock<Instant> = OnceLock::new();

pub fn now_us() -> u64 {
    us_since_start(Instant::now())
}

/// `at`, in microseconds since the run started (the clock of the bodies' `t`).
fn us_since_start(at: Instant) -> u64 {
    at.saturating_duration_since(*START.get_or_init(Instant::now))
        .as_micros() as u64
}

/// The shape of the load.
#[derive(Clone, Debug)]
pub struct Load {
    pub concurrency: usize,
    /// Requests per second, open loop; `None` sends as fast as `concurrency` allows.
    pub rate: Option<u64>,
    pub body_size: usize,
    pub keys: usize,
    pub duration: Duration,
    /// Stop after this many requests, even before `duration` is up.
    pub count: Option<u64>,
}

/// A body for `key`, `size` bytes long, saying it was sent at `sent_us` (see [`now_us`]).
pub fn body(key: usize, size: usize, sent_us: u64) -> Vec<u8> {
    let head = format!(r#"{{"key":"key-{key}","t":{sent_us},"pad":""#);
    let pad = size.saturating_sub(head.len() + 2);
    let mut body = head.into_bytes();
    body.extend(std::iter::repeat_n(b'x', pad));
    body.extend_from_slice(b"\"}");
    body
}

/// What a load run saw.
#[derive(Default)]
pub struct Sent {
    pub ok: u64,
    pub failed: u64,
    pub latencies: Latencies,
    pub elapsed: Duration,
}

/// Sends POSTs to `url` for `load.duration`. `send` is what one request is: an HTTP POST
/// for the servers, a broker publish for the raw baselines.
///
/// Open loop (`load.rate`), requests are due on a fixed schedule, whatever the answers do,
/// and every latency (the response's, and end to end the receiver's, through the body's
/// `t`) is counted from when the request was *due*, not from when a worker got round to
/// it: a server that stalls is charged for the requests that queued behind the stall, as
/// wrk2 does, instead of the generator quietly sending fewer (coordinated omission).
pub async fn run<F, Fut>(load: &Load, send: F) -> Sent
where
    F: Fn(Vec<u8>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + load.duration;
    let started = Instant::now();
    let counter = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    // Open loop: a shared ticket dispenser paces every worker to the global rate.
    let interval = load.rate.map(|r| Duration::from_secs_f64(1.0 / r as f64));
    for _ in 0..load.concurrency {
        let (send, counter, load) = (send.clone(), counter.clone(), load.clone());
        workers.spawn(async move {
            let mut sent = Sent::default();
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if load.count.is_some_and(|count| n >= count) {
                    break;
                }
                let began = match interval {
                    Some(interval) => {
                        let due = started + interval.mul_f64(n as f64);
                        if due > deadline {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None if Instant::now() >= deadline => break,
                    None => Instant::now(),
                };
                let body = body(
                    n as usize % load.keys.max(1),
                    load.body_size,
                    us_since_start(began),
                );
                if send(body).await {
                    sent.ok += 1;
                    sent.latencies.record(began.elapsed());
                } else {
                    sent.failed += 1;
                }
            }
            sent
        });
    }
    let mut total = Sent::default();
    while let Some(Ok(part)) = workers.join_next().await {
        total.ok += part.ok;
        total.failed += part.failed;
        total.latencies.extend(part.latencies);
    }
    total.elapsed = started.elapsed();
    total
}

/// The load generator's client: hyper's pooled HTTP/1.1 client, the same stack hookbridge
/// delivers with, so the delivery limit is measured with what hookbridge pays per request.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client(concurrency: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build(connector)
}

pub fn http_sender(
    client: HttpClient,
    url: String,
) -> impl Fn(Vec<u8>) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    http_sender_with(client, url, Vec::new(), |body| body)
}

/// An HTTP sender that adds `headers` to every request and sends `wrap(body)`: a peer's
/// API takes the same event in its own envelope and with its own credentials.
pub fn http_sender_with(
    client: HttpClient,
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    wrap: fn(Vec<u8>) -> Vec<u8>,
) -> impl Fn(Vec<u8>) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    let uri: Uri = url.parse().expect("a valid URL");
    let headers = Arc::new(headers);
    move |body: Vec<u8>| {
        let (client, uri, headers) = (client.clone(), uri.clone(), headers.clone());
        Box::pin(async move {
            let mut request = Request::new(Full::new(Bytes::from(wrap(body))));
            *request.method_mut() = Method::POST;
            *request.uri_mut() = uri;
            request
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            for (name, value) in headers.iter() {
                request.headers_mut().insert(name.clone(), value.clone());
            }
            match client.request(request).await {
                // Read the answer to its end so the connection goes back to the pool.
                Ok(response) => {
                    let ok = response.status().is_success();
                    response.into_body().collect().await.is_ok() && ok
                }
                Err(_) => false,
            }
        })
    }
}

/// The subscriber side: answers 200 (or never, when stalled) and records end-to-end latency.
pub struct Receiver {
    pub url: String,
    state: Arc<ReceiverState>,
}

/// How a receiver answers, fixed when it starts: at once and always 200 unless told
/// otherwise (the scale-out scenario's slow receiver with one failing key).
#[derive(Default, Clone)]
pub struct Behaviour {
    /// Every request, whatever its answer, is answered this long after it arrived.
    pub delay: Duration,
    /// Events of this key (`"key":"<it>"` in the body) are answered 500, and counted apart.
    pub failing_key: Option<String>,
    /// Keep the arrival time of every 200, for a rate over any window ([`Receiver::arrivals`]).
    pub arrivals: bool,
}

#[derive(Default)]
struct ReceiverState {
    behaviour: Behaviour,
    /// `"key":"<failing key>"`, the bytes to look for.
    failing: Option<Vec<u8>>,
    received: AtomicU64,
    failed: AtomicU64,
    stalled: AtomicBool,
    latencies: Mutex<Latencies>,
    arrivals: Mutex<Vec<u64>>,
    first_at_us: AtomicU64,
    last_at_us: AtomicU64,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver::start_with(Behaviour::default()).await
    }

    pub async fn start_with(behaviour: Behaviour) -> Receiver {
        let state = Arc::new(ReceiverState {
            failing: behaviour
                .failing_key
                .as_ref()
                .map(|key| format!(r#""key":"{key}""#).into_bytes()),
            behaviour,
            ..ReceiverState::default()
        });
        let handler_state = state.clone();
        let handler = move |body: Bytes| {
            let state = handler_state.clone();
            async move {
                if state.stalled.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
                if !state.behaviour.delay.is_zero() {
                    tokio::time::sleep(state.behaviour.delay).await;
                }
                if let Some(failing) = &state.failing
                    && body.windows(failing.len()).any(|w| w == failing.as_slice())
                {
                    state.failed.fetch_add(1, Ordering::Relaxed);
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                if state.behaviour.arrivals {
                    state.arrivals.lock().unwrap().push(now_us());
                }
                if let Some(sent) = sent_at(&body) {
                    let now = now_us();
                    state
                        .latencies
                        .lock()
                        .unwrap()
                        .record(Duration::from_micros(now.saturating_sub(sent)));
                    let _ = state.first_at_us.compare_exchange(
                        0,
                        now,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    state.last_at_us.store(now, Ordering::Relaxed);
                }
                state.received.fetch_add(1, Ordering::Relaxed);
                StatusCode::OK
            }
        };
        let app = axum::Router::new().route("/hook", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, state }
    }

    pub fn stall(&self, stalled: bool) {
        self.state.stalled.store(stalled, Ordering::Relaxed);
    }

    pub fn received(&self) -> u64 {
        self.state.received.load(Ordering::Relaxed)
    }

    /// Requests answered 500 for the failing key, since the receiver started.
    pub fn failed(&self) -> u64 {
        self.state.failed.load(Ordering::Relaxed)
    }

    /// Takes the arrival times (see [`now_us`]) of the 200s recorded so far, in order, and
    /// starts afresh; empty unless [`Behaviour::arrivals`].
    pub fn take_arrivals(&self) -> Vec<u64> {
        std::mem::take(&mut *self.state.arrivals.lock().unwrap())
    }

    /// Takes the latencies recorded so far and starts afresh.
    pub fn take(&self) -> (u64, Latencies) {
        let latencies = std::mem::take(&mut *self.state.latencies.lock().unwrap());
        self.state.first_at_us.store(0, Ordering::Relaxed);
        (self.state.received.swap(0, Ordering::Relaxed), latencies)
    }

    /// Microseconds since the run started at which the first delivery since the last
    /// [`Receiver::take`] arrived.
    pub fn first_at_us(&self) -> u64 {
        self.state.first_at_us.load(Ordering::Relaxed)
    }

    /// Microseconds since the run started at which the last delivery arrived.
    pub fn last_at_us(&self) -> u64 {
        self.state.last_at_us.load(Ordering::Relaxed)
    }
}

/// `t` of a body made by [`body`], without parsing the whole JSON. A peer may deliver the
/// fields in another order (sorted, say), so `t` is looked for wherever it is.
fn sent_at(body: &[u8]) -> Option<u64> {
    let at = body.windows(4).position(|w| w == b"\"t\":")? + 4;
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// A bare axum handler answering 202: the HTTP limit of this machine and load generator.
pub async fn bare_handler() -> String {
    bare_handler_at("127.0.0.1:0".parse().unwrap()).await
}

/// The bare handler on `addr`.
pub async fn bare_handler_at(addr: std::net::SocketAddr) -> String {
    let app = axum::Router::new().route(
        "/hooks/{route}",
        axum::routing::post(|_body: Bytes| async { (StatusCode::ACCEPTED, r#"{"id":"x"}"#) }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let url = format!("http://{}/hooks/bench", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}
