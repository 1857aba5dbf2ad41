//! The admin HTTP endpoint: the console (/), /healthz, /readyz, /metrics, /stats,
//! /stats/shapes, /inflight, /cursors, /topology, /events, /events/recent,
//! and the kill switch
//! (POST /inflight/{conn}/{request_id}/kill). Loopback by default; a token is
//! required to bind anywhere else, and then on every route but /healthz and
//! /readyz.

mod console;
mod events;
mod kill;
mod kill_op;
pub mod metrics;

use crate::observe::stats::QuerySort;
use crate::shared::Shared;
use axum::extract::{RawQuery, Request, State};
use axum::http::HeaderMap;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type S = State<Arc<Shared>>;

/// Serves the admin endpoint on `listener` (bound by the caller, which
/// names the setting in a bind error) in a task on `tasks` that ends on
/// `stop`; returns its address.
pub fn start(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/stats", get(stats))
        .route("/stats/shapes", get(shapes))
        .route("/stats/queries", get(queries))
        .route("/inflight", get(inflight))
        .route("/cursors", get(cursors))
        .route("/topology", get(topology))
        .route("/connections", get(connections))
        .route("/events/recent", get(events::recent))
        .route("/events", {
            let stop = stop.clone();
            get(move |State(shared): S| async move { events::stream(shared, stop) })
        })
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ))
        .route("/healthz", get(|| async { "ok" }))
        // The console's page holds no data: its scripts send the token.
        .route("/", get(console::index))
        .route("/console.js", get(console::script))
        .route("/console.css", get(console::style))
        // No token: orchestrators' readiness probes and load balancers'
        // health checks seldom can carry a secret, and the answer holds
        // nothing from client traffic (the configured upstream address and
        // the probe's own error).
        .route("/readyz", get(readyz))
        .route("/capture/start", post(capture_start))
        .route("/capture/stop", post(capture_stop))
        // Its own token check: 403 when admin.token is not set at all.
        .route("/inflight/{conn}/{request_id}/kill", post(kill::kill))
        .with_state(shared);
    tasks.spawn(async move {
        // The peer's address names who asked, in `killed` events.
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    Ok(addr)
}

async fn require_token(State(shared): S, req: Request, next: Next) -> Response {
    if let Some(token) = &shared.config.admin.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                "admin.token is set: send Authorization: Bearer <token>\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

async fn metrics(State(shared): S) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::admin::metrics::render(shared),
    )
}

async fn stats(State(shared): S) -> impl IntoResponse {
    Json(serde_json::json!({ "commands": shared.observe.stats.command_rows() }))
}

async fn shapes(State(shared): S) -> impl IntoResponse {
    Json(serde_json::json!({ "shapes": shared.observe.stats.shape_rows() }))
}

/// Query shapes, the top `?top=N` (default 50) by `?sort=` (default
/// total time).
async fn queries(State(shared): S, RawQuery(query): RawQuery) -> Response {
    match parse_queries(query.as_deref()) {
        Ok((sort, top)) => {
            let rows = shared.observe.stats.query_rows(sort, top);
            Json(serde_json::json!({ "queries": rows })).into_response()
        }
        Err(message) => (StatusCode::BAD_REQUEST, message).into_response(),
    }
}

/// `/stats/queries` rows unless `?top=` says otherwise.
const QUERIES_TOP: usize = 50;

/// The `sort` and `top` parameters of /stats/queries. Other parameters
/// are ignored, as for /inflight.
fn parse_queries(query: Option<&str>) -> Result<(QuerySort, usize), String> {
    let (mut sort, mut top) = (QuerySort::Total, QUERIES_TOP);
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sort" => {
                sort = QuerySort::parse(value).ok_or_else(|| {
                    format!("/stats/queries: `sort` must be {}\n", QuerySort::ACCEPTED)
                })?
            }
            "top" => {
                top = value
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or("/stats/queries: `top` must be a whole number of at least 1\n")?
            }
            _ => {}
        }
    }
    Ok((sort, top))
}

