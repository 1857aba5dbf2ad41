use super::*;
use bson::RawBson;

fn cfg() -> ExplainConfig {
    ExplainConfig {
        enabled: true,
        ..ExplainConfig::default()
    }
}

/// Plaintext to the upstream and no rewrite rules.
fn settings() -> crate::settings::Settings {
    let config = crate::config::Config::default();
    crate::settings::swap(crate::settings::Reloadable::new(
        crate::settings::tls::Tls::default(),
        &config,
    ))
}

fn body_of(doc: &RawDocumentBuf) -> Option<Arc<RawDocumentBuf>> {
    let view = CommandView::parse(doc).unwrap();
    Explainer::new(&cfg(), "127.0.0.1:1", false, settings()).body_for(&view)
}

#[test]
fn only_read_only_aggregates_are_kept() {
    let agg = rawdoc! { "aggregate": "c", "pipeline": [{"$match": {"a": 1}}, {"$group": {"_id": "$g"}}], "cursor": {}, "$db": "d" };
    assert_eq!(body_of(&agg).as_deref(), Some(&agg));
    for stage in ["$out", "$merge", "$changeStream"] {
        let mut st = RawDocumentBuf::new();
        st.append(bson::raw::CString::try_from(stage).unwrap(), "x");
        let w = rawdoc! { "aggregate": "c", "pipeline": [{"$match": {}}, st], "cursor": {}, "$db": "d" };
        assert!(body_of(&w).is_none(), "{stage}");
    }
    let legacy = rawdoc! { "aggregate": "c", "pipeline": [], "explain": true, "$db": "d" };
    assert!(body_of(&legacy).is_none());
    assert!(body_of(&rawdoc! { "find": "c", "filter": {}, "$db": "d" }).is_none());
    // Off: nothing is copied.
    let view = CommandView::parse(&agg).unwrap();
    let off = Explainer::new(&ExplainConfig::default(), "127.0.0.1:1", false, settings());
    assert!(off.body_for(&view).is_none());
    assert!(!off.enabled());
}

#[test]
fn explain_command_copies_the_pipeline_and_drops_session_fields() {
    let agg = rawdoc! {
        "aggregate": "orders",
        "pipeline": [{"$match": {"s": "x"}}],
        "cursor": {"batchSize": 2},
        "allowDiskUse": true,
        "maxTimeMS": 999,
        "lsid": {"id": 1},
        "$clusterTime": {"t": 1},
        "txnNumber": 5_i64,
        "readConcern": {"level": "majority"},
        "$readPreference": {"mode": "primary"},
        "apiVersion": "1",
        "comment": "c1",
        "$db": "shop",
    };
    let cmd = explain_command(&agg, "shop", 10_000).unwrap();
    let want = rawdoc! {
        "explain": {
            "aggregate": "orders",
            "pipeline": [{"$match": {"s": "x"}}],
            "cursor": {},
            "allowDiskUse": true,
            "comment": "c1",
        },
        "verbosity": "executionStats",
        "maxTimeMS": 10_000,
        "$db": "shop",
    };
    assert_eq!(cmd, want);
    // No cursor in the original: one is added. maxTimeMS 0: none sent.
    let bare = rawdoc! { "aggregate": 1, "pipeline": [], "$db": "admin" };
    let cmd = explain_command(&bare, "admin", 0).unwrap();
    assert_eq!(
        cmd,
        rawdoc! { "explain": {"aggregate": 1, "pipeline": [], "cursor": {}}, "verbosity": "executionStats", "$db": "admin" }
    );
}

#[test]
fn stage_stats_from_a_stages_array() {
    let reply = rawdoc! {
        "explainVersion": "1",
        "stages": [
            {"$cursor": {"queryPlanner": {}}, "nReturned": 100_i64, "executionTimeMillisEstimate": 3_i64},
            {"$group": {"_id": "$g"}, "nReturned": 5_i64, "executionTimeMillisEstimate": 4_i64},
            {"$sort": {"sortKey": {"_id": 1}}},
        ],
        "ok": 1.0,
    };
    assert_eq!(
        stage_stats(&reply).unwrap(),
        "$cursor nReturned=100 ms=3; $group nReturned=5 ms=4; $sort"
    );
}

