//! The log events operators read during an incident. Every event carries
//! `event` plus the command's identity (conn, request_id, client, app,
//! driver, command, db, collection, stages); field names follow the
//! command-monitoring spec where one exists. Values from filters never
//! appear here: only names and shapes.

use crate::observe::cursors::CursorInfo;
use crate::observe::meta::ClientMeta;
use crate::observe::tracker::{Pending, RequestFacts};
use crate::observe::ConnId;
use crate::observe::Observatory;
use crate::observe::{ConnState, Unmatched};
use bson::raw::RawArray;
use mongotap_proto::reply::code_name;
use mongotap_proto::{CommandView, ReplyView};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Emits a tracing event at `$level` with the command-identity fields,
/// then any extra fields and the message. The one place those fields are
/// named, so every event spells them alike. `request_id`, `client` and
/// `comment` are Options (a leaked cursor has no request); a `None` is left
/// out. Like any tracing field, the values are only evaluated when the
/// event is enabled.
macro_rules! identity_event {
    (
        $level:ident, $event:literal,
        id: {
            conn: $conn:expr, request_id: $request_id:expr, client: $client:expr,
            member: $member:expr, meta: $meta:expr, command: $command:expr, db: $db:expr,
            collection: $collection:expr, stages: $stages:expr, comment: $comment:expr $(,)?
        },
        { $($extra:tt)* }, $($msg:tt)+
    ) => {
        tracing::$level!(
            event = $event,
            conn = $conn,
            request_id = $request_id,
            client = $client.map(tracing::field::display),
            member = $member,
            app = &*$meta.app,
            driver = %$meta.driver_label(),
            command = $command,
            db = $db,
            collection = $collection,
            stages = $stages,
            comment = $comment,
            $($extra)*
            $($msg)+
        )
    };
}
pub(crate) use identity_event;

/// `identity_event!` for a pending command `$p`, or for a requestID and
/// the request's facts (what an explain's job and the watchdog hold).
macro_rules! command_event {
    ($level:ident, $p:expr, $event:literal, { $($extra:tt)* }, $($msg:tt)+) => {{
        let p: &$crate::observe::tracker::Pending = $p;
        $crate::observe::events::command_event!($level, p.request_id, p.facts(), $event, { $($extra)* }, $($msg)+)
    }};
    ($level:ident, $request_id:expr, $facts:expr, $event:literal, { $($extra:tt)* }, $($msg:tt)+) => {{
        let p: &$crate::observe::tracker::RequestFacts = $facts;
        $crate::observe::events::identity_event!(
            $level, $event,
            id: {
                conn: p.conn, request_id: Some($request_id), client: Some(p.client),
                member: p.member.as_deref(), meta: p.meta, command: &*p.summary.command, db: &*p.summary.db,
                collection: &*p.summary.collection, stages: &*p.summary.shape,
                comment: p.comment.as_deref(),
            },
            { $($extra)* }, $($msg)+
        )
    }};
}
pub(crate) use command_event;

