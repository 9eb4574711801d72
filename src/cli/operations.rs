//! `hookbridge dlq list|show|redrive SUB`, `hookbridge replay SUB`.
//!
//! A redrive or replay is an operation on the admin API; the CLI starts it, then follows
//! it: a progress bar with rate and ETA when stderr is a terminal, a line every two seconds
//! otherwise. Ctrl-C stops the operation (`DELETE /v1/operations/{id}`) and says how far
//! it got; a later run skips what was sent already, unless `--force`.

use std::io::IsTerminal;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::status::encode;
use super::table::{cell, render};
use super::{AdminArgs, Output};

/// How often a running operation's progress is read.
const POLL: Duration = Duration::from_millis(250);

/// Which events: the filter of a redrive or a replay.
#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only events of this type (a glob, as `filter.types`: `invoice.*`). Repeatable.
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Only events with this partition key. Repeatable.
    #[arg(long = "key", value_name = "KEY")]
    pub keys: Vec<String>,
    /// Only the event with this webhook id. Repeatable.
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
    /// From this time: RFC 3339 (2026-12-01T09:30:00Z) or a span ago (90m, 2h, 1d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Up to this time (exclusive): RFC 3339 or a span ago.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// At most this many events per second sent to the subscription.
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// Count what would be sent; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Send events that an earlier redrive or replay sent already.
    #[arg(long)]
    pub force: bool,
}

impl FilterArgs {
    fn body(&self) -> anyhow::Result<serde_json::Map<String, Value>> {
        let mut body = serde_json::Map::new();
        body.insert("types".into(), json!(self.types));
        body.insert("keys".into(), json!(self.keys));
        body.insert("ids".into(), json!(self.ids));
        if let Some(since) = &self.since {
            body.insert("since".into(), json!(time_arg("--since", since)?));
        }
        if let Some(until) = &self.until {
            body.insert("until".into(), json!(time_arg("--until", until)?));
        }
        if let Some(rate) = self.rate {
            body.insert("rate".into(), json!(rate));
        }
        body.insert("dry_run".into(), json!(self.dry_run));
        body.insert("force".into(), json!(self.force));
        body.insert("requested_by".into(), json!(requested_by()));
        Ok(body)
    }
}

/// RFC 3339 as given, or a span ago turned into RFC 3339.
pub(super) fn time_arg(flag: &str, value: &str) -> anyhow::Result<String> {
    if value.contains('T') {
        return Ok(value.to_string());
    }
    let ago = hookbridge::config::units::parse_duration(value).map_err(|e| {
        anyhow::anyhow!("{flag} {value}: neither an RFC 3339 time nor a span ago ({e})")
    })?;
    let at = SystemTime::now()
        .checked_sub(ago)
        .with_context(|| format!("{flag} {value}: too far back"))?;
    Ok(hookbridge::rfc3339(at))
}

/// `user@host`, for the record an operation leaves.
fn requested_by() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

pub async fn dlq_list(
    args: &AdminArgs,
    subscription: &str,
    limit: usize,
    after: Option<&str>,
) -> anyhow::Result<()> {
    let client = args.client().await?;
    let mut path = format!("/v1/dead-letters/{}?limit={limit}", encode(subscription));
    if let Some(after) = after {
        path.push_str(&format!("&after={}", encode(after)));
    }
    let page: Value = client.get(client.first(), &path).await?;
    match args.output {
        Output::Json => println!("{page}"),
        Output::Table => {
            let letters = page["dead_letters"].as_array().cloned().unwrap_or_default();
            if letters.is_empty() {
                println!("no dead letters for {subscription}");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = letters
                .iter()
                .map(|d| {
                    vec![
                        cell(&d["position"]),
                        cell(&d["failed_at"]),
                        cell(&d["id"]),
                        cell(&d["event_type"]),
                        cell(&d["key"]),
                        cell(&d["attempts"]),
                        cell(&d["last_status"]),
                        cell(&d["last_error"]),
                    ]
                })
                .collect();
            print!(
                "{}",
                render(
                    &[
                        "POSITION",
                        "FAILED AT",
                        "ID",
                        "TYPE",
                        "KEY",
                        "ATTEMPTS",
                        "STATUS",
                        "ERROR"
                    ],
                    &rows
                )
            );
            if let Some(next) = page["next"].as_str() {
                println!("more: hookbridge dlq list {subscription} --after {next}");
            }
        }
    }
    Ok(())
}

pub async fn dlq_show(args: &AdminArgs, subscription: &str, id: &str) -> anyhow::Result<()> {
    let client = args.client().await?;
    let path = format!("/v1/dead-letters/{}/{}", encode(subscription), encode(id));
    let shown: Value = client.get(client.first(), &path).await?;
    match args.output {
        Output::Json => println!("{shown}"),
        Output::Table => {
            for field in [
                "id",
                "event_type",
                "key",
                "topic",
                "partition",
                "offset",
                "position",
                "attempts",
                "last_status",
                "last_error",
                "failed_at",
            ] {
                println!("{field:<12} {}", cell(&shown[field]));
            }
            println!("body:\n{}", serde_json::to_string_pretty(&shown["body"])?);
        }
    }
    Ok(())
}

pub async fn redrive(
    args: &AdminArgs,
    subscription: &str,
    filter: &FilterArgs,
) -> anyhow::Result<()> {
    let body = Value::Object(filter.body()?);
    let path = format!("/v1/dead-letters/{}/redrive", encode(subscription));
    run(args, &path, &body, "redrive").await
}

pub async fn replay(
    args: &AdminArgs,
    subscription: &str,
    filter: &FilterArgs,
    offsets: &[String],
) -> anyhow::Result<()> {
    let mut body = filter.body()?;
    if !offsets.is_empty() {
        let mut by_topic = serde_json::Map::new();
        for offset in offsets {
            let parsed = offset.rsplit_once('=').and_then(|(at, offset)| {
                let (topic, partition) = at.rsplit_once('/')?;
                Some((
                    topic,
                    partition.parse::<u32>().ok()?,
                    offset.parse::<u64>().ok()?,
                ))
            });
            let Some((topic, partition, offset)) = parsed else {
                bail!("--offset {offset}: expected TOPIC/PARTITION=OFFSET");
            };
            by_topic
                .entry(topic.to_string())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("an object")
                .insert(partition.to_string(), json!(offset));
        }
        body.insert("offsets".into(), Value::Object(by_topic));
    }
    let path = format!("/v1/subscriptions/{}/replay", encode(subscription));
    run(args, &path, &Value::Object(body), "replay").await
}

/// Starts the operation and follows it to its end.
async fn run(args: &AdminArgs, path: &str, body: &Value, what: &str) -> anyhow::Result<()> {
    let client = args.client().await?;
    let target = client.first();
    let mut operation: Value = client.post(target, path, Some(body)).await?;
    let id = operation["id"]
        .as_str()
        .context("the answer names no operation")?
        .to_string();
    let progress = ProgressDisplay::new(what, &id);
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let mut cancelled = false;
    while operation["state"] == "running" {
        progress.show(&operation);
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut interrupted, if !cancelled => {
                cancelled = true;
                progress.note("stopping…");
                operation = client.send_delete(target, &format!("/v1/operations/{id}")).await?;
                continue;
            }
        }
        operation = client.get(target, &format!("/v1/operations/{id}")).await?;
    }
    progress.finish(&operation);
    match args.output {
        Output::Json => println!("{operation}"),
        Output::Table => println!("{}", summary(what, &operation)),
    }
    match operation["state"].as_str() {
        Some("done") | Some("cancelled") => Ok(()),
        _ => bail!("{what} {id} failed: {}", cell(&operation["error"])),
    }
}

