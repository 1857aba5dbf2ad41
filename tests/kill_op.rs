//! The kill switch's killOp, against the scripted upstream (FerretDB has
//! neither `$currentOp` nor `killOp`): mongotap finds the operation by the
//! server's `connectionId` from the victim connection's own hello reply,
//! kills it by the `opid` the server reported, then closes the connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/admin_http.rs"]
mod admin_http;
#[path = "support/scripted.rs"]
mod scripted;
mod support;

use admin_http::{get_json, request};
use bson::{rawdoc, RawDocument};
use scripted::{hello_reply_doc, msg, next_id, reply, RawClient, Received, Scripted, Step};
use serde_json::Value;
use std::time::{Duration, Instant};
use support::Mongotap;

const T: Duration = Duration::from_secs(10);
const TOKEN: &str = "kill-op-token";

/// The server's connection ids and operation ids: 700 + the connection's
/// number, and 9000 + the connectionId `$currentOp` was asked about.
fn script(req: &Received) -> Vec<Step> {
    let cmd = req.command.clone().unwrap_or_default();
    let body = match req.name().as_str() {
        "hello" | "isMaster" | "ismaster" => {
            let mut doc = hello_reply_doc();
            doc.append(bson::cstr!("connectionId"), 700 + req.conn as i32);
            doc
        }
        "aggregate" if cmd.get_str("$db").ok() == Some("admin") => {
            let stage = cmd
                .get_array("pipeline")
                .unwrap()
                .into_iter()
                .nth(1)
                .unwrap()
                .unwrap();
            let wanted = stage
                .as_document()
                .unwrap()
                .get_document("$match")
                .unwrap()
                .get_i64("connectionId")
                .unwrap();
            rawdoc! {"cursor": {"firstBatch": [{"opid": 9000 + wanted as i32}], "id": 0_i64, "ns": "admin.$cmd.aggregate"}, "ok": 1.0}
        }
        // The stuck one: never answered.
        "aggregate" => return vec![Step::Sleep(Duration::from_secs(60))],
        _ => rawdoc! {"ok": 1.0},
    };
    vec![Step::Send(reply(req, &body))]
}

fn body(frame: &[u8]) -> &RawDocument {
    // Header (16), flag bits (4), section kind 0 (1), then the document.
    RawDocument::from_bytes(&frame[21..]).expect("reply body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_runs_kill_op_on_the_operation_the_server_names() {
    let upstream = Scripted::start(script).await;
    let tap = Mongotap::with_token(upstream.addr, TOKEN, &[]);
    let admin = tap.admin.expect("admin");
    let mut client = RawClient::connect(tap.listen).await;
    client
        .send(&msg(next_id(), 0, 0, &rawdoc! {"hello": 1, "$db": "admin"}))
        .await;
    let hello = client.recv(T).await.expect("hello reply");
    let server_conn = body(&hello).get_i32("connectionId").expect("connectionId");
    let agg = rawdoc! {"aggregate": "orders", "pipeline": [{"$match": {"x": 1}}], "cursor": {}, "$db": "shop"};
    client.send(&msg(next_id(), 0, 0, &agg)).await;
    let deadline = Instant::now() + T;
    let row = loop {
        let rows = get_json(admin, "/inflight", TOKEN);
        if let Some(r) = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["command"] == "aggregate")
        {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "the aggregate never pending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let asked = Instant::now();
    let path = format!("/inflight/{}/{}/kill", row["conn"], row["request_id"]);
    let (code, text) = request(admin, "POST", &path, Some(TOKEN));
    assert_eq!(code, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["method"], "killOp");
    // The server was asked about the victim's connection, and told to kill
    // the operation it named for it.
    let kill_op = upstream.wait_for(|r| r.name() == "killOp", T).await;
    let op = kill_op.command.as_ref().unwrap().get_i32("op").unwrap();
    assert_eq!(op, 9000 + server_conn);
    // And the connection was closed as well: the client sees it at once.
    assert!(client.recv(T).await.is_none(), "the connection closes");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    let ev = tap.wait_for_event_async("killed", T).await;
    assert_eq!(ev["method"], "killOp");
    assert_eq!(ev["request_id"], row["request_id"]);
    assert_eq!(ev["stages"], "$match");
    assert!(
        ev.get("kill_op").is_none(),
        "no killOp failure to report: {ev}"
    );
}
