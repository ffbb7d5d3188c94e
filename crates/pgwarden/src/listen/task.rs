//! The listener's machinery: the tap its connection's driver feeds, opening a connection that
//! listens, and the task that reconnects.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::{statement, Generation, ListenError, ListenerEvent, Notification, Shared, BUFFER};
use crate::conn::PgConn;
use crate::{PgConnector, Pool};

/// Where a listener connection's driver puts what it reads: notifications into a bounded
/// buffer (dropped and counted when full, so the driver never stops reading the socket), and
/// its end.
#[derive(Clone)]
pub(crate) struct Tap {
    notes: mpsc::Sender<Notification>,
    missed: Arc<AtomicU64>,
    end: Arc<End>,
}

/// The end of a listener's connection: why, and a wake-up for the supervising task.
#[derive(Default)]
pub(super) struct End {
    notify: Notify,
    /// Lock rule: held only to set or take the reason.
    reason: Mutex<Option<String>>,
}

impl Tap {
    pub(crate) fn deliver(&self, n: tokio_postgres::Notification) {
        let n = Notification {
            channel: n.channel().to_owned(),
            payload: n.payload().to_owned(),
            process_id: n.process_id(),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.notes.try_send(n) {
            self.missed.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn ended(&self, reason: String) {
        *self.end.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.end.notify.notify_one();
    }
}

/// Opens a connection, listens on every channel of `shared` and installs it as the current
/// one. The state lock is held from the `LISTEN` to the install, so a concurrent
/// [`super::Listener::listen`] lands either in this `LISTEN` or on the new connection.
pub(super) async fn open(
    shared: &Shared,
    pool: &Pool<PgConnector>,
) -> Result<(Generation, Arc<End>), ListenError> {
    let (notes_tx, notes) = mpsc::channel(BUFFER);
    let missed = Arc::<AtomicU64>::default();
    let end = Arc::<End>::default();
    let tap = Tap {
        notes: notes_tx,
        missed: Arc::clone(&missed),
        end: Arc::clone(&end),
    };
    let conn = pool
        .connector()
        .connect_tapped(&tap)
        .await
        .map_err(ListenError::Connect)?;
    // Only the driver keeps a sender: when it ends, the buffer closes behind the last
    // notification, which tells the stream to move on to the next connection.
    drop(tap);
    let mut state = shared.state.lock().await;
    if !state.channels.is_empty() {
        let sql = statement("LISTEN", state.channels.iter().map(String::as_str));
        bounded(shared, conn.client_marking_raw().batch_execute(&sql)).await?;
    }
    let pid: i32 = bounded(
        shared,
        conn.client_marking_raw()
            .query_one("SELECT pg_backend_pid()", &[]),
    )
    .await?
    .get(0);
    shared.pid.store(pid, Relaxed);
    state.conn = Some(Arc::new(conn));
    let gen = Generation {
        notes,
        missed,
        event: None,
    };
    Ok((gen, end))
}

/// Runs `LISTEN`/`UNLISTEN` on the current connection, if there is one. A connection lost
/// meanwhile is not an error: the reconnect listens on the channels as they are then.
pub(super) async fn run_on(
    shared: &Shared,
    conn: Option<&PgConn>,
    sql: &str,
) -> Result<(), ListenError> {
    let Some(conn) = conn else { return Ok(()) };
    match bounded(shared, conn.client_marking_raw().batch_execute(sql)).await {
        Err(ListenError::Listen(_)) if conn.is_closed() => Ok(()),
        r => r,
    }
}

/// Awaits a statement on the listener's connection under the query timeout.
async fn bounded<T>(
    shared: &Shared,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, ListenError> {
    match tokio::time::timeout(shared.query_timeout, fut).await {
        Ok(r) => r.map_err(ListenError::Listen),
        Err(_) => Err(ListenError::Timeout(shared.query_timeout)),
    }
}

/// The delay before connect attempt `n` (1-based) after a loss: at once, then 100 ms doubling
/// to 10 s, each with up to 25% jitter so listeners of a restarted server do not reconnect in
/// step.
fn backoff(n: u32) -> Duration {
    if n <= 1 {
        return Duration::ZERO;
    }
    let ms = 100u64.saturating_mul(1 << (n - 2).min(7)).min(10_000);
    Duration::from_millis(ms - rand::random_range(0..=ms / 4))
}

/// Waits for the current connection to end, reconnects, and hands the new connection's
/// notifications to the stream, announced by [`ListenerEvent::Reconnected`]. Runs until the
/// [`super::Listener`] is dropped (which aborts it).
pub(super) async fn supervise(
    shared: Arc<Shared>,
    pool: Pool<PgConnector>,
    gens: mpsc::Sender<Generation>,
    mut end: Arc<End>,
) {
    loop {
        let Some(conn) = shared.state.lock().await.conn.clone() else {
            return;
        };
        // A failed connect attempt's driver also signals: only the current connection's
        // close counts.
        while !conn.is_closed() {
            end.notify.notified().await;
        }
        let lost = Instant::now();
        let reason = end
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| String::from("the connection was closed"));
        tracing::warn!(reason = %reason, "listener connection lost; reconnecting (notifications sent meanwhile are lost)");
        shared.pid.store(0, Relaxed);
        shared.state.lock().await.conn = None;
        drop(conn);
        let mut attempts = 0;
        let (mut gen, next_end) = loop {
            attempts += 1;
            tokio::time::sleep(backoff(attempts)).await;
            match open(&shared, &pool).await {
                Ok(opened) => break opened,
                Err(e) => tracing::debug!(error = %e, attempts, "listener reconnect failed"),
            }
        };
        end = next_end;
        gen.event = Some(ListenerEvent::Reconnected {
            gap: lost.elapsed(),
            attempts,
            reason,
        });
        if gens.send(gen).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_starts_at_once_then_doubles_to_ten_seconds() {
        assert_eq!(backoff(1), Duration::ZERO);
        let d2 = backoff(2);
        assert!(d2 >= Duration::from_millis(75) && d2 <= Duration::from_millis(100));
        let d3 = backoff(3);
        assert!(d3 >= Duration::from_millis(150) && d3 <= Duration::from_millis(200));
        for n in 9..40 {
            let d = backoff(n);
            assert!(d >= Duration::from_millis(7_500) && d <= Duration::from_secs(10));
        }
    }
}
