//! `killOp` for the kill switch, tried before the connection is closed:
//! on mongotap's own connection to the upstream, `$currentOp` finds the
//! operation by the server's id of the client's upstream connection (from
//! that connection's hello reply), then `killOp` ends it on the server.
//!
//! Bounded by `KILL_OP_TIMEOUT` as a whole: a frozen server must not hold
//! the kill, and closing the connection works on every server anyway.
//! FerretDB 1.24 answers `$currentOp` with FailedToParse and has no
//! `killOp` (CommandNotFound): there the kill is a close.

use crate::mongo_client::{ClientError, UpstreamClient};
use crate::shared::Shared;
use bson::{rawdoc, RawBson, RawDocument};
use std::time::Duration;

/// How long the kill switch waits for killOp before closing anyway.
pub const KILL_OP_TIMEOUT: Duration = Duration::from_millis(250);

/// Why killOp did not end the operation; the `killed` event's `kill_op`.
/// Error codes and names only: a server's message could quote values.
fn describe(e: &ClientError) -> String {
    match (e.code(), e.code_name()) {
        (Some(code), Some(name)) => format!("{code} {name}"),
        _ => e.to_string(),
    }
}

/// Runs `$currentOp` + `killOp` for the operation on the server connection
/// `server_conn`. `Ok(())` once the server has killed it.
pub async fn kill_op(shared: &Shared, server_conn: i64) -> Result<(), String> {
    let run = async {
        let settings = shared.settings.load_full();
        let mut c = UpstreamClient::connect_as(
            &shared.config.proxy.upstream,
            // Longer than the whole: a frozen server times out as a whole.
            KILL_OP_TIMEOUT * 2,
            settings.tls.connector.as_ref(),
            "mongotap-kill",
        )
        .await
        .map_err(|e| format!("connect: {}", describe(&e)))?;
        if let Some((user, password, db)) = credentials(shared) {
            c.auth_scram_sha256(user, password, db)
                .await
                .map_err(|e| format!("auth: {}", describe(&e)))?;
        }
        let ops = c
            .command(&rawdoc! {
                "aggregate": 1,
                "pipeline": [
                    { "$currentOp": { "allUsers": true, "idleConnections": false } },
                    { "$match": { "connectionId": server_conn } },
                    { "$project": { "opid": 1 } },
                ],
                "cursor": {},
                "$db": "admin",
            })
            .await
            .map_err(|e| format!("$currentOp: {}", describe(&e)))?;
        let opid = opid(&ops).ok_or_else(|| {
            format!("$currentOp: no operation on server connection {server_conn}")
        })?;
        c.command(&rawdoc! { "killOp": 1, "op": opid, "$db": "admin" })
            .await
            .map_err(|e| format!("killOp: {}", describe(&e)))?;
        Ok(())
    };
    tokio::time::timeout(KILL_OP_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "timed out after {} ms",
                KILL_OP_TIMEOUT.as_millis()
            ))
        })
}

/// [diagnose]'s credentials, else [explain]'s: mongotap's own user.
fn credentials(shared: &Shared) -> Option<(&str, &str, &str)> {
    let d = &shared.config.diagnose;
    let e = &shared.config.explain;
    match (&d.username, &d.password) {
        (Some(u), Some(p)) => Some((u, p, d.auth_db.as_deref().unwrap_or("admin"))),
        _ => match (&e.username, &e.password) {
            (Some(u), Some(p)) => Some((u, p, d.auth_db.as_deref().unwrap_or(&e.auth_db))),
            _ => None,
        },
    }
}

/// The first operation's `opid` in a `$currentOp` reply (an int on a
/// replica set, a "shard:opid" string through mongos), as killOp takes it.
fn opid(reply: &RawDocument) -> Option<RawBson> {
    let batch = reply
        .get_document("cursor")
        .ok()?
        .get_array("firstBatch")
        .ok()?;
    let op = batch.into_iter().next()?.ok()?.as_document()?;
    match op.get("opid").ok()?? {
        v @ (bson::RawBsonRef::Int32(_)
        | bson::RawBsonRef::Int64(_)
        | bson::RawBsonRef::String(_)) => Some(RawBson::from(v)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::opid;
    use bson::{rawdoc, RawBson};

    #[test]
    fn opid_is_read_from_the_first_operation() {
        let reply = rawdoc! {"cursor": {"firstBatch": [{"opid": 4242, "connectionId": 7}], "id": 0_i64}, "ok": 1.0};
        assert_eq!(opid(&reply), Some(RawBson::Int32(4242)));
        let mongos = rawdoc! {"cursor": {"firstBatch": [{"opid": "shard0:17"}]}};
        assert_eq!(opid(&mongos), Some(RawBson::String("shard0:17".into())));
        let none = rawdoc! {"cursor": {"firstBatch": []}, "ok": 1.0};
        assert_eq!(opid(&none), None);
        assert_eq!(opid(&rawdoc! {"ok": 1.0}), None);
    }
}
