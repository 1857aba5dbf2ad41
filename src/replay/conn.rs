//! One live connection of a replay, on mongotap's own client: it says
//! hello, logs in, sends captured frames under fresh request ids, and reads
//! each reply to the end of its moreToCome stream. Replies that answer
//! nothing replay waits for (FerretDB answers w:0 writes although it should
//! not) are dropped by the client.

use super::{Credentials, ReplayError};
use crate::mongo_client::{ClientError, UpstreamClient};
use mongotap_proto::ReplyView;
use std::time::Duration;

/// The application name in replay's handshakes: the target's logs and
/// `$currentOp` show these connections as a replay's.
const APP: &str = "mongotap-replay";

/// What the live server answered to one request.
#[derive(Debug, Default)]
pub struct Reply {
    /// Documents in firstBatch/nextBatch over all replies.
    pub docs: u64,
    pub error: bool,
    /// `code` or the first write error's code.
    pub code: Option<i32>,
    pub code_name: Option<String>,
    /// The last reply's cursor id.
    pub cursor_id: Option<i64>,
}

/// Connects, says hello, and logs in when credentials are given. Each
/// step is bounded by `timeout`.
pub async fn open(
    target: &str,
    creds: Option<&Credentials>,
    timeout: Duration,
) -> Result<UpstreamClient, ReplayError> {
    let mut client = UpstreamClient::connect_as(target, timeout, None, APP).await?;
    if let Some(c) = creds {
        tokio::time::timeout(
            timeout,
            client.auth_scram_sha256(&c.username, &c.password, &c.db),
        )
        .await
        .map_err(|_| ClientError::timed_out(target, "the SCRAM-SHA-256 login", timeout))??;
    }
    Ok(client)
}

/// Reads the reply to the request just sent (`command`, for errors),
/// following moreToCome to the last reply of the stream. Gives up after
/// `timeout` without a reply.
pub async fn reply(
    client: &mut UpstreamClient,
    command: &str,
    timeout: Duration,
) -> Result<Reply, ReplayError> {
    let mut out = Reply::default();
    loop {
        // A timeout drops the read, which the client survives; the replay
        // of this connection stops on the error anyway.
        let next = tokio::time::timeout(timeout, client.read_reply(summary))
            .await
            .map_err(|_| ClientError::timed_out(client.addr(), command, timeout))??;
        let Some(one) = next else {
            return Ok(out);
        };
        let one = one.value.map_err(|source| ClientError::Decode {
            addr: client.addr().to_string(),
            source,
        })?;
        out.docs += one.docs;
        if one.error && !out.error {
            out.error = true;
            out.code = one.code;
            out.code_name = one.code_name;
        }
        if one.cursor_id.is_some() {
            out.cursor_id = one.cursor_id;
        }
    }
}

fn summary(doc: &bson::RawDocument) -> Result<Reply, mongotap_proto::DecodeError> {
    let v = ReplyView::parse(doc)?;
    Ok(Reply {
        docs: v.batch_len() as u64,
        error: v.is_error(),
        code: v.error_code(),
        code_name: v.code_name.map(str::to_string),
        cursor_id: v.cursor_id,
    })
}
