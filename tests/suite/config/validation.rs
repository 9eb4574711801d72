//! `hookbridge check-config`: bad configs fail at start-up with a message naming the file,
//! the key and the problem; the shipped configs pass.

use std::process::Command;

use crate::support::BIN;

/// Runs check-config on `yaml` and returns (success, stdout + stderr).
fn check(yaml: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookbridge.yaml");
    std::fs::write(&path, yaml).unwrap();
    let output = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("GITHUB_SECRET")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (
        output.status.success(),
        text.replace(&path.display().to_string(), "FILE"),
    )
}

const ROUTE: &str = "routes:\n  - name: r\n    topic: t\n    verify: { kind: none }\n";

const SUB: &str =
    "subscriptions:\n  - name: s\n    topics: [t]\n    url: http://127.0.0.1:9000/hook\n";

#[test]
fn bad_configs_name_the_key_and_the_problem() {
    // (what, config, [expected fragments of the message])
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("unknown top-level key", "brokers: {}\n".into(), vec!["FILE:", "unknown field `brokers`"]),
        ("unknown nested key", "server: { listen: 127.0.0.1:1, max_bdy: 1MiB }\n".into(), vec!["server", "unknown field `max_bdy`"]),
        ("unknown broker kind", "broker: { kind: rabbit }\n".into(), vec!["broker.kind", "unknown variant `rabbit`"]),
        ("unknown verify kind", "routes:\n  - { name: r, topic: t, verify: { kind: md5 } }\n".into(), vec!["routes[0].verify", "unknown variant `md5`"]),
        ("missing secret", "routes:\n  - { name: r, topic: t, verify: { kind: github } }\n".into(), vec!["routes[0].verify", "missing field `secret`"]),
        ("secret from an unset variable", "routes:\n  - { name: r, topic: t, verify: { kind: github, secret: '${GITHUB_SECRET}' } }\n".into(), vec!["routes[0].verify.secret", "GITHUB_SECRET is not set"]),
        ("secret empty", "routes:\n  - { name: r, topic: t, verify: { kind: stripe, secret: '${GITHUB_SECRET:-}' } }\n".into(), vec!["routes[0].verify.secret", "secret is empty"]),
        ("unknown key in a route", "routes:\n  - { name: r, topic: t, verify: { kind: none }, tpoic: x }\n".into(), vec!["routes[0]", "unknown field `tpoic`"]),
        ("duplicate route", format!("{ROUTE}  - name: r\n    topic: u\n    verify: {{ kind: none }}\n"), vec!["routes[1].name", "defined twice"]),
        ("route name with a slash", "routes:\n  - { name: a/b, topic: t, verify: { kind: none } }\n".into(), vec!["routes[0].name", "may only hold"]),
        ("topic Kafka rejects", "routes:\n  - { name: r, topic: 'orders*', verify: { kind: none } }\n".into(), vec!["routes[0].topic", "`orders*`"]),
        ("topic with an empty NATS token", "routes:\n  - { name: r, topic: 'a..b', verify: { kind: none } }\n".into(), vec!["routes[0].topic", "`..`"]),
        ("extractor with two sources", "routes:\n  - { name: r, topic: t, verify: { kind: none }, key: { header: X-K, json: /k } }\n".into(), vec!["routes[0].key", "exactly one"]),
        ("JSON pointer without slash", "routes:\n  - { name: r, topic: t, verify: { kind: none }, event_type: { json: type } }\n".into(), vec!["routes[0].event_type.json", "JSON pointer"]),
        ("bad header name", "routes:\n  - { name: r, topic: t, verify: { kind: token, header: 'X Token', value: v } }\n".into(), vec!["routes[0].verify.header", "not a valid HTTP header name"]),
        ("duration without unit", "routes:\n  - { name: r, topic: t, verify: { kind: none }, publish_timeout: 5 }\n".into(), vec!["routes[0].publish_timeout", "no unit"]),
        ("bad size", "server: { max_body: 1 lightyear }\n".into(), vec!["server.max_body", "unknown size unit"]),
        ("bad listen address", "server: { listen: 'localhost' }\n".into(), vec!["server.listen", "invalid socket address"]),
        ("same listen and admin", "server: { listen: 127.0.0.1:8080, admin_listen: 127.0.0.1:8080 }\n".into(), vec!["server.admin_listen", "same address"]),
        ("open admin API", "server: { admin_listen: 0.0.0.0:9090 }\n".into(), vec!["server.admin_token", "not a loopback address"]),
        ("bad standard webhooks secret", "routes:\n  - { name: r, topic: t, verify: { kind: standard_webhooks, secret: 'whsec_!!' } }\n".into(), vec!["routes[0].verify.secret", "whsec_"]),
        ("bad subscription URL", format!("{ROUTE}subscriptions:\n  - {{ name: s, topics: [t], url: 'ftp://x/y' }}\n"), vec!["subscriptions[0].url", "not an http"]),
        ("subscription without topics", format!("{ROUTE}subscriptions:\n  - {{ name: s, topics: [], url: 'http://x/y' }}\n"), vec!["subscriptions[0].topics", "names no topic"]),
        ("unknown payload mode", format!("{SUB}    payload: xml\n"), vec!["subscriptions[0].payload", "unknown variant `xml`"]),
        ("zero in flight", format!("{SUB}    max_in_flight: 0\n"), vec!["subscriptions[0].max_in_flight", "at least 1"]),
        ("a delivery among the refusals", format!("{SUB}    retry: {{ dead_letter_on: [400, 200] }}\n"), vec!["subscriptions[0].retry.dead_letter_on", "300 to 599"]),
        ("assignment overridden", "broker: { kafka: { properties: { partition.assignment.strategy: roundrobin } } }\n".into(), vec!["broker.kafka.properties.partition.assignment.strategy", "by number"]),
        ("rebalance timeout under a handover", "broker: { kafka: { properties: { max.poll.interval.ms: '60000' } } }\n".into(), vec!["broker.kafka.properties.max.poll.interval.ms", "at least 390000"]),
        ("attempt timeout past a handover", format!("{SUB}    timeout: 10m\n"), vec!["subscriptions[0].timeout", "at most 300s"]),
        ("backoff inverted", format!("{SUB}    retry: {{ initial_backoff: 10m, max_backoff: 1s }}\n"), vec!["subscriptions[0].retry.max_backoff", "shorter"]),
        ("dead letters loop", format!("{SUB}    dead_letter_topic: t\n"), vec!["subscriptions[0].dead_letter_topic", "loop"]),
        ("parked events loop", format!("{SUB}    parking_topic: t\n"), vec!["subscriptions[0].parking_topic", "delivered twice"]),
        ("parking never", format!("{SUB}    retry: {{ park_after: 0s }}\n"), vec!["subscriptions[0].retry.park_after"]),
        ("signing secret not base64", format!("{SUB}    signing: {{ secret: 'whsec_%%%' }}\n"), vec!["subscriptions[0].signing.secret", "whsec_"]),
        ("partitions zero", "broker: { embedded: { partitions: 0 } }\n".into(), vec!["broker.embedded.partitions", "between 1 and 4096"]),
        ("partitions not a number", "broker: { nats: { partitions: eight } }\n".into(), vec!["broker.nats.partitions", "not a valid number"]),
        ("invalid YAML", "routes: [\n".into(), vec!["FILE:", "invalid YAML"]),
        ("duration past any clock", format!("{SUB}    retry: {{ max_age: 99999999999999999999s }}\n"), vec!["subscriptions[0].retry.max_age", "too long"]),
        ("tenants on an open admin API", "server: { tenants: [{ name: acme, token: t0123456789, topics: ['acme.*'] }] }\n".into(), vec!["server.tenants", "need server.admin_token"]),
        ("tenant name with a dot", "server: { admin_token: a0123456789, tenants: [{ name: a.b, token: t0123456789, topics: ['a.*'] }] }\n".into(), vec!["server.tenants[0].name", "may not hold `.`"]),
        ("tenant token reused", "server: { admin_token: a0123456789, tenants: [{ name: a, token: t0123456789, topics: ['a.*'] }, { name: b, token: t0123456789, topics: ['b.*'] }] }\n".into(), vec!["server.tenants[1].token", "its own"]),
        ("tenant token empty", "server: { admin_token: a0123456789, tenants: [{ name: a, token: '${GITHUB_SECRET:-}', topics: ['a.*'] }] }\n".into(), vec!["server.tenants[0].token", "secret is empty"]),
        ("tenant topic glob", "server: { admin_token: a0123456789, tenants: [{ name: a, token: t0123456789, topics: ['a/*'] }] }\n".into(), vec!["server.tenants[0].topics[0]", "topic glob"]),
        ("a file's subscription in a tenant's names", "server: { admin_token: a0123456789, tenants: [{ name: acme, token: t0123456789, topics: ['acme.*'] }] }\nsubscriptions:\n  - { name: acme.mine, topics: [t], url: 'http://x/y' }\n".into(), vec!["subscriptions[0].name", "tenant `acme`"]),
        ("a URL the client refuses", format!("{ROUTE}subscriptions:\n  - {{ name: s, topics: [t], url: 'http://x:99999/y' }}\n"), vec!["subscriptions[0].url", "port"]),
        ("tenant without topics", "server: { admin_token: a0123456789, tenants: [{ name: a, token: t0123456789, topics: [] }] }\n".into(), vec!["server.tenants[0].topics", "names no topic"]),
        ("duration just too long", format!("{SUB}    timeout: 365001d\n"), vec!["subscriptions[0].timeout", "too long"]),
    ];
    let mut failures = Vec::new();
    for (what, yaml, fragments) in &cases {
        let (ok, message) = check(yaml, &[]);
        let missing: Vec<&&str> = fragments
            .iter()
            .filter(|f| !message.contains(**f))
            .collect();
        if ok || !missing.is_empty() || !message.contains("FILE") {
            failures.push(format!(
                "{what}: ok={ok}, missing {missing:?} in:\n  {message}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_problem_is_listed_at_once() {
    let yaml = "routes:\n  - { name: '', topic: '', verify: { kind: github, secret: '' } }\n";
    let (ok, message) = check(yaml, &[]);
    assert!(!ok);
    for fragment in [
        "3 problems",
        "routes[0].name",
        "routes[0].topic",
        "routes[0].verify.secret",
    ] {
        assert!(message.contains(fragment), "{fragment} in {message}");
    }
}

#[test]
fn a_missing_file_is_named() {
    let output = Command::new(BIN)
        .args(["check-config", "--config", "/nonexistent/hb.yaml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/hb.yaml") && stderr.contains("No such file"),
        "{stderr}"
    );
}

#[test]
fn environment_substitution_fills_values() {
    let yaml = "routes:\n  - { name: r, topic: t, verify: { kind: github, secret: '${GITHUB_SECRET}' } }\n";
    let (ok, message) = check(yaml, &[("GITHUB_SECRET", "s3cret")]);
    assert!(ok, "{message}");
}

#[test]
fn shipped_configs_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    for entry in std::fs::read_dir(format!("{root}/config")).unwrap() {
        let path = entry.unwrap().path();
        let output = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // And the built-in default, used without --config.
    let output = Command::new(BIN)
        .arg("check-config")
        .env_remove("HOOKBRIDGE_CONFIG")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("built-in"));
}

/// The commented GitHub route of the shipped config, uncommented as it says, is valid: the
/// contract's own `verify: { kind: github, secret: ${GITHUB_SECRET} }`, unquoted in a flow
/// mapping.
#[test]
fn the_shipped_github_route_uncommented_is_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let shipped = std::fs::read_to_string(format!("{root}/config/hookbridge.yaml")).unwrap();
    let mut in_github_route = false;
    let uncommented: String = shipped
        .lines()
        .map(|line| {
            let rest = line.strip_prefix("  # ").unwrap_or_default();
            in_github_route =
                rest.starts_with("- name: github") || (in_github_route && rest.starts_with("  "));
            if in_github_route {
                format!("  {rest}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(uncommented.contains("  - name: github\n"));
    assert!(uncommented.contains("verify: { kind: github, secret: ${GITHUB_SECRET} }"));
    let (ok, message) = check(
        &uncommented,
        &[("GITHUB_SECRET", "s3cret: with # odd {chars}")],
    );
    assert!(ok, "{message}");
    let (ok, message) = check(&uncommented, &[]);
    assert!(!ok);
    assert!(
        message.contains("verify.secret") && message.contains("GITHUB_SECRET is not set"),
        "{message}"
    );
}
