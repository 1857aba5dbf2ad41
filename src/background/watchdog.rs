//! The watchdog: reports commands pending longer than stall_ms (again at
//! doubling intervals, a bounded number of times) and cursors idle longer
//! than cursor_idle_ms. It copies what it reports out of the tables first,
//! so logging never holds a lock the forwarding path needs.
//!
//! It only reads the sessions' entries; what it writes is its own
//! `WatchState` in each (how many stalls it reported, whether it explained).

use crate::background::explain::Explainer;
use crate::observe::events;
use crate::observe::tracker::{RequestFacts, Tracker};
use crate::observe::{Observatory, Trigger};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A stalled command is reported at stall_ms, 2×, 4×, ... up to this many times.
pub const MAX_STALL_REPORTS: u32 = 6;

pub async fn run(obs: Arc<Observatory>, explainer: Arc<Explainer>, stop: CancellationToken) {
    let stall_ms = obs.watch.stall_ms;
    // Check often enough that a stall is reported well within stall_ms + 1 s.
    let period = Duration::from_millis((stall_ms / 4).clamp(50, 500));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_cursor_sweep = Instant::now();
    loop {
        // Cancel-safe: a tick not yet taken stays due, and `cancelled` holds
        // no state; the sweep runs outside the select, so it is never cut off.
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = Instant::now();
        for (request_id, facts, report) in due_stalls(&obs.tracker, now, stall_ms) {
            obs.counters.stalled.fetch_add(1, Relaxed);
            events::stalled(request_id, &facts, report, now);
            if let (1, Some(d)) = (report, &obs.diagnose) {
                let age_ms = facts.age_ms(now);
                d.diagnose(request_id, &facts, Trigger::Stalled { age_ms });
            }
            if let (1, Some(otel)) = (report, &obs.otel) {
                crate::observe::spans::stalled(otel, &obs, &facts, now);
            }
        }
        if let Some(after_ms) = explainer.after_ms() {
            for (request_id, facts) in due_explains(&obs.tracker, after_ms, now) {
                let elapsed = now.saturating_duration_since(facts.started);
                explainer.maybe_explain(request_id, &facts, elapsed);
            }
        }
        if now.duration_since(last_cursor_sweep) >= Duration::from_secs(1) {
            last_cursor_sweep = now;
            let idle_ms = obs.watch.cursor_idle_ms;
            for (id, c) in obs.cursors.take_idle(idle_ms, now) {
                obs.counters.cursors_leaked.fetch_add(1, Relaxed);
                events::cursor_leaked(id, &c, now, "idle longer than cursor_idle_ms");
            }
        }
    }
}

/// Pending commands whose next stall report is due: (requestID, facts,
/// the report's number), with the count already advanced.
fn due_stalls(tracker: &Tracker, now: Instant, stall_ms: u64) -> Vec<(i32, RequestFacts, u32)> {
    let mut due = Vec::new();
    tracker.for_each(|p| {
        let (facts, watch) = (p.facts(), p.watch());
        let reports = watch.stall_reports();
        if facts.awaiting || reports >= MAX_STALL_REPORTS {
            return;
        }
        let threshold = stall_ms.saturating_mul(1 << reports);
        if facts.age_ms(now) >= threshold {
            let report = watch.note_stall();
            due.push((p.request_id, facts.clone(), report));
        }
    });
    due
}

/// Pending aggregates that have run past explain's `after_ms` and have not
/// been explained yet, marked as explained.
fn due_explains(tracker: &Tracker, after_ms: u64, now: Instant) -> Vec<(i32, RequestFacts)> {
    let mut due = Vec::new();
    tracker.for_each(|p| {
        let facts = p.facts();
        if !p.watch().explained() && facts.explain_body.is_some() && facts.age_ms(now) >= after_ms {
            p.watch().note_explained();
            due.push((p.request_id, facts.clone()));
        }
    });
    due
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::tracker::Pending;

    fn facts(started: Instant, explain: bool) -> RequestFacts {
        let mut facts = RequestFacts::for_test("aggregate", started);
        facts.explain_body = explain.then(|| Arc::new(bson::rawdoc! { "aggregate": "coll" }));
        facts
    }

    /// Reports come at stall_ms, 2×, 4×...; the count is the watchdog's,
    /// stays with the entry when a moreToCome reply moves it, and is what
    /// the session reads once the entry is out of the table.
    #[test]
    fn stall_reports_double_and_follow_the_entry() {
        let tracker = Tracker::default();
        let table = tracker.register(1);
        let t0 = Instant::now();
        table.insert(Pending::new(7, facts(t0, false)));
        let at = |ms| t0 + Duration::from_millis(ms);
        let reports = |now| -> Vec<(i32, u32)> {
            due_stalls(&tracker, now, 100)
                .into_iter()
                .map(|(id, _, n)| (id, n))
                .collect()
        };
        assert!(reports(at(99)).is_empty());
        assert_eq!(reports(at(100)), [(7, 1)]);
        assert!(
            reports(at(199)).is_empty(),
            "the second report waits for 2×"
        );
        // A moreToCome reply moves the command to the reply's requestID.
        let mut moved = table.remove(7).expect("pending");
        moved.request_id = 8;
        table.insert(moved);
        assert_eq!(reports(at(200)), [(8, 2)]);
        assert!(reports(at(399)).is_empty());
        assert_eq!(reports(at(400)), [(8, 3)]);
        let done = table.remove(8).expect("pending");
        assert_eq!(done.watch().stall_reports(), 3);
    }

    /// A command is explained by the watchdog once, and the session sees
    /// that it was.
    #[test]
    fn an_aggregate_is_marked_explained_once() {
        let tracker = Tracker::default();
        let table = tracker.register(1);
        let t0 = Instant::now();
        table.insert(Pending::new(1, facts(t0, true)));
        table.insert(Pending::new(2, facts(t0, false)));
        let due = |ms| -> Vec<i32> {
            due_explains(&tracker, 50, t0 + Duration::from_millis(ms))
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        assert!(due(49).is_empty());
        assert_eq!(due(50), [1], "only the one with a body to explain");
        assert!(due(5_000).is_empty());
        assert!(table.remove(1).expect("pending").watch().explained());
        assert!(!table.remove(2).expect("pending").watch().explained());
    }
}
