//! Logging and tracing. Logs: human-readable text by default, one JSON object per line with
//! `--log-format json` for log pipelines; `RUST_LOG` filters as usual (default `info`).
//!
//! Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, spans are exported over OTLP/HTTP (protobuf) by the OpenTelemetry SDK, configured by
//! the standard `OTEL_*` variables (headers, service name, resource attributes, sampler).
//! Export runs on the batch processor's own thread with a bounded queue: a collector that
//! is down loses spans, never slows a webhook, and the spans lost are counted
//! (`span_queue`). Unset, nothing is exported and spans cost what `tracing` costs.

mod span_queue;

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
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

/// Installs the logger, and the OTLP span exporter if the environment asks for one.
pub fn init(format: LogFormat) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
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
    let provider = if otlp_configured() {
        // The exporter's HTTP client (reqwest, rustls) takes the process's default crypto
        // provider: ring, as everywhere else in hookbridge. An error means one is set already.
        let _ = rustls::crypto::ring::default_provider().install_default();
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
    let otel = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("hookbridge")));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    Telemetry { provider }
}