/// `identity_event!` for a command being forwarded, before it is tracked.
/// It has no rendered comment yet (that needs `watch.log_values`).
macro_rules! view_event {
    ($level:ident, $conn:expr, $request_id:expr, $view:expr, $meta:expr, $event:literal, { $($extra:tt)* }, $($msg:tt)+) => {{
        let (conn, view): (&ConnState, &CommandView<'_>) = ($conn, $view);
        identity_event!(
            $level, $event,
            id: {
                conn: conn.id.conn, request_id: Some($request_id), client: Some(conn.id.client),
                member: conn.id.member.as_ref().map(|m| &*m.name), meta: $meta, command: view.name, db: view.db.unwrap_or(""),
                collection: view.collection().unwrap_or(""), stages: tracing::field::display($crate::observe::meta::Shape(view)),
                comment: None::<&str>,
            },
            { $($extra)* }, $($msg)+
        )
    }};
}

pub fn started(conn: &ConnState, request_id: i32, view: &CommandView<'_>, meta: &ClientMeta) {
    view_event!(
        debug,
        conn,
        request_id,
        view,
        meta,
        "started",
        {},
        "started {}",
        view.name
    );
}

pub fn rewritten(
    conn: &ConnState,
    request_id: i32,
    view: &CommandView<'_>,
    meta: &ClientMeta,
    changes: &[mongotap_proto::rewrite::FieldChange],
    dry_run: bool,
) {
    // Enforced rewrites log at debug: skip building the text when that
    // level is off, since this runs for every rewritten command.
    if !dry_run && !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let what = crate::settings::policy::describe(changes);
    macro_rules! emit {
        ($level:ident) => {
            view_event!(
                $level, conn, request_id, view, meta, "rewritten",
                { changes = %what, dry_run, },
                "{}{} {what}", if dry_run { "dry-run: would rewrite " } else { "rewrote " }, view.name
            )
        };
    }
    // Dry-run exists to be read, so it logs at info; enforced rewrites are
    // routine and log at debug.
    if dry_run {
        emit!(info);
    } else {
        emit!(debug);
    }
}

/// Whether this module's debug events are logged: for callers that would
/// otherwise prepare data only such an event reads.
pub fn debug_enabled() -> bool {
    tracing::enabled!(tracing::Level::DEBUG)
}

pub fn succeeded(p: &Pending, elapsed: Duration) {
    command_event!(debug, p, "succeeded", { duration_ms = ms(elapsed), }, "succeeded");
}

pub fn failed(p: &Pending, reply: &ReplyView<'_>, elapsed: Duration) {
    let code = reply.error_code();
    let code_name = reply
        .code_name
        .unwrap_or_else(|| code.map_or("", code_name));
    // A failure every session of a well-known client produces says nothing
    // about the application: it stays counted, but logs below info.
    let why_expected = code.and_then(|c| expected_failure(&p.facts().summary.command, c));
    let expected = why_expected.is_some();
    // Logged at debug, usually off: do not build its hint for nothing.
    if expected && !debug_enabled() {
        return;
    }
    let hint = why_expected
        .map(str::to_string)
        .or_else(|| hint(p.facts(), code));
    macro_rules! emit {
        ($level:ident) => {
            command_event!(
                $level,
                p,
                "failed",
                {
                    duration_ms = ms(elapsed),
                    code,
                    code_name,
                    write_errors = reply.write_errors,
                    write_concern_error = reply.write_concern_error.is_some(),
                    expected,
                    hint,
                },
                "{} failed with {} {}", p.facts().summary.command, code.unwrap_or(0), code_name
            )
        };
    }
    if expected {
        emit!(debug);
    } else {
        emit!(info);
    }
}

pub fn slow(p: &Pending, elapsed: Duration, was_stalled: bool) {
    let s = &p.facts().summary;
    command_event!(
        warn,
        p,
        "slow",
        { duration_ms = ms(elapsed), was_stalled, max_time_ms = s.max_time_ms, allow_disk_use = s.allow_disk_use, },
        "slow {}: {} ms", s.command, ms(elapsed)
    );
}

/// The watchdog's `report`th stall report for the command `request_id`.
pub fn stalled(request_id: i32, p: &RequestFacts, report: u32, now: Instant) {
    let age_ms = p.age_ms(now);
    command_event!(
        warn,
        request_id,
        p,
        "stalled",
        {
            age_ms,
            max_time_ms = p.summary.max_time_ms,
            allow_disk_use = p.summary.allow_disk_use,
            report,
            hint = stall_hint(p),
        },
        "{} on conn {} has had no reply for {} ms", p.summary.command, p.conn, age_ms
    );
}

pub fn never_replied(p: &Pending, now: Instant, reason: &str) {
    let age_ms = p.facts().age_ms(now);
    command_event!(
        warn,
        p,
        "never_replied",
        { age_ms, reason = %reason, },
        "{} on conn {} will never get a reply: {}", p.facts().summary.command, p.facts().conn, reason
    );
}

pub fn abandoned(p: &Pending, now: Instant) {
    let age_ms = p.facts().age_ms(now);
    command_event!(
        info,
        p,
        "abandoned",
        { age_ms, },
        "client closed conn {} with {} pending for {} ms; closing the upstream connection so the server can kill it",
        p.facts().conn, p.facts().summary.command, age_ms
    );
}

/// An operator ended a command from the admin endpoint: who asked (the
/// admin client's address), how (`close` or `killOp`), the command's age,
/// and why killOp did not end it (`kill_op`) when it did not.
pub fn killed(
    request_id: i32,
    facts: &RequestFacts,
    by: std::net::SocketAddr,
    method: &str,
    age_ms: u64,
    kill_op: Option<&str>,
) {
    command_event!(
        warn,
        request_id,
        facts,
        "killed",
        { age_ms, by = %by, method, kill_op, },
        "{} on conn {} killed by {by} ({method}) after {age_ms} ms", facts.summary.command, facts.conn
    );
}

/// A reply whose responseTo matched no pending request: its ids, its shape
/// (ok, cursor, error code; never values) and the likely reason.
pub fn unmatched_reply(
    id: &ConnId,
    (request_id, response_to): (i32, i32),
    reply: &ReplyView<'_>,
    why: Unmatched,
) {
    let code = reply.error_code();
    debug!(
        event = "unmatched_reply",
        conn = id.conn,
        client = %id.client,
        request_id,
        response_to,
        ok = reply.ok,
        cursor = reply.cursor_id.is_some(),
        code,
        code_name = reply.code_name.unwrap_or_else(|| code.map_or("", code_name)),
        reason = why.as_str(),
        explanation = why.explain(),
        "reply {request_id} on conn {} answers no pending request ({response_to}): {}",
        id.conn,
        why.explain()
    );
}

pub fn cursor_leaked(id: i64, c: &CursorInfo, now: Instant, reason: &str) {
    identity_event!(
        warn, "cursor_leaked",
        id: {
            conn: c.conn, request_id: None::<i32>, client: None::<std::net::SocketAddr>,
            member: None::<&str>, meta: c.meta, command: &*c.summary.command, db: &*c.summary.db,
            collection: &*c.summary.collection, stages: &*c.summary.shape,
            comment: None::<&str>,
        },
        {
        cursor_id = id,
        batches = c.batches,
        documents = c.documents,
        get_mores = c.get_mores,
        age_ms = ms(now.saturating_duration_since(c.opened)),
        idle_ms = ms(now.saturating_duration_since(c.last_activity)),
        reason,
        },
        "cursor {id} left open: {reason}"
    );
}

/// Without `directConnection=true`, drivers read `hosts` from hello and
/// connect to the members directly, bypassing the proxy.
pub fn warn_replica_set_hosts(obs: &Observatory, hosts: &RawArray) {
    // Replica-set mode rewrites these replies: nothing bypasses mongotap.
    if obs.replica_set.is_some() || obs.warned_hosts.swap(true, Relaxed) {
        return;
    }
    let list: Vec<&str> = hosts
        .into_iter()
        .flatten()
        .filter_map(|h| h.as_str())
        .collect();
    warn!(
        event = "replica_set_hosts",
        hosts = ?list,
        "the upstream is a replica set member: clients without directConnection=true will discover these hosts and connect to them directly, bypassing mongotap; set [topology] mode = \"replica-set\" so hello replies name mongotap's listeners instead, or connect with directConnection=true"
    );
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Failures that well-known clients cause on every session, whatever the
/// application does, with why each is harmless. They are still counted
/// (`mongotap_failed_commands_total`, `/stats` errors); only their log line
/// drops to debug, with `expected = true` and the third field, which says
/// why the failure is harmless, as its `hint`. Matched on command and code
/// together: the same command failing with another code is news.
const EXPECTED_FAILURES: &[(&str, i32, &str)] = &[
    (
        "atlasVersion",
        59,
        "mongosh asks every server whether it is Atlas; other servers do not have the command",
    ),
    (
        "getParameter",
        72,
        "mongosh reads server parameters at connect; the server does not have the one it asked for",
    ),
    (
        "endSessions",
        59,
        "drivers send endSessions when a client closes; FerretDB does not implement it",
    ),
];

/// Why a failure of `command` with `code` is expected, when it is one of
/// the `EXPECTED_FAILURES`.
pub fn expected_failure(command: &str, code: i32) -> Option<&'static str> {
    EXPECTED_FAILURES
        .iter()
        .find(|(c, k, _)| *c == command && *k == code)
        .map(|(_, _, why)| *why)
}

/// A short diagnosis for the failures of a hanging aggregation.
pub fn hint(p: &RequestFacts, code: Option<i32>) -> Option<String> {
    match code? {
        50 => Some(match p.summary.max_time_ms {
            Some(ms) if p.injected_max_time => format!(
                "maxTimeMS {ms} was injected by a mongotap rewrite rule; raise the rule's limit or make the query cheaper"
            ),
            Some(ms) => format!("the client's own maxTimeMS {ms} expired"),
            None => "a time limit expired (maxTimeMS or the server's default)".to_string(),
        }),
        146 | 292 | 16945 | 16819 => Some(format!(
            "a stage exceeded its memory limit with allowDiskUse {}; pass allowDiskUse: true, or reduce the data earlier with $match/$project",
            match p.summary.allow_disk_use {
                Some(true) => "true",
                Some(false) => "false",
                None => "absent",
            }
        )),
        _ => None,
    }
}

fn stall_hint(p: &RequestFacts) -> Option<&'static str> {
    p.summary
        .stages
        .iter()
        .any(|s| &**s == "$lookup" || &**s == "$graphLookup")
        .then_some("the pipeline has $lookup/$graphLookup: check that the foreign field is indexed and has the same type as the local field")
}

