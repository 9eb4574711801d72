//! The admin API's client: the CLI's verbs are requests to `--admin-url`.
//!
//! An `http://` admin URL whose host name resolves to several addresses (a Kubernetes
//! headless Service names every pod) is asked at each of them: `status` shows every
//! replica, `pause` pauses them all. Any other URL is asked once.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

/// How long one admin request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One replica's admin listener.
#[derive(Debug, Clone)]
pub struct Target {
    /// What the user knows it by: the URL, or the URL and the address it resolved to.
    pub label: String,
    /// `scheme://authority`, without a trailing slash.
    base: String,
    host: HeaderValue,
}

pub struct AdminClient {
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    token: Option<String>,
    pub targets: Vec<Target>,
}

/// A refusal from the admin API, with its problem+json detail and, when it names them
/// (an invalid subscription), the keys that are wrong, one a line.
#[derive(Debug, thiserror::Error)]
pub struct Refused {
    pub target: String,
    pub status: StatusCode,
    pub detail: String,
    /// The problem's `title`, if it has one.
    pub title: Option<String>,
    /// The problem's `errors` member: `(key, message)`, the key relative to the subscription.
    pub errors: Vec<(String, String)>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self
            .errors
            .iter()
            .map(|(key, message)| format!("{key}: {message}"))
            .collect();
        // A detail that only repeats the errors gives way to the title; they follow.
        let detail = match &self.title {
            Some(title) if !lines.is_empty() && lines.iter().all(|l| self.detail.contains(l)) => {
                title
            }
            _ => &self.detail,
        };
        write!(f, "{}: {} {detail}", self.target, self.status)?;
        for line in &lines {
            write!(f, "\n  - {line}")?;
        }
        Ok(())
    }
}

impl Refused {
    /// Reads a refusal's problem+json (or whatever text came instead).
    fn from_answer(target: &Target, status: StatusCode, bytes: &[u8]) -> Refused {
        let problem = serde_json::from_slice::<serde_json::Value>(bytes).ok();
        let detail = problem
            .as_ref()
            .and_then(|p| p.get("detail").and_then(|d| d.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned());
        let errors = problem
            .as_ref()
            .and_then(|p| p.get("errors").and_then(|e| e.as_array()).cloned())
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let text = |field: &str| match &e[field] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "-".to_string(),
                    other => other.to_string(),
                };
                (text("key"), text("message"))
            })
            .collect();
        let title = problem
            .as_ref()
            .and_then(|p| p.get("title").and_then(|t| t.as_str()).map(str::to_string));
        Refused {
            target: target.label.clone(),
            status,
            detail,
            title,
            errors,
        }
    }
}