#[test]
fn stage_stats_from_a_pushed_down_plan_and_shards() {
    let plan = rawdoc! {
        "executionStats": {
            "nReturned": 3,
            "executionStages": {
                "stage": "PROJECTION_SIMPLE", "nReturned": 3, "executionTimeMillisEstimate": 1,
                "inputStage": {
                    "stage": "FETCH", "nReturned": 3, "executionTimeMillisEstimate": 1,
                    "inputStage": {"stage": "IXSCAN", "nReturned": 3, "executionTimeMillisEstimate": 0},
                },
            },
        },
    };
    assert_eq!(
        stage_stats(&plan).unwrap(),
        "IXSCAN nReturned=3 ms=0; FETCH nReturned=3 ms=1; PROJECTION_SIMPLE nReturned=3 ms=1"
    );
    let sharded = rawdoc! {
        "shards": {
            "s0": {"stages": [{"$cursor": {}, "nReturned": 1, "executionTimeMillisEstimate": 2}]},
        },
    };
    assert_eq!(
        stage_stats(&sharded).unwrap(),
        "s0: $cursor nReturned=1 ms=2"
    );
    // FerretDB's answer has no stats.
    let ferret = rawdoc! { "queryPlanner": {"Plan": ["SCAN c"]}, "ok": 1.0 };
    assert_eq!(stage_stats(&ferret), None);
}

#[test]
fn render_redacts_strings_but_keeps_numbers() {
    let reply = rawdoc! {
        "command": {"pipeline": [{"$match": {"name": "secret-value", "oid": bson::oid::ObjectId::new()}}]},
        "stages": [{"$cursor": {}, "nReturned": 7_i64, "ok": true}],
        "$clusterTime": {"clusterTime": RawBson::Timestamp(bson::Timestamp { time: 1, increment: 1 })},
        "ok": 1.0,
    };
    let (text, cut) = render_explain(&reply, false);
    assert!(!cut);
    assert!(!text.contains("secret-value"), "{text}");
    assert!(!text.contains("$oid"), "{text}");
    assert!(!text.contains("clusterTime"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["command"]["pipeline"][0]["$match"]["name"], "?");
    assert_eq!(v["stages"][0]["nReturned"], 7);
    assert_eq!(v["stages"][0]["ok"], true);
    // The server's key order is kept.
    assert!(text.starts_with(r#"{"command":{"pipeline""#), "{text}");
    assert!(text.find("\"stages\"") < text.find("\"ok\""), "{text}");
    let (text, _) = render_explain(&reply, true);
    assert!(text.contains("secret-value"), "{text}");
    assert!(text.contains("$oid"), "{text}");
}

#[test]
fn render_cuts_long_answers_on_a_char_boundary() {
    let long: String = "é".repeat(MAX_EXPLAIN_BYTES);
    let reply = rawdoc! { "x": long };
    let (text, cut) = render_explain(&reply, true);
    assert!(cut);
    assert!(text.len() <= MAX_EXPLAIN_BYTES + '…'.len_utf8());
    let (_, cut) = render_explain(&reply, false);
    assert!(!cut);
}

#[test]
fn rate_limit_per_shape_and_at_most_max_running() {
    let cfg = ExplainConfig {
        interval_ms: 60_000,
        ..cfg()
    };
    let ex = Explainer::new(&cfg, "127.0.0.1:1", false, settings());
    let inner = ex.inner.as_ref().unwrap();
    let key = |shape: &str| -> ShapeKey { (Arc::from("d"), Arc::from("c"), Arc::from(shape)) };
    let t0 = Instant::now();
    let a = inner.admit(key("$match"), t0);
    assert!(matches!(a, Admit::Go(_)));
    // Same shape within the interval: not again, even with slots free.
    assert!(matches!(
        inner.admit(key("$match"), t0 + Duration::from_secs(59)),
        Admit::RateLimited
    ));
    let b = inner.admit(key("$group"), t0);
    assert!(matches!(b, Admit::Go(_)));
    // Both slots taken: a third shape is dropped, counted, and not
    // marked as explained.
    assert!(matches!(
        inner.admit(key("$sort"), t0),
        Admit::Busy { dropped_total: 1 }
    ));
    assert_eq!(inner.running.load(Relaxed), MAX_RUNNING);
    drop(a);
    assert_eq!(inner.running.load(Relaxed), 1);
    let c = inner.admit(key("$sort"), t0);
    assert!(matches!(c, Admit::Go(_)));
    drop((b, c));
    // After the interval the first shape is due again.
    assert!(matches!(
        inner.admit(key("$match"), t0 + Duration::from_secs(61)),
        Admit::Go(_)
    ));
    assert_eq!(inner.running.load(Relaxed), 0);
}
