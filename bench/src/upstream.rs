//! bench-upstream: a fast scripted MongoDB server for benchmarks.
//!
//! It answers every OP_MSG with a canned reply (hello, a one-batch find /
//! aggregate cursor, or `{ok: 1}`), so the numbers measure the proxy in
//! front of it rather than a real mongod. Replies are encoded once at start;
//! per request only the header's requestID and responseTo are patched in.

// Printing results is what a benchmark binary is for.
#![allow(clippy::print_stdout)]

use anyhow::{bail, Context};
use bson::{rawdoc, RawDocumentBuf};
use bytes::BytesMut;
use mongotap_bench::{Flag, Flags, Flavor};
use mongotap_proto::{decode, op_msg, op_query, op_reply, Frame, OpCode, MAX_MESSAGE_LEN};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USAGE: &str = "bench-upstream: a scripted MongoDB upstream for benchmarks

Usage: bench-upstream --listen ADDR [--docs N] [--runtime current|multi]

Prints `listening ADDR` as the first line on stdout once bound.";

const FLAGS: &[Flag] = &[
    Flag {
        name: "listen",
        value: Some("ADDR"),
        help: "address to bind, e.g. 127.0.0.1:0 (port 0 picks a free port)",
    },
    Flag {
        name: "docs",
        value: Some("N"),
        help: "documents in each find/aggregate firstBatch (default 1)",
    },
    Flag {
        name: "runtime",
        value: Some("FLAVOR"),
        help: "tokio runtime: current (default, one thread) or multi",
    },
];

/// The first read buffer size, and how much is reserved when it runs low:
/// big enough that a burst of pipelined requests is read in one syscall.
const READ_CHUNK: usize = 64 * 1024;

fn main() -> std::process::ExitCode {
    mongotap_bench::exit_with("bench-upstream", run_main())
}

fn run_main() -> anyhow::Result<()> {
    let flags = Flags::parse(USAGE, FLAGS, std::env::args().skip(1))?;
    let listen: String = flags.require("listen")?;
    let docs: usize = flags.get("docs")?.unwrap_or(1);
    let flavor: Flavor = flags.get("runtime")?.unwrap_or(Flavor::Current);

    let replies = Arc::new(Replies::new(docs)?);
    flavor.build()?.block_on(serve(&listen, replies))
}

/// Accepts connections until SIGINT/SIGTERM, one task per connection.
async fn serve(listen: &str, replies: Arc<Replies>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    // Registered before announcing the port, so that once the harness has
    // seen the line a SIGTERM always means a clean exit.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // The harness reads this line to learn the port; println! flushes at the
    // newline because stdout is line-buffered.
    println!("listening {}", listener.local_addr()?);

    loop {
        tokio::select! {
            // accept() is cancel-safe: a connection not yet returned stays queued.
            accepted = listener.accept() => {
                let (sock, peer) = match accepted {
                    Ok(a) => a,
                    // Running out of file descriptors must not end the server.
                    Err(e) => { eprintln!("bench-upstream: accept: {e}"); continue; }
                };
                let replies = Arc::clone(&replies);
                tokio::spawn(async move {
                    if let Err(e) = connection(sock, &replies).await {
                        eprintln!("bench-upstream: {peer}: {e:#}");
                    }
                });
            }
            // Signals end the process; dropping the runtime drops the tasks.
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
    }
}

/// Serves one client connection until it closes.
///
/// Every whole frame in the read buffer is answered into one output buffer,
/// written with a single `write_all`: pipelined requests cost one syscall.
async fn connection(mut sock: TcpStream, replies: &Replies) -> anyhow::Result<()> {
    sock.set_nodelay(true)?;
    let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(READ_CHUNK);
    // Each reply gets its own requestID, as a server's would.
    let mut next_id: i32 = 1;
    loop {
        if inbuf.capacity() - inbuf.len() < READ_CHUNK / 4 {
            inbuf.reserve(READ_CHUNK);
        }
        if sock.read_buf(&mut inbuf).await? == 0 {
            // EOF. Leftover bytes are a frame the client abandoned; nothing to answer.
            return Ok(());
        }
        while let Some(frame) = decode(&mut inbuf, MAX_MESSAGE_LEN)? {
            replies.answer(&frame, &mut next_id, &mut out)?;
        }
        if !out.is_empty() {
            sock.write_all(&out).await?;
            out.clear();
        }
    }
}

/// Pre-encoded replies, each a whole message whose header ids are patched
/// per request.
struct Replies {
    hello: Vec<u8>,
    cursor: Vec<u8>,
    ok: Vec<u8>,
    /// hello as OP_REPLY, for a legacy OP_QUERY `isMaster` handshake.
    legacy_hello: Vec<u8>,
}

impl Replies {
    fn new(docs: usize) -> anyhow::Result<Replies> {
        let hello = hello_doc();
        let cursor = mongotap_bench::cursor_reply(docs)?;
        let ok = rawdoc! { "ok": 1.0 };
        let legacy = op_reply::OpReply {
            response_flags: 0,
            cursor_id: 0,
            starting_from: 0,
            number_returned: 1,
            documents: hello.as_bytes(),
        };
        Ok(Replies {
            hello: op_msg::encode(0, 0, 0, &hello, &[]),
            cursor: op_msg::encode(0, 0, 0, &cursor, &[]),
            ok: op_msg::encode(0, 0, 0, &ok, &[]),
            legacy_hello: op_reply::encode(0, 0, &legacy),
        })
    }

    /// Appends the reply to `frame` (if it wants one) to `out`.
    fn answer(&self, frame: &Frame, next_id: &mut i32, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let template = match frame.header.op_code {
            OpCode::Msg => {
                let msg = op_msg::parse(&frame.bytes)?;
                if msg.more_to_come() {
                    // The client promised not to wait (w:0): no reply.
                    return Ok(());
                }
                match command_name(msg.body)? {
                    "hello" | "isMaster" | "ismaster" => &self.hello,
                    "find" | "aggregate" => &self.cursor,
                    _ => &self.ok,
                }
            }
            OpCode::Query => {
                let q = op_query::parse(&frame.bytes)?;
                match command_name(q.command())? {
                    "hello" | "isMaster" | "ismaster" => &self.legacy_hello,
                    other => bail!("OP_QUERY {other} is not scripted (only isMaster)"),
                }
            }
            other => bail!("{} is not scripted", other.name()),
        };
        let start = out.len();
        out.extend_from_slice(template);
        out[start + 4..start + 8].copy_from_slice(&next_id.to_le_bytes());
        out[start + 8..start + 12].copy_from_slice(&frame.header.request_id.to_le_bytes());
        *next_id = next_id.wrapping_add(1);
        Ok(())
    }
}

/// The first key of a command document.
fn command_name(doc: &bson::RawDocument) -> anyhow::Result<&str> {
    match doc.iter().next() {
        Some(Ok((name, _))) => Ok(name.as_str()),
        Some(Err(e)) => Err(e).context("malformed command body"),
        None => bail!("empty command body"),
    }
}

/// A plausible hello reply from a 7.0 (wire version 21) standalone.
fn hello_doc() -> RawDocumentBuf {
    rawdoc! {
        "helloOk": true,
        "ismaster": true,
        "topologyVersion": { "processId": bson::oid::ObjectId::new(), "counter": 0i64 },
        "maxBsonObjectSize": 16_777_216,
        "maxMessageSizeBytes": 48_000_000,
        "maxWriteBatchSize": 100_000,
        "localTime": bson::DateTime::now(),
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": 1,
        "minWireVersion": 0,
        "maxWireVersion": 21,
        "readOnly": false,
        "ok": 1.0,
    }
}
