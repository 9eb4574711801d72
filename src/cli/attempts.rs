//! `hookbridge attempts SUB`: a subscription's attempt log searched, newest first: what
//! happened to a key's or an event's webhooks, and when.

use anyhow::Context;
use serde_json::Value;

use super::operations::time_arg;
use super::table::{cell, render};
use super::{AdminArgs, Output};

/// What to search for (`hookbridge attempts --help`).
#[derive(clap::Args, Debug, Clone)]
pub struct AttemptArgs {
    /// Only this event key's attempts.
    #[arg(long)]
    pub key: Option<String>,
    /// Only this webhook id's attempts.
    #[arg(long)]
    pub id: Option<String>,
    /// A status (503), a class (5xx, 4xx), `error` (no answer: a timeout, a refused
    /// connection), `failed` (anything but delivered) or `delivered`.
    #[arg(long)]
    pub status: Option<String>,
    /// From this time: RFC 3339 or a span ago (90m, 2h, 1d). Default: an hour ago.
    #[arg(long)]
    pub since: Option<String>,
    /// Up to this time (exclusive): RFC 3339 or a span ago.
    #[arg(long)]
    pub until: Option<String>,
    /// How many, at most (up to 1000; `more:` then says how to see the rest).
    #[arg(long, default_value = "50")]
    pub limit: usize,
    /// Only attempts older than this cursor: the `more:` of the page before.
    #[arg(long, value_name = "CURSOR")]
    pub before: Option<String>,
}

pub async fn attempts(
    admin: &AdminArgs,
    subscription: &str,
    args: &AttemptArgs,
) -> anyhow::Result<()> {
    let mut query = vec![("limit", args.limit.to_string())];
    for (name, value) in [
        ("key", &args.key),
        ("id", &args.id),
        ("status", &args.status),
    ] {
        if let Some(value) = value {
            query.push((name, value.clone()));
        }
    }
    if let Some(since) = &args.since {
        query.push(("since", time_arg("--since", since)?));
    }
    if let Some(until) = &args.until {
        query.push(("until", time_arg("--until", until)?));
    }
    let encoded: Vec<String> = query
        .iter()
        .map(|(name, value)| format!("{name}={}", encode(value)))
        .collect();
    let path = format!(
        "/v1/attempts/{}?{}",
        encode(subscription),
        encoded.join("&")
    );
    let client = admin.client().await?;
    let page: Value = client
        .get(client.first(), &path)
        .await
        .with_context(|| format!("cannot search the attempts of {subscription}"))?;
    match admin.output {
        Output::Json => println!("{page}"),
        Output::Table => print!("{}", table(&page)),
    }
    Ok(())
}

fn table(page: &Value) -> String {
    let attempts = page["attempts"].as_array().cloned().unwrap_or_default();
    if attempts.is_empty() {
        return "no attempts match\n".into();
    }
    let rows: Vec<Vec<String>> = attempts
        .iter()
        .map(|a| {
            vec![
                cell(&a["at"]),
                cell(&a["id"]),
                cell(&a["key"]),
                cell(&a["attempt"]),
                cell(&a["outcome"]),
                cell(&a["status"]),
                format!("{:.0}ms", a["latency_ms"].as_f64().unwrap_or_default()),
                cell(&a["error"]),
            ]
        })
        .collect();
    let mut out = render(
        &[
            "AT", "ID", "KEY", "ATTEMPT", "OUTCOME", "STATUS", "LATENCY", "ERROR",
        ],
        &rows,
    );
    if let Some(next) = page["next"].as_str() {
        out.push_str(&format!("more: the same command with --before {next}\n"));
    }
    out
}

/// Percent-encodes a query value or path segment.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
