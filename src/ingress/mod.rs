//! The ingress (ARCHITECTURE.md §4): `POST /hooks/{route}` → size limit → verify → envelope →
//! publish → `202 {"id": ...}`, only after the broker's durable ack.
//!
//! Every rejection is an RFC 9457 problem and publishes nothing. The steps are in the order
//! that rejects cheapest first and never trusts the body before its signature is checked.

// Rejections are the cold path and a `Problem` is built once per rejected request; boxing
// it would add an allocation for no gain.
#![allow(clippy::result_large_err)]

mod extract;
mod idle;
pub mod listener;
pub mod route;
mod verify;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use self::extract::JsonBody;
use self::route::Route;
use crate::broker::{BrokerError, Publisher};
use crate::config::Config;
use crate::envelope::{self, Envelope, Header};
use crate::metrics;
use crate::problem::Problem;
use crate::tracecontext;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// What a 503 asks the sender to wait before retrying, in seconds.
const RETRY_AFTER_SECS: u64 = 5;

pub struct Ingress {
    /// Swapped whole by a config reload: a request sees the old routes or the new ones.
    routes: RwLock<Arc<Routes>>,
    publisher: Arc<dyn Publisher>,
    read_timeout: std::time::Duration,
}

/// What a reload changes in the ingress.
struct Routes {
    by_name: HashMap<String, Arc<Route>>,
    max_body: usize,
}

impl Routes {
    fn new(config: &Config) -> Routes {
        Routes {
            by_name: config
                .routes
                .iter()
                .map(|r| (r.name.clone(), Arc::new(Route::from_config(r))))
                .collect(),
            max_body: config.server.max_body.0 as usize,
        }
    }
}

impl Ingress {
    pub fn new(config: &Config, publisher: Arc<dyn Publisher>) -> Arc<Ingress> {
        Arc::new(Ingress {
            routes: RwLock::new(Arc::new(Routes::new(config))),
            publisher,
            read_timeout: config.server.read_timeout.0,
        })
    }

    /// Serves `config`'s routes from the next request on; requests under way finish with
    /// the route they started with.
    pub fn reload(&self, config: &Config) {
        *self.routes.write().expect("routes lock") = Arc::new(Routes::new(config));
    }

    fn routes(&self) -> Arc<Routes> {
        self.routes.read().expect("routes lock").clone()
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/hooks/{route}", axum::routing::any(receive))
            .fallback(|uri: Uri| async move {
                Problem::not_found(format!(
                    "no such path {}; webhooks are posted to /hooks/{{route}}",
                    uri.path()
                ))
                .at(uri.path(), None)
                .closing()
            })
            .with_state(self)
    }
}

/// The route label of requests to a path no route serves: the path itself would make the
/// label values unbounded.
const UNKNOWN_ROUTE: &str = "_unknown";

async fn receive(
    State(ingress): State<Arc<Ingress>>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let routes = ingress.routes();
    let found = routes.by_name.get(&name);
    let route = found.map_or(UNKNOWN_ROUTE, |route| route.name.as_str());
    // The SERVER span of the webhook, continuing the sender's trace when it sent one.
    let span = tracing::info_span!(
        "webhook",
        otel.name = %format!("{method} /hooks/{{route}}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = "/hooks/{route}",
        hookbridge.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    // Without an exporter the span is not created (see `telemetry`): nothing to continue.
    if !span.is_disabled() {
        let _ = span.set_parent(tracecontext::from_headers(&headers));
    }
    let response = match found {
        Some(found) => {
            handle(
                &ingress,
                found,
                routes.max_body,
                peer,
                method,
                uri,
                headers,
                body,
            )
            .instrument(span.clone())
            .await
        }
        None => Problem::not_found(format!("no route named `{name}` is configured"))
            .at(uri.path(), None)
            .closing()
            .into_response(),
    };
    span.record("http.response.status_code", response.status().as_u16());
    metrics::metrics()
        .ingress_requests
        .get_or_create(&metrics::RouteStatus {
            route: route.to_string(),
            status: response.status().as_u16(),
        })
        .inc();
    response
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    ingress: &Ingress,
    route: &Route,
    max_body: usize,
    peer: SocketAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = uri.path().to_string();
    let reject = |problem: Problem| problem.at(path.clone(), Some(&route.name)).into_response();
    if method != Method::POST {
        return reject(
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                format!("{method} is not accepted; webhooks are POSTed"),
            )
            .allow("POST")
            .closing(),
        );
    }

    let body = match tokio::time::timeout(ingress.read_timeout, read_body(&headers, body, max_body))
        .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(problem)) => return reject(problem),
        Err(_) => {
            return reject(
                Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request-timeout",
                    "Request timeout",
                    format!(
                        "the body did not arrive within {:?} (server.read_timeout)",
                        ingress.read_timeout
                    ),
                )
                .closing(),
            );
        }
    };

    let now = SystemTime::now();
    let unix_now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if let Err(e) = route.verifier.verify(&headers, &body, unix_now) {
        tracing::info!(route = %route.name, %peer, reason = %e, "webhook rejected: verification failed");
        return reject(Problem::unauthorized(e.to_string()));
    }

    let envelope = match build_envelope(route, &method, &uri, &headers, body, peer, now) {
        Ok(envelope) => envelope,
        Err(problem) => return reject(problem),
    };
    let id = envelope.id.clone();
    let record = envelope.to_record(&route.topic);

    let started = Instant::now();
    let publish = tracing::info_span!(
        "publish",
        otel.name = %format!("send {}", route.topic),
        otel.kind = "producer",
        messaging.operation.type = "send",
        messaging.destination.name = %route.topic,
        messaging.message.id = %id,
    );
    let published = tokio::time::timeout(route.publish_timeout, ingress.publisher.publish(record))
        .instrument(publish)
        .await;
    route
        .publish_duration
        .observe(metrics::seconds(started.elapsed()));
    match published {
        Ok(Ok(receipt)) => {
            tracing::debug!(route = %route.name, %id, partition = receipt.partition, offset = receipt.offset, "webhook accepted");
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({ "id": id })),
            )
                .into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(route = %route.name, %id, error = %e, "publish failed");
            let (kind, detail) = match e {
                BrokerError::Closed => ("shutting-down", "hookbridge is shutting down".to_string()),
                other => (
                    "broker-unavailable",
                    format!("the broker did not accept the webhook: {other}"),
                ),
            };
            reject(
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    kind,
                    "Broker unavailable",
                    detail,
                )
                .retry_after(RETRY_AFTER_SECS),
            )
        }
        Err(_) => {
            tracing::warn!(route = %route.name, %id, timeout = ?route.publish_timeout, "publish timed out");
            reject(
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "publish-timeout",
                    "Broker unavailable",
                    format!(
                        "the broker did not acknowledge the webhook within {:?}",
                        route.publish_timeout
                    ),
                )
                .retry_after(RETRY_AFTER_SECS),
            )
        }
    }
}

