//! Logging and tracing. Logs: human-readable text by default, one JSON object per line with
//! `--log-format json` for log pipelines; `RUST_LOG` filters as usual (default `info`).
//!
//! Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, spans are exported over OTLP/HTTP (protobuf) by the OpenTelemetry SDK, configured by
//! the standard `OTEL_*` variables (headers, service name, resource attributes, sampler).
//! Export runs on the batch processor's own thread with a bounded queue: a collector that
//! is down loses spans, never slows a webhook, and the spans lost are counted
//! (`span_queue`). Unset, nothing is exported and no span is created.

mod span_queue;

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, LevelFilter, filter_fn};
use tracing_subscriber::layer::{Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The storage engine reports routine maintenance at `info`; keep that out of the way.
const DEFAULT_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

/// Flushes and stops the span exporter when dropped (at the end of `main`, after the
/// graceful shutdown), so the last spans are not lost.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing the OpenTelemetry exporter failed: {e}");
        }
    }
}

/// Whether the environment asks for OTLP export.
fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()))
}

/// `RUST_LOG`, or the default filter. Each layer gets its own (a filter is not `Clone`).
fn directives() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// What the logger takes: events only, as `directives` filter them.
///
/// The events filter's hint says "any level", so that the directives' own hint bounds the
/// logger's. Without one the combination has no hint, the `log` crate's maximum level stays
/// at trace, and every `log::trace!` of a library went through the `log` bridge only to be
/// filtered out there: fjall's, about 82,000 in a start with a 20,000-record journal and
/// the delivery of those records, most of them from the journal's replay (BENCHMARKS.md).
fn logged<S: tracing::Subscriber>(directives: EnvFilter) -> impl Filter<S> {
    let events = filter_fn(|metadata| metadata.is_event()).with_max_level_hint(LevelFilter::TRACE);
    directives.and(events)
}

/// Installs the logger, and the OTLP span exporter if the environment asks for one.
///
/// The logger takes events only: log lines carry their own fields (route, subscription,
/// id), and a span seen by the logger has its fields formatted when it opens, which cost
/// every webhook and every delivery several µs at the default `info` level while nothing
/// was logged (BENCHMARKS.md). Spans go to the OTLP exporter alone; without one they are
/// not created at all.
pub fn init(format: LogFormat) -> Telemetry {
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    };
    let fmt = fmt.with_filter(logged(directives()));
    let provider = if otlp_configured() {
        // The exporter's HTTP client (reqwest, rustls) takes the process's default crypto
        // provider, which `main` installs.
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => {
                let mut resource = opentelemetry_sdk::Resource::builder();
                if std::env::var("OTEL_SERVICE_NAME").is_err() {
                    resource = resource.with_service_name("hookbridge");
                }
                Some(
                    SdkTracerProvider::builder()
                        .with_span_processor(span_queue::CountedQueue::new(exporter))
                        .with_resource(resource.build())
                        .build(),
                )
            }
            Err(e) => {
                eprintln!("OTLP export is configured but cannot start: {e}; no spans are exported");
                None
            }
        }
    } else {
        None
    };
    let registry = tracing_subscriber::registry().with(fmt);
    match &provider {
        Some(provider) => registry
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("hookbridge"))
                    .with_filter(directives()),
            )
            .init(),
        // No layer at all, not a `None` one: an absent `Option` layer would still have every
        // span created.
        None => registry.init(),
    }
    Telemetry { provider }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::Registry;

    /// The `log` crate's maximum level is set from this hint at start-up: without it, every
    /// library's `log::trace!` is bridged to tracing to be dropped there.
    #[test]
    fn the_logger_filter_hints_the_directives_level() {
        for (directives, level) in [
            ("warn", LevelFilter::WARN),
            ("warn,hookbridge::server=info", LevelFilter::INFO),
            ("info", LevelFilter::INFO),
            ("fjall=trace", LevelFilter::TRACE),
        ] {
            let filter = logged::<Registry>(EnvFilter::new(directives));
            assert_eq!(
                Filter::<Registry>::max_level_hint(&filter),
                Some(level),
                "{directives}"
            );
        }
    }
}
