//! Check 1, monitoring facts: what the wire said about the aggregate
//! (command, app, driver, how long, stalled or not, the error).

use super::{Finding, Severity};
use serde_json::json;

/// What mongotap saw of the aggregate on the wire.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub command: String,
    pub app: String,
    /// "name version", empty when the handshake named none.
    pub driver: String,
    pub elapsed_ms: u64,
    pub stalled: bool,
    pub code: Option<i32>,
    pub code_name: Option<String>,
}

pub fn finding(f: &Facts) -> Finding {
    let state = match (&f.code, f.stalled) {
        (Some(code), _) => format!(
            "failed after {} ms with {code} {}",
            f.elapsed_ms,
            f.code_name.as_deref().unwrap_or("")
        ),
        (None, true) => format!("has had no reply for {} ms (stalled)", f.elapsed_ms),
        (None, false) => format!("took {} ms", f.elapsed_ms),
    };
    Finding::new(
        "monitoring",
        None,
        if f.code.is_some() || f.stalled {
            Severity::Error
        } else {
            Severity::Warning
        },
        format!(
            "{} from app {:?} ({}) {state}",
            f.command,
            f.app,
            if f.driver.is_empty() {
                "driver unknown"
            } else {
                &f.driver
            }
        ),
        json!({
            "command": f.command, "app": f.app, "driver": f.driver, "elapsed_ms": f.elapsed_ms,
            "stalled": f.stalled, "code": f.code, "code_name": f.code_name,
        }),
    )
}