fn summary(what: &str, op: &Value) -> String {
    let dry = op["dry_run"] == true;
    let mut line = format!(
        "{what} {} {}: {} matched, {} {}, {} skipped (sent before; --force sends them), {} read",
        cell(&op["id"]),
        cell(&op["state"]),
        cell(&op["matched"]),
        cell(&op["sent"]),
        if dry { "sent (dry run)" } else { "sent" },
        cell(&op["skipped"]),
        cell(&op["scanned"]),
    );
    if dry {
        let would = op["matched"].as_u64().unwrap_or(0) - op["skipped"].as_u64().unwrap_or(0);
        line.push_str(&format!("; would send {would}"));
    }
    if op["errors"].as_u64().unwrap_or(0) > 0 {
        line.push_str(&format!(", {} broker errors retried", cell(&op["errors"])));
    }
    line
}

/// The progress display: a bar on a terminal, lines otherwise.
struct ProgressDisplay {
    bar: Option<ProgressBar>,
    what: String,
    last_line: std::sync::Mutex<std::time::Instant>,
}

impl ProgressDisplay {
    fn new(what: &str, id: &str) -> ProgressDisplay {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} ({per_sec}, ETA {eta})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(what.to_string());
            bar
        });
        if bar.is_none() {
            eprintln!("{what} {id} started");
        }
        ProgressDisplay {
            bar,
            what: what.to_string(),
            last_line: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    /// Done so far and the total: matches handled of matches for a redrive (its total is
    /// known once its dead letters are read), records read of records to read for a replay.
    fn counts(op: &Value) -> (u64, Option<u64>) {
        let handled = op["sent"].as_u64().unwrap_or(0) + op["skipped"].as_u64().unwrap_or(0);
        match op["kind"].as_str() {
            Some("redrive") if op["dry_run"] != true => (handled, op["total"].as_u64()),
            _ => (op["scanned"].as_u64().unwrap_or(0), op["total"].as_u64()),
        }
    }

    fn show(&self, op: &Value) {
        let (done, total) = Self::counts(op);
        let msg = format!(
            "matched {} sent {} skipped {}",
            cell(&op["matched"]),
            cell(&op["sent"]),
            cell(&op["skipped"])
        );
        match &self.bar {
            Some(bar) => {
                if let Some(total) = total {
                    bar.set_length(total);
                }
                bar.set_position(done);
                bar.set_message(msg);
            }
            None => {
                let mut last = self.last_line.lock().expect("progress lock");
                if last.elapsed() >= Duration::from_secs(2) {
                    *last = std::time::Instant::now();
                    let of = total.map(|t| format!("/{t}")).unwrap_or_default();
                    eprintln!(
                        "{} {done}{of} {msg} ({:.0}/s)",
                        self.what,
                        op["rate"].as_f64().unwrap_or(0.0)
                    );
                }
            }
        }
    }

    fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn finish(&self, op: &Value) {
        if let Some(bar) = &self.bar {
            let (done, total) = Self::counts(op);
            if let Some(total) = total {
                bar.set_length(total);
            }
            bar.set_position(done);
            bar.finish();
        }
    }
}
