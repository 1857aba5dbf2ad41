//! tracing setup: text or JSON on stderr. JSON lines carry event fields at
//! the top level so log pipelines can filter on `event` directly. The same
//! events, filtered alike, also feed `/events` (see `feed`).

use crate::config::{LogConfig, LogFormat};
use crate::feed::{EventFeed, FeedLayer};
use std::sync::Arc;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Installs the global subscriber; returns the feed of its events.
pub fn init(cfg: &LogConfig) -> anyhow::Result<Arc<EventFeed>> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v)?,
        _ => EnvFilter::try_new(cfg.level.as_deref().unwrap_or("info"))?,
    };
    let feed = Arc::new(EventFeed::default());
    let writer = match cfg.format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(writer)
        .with(FeedLayer(feed.clone()))
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot initialise logging: {e}"))?;
    Ok(feed)
}
