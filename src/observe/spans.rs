//! Commands as OpenTelemetry spans (`[otel]`), following the database
//! semantic conventions for MongoDB. Built only when export is on, at a
//! command's end (so sampling can keep every stalled, failed or slow one),
//! from the request's and the last reply's wire times.
//!
//! No literal value goes into a span: names, the namespace, stage names and
//! error codes only (`errmsg` can quote a document's values). The one
//! exception is `db.query.text`, set only with `watch.log_values = true`.

use crate::observe::tracker::{Pending, RequestFacts};
use crate::observe::Observatory;
use crate::otel::{Otel, SpanIds};
use mongotap_proto::ReplyView;
use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState,
};
use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime};

/// How a command ended.
pub enum End<'r, 'a> {
    Reply(&'r ReplyView<'a>),
    /// The server closed or failed the connection first.
    NeverReplied,
    /// The client went first.
    Abandoned,
}

/// The span of a finished command, queued when sampling keeps it.
pub fn command(otel: &Otel, obs: &Observatory, p: &Pending, end: End<'_, '_>, now: Instant) {
    let facts = p.facts();
    let Some(ids) = facts.span else { return };
    let stalled = p.watch().stall_reports() > 0;
    let elapsed = now.saturating_duration_since(facts.started);
    // Decided before anything is built: at a low sample ratio most
    // commands end here, and must cost no more than this.
    let failed = match &end {
        End::Reply(reply) => reply.is_error(),
        End::NeverReplied | End::Abandoned => true,
    };
    let slow = elapsed.as_millis() as u64 >= obs.watch.slow_ms;
    if !(failed || stalled || slow || otel.sampled(&ids)) {
        return;
    }
    let mut attrs = base_attributes(obs, facts);
    attrs.push(KeyValue::new("mongotap.stalled", stalled));
    let status = match &end {
        End::Reply(reply) => {
            let cursor = reply.cursor_id.filter(|&id| id != 0).or(facts.cursor_id);
            if let Some(id) = cursor {
                attrs.push(KeyValue::new("db.mongodb.cursor_id", id));
            }
            if reply.is_error() {
                let code = reply.error_code();
                let code_text = code.map_or_else(|| "unknown".to_string(), |c| c.to_string());
                let kind: Cow<'static, str> = match reply.code_name {
                    Some(name) if reply.is_failure() => Cow::Owned(name.to_string()),
                    _ if reply.write_errors > 0 => "WriteError".into(),
                    _ if reply.write_concern_error.is_some() => "WriteConcernError".into(),
                    _ => Cow::Owned(code_text.clone()),
                };
                attrs.push(KeyValue::new("db.response.status_code", code_text));
                attrs.push(KeyValue::new("error.type", kind.clone()));
                Status::Error { description: kind }
            } else {
                Status::Unset
            }
        }
        End::NeverReplied => {
            attrs.push(KeyValue::new("error.type", "never_replied"));
            Status::error("the connection ended before the server replied")
        }
        End::Abandoned => {
            attrs.push(KeyValue::new("error.type", "abandoned"));
            Status::error("the client closed the connection before the reply")
        }
    };
    let clock = Clock::now();
    let mut events = SpanEvents::default();
    if stalled {
        let at = facts.started + Duration::from_millis(obs.watch.stall_ms);
        events.events.push(Event::new(
            "stalled",
            clock.wall(at),
            vec![KeyValue::new(
                "mongotap.stall_ms",
                obs.watch.stall_ms as i64,
            )],
            0,
        ));
    }
    otel.submit(span(
        otel,
        ids,
        ids.parent.map_or(SpanId::INVALID, |p| p.span_id),
        name(facts),
        SpanKind::Client,
        (clock.wall(facts.started), clock.wall(now)),
        attrs,
        events,
        SpanLinks::default(),
        status,
    ));
}

