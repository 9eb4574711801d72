//! Dead letters, redrive, replay and the operations they start:
//!
//! - `GET /v1/dead-letters/{sub}?after=P/O&limit=N`: a page of dead letters.
//! - `GET /v1/dead-letters/{sub}/{id}`: one, in full.
//! - `POST /v1/dead-letters/{sub}/redrive`: starts a redrive (202, the operation).
//! - `POST /v1/subscriptions/{name}/replay`: starts a replay (202, the operation).
//! - `GET /v1/operations[/{id}]`: progress; `DELETE /v1/operations/{id}`: stop one.
//! - `GET /v1/attempts/{sub}?key=&id=&status=&since=&until=&limit=`: its attempt log.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::principal::Principal;
use super::state::{AdminState, not_found};
use crate::broker::Broker;
use crate::config::{AttemptLogMode, SubscriptionConfig};
use crate::operations::attempts::{self, AttemptQuery};
use crate::operations::{
    Operation, OperationError, OperationView, Operations, ResendRequest, dlq, replay,
};
use crate::problem::Problem;

/// A page holds at most this many dead letters.
const MAX_PAGE: usize = 1000;

fn problem(e: OperationError) -> Problem {
    match e {
        OperationError::Broker(e) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker-unavailable",
            "Broker unavailable",
            e.to_string(),
        ),
        e => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid request",
            e.to_string(),
        ),
    }
}

/// A request body that is not the JSON expected.
fn bad_body(e: JsonRejection) -> Problem {
    bad_request(e.body_text())
}

/// A request (its body or its query) that is not what the route takes.
fn bad_request(detail: String) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-request",
        "Invalid request",
        detail,
    )
}

/// The configured subscription `name`, as `principal` names it, if it is one it sees.
fn configured(
    state: &AdminState,
    principal: &Principal,
    name: &str,
) -> Result<SubscriptionConfig, Box<Problem>> {
    let full = state.owned(principal, name)?;
    match state.configured(&full) {
        Some(sub) => Ok(sub),
        None => Err(not_found(format!("no subscription is named `{name}`")).into()),
    }
}

/// An operation as `principal` sees it, if it is of a subscription it owns.
fn visible(
    state: &AdminState,
    principal: &Principal,
    operation: &Operation,
) -> Option<OperationView> {
    let mut view = operation.view();
    if !state.owns(principal, &view.subscription) {
        return None;
    }
    view.subscription = principal.shown_name(&view.subscription);
    Some(view)
}

fn started(view: OperationView) -> Response {
    let location = format!("/v1/operations/{}", view.id);
    (
        StatusCode::ACCEPTED,
        [(axum::http::header::LOCATION, location)],
        Json(view),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    after: Option<String>,
    limit: Option<usize>,
}

pub async fn list_dead_letters(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Response> {
    let sub = configured(&state, &principal, &name).map_err(IntoResponse::into_response)?;
    let Query(query) = query.map_err(|e| bad_request(e.body_text()).into_response())?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let page = dlq::list(&state.broker, &sub, query.after.as_deref(), limit)
        .await
        .map_err(|e| problem(e).into_response())?;
    Ok(Json(page).into_response())
}

/// `GET /v1/attempts/{sub}`: the subscription's attempt log, searched (see
/// `operations::attempts`).
pub async fn list_attempts(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    query: Result<Query<AttemptQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Response> {
    let sub = configured(&state, &principal, &name).map_err(IntoResponse::into_response)?;
    let Query(query) = query.map_err(|e| bad_request(e.body_text()).into_response())?;
    if sub.attempt_log == AttemptLogMode::Off {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "attempt-log-off",
            "No attempt log",
            format!("subscription `{name}` has `attempt_log: off`; set it to `failures` or `all` to log its attempts"),
        )
        .into_response());
    }
    let page = attempts::search(&state.broker, &sub, &query)
        .await
        .map_err(|e| problem(e).into_response())?;
    Ok(Json(page).into_response())
}

pub async fn show_dead_letter(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, Response> {
    let sub = configured(&state, &principal, &name).map_err(IntoResponse::into_response)?;
    match dlq::show(&state.broker, &sub, &id)
        .await
        .map_err(|e| problem(e).into_response())?
    {
        Some(shown) => Ok(Json(shown).into_response()),
        None => Err(not_found(format!(
            "subscription `{name}` has no dead letter with id `{id}`"
        ))
        .into_response()),
    }
}

pub async fn redrive(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    body: Result<Json<ResendRequest>, JsonRejection>,
) -> Response {
    start(&state, &principal, &name, body, dlq::redrive)
}

pub async fn replay(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    body: Result<Json<ResendRequest>, JsonRejection>,
) -> Response {
    start(&state, &principal, &name, body, replay::replay)
}

/// `dlq::redrive` or `replay::replay`.
type Start = fn(
    &Operations,
    &Broker,
    &SubscriptionConfig,
    ResendRequest,
) -> Result<Arc<Operation>, OperationError>;

/// Starts a redrive or a replay of subscription `name`: 202 and the operation.
fn start(
    state: &AdminState,
    principal: &Principal,
    name: &str,
    body: Result<Json<ResendRequest>, JsonRejection>,
    operation: Start,
) -> Response {
    let sub = match configured(state, principal, name) {
        Ok(sub) => sub,
        Err(problem) => return problem.into_response(),
    };
    let mut request = match body {
        Ok(Json(request)) => request,
        Err(e) => return bad_body(e).into_response(),
    };
    if let Some(tenant) = principal.tenant() {
        // The record says who asked, whatever the body claims.
        request.requested_by = Some(format!("tenant {}", tenant.name));
    }
    match operation(&state.operations, &state.broker, &sub, request) {
        Ok(operation) => match visible(state, principal, &operation) {
            Some(view) => started(view),
            // Removed as it started: the operation runs on, out of this caller's sight.
            None => not_found(format!("no subscription is named `{name}`")).into_response(),
        },
        Err(e) => problem(e).into_response(),
    }
}

pub async fn list_operations(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
) -> Response {
    let operations: Vec<OperationView> = state
        .operations
        .all()
        .iter()
        .filter_map(|operation| visible(&state, &principal, operation))
        .collect();
    Json(serde_json::json!({ "operations": operations })).into_response()
}

pub async fn show_operation(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    let found = state.operations.get(&id);
    match found.as_ref().and_then(|o| visible(&state, &principal, o)) {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(not_found(format!(
            "no operation `{id}` here (operations are kept by the replica that runs them, until it restarts)"
        ))
        .into_response()),
    }
}

pub async fn cancel_operation(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    let found = state.operations.get(&id);
    match found.and_then(|o| visible(&state, &principal, &o).map(|view| (o, view))) {
        Some((operation, view)) => {
            operation.cancel();
            Ok(Json(view).into_response())
        }
        None => Err(not_found(format!("no operation `{id}` here")).into_response()),
    }
}
