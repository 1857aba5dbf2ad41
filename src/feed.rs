//! The live feed of log events, for the admin endpoint's `/events`
//! (server-sent events) and `/events/recent`, and so the console.
//!
//! A `tracing` layer beside the log writer: every record with an `event`
//! field, once the log filter has let it through, becomes one JSON object
//! with the same fields as the JSON log line. It goes into a fixed ring of
//! recent events and to a broadcast channel. Both are bounded: the ring
//! drops its oldest, and a subscriber that falls a whole channel behind is
//! dropped (`Lagged`), never buffered for. Nothing here waits: a full
//! channel overwrites, and the ring's lock is held for one push.

use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

/// Events kept for `/events/recent` (the console's first paint).
pub const RECENT: usize = 500;
/// How far a `/events` subscriber may fall behind before it is dropped.
pub const SUBSCRIBER_LAG: usize = 1024;

/// The ring and the channel, shared by the layer and the admin endpoint.
pub struct EventFeed {
    /// Newest at the back; at most `RECENT`.
    recent: Mutex<VecDeque<Arc<str>>>,
    live: broadcast::Sender<Arc<str>>,
}

impl Default for EventFeed {
    fn default() -> Self {
        EventFeed {
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            live: broadcast::channel(SUBSCRIBER_LAG).0,
        }
    }
}

impl EventFeed {
    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.live.subscribe()
    }

    /// The recent events, newest first, as one JSON array.
    pub fn recent_json(&self) -> String {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::from("[");
        for (i, e) in recent.iter().rev().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(e);
        }
        out.push(']');
        out
    }

    #[cfg(test)]
    pub fn push_for_test(&self, json: &str) {
        self.push(json.into());
    }

    fn push(&self, event: Arc<str>) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        // No subscriber is not an error: the event is in the ring.
        let _ = self.live.send(event);
    }
}

/// The layer that fills an `EventFeed`.
pub struct FeedLayer(pub Arc<EventFeed>);

impl<S: tracing::Subscriber> Layer<S> for FeedLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        // The field set is static: lines that are not events (startup,
        // connection debug lines) cost one lookup.
        if meta.fields().field("event").is_none() {
            return;
        }
        let mut fields = Map::new();
        fields.insert(
            "timestamp".into(),
            Value::String(
                bson::DateTime::now()
                    .try_to_rfc3339_string()
                    .unwrap_or_default(),
            ),
        );
        fields.insert("level".into(), Value::String(meta.level().to_string()));
        fields.insert("target".into(), Value::String(meta.target().into()));
        event.record(&mut Fields(&mut fields));
        let json: Arc<str> = Value::Object(fields).to_string().into();
        self.0.push(json);
    }
}

/// A record's fields as JSON values, as tracing-subscriber's JSON format
/// writes them: numbers and booleans as such, everything else as text.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_reach_the_ring_and_subscribers_with_their_fields() {
        let feed = Arc::new(EventFeed::default());
        let mut rx = feed.subscribe();
        let subscriber = tracing_subscriber::registry().with(FeedLayer(feed.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(conn = 3u64, "not an event: left out");
            for n in 0..RECENT as u64 + 2 {
                tracing::warn!(event = "stalled", n, app = "a", ok = true, who = %"x:1", "stalled {n}");
            }
        });
        let first: Value = serde_json::from_str(&rx.try_recv().expect("live")).expect("json");
        assert_eq!(first["event"], "stalled");
        assert_eq!(first["n"], 0);
        assert_eq!(first["app"], "a");
        assert_eq!(first["ok"], true);
        assert_eq!(first["who"], "x:1");
        assert_eq!(first["message"], "stalled 0");
        assert_eq!(first["level"], "WARN");
        // The ring keeps the newest RECENT, newest first.
        let recent: Vec<Value> = serde_json::from_str(&feed.recent_json()).expect("json");
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent[0]["n"], RECENT as u64 + 1);
        assert_eq!(recent[RECENT - 1]["n"], 2);
    }

    #[test]
    fn a_subscriber_that_falls_behind_lags_instead_of_buffering() {
        let feed = EventFeed::default();
        let mut rx = feed.subscribe();
        for n in 0..SUBSCRIBER_LAG + 10 {
            feed.push(n.to_string().into());
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(10))
        ));
    }
}
