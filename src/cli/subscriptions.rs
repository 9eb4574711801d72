//! `hookbridge subscriptions list|get|apply|delete`: subscriptions stored in the broker
//! through the admin API (`/v1/subscriptions/{name}`), created and changed without a config
//! change; the config file's are listed and shown too, read-only.
//!
//! The store is the broker, shared by every replica: each verb asks the first replica
//! behind `--admin-url` only, and every replica applies what is stored within seconds.

use std::collections::BTreeSet;
use std::io::Read;

use anyhow::{Context, bail};
use http::StatusCode;
use serde_json::{Map, Value, json};
use serde_norway::Value as Yaml;

use super::status::encode;
use super::table::{cell, render};
use super::{AdminArgs, Output};

/// A subscription's keys in the order of the config reference, for `get`'s YAML.
const SPEC_KEYS: &[&str] = &[
    "topics",
    "url",
    "filter",
    "transform",
    "signing",
    "forward_headers",
    "payload",
    "ordering",
    "max_in_flight",
    "rate_limit",
    "timeout",
    "retry",
    "dead_letter_topic",
    "parking_topic",
    "breaker",
    "headers",
    "tls",
];

/// Every subscription the replica knows: the config file's and the stored ones.
pub async fn list(args: &AdminArgs) -> anyhow::Result<()> {
    let client = args.client().await?;
    let list: Value = client.get(client.first(), "/v1/subscriptions").await?;
    match args.output {
        Output::Json => println!("{list}"),
        Output::Table => print!("{}", list_table(&list)),
    }
    Ok(())
}

