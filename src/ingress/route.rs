//! A route compiled from its config: the verifier, extractors and header policy that
//! requests to `/hooks/{name}` go through.

use std::collections::HashSet;
use std::time::Duration;

use axum::http::HeaderName;

use super::extract::Extractor;
use super::verify::Verifier;
use crate::config::RouteConfig;
use crate::metrics;
use prometheus_client::metrics::histogram::Histogram;

/// Headers never copied into an envelope: hop-by-hop headers (RFC 9110 §7.6.1), which
/// describe the connection and not the webhook, and headers that carry credentials.
const DROPPED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "authorization",
    "proxy-authorization",
    "cookie",
];

pub struct Route {
    pub name: String,
    pub topic: String,
    pub verifier: Verifier,
    pub event_type: Option<Extractor>,
    pub key: Option<Extractor>,
    pub idempotency: Option<Extractor>,
    pub publish_timeout: Duration,
    /// Its `hookbridge_ingress_publish_duration_seconds` series, looked up once.
    pub publish_duration: Histogram,
    dropped_headers: HashSet<HeaderName>,
}

impl Route {
    pub fn from_config(config: &RouteConfig) -> Route {
        let verifier = Verifier::from_config(&config.verify);
        let mut dropped_headers: HashSet<HeaderName> = DROPPED_HEADERS
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect();
        dropped_headers.extend(verifier.secret_header().cloned());
        dropped_headers.extend(
            config
                .drop_headers
                .iter()
                .map(|h| HeaderName::from_bytes(h.as_bytes()).expect("validated header")),
        );
        Route {
            name: config.name.clone(),
            topic: config.topic.clone(),
            verifier,
            event_type: config
                .event_type
                .as_ref()
                .map(|e| Extractor::from_config("event type", e)),
            key: config
                .key
                .as_ref()
                .map(|e| Extractor::from_config("key", e)),
            idempotency: config.idempotency.as_ref().map(Extractor::idempotency),
            publish_timeout: config.publish_timeout.0,
            publish_duration: metrics::metrics()
                .ingress_publish_duration
                .get_or_create(&metrics::RouteLabel {
                    route: config.name.clone(),
                })
                .clone(),
            dropped_headers,
        }
    }

    pub fn keeps_header(&self, name: &HeaderName) -> bool {
        !self.dropped_headers.contains(name)
    }
}
