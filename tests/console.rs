//! The incident console in a real browser: Debian's headless Chromium,
//! driven through the DevTools protocol (tests/clients/python/cdp.py),
//! loads `GET /` while a real driver's aggregate is stuck behind a frozen
//! FerretDB. The rendered DOM must show the app, the stages and the stalled
//! mark; the Kill button, clicked, must end the command; and after FerretDB
//! dies, the events panel must show the `never_replied` event.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/admin_http.rs"]
mod admin_http;
#[path = "support/scripted.rs"]
mod scripted;
mod support;

use mongodb::bson::{doc, Document};
use mongodb::{Client, Collection};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use support::{signal, Ferret, Mongotap};

const T: Duration = Duration::from_secs(20);
const TOKEN: &str = "console-test-token";
const SECRET: &str = "SECRET-SKU-4711";
/// A collection of `app`'s, with a few documents, read once so the latency
/// panel has a row.
async fn seeded(tap: &Mongotap, app: &str) -> Collection<Document> {
    let uri = format!("{}&appName={app}&retryReads=false", tap.uri());
    let c = Client::with_uri_str(&uri).await.expect("client");
    let coll = c.database("console").collection::<Document>("orders");
    coll.insert_many((0..10).map(|i| doc! {"i": i, "g": i % 3}))
        .await
        .expect("insert");
    coll.find_one(doc! {}).await.expect("find");
    coll
}

/// Starts `coll`'s aggregate (it will hang on the frozen server); returns
/// when mongotap has reported it stalled, with the `stalled` event.
async fn stuck_aggregate(
    tap: &Mongotap,
    coll: Collection<Document>,
) -> (
    tokio::task::JoinHandle<(mongodb::error::Result<()>, Instant)>,
    Value,
) {
    let agg = tokio::spawn(async move {
        let pipeline = vec![
            // A literal the page must never show.
            doc! {"$match": {"i": {"$gte": 1}, "sku": {"$ne": SECRET}}},
            doc! {"$group": {"_id": "$g", "n": {"$sum": 1}}},
            doc! {"$sort": {"n": -1}},
        ];
        let r = coll.aggregate(pipeline).await.map(|_| ());
        (r, Instant::now())
    });
    let stalled = tap.wait_for_event_async("stalled", T).await;
    (agg, stalled)
}

