//! `--results FILE`: each result the run prints, also as one JSON object a line, so that
//! `scripts/plots` draws from the numbers themselves instead of parsing the tables, which
//! stay as they are for people to read.
//!
//! Every line has `kind`: `run` (first: the machine and the command line), `limit`,
//! `scenario`, `scale-out` or `peer`. Latencies are `{p50, p90, p99, p999, max}` in
//! milliseconds, or null where nothing was measured.

use std::io::Write;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::stats::Latencies;

/// The open file, if `--results` was given. A global, because results are printed from
/// every scenario's own code path and each would otherwise carry the file along.
static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Creates (or empties) `path` and writes the `run` line: when, on what, with what arguments.
pub fn open(path: &std::path::Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)
        .map_err(|e| anyhow::anyhow!("--results {}: {e}", path.display()))?;
    *FILE.lock().unwrap() = Some(file);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    record(json!({
        "kind": "run",
        "started_unix": started,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": memory_gib(),
        "cpu": cpu_model(),
        "args": std::env::args().skip(1).collect::<Vec<_>>(),
    }));
    Ok(())
}

/// Appends one result; nothing without `--results`. A result that cannot be written stops
/// the run: a results file silently missing lines would draw wrong plots.
pub fn record(value: Value) {
    if let Some(file) = FILE.lock().unwrap().as_mut() {
        writeln!(file, "{value}").expect("writing the --results file");
    }
}

/// Percentiles as JSON (null without samples).
pub fn latencies(latencies: &mut Latencies) -> Value {
    match latencies.percentiles() {
        Some([p50, p90, p99, p999, max]) => {
            json!({ "p50": p50, "p90": p90, "p99": p99, "p999": p999, "max": max })
        }
        None => Value::Null,
    }
}

fn memory_gib() -> f64 {
    let mib = super::process::kib_field_mib("/proc/meminfo", "MemTotal:");
    (mib / 1024.0 * 10.0).round() / 10.0
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, name)| name.trim().to_string())
        .unwrap_or_default()
}
