//! `GET /v1/subscriptions[/{name}]`, `POST /v1/subscriptions/{name}/pause|resume`.
//!
//! Pause holds delivery without leaving the consumer group: the partitions stay owned, no
//! record is pulled and no attempt starts (attempts on the wire finish), so the lag grows
//! and nothing is lost or reordered; resume goes on where it stopped. A pause holds on the
//! replica that was asked, until it is resumed or restarts (`hookbridge pause` asks every
//! replica behind the admin address).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::state::AdminState;
use crate::delivery::SubscriptionStatus;

#[derive(Serialize)]
struct List {
    subscriptions: Vec<SubscriptionStatus>,
}

pub async fn list(State(state): State<Arc<AdminState>>) -> Json<impl Serialize> {
    Json(List {
        subscriptions: state
            .running()
            .await
            .iter()
            .map(|sub| sub.status())
            .collect(),
    })
}

pub async fn show(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    match state.subscription(&name).await {
        Ok(sub) => Json(sub.status()).into_response(),
        Err(problem) => problem.into_response(),
    }
}

pub async fn pause(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    set_paused(&state, &name, true).await
}

pub async fn resume(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    set_paused(&state, &name, false).await
}

async fn set_paused(state: &AdminState, name: &str, paused: bool) -> Response {
    match state.subscription(name).await {
        Ok(sub) => {
            sub.set_paused(paused);
            Json(sub.status()).into_response()
        }
        Err(problem) => problem.into_response(),
    }
}
