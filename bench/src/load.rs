//! bench-load: a closed-loop MongoDB load client.
//!
//! Each connection sends one OP_MSG `find`, waits for its reply, and only
//! then sends the next, so throughput is bounded by round-trip latency, the
//! thing a proxy adds to. Every round trip is timed into an HDR histogram.
//!
//! With `--tls-ca` the connections speak TLS (rustls, ring). With
//! `--handshakes` each connection slot instead loops over connect, TLS
//! handshake (a full one: no session resumption) and `hello`, then closes:
//! the rate of new connections a proxy sustains.

// Printing results is what a benchmark binary is for.
#![allow(clippy::print_stdout)]

// The crate root is load.rs, so a plain `mod` would look in src/.
#[path = "load/dial.rs"]
mod dial;

use anyhow::{bail, ensure, Context};
use bson::{rawdoc, RawDocumentBuf};
use bytes::BytesMut;
use dial::{Dialer, Sock, Tls};
use hdrhistogram::Histogram;
use mongotap_bench::{Flag, Flags, Flavor};
use mongotap_proto::{decode, op_msg, Frame, OpCode, MAX_MESSAGE_LEN};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USAGE: &str = "bench-load: closed-loop MongoDB load client

Usage: bench-load --target ADDR --connections N --duration-secs S
                  [--warmup-secs W] [--json] [--runtime current|multi]
                  [--tls-ca FILE] [--handshakes] [--command find|aggregate]";

const FLAGS: &[Flag] = &[
    Flag {
        name: "target",
        value: Some("ADDR"),
        help: "server or proxy to load, e.g. 127.0.0.1:27018",
    },
    Flag {
        name: "connections",
        value: Some("N"),
        help: "concurrent connections, each with one request in flight",
    },
    Flag {
        name: "duration-secs",
        value: Some("S"),
        help: "measured time (after warm-up)",
    },
    Flag {
        name: "warmup-secs",
        value: Some("W"),
        help: "unmeasured time first, to fill caches and settle (default 1)",
    },
    Flag {
        name: "json",
        value: None,
        help: "print one JSON line instead of text",
    },
    Flag {
        name: "runtime",
        value: Some("FLAVOR"),
        help: "tokio runtime: current (default, one thread) or multi",
    },
    Flag {
        name: "tls-ca",
        value: Some("FILE"),
        help: "speak TLS, trusting the PEM CA bundle FILE (the name checked is the target's host)",
    },
    Flag {
        name: "command",
        value: Some("NAME"),
        help: "what each request is: find (default, a point query) or aggregate ($match, $limit)",
    },
    Flag {
        name: "handshakes",
        value: None,
        help: "count new connections (connect, TLS handshake, hello, close) per second instead of finds",
    },
];

/// Histogram range in nanoseconds: 1 ns to 60 s, 3 significant digits.
const HIST_MAX_NS: u64 = 60_000_000_000;
/// How long connecting may take, and how long past the end of the run a
/// connection may wait for a reply before the run is declared broken (a lost
/// reply would otherwise hang).
const GRACE: Duration = Duration::from_secs(10);

fn main() -> std::process::ExitCode {
    mongotap_bench::exit_with("bench-load", run_main())
}

fn run_main() -> anyhow::Result<()> {
    let flags = Flags::parse(USAGE, FLAGS, std::env::args().skip(1))?;
    let target: String = flags.require("target")?;
    let connections: usize = flags.require("connections")?;
    let duration: f64 = flags.require("duration-secs")?;
    let warmup: f64 = flags.get("warmup-secs")?.unwrap_or(1.0);
    let flavor: Flavor = flags.get("runtime")?.unwrap_or(Flavor::Current);
    ensure!(connections > 0, "--connections must be at least 1");
    ensure!(duration > 0.0, "--duration-secs must be positive");
    ensure!(warmup >= 0.0, "--warmup-secs must not be negative");

    let aggregate = match flags.get::<String>("command")?.as_deref() {
        None | Some("find") => false,
        Some("aggregate") => true,
        Some(other) => anyhow::bail!("--command {other}: expected find or aggregate"),
    };
    let plan = Plan {
        measure_from: Duration::from_secs_f64(warmup),
        measure_for: Duration::from_secs_f64(duration),
        aggregate,
    };
    let tls = flags
        .get::<String>("tls-ca")?
        .map(|ca| Tls::new(&ca, &target))
        .transpose()?;
    let dialer = Arc::new(Dialer { target, tls });
    let runtime = flavor.build()?;
    let result = if flags.has("handshakes") {
        runtime.block_on(handshakes(Arc::clone(&dialer), connections, plan))?
    } else {
        runtime.block_on(run(&dialer, connections, plan))?
    };
    let report = Report::new(connections, duration, &result);
    if flags.has("json") {
        println!("{}", report.json());
    } else {
        println!("{}", report.text(&dialer.target));
    }
    Ok(())
}

