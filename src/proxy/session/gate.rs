//! A future that is polled only after it asked to be woken.
//!
//! `tokio::select!` polls every branch each time its task wakes. A session
//! task wakes for every frame, while its control branches (the shutdown
//! tokens, the flush timer) almost never have anything to say. Polling them
//! anyway took a mutex per token and re-registered the timer's waker on
//! every frame, about 1 % of mongotap's CPU per request in `perf`. Behind a
//! gate, a frame costs one atomic swap; the inner future is polled when one
//! of its own wakers fired.

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

pub struct Gated<F> {
    inner: Pin<Box<F>>,
    signal: Arc<Signal>,
    /// The waker handed to `inner`: it raises the flag, then wakes the task.
    waker: Waker,
    /// The task waker last registered, to notice a different task.
    task: Option<Waker>,
}

struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

pub fn gated<F: Future>(inner: F) -> Gated<F> {
    let signal = Arc::new(Signal {
        woken: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    Gated {
        inner: Box::pin(inner),
        waker: Waker::from(signal.clone()),
        signal,
        task: None,
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let same_task = this.task.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        // Not woken since the last poll: the registered task waker is still
        // in place (a wake takes it), so there is nothing to do.
        if same_task && !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        if !same_task {
            this.task = Some(cx.waker().clone());
            this.signal.woken.store(false, Ordering::Release);
        }
        // Register before polling, so a wake during the poll is not lost.
        this.signal.task.register(cx.waker());
        this.inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_gated_timer_still_fires() {
        let started = tokio::time::Instant::now();
        gated(tokio::time::sleep(Duration::from_millis(50))).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_gated_token_sees_a_cancel_from_another_task() {
        let token = tokio_util::sync::CancellationToken::new();
        let child = token.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            child.cancel();
        });
        let waited = tokio::time::timeout(Duration::from_secs(5), gated(token.cancelled())).await;
        assert!(waited.is_ok(), "the gate missed the wakeup");
    }

    /// Polled by a select that wakes for other reasons, the gate does not
    /// poll its inner future, and still completes when that one fires.
    #[tokio::test]
    async fn other_wakeups_do_not_poll_the_inner_future() {
        use std::sync::atomic::AtomicUsize;
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = {
            let polls = polls.clone();
            let mut sleep = Box::pin(tokio::time::sleep(Duration::from_millis(200)));
            std::future::poll_fn(move |cx| {
                polls.fetch_add(1, Ordering::Relaxed);
                sleep.as_mut().poll(cx)
            })
        };
        let mut gate = gated(counted);
        let mut ticks = 0;
        loop {
            // Cancel-safe: `gate` is polled by reference and survives the
            // sleep branch winning; a fresh sleep each round is the point.
            tokio::select! {
                _ = &mut gate => break,
                _ = tokio::time::sleep(Duration::from_millis(5)) => ticks += 1,
            }
        }
        assert!(ticks >= 10, "the other branch woke the task {ticks} times");
        let polls = polls.load(Ordering::Relaxed);
        assert!(polls <= 3, "the inner future was polled {polls} times");
    }
}
