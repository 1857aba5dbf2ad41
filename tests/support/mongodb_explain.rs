//! A MongoDB 7-style aggregate explain (`executionStats`): one entry per
//! stage with nReturned and executionTimeMillisEstimate (cumulative, as the
//! server reports it), the pushed-down `$cursor` with its plan and documents
//! examined, and the command echoed back with its filter values, as the
//! server does. Shared by tests/explain.rs and tests/diagnose.rs.

use bson::{rawdoc, RawDocumentBuf};

/// What the two stages report.
pub struct Numbers {
    pub cursor_returned: i64,
    pub cursor_ms: i64,
    pub docs_examined: i64,
    pub group_returned: i64,
    pub group_ms: i64,
}

/// The explain reply for `inner` (the explained aggregate), whose first
/// `$match` is echoed in `parsedQuery`.
pub fn mongodb_explain(inner: RawDocumentBuf, n: &Numbers) -> RawDocumentBuf {
    let pipeline = inner.get_array("pipeline").expect("pipeline").to_owned();
    let first_match = pipeline
        .into_iter()
        .next()
        .and_then(|s| s.ok()?.as_document()?.get_document("$match").ok())
        .map(|m| m.to_owned())
        .unwrap_or_default();
    rawdoc! {
        "explainVersion": "1",
        "stages": [
            {
                "$cursor": {
                    "queryPlanner": {
                        "namespace": "shop.orders",
                        "parsedQuery": first_match,
                        "winningPlan": { "stage": "COLLSCAN", "direction": "forward" },
                    },
                    "executionStats": {
                        "nReturned": n.cursor_returned,
                        "executionTimeMillis": n.cursor_ms,
                        "totalDocsExamined": n.docs_examined,
                    },
                },
                "nReturned": n.cursor_returned,
                "executionTimeMillisEstimate": n.cursor_ms,
            },
            {
                "$group": { "_id": "$g", "n": { "$sum": { "$const": 1 } } },
                "maxAccumulatorMemoryUsageBytes": { "n": 480_i64 },
                "totalOutputDataSizeBytes": 1234_i64,
                "usedDisk": false,
                "nReturned": n.group_returned,
                "executionTimeMillisEstimate": n.group_ms,
            },
        ],
        "command": inner,
        "serverInfo": { "host": "scripted", "port": 27017, "version": "7.0.0" },
        "ok": 1.0,
    }
}
