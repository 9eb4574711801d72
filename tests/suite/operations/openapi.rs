//! The admin API's OpenAPI document (`docs/openapi.json`, served at `/v1/openapi.json`)
//! names every route the admin router has, with its methods, and each documented `GET`
//! and `POST` of a subscription answers one of the statuses the document gives it.

use std::collections::{BTreeMap, BTreeSet};

use super::{TOKEN, config};
use crate::support::backend::Backend;
use crate::support::receiver::Receiver;
use crate::support::*;
use serde_json::Value;

/// The routes of `src/admin/mod.rs` and their methods, as its `.route(...)` calls say
/// (those of the `/v1` router prefixed).
fn routes_in_the_router() -> BTreeMap<String, BTreeSet<String>> {
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/admin/mod.rs"),
    )
    .unwrap();
    let v1_start = source
        .find("let v1 = Router::new()")
        .expect("the /v1 router");
    let v1_end = v1_start + source[v1_start..].find(';').expect("its end");
    let mut routes = BTreeMap::new();
    for (start, _) in source.match_indices(".route(") {
        // The call, up to the next route or the end of its router.
        let rest = &source[start + 1..];
        let next = rest.find(".route(").unwrap_or(rest.len());
        let call = &rest[..next.min(rest.find(';').unwrap_or(rest.len()))];
        let path = call.split('"').nth(1).unwrap_or_default();
        let prefix = if (v1_start..v1_end).contains(&start) {
            "/v1"
        } else {
            ""
        };
        let methods: BTreeSet<String> = ["get", "post", "delete", "put"]
            .into_iter()
            .filter(|m| call.contains(&format!("{m}(")))
            .map(String::from)
            .collect();
        routes.insert(format!("{prefix}{path}"), methods);
    }
    routes
}

/// A replica with one subscription, `docs`, on the embedded log.
async fn documented() -> (Hookbridge, Receiver, tempfile::TempDir) {
    let topic = unique("documented");
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let subs = subscription("docs", &topic, &receiver.url, "");
    let server = Hookbridge::start(dir.path(), &config(&Backend::embedded(), &topic, &subs));
    (server, receiver, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_names_every_route_and_its_answers() {
    let document: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json"),
        )
        .unwrap(),
    )
    .expect("docs/openapi.json is JSON");
    let paths = document["paths"].as_object().expect("paths");
    let routes = routes_in_the_router();
    assert!(routes.len() >= 15, "{routes:?}");
    for (path, methods) in &routes {
        let documented: BTreeSet<String> = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not in docs/openapi.json"))
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(&documented, methods, "the methods of {path}");
    }
    assert_eq!(
        paths.len(),
        routes.len(),
        "no path documented that the router lacks"
    );

    let (server, _receiver, _dir) = documented().await;
    let served: Value = http_client()
        .get(format!("{}/v1/openapi.json", server.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, document, "/v1/openapi.json serves the document");
    // Each operation of the subscription (and one of a subscription that does not exist)
    // answers a documented status.
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            if path.contains("{id}") || path.contains("/replay") {
                continue;
            }
            for name in ["docs", "missing"] {
                let url = format!("{}{}", server.admin, path.replace("{name}", name));
                let request = match method.as_str() {
                    "get" => http_client().get(&url),
                    "post" => http_client()
                        .post(&url)
                        .json(&serde_json::json!({"dry_run": true})),
                    _ => continue,
                };
                let status = request.bearer_auth(TOKEN).send().await.unwrap().status();
                let answers = operation["responses"].as_object().unwrap();
                assert!(
                    answers.contains_key(status.as_str()),
                    "{method} {url} answered {status}, which the document does not give"
                );
            }
        }
    }
}

/// schemathesis (`HOOKBRIDGE_SCHEMATHESIS`, installed by scripts/test) generates requests
/// from the document against a live replica: no answer is a 5xx, and every answer's status,
/// content type and body are as the document says.
#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_every_answer_as_documented_and_no_server_error() {
    let schemathesis =
        std::env::var("HOOKBRIDGE_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let (server, _receiver, dir) = documented().await;
    let document = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let mut command = std::process::Command::new(&schemathesis);
    command
        // Its cache of what failed goes to the working directory: keep it out of the tree.
        .current_dir(dir.path())
        .arg("run")
        .arg(&document)
        .args(["--url", &server.admin])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", "25", "--workers", "1", "--seed", "1"]);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!("schemathesis ({schemathesis}) cannot run: {e}; scripts/test installs it")
        });
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis failed:\n{said}");
}
