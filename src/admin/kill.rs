//! The kill switch: `POST /inflight/{conn}/{request_id}/kill` ends one
//! pending command by closing its connection, both sides. The client's
//! driver gets an error at once, and the server interrupts an operation
//! whose client went away.
//!
//! It needs `admin.token`, whatever the bind address: 403 without one
//! configured, 401 with a wrong or missing bearer token.

use crate::observe::events;
use crate::shared::Shared;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// How a command was ended, as the response and the event name it.
const METHOD_CLOSE: &str = "close";

pub async fn kill(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(by): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((conn, request_id)): Path<(u64, i32)>,
) -> Response {
    let Some(token) = &shared.config.admin.token else {
        return (
            StatusCode::FORBIDDEN,
            "the kill switch is off: set admin.token in the config\n",
        )
            .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given != Some(token.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <admin.token>\n",
        )
            .into_response();
    }
    // killOp needs the server's own id of the connection and the
    // $currentOp/killOp commands, which FerretDB does not have; closing
    // the connection works on every server.
    let Some(facts) = shared.observe.tracker.kill(conn, request_id) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no command {request_id} pending on conn {conn}\n"),
        )
            .into_response();
    };
    let age_ms = facts.age_ms(Instant::now());
    shared.observe.counters.killed.fetch_add(1, Relaxed);
    events::killed(request_id, &facts, by, METHOD_CLOSE, age_ms);
    Json(serde_json::json!({"killed": true, "method": METHOD_CLOSE, "age_ms": age_ms}))
        .into_response()
}
