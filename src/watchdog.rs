//! The watchdog: reports commands pending longer than stall_ms (again at
//! doubling intervals, a bounded number of times) and cursors idle longer
//! than cursor_idle_ms. It copies what it reports out of the tables first,
//! so logging never holds a lock the forwarding path needs.

use crate::events;
use crate::shared::Shared;
use crate::tracker::Pending;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A stalled command is reported at stall_ms, 2×, 4×, ... up to this many times.
pub const MAX_STALL_REPORTS: u32 = 6;

pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let stall_ms = shared.config.watch.stall_ms;
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
        for p in due_stalls(&shared, now, stall_ms) {
            shared.counters.stalled.fetch_add(1, Relaxed);
            events::stalled(&p, now);
        }
        if shared.explainer.enabled() {
            for p in due_explains(&shared, now) {
                shared
                    .explainer
                    .maybe_explain(&p, now.saturating_duration_since(p.started));
            }
        }
        if now.duration_since(last_cursor_sweep) >= Duration::from_secs(1) {
            last_cursor_sweep = now;
            let idle_ms = shared.config.watch.cursor_idle_ms;
            for (id, c) in shared.cursors.take_idle(idle_ms, now) {
                shared.counters.cursors_leaked.fetch_add(1, Relaxed);
                events::cursor_leaked(id, &c, now, "idle longer than cursor_idle_ms");
            }
        }
    }
}

/// Pending commands whose next stall report is due, with their report
/// count already advanced.
fn due_stalls(shared: &Shared, now: Instant, stall_ms: u64) -> Vec<Pending> {
    let mut due = Vec::new();
    shared.tracker.for_each_mut(|p| {
        if p.awaiting || p.stall_reports >= MAX_STALL_REPORTS {
            return;
        }
        let threshold = stall_ms.saturating_mul(1 << p.stall_reports);
        if p.age_ms(now) >= threshold {
            p.stall_reports += 1;
            due.push(p.clone());
        }
    });
    due
}

/// Pending aggregates that have run past explain's `after_ms` and have not
/// been explained yet, marked as explained.
fn due_explains(shared: &Shared, now: Instant) -> Vec<Pending> {
    let after_ms = shared.config.explain.after_ms;
    let mut due = Vec::new();
    shared.tracker.for_each_mut(|p| {
        if !p.explained && p.explain_body.is_some() && p.age_ms(now) >= after_ms {
            p.explained = true;
            due.push(p.clone());
        }
    });
    due
}
