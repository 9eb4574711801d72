//! The admin API answers its CLI and scripts, not web pages: a request a browser makes on a
//! page's behalf (another `Origin`, `Sec-Fetch-Site: cross-site`) is refused with or without
//! a token, and without a token (a loopback listener) so is a `Host` that is not a loopback
//! address or `localhost`, as a DNS-rebinding page would send. Refused means `403`
//! problem+json that says why, and nothing done.

use crate::support::*;

const TOKEN: &str = "browser-admin-token-0123456789";

/// What a request with `headers` to `method path` got: its status and problem `detail`.
async fn ask(
    server: &Hookbridge,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    token: bool,
) -> (u16, String) {
    let mut request = http_client().request(method, format!("{}{path}", server.admin));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if token {
        request = request.bearer_auth(TOKEN);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (
        status,
        body["detail"].as_str().unwrap_or_default().to_string(),
    )
}

async fn paused(server: &Hookbridge, name: &str, token: bool) -> bool {
    let path = format!("/v1/subscriptions/{name}");
    let mut request = http_client().get(format!("{}{path}", server.admin));
    if token {
        request = request.bearer_auth(TOKEN);
    }
    let status: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
    status["paused"].as_bool().expect("paused in the status")
}

fn started(token: bool) -> (Hookbridge, String, tempfile::TempDir) {
    let topic = unique("browsed");
    let dir = tempfile::tempdir().unwrap();
    let broker = format!(
        "  kind: embedded\n  embedded: {{ dir: '{}' }}\n",
        dir.path().join("data").display()
    );
    let subs = subscription(&topic, &topic, "http://127.0.0.1:9/hook", "");
    let mut config = events_config(&broker, &topic, &subs);
    if token {
        config = with_admin_token(&config, TOKEN);
    }
    (Hookbridge::start(dir.path(), &config), topic, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tokenless_admin_api_refuses_other_sites_and_rebound_names() {
    use reqwest::Method;
    let (server, name, _dir) = started(false);
    let pause = format!("/v1/subscriptions/{name}/pause");
    for headers in [
        vec![("Origin", "https://evil.example")],
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Host", "evil.example")],
        vec![("Host", "evil.example:9090")],
    ] {
        let (status, detail) = ask(&server, Method::POST, &pause, &headers, false).await;
        assert_eq!(status, 403, "{headers:?}: {detail}");
        assert!(!detail.is_empty(), "{headers:?}: the refusal says why");
        let (status, _) = ask(&server, Method::GET, "/v1/config", &headers, false).await;
        assert_eq!(status, 403, "{headers:?} cannot read the config");
    }
    assert!(!paused(&server, &name, false).await, "nothing was paused");
    // The CLI's own requests, and a page of the same origin, are answered.
    for headers in [
        vec![],
        vec![("Host", "localhost:9090")],
        vec![("Sec-Fetch-Site", "same-origin")],
    ] {
        let (status, detail) = ask(&server, Method::GET, "/v1/config", &headers, false).await;
        assert_eq!(status, 200, "{headers:?}: {detail}");
    }
    let out = std::process::Command::new(BIN)
        .args(["status", &name, "--admin-url", &server.admin])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_api_with_a_token_refuses_other_sites_even_with_the_token() {
    use reqwest::Method;
    let (server, name, _dir) = started(true);
    let pause = format!("/v1/subscriptions/{name}/pause");
    let (status, detail) = ask(
        &server,
        Method::POST,
        &pause,
        &[("Origin", "https://evil.example")],
        true,
    )
    .await;
    assert_eq!(status, 403, "{detail}");
    assert!(!paused(&server, &name, true).await, "nothing was paused");
    // Behind a token, any name reaches it (a Kubernetes Service's, say).
    let (status, detail) = ask(
        &server,
        Method::GET,
        "/v1/config",
        &[("Host", "hookbridge-admin.platform.svc:9090")],
        true,
    )
    .await;
    assert_eq!(status, 200, "{detail}");
}
