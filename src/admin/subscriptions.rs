//! `GET /v1/subscriptions[/{name}]`, `POST /v1/subscriptions/{name}/pause|resume`.
//!
//! A subscription's view: where it was defined (`source: config|api`, and the tenant of a
//! tenant's), its spec (every key with its default, secrets redacted), whether it runs on
//! this replica, why not when it cannot, and where it stands when it does.
//!
//! Pause holds delivery without leaving the consumer group: the partitions stay owned, no
//! record is pulled and no attempt starts (attempts on the wire finish), so the lag grows
//! and nothing is lost or reordered; resume goes on where it stopped. A pause holds on the
//! replica that was asked, until it is resumed or restarts (`hookbridge pause` asks every
//! replica behind the admin address).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::principal::Principal;
use super::state::AdminState;
use crate::config::{Source, SubscriptionConfig};

/// The view of subscription `full`, as `principal` sees it; `None` if it has none to see.
pub(super) async fn view(state: &AdminState, principal: &Principal, full: &str) -> Option<Value> {
    let live = state.live();
    let config = live.running.subscriptions.iter().find(|s| s.name == full);
    let (source, spec) = match config {
        Some(sub) => (sub.source.clone(), spec(sub)),
        None => {
            let entry = live.stored.get(full)?;
            let source = Source::Api {
                tenant: entry.tenant.clone(),
            };
            // Not running: shown if it can be read as a subscription (so its secrets are
            // redacted); otherwise not at all, since its keys as given may hold them.
            let spec = entry
                .parse(&live.running.server.tenants)
                .map_or(Value::Null, |sub| spec(&sub));
            (source, spec)
        }
    };
    if !principal.owns(&source) {
        return None;
    }
    let running = match state.subscription(full).await {
        Ok(sub) => Some(sub.status()),
        Err(_) => None,
    };
    let mut view = match &running {
        Some(status) => serde_json::to_value(status).expect("a status serializes"),
        None => json!({}),
    };
    let object = view.as_object_mut().expect("a status is an object");
    object.insert("name".into(), principal.shown_name(full).into());
    let (kind, tenant) = match &source {
        Source::Config => ("config", None),
        Source::Api { tenant } => ("api", tenant.clone()),
    };
    object.insert("source".into(), kind.into());
    if let Some(tenant) = tenant {
        object.insert("tenant".into(), tenant.into());
    }
    object.insert("spec".into(), spec);
    object.insert("running".into(), running.is_some().into());
    if let Some(why) = live.left_out.get(full) {
        object.insert("problem".into(), why.clone().into());
    }
    Some(view)
}

/// A subscription's keys, secrets redacted, without its name (which the path holds).
fn spec(sub: &SubscriptionConfig) -> Value {
    let mut spec = serde_json::to_value(sub).expect("a config serializes");
    if let Some(object) = spec.as_object_mut() {
        object.remove("name");
    }
    spec
}

pub async fn list(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
) -> Json<Value> {
    let live = state.live();
    let mut names: Vec<&String> = live.running.subscriptions.iter().map(|s| &s.name).collect();
    names.extend(live.stored.keys());
    names.sort();
    names.dedup();
    let mut views = Vec::new();
    for name in names {
        if let Some(view) = view(&state, &principal, name).await {
            views.push(view);
        }
    }
    Json(json!({ "subscriptions": views }))
}

pub async fn show(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    let full = match state.owned(&principal, &name) {
        Ok(full) => full,
        Err(problem) => return problem.into_response(),
    };
    match view(&state, &principal, &full).await {
        Some(view) => Json(view).into_response(),
        None => {
            super::state::not_found(format!("no subscription is named `{name}`")).into_response()
        }
    }
}

pub async fn pause(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    set_paused(&state, &principal, &name, true).await
}

pub async fn resume(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    set_paused(&state, &principal, &name, false).await
}

async fn set_paused(
    state: &AdminState,
    principal: &Principal,
    name: &str,
    paused: bool,
) -> Response {
    let sub = match state.owned(principal, name) {
        Ok(full) => state.subscription(&full).await,
        Err(problem) => Err(problem),
    };
    match sub {
        Ok(sub) => {
            sub.set_paused(paused);
            let mut status = serde_json::to_value(sub.status()).expect("a status serializes");
            status["name"] = principal.shown_name(&sub.name).into();
            Json(status).into_response()
        }
        Err(problem) => problem.into_response(),
    }
}
