//! `[diagnose]`: the live diagnosis of slow, stalled and failed aggregates
//! (`diagnosed` events).

use super::ConfigError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnoseConfig {
    pub enabled: bool,
    /// An aggregate that finishes after this long is diagnosed (stalled
    /// ones at watch.stall_ms, failed ones always).
    pub slow_ms: u64,
    /// Each probe (connecting, each find, listIndexes, explain) gets this
    /// long; a server that does not answer is diagnosed as stalled.
    pub probe_timeout_ms: u64,
    /// At most one diagnosis per pipeline shape (db, collection, stages)
    /// per interval.
    pub interval_ms: u64,
    /// Documents sampled per joined, unwound or grouped field.
    pub sample: i64,
    /// Diagnoses running at once; more are dropped and counted.
    pub max_running: usize,
    /// SCRAM-SHA-256 credentials for mongotap's own connection; unset:
    /// `[explain]`'s.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The database the user is defined in; unset: `[explain]`'s.
    pub auth_db: Option<String>,
}

impl Default for DiagnoseConfig {
    fn default() -> Self {
        DiagnoseConfig {
            enabled: false,
            slow_ms: 1_000,
            probe_timeout_ms: 2_000,
            interval_ms: 60_000,
            sample: 100,
            max_running: 2,
            username: None,
            password: None,
            auth_db: None,
        }
    }
}

impl DiagnoseConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(format!("diagnose.{m}")));
        if self.probe_timeout_ms == 0 {
            return bad("probe_timeout_ms must be above 0");
        }
        if !(1..=10_000).contains(&self.sample) {
            return bad("sample must be between 1 and 10000");
        }
        if self.max_running == 0 {
            return bad("max_running must be at least 1");
        }
        if self.username.is_some() != self.password.is_some() {
            return bad("username and password: set both, or neither");
        }
        Ok(())
    }
}
