//! Check 4, driver and server: the driver's version against the first
//! release that supports the server's wire version (the table in
//! `observe::compat`), and the stages that need a newer server.

use super::fields::as_i64;
use super::probe::Probe;
use super::DiagnoseError;
use super::{Finding, Severity, Target};
use crate::observe::compat::too_old;
use bson::{doc, Bson, Document};
use serde_json::json;

const CHECK: &str = "driver_server";

/// Stages and the first server (version, maxWireVersion) that runs them.
const STAGE_MINIMUMS: &[(&str, &str, i64)] = &[
    ("$unionWith", "4.4", 9),
    ("$setWindowFields", "5.0", 13),
    ("$densify", "5.1", 14),
    ("$documents", "5.1", 14),
    ("$fill", "5.3", 16),
    ("$changeStreamSplitLargeEvent", "7.0", 21),
    ("$queryStats", "7.1", 22),
];

/// maxWireVersion → the server release it stands for.
fn release(wire: i64) -> &'static str {
    match wire {
        w if w >= 25 => "8.0",
        w if w >= 21 => "7.0",
        w if w >= 17 => "6.0",
        w if w >= 13 => "5.0",
        w if w >= 9 => "4.4",
        w if w >= 8 => "4.2",
        _ => "older than 4.2",
    }
}

pub async fn check(probe: &mut Probe, t: &Target, out: &mut Vec<Finding>) {
    let hello = match probe.command(doc! { "hello": 1, "$db": "admin" }).await {
        Ok(r) => Document::try_from(r.as_ref()).unwrap_or_default(),
        Err(DiagnoseError::ProbeTimedOut { .. }) => return,
        Err(_) => Document::new(),
    };
    let Some(wire) = hello.get("maxWireVersion").and_then(as_i64) else {
        out.push(Finding::new(
            CHECK,
            None,
            Severity::Info,
            "the server's hello has no maxWireVersion".into(),
            json!({}),
        ));
        return;
    };
    let server = release(wire);
    // FerretDB names itself and the stages it implements in buildInfo
    // (`ferretdbVersion`, `ferretdbFeatures.aggregationStages`).
    let build = match probe.command(doc! { "buildInfo": 1, "$db": "admin" }).await {
        Ok(r) => Document::try_from(r.as_ref()).unwrap_or_default(),
        Err(DiagnoseError::ProbeTimedOut { .. }) => return,
        Err(_) => Document::new(),
    };
    let ferretdb = build.get_str("ferretdbVersion").ok().map(str::to_string);
    let implemented: Option<Vec<&str>> = build
        .get_document("ferretdbFeatures")
        .and_then(|f| f.get_array("aggregationStages"))
        .ok()
        .map(|a| a.iter().filter_map(Bson::as_str).collect());
    let mut evidence = json!({ "max_wire_version": wire, "server_release": server });
    if let Some(v) = &ferretdb {
        evidence["ferretdb_version"] = json!(v);
    }
    match &t.driver {
        Some((name, version)) => {
            evidence["driver"] = json!(name);
            evidence["driver_version"] = json!(version);
            match too_old(name, version, wire) {
                Some((maj, min)) => out.push(Finding::new(
                    CHECK,
                    None,
                    Severity::Warning,
                    format!("{name} {version} is older than {maj}.{min}, the first release that supports this server (maxWireVersion {wire}, MongoDB {server})"),
                    { let mut e = evidence.clone(); e["minimum"] = json!(format!("{maj}.{min}")); e },
                )),
                None => out.push(Finding::new(
                    CHECK,
                    None,
                    Severity::Info,
                    format!("{name} {version} supports this server (maxWireVersion {wire}, MongoDB {server})"),
                    evidence.clone(),
                )),
            }
        }
        None => out.push(Finding::new(
            CHECK,
            None,
            Severity::Info,
            format!("server maxWireVersion {wire} (MongoDB {server}); no driver given to compare (--driver \"NAME VERSION\")"),
            evidence.clone(),
        )),
    }
    for s in &t.stages {
        if let Some((_, need, need_wire)) = STAGE_MINIMUMS.iter().find(|(n, _, _)| *n == s.name) {
            if wire < *need_wire {
                out.push(Finding::new(
                    CHECK,
                    Some(s),
                    Severity::Error,
                    format!("{} needs MongoDB {need} (maxWireVersion {need_wire}); this server reports {wire}", s.name),
                    json!({ "needs_release": need, "needs_wire_version": need_wire, "max_wire_version": wire }),
                ));
            }
        }
    }
    if let Some(implemented) = implemented {
        let server = ferretdb.as_deref().unwrap_or("this server");
        let mut missing: Vec<&str> = Vec::new();
        for s in &t.stages {
            if !implemented.contains(&s.name.as_str()) && !missing.contains(&s.name.as_str()) {
                missing.push(&s.name);
            }
        }
        if !missing.is_empty() {
            out.push(Finding::new(
                CHECK,
                None,
                Severity::Error,
                format!(
                    "the server is FerretDB {server}, which does not implement {} (its buildInfo lists the stages it does), whatever maxWireVersion it reports",
                    missing.join(", ")
                ),
                json!({ "ferretdb_version": ferretdb, "unsupported_stages": missing, "implemented_stages": implemented }),
            ));
        }
    }
}
