//! Tenants: each token manages only its own subscriptions, on the topics its globs allow,
//! and sees and operates only its own (status, pause, dead letters, redrive, replay,
//! operations); anything else is a 403 or a 404 that tells nothing. The operator's token
//! sees all. A subscription made through the API is checked as `check-config` checks one
//! (a 422 naming the key) and is held by the egress guard, which the config file's are not.

use std::time::Duration;

use serde_json::{Value, json};

use super::stored::{call, put, tenant_name, with_tenants};
use super::{TOKEN, post};
use crate::support::backend::Backend;
use crate::support::receiver::Receiver;
use crate::support::*;

struct Tenant {
    name: String,
    token: String,
    topic: String,
}

impl Tenant {
    fn new() -> Tenant {
        let name = tenant_name();
        Tenant {
            token: format!("{name}-token-0123456789"),
            topic: format!("{name}.orders"),
            name,
        }
    }
}

/// Two tenants and a config-file subscription `audit` on the first tenant's topic, which
/// the `events` route feeds.
async fn two_tenants(loopback: bool) -> (Hookbridge, Receiver, Tenant, Tenant, tempfile::TempDir) {
    let (acme, beta) = (Tenant::new(), Tenant::new());
    let receiver = Receiver::start().await;
    let backend = Backend::embedded();
    let subs = subscription("audit", &acme.topic, &receiver.url, "");
    let config = with_tenants(
        &events_config(&backend.broker(2), &acme.topic, &subs),
        &[
            (&acme.name, &acme.token, &format!("{}.*", acme.name)),
            (&beta.name, &beta.token, &format!("{}.*", beta.name)),
        ],
        loopback,
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(dir.path(), &config);
    // The backend's directory lives as long as the test: kept in the returned one.
    std::mem::forget(backend);
    (server, receiver, acme, beta, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_sees_and_operates_only_its_own_subscriptions() {
    let (server, receiver, acme, beta, _dir) = two_tenants(true).await;
    let admin = &server.admin;
    let spec = |topic: &str| json!({ "topics": [topic], "url": receiver.url });
    assert_eq!(
        put(admin, &acme.token, "hook", &spec(&acme.topic)).await.0,
        201
    );
    assert_eq!(
        put(admin, &beta.token, "hook", &spec(&beta.topic)).await.0,
        201
    );

    // Each lists its own, by its short name; the operator lists all, by full names.
    let names = |list: &Value| -> Vec<String> {
        list["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, list) = call("GET", admin, &beta.token, "/v1/subscriptions").await;
    assert_eq!(names(&list), ["hook"]);
    assert_eq!(list["subscriptions"][0]["tenant"], beta.name.as_str());
    let (_, list) = call("GET", admin, TOKEN, "/v1/subscriptions").await;
    let mut all = names(&list);
    all.sort();
    let mut expected = vec![
        "audit".to_string(),
        format!("{}.hook", acme.name),
        format!("{}.hook", beta.name),
    ];
    expected.sort();
    assert_eq!(all, expected);

    // An operation of acme's, for beta to try to see.
    let (status, operation) =
        call("POST", admin, &acme.token, "/v1/subscriptions/hook/replay").await;
    assert_eq!(status, 400, "a replay needs a start: {operation}");
    let response = http_client()
        .post(format!("{admin}/v1/subscriptions/hook/replay"))
        .bearer_auth(&acme.token)
        .json(&json!({ "since": "2020-01-01T00:00:00Z", "dry_run": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let operation: Value = response.json().await.unwrap();
    assert_eq!(operation["subscription"], "hook");
    let id = operation["id"].as_str().unwrap().to_string();

    // Beta, at acme's subscription, by every name it could try, and at the config file's.
    let acme_full = format!("{}.hook", acme.name);
    for name in [acme_full.as_str(), "audit"] {
        for (method, path) in [
            ("GET", format!("/v1/subscriptions/{name}")),
            ("PUT", format!("/v1/subscriptions/{name}")),
            ("DELETE", format!("/v1/subscriptions/{name}")),
            ("POST", format!("/v1/subscriptions/{name}/pause")),
            ("POST", format!("/v1/subscriptions/{name}/resume")),
            ("POST", format!("/v1/subscriptions/{name}/replay")),
            ("GET", format!("/v1/dead-letters/{name}")),
            ("GET", format!("/v1/dead-letters/{name}/some-id")),
            ("POST", format!("/v1/dead-letters/{name}/redrive")),
        ] {
            let (status, problem) = match method {
                // Its own topic, so that only the name decides.
                "PUT" => put(admin, &beta.token, name, &spec(&beta.topic)).await,
                _ => call(method, admin, &beta.token, &path).await,
            };
            if method == "PUT" {
                // A name of its own (`<beta>.<name>`), made and taken away again.
                assert_eq!(status, 201, "{path}: {problem}");
                assert_eq!(call("DELETE", admin, &beta.token, &path).await.0, 204);
                continue;
            }
            assert_eq!(status, 404, "{method} {path}: {problem}");
            // The same answer as for a name nobody uses: it tells nothing.
            let (_, nobody) = call(method, admin, &beta.token, &path.replace(name, "nobody")).await;
            assert_eq!(
                problem.to_string(),
                nobody.to_string().replace("nobody", name),
                "{method} {path}"
            );
        }
    }
    for (method, path) in [
        ("GET", format!("/v1/operations/{id}")),
        ("DELETE", format!("/v1/operations/{id}")),
    ] {
        assert_eq!(
            call(method, admin, &beta.token, &path).await.0,
            404,
            "{path}"
        );
    }
    let (_, operations) = call("GET", admin, &beta.token, "/v1/operations").await;
    assert_eq!(
        operations["operations"],
        json!([]),
        "beta sees no operation of acme's"
    );
    // Nor one of the operator's on `audit`, although beta has an `audit` of its own.
    assert_eq!(
        put(admin, &beta.token, "audit", &spec(&beta.topic)).await.0,
        201
    );
    let response = http_client()
        .post(format!("{admin}/v1/subscriptions/audit/replay"))
        .bearer_auth(TOKEN)
        .json(&json!({ "since": "2020-01-01T00:00:00Z", "dry_run": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let operators: Value = response.json().await.unwrap();
    let (_, operations) = call("GET", admin, &beta.token, "/v1/operations").await;
    assert_eq!(
        operations["operations"],
        json!([]),
        "beta sees no operation of the operator's"
    );
    let path = format!("/v1/operations/{}", operators["id"].as_str().unwrap());
    assert_eq!(call("DELETE", admin, &beta.token, &path).await.0, 404);
    let (_, operations) = call("GET", admin, &acme.token, "/v1/operations").await;
    assert_eq!(operations["operations"][0]["id"], id.as_str());
    assert_eq!(call("GET", admin, &beta.token, "/v1/config").await.0, 403);

    // Topics outside its globs, a dead-letter topic there, and files on the server.
    for refused in [
        json!({ "topics": [acme.topic], "url": receiver.url }),
        json!({ "topics": [beta.topic, "other"], "url": receiver.url }),
        json!({ "topics": [beta.topic], "url": receiver.url, "dead_letter_topic": acme.topic }),
        json!({ "topics": [beta.topic], "url": receiver.url, "tls": { "ca": "/etc/hostname" } }),
    ] {
        let (status, problem) = put(admin, &beta.token, "sneaky", &refused).await;
        assert_eq!(status, 403, "{refused}: {problem}");
        assert_eq!(problem["type"], "urn:hookbridge:problem:forbidden");
    }
    assert_eq!(
        call("GET", admin, &beta.token, "/v1/subscriptions/sneaky")
            .await
            .0,
        404,
        "nothing refused is stored"
    );

    // What beta may do to its own: pause and resume it.
    let (status, paused) = call("POST", admin, &beta.token, "/v1/subscriptions/hook/pause").await;
    assert_eq!((status, &paused["paused"]), (200, &json!(true)));
    let (_, acme_view) = call("GET", admin, &acme.token, "/v1/subscriptions/hook").await;
    assert_eq!(acme_view["paused"], false, "acme's is untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_given_to_the_api_is_checked_as_check_config_checks_one() {
    let (server, receiver, acme, _beta, _dir) = two_tenants(true).await;
    let admin = &server.admin;
    let cases = [
        (
            json!({ "topics": [acme.topic], "url": receiver.url, "filter": { "expression": "body.amount >" } }),
            "filter.expression",
            "column",
        ),
        (
            json!({ "topics": [acme.topic], "url": "ftp://example.com" }),
            "url",
            "http",
        ),
        (
            json!({ "topics": [acme.topic], "url": receiver.url, "retry": { "max_attempts": "many" } }),
            "retry.max_attempts",
            "number",
        ),
        (
            json!({ "topics": [acme.topic], "url": receiver.url, "urll": "x" }),
            "urll",
            "unknown field",
        ),
        (
            json!({ "topics": [acme.topic], "url": receiver.url, "name": "other" }),
            "name",
            "path",
        ),
        // Refused by the delivery client, not by the URI grammar: checked as delivery
        // would build it, so no replica is left with a subscription it cannot run.
        (
            json!({ "topics": [acme.topic], "url": "http://example.com:99999/" }),
            "url",
            "port",
        ),
    ];
    for (spec, key, said) in cases {
        let (status, problem) = put(admin, &acme.token, "checked", &spec).await;
        assert_eq!(status, 422, "{spec}: {problem}");
        assert_eq!(
            problem["type"],
            "urn:hookbridge:problem:invalid-subscription"
        );
        let errors = problem["errors"].as_array().unwrap();
        assert!(
            errors
                .iter()
                .any(|e| e["key"] == key
                    && e["message"].as_str().unwrap().to_lowercase().contains(said)),
            "{spec}: expected `{key}` and `{said}` in {problem}"
        );
    }
    let response = http_client()
        .put(format!("{admin}/v1/subscriptions/checked"))
        .bearer_auth(&acme.token)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // A file the operator's subscription names must be there.
    let (status, problem) = put(
        admin,
        TOKEN,
        "with-ca",
        &json!({ "topics": [acme.topic], "url": receiver.url, "tls": { "ca": "/nonexistent/ca.pem" } }),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["key"], "tls", "{problem}");
    // The config file's own is read-only here.
    let (status, problem) = put(
        admin,
        TOKEN,
        "audit",
        &json!({ "topics": [acme.topic], "url": receiver.url }),
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(
        call("DELETE", admin, TOKEN, "/v1/subscriptions/audit")
            .await
            .0,
        409
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_egress_guard_holds_subscriptions_made_through_the_api() {
    // No network allowed: the receiver's loopback address is refused to API-made
    // subscriptions, while the config file's `audit` delivers there.
    let (server, receiver, acme, _beta, _dir) = two_tenants(false).await;
    let spec =
        json!({ "topics": [acme.topic], "url": receiver.url.replace("127.0.0.1", "localhost") });
    assert_eq!(
        put(&server.admin, &acme.token, "guarded", &spec).await.0,
        201
    );
    for seq in 0..3 {
        post(&server, "k", seq, "test").await;
    }
    receiver
        .wait_for("audit's 3", Duration::from_secs(30), |r| r.len() >= 3)
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, view) = call(
            "GET",
            &server.admin,
            &acme.token,
            "/v1/subscriptions/guarded",
        )
        .await;
        if view["last_error"].to_string().contains("egress-denied") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the API's subscription is refused its loopback receiver: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 3, "only audit's reached the receiver");
}

/// Runs `hookbridge ARGS --admin-url ADMIN` as a tenant: its token in the environment.
async fn cli_as(
    admin: &str,
    token: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> std::process::Output {
    let mut command = std::process::Command::new(BIN);
    command
        .args(args)
        .args(["--admin-url", admin])
        .env("HOOKBRIDGE_ADMIN_TOKEN", token)
        .envs(envs.iter().copied());
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_application_team_manages_its_subscription_with_the_cli() {
    let (server, receiver, acme, _beta, dir) = two_tenants(true).await;
    let admin = &server.admin;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let file = dir.path().join("orders-hook.yaml");
    std::fs::write(
        &file,
        format!(
            "- name: orders-hook\n  topics: [{}]\n  url: {}\n  signing: {{ secret: \"${{ORDERS_HOOK_SECRET}}\" }}\n  filter: {{ expression: 'body.seq % 2 == 0' }}\n  transform: {{ expression: '{{\"order\": body.seq}}' }}\n",
            acme.topic, receiver.url
        ),
    )
    .unwrap();
    let file = file.display().to_string();
    let env = [("ORDERS_HOOK_SECRET", secret)];
    // Applied twice: made, then replaced.
    for outcome in ["orders-hook created", "orders-hook updated"] {
        let apply = ["subscriptions", "apply", "-f", &file];
        let out = cli_as(admin, &acme.token, &apply, &env).await;
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(outcome),
            "{out:?}"
        );
    }

    let out = cli_as(admin, &acme.token, &["subscriptions", "list"], &[]).await;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("orders-hook") && !listed.contains("audit"),
        "{listed}"
    );
    let out = cli_as(
        admin,
        &acme.token,
        &["subscriptions", "get", "orders-hook", "-o", "json"],
        &[],
    )
    .await;
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["spec"]["signing"]["secret"], "<redacted>", "{view}");

    // Only the even events, transformed, signed with the team's secret.
    for seq in 0..6 {
        post(&server, "k", seq, "test").await;
    }
    receiver
        .wait_for("audit's 6 and the hook's 3", Duration::from_secs(30), |r| {
            r.len() >= 9
        })
        .await;
    let hook: Vec<_> = receiver
        .received()
        .into_iter()
        .filter(|r| r.json().get("order").is_some())
        .collect();
    let orders: Vec<u64> = hook
        .iter()
        .map(|r| r.json()["order"].as_u64().unwrap())
        .collect();
    assert_eq!(orders, [0, 2, 4]);
    let verifier = hookbridge::standard_webhooks::Secret::parse(secret).unwrap();
    for r in &hook {
        assert!(
            verifier.verify(
                r.header("webhook-id"),
                r.header("webhook-timestamp"),
                &r.body,
                r.header("webhook-signature")
            ),
            "signed over what was sent, with the team's secret"
        );
    }

    // A key the team gets wrong is named, and nothing is changed.
    std::fs::write(
        dir.path().join("bad.yaml"),
        format!(
            "name: orders-hook\ntopics: [{}]\nurl: {}\nretry: {{ max_attempts: many }}\n",
            acme.topic, receiver.url
        ),
    )
    .unwrap();
    let bad = dir.path().join("bad.yaml").display().to_string();
    let team = |args: &'static [&'static str]| cli_as(admin, &acme.token, args, &[]);
    let said = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let out = cli_as(
        admin,
        &acme.token,
        &["subscriptions", "apply", "-f", &bad],
        &[],
    )
    .await;
    assert!(
        !out.status.success() && said(&out).contains("retry.max_attempts"),
        "{out:?}"
    );
    let out = team(&["subscriptions", "delete", "orders-hook"]).await;
    assert!(said(&out).contains("orders-hook deleted"), "{out:?}");
    let out = team(&["subscriptions", "get", "orders-hook"]).await;
    assert!(
        !out.status.success() && said(&out).contains("404"),
        "{out:?}"
    );
}