/// 200 while the upstream answers the health probe's hello, 503 with the
/// last error while it does not.
/// In replica-set mode, 200 while at least one member answers.
async fn readyz(State(shared): S) -> impl IntoResponse {
    let (ready, body) = match &shared.observe.replica_set {
        None => {
            let r = shared
                .health
                .readiness(&shared.config.proxy.upstream, std::time::Instant::now());
            (r.ready, r.body)
        }
        Some(set) => set.readiness(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Open client connections, in all and by the appName of their handshake.
async fn connections(State(shared): S) -> impl IntoResponse {
    let by_app: Vec<_> = shared
        .observe
        .tracker
        .connections_by_app()
        .into_iter()
        .map(|(app, n)| serde_json::json!({"app": &*app, "connections": n}))
        .collect();
    let total = shared
        .observe
        .counters
        .connections_active
        .load(std::sync::atomic::Ordering::Relaxed);
    Json(serde_json::json!({"connections": total, "by_app": by_app}))
}

/// Replica-set mode's members, listeners and states; in direct mode, the
/// one upstream.
async fn topology(State(shared): S) -> impl IntoResponse {
    Json(match &shared.observe.replica_set {
        Some(set) => set.snapshot(std::time::Instant::now()),
        None => serde_json::json!({
            "mode": "direct",
            "upstream": shared.config.proxy.upstream,
        }),
    })
}

/// By default only commands that can be stuck; `?all=true` adds the ones
/// that wait by design (awaitable hellos, awaitData getMores).
async fn inflight(State(shared): S, RawQuery(query): RawQuery) -> Response {
    let all = match parse_all(query.as_deref()) {
        Ok(all) => all,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    Json(
        shared
            .observe
            .tracker
            .snapshot(shared.config.watch.stall_ms, all),
    )
    .into_response()
}

/// The `all` parameter of /inflight: `true` or `false`, absent meaning
/// false. Other parameters are ignored.
fn parse_all(query: Option<&str>) -> Result<bool, String> {
    let mut all = false;
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "all" {
            continue;
        }
        all = match value {
            "true" => true,
            "false" => false,
            _ => return Err("/inflight: `all` must be true or false\n".into()),
        };
    }
    Ok(all)
}

async fn cursors(State(shared): S) -> impl IntoResponse {
    Json(shared.observe.cursors.snapshot())
}

/// The capture routes need `capture.control_token`, whatever admin.token is:
/// starting a capture writes client traffic to disk.
fn capture_allowed(shared: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = &shared.config.capture.control_token else {
        return Err(Box::new(
            (
                StatusCode::FORBIDDEN,
                "capture control is off: set capture.control_token in the config\n",
            )
                .into_response(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given != Some(token.as_str()) {
        return Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                "send Authorization: Bearer <capture.control_token>\n",
            )
                .into_response(),
        ));
    }
    Ok(())
}

async fn capture_start(State(shared): S, headers: HeaderMap) -> Response {
    if let Err(r) = capture_allowed(&shared, &headers) {
        return *r;
    }
    match shared.observe.capture.start() {
        Ok(path) => {
            Json(serde_json::json!({"capturing": true, "path": path.display().to_string()}))
                .into_response()
        }
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
    }
}

async fn capture_stop(State(shared): S, headers: HeaderMap) -> Response {
    if let Err(r) = capture_allowed(&shared, &headers) {
        return *r;
    }
    // Joining the writer thread waits for its last flush: keep it off the
    // async workers.
    let s = shared.observe.clone();
    let was_running = tokio::task::spawn_blocking(move || s.capture.stop())
        .await
        .unwrap_or(false);
    Json(serde_json::json!({
        "capturing": false,
        "was_running": was_running,
        "written": shared.observe.capture.written.load(std::sync::atomic::Ordering::Relaxed),
        "dropped": shared.observe.capture.dropped.load(std::sync::atomic::Ordering::Relaxed),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::{parse_all, parse_queries, QuerySort};

    #[test]
    fn queries_take_a_sort_and_a_top() {
        assert_eq!(parse_queries(None), Ok((QuerySort::Total, 50)));
        assert_eq!(
            parse_queries(Some("top=3&sort=p99")),
            Ok((QuerySort::P99, 3))
        );
        assert_eq!(
            parse_queries(Some("sort=errors")),
            Ok((QuerySort::Errors, 50))
        );
        let bad_sort = parse_queries(Some("sort=slowest")).unwrap_err();
        assert!(
            bad_sort.contains("total, count, p99, max or errors"),
            "{bad_sort}"
        );
        for top in ["top=0", "top=-1", "top=x", "top"] {
            assert!(parse_queries(Some(top)).unwrap_err().contains("`top`"));
        }
    }

    #[test]
    fn all_is_true_or_false() {
        assert_eq!(parse_all(None), Ok(false));
        assert_eq!(parse_all(Some("")), Ok(false));
        assert_eq!(parse_all(Some("all=true")), Ok(true));
        assert_eq!(parse_all(Some("x=1&all=true")), Ok(true));
        assert_eq!(parse_all(Some("all=false")), Ok(false));
        assert!(parse_all(Some("all=1")).is_err());
        assert!(parse_all(Some("all")).is_err());
    }
}
