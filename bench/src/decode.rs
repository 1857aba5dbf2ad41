//! Times the wire-format work mongotap does for every request and reply,
//! on the very frames `bench-load` and `bench-upstream` exchange. The
//! socket benchmarks show what decoding costs as a share of a round trip;
//! this shows which part of decoding it is, in ns per call, hot in cache
//! (inside the proxy, with 64 connections' state competing for the cache,
//! the same work takes about twice as long).
//!
//! `bson iteration` lines are the bson crate's own floor: one pass over a
//! document's top-level elements, keys only or keys and values. mongotap's
//! parsers make one such pass each, plus what they read from the values.

// Printing results is what a benchmark binary is for.
#![allow(clippy::print_stdout)]

use bson::RawDocument;
use mongotap_bench::{cursor_reply, request_body, Flag, Flags};
use mongotap_proto::{op_msg, shape, CommandView, ReplyView};
use std::hint::black_box;
use std::time::Instant;

const USAGE: &str = "bench-decode: ns per call of mongotap's per-frame decoding

Usage: bench-decode [--docs N] [--iterations N]";

const FLAGS: &[Flag] = &[
    Flag {
        name: "docs",
        value: Some("N"),
        help: "documents in the reply's firstBatch, as bench-upstream --docs (default 1)",
    },
    Flag {
        name: "iterations",
        value: Some("N"),
        help: "timed calls per line (default 2000000)",
    },
];

fn main() -> std::process::ExitCode {
    mongotap_bench::exit_with("bench-decode", run_main())
}

fn run_main() -> anyhow::Result<()> {
    let flags = Flags::parse(USAGE, FLAGS, std::env::args().skip(1))?;
    let docs: usize = flags.get("docs")?.unwrap_or(1);
    let iterations: u32 = flags.get("iterations")?.unwrap_or(2_000_000);
    run(docs, iterations)
}

fn run(docs: usize, iterations: u32) -> anyhow::Result<()> {
    let timer = Timer { iterations };

    let reply_frame = op_msg::encode(2, 1, 0, &cursor_reply(docs)?, &[]);
    for aggregate in [false, true] {
        let request_frame = op_msg::encode(1, 0, 0, &request_body(aggregate), &[]);
        let command = if aggregate { "aggregate" } else { "find" };
        timer.line(&format!("{command} request: OP_MSG + CommandView"), || {
            let msg = op_msg::parse(black_box(&request_frame)).ok()?;
            CommandView::parse(msg.body).ok().map(|v| v.name.len())
        });
        let msg = op_msg::parse(&request_frame)?;
        let view = CommandView::parse(msg.body)?;
        if aggregate {
            timer.line("aggregate request: pipeline stage names", || {
                Some(black_box(&view).stages().count())
            });
        }
        // Per request: the per-connection shape cache's key, a hash of the
        // command's bytes; a hit skips shape_hash.
        let hasher = ahash::RandomState::new();
        timer.line(&format!("{command} request: shape cache key"), || {
            Some(hasher.hash_one(black_box(msg.body.as_bytes())))
        });
        // Per request (tracked find, aggregate, ...): the shape's hash.
        timer.line(&format!("{command} request: shape_hash"), || {
            shape::shape_hash(black_box(&view), &msg.sequences)
        });
        // Once per shape per process: the shape document.
        timer.line(
            &format!("{command} request: shape_doc (first sight)"),
            || shape::shape_doc(black_box(&view), &msg.sequences),
        );
        timer.line(&format!("{command} request: bson iteration, keys"), || {
            Some(keys_only(black_box(msg.body)))
        });
        timer.line(
            &format!("{command} request: bson iteration, values"),
            || Some(keys_and_values(black_box(msg.body))),
        );
    }
    timer.line(&format!("reply ({docs} docs): OP_MSG + ReplyView"), || {
        let msg = op_msg::parse(black_box(&reply_frame)).ok()?;
        ReplyView::parse(msg.body).ok().map(|v| v.cursor_id)
    });
    let reply = op_msg::parse(&reply_frame)?;
    let reply_view = ReplyView::parse(reply.body)?;
    timer.line(&format!("reply ({docs} docs): batch_len"), || {
        Some(black_box(&reply_view).batch_len())
    });
    timer.line(
        &format!("reply ({docs} docs): bson iteration, keys"),
        || Some(keys_only(black_box(reply.body))),
    );
    timer.line(
        &format!("reply ({docs} docs): bson iteration, values"),
        || Some(keys_and_values(black_box(reply.body))),
    );
    timer.line("clock read (Instant::now)", || Some(Instant::now()));
    Ok(())
}

struct Timer {
    iterations: u32,
}

impl Timer {
    /// Prints the mean ns per call of `f`, after a warm-up of a tenth as
    /// many calls. `f` returns something so that its work is not optimized
    /// away; `None` means the input did not decode, which is a bug here.
    #[allow(clippy::expect_used, reason = "a frame that fails to decode is a bug")]
    fn line<T>(&self, name: &str, mut f: impl FnMut() -> Option<T>) {
        for _ in 0..self.iterations / 10 {
            black_box(f());
        }
        let started = Instant::now();
        for _ in 0..self.iterations {
            black_box(f().expect("the benchmark's own frames decode"));
        }
        let ns = started.elapsed().as_nanos() as f64 / f64::from(self.iterations);
        println!("{name:<48} {ns:>8.1} ns");
    }
}

fn keys_only(doc: &RawDocument) -> usize {
    doc.iter_elements()
        .filter_map(Result::ok)
        .map(|e| e.key().len())
        .sum()
}

fn keys_and_values(doc: &RawDocument) -> usize {
    doc.iter()
        .filter_map(Result::ok)
        .map(|(k, v)| k.len() + v.element_type() as usize)
        .sum()
}

#[cfg(test)]
mod tests {
    /// Every line decodes the frames it times (a frame that failed to
    /// decode would time the error path instead).
    #[test]
    fn every_line_runs() {
        super::run(3, 10).unwrap();
    }
}
