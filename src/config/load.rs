//! From a YAML file to a validated [`Config`], with errors that name the file, the key
//! path and what is wrong.
//!
//! Environment variables are substituted in the parsed tree rather than in the text, so a
//! secret containing `#` or `: ` cannot change the document's structure, and an unset
//! variable is reported with the key that uses it. So that `${VAR}` may stand anywhere a
//! scalar can, unquoted and inside a flow mapping (`{ secret: ${SECRET} }`, where `{` and
//! `}` would end a plain scalar), each reference is first swapped for a plain token, the
//! text parsed, and the tokens swapped back in the tree before substitution.

use std::fmt;
use std::path::Path;

use serde_norway::Value;

use super::{Config, validate};

/// One thing wrong with a config, at a key path such as `routes[0].verify.secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the config file")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {}", list(.problems))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

fn list(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let lines: Vec<String> = many.iter().map(|p| format!("\n  - {p}")).collect();
            format!("{} problems:{}", many.len(), lines.concat())
        }
    }
}

/// The problems of config `file`, as its error.
fn invalid(file: &str, problems: Vec<Problem>) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_string(),
        problems,
    }
}

/// Reads, substitutes, parses and validates a config file, using the process environment.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    load_str(&file, &text, &|name| std::env::var(name).ok())
}

/// Parses and validates config text; `file` is only used in messages and `env` looks up
/// variables for `${VAR}` substitution.
pub fn load_str(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let invalid = |problems| invalid(file, problems);
    let mut tree = yaml_tree(file, text, env)?;
    if tree.is_null() {
        // An empty file is a config of all defaults.
        tree = Value::Mapping(Default::default());
    }

    let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "(top level)".to_string()
        } else {
            path
        };
        invalid(vec![Problem::new(path, e.into_inner().to_string())])
    })?;

    let problems = validate::check(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(invalid(problems))
    }
}