/// When measuring starts and how long it lasts, relative to the start.
#[derive(Clone, Copy)]
struct Plan {
    measure_from: Duration,
    measure_for: Duration,
    /// Send an aggregate instead of a find.
    aggregate: bool,
}

/// What one or all connections measured.
struct Measured {
    /// Round trips completed inside the measured window.
    ops: u64,
    /// Their latencies in nanoseconds.
    hist: Histogram<u64>,
}

/// Connects all connections first, then starts the clock for all of them at
/// once, so slow connects do not eat into the warm-up.
async fn run(dialer: &Dialer, connections: usize, plan: Plan) -> anyhow::Result<Measured> {
    let target = &dialer.target;
    // A target that accepts but never answers the hello must not hang the run.
    let socks = match tokio::time::timeout(GRACE, connect_all(dialer, connections)).await {
        Ok(socks) => socks?,
        Err(_) => bail!("connecting and saying hello to {target} took over {GRACE:?}"),
    };

    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, conn) in socks.into_iter().enumerate() {
        tasks.spawn(async move {
            drive(conn, start, plan)
                .await
                .with_context(|| format!("connection {i}"))
        });
    }
    let collect = async {
        let mut total = Measured {
            ops: 0,
            hist: new_histogram()?,
        };
        while let Some(joined) = tasks.join_next().await {
            let m = joined.context("connection task panicked")??;
            total.ops += m.ops;
            total.hist.add(&m.hist)?;
        }
        anyhow::Ok(total)
    };
    // One timer for the whole run rather than one per round trip: it only
    // fires if a reply is lost and a connection would otherwise hang forever.
    let deadline = plan.measure_from + plan.measure_for + GRACE;
    match tokio::time::timeout(deadline, collect).await {
        Ok(total) => total,
        Err(_) => bail!("a reply was still missing {GRACE:?} after the run ended"),
    }
}

async fn connect_all(dialer: &Dialer, connections: usize) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(connections);
    for i in 0..connections {
        let conn = dialer
            .connect()
            .await
            .with_context(|| format!("connection {i}"))?;
        conns.push(conn);
    }
    Ok(conns)
}

/// `--handshakes`: each of `connections` slots loops over connect, TLS
/// handshake, hello and close. One loop is one op; its latency is the
/// whole loop.
async fn handshakes(
    dialer: Arc<Dialer>,
    connections: usize,
    plan: Plan,
) -> anyhow::Result<Measured> {
    let start = Instant::now();
    let measure_from = start + plan.measure_from;
    let end = measure_from + plan.measure_for;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..connections {
        let dialer = Arc::clone(&dialer);
        tasks.spawn(async move {
            let mut m = Measured {
                ops: 0,
                hist: new_histogram()?,
            };
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let conn = dialer
                    .connect()
                    .await
                    .with_context(|| format!("connection slot {i}"))?;
                // Closed without TLS close_notify, as drivers do.
                drop(conn);
                let done = Instant::now();
                if done >= measure_from && done < end {
                    let ns = u64::try_from((done - began).as_nanos()).unwrap_or(u64::MAX);
                    m.hist.saturating_record(ns);
                    m.ops += 1;
                }
            }
            anyhow::Ok(m)
        });
    }
    let collect = async {
        let mut total = Measured {
            ops: 0,
            hist: new_histogram()?,
        };
        while let Some(joined) = tasks.join_next().await {
            let m = joined.context("connection task panicked")??;
            total.ops += m.ops;
            total.hist.add(&m.hist)?;
        }
        anyhow::Ok(total)
    };
    let deadline = plan.measure_from + plan.measure_for + GRACE;
    match tokio::time::timeout(deadline, collect).await {
        Ok(total) => total,
        Err(_) => bail!("a connection was still opening {GRACE:?} after the run ended"),
    }
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, HIST_MAX_NS, 3)?)
}

/// One connection with its read buffer and request counter.
struct Conn {
    sock: Sock,
    inbuf: BytesMut,
    next_id: i32,
}

