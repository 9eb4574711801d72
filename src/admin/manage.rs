//! `PUT` and `DELETE /v1/subscriptions/{name}`: subscriptions made through the API,
//! stored in the broker (see `broker::stored`) and run by every replica (see `reload`).
//!
//! A subscription given here is checked as `check-config` checks one (a `422` names each
//! wrong key), and against the tenant's rights (a `403`); one of the config file's is
//! read-only here (`409`). The answer comes once this replica runs the change, so that a
//! `GET` after it sees it (or, after a delete, once this replica has stopped it, the way a
//! reload removes one); the other replicas follow within a second or two. A change stored
//! but not run here within 10 s is a `202`: stored, to be applied.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Map, Value, json};

use super::principal::Principal;
use super::state::{AdminState, not_found};
use crate::config::{Problem as KeyProblem, Source, SpecError, StoredSubscription};
use crate::problem::Problem;

/// How long an answer waits for this replica to run the change; past it the change is
/// stored all the same and runs once the replica gets to it.
const APPLIED_WITHIN: Duration = Duration::from_secs(10);

pub async fn put(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    match store(&state, &principal, &name, &body).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn store(
    state: &AdminState,
    principal: &Principal,
    name: &str,
    body: &[u8],
) -> Result<Response, Box<Problem>> {
    let full = principal.full_name(name);
    from_file(state, &full, name)?;
    let mut spec: Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid request",
            format!("the body must be a JSON object of the subscription's keys (without `name`, which the path gives): {e}"),
        )
    })?;
    if let Some(given) = spec.remove("name")
        && given.as_str() != Some(name)
    {
        return Err(invalid(vec![KeyProblem::new(
            "name",
            format!("is {given}, but the path names `{name}`; leave it out or make them the same"),
        )]));
    }
    let live = state.live();
    let entry = StoredSubscription {
        tenant: owner(principal, &full, &live.running.server.tenants),
        name: full.clone(),
        spec,
    };
    match entry.parse(&live.running.server.tenants) {
        Ok(sub) => {
            // What only building its delivery finds (a URL the client refuses, a TLS file
            // missing) is refused here, not found by every replica once stored.
            if let Some((key, reason)) = crate::delivery::unbuildable(&sub, &live.running) {
                return Err(invalid(vec![KeyProblem::new(key, reason)]));
            }
        }
        Err(SpecError::Invalid(problems)) => return Err(invalid(problems)),
        Err(SpecError::Forbidden(why)) => return Err(forbidden(why)),
    }
    let store = &state.broker.subscriptions;
    let existing = store.load().await.map_err(unavailable)?.remove(&full);
    if let Some(existing) = &existing
        && !serde_json::from_slice::<StoredSubscription>(existing)
            .is_ok_and(|e| principal.owns(&Source::Api { tenant: e.tenant }))
    {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "name-taken",
            "Name taken",
            format!(
                "`{name}` is the name of a subscription made by the operator; choose another name"
            ),
        )
        .into());
    }
    let value = serde_json::to_vec(&entry).expect("a stored subscription serializes");
    store.put(&full, value.into()).await.map_err(unavailable)?;
    state.read_stored_now();
    let status = match (
        applied(state, |live| live.stored.get(&full) == Some(&entry)).await,
        existing,
    ) {
        (false, _) => StatusCode::ACCEPTED,
        (true, Some(_)) => StatusCode::OK,
        (true, None) => StatusCode::CREATED,
    };
    let view = super::subscriptions::view(state, principal, &full)
        .await
        .unwrap_or_else(|| json!({ "name": name, "running": false }));
    Ok((status, Json(view)).into_response())
}

pub async fn delete(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    match remove(&state, &principal, &name).await {
        Ok(status) => status.into_response(),
        Err(problem) => problem.into_response(),
    }
}

async fn remove(
    state: &AdminState,
    principal: &Principal,
    name: &str,
) -> Result<StatusCode, Box<Problem>> {
    let full = principal.full_name(name);
    from_file(state, &full, name)?;
    let store = &state.broker.subscriptions;
    let stored = store.load().await.map_err(unavailable)?;
    let owned = stored
        .get(&full)
        .and_then(|value| serde_json::from_slice::<StoredSubscription>(value).ok())
        .is_some_and(|entry| {
            principal.owns(&Source::Api {
                tenant: entry.tenant,
            })
        });
    if !owned {
        return Err(not_found(format!(
            "no subscription made through the API is named `{name}`"
        ))
        .into());
    }
    store.delete(&full).await.map_err(unavailable)?;
    state.read_stored_now();
    match applied(state, |live| !live.stored.contains_key(&full)).await {
        true => Ok(StatusCode::NO_CONTENT),
        false => Ok(StatusCode::ACCEPTED),
    }
}

/// Refuses a name the config file defines: that one is the operator's file's.
fn from_file(state: &AdminState, full: &str, name: &str) -> Result<(), Box<Problem>> {
    let live = state.live();
    let in_file = live
        .running
        .subscriptions
        .iter()
        .any(|s| s.name == full && s.source == Source::Config);
    match in_file {
        false => Ok(()),
        true => Err(Problem::new(
            StatusCode::CONFLICT,
            "config-subscription",
            "Defined by the config file",
            format!("subscription `{name}` is defined in the config file, which is read-only here; change it there, or choose another name"),
        )
        .into()),
    }
}

/// Whose a new subscription is: the tenant asking, or, for the operator, the tenant its
/// name's prefix names (`acme.orders` is tenant `acme`'s), if any.
fn owner(
    principal: &Principal,
    full: &str,
    tenants: &[crate::config::TenantConfig],
) -> Option<String> {
    match principal.tenant() {
        Some(tenant) => Some(tenant.name.clone()),
        None => {
            let (prefix, _) = full.split_once('.')?;
            tenants
                .iter()
                .find(|t| t.name == prefix)
                .map(|t| t.name.clone())
        }
    }
}

/// Waits, at most `APPLIED_WITHIN`, until this replica runs what `done` looks for;
/// whether it does.
async fn applied(state: &AdminState, done: impl Fn(&super::state::Live) -> bool) -> bool {
    let deadline = Instant::now() + APPLIED_WITHIN;
    loop {
        if done(&state.live()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `422`: each wrong key, named as within the subscription.
fn invalid(problems: Vec<KeyProblem>) -> Box<Problem> {
    let detail: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let errors: Vec<Value> = problems
        .iter()
        .map(|p| json!({ "key": p.path, "message": p.message }))
        .collect();
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-subscription",
        "Invalid subscription",
        detail.join("; "),
    )
    .with_errors(errors)
    .into()
}

fn forbidden(why: String) -> Box<Problem> {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", why).into()
}

fn unavailable(e: crate::broker::BrokerError) -> Box<Problem> {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "broker-unavailable",
        "Broker unavailable",
        format!("the subscriptions' store in the broker cannot be reached: {e}"),
    )
    .retry_after(1)
    .into()
}
