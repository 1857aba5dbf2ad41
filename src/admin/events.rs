//! `GET /events`: the log events as server-sent events, one JSON object
//! per event with the same fields as the JSON log line; `GET
//! /events/recent`: the ring of recent ones, newest first.
//!
//! A subscriber that falls `feed::SUBSCRIBER_LAG` events behind is sent a
//! last `dropped` event and closed: it is never buffered for.

use crate::shared::Shared;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::Stream;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

pub async fn recent(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        shared.feed.recent_json(),
    )
}

/// The stream of one subscriber; it ends when mongotap stops (`stop`), so
/// the admin endpoint's graceful shutdown does not wait on it.
pub fn stream(
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = shared.feed.subscribe();
    let events = futures_util::stream::unfold(Some((rx, stop)), |state| async move {
        let (mut rx, stop) = state?;
        // Cancel-safe: `recv` loses nothing when `stop` wins; the stream
        // ends then anyway.
        let next = tokio::select! {
            _ = stop.cancelled() => return None,
            next = rx.recv() => next,
        };
        match next {
            Ok(json) => Some((Ok(Event::default().data(&*json)), Some((rx, stop)))),
            // Too slow: one last word, then the stream ends.
            Err(RecvError::Lagged(missed)) => Some((
                Ok(Event::default().event("dropped").data(format!(
                    "{{\"dropped\":true,\"missed\":{missed},\"reason\":\"this reader fell more than {} events behind\"}}",
                    crate::feed::SUBSCRIBER_LAG
                ))),
                None,
            )),
            Err(RecvError::Closed) => None,
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