/// Parses YAML text in the config file's form and substitutes its `${VAR}` references
/// (`hookbridge subscriptions apply` reads its files so too).
pub fn yaml_tree(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Value, ConfigError> {
    let invalid = |problems| invalid(file, problems);
    let references = References::take_out(text);
    let mut tree: Value = serde_norway::from_str(&references.text).map_err(|e| {
        invalid(vec![Problem::new(
            "(document)",
            format!(
                "invalid YAML: {}; a value holding `: `, ` #` or, inside `{{ }}` or `[ ]`, any of `,{{}}[]` must be quoted",
                references.put_back(&e.to_string())
            ),
        )])
    })?;
    references.restore_tree(&mut tree);
    let mut problems = Vec::new();
    substitute_tree(&mut tree, &mut String::new(), env, &mut problems);
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    Ok(tree)
}

/// The `${...}` references of a config text, swapped for plain tokens while it is parsed.
struct References {
    /// The text with every reference replaced by `<prefix><n>_`.
    text: String,
    prefix: String,
    originals: Vec<String>,
}

impl References {
    fn take_out(text: &str) -> References {
        // A prefix the text does not hold, so a token is never mistaken for user text.
        let mut prefix = "hbref_".to_string();
        while text.contains(&prefix) {
            prefix.insert(0, 'x');
        }
        let (mut out, mut originals) = (String::with_capacity(text.len()), Vec::new());
        let mut rest = text;
        while let Some(start) = rest.find('$') {
            out.push_str(&rest[..start]);
            let tail = &rest[start..];
            if let Some(after) = tail.strip_prefix("$${") {
                // An escaped `${`: left to the substitution, which reads it as literal.
                out.push_str("$${");
                rest = after;
            } else if let Some(end) = tail.starts_with("${").then(|| tail.find('}')).flatten()
                && !tail[..end].contains('\n')
            {
                out.push_str(&format!("{prefix}{}_", originals.len()));
                originals.push(tail[..=end].to_string());
                rest = &tail[end + 1..];
            } else {
                out.push('$');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        References {
            text: out,
            prefix,
            originals,
        }
    }

    /// `text` with every token swapped back for its reference.
    fn put_back(&self, text: &str) -> String {
        if self.originals.is_empty() || !text.contains(&self.prefix) {
            return text.to_string();
        }
        // The trailing `_` keeps tokens apart: `<prefix>1_` is not inside `<prefix>10_`.
        let mut out = text.to_string();
        for (n, original) in self.originals.iter().enumerate() {
            out = out.replace(&format!("{}{n}_", self.prefix), original);
        }
        out
    }

    fn restore_tree(&self, node: &mut Value) {
        if self.originals.is_empty() {
            return;
        }
        match node {
            Value::String(text) => {
                if text.contains(&self.prefix) {
                    *text = self.put_back(text);
                }
            }
            Value::Sequence(items) => items.iter_mut().for_each(|i| self.restore_tree(i)),
            Value::Mapping(map) => {
                let entries = std::mem::take(map);
                for (mut key, mut value) in entries {
                    self.restore_tree(&mut key);
                    self.restore_tree(&mut value);
                    map.insert(key, value);
                }
            }
            Value::Tagged(tagged) => self.restore_tree(&mut tagged.value),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string scalar of the tree (not in keys).
fn substitute_tree(
    node: &mut Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match node {
        Value::String(text) => match substitute(text, env) {
            Ok(Some(replaced)) => *text = replaced,
            Ok(None) => {}
            Err(message) => problems.push(Problem::new(path.clone(), message)),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                substitute_tree(item, path, env, problems);
                path.truncate(len);
            }
        }
        Value::Mapping(map) => {
            for (key, value) in map.iter_mut() {
                let len = path.len();
                let name = match key {
                    Value::String(s) => s.clone(),
                    other => serde_norway::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&name);
                substitute_tree(value, path, env, problems);
                path.truncate(len);
            }
        }
        Value::Tagged(tagged) => substitute_tree(&mut tagged.value, path, env, problems),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Substitutes one string. `Ok(None)` when it holds no `${`, so untouched strings are not
/// copied. `$${` stands for a literal `${`.
fn substitute(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    if !text.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in `{text}`"))?;
            let expr = &after[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{expr}}}` is not a valid variable reference"));
            }
            match (
                env(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write `${{{name}:-default}}` for an optional value)"
                    ));
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitution() {
        assert_eq!(substitute("plain", &env).unwrap(), None);
        assert_eq!(substitute("${SET}", &env).unwrap().unwrap(), "value");
        assert_eq!(
            substitute("a-${SET}-b", &env).unwrap().unwrap(),
            "a-value-b"
        );
        assert_eq!(substitute("${UNSET:-dflt}", &env).unwrap().unwrap(), "dflt");
        assert_eq!(substitute("${EMPTY:-dflt}", &env).unwrap().unwrap(), "dflt");
        assert_eq!(substitute("${EMPTY}", &env).unwrap().unwrap(), "");
        assert_eq!(substitute("${UNSET:-}", &env).unwrap().unwrap(), "");
        assert_eq!(
            substitute("$${SET} costs $5", &env).unwrap().unwrap(),
            "${SET} costs $5"
        );
        assert!(
            substitute("${UNSET}", &env)
                .unwrap_err()
                .contains("UNSET is not set")
        );
        assert!(
            substitute("${SET", &env)
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(
            substitute("${a b}", &env)
                .unwrap_err()
                .contains("not a valid variable")
        );
    }

    #[test]
    fn unset_variable_names_the_key() {
        let text = "routes:\n  - name: gh\n    topic: t\n    verify: { kind: github, secret: '${NOPE}' }\n";
        let err = load_str("f.yaml", text, &env).unwrap_err();
        assert_eq!(err.problems()[0].path, "routes[0].verify.secret");
        assert!(
            err.to_string()
                .starts_with("f.yaml: routes[0].verify.secret: environment variable NOPE")
        );
    }

    #[test]
    fn references_stand_unquoted_anywhere_a_scalar_can() {
        let env = |name: &str| match name {
            // A secret that would break the YAML if it were substituted in the text.
            "SECRET" => Some("a: b # {c}, [d]".to_string()),
            _ => None,
        };
        let text = "routes:\n  - name: gh\n    topic: t\n    verify: { kind: github, secret: ${SECRET} }\n  - name: s\n    topic: ${TOPIC:-orders}\n    verify: { kind: stripe, secret: '${SECRET}', tolerance: ${TOL:-5m} }\nbroker: { embedded: { partitions: ${P:-3} } }\n";
        let config = load_str("f.yaml", text, &env).unwrap();
        let secret = |i: usize| match &config.routes[i].verify {
            crate::config::VerifyConfig::Github { secret } => secret.expose().to_string(),
            crate::config::VerifyConfig::Stripe { secret, .. } => secret.expose().to_string(),
            _ => unreachable!(),
        };
        assert_eq!(secret(0), "a: b # {c}, [d]");
        assert_eq!(secret(1), "a: b # {c}, [d]");
        assert_eq!(config.routes[1].topic, "orders");
        assert_eq!(config.broker.embedded.partitions, 3);

        // An unset one is still named, with its key.
        let err = load_str(
            "f.yaml",
            "routes:\n  - { name: gh, topic: t, verify: { kind: github, secret: ${NOPE} } }\n",
            &env,
        )
        .unwrap_err();
        assert_eq!(err.problems()[0].path, "routes[0].verify.secret");
        // A broken document says where quoting helps, and shows references as written.
        let err = load_str("f.yaml", "routes: [ ${X}: y: z ]\n", &env).unwrap_err();
        assert!(err.to_string().contains("must be quoted"), "{err}");
        assert!(!err.to_string().contains("hbref_"), "{err}");
    }

    #[test]
    fn numbers_may_come_from_the_environment() {
        let text = "broker: { embedded: { partitions: '${P:-3}' } }\n";
        let config = load_str("f.yaml", text, &env).unwrap();
        assert_eq!(config.broker.embedded.partitions, 3);
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let config = load_str("f.yaml", "", &env).unwrap();
        assert_eq!(config.broker.embedded.partitions, 8);
        assert!(config.routes.is_empty());
    }
}
