//! The pool's side of the application's acquire check: bounded by the acquire deadline, a
//! connection whose check fails, panics or hangs is closed, never handed out or leaked.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::time::Instant;

use super::counters::CloseReason;
use super::{Connector, Inner, PooledConnection};

/// Runs the connector's acquire check; returns why the connection must be closed instead.
pub(super) async fn before_acquire<C: Connector>(
    inner: &Arc<Inner<C>>,
    guard: &mut PooledConnection<C>,
    deadline: Instant,
) -> Option<CloseReason> {
    // Cancellation safety: poisoned while the check runs, so an acquire dropped meanwhile
    // closes the connection (the check may have left it in any state) instead of returning it.
    guard.poisoned = Some(CloseReason::FailedValidation);
    let check =
        AssertUnwindSafe(async { inner.connector.before_acquire(&guard.slot().conn).await })
            .catch_unwind();
    let verdict = match Box::pin(tokio::time::timeout_at(deadline, check)).await {
        Ok(Ok(Ok(true))) => None,
        Ok(Ok(Ok(false))) => Some("refused it"),
        Ok(Ok(Err(_))) => Some("failed"),
        Ok(Err(_)) => Some("panicked"),
        Err(_) => Some("did not finish within the acquire timeout"),
    };
    match verdict {
        None => {
            guard.poisoned = None;
            None
        }
        Some(what) => {
            tracing::info!(pool = %inner.opts.name, "the before-acquire check {what}; closing the connection");
            Some(CloseReason::FailedValidation)
        }
    }
}