/// At a command's first `stalled` report: a short span, a child of the
/// command's own (which ends later), so the stall shows in the trace
/// while the command is still stuck. Always kept.
pub fn stalled(otel: &Otel, obs: &Observatory, facts: &RequestFacts, now: Instant) {
    let Some(ids) = facts.span else { return };
    let clock = Clock::now();
    let mut attrs = base_attributes(obs, facts);
    attrs.push(KeyValue::new("mongotap.stalled", true));
    attrs.push(KeyValue::new("mongotap.age_ms", facts.age_ms(now) as i64));
    let command_span = SpanContext::new(
        ids.trace_id,
        ids.span_id,
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    let mut links = SpanLinks::default();
    links.links.push(Link::with_context(command_span));
    let parent = SpanIds {
        parent: None,
        ..ids
    };
    otel.submit(span(
        otel,
        SpanIds {
            span_id: otel.new_ids(None).span_id,
            ..parent
        },
        ids.span_id,
        format!("stalled {}", name(facts)),
        SpanKind::Internal,
        (clock.wall(facts.started), clock.wall(now)),
        attrs,
        SpanEvents::default(),
        links,
        Status::error("stalled: no reply within watch.stall_ms"),
    ));
}

/// `{db.operation.name} {db.collection.name}`, or the operation alone.
fn name(facts: &RequestFacts) -> String {
    let s = &facts.summary;
    if s.collection.is_empty() {
        s.command.to_string()
    } else {
        format!("{} {}", s.command, s.collection)
    }
}

fn base_attributes(obs: &Observatory, facts: &RequestFacts) -> Vec<KeyValue> {
    let s = &facts.summary;
    let mut attrs = Vec::with_capacity(16);
    attrs.push(KeyValue::new("db.system.name", "mongodb"));
    attrs.push(KeyValue::new("db.namespace", s.db.clone()));
    if !s.collection.is_empty() {
        attrs.push(KeyValue::new("db.collection.name", s.collection.clone()));
    }
    attrs.push(KeyValue::new("db.operation.name", s.command.clone()));
    attrs.push(KeyValue::new("db.query.summary", name(facts)));
    let server = facts.member.as_deref().unwrap_or(&obs.upstream);
    let (host, port) = split_host_port(server);
    attrs.push(KeyValue::new("server.address", host.to_string()));
    if let Some(port) = port {
        attrs.push(KeyValue::new("server.port", port));
    }
    attrs.push(KeyValue::new("mongotap.app", facts.meta.app.clone()));
    attrs.push(KeyValue::new("mongotap.client", facts.client.to_string()));
    if !s.stages.is_empty() {
        let stages: Vec<StringValue> = s.stages.iter().cloned().map(StringValue::from).collect();
        attrs.push(KeyValue::new(
            "mongotap.stages",
            Value::Array(Array::String(stages)),
        ));
    }
    attrs.push(KeyValue::new("mongotap.rewritten", facts.rewritten));
    // Set only with watch.log_values = true (request.rs).
    if let Some(text) = &facts.query_text {
        attrs.push(KeyValue::new("db.query.text", text.clone()));
    }
    attrs
}

/// `host:port`, `[v6]:port` or a bare host.
fn split_host_port(addr: &str) -> (&str, Option<i64>) {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
            Ok(p) => (
                host.trim_start_matches('[').trim_end_matches(']'),
                Some(i64::from(p)),
            ),
            Err(_) => (addr, None),
        },
        _ => (addr, None),
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call per span kind, each naming every part"
)]
fn span(
    otel: &Otel,
    ids: SpanIds,
    parent_span_id: SpanId,
    name: String,
    kind: SpanKind,
    (start_time, end_time): (SystemTime, SystemTime),
    attributes: Vec<KeyValue>,
    events: SpanEvents,
    links: SpanLinks,
    status: Status,
) -> SpanData {
    let parent_span_is_remote = ids.parent.is_some();
    SpanData {
        span_context: SpanContext::new(
            ids.trace_id,
            ids.span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id,
        parent_span_is_remote,
        span_kind: kind,
        name: name.into(),
        start_time,
        end_time,
        attributes,
        dropped_attributes_count: 0,
        events,
        links,
        status,
        instrumentation_scope: otel.scope.clone(),
    }
}

/// Wire times are `Instant`s; spans want wall-clock times. One reading of
/// both clocks maps the one onto the other.
struct Clock {
    wall: SystemTime,
    mono: Instant,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    fn wall(&self, at: Instant) -> SystemTime {
        if at <= self.mono {
            self.wall - self.mono.duration_since(at)
        } else {
            self.wall + at.duration_since(self.mono)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn server_address_and_port() {
        assert_eq!(
            split_host_port("127.0.0.1:27017"),
            ("127.0.0.1", Some(27017))
        );
        assert_eq!(split_host_port("[::1]:27018"), ("::1", Some(27018)));
        assert_eq!(split_host_port("db.internal"), ("db.internal", None));
    }
}