fn list_table(list: &Value) -> String {
    let views = list["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if views.is_empty() {
        return "no subscriptions\n".into();
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|view| {
            vec![
                cell(&view["name"]),
                cell(&view["source"]),
                cell(&view["tenant"]),
                topics(view),
                cell(or(&view["spec"]["url"], &view["url"])),
                if running(view) { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    let mut out = render(
        &["NAME", "SOURCE", "TENANT", "TOPICS", "URL", "RUNNING"],
        &rows,
    );
    for view in &views {
        if let Some(problem) = view["problem"].as_str() {
            out.push_str(&format!(
                "{}: not applied: {problem}\n",
                cell(&view["name"])
            ));
        }
    }
    out
}

/// One subscription: its settings and where it stands.
pub async fn get(args: &AdminArgs, name: &str) -> anyhow::Result<()> {
    let client = args.client().await?;
    let path = format!("/v1/subscriptions/{}", encode(name));
    let view: Value = client.get(client.first(), &path).await?;
    match args.output {
        Output::Json => println!("{view}"),
        Output::Table => print!("{}", show(&view)?),
    }
    Ok(())
}

fn show(view: &Value) -> anyhow::Result<String> {
    let mut lines: Vec<(&str, String)> = vec![
        ("name", cell(&view["name"])),
        ("source", cell(&view["source"])),
    ];
    if !view["tenant"].is_null() {
        lines.push(("tenant", cell(&view["tenant"])));
    }
    if running(view) {
        lines.push(("running", "yes".into()));
        let state = if view["paused"] == true {
            "paused"
        } else {
            "delivering"
        };
        lines.push(("state", state.into()));
        lines.push(("group", cell(&view["group"])));
        lines.push((
            "in flight",
            format!(
                "{}/{}",
                cell(&view["in_flight"]),
                cell(&view["max_in_flight"])
            ),
        ));
        lines.push(("breaker", cell(&view["breaker"])));
        let partitions = view["partitions"].as_array().cloned().unwrap_or_default();
        let lag: Option<u64> = partitions.iter().map(|p| p["lag"].as_u64()).sum();
        lines.push((
            "lag",
            format!(
                "{} ({} here)",
                lag.map_or("-".into(), |lag| lag.to_string()),
                match partitions.len() {
                    1 => "1 partition".to_string(),
                    n => format!("{n} partitions"),
                }
            ),
        ));
        if let Some(per_second) = view["rate_limit"]["per_second"].as_f64() {
            lines.push(("rate limit", format!("{per_second}/s")));
        }
        let last_error = match &view["last_error"] {
            Value::Null => "-".to_string(),
            e => format!("{}: {}", cell(&e["at"]), cell(&e["error"])),
        };
        lines.push(("last error", last_error));
    } else {
        let running = match view["problem"].is_null() {
            true => "no (not on the replica that answered)",
            false => "no",
        };
        lines.push(("running", running.into()));
    }
    if let Some(problem) = view["problem"].as_str() {
        lines.push(("problem", problem.to_string()));
    }
    let mut out: String = lines
        .iter()
        .map(|(field, value)| format!("{field:<12} {value}\n"))
        .collect();
    if view["spec"].is_object() {
        out.push_str("spec:\n");
        for line in spec_yaml(&view["spec"])?.lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    Ok(out)
}

/// The spec as YAML, its keys in the config reference's order, without the keys that are
/// null (unset, no default).
fn spec_yaml(spec: &Value) -> anyhow::Result<String> {
    let spec = without_nulls(spec.clone());
    let yaml = match &spec {
        Value::Object(map) => {
            let mut ordered = serde_norway::Mapping::new();
            let known = SPEC_KEYS.iter().filter_map(|k| map.get_key_value(*k));
            let others = map.iter().filter(|(k, _)| !SPEC_KEYS.contains(&k.as_str()));
            for (key, value) in known.chain(others) {
                ordered.insert(Yaml::String(key.clone()), serde_norway::to_value(value)?);
            }
            Yaml::Mapping(ordered)
        }
        other => serde_norway::to_value(other)?,
    };
    Ok(serde_norway::to_string(&yaml)?)
}

/// `value` without its members that are null, nor the objects that held only those.
fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    let emptied = matches!(&v, Value::Object(m) if !m.is_empty());
                    (k, without_nulls(v), emptied)
                })
                .filter(|(_, v, emptied)| !(*emptied && v.as_object().is_some_and(Map::is_empty)))
                .map(|(k, v, _)| (k, v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// Creates or replaces each subscription of `file` (`-`: standard input), in turn.
pub async fn apply(args: &AdminArgs, file: &str) -> anyhow::Result<()> {
    let (shown, text) = if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the standard input")?;
        ("(stdin)".to_string(), text)
    } else {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
        (file.to_string(), text)
    };
    let env = |name: &str| std::env::var(name).ok();
    let tree = hookbridge::config::yaml_tree(&shown, &text, &env)?;
    let items = items(&shown, tree)?;

    let client = args.client().await?;
    let target = client.first();
    let mut applied = Vec::new();
    for (i, (name, body)) in items.iter().enumerate() {
        let path = format!("/v1/subscriptions/{}", encode(name));
        let answer = client
            .put::<Value>(target, &path, &Value::Object(body.clone()))
            .await;
        match answer {
            Ok((status, view)) => {
                let outcome = if status == StatusCode::CREATED {
                    "created"
                } else {
                    "updated"
                };
                if args.output == Output::Table {
                    println!("{name} {outcome}");
                }
                applied.push(json!({"name": name, "outcome": outcome, "subscription": view}));
            }
            Err(e) => {
                if args.output == Output::Json {
                    println!("{}", json!({ "applied": applied }));
                }
                let left = items.len() - i - 1;
                let what = match left {
                    0 => format!("{name} not applied"),
                    1 => format!("{name} not applied (the one after it was not sent)"),
                    n => format!("{name} not applied (the {n} after it were not sent)"),
                };
                return Err(e.context(what));
            }
        }
    }
    if args.output == Output::Json {
        println!("{}", json!({ "applied": applied }));
    }
    Ok(())
}

/// The subscriptions of an `apply` file: one mapping, a list of them, or `subscriptions:`
/// and a list (the config file's form). Each is its name and the body to PUT (its keys but
/// `name`).
fn items(file: &str, tree: Yaml) -> anyhow::Result<Vec<(String, Map<String, Value>)>> {
    let (list, at): (Vec<Yaml>, Box<dyn Fn(usize) -> String>) = match tree {
        Yaml::Null => bail!("{file}: holds no subscription"),
        Yaml::Sequence(items) => (items, Box::new(|i| format!("[{i}]"))),
        Yaml::Mapping(map) if map.contains_key("subscriptions") => {
            let others: Vec<String> = map
                .keys()
                .filter(|k| k.as_str() != Some("subscriptions"))
                .map(|k| serde_norway::to_string(k).unwrap_or_default().trim().into())
                .collect();
            if !others.is_empty() {
                bail!(
                    "{file}: holds {} beside `subscriptions`: only subscriptions are applied here (the rest is the config file's)",
                    others.join(", ")
                );
            }
            match map.get("subscriptions") {
                Some(Yaml::Sequence(items)) => {
                    (items.clone(), Box::new(|i| format!("subscriptions[{i}]")))
                }
                _ => bail!("{file}: subscriptions: expected a list of subscriptions"),
            }
        }
        one @ Yaml::Mapping(_) => (vec![one], Box::new(|_| "(top level)".to_string())),
        _ => bail!(
            "{file}: expected a subscription (a mapping of its keys), a list of them, or `subscriptions:` and a list"
        ),
    };
    let mut seen = BTreeSet::new();
    let mut items = Vec::new();
    for (i, item) in list.into_iter().enumerate() {
        let at = at(i);
        if !item.is_mapping() {
            bail!("{file}: {at}: expected a subscription (a mapping of its keys)");
        }
        let Value::Object(mut body) = serde_json::to_value(&item)
            .with_context(|| format!("{file}: {at}: cannot be sent as JSON"))?
        else {
            bail!("{file}: {at}: expected a subscription (a mapping of its keys)");
        };
        let name = match body.remove("name") {
            Some(Value::String(name)) if !name.is_empty() => name,
            Some(Value::Number(name)) => name.to_string(),
            None | Some(Value::Null) => bail!("{file}: {at}.name: required"),
            Some(other) => bail!("{file}: {at}.name: expected a name, found {other}"),
        };
        if !seen.insert(name.clone()) {
            bail!("{file}: {at}.name: {name} is named more than once in the file");
        }
        items.push((name, body));
    }
    if items.is_empty() {
        bail!("{file}: holds no subscription");
    }
    Ok(items)
}

/// Deletes a stored subscription.
pub async fn delete(args: &AdminArgs, name: &str) -> anyhow::Result<()> {
    let client = args.client().await?;
    let path = format!("/v1/subscriptions/{}", encode(name));
    client.delete(client.first(), &path).await?;
    match args.output {
        Output::Json => println!("{}", json!({"name": name, "deleted": true})),
        Output::Table => println!("{name} deleted"),
    }
    Ok(())
}

/// Whether the replica that answered delivers it (a view without `running` is a status
/// of a replica older than the stored subscriptions: a running one).
fn running(view: &Value) -> bool {
    view["running"] != false
}

/// `first`, or `second` when `first` is null.
fn or<'a>(first: &'a Value, second: &'a Value) -> &'a Value {
    if first.is_null() { second } else { first }
}

/// The topics, comma-separated: the spec's, or the status's.
fn topics(view: &Value) -> String {
    let topics = or(&view["spec"]["topics"], &view["topics"]);
    match topics.as_array() {
        Some(topics) => topics.iter().map(cell).collect::<Vec<_>>().join(","),
        None => cell(topics),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Vec<(String, Map<String, Value>)>> {
        let env = |name: &str| (name == "URL").then(|| "https://example.com/in".to_string());
        items(
            "f.yaml",
            hookbridge::config::yaml_tree("f.yaml", text, &env)?,
        )
    }

    #[test]
    fn an_apply_file_holds_one_a_list_or_the_config_form() {
        let one = parse("name: a\ntopics: [t]\nurl: ${URL}\n").unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].0, "a");
        assert_eq!(
            Value::Object(one[0].1.clone()),
            json!({"topics": ["t"], "url": "https://example.com/in"})
        );
        let list = parse("- {name: a, topics: [t]}\n- {name: b, topics: [u]}\n").unwrap();
        assert_eq!(
            list.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let config = parse("subscriptions:\n  - name: c\n    timeout: ${T:-5s}\n").unwrap();
        assert_eq!(Value::Object(config[0].1.clone()), json!({"timeout": "5s"}));
    }

    #[test]
    fn an_apply_file_is_refused_with_where() {
        let refused = |text: &str| format!("{:#}", parse(text).unwrap_err());
        assert!(refused("").contains("no subscription"));
        assert!(refused("- {topics: [t]}\n").contains("[0].name: required"));
        assert!(
            refused("subscriptions:\n  - {name: a}\n  - {name: a}\n").contains("more than once")
        );
        assert!(refused("routes: []\nsubscriptions: []\n").contains("routes"));
        assert!(refused("url: ${MISSING}\nname: a\n").contains("MISSING"));
    }

    #[test]
    fn the_spec_is_shown_in_the_references_order() {
        let yaml = spec_yaml(&json!({
            "url": "u", "headers": {"x": "<redacted>"}, "topics": ["t"], "forward_headers": [],
            "rate_limit": null, "tls": {"ca": null, "cert": null}, "signing": {"secret": "<redacted>", "secrets": null}
        }))
        .unwrap();
        assert_eq!(
            yaml,
            "topics:\n- t\nurl: u\nsigning:\n  secret: <redacted>\nforward_headers: []\nheaders:\n  x: <redacted>\n"
        );
    }

    #[test]
    fn a_subscription_not_running_here_is_listed_as_such() {
        let table = list_table(&json!({"subscriptions": [
            {"name": "a", "source": "api", "tenant": "acme", "spec": {"topics": ["t", "u"], "url": "https://x"}, "running": false, "problem": "topic v is not the tenant's"},
            {"name": "b", "source": "config", "spec": {"topics": ["t"], "url": "https://y"}, "running": true, "paused": false},
        ]}));
        assert!(
            table.contains("a     api     acme    t,u     https://x  no"),
            "{table}"
        );
        assert!(
            table.contains("b     config  -       t       https://y  yes"),
            "{table}"
        );
        assert!(
            table.contains("a: not applied: topic v is not the tenant's"),
            "{table}"
        );
    }
}
