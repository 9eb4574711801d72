//! Config values that must never be shown: their `Debug` output is redacted, so a secret
//! cannot reach a log line, an error message or a `{:?}` by accident. Reading one is an
//! explicit `expose()`.

use std::fmt;

use serde::Deserialize;

/// A secret string: a verifier secret, a token, a signing key.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_string())
    }
}

/// Shown (`GET /v1/config`) as `<redacted>`, or empty when it is.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

/// Shown without its credentials.
impl serde::Serialize for CredentialedUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("<redacted>")
        }
    }
}

/// A URL that may carry credentials (`https://user:password@host/`, a secret path or query):
/// shown without them (see [`redact_url`]).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct CredentialedUrl(String);

impl CredentialedUrl {
    pub fn new(url: impl Into<String>) -> CredentialedUrl {
        CredentialedUrl(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced, for messages.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for CredentialedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for CredentialedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// A URL as it is shown (logs, errors, the admin API): its scheme, host and port. Its
/// user-info becomes `***@`, and its path and query, where receivers such as Slack and
/// Discord keep their secret, become `/…`: `https://me:pw@hooks.example/services/T/B/x?t=y`
/// → `https://***@hooks.example/…`. Comma-separated URLs (NATS servers) are shown each so;
/// text that is not a URL as it is.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let tail = if matches!(tail, "" | "/") {
        tail
    } else {
        "/…"
    };
    format!("{scheme}://{host}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_url_passwords_are_not_shown() {
        assert_eq!(format!("{:?}", Secret::new("s3cret")), "<redacted>");
        assert_eq!(
            redact_url("https://me:pa:ss@host:8443/hook?x=1"),
            "https://***@host:8443/…"
        );
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T000/B000/XXXX"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(redact_url("http://host/a@b"), "http://host/…");
        assert_eq!(redact_url("http://host:80/"), "http://host:80/");
        assert_eq!(
            redact_url("nats://a:4222,nats://u:p@b:4222"),
            "nats://a:4222,nats://***@b:4222"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
