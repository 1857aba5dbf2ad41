//! Auto-explain of slow aggregates (off by default). Not implemented yet:
//! `maybe_explain` does nothing and `body_for` keeps nothing.

use crate::config::ExplainConfig;
use crate::tracker::Pending;
use bson::RawDocumentBuf;
use mongotap_proto::CommandView;
use std::sync::Arc;
use std::time::Duration;

pub struct Explainer {
    enabled: bool,
}

impl Explainer {
    pub fn new(cfg: &ExplainConfig, _upstream: &str, _log_values: bool) -> Explainer {
        Explainer {
            enabled: cfg.enabled,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A copy of the command body when it is a read-only aggregate and
    /// auto-explain is on.
    pub fn body_for(&self, _view: &CommandView<'_>) -> Option<Arc<RawDocumentBuf>> {
        None
    }

    /// Starts an explain for `p` when it is due and not rate limited.
    pub fn maybe_explain(&self, _p: &Pending, _elapsed: Duration) {}
}
