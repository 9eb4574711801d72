//! One trace from the sender to the subscriber, across the broker, on every backend:
//! hookbridge exports its spans over OTLP/HTTP to a receiver in this test, which decodes
//! them with the OpenTelemetry protocol's own message types.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::backend::Backend;
use crate::support::receiver::Receiver;
use crate::support::scrape::{scrape, value};
use crate::support::*;
use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

#[derive(Debug, Clone)]
struct ExportedSpan {
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// An OTLP/HTTP trace receiver: `POST /v1/traces` with a protobuf body.
async fn start_collector() -> (String, Arc<Mutex<Vec<ExportedSpan>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let store = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let store = store.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut store = store.lock().unwrap();
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            store.push(ExportedSpan {
                                name: span.name,
                                kind: span.kind,
                                trace_id: hex::encode(span.trace_id),
                                span_id: hex::encode(span.span_id),
                                parent_span_id: hex::encode(span.parent_span_id),
                            });
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), spans)
}

async fn one_trace_from_sender_to_subscriber(backend: Backend) {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SENDER_SPAN: &str = "00f067aa0ba902b7";
    let (collector, spans) = start_collector().await;
    let topic = unique("traced");
    let receiver = Receiver::start().await;
    let subs = subscription(&topic, &topic, &receiver.url, "");
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start_with_env(
        dir.path(),
        &events_config(&backend.broker(2), &topic, &subs),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_SERVICE_NAME", "hookbridge-test"),
        ],
    );
    let accepted = http_client()
        .post(server.hook_url("events"))
        .header("traceparent", format!("00-{TRACE}-{SENDER_SPAN}-01"))
        .json(&serde_json::json!({"key": "k", "seq": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    receiver
        .wait_for("the delivery", Duration::from_secs(30), |r| !r.is_empty())
        .await;

    let kinds = [
        SpanKind::Server,
        SpanKind::Producer,
        SpanKind::Consumer,
        SpanKind::Client,
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let of_kind = |spans: &[ExportedSpan], kind: SpanKind| {
        spans
            .iter()
            .find(|s| s.kind == kind as i32 && s.trace_id == TRACE)
            .cloned()
    };
    let trace = loop {
        let got = spans.lock().unwrap().clone();
        if kinds.iter().all(|k| of_kind(&got, *k).is_some()) {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "spans of the sender's trace, one of each kind: {got:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let server_span = of_kind(&trace, SpanKind::Server).unwrap();
    let producer = of_kind(&trace, SpanKind::Producer).unwrap();
    let consumer = of_kind(&trace, SpanKind::Consumer).unwrap();
    let client = of_kind(&trace, SpanKind::Client).unwrap();
    assert_eq!(
        server_span.parent_span_id, SENDER_SPAN,
        "continues the sender's span"
    );
    assert_eq!(server_span.name, "POST /hooks/{route}");
    assert_eq!(
        producer.parent_span_id, server_span.span_id,
        "publish in the webhook"
    );
    assert_eq!(
        consumer.parent_span_id, server_span.span_id,
        "delivery continues the webhook's trace through the envelope"
    );
    assert_eq!(
        client.parent_span_id, consumer.span_id,
        "the attempt in the delivery"
    );
    let sent = receiver.received()[0].header("traceparent").to_string();
    assert_eq!(
        sent,
        format!("00-{TRACE}-{}-01", client.span_id),
        "the subscriber sees the attempt's span in the same trace"
    );

    // Every span the collector took is counted as exported; none was lost on the way.
    let received = spans.lock().unwrap().len() as f64;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = scrape(&server.admin).await;
        let exported = value(&text, "hookbridge_trace_spans_exported_total", &[]);
        if exported >= received {
            assert_eq!(
                value(&text, "hookbridge_trace_spans_dropped_total", &[]),
                0.0
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{received} spans received, {exported} counted exported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_one_trace_from_sender_to_subscriber() {
    one_trace_from_sender_to_subscriber(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_one_trace_from_sender_to_subscriber() {
    one_trace_from_sender_to_subscriber(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_one_trace_from_sender_to_subscriber() {
    one_trace_from_sender_to_subscriber(Backend::kafka()).await;
}

/// A collector in trouble costs nothing that shows: 500 events are accepted and delivered
/// as usual, SIGTERM still ends the process promptly (the last spans' flush gives up), and
/// the spans lost are counted by reason.
async fn a_collector_in_trouble_blocks_nothing(
    collector: &str,
    extra_env: &[(&str, &str)],
    lost: &str,
) {
    const EVENTS: u64 = 500;
    let topic = unique("untraced");
    let receiver = Receiver::start().await;
    let subs = subscription(&topic, &topic, &receiver.url, "");
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::embedded();
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    env.extend_from_slice(extra_env);
    let mut server = Hookbridge::start_with_env(
        dir.path(),
        &events_config(&backend.broker(2), &topic, &subs),
        &[],
        &env,
    );
    let started = Instant::now();
    let events: Vec<(String, u64)> = (0..EVENTS).map(|s| (format!("k{}", s % 20), s)).collect();
    post_events(
        Arc::new(Mutex::new(vec![server.ingress.clone()])),
        events,
        8,
        Duration::ZERO,
    )
    .await;
    receiver
        .wait_for("every event delivered", Duration::from_secs(60), |r| {
            support::receiver::all_delivered(r, 0..EVENTS)
        })
        .await;
    eprintln!(
        "{EVENTS} events accepted and delivered with the collector in trouble in {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = scrape(&server.admin).await;
        let dropped = value(
            &text,
            "hookbridge_trace_spans_dropped_total",
            &[("reason", lost)],
        );
        if dropped > 0.0 {
            eprintln!("{dropped} spans dropped ({lost})");
            assert_eq!(
                value(&text, "hookbridge_trace_spans_exported_total", &[]),
                0.0
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spans lost are counted as {lost}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stopping = Instant::now();
    assert!(server.terminate().success(), "a clean exit");
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "SIGTERM ends the process within the exporter's timeout: {:?}",
        stopping.elapsed()
    );
}

/// A collector that is down: every export is refused, its spans counted `export_failed`.
#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_is_down_blocks_nothing() {
    // A port nothing listens on.
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    a_collector_in_trouble_blocks_nothing(&down, &[], "export_failed").await;
}

/// A collector that takes connections and never answers: exports hang until the exporter's
/// timeout, the queue fills, and the spans that do not fit are counted `queue_full`.
#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_hangs_blocks_nothing() {
    // The kernel completes connections to a listener nobody accepts from; requests sent
    // on them are never read.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging = format!("http://{}", listener.local_addr().unwrap());
    a_collector_in_trouble_blocks_nothing(
        &hanging,
        &[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "3000"),
        ],
        "queue_full",
    )
    .await;
    drop(listener);
}
