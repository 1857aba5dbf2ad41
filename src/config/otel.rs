//! `[otel]`: every command as an OpenTelemetry span, sent over OTLP/HTTP
//! (protobuf). Absent, nothing is exported and nothing is done per request.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The standard variables, read after the file (as flags are): they win.
pub const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtelConfig {
    /// The collector's base URL; spans are POSTed to {endpoint}/v1/traces.
    pub endpoint: String,
    /// `service.name` of every span's resource.
    pub service_name: String,
    /// Head sampling, 0.0 to 1.0, decided per trace id. Stalled, failed,
    /// slow, never-replied and abandoned commands are always kept.
    pub sample_ratio: f64,
    /// Extra HTTP headers on each export (API keys of hosted backends).
    pub headers: BTreeMap<String, String>,
    /// Spans waiting for the exporter; past this they are dropped and
    /// counted in mongotap_otel_dropped_total (the proxy never waits).
    pub max_queue_size: usize,
    /// Spans per export request.
    pub max_export_batch_size: usize,
    /// How long one export may take before it fails.
    pub export_timeout_ms: u64,
}

impl Default for OtelConfig {
    fn default() -> Self {
        OtelConfig {
            endpoint: "http://127.0.0.1:4318".into(),
            service_name: "mongotap".into(),
            sample_ratio: 1.0,
            headers: BTreeMap::new(),
            max_queue_size: 2048,
            max_export_batch_size: 512,
            export_timeout_ms: 5_000,
        }
    }
}

impl OtelConfig {
    /// Applies `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_SERVICE_NAME`
    /// (non-empty values only), given as `var` reads them.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        if let Some(v) = var(ENV_ENDPOINT).filter(|v| !v.is_empty()) {
            self.endpoint = v;
        }
        if let Some(v) = var(ENV_SERVICE_NAME).filter(|v| !v.is_empty()) {
            self.service_name = v;
        }
    }

    /// The URL spans are POSTed to.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.endpoint.trim_end_matches('/'))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let scheme_ok = self.endpoint.starts_with("http://");
        if !scheme_ok || self.endpoint.len() <= "http://".len() {
            return bad(format!(
                "otel.endpoint (or {ENV_ENDPOINT}) {:?} must be an http:// URL, e.g. http://127.0.0.1:4318 \
                 (https is not built in: put a local collector in front of a TLS backend)",
                self.endpoint
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return bad(format!(
                "otel.sample_ratio {} must be between 0.0 and 1.0",
                self.sample_ratio
            ));
        }
        if self.service_name.is_empty() {
            return bad("otel.service_name must not be empty".into());
        }
        if self.max_queue_size == 0
            || self.max_export_batch_size == 0
            || self.export_timeout_ms == 0
        {
            return bad(
                "otel.max_queue_size, otel.max_export_batch_size and otel.export_timeout_ms must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }
}
