//! Shared pieces of the benchmark binaries: a tiny flag parser, the
//! runtime-flavour switch, and the documents the load client and the
//! upstream exchange (so `bench-decode` times exactly those).
//!
//! The flag parser is hand-rolled on purpose: the binaries take a handful of
//! flags, and pulling clap into this package would change the workspace's
//! Cargo.lock, which another crate owns.

// Printing results is what a benchmark binary is for.
#![allow(clippy::print_stdout)]

use anyhow::{anyhow, bail, Context};
use std::str::FromStr;

/// One command-line flag a binary accepts.
pub struct Flag {
    /// The long name, without the leading `--`.
    pub name: &'static str,
    /// `Some(placeholder)` when the flag takes a value, `None` for a switch.
    pub value: Option<&'static str>,
    /// One line for `--help`.
    pub help: &'static str,
}

/// The flags given on the command line, validated against a spec.
pub struct Flags {
    given: Vec<(&'static str, Option<String>)>,
}

impl Flags {
    /// Parses `args` (without the program name). Accepts `--name value` and
    /// `--name=value`. Prints usage and exits on `--help`.
    pub fn parse(
        usage: &str,
        spec: &'static [Flag],
        args: impl IntoIterator<Item = String>,
    ) -> anyhow::Result<Flags> {
        let mut args = args.into_iter();
        let mut given = Vec::new();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                print_usage(usage, spec);
                std::process::exit(0);
            }
            let Some(stripped) = arg.strip_prefix("--") else {
                bail!("unexpected argument {arg:?} (see --help)");
            };
            let (name, inline) = match stripped.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (stripped, None),
            };
            let flag = spec
                .iter()
                .find(|f| f.name == name)
                .ok_or_else(|| anyhow!("unknown flag --{name} (see --help)"))?;
            let value = match (flag.value, inline) {
                (Some(_), Some(v)) => Some(v),
                (Some(ph), None) => Some(
                    args.next()
                        .ok_or_else(|| anyhow!("--{name} needs a value ({ph})"))?,
                ),
                (None, Some(_)) => bail!("--{name} takes no value"),
                (None, None) => None,
            };
            given.push((flag.name, value));
        }
        Ok(Flags { given })
    }

    /// True when the switch `name` was given.
    pub fn has(&self, name: &str) -> bool {
        self.given.iter().any(|(n, _)| *n == name)
    }

    /// The last value given for `name`, parsed; `None` when absent.
    pub fn get<T>(&self, name: &str) -> anyhow::Result<Option<T>>
    where
        T: FromStr,
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let raw = self
            .given
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.as_deref());
        raw.map(|v| {
            v.parse::<T>()
                .with_context(|| format!("bad value for --{name}: {v:?}"))
        })
        .transpose()
    }

    /// Like [`Flags::get`], but the flag must be present.
    pub fn require<T>(&self, name: &str) -> anyhow::Result<T>
    where
        T: FromStr,
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        self.get(name)?
            .ok_or_else(|| anyhow!("--{name} is required (see --help)"))
    }
}

/// Runs a binary's `run_main`, printing an error as one `name: cause: cause`
/// line without anyhow's backtrace (RUST_BACKTRACE may be set in the
/// environment), so the harness shows what went wrong in one line.
pub fn exit_with(name: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn print_usage(usage: &str, spec: &[Flag]) {
    println!("{usage}\n\nOptions:");
    for f in spec {
        let left = match f.value {
            Some(ph) => format!("--{} {ph}", f.name),
            None => format!("--{}", f.name),
        };
        println!("  {left:<28} {}", f.help);
    }
}

/// Which tokio runtime a binary runs on.
///
/// The benchmark machine has two cores shared by the load client, the proxy
/// under test and the upstream, so both helpers default to a single thread:
/// extra worker threads would only steal CPU from the process being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Current,
    Multi,
}

/// An unknown `--runtime` value.
#[derive(Debug)]
pub struct FlavorError(String);

impl std::fmt::Display for FlavorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown runtime {:?}: expected current or multi", self.0)
    }
}

impl std::error::Error for FlavorError {}

impl FromStr for Flavor {
    type Err = FlavorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "current" | "current-thread" => Ok(Flavor::Current),
            "multi" | "multi-thread" => Ok(Flavor::Multi),
            other => Err(FlavorError(other.to_string())),
        }
    }
}

impl Flavor {
    /// Builds the runtime with I/O and timers enabled.
    pub fn build(self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self {
            Flavor::Current => tokio::runtime::Builder::new_current_thread(),
            Flavor::Multi => tokio::runtime::Builder::new_multi_thread(),
        };
        builder.enable_all().build()
    }
}

/// The body of each timed request: a typical point query without lsid (so
/// the proxy sees no sessions), or the same as a two-stage pipeline.
pub fn request_body(aggregate: bool) -> bson::RawDocumentBuf {
    if aggregate {
        bson::rawdoc! {
            "aggregate": "coll",
            "pipeline": [
                { "$match": { "sku": "sku-000001", "status": "A" } },
                { "$limit": 1 },
            ],
            "cursor": {},
            "$db": "db",
        }
    } else {
        bson::rawdoc! {
            "find": "coll",
            "filter": { "sku": "sku-000001", "status": "A" },
            "limit": 1,
            "singleBatch": true,
            "$db": "db",
        }
    }
}

/// The upstream's answer to a find or aggregate: a closed cursor whose
/// first batch holds `docs` small documents.
pub fn cursor_reply(docs: usize) -> anyhow::Result<bson::RawDocumentBuf> {
    let mut batch = bson::RawArrayBuf::new();
    for i in 0..docs {
        let i = i64::try_from(i)?;
        batch.push(bson::rawdoc! {
            "_id": i,
            "sku": format!("sku-{i:06}"),
            "qty": i * 10,
            "status": "A",
        });
    }
    Ok(bson::rawdoc! {
        "cursor": { "id": 0i64, "ns": "db.coll", "firstBatch": batch },
        "ok": 1.0,
    })
}
