//! Subscriptions made through the admin API: the form they are stored in (in the broker),
//! how one is checked, and how they join the config file's to make the running config.
//!
//! A stored subscription holds the contract's subscription keys as it was given them, not
//! as a `SubscriptionConfig`, so that a later version reading it applies its own defaults
//! and checks. Values are taken literally: no `${VAR}` is substituted, so a tenant cannot
//! read the process's environment through one.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Config, Problem, Source, SubscriptionConfig, TenantConfig, validate};

/// A subscription made through the admin API, as the broker stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSubscription {
    /// Its full name: `<tenant>.<name>` for a tenant's.
    pub name: String,
    /// The tenant that made it; none for the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Its keys, as given, without `name`.
    pub spec: Map<String, Value>,
}

/// Why a stored subscription cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// Keys that are wrong, each named as within the subscription (`retry.max_attempts`).
    #[error("{}", list(.0))]
    Invalid(Vec<Problem>),
    /// Something its tenant may not do.
    #[error("{0}")]
    Forbidden(String),
}

fn list(problems: &[Problem]) -> String {
    let items: Vec<String> = problems.iter().map(Problem::to_string).collect();
    items.join("; ")
}

impl StoredSubscription {
    /// The subscription it defines, checked on its own as `check-config` checks one, and
    /// against its tenant's rights when it has one.
    pub fn parse(&self, tenants: &[TenantConfig]) -> Result<SubscriptionConfig, SpecError> {
        let mut object = self.spec.clone();
        object.insert("name".into(), Value::String(self.name.clone()));
        let mut sub: SubscriptionConfig = serde_path_to_error::deserialize(Value::Object(object))
            .map_err(|e| {
            let path = e.path().to_string();
            SpecError::Invalid(vec![Problem::new(path, e.into_inner().to_string())])
        })?;
        sub.source = Source::Api {
            tenant: self.tenant.clone(),
        };
        let problems = validate::subscription(&sub);
        if !problems.is_empty() {
            return Err(SpecError::Invalid(problems));
        }
        reserved(&sub).map_err(SpecError::Forbidden)?;
        if let Some(name) = &self.tenant {
            let tenant = tenants.iter().find(|t| &t.name == name).ok_or_else(|| {
                SpecError::Forbidden(format!("tenant `{name}` is not configured"))
            })?;
            tenant_may(tenant, &sub).map_err(SpecError::Forbidden)?;
        }
        Ok(sub)
    }
}

/// The store of subscriptions is nobody's to read or write through a subscription (it
/// holds every subscription's secrets).
fn reserved(sub: &SubscriptionConfig) -> Result<(), String> {
    let store = crate::broker::stored::KAFKA_TOPIC;
    let named = [sub.dead_letter_topic(), sub.parking_topic()];
    for topic in sub.topics.iter().chain(&named) {
        if topic == store {
            return Err(format!(
                "`{store}` holds the stored subscriptions: no subscription may use it"
            ));
        }
    }
    Ok(())
}

/// What a tenant may not do: read or write topics outside its globs (dead-letter and
/// parking topics included, when it names them), or name files on the server (`tls`).
fn tenant_may(tenant: &TenantConfig, sub: &SubscriptionConfig) -> Result<(), String> {
    let named = sub
        .topics
        .iter()
        .map(|t| ("topics", t))
        .chain(
            sub.dead_letter_topic
                .iter()
                .map(|t| ("dead_letter_topic", t)),
        )
        .chain(sub.parking_topic.iter().map(|t| ("parking_topic", t)));
    for (key, topic) in named {
        // hookbridge's own topics hold other subscriptions' dead letters, parked and
        // resent events, whatever the tenant's globs say.
        if topic.starts_with("hookbridge.") {
            return Err(format!(
                "{key}: `{topic}`: topics beginning `hookbridge.` are hookbridge's own"
            ));
        }
        if !tenant.allows(topic) {
            return Err(format!(
                "{key}: tenant `{}` may not use topic `{topic}` (its topics are {})",
                tenant.name,
                tenant.topics.join(", ")
            ));
        }
    }
    if !sub.tls.is_empty() {
        return Err(
            "tls: names files on the server, which only the operator's config may do".into(),
        );
    }
    Ok(())
}

impl Config {
    /// The running config: this (the file's) with the stored subscriptions that can run
    /// beside it. One is left out, with why, when the file has a subscription of its name,
    /// when it is invalid, or when its tenant is gone or no longer allows what it asks.
    pub fn with_stored(&self, stored: &[StoredSubscription]) -> (Config, Vec<(String, String)>) {
        let mut running = self.clone();
        let mut left_out = Vec::new();
        for entry in stored {
            if self.subscriptions.iter().any(|s| s.name == entry.name) {
                left_out.push((
                    entry.name.clone(),
                    "the config file has a subscription of this name, which runs instead".into(),
                ));
                continue;
            }
            match entry.parse(&self.server.tenants) {
                Ok(sub) => running.subscriptions.push(sub),
                Err(e) => left_out.push((entry.name.clone(), e.to_string())),
            }
        }
        (running, left_out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tenant: Option<&str>, spec: serde_json::Value) -> StoredSubscription {
        StoredSubscription {
            name: "t.s".into(),
            tenant: tenant.map(str::to_string),
            spec: spec.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn hookbridge_topics_are_no_tenants_whatever_its_globs() {
        let tenants = [TenantConfig {
            name: "t".into(),
            token: crate::config::Secret::new("token-0123456789"),
            topics: vec!["*".into()],
        }];
        for spec in [
            serde_json::json!({ "topics": ["hookbridge.dlq.other"], "url": "http://x/" }),
            serde_json::json!({ "topics": ["a"], "url": "http://x/", "dead_letter_topic": "hookbridge.resend.other" }),
        ] {
            let refused = entry(Some("t"), spec.clone()).parse(&tenants);
            assert!(
                matches!(refused, Err(SpecError::Forbidden(_))),
                "{spec}: {refused:?}"
            );
        }
        let fine = serde_json::json!({ "topics": ["a"], "url": "http://x/" });
        assert!(entry(Some("t"), fine).parse(&tenants).is_ok());
        let store =
            serde_json::json!({ "topics": ["hookbridge.subscriptions"], "url": "http://x/" });
        assert!(matches!(
            entry(None, store).parse(&tenants),
            Err(SpecError::Forbidden(_))
        ));
    }
}
