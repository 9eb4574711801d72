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

/// A refusal from the admin API, with its problem+json detail.
#[derive(Debug, thiserror::Error)]
#[error("{target}: {status} {detail}")]
pub struct Refused {
    pub target: String,
    pub status: StatusCode,
    pub detail: String,
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

    /// `DELETE path` at `target`, decoded.
    pub async fn send_delete<T: DeserializeOwned>(
        &self,
        target: &Target,
        path: &str,
    ) -> anyhow::Result<T> {
        self.send(target, Method::DELETE, path, None).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        target: &Target,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<T> {
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
            let detail = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|p| p.get("detail").and_then(|d| d.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(Refused {
                target: target.label.clone(),
                status,
                detail,
            }
            .into());
        }
        serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{}: the answer to {path} is not what was expected",
                target.label
            )
        })
    }
}