impl Conn {
    /// Sends `request` (a whole message) with a fresh requestID and returns
    /// the reply, checking that it answers this request.
    async fn round_trip(&mut self, request: &mut [u8]) -> anyhow::Result<Frame> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        request[4..8].copy_from_slice(&id.to_le_bytes());
        self.sock.write_all(request).await?;
        // TLS may hold the tail of a write back until flushed; a no-op for TCP.
        self.sock.flush().await?;
        let frame = loop {
            // decode() is called before every read because one read may
            // already hold the whole reply; it leaves partial frames in place.
            if let Some(frame) = decode(&mut self.inbuf, MAX_MESSAGE_LEN)? {
                break frame;
            }
            if self.sock.read_buf(&mut self.inbuf).await? == 0 {
                bail!("server closed the connection while a request was in flight");
            }
        };
        ensure!(
            frame.header.response_to == id,
            "reply answers request {} but {id} was sent",
            frame.header.response_to
        );
        ensure!(
            frame.header.op_code == OpCode::Msg,
            "reply is {}, expected OP_MSG",
            frame.header.op_code.name()
        );
        Ok(frame)
    }
}

/// Connects the way a driver does: TCP_NODELAY and a hello first, so a proxy
/// sees a normal handshake (with an app name) before the timed traffic.
async fn handshake(sock: Sock) -> anyhow::Result<Conn> {
    let mut conn = Conn {
        sock,
        inbuf: BytesMut::with_capacity(16 * 1024),
        next_id: 1,
    };
    let hello = rawdoc! {
        "hello": 1,
        "client": {
            "application": { "name": "bench-load" },
            "driver": { "name": "mongotap-bench", "version": env!("CARGO_PKG_VERSION") },
            "os": { "type": std::env::consts::OS },
        },
        "$db": "admin",
    };
    let reply = conn.round_trip(&mut encode(&hello)).await?;
    check_ok(&reply)?;
    Ok(conn)
}

/// The timed loop of one connection.
async fn drive(mut conn: Conn, start: Instant, plan: Plan) -> anyhow::Result<Measured> {
    let measure_from = start + plan.measure_from;
    let end = measure_from + plan.measure_for;
    let command = mongotap_bench::request_body(plan.aggregate);
    let mut request = encode(&command);
    let mut hist = new_histogram()?;
    let mut ops = 0u64;
    let mut checked = false;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let reply = conn.round_trip(&mut request).await?;
        let done = Instant::now();
        if !checked {
            // Parse the body once per connection to prove the target really
            // answers finds; after that only the header is checked, to keep
            // the load client's own CPU cost low.
            check_ok(&reply).context(if plan.aggregate { "aggregate" } else { "find" })?;
            checked = true;
        }
        // Count round trips that complete inside the window, so that
        // ops / window is the throughput.
        if done >= measure_from && done < end {
            hist.saturating_record(u64::try_from((done - sent).as_nanos()).unwrap_or(u64::MAX));
            ops += 1;
        }
    }
    Ok(Measured { ops, hist })
}

fn encode(body: &RawDocumentBuf) -> Vec<u8> {
    op_msg::encode(0, 0, 0, body, &[])
}

/// Fails unless the reply's body has `ok: 1`.
fn check_ok(reply: &Frame) -> anyhow::Result<()> {
    let msg = op_msg::parse(&reply.bytes)?;
    let ok = match msg.body.get("ok")? {
        Some(bson::RawBsonRef::Double(d)) => d == 1.0,
        Some(bson::RawBsonRef::Int32(i)) => i == 1,
        Some(bson::RawBsonRef::Int64(i)) => i == 1,
        _ => false,
    };
    ensure!(ok, "reply is not ok: {:?}", msg.body);
    Ok(())
}

/// The numbers printed at the end.
struct Report {
    connections: usize,
    ops: u64,
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

impl Report {
    fn new(connections: usize, duration: f64, m: &Measured) -> Report {
        let us = |ns: u64| ns as f64 / 1000.0;
        Report {
            connections,
            ops: m.ops,
            ops_per_sec: m.ops as f64 / duration,
            p50_us: us(m.hist.value_at_quantile(0.50)),
            p99_us: us(m.hist.value_at_quantile(0.99)),
            p999_us: us(m.hist.value_at_quantile(0.999)),
            max_us: us(m.hist.max()),
        }
    }

    /// One JSON object on one line. Hand-written: every value is a number.
    fn json(&self) -> String {
        format!(
            "{{\"connections\":{},\"ops\":{},\"ops_per_sec\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1}}}",
            self.connections,
            self.ops,
            self.ops_per_sec,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )
    }

    fn text(&self, target: &str) -> String {
        format!(
            "target {target}, {} connections: {} ops, {:.0} ops/s\n\
             latency µs: p50 {:.1}  p99 {:.1}  p999 {:.1}  max {:.1}",
            self.connections,
            self.ops,
            self.ops_per_sec,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )
    }
}
