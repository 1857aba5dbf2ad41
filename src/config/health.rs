//! `[health]`: the upstream health probe behind `/readyz` and
//! `mongotap_upstream_up`.

use super::ConfigError;
use serde::{Deserialize, Serialize};

/// Probes shorter than this would put a steady load of hellos on the
/// server for no faster answer than an orchestrator's own probe period.
const MIN_INTERVAL_MS: u64 = 100;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How often mongotap sends a hello to the upstream on its own connection.
    pub interval_ms: u64,
    /// A probe (connect, TLS and hello, or the hello alone on a kept
    /// connection) not answered within this long counts as down.
    pub timeout_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: 2_000,
            timeout_ms: 1_000,
        }
    }
}

impl HealthConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval_ms < MIN_INTERVAL_MS {
            return Err(ConfigError::Invalid(format!(
                "health.interval_ms {} must be at least {MIN_INTERVAL_MS}",
                self.interval_ms
            )));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "health.timeout_ms must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