#[cfg(test)]
mod tests {
    use super::expected_failure;
    use crate::observe::meta::Shape;
    use bson::rawdoc;
    use mongotap_proto::CommandView;

    /// The `stages` a `started` or `rewritten` event logs is the pipeline's
    /// stage names joined with '>', as the tracked command's shape is.
    #[test]
    fn a_views_shape_is_its_stage_names_joined() {
        let doc = rawdoc! {
            "aggregate": "orders",
            "pipeline": [{ "$match": { "x": 1 } }, { "$group": { "_id": "$y" } }, { "$sort": { "_id": 1 } }],
            "cursor": {},
            "$db": "shop",
        };
        let view = CommandView::parse(&doc).unwrap();
        assert_eq!(Shape(&view).to_string(), "$match>$group>$sort");
        let find = rawdoc! { "find": "orders", "$db": "shop" };
        assert_eq!(Shape(&CommandView::parse(&find).unwrap()).to_string(), "");
    }

    /// The failures every mongosh session and every driver's close on
    /// FerretDB produce are recognised, each with its reason.
    #[test]
    fn well_known_client_failures_are_expected() {
        for (command, code, word) in [
            ("atlasVersion", 59, "Atlas"),
            ("getParameter", 72, "parameters"),
            ("endSessions", 59, "endSessions"),
        ] {
            let why = expected_failure(command, code)
                .unwrap_or_else(|| panic!("{command} {code} should be expected"));
            assert!(why.contains(word), "{command}: {why}");
        }
    }

    /// The same commands failing with another code, and other commands
    /// failing with the same codes, are still news.
    #[test]
    fn other_failures_are_not_expected() {
        for (command, code) in [
            ("atlasVersion", 13),
            ("getParameter", 59),
            ("endSessions", 13),
            ("endSessions", 72),
            ("find", 59),
            ("aggregate", 72),
            ("aggregate", 50),
            // Command names are case-sensitive on the wire.
            ("endsessions", 59),
        ] {
            assert_eq!(expected_failure(command, code), None, "{command} {code}");
        }
    }
}