impl AdminClient {
    pub async fn new(admin_url: &str, token: Option<String>) -> anyhow::Result<AdminClient> {
        let base: Uri = admin_url
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("--admin-url {admin_url} is not a URL"))?;
        let host = base
            .authority()
            .with_context(|| format!("--admin-url {admin_url} has no host"))?
            .clone();
        let targets = match base.scheme_str() {
            Some("http") => {
                let port = host.port_u16().unwrap_or(80);
                let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.host(), port))
                    .await
                    .with_context(|| format!("cannot resolve {}", host.host()))?
                    .collect();
                addrs.sort();
                addrs.dedup();
                let one = addrs.len() == 1;
                addrs
                    .into_iter()
                    .map(|addr| Target {
                        label: if one {
                            admin_url.to_string()
                        } else {
                            format!("{admin_url} ({addr})")
                        },
                        base: format!("http://{addr}")
                            .parse()
                            .expect("an address is a URI"),
                        host: HeaderValue::from_str(host.as_str()).expect("an authority"),
                    })
                    .collect()
            }
            Some("https") => vec![Target {
                label: admin_url.to_string(),
                base: format!("https://{host}"),
                host: HeaderValue::from_str(host.as_str()).expect("an authority"),
            }],
            _ => bail!("--admin-url {admin_url} must start with http:// or https://"),
        };
        if targets.is_empty() {
            bail!("{} resolves to no address", host.host());
        }
        use rustls_platform_verifier::BuilderVerifierExt;
        let tls = rustls::ClientConfig::builder()
            .with_platform_verifier()
            .context("cannot load the platform's TLS roots")?
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(AdminClient {
            http: Client::builder(TokioExecutor::new()).build(connector),
            token: token.filter(|t| !t.is_empty()),
            targets,
        })
    }

    /// `GET path` at `target`, decoded.
    pub async fn get<T: DeserializeOwned>(&self, target: &Target, path: &str) -> anyhow::Result<T> {
        self.send(target, Method::GET, path, None).await
    }

    /// `POST path` at `target` with a JSON body, decoded.
    pub async fn post<T: DeserializeOwned>(
        &self,
        target: &Target,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<T> {
        self.send(target, Method::POST, path, body).await
    }

    /// `PUT path` at `target` with a JSON body: the answer's status (`201` created, `200`
    /// replaced) and its body, decoded.
    pub async fn put<T: DeserializeOwned>(
        &self,
        target: &Target,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<(StatusCode, T)> {
        let (status, bytes) = self.exchange(target, Method::PUT, path, Some(body)).await?;
        Ok((status, decode(target, path, &bytes)?))
    }

    /// `DELETE path` at `target`, decoded.
    pub async fn send_delete<T: DeserializeOwned>(
        &self,
        target: &Target,
        path: &str,
    ) -> anyhow::Result<T> {
        self.send(target, Method::DELETE, path, None).await
    }

    /// `DELETE path` at `target`, whose success (`204`) has no body.
    pub async fn delete(&self, target: &Target, path: &str) -> anyhow::Result<()> {
        self.exchange(target, Method::DELETE, path, None).await?;
        Ok(())
    }

    /// The first replica behind the admin URL: what goes through the broker (operations,
    /// the stored subscriptions) is asked of one replica for all.
    pub fn first(&self) -> &Target {
        &self.targets[0]
    }

    async fn send<T: DeserializeOwned>(
        &self,
        target: &Target,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<T> {
        let (_, bytes) = self.exchange(target, method, path, body).await?;
        decode(target, path, &bytes)
    }

    /// Sends a request; a success's status and body, or the refusal as [`Refused`].
    async fn exchange(
        &self,
        target: &Target,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let uri = format!("{}{path}", target.base);
        let mut request = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::HOST, target.host.clone())
            .header(header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(body)?)
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request))
            .await
            .with_context(|| format!("{}: no answer within {REQUEST_TIMEOUT:?}", target.label))?
            .with_context(|| format!("{}: cannot reach the admin API", target.label))?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(Refused::from_answer(target, status, &bytes).into());
        }
        Ok((status, bytes))
    }
}

/// A success's JSON body, decoded.
fn decode<T: DeserializeOwned>(target: &Target, path: &str, bytes: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(bytes).with_context(|| {
        format!(
            "{}: the answer to {path} is not what was expected",
            target.label
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> String {
        let target = Target {
            label: "http://admin".into(),
            base: "http://127.0.0.1:9090".into(),
            host: HeaderValue::from_static("admin"),
        };
        Refused::from_answer(&target, StatusCode::UNPROCESSABLE_ENTITY, body.as_bytes()).to_string()
    }

    #[test]
    fn a_refusal_shows_its_detail_and_each_key() {
        let problem = |detail: &str| {
            serde_json::json!({
                "type": "urn:hookbridge:problem:invalid-subscription",
                "title": "Invalid subscription", "status": 422, "detail": detail,
                "errors": [
                    {"key": "retry.max_attempts", "message": "must be at least 1"},
                    {"key": "url", "message": "missing field `url`"},
                ]
            })
            .to_string()
        };
        let listed = "\n  - retry.max_attempts: must be at least 1\n  - url: missing field `url`";
        // A detail that only repeats the errors gives way to the title.
        assert_eq!(
            refused(&problem(
                "retry.max_attempts: must be at least 1; url: missing field `url`"
            )),
            format!("http://admin: 422 Unprocessable Entity Invalid subscription{listed}")
        );
        assert_eq!(
            refused(&problem("the subscription is not valid")),
            format!("http://admin: 422 Unprocessable Entity the subscription is not valid{listed}")
        );
        assert_eq!(
            refused("upstream timed out"),
            "http://admin: 422 Unprocessable Entity upstream timed out"
        );
    }
}
