//! How a session ended, and the one log line that says so.

use crate::observe::{ConnId, Ending};
use crate::proxy::error::{SessionError, Side};
use crate::shared::Shared;
use tracing::{debug, info, warn};

/// How a session ended.
pub enum End {
    /// That side closed its connection cleanly.
    Closed(Side),
    Failed(SessionError),
    Shutdown,
}

impl End {
    pub(super) fn new(side: Side, r: Result<(), SessionError>) -> End {
        match r {
            Ok(()) => End::Closed(side),
            Err(e) => End::Failed(e),
        }
    }

    /// What the connection's pending commands need to know of this end.
    pub(super) fn ending(&self) -> Ending {
        Ending {
            client_went_first: matches!(
                self,
                End::Closed(Side::Client)
                    | End::Failed(SessionError::Decode {
                        side: Side::Client,
                        ..
                    })
                    | End::Failed(SessionError::Io {
                        side: Side::Client,
                        ..
                    })
            ),
            reason: match self {
                // A client that closed first made its commands abandoned,
                // so a clean close seen here is the upstream's.
                End::Closed(_) => "upstream closed the connection".to_string(),
                End::Failed(e) => e.to_string(),
                End::Shutdown => "mongotap shut down".to_string(),
            },
        }
    }

    /// Many clients reset the connection as they exit (SO_LINGER 0, or a
    /// process ending with unread bytes in its socket) instead of closing
    /// it. With no command `waiting` that is an ordinary close, returned
    /// with `true` (a reset); with a command pending it stays a failure,
    /// and the command is reported as abandoned.
    pub(super) fn settle(self, waiting: usize) -> (End, bool) {
        match self {
            End::Failed(SessionError::Io {
                side: Side::Client,
                ref source,
            }) if is_reset(source) && waiting == 0 => (End::Closed(Side::Client), true),
            other => (other, false),
        }
    }
}

/// Logs how a session ended. `close` says what kind of end it was:
/// `normal` (a side closed, or the client reset with nothing pending:
/// `reset`), `shutdown` or `failed`.
pub(super) fn report_end(shared: &Shared, id: &ConnId, end: &End, reset: bool) {
    match end {
        End::Closed(side) => {
            debug!(conn = id.conn, client = %id.client, closed_by = %side, close = "normal", reset, "connection closed")
        }
        End::Shutdown => {
            debug!(conn = id.conn, client = %id.client, close = "shutdown", "connection closed for shutdown")
        }
        // Malformed or abusive input from either side: one event, one counter.
        End::Failed(
            e @ (SessionError::FrameTimeout { side, .. } | SessionError::Decode { side, .. }),
        ) => {
            shared
                .observe
                .counters
                .decode_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let reason = match e {
                SessionError::Decode { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            warn!(
                event = "decode_error",
                conn = id.conn,
                client = %id.client,
                side = %side,
                reason = %reason,
                "closing connection: {side} sent a malformed frame: {reason}"
            );
        }
        End::Failed(e) => {
            info!(conn = id.conn, client = %id.client, error = %e, close = "failed", "connection failed")
        }
    }
}

/// The peer reset the connection, rather than anything going wrong here.
fn is_reset(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e.kind(), ConnectionReset | BrokenPipe | ConnectionAborted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    fn io(side: Side, kind: ErrorKind) -> End {
        End::Failed(SessionError::Io {
            side,
            source: Error::from(kind),
        })
    }

    fn describe((end, reset): (End, bool)) -> (&'static str, bool) {
        let what = match end {
            End::Closed(Side::Client) => "closed by client",
            End::Closed(Side::Upstream) => "closed by upstream",
            End::Failed(_) => "failed",
            End::Shutdown => "shutdown",
        };
        (what, reset)
    }

    /// A client reset with nothing pending is a close; with a command
    /// pending, or from the upstream, or another error, it is not.
    #[test]
    fn a_client_reset_with_nothing_waiting_is_a_normal_close() {
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::BrokenPipe,
            ErrorKind::ConnectionAborted,
        ] {
            assert_eq!(
                describe(io(Side::Client, kind).settle(0)),
                ("closed by client", true)
            );
            assert_eq!(
                describe(io(Side::Client, kind).settle(1)),
                ("failed", false)
            );
            assert_eq!(
                describe(io(Side::Upstream, kind).settle(0)),
                ("failed", false)
            );
        }
        assert_eq!(
            describe(io(Side::Client, ErrorKind::TimedOut).settle(0)),
            ("failed", false)
        );
        assert_eq!(
            describe(End::Closed(Side::Client).settle(0)),
            ("closed by client", false)
        );
    }
}