/// Reads the body up to `max` bytes: a declared length over the limit is refused before
/// reading, and a chunked body is cut off as soon as it passes the limit.
async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Body too large",
            format!("the body exceeds the limit of {max} bytes"),
        )
        .closing()
    };
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        match length.to_str().ok().and_then(|l| l.parse::<u64>().ok()) {
            Some(length) if length > max as u64 => return Err(too_large()),
            Some(_) => {}
            None => {
                return Err(Problem::bad_request(
                    "malformed-header",
                    "the Content-Length header is not a number",
                )
                .closing());
            }
        }
    }
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let length_limited = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if length_limited {
            too_large()
        } else {
            Problem::bad_request("body-read-failed", format!("reading the body failed: {e}"))
        }
    })
}

fn build_envelope(
    route: &Route,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    peer: SocketAddr,
    now: SystemTime,
) -> Result<Envelope, Problem> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let json = JsonBody::new(&body, content_type);
    let event_type = route
        .event_type
        .as_ref()
        .map(|e| e.extract(headers, &json))
        .transpose()?
        .flatten();
    let key = route
        .key
        .as_ref()
        .map(|e| e.extract(headers, &json))
        .transpose()?
        .flatten();
    let idempotency_key = route
        .idempotency
        .as_ref()
        .map(|e| e.extract(headers, &json))
        .transpose()?
        .flatten();
    let id = envelope::envelope_id(&route.name, idempotency_key.as_deref());

    let kept_headers = headers
        .iter()
        .filter(|(name, _)| route.keeps_header(name))
        .map(|(name, value)| match value.to_str() {
            Ok(text) => Header {
                name: name.as_str().to_string(),
                value: text.to_string(),
                raw_value: Bytes::new(),
            },
            Err(_) => match std::str::from_utf8(value.as_bytes()) {
                Ok(text) => Header {
                    name: name.as_str().to_string(),
                    value: text.to_string(),
                    raw_value: Bytes::new(),
                },
                Err(_) => Header {
                    name: name.as_str().to_string(),
                    value: String::new(),
                    raw_value: Bytes::copy_from_slice(value.as_bytes()),
                },
            },
        })
        .collect();
    let trace_header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);

    Ok(Envelope {
        id: id.to_string(),
        source: route.name.clone(),
        r#type: event_type.unwrap_or_default(),
        received_at: Some(prost_types::Timestamp {
            seconds: since_epoch.as_secs() as i64,
            nanos: since_epoch.subsec_nanos() as i32,
        }),
        key: key.unwrap_or_default(),
        method: method.as_str().to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        headers: kept_headers,
        content_type: content_type.unwrap_or_default().to_string(),
        body,
        idempotency_key: idempotency_key.unwrap_or_default(),
        // This webhook's own span when traces are exported (so delivery continues the
        // trace through it), else the sender's trace context as it came.
        traceparent: tracecontext::traceparent_of(&tracing::Span::current())
            .unwrap_or_else(|| trace_header("traceparent")),
        tracestate: trace_header("tracestate"),
        attributes: Default::default(),
        remote_addr: peer.to_string(),
    })
}
