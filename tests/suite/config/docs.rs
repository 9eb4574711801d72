//! The configuration reference (`docs/configuration.md`) does not drift from the config
//! types: its complete example is a valid config, and every key of the types (read from
//! the loaded example's own debug output, so nothing is listed by hand here) has a row.

use std::collections::BTreeSet;

const REFERENCE: &str = include_str!("../../../docs/configuration.md");

/// The YAML block under "A complete example".
fn complete_example() -> &'static str {
    let section = REFERENCE
        .split("## A complete example")
        .nth(1)
        .expect("a complete example section");
    let start = section.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = section[start..].find("```").expect("the block ends") + start;
    &section[start..end]
}

/// Values for the example's `${VAR}`s.
fn env(name: &str) -> Option<String> {
    Some(match name {
        "PARTNER_SECRET" => "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
        _ => format!("{}-value", name.to_lowercase()),
    })
}

/// Every key path of a config, from its pretty debug output: `routes[].verify.secret`.
/// A line `name: ...` is a key; one ending in `{`, `[` or `(` opens what follows, which
/// closes at the line back at its indentation.
fn key_paths(debug: &str) -> BTreeSet<String> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut paths = BTreeSet::new();
    for line in debug.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        while stack.last().is_some_and(|(at, _)| *at >= indent) {
            stack.pop();
        }
        let Some((name, rest)) = text.split_once(": ") else {
            continue;
        };
        // Map entries (`"sasl.username": <redacted>`) are values, not keys of the file.
        if name.starts_with('"') || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        let parent = stack.last().map(|(_, p)| p.as_str()).unwrap_or("");
        let list = rest.ends_with('[');
        let path = if parent.is_empty() {
            name.to_string()
        } else {
            format!("{parent}.{name}")
        };
        paths.insert(path.clone());
        if rest.ends_with('{') || rest.ends_with('(') || list {
            stack.push((indent, if list { format!("{path}[]") } else { path }));
        }
    }
    // Only the leaves: a key that holds others is documented through them.
    let all = paths.clone();
    paths
        .into_iter()
        .filter(|p| {
            !all.iter()
                .any(|q| q.starts_with(&format!("{p}.")) || q.starts_with(&format!("{p}[].")))
        })
        .collect()
}

#[test]
fn the_complete_example_is_a_valid_config() {
    let config = hookbridge::config::load_str("docs/configuration.md", complete_example(), &env);
    if let Err(e) = &config {
        panic!("the complete example in docs/configuration.md is not valid: {e}");
    }
}

#[test]
fn every_key_of_the_config_is_in_the_reference() {
    let config = hookbridge::config::load_str("docs/configuration.md", complete_example(), &env)
        .expect("a valid example");
    let keys = key_paths(&format!("{config:#?}"));
    assert!(keys.len() > 60, "the walk found the keys: {keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        // Where a subscription was defined (the file or the admin API): not a key.
        .filter(|key| key.as_str() != "subscriptions[].source")
        .filter(|key| !REFERENCE.contains(&format!("`{key}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md has no row for: {missing:?} (or the complete example leaves them out)"
    );
}
