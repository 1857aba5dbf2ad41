//! The kill switch: `POST /inflight/{conn}/{request_id}/kill` ends one
//! pending command by closing its connection, both sides. The client's
//! driver gets an error at once, and the server interrupts an operation
//! whose client went away. Where the server has it, `killOp` runs first
//! (`kill_op.rs`), and the response says which method ended the command.
//!
//! It needs `admin.token`, whatever the bind address: 403 without one
//! configured, 401 with a wrong or missing bearer token.

use super::kill_op;
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
const METHOD_KILL_OP: &str = "killOp";

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
    let Some((facts, server_conn)) = shared.observe.tracker.find(conn, request_id) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no command {request_id} pending on conn {conn}\n"),
        )
            .into_response();
    };
    // killOp first, where the server has it and the connection's id is
    // known. Direct mode only: a replica-set member's operation would need
    // a connection to that member.
    let kill_op = match server_conn {
        _ if shared.observe.replica_set.is_some() => Err("replica-set mode".to_string()),
        None => Err("no connectionId in the connection's hello reply".to_string()),
        Some(id) => kill_op::kill_op(&shared, id).await,
    };
    // Then the connection is closed in any case (killOp may already have
    // made the server answer the command with an error).
    shared.observe.tracker.close(conn);
    let method = if kill_op.is_ok() {
        METHOD_KILL_OP
    } else {
        METHOD_CLOSE
    };
    let age_ms = facts.age_ms(Instant::now());
    shared.observe.counters.killed.fetch_add(1, Relaxed);
    events::killed(
        request_id,
        &facts,
        by,
        method,
        age_ms,
        kill_op.err().as_deref(),
    );
    Json(serde_json::json!({"killed": true, "method": method, "age_ms": age_ms})).into_response()
}
