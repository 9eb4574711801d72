//! The export queue between finished spans and the OTLP exporter, with its losses counted.
//!
//! The SDK's batch processor already exports from a thread of its own behind a bounded
//! queue, but the spans it drops when that queue is full are only logged, once, and counted
//! in a private field. An operator whose collector is slow needs that number on a graph:
//! `hookbridge_trace_spans_dropped_total{reason}`.
//!
//! So the batch processor is wrapped on both sides. `CountedQueue` (the processor the
//! tracer sees) counts the spans between `on_end` and the exporter, and drops a span itself
//! (counting it `queue_full`) once `OTEL_BSP_MAX_QUEUE_SIZE` of them are waiting; the batch
//! processor inside gets a queue twice as long, so it never drops one silently.
//! `CountedExporter` (the exporter the batch processor sees) takes each batch off that count
//! and counts the spans a failed export loses (`export_failed`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT, Span, SpanData, SpanExporter, SpanProcessor,
};

use crate::metrics::{ReasonLabel, metrics};

/// Spans ended and not yet handed to the exporter.
type Waiting = Arc<AtomicUsize>;

#[derive(Debug)]
pub struct CountedQueue {
    inner: BatchSpanProcessor,
    waiting: Waiting,
    capacity: usize,
}

impl CountedQueue {
    /// A batch processor configured by the standard `OTEL_BSP_*` variables, exporting to
    /// `exporter`, its queue's overflow counted.
    pub fn new<E: SpanExporter + 'static>(exporter: E) -> CountedQueue {
        let capacity = std::env::var(OTEL_BSP_MAX_QUEUE_SIZE)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT)
            .max(1);
        let waiting = Waiting::default();
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(capacity.saturating_mul(2))
            .build();
        let inner = BatchSpanProcessor::builder(CountedExporter {
            inner: exporter,
            waiting: waiting.clone(),
        })
        .with_batch_config(config)
        .build();
        CountedQueue {
            inner,
            waiting,
            capacity,
        }
    }
}

impl SpanProcessor for CountedQueue {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            dropped("queue_full", 1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[derive(Debug)]
struct CountedExporter<E> {
    inner: E,
    waiting: Waiting,
}

impl<E: SpanExporter> SpanExporter for CountedExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        self.waiting.fetch_sub(spans, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                metrics().spans_exported.inc_by(spans as u64);
            }
            Err(_) => dropped("export_failed", spans),
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

fn dropped(reason: &'static str, spans: usize) {
    metrics()
        .spans_dropped
        .get_or_create(&ReasonLabel { reason })
        .inc_by(spans as u64);
}
