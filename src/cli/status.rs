//! `hookbridge status [SUB]`, `hookbridge pause SUB`, `hookbridge resume SUB`.

use serde_json::{Value, json};

use super::table::{cell, render};
use super::{AdminArgs, Output};

/// Where each subscription stands on every replica behind the admin URL.
pub async fn status(args: &AdminArgs, subscription: Option<&str>) -> anyhow::Result<()> {
    let client = args.client().await?;
    let mut replicas = Vec::new();
    for target in &client.targets {
        let subscriptions: Vec<Value> = match subscription {
            Some(name) => vec![
                client
                    .get(target, &format!("/v1/subscriptions/{}", encode(name)))
                    .await?,
            ],
            None => {
                let list: Value = client.get(target, "/v1/subscriptions").await?;
                list["subscriptions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            }
        };
        replicas.push(json!({"admin": target.label, "subscriptions": subscriptions}));
    }
    match args.output {
        Output::Json => println!("{}", json!({ "replicas": replicas })),
        Output::Table => {
            for replica in &replicas {
                print!("{}", replica_table(replica, subscription.is_some()));
            }
        }
    }
    Ok(())
}

/// Pauses (or resumes) `subscription` on every replica behind the admin URL.
pub async fn pause(args: &AdminArgs, subscription: &str, paused: bool) -> anyhow::Result<()> {
    let client = args.client().await?;
    let verb = if paused { "pause" } else { "resume" };
    let mut replicas = Vec::new();
    for target in &client.targets {
        let status: Value = client
            .post(
                target,
                &format!("/v1/subscriptions/{}/{verb}", encode(subscription)),
                None,
            )
            .await?;
        replicas.push(json!({"admin": target.label, "subscription": status}));
    }
    match args.output {
        Output::Json => println!("{}", json!({ "replicas": replicas })),
        Output::Table => {
            for replica in &replicas {
                let sub = &replica["subscription"];
                let state = if !running_here(sub) {
                    "not running here"
                } else if sub["paused"] == true {
                    "paused"
                } else {
                    "running"
                };
                println!("{}: {subscription} {state}", cell(&replica["admin"]));
            }
        }
    }
    Ok(())
}

fn replica_table(replica: &Value, with_partitions: bool) -> String {
    let subscriptions = replica["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut out = format!("{}\n", cell(&replica["admin"]));
    if subscriptions.is_empty() {
        out.push_str("  no subscriptions are delivered here\n");
        return out;
    }
    let rows: Vec<Vec<String>> = subscriptions
        .iter()
        .map(|sub| {
            if !running_here(sub) {
                // Known (the config's, or stored through the API) but not delivered by this
                // replica: refused (its `problem` says why), or not yet applied.
                let why = match sub["problem"].as_str() {
                    Some(problem) => format!("not applied: {problem}"),
                    None => "-".to_string(),
                };
                let mut row = vec![cell(&sub["name"]), "not running here".into()];
                row.extend(std::iter::repeat_n("-".to_string(), 5));
                row.push(why);
                return row;
            }
            let partitions = sub["partitions"].as_array().cloned().unwrap_or_default();
            let lag: Option<u64> = partitions.iter().map(|p| p["lag"].as_u64()).sum();
            let rate = match sub["rate_limit"]["per_second"].as_f64() {
                Some(per_second) => format!("{per_second}/s"),
                None => "-".to_string(),
            };
            let last_error = match &sub["last_error"] {
                Value::Null => "-".to_string(),
                e => format!("{}: {}", cell(&e["at"]), cell(&e["error"])),
            };
            vec![
                cell(&sub["name"]),
                if sub["paused"] == true {
                    "paused"
                } else {
                    "running"
                }
                .into(),
                in_flight(sub),
                cell(&sub["breaker"]),
                lag.map_or("-".into(), |lag| lag.to_string()),
                partitions.len().to_string(),
                rate,
                last_error,
            ]
        })
        .collect();
    out.push_str(&render(
        &[
            "SUBSCRIPTION",
            "STATE",
            "IN FLIGHT",
            "BREAKER",
            "LAG",
            "PARTITIONS",
            "RATE",
            "LAST ERROR",
        ],
        &rows,
    ));
    if with_partitions {
        for sub in subscriptions.iter().filter(|sub| running_here(sub)) {
            let rows: Vec<Vec<String>> = sub["partitions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    [
                        "topic",
                        "partition",
                        "committed",
                        "end",
                        "lag",
                        "held",
                        "parked_keys",
                    ]
                    .iter()
                    .map(|field| cell(&p[*field]))
                    .collect()
                })
                .collect();
            out.push('\n');
            out.push_str(&render(
                &[
                    "TOPIC",
                    "PARTITION",
                    "COMMITTED",
                    "END",
                    "LAG",
                    "HELD",
                    "PARKED KEYS",
                ],
                &rows,
            ));
        }
    }
    out
}

/// Whether the replica that answered delivers `sub`: an entry with `running: false` names a
/// subscription it knows but does not run, and holds none of the status fields. (Answers
/// of replicas older than the stored subscriptions have no `running`: each entry runs.)
fn running_here(sub: &Value) -> bool {
    sub["running"] != false
}

/// A subscription name as a path segment.
pub fn encode(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Requests on the wire against the limit: `12/20` when the limit is `max_in_flight`,
/// `12/20 (max 200, overload)` while the adaptive limit stands below it, and why.
fn in_flight(sub: &Value) -> String {
    let limit = &sub["concurrency"]["limit"];
    let max = &sub["max_in_flight"];
    if limit.is_null() || limit == max {
        return format!("{}/{}", cell(&sub["in_flight"]), cell(max));
    }
    format!(
        "{}/{} (max {}, {})",
        cell(&sub["in_flight"]),
        cell(limit),
        cell(max),
        cell(&sub["concurrency"]["reason"])
    )
}
