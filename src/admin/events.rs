//! `GET /events`: the log events as server-sent events, one JSON object
//! per event with the same fields as the JSON log line; `GET
//! /events/recent`: the ring of recent ones, newest first.
//!
//! A subscriber that falls `feed::SUBSCRIBER_LAG` events behind is sent a
//! last `dropped` event and closed: it is never buffered for.

use crate::feed::SUBSCRIBER_LAG;
use crate::shared::Shared;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::{Stream, StreamExt};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast::{error::RecvError, Receiver};
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
    let events = items(shared.feed.subscribe(), stop).map(|item| {
        Ok(match item {
            Item::Event(json) => Event::default().data(&*json),
            Item::Dropped(missed) => Event::default().event("dropped").data(format!(
                "{{\"dropped\":true,\"missed\":{missed},\"reason\":\"this reader fell more than {SUBSCRIBER_LAG} events behind\"}}"
            )),
        })
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// What a subscriber is sent.
#[derive(Debug, PartialEq)]
enum Item {
    Event(Arc<str>),
    /// The reader fell behind by this many events: the last item.
    Dropped(u64),
}

fn items(rx: Receiver<Arc<str>>, stop: CancellationToken) -> impl Stream<Item = Item> {
    futures_util::stream::unfold(Some((rx, stop)), |state| async move {
        let (mut rx, stop) = state?;
        // Cancel-safe: `recv` loses nothing when `stop` wins; the stream
        // ends then anyway.
        let next = tokio::select! {
            _ = stop.cancelled() => return None,
            next = rx.recv() => next,
        };
        match next {
            Ok(json) => Some((Item::Event(json), Some((rx, stop)))),
            // Too slow: one last word, then the stream ends.
            Err(RecvError::Lagged(missed)) => Some((Item::Dropped(missed), None)),
            Err(RecvError::Closed) => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::EventFeed;

    /// A reader that has read nothing while more than SUBSCRIBER_LAG events
    /// went by gets `Dropped` with the count it missed, and nothing after.
    #[tokio::test]
    async fn a_lagging_reader_gets_dropped_then_the_end() {
        let feed = EventFeed::default();
        let stop = CancellationToken::new();
        let mut slow = Box::pin(items(feed.subscribe(), stop.clone()));
        let mut live = Box::pin(items(feed.subscribe(), stop.clone()));
        feed.push_for_test("{\"n\":0}");
        assert_eq!(live.next().await, Some(Item::Event("{\"n\":0}".into())));
        for n in 1..=SUBSCRIBER_LAG + 5 {
            feed.push_for_test(&format!("{{\"n\":{n}}}"));
        }
        // Each counts what it missed: the one that read the first event
        // missed one fewer.
        assert_eq!(slow.next().await, Some(Item::Dropped(6)));
        assert_eq!(slow.next().await, None);
        assert_eq!(live.next().await, Some(Item::Dropped(5)));
        assert_eq!(live.next().await, None);
        // A new reader is served; `stop` ends it.
        let mut fresh = Box::pin(items(feed.subscribe(), stop.clone()));
        feed.push_for_test("{\"n\":-1}");
        assert_eq!(fresh.next().await, Some(Item::Event("{\"n\":-1}".into())));
        stop.cancel();
        assert_eq!(fresh.next().await, None);
    }
}