/// Runs cdp.py on the console with `steps`; returns what the steps kept.
/// With `token`, the address carries it; without, the page must ask.
async fn browse(tap: &Mongotap, dir: &Path, token: bool, steps: Value) -> Value {
    let admin = tap.admin.expect("admin");
    let url = if token {
        format!("http://{admin}/#token={TOKEN}")
    } else {
        format!("http://{admin}/")
    };
    let spec = json!({
        "chromium": std::env::var("MONGOTAP_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
        "url": url,
        "user_data_dir": dir.join("chromium-profile"),
        "steps": steps,
    });
    let path = dir.join("spec.json");
    std::fs::write(&path, spec.to_string()).expect("write spec");
    support::python("cdp.py", &[path.to_str().unwrap()]).await
}

/// The text of each cell of the first row matching `row`, by class.
fn row_js(row: &str) -> String {
    format!(
        "(() => {{ const tr = document.querySelector({row:?}); if (!tr) return null; \
         const o = {{}}; tr.querySelectorAll('td[class]').forEach(td => o[td.className.split(' ')[0]] = td.textContent); \
         o.badge = (tr.querySelector('.stalled-mark') || {{}}).textContent || null; \
         o.conn = tr.dataset.conn; o.request_id = tr.dataset.requestId; return o; }})()"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_stuck_aggregate_and_its_kill_button_ends_it() {
    let ferret = Ferret::start();
    let tap = Mongotap::with_token(ferret.addr(), TOKEN, &["--stall-ms", "300"]);
    let coll = seeded(&tap, "console-test").await;
    signal(ferret.pid(), "STOP");
    let (agg, stalled) = stuck_aggregate(&tap, coll).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let shot = dir.path().join("console.png");
    let seen = browse(
        &tap,
        dir.path(),
        true,
        json!([
            {"wait": "document.querySelector('#inflight tr.stalled') && document.querySelector('#events tr[data-event=stalled]') && document.querySelector('#latency tbody tr')"},
            {"eval": row_js("#inflight tr.stalled"), "as": "row"},
            {"eval": row_js("#events tr[data-event=stalled]"), "as": "event"},
            {"eval": "document.getElementById('token-form').hidden", "as": "form_hidden"},
            {"eval": format!("document.body.innerText.includes({SECRET:?})"), "as": "shows_literal"},
            {"screenshot": shot},
            {"click": "#inflight tr.stalled button.kill"},
            {"wait": "!document.querySelector('#inflight tr.stalled') && document.querySelector('#events tr[data-event=killed]')"},
            {"eval": row_js("#events tr[data-event=killed]"), "as": "killed"},
        ]),
    )
    .await;

    let row = &seen["row"];
    assert_eq!(row["app"], "console-test", "{seen}");
    assert_eq!(row["command"], "aggregate");
    assert_eq!(row["ns"], "console.orders");
    assert_eq!(row["stages"], "$match > $group > $sort");
    assert_eq!(row["badge"], "STALLED");
    assert_eq!(row["conn"], stalled["conn"].to_string());
    assert_eq!(row["request_id"], stalled["request_id"].to_string());
    assert_eq!(
        seen["form_hidden"], true,
        "the token from the address was used"
    );
    assert_eq!(
        seen["shows_literal"], false,
        "a filter's literal on the page"
    );
    let event = &seen["event"];
    assert_eq!(event["app"], "console-test");
    assert_eq!(event["stages"], "$match > $group > $sort");

    // The click ended the command: the driver got an error, mongotap says
    // the browser asked, and the page shows it.
    let (result, _) = tokio::time::timeout(T, agg)
        .await
        .expect("returns")
        .expect("join");
    assert!(result.is_err(), "the killed aggregate fails");
    let killed = tap.wait_for_event_async("killed", T).await;
    assert_eq!(killed["request_id"], stalled["request_id"]);
    assert_eq!(killed["method"], "close");
    let by = killed["by"].as_str().unwrap();
    assert!(by.starts_with("127.0.0.1:"), "{by}");
    assert_eq!(seen["killed"]["detail"], format!("close by {by}"));
    assert_eq!(seen["killed"]["app"], "console-test");

    let png = std::fs::read(&shot).expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    if let Ok(out) = std::env::var("MONGOTAP_CONSOLE_PNG") {
        std::fs::copy(&shot, out).expect("copy screenshot");
    }
    signal(ferret.pid(), "CONT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_never_replied_once_ferretdb_dies() {
    let mut ferret = Ferret::start();
    let tap = Mongotap::with_token(ferret.addr(), TOKEN, &["--stall-ms", "300"]);
    let coll = seeded(&tap, "console-dies").await;
    signal(ferret.pid(), "STOP");
    let (agg, stalled) = stuck_aggregate(&tap, coll).await;
    ferret.kill();
    let never = tap.wait_for_event_async("never_replied", T).await;
    assert!(tokio::time::timeout(T, agg)
        .await
        .expect("returns")
        .expect("join")
        .0
        .is_err());
    let dir = tempfile::tempdir().expect("temp dir");
    // No token in the address: the page asks for it, then shows the event.
    let seen = browse(
        &tap,
        dir.path(),
        false,
        json!([
            {"wait": "!document.getElementById('token-form').hidden"},
            {"eval": "document.getElementById('error').textContent", "as": "asked"},
            {"eval": format!("document.getElementById('token').value = {TOKEN:?}; document.querySelector('#token-form button').click(); true"), "as": "typed"},
            {"wait": "document.querySelector('#events tr[data-event=never_replied]')"},
            {"eval": row_js("#events tr[data-event=never_replied]"), "as": "event"},
            {"eval": "document.querySelectorAll('#inflight tbody tr').length", "as": "inflight_rows"},
        ]),
    )
    .await;
    assert_eq!(seen["asked"], "admin.token required");
    let event = &seen["event"];
    assert_eq!(event["app"], "console-dies", "{seen}");
    assert_eq!(event["command"], "aggregate");
    assert_eq!(event["ns"], "console.orders");
    assert_eq!(event["stages"], "$match > $group > $sort");
    assert_eq!(event["detail"], never["reason"]);
    assert_eq!(never["request_id"], stalled["request_id"]);
    assert_eq!(seen["inflight_rows"], 0, "nothing is in flight any more");
}

/// A find the scripted upstream answers after `ms` milliseconds, the delay
/// named by its collection (`d80`).
fn delayed(req: &scripted::Received) -> Vec<scripted::Step> {
    let name = req.name();
    let coll = req
        .command
        .as_deref()
        .and_then(|c| c.get_str(name.as_str()).ok());
    match (
        name.as_str(),
        coll.and_then(|c| c.strip_prefix('d')?.parse::<u64>().ok()),
    ) {
        ("find", Some(ms)) => {
            let answer = bson::rawdoc! {
                "cursor": { "firstBatch": [], "id": 0_i64, "ns": "console.d80" },
                "ok": 1.0,
            };
            vec![
                scripted::Step::Sleep(Duration::from_millis(ms)),
                scripted::Step::Send(scripted::reply(req, &answer)),
            ]
        }
        _ => scripted::default_reply(req),
    }
}

/// The latency panel's "last 5 minutes" columns come from the histogram
/// buckets: for finds the upstream holds 80 ms, the window counts exactly
/// the finds sent, and its p50 and p99 are the bucket bound that holds
/// both the delay and the slowest time the client measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latency_panel_shows_the_last_minutes_from_the_histogram_buckets() {
    let upstream = scripted::Scripted::start(delayed).await;
    let tap = Mongotap::with_token(upstream.addr, TOKEN, &[]);
    let mut client = scripted::RawClient::connect(tap.listen).await;
    client
        .command(&bson::rawdoc! {
            "hello": 1, "$db": "admin",
            "client": { "application": { "name": "latency-test" }, "driver": { "name": "raw", "version": "1" } },
        })
        .await;
    const FINDS: usize = 6;
    let mut slowest = Duration::ZERO;
    for _ in 0..FINDS {
        let sent = Instant::now();
        client
            .command(&bson::rawdoc! { "find": "d80", "$db": "console" })
            .await;
        slowest = slowest.max(sent.elapsed());
    }
    // The bucket bounds are the histogram's contract (100 µs to 60 s).
    let (_, metrics) = admin_http::request(tap.admin.unwrap(), "GET", "/metrics", Some(TOKEN));
    let bounds: Vec<f64> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("mongotap_command_duration_seconds_bucket{")
                && l.contains("command=\"find\"")
        })
        .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next()?.parse().ok())
        .collect();
    let holding = |s: f64| {
        bounds
            .iter()
            .copied()
            .filter(|&b| b >= s)
            .fold(f64::INFINITY, f64::min)
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let row = "#latency tbody tr";
    let cells = "(() => { const tr = [...document.querySelectorAll('#latency tbody tr')].find(t => t.cells[0].textContent === 'find'); \
                 if (!tr) return null; return { n: tr.querySelector('.win-n').textContent, \
                 p50: tr.querySelector('.win-p50').dataset.s, p99: tr.querySelector('.win-p99').dataset.s, app: tr.cells[2].textContent }; })()";
    let seen = browse(
        &tap,
        dir.path(),
        true,
        json!([
            {"wait": format!("document.querySelector({row:?}) && {cells} && {cells}.n === '{FINDS}'")},
            {"eval": cells, "as": "find"},
        ]),
    )
    .await;
    let find = &seen["find"];
    assert_eq!(find["app"], "latency-test", "{seen}");
    assert_eq!(find["n"], FINDS.to_string(), "the finds the test sent");
    let p50: f64 = find["p50"].as_str().unwrap().parse().unwrap();
    let p99: f64 = find["p99"].as_str().unwrap().parse().unwrap();
    assert!(
        p99 >= 0.080,
        "p99 bound {p99} s under the upstream's 80 ms delay"
    );
    assert!(
        p99 <= holding(slowest.as_secs_f64()),
        "p99 bound {p99} s above the bucket of the client's slowest find ({slowest:?})"
    );
    assert!(p50 >= 0.080 && p50 <= p99, "p50 bound {p50} s");
}
