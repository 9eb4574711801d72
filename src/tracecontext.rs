//! W3C trace context between HTTP headers, the envelope and OpenTelemetry spans.
//!
//! The ingress continues a sender's `traceparent`; the envelope carries the ingress span's
//! context to delivery, whose attempts send theirs on to the subscriber. Without an OTLP
//! exporter the spans have no OpenTelemetry context, and the sender's `traceparent` is
//! carried through unchanged, as before.

use std::collections::HashMap;

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The sender's trace context, from its `traceparent` and `tracestate` headers.
pub fn from_headers(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// The context of a `traceparent` value (as the envelope carries it).
pub fn from_traceparent(traceparent: &str) -> Context {
    let map: HashMap<String, String> =
        HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    TraceContextPropagator::new().extract(&map)
}

/// The `traceparent` of `span`, if it has an OpenTelemetry context (OTLP export is on).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut map: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut map);
    map.remove("traceparent")
}
