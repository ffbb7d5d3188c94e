//! LISTEN/NOTIFY: a [`Listener`] on a dedicated connection that yields notifications as a
//! [`Stream`], reconnects on its own, and says when it did.
//!
//! A listener's connection is not one of the pool's: a session that LISTENs must stay open and
//! be read between statements, which a pooled connection (reset, reused, closed when idle)
//! cannot promise. It is opened by the pool's connector, so it gets the same hosts, TLS,
//! `application_name`, connect hooks and secret redaction as every other connection.
//!
//! # What is lost, and when
//! - **While disconnected.** PostgreSQL delivers a notification only to sessions listening at
//!   the moment it commits. Between losing the connection and the re-`LISTEN` on the new one,
//!   notifications are lost, and no one can recover them. Each reconnect yields
//!   [`ListenerEvent::Reconnected`] with the length of that gap: re-read whatever state the
//!   notifications stand for.
//! - **When the consumer is slow.** Each connection buffers [`BUFFER`] notifications. When the
//!   buffer is full, newer notifications are dropped (the connection keeps being read, so
//!   `listen`/`unlisten` and the server never stall) and counted; the stream then yields
//!   [`ListenerEvent::Lagged`] with the count before the next notification.

mod task;

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::mpsc;

use crate::conn::PgConn;
use crate::pool::ConnectError;
use crate::{PgConnector, Pool, PoolManager};

pub(crate) use task::Tap;

/// Notifications buffered per connection before newer ones are dropped (and counted in
/// [`ListenerEvent::Lagged`]).
pub const BUFFER: usize = 1024;

/// One notification, as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Notification {
    /// The channel it was sent on.
    pub channel: String,
    /// Its payload (empty when none was given).
    pub payload: String,
    /// The process id of the server backend that sent it.
    pub process_id: i32,
}

/// What a [`Listener`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerEvent {
    /// A notification on one of the channels.
    Notification(Notification),
    /// The connection was lost and a new one is listening on every channel again. Any
    /// notification sent during `gap` was lost: re-read what the notifications stand for.
    Reconnected {
        /// From noticing the loss to listening again on the new connection.
        gap: Duration,
        /// Connect attempts it took.
        attempts: u32,
        /// Why the previous connection ended.
        reason: String,
    },
    /// The consumer fell behind: `missed` notifications were dropped because the buffer
    /// ([`BUFFER`]) was full.
    Lagged {
        /// Notifications dropped since the previous event.
        missed: u64,
    },
}

/// Why a listener could not start, or could not change its channels.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// The listener's connection could not be opened.
    #[error("opening the listener's connection: {0}")]
    Connect(ConnectError),
    /// `LISTEN` or `UNLISTEN` failed on the server.
    #[error("LISTEN failed: {0}")]
    Listen(tokio_postgres::Error),
    /// `LISTEN` or `UNLISTEN` did not answer within the query timeout; the connection was
    /// closed (the listener reconnects).
    #[error("LISTEN did not answer within {}ms (DB_QUERY_TIMEOUT)", .0.as_millis())]
    Timeout(Duration),
    /// A channel name PostgreSQL cannot take: empty, longer than 63 bytes, or with a NUL.
    #[error("invalid channel name {0:?}: it must be 1 to 63 bytes without NUL")]
    InvalidChannel(String),
}

/// State shared by the [`Listener`] and its supervising task.
struct Shared {
    /// Lock rule: held across `LISTEN`/`UNLISTEN` and while a new connection re-listens, so a
    /// channel added during a reconnect is never missed; never held while waiting to connect.
    state: tokio::sync::Mutex<State>,
    /// The backend of the current connection; 0 while disconnected.
    pid: AtomicI32,
    query_timeout: Duration,
}

struct State {
    channels: BTreeSet<String>,
    conn: Option<Arc<PgConn>>,
}

/// The notifications of one connection, and the event that announces it.
struct Generation {
    notes: mpsc::Receiver<Notification>,
    missed: Arc<AtomicU64>,
    event: Option<ListenerEvent>,
}

/// A stream of [`ListenerEvent`]s from a dedicated connection that `LISTEN`s on a set of
/// channels; see the [module docs](self) for what can be lost. Made by
/// [`PoolManager::listener`].
///
/// After the connection is lost it reconnects with backoff (100 ms doubling to 10 s, with
/// jitter), re-`LISTEN`s on every channel and yields [`ListenerEvent::Reconnected`]; it keeps
/// trying for as long as the listener lives. Dropping the listener closes its connection; it is
/// independent of the pool ([`PoolManager::close`] does not close it). A half-open connection (a host gone without closing
/// the socket) is noticed by TCP keepalive (about a minute).
///
/// Channel names are taken literally, as `pg_notify`'s first argument (they are quoted as
/// identifiers, so `"Orders"` and `"orders"` differ, and no name can inject SQL).
#[must_use = "a listener does nothing unless its stream is polled"]
pub struct Listener {
    gens: mpsc::Receiver<Generation>,
    current: Option<Generation>,
    held: Option<Notification>,
    shared: Arc<Shared>,
    task: tokio::task::AbortHandle,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("backend_pid", &self.backend_pid())
            .finish_non_exhaustive()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // The task holds the connection; aborting it closes it.
        self.task.abort();
    }
}

impl PoolManager {
    /// A [`Listener`] on `channels`, on its own connection to the primary target (opened by
    /// the primary pool's connector, outside the pool). Returns once every channel is
    /// listened to.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = pgwarden_testdb::PgServer::shared()?;
    /// # let url = server.url("postgres");
    /// # let config = pgwarden::Config::from_vars([("DATABASE_URL", url.as_str()), ("DB_POOL_MIN", "0")])?;
    /// # let db = pgwarden::PoolManager::from_config(&config).await?;
    /// use futures_util::StreamExt;
    /// use pgwarden::listen::ListenerEvent;
    ///
    /// let mut listener = db.listener(["orders"]).await?;
    /// db.execute("SELECT pg_notify('orders', 'order 17 paid')", &[]).await?;
    /// match listener.next().await {
    ///     Some(ListenerEvent::Notification(n)) => {
    ///         assert_eq!((n.channel.as_str(), n.payload.as_str()), ("orders", "order 17 paid"));
    ///     }
    ///     // Notifications sent while it was reconnecting are lost: re-read the state.
    ///     Some(ListenerEvent::Reconnected { gap, .. }) => println!("reconnected after {gap:?}"),
    ///     other => println!("{other:?}"),
    /// }
    /// # drop(listener);
    /// # db.close(std::time::Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`ListenError::InvalidChannel`] for a name PostgreSQL cannot take;
    /// [`ListenError::Connect`] when the connection cannot be opened; [`ListenError::Listen`]
    /// or [`ListenError::Timeout`] when `LISTEN` fails.
    pub async fn listener<I, S>(&self, channels: I) -> Result<Listener, ListenError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Listener::open(self.pool().clone(), channels, self.options().query_timeout).await
    }
}

impl Listener {
    /// A listener on `pool`'s target, each `LISTEN` bounded by `query_timeout`. (Usually
    /// through [`PoolManager::listener`].)
    ///
    /// # Errors
    /// As [`PoolManager::listener`].
    pub async fn open<I, S>(
        pool: Pool<PgConnector>,
        channels: I,
        query_timeout: Duration,
    ) -> Result<Self, ListenError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let channels = channels
            .into_iter()
            .map(|c| checked(c.into()))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let shared = Arc::new(Shared {
            state: tokio::sync::Mutex::new(State {
                channels,
                conn: None,
            }),
            pid: AtomicI32::new(0),
            query_timeout,
        });
        let (first, end) = task::open(&shared, &pool).await?;
        // Bounded: a consumer that stops reading while the connection flaps holds up the
        // reconnects (each one's notifications wait in its own buffer).
        let (gens_tx, gens) = mpsc::channel(4);
        let task = tokio::spawn(task::supervise(Arc::clone(&shared), pool, gens_tx, end));
        Ok(Self {
            gens,
            current: Some(first),
            held: None,
            shared,
            task: task.abort_handle(),
        })
    }

    /// The process id of the server backend listening now (`None` while reconnecting): the
    /// `pid` in `pg_stat_activity`.
    pub fn backend_pid(&self) -> Option<i32> {
        match self.shared.pid.load(Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// The channels listened to (also after each reconnect).
    pub async fn channels(&self) -> Vec<String> {
        let state = self.shared.state.lock().await;
        state.channels.iter().cloned().collect()
    }

    /// Listens on one more channel (on the current connection now, and after every
    /// reconnect). While disconnected, the channel is taken up by the reconnect.
    ///
    /// # Errors
    /// As [`PoolManager::listener`], except connecting.
    pub async fn listen(&self, channel: impl Into<String>) -> Result<(), ListenError> {
        let channel = checked(channel.into())?;
        let mut state = self.shared.state.lock().await;
        if !state.channels.insert(channel.clone()) {
            return Ok(());
        }
        let sql = statement("LISTEN", [channel.as_str()]);
        match task::run_on(&self.shared, state.conn.as_deref(), &sql).await {
            Err(e) => {
                state.channels.remove(&channel);
                Err(e)
            }
            Ok(()) => Ok(()),
        }
    }

    /// Stops listening on a channel. Notifications already buffered are still yielded.
    ///
    /// # Errors
    /// As [`Listener::listen`].
    pub async fn unlisten(&self, channel: &str) -> Result<(), ListenError> {
        let mut state = self.shared.state.lock().await;
        if !state.channels.remove(channel) {
            return Ok(());
        }
        let sql = statement("UNLISTEN", [channel]);
        task::run_on(&self.shared, state.conn.as_deref(), &sql).await
    }
}

impl Stream for Listener {
    type Item = ListenerEvent;

    /// Ends only if the supervising task stopped (it does not on its own).
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ListenerEvent>> {
        let this = &mut *self;
        loop {
            if let Some(n) = this.held.take() {
                return Poll::Ready(Some(ListenerEvent::Notification(n)));
            }
            if let Some(gen) = &mut this.current {
                if let Some(event) = gen.event.take() {
                    return Poll::Ready(Some(event));
                }
                // A new connection comes only after this one's driver ended, which closes
                // its buffer: everything it received is yielded before the reconnect.
                match gen.notes.poll_recv(cx) {
                    Poll::Ready(Some(n)) => {
                        let missed = gen.missed.swap(0, Relaxed);
                        if missed == 0 {
                            return Poll::Ready(Some(ListenerEvent::Notification(n)));
                        }
                        this.held = Some(n);
                        return Poll::Ready(Some(ListenerEvent::Lagged { missed }));
                    }
                    Poll::Ready(None) => {
                        let missed = gen.missed.swap(0, Relaxed);
                        this.current = None;
                        if missed > 0 {
                            return Poll::Ready(Some(ListenerEvent::Lagged { missed }));
                        }
                    }
                    // Drained: report drops now rather than before some later notification.
                    Poll::Pending => {
                        let missed = gen.missed.swap(0, Relaxed);
                        if missed > 0 {
                            return Poll::Ready(Some(ListenerEvent::Lagged { missed }));
                        }
                        return Poll::Pending;
                    }
                }
            }
            match this.gens.poll_recv(cx) {
                Poll::Ready(Some(gen)) => this.current = Some(gen),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A channel name PostgreSQL accepts as an identifier (NAMEDATALEN is 64).
fn checked(channel: String) -> Result<String, ListenError> {
    if channel.is_empty() || channel.len() > 63 || channel.contains('\0') {
        return Err(ListenError::InvalidChannel(channel));
    }
    Ok(channel)
}

/// `LISTEN "a"; LISTEN "b"` with each name quoted as an identifier.
fn statement<'a>(verb: &str, channels: impl IntoIterator<Item = &'a str>) -> String {
    channels
        .into_iter()
        .map(|c| format!("{verb} \"{}\"", c.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_quoted_as_identifiers() {
        assert_eq!(
            statement("LISTEN", ["a", "Orders"]),
            r#"LISTEN "a"; LISTEN "Orders""#
        );
        assert_eq!(
            statement("LISTEN", [r#"x"; DROP TABLE t; --"#]),
            r#"LISTEN "x""; DROP TABLE t; --""#
        );
    }

    fn note(payload: &str) -> Notification {
        Notification {
            channel: "c".into(),
            payload: payload.into(),
            process_id: 1,
        }
    }

    fn generation(
        notes: &[&str],
        missed: u64,
        event: Option<ListenerEvent>,
    ) -> (Generation, mpsc::Sender<Notification>) {
        let (tx, rx) = mpsc::channel(BUFFER);
        for n in notes {
            tx.try_send(note(n)).unwrap();
        }
        let gen = Generation {
            notes: rx,
            missed: Arc::new(AtomicU64::new(missed)),
            event,
        };
        (gen, tx)
    }

    /// The old connection's notifications (and its drops) come before the reconnect event,
    /// and the new connection's after it.
    #[tokio::test]
    async fn events_keep_their_order_across_a_reconnect() {
        use futures_util::StreamExt;
        let (old, old_tx) = generation(&["1", "2"], 3, None);
        let reconnected = ListenerEvent::Reconnected {
            gap: Duration::from_millis(5),
            attempts: 1,
            reason: "killed".into(),
        };
        let (new, new_tx) = generation(&["3"], 0, Some(reconnected.clone()));
        let (gens_tx, gens) = mpsc::channel(4);
        gens_tx.try_send(new).unwrap();
        let task = tokio::spawn(std::future::pending::<()>());
        let mut listener = Listener {
            gens,
            current: Some(old),
            held: None,
            shared: Arc::new(Shared {
                state: tokio::sync::Mutex::new(State {
                    channels: BTreeSet::new(),
                    conn: None,
                }),
                pid: AtomicI32::new(0),
                query_timeout: Duration::from_secs(1),
            }),
            task: task.abort_handle(),
        };
        let n = |p: &str| ListenerEvent::Notification(note(p));
        assert_eq!(
            listener.next().await,
            Some(ListenerEvent::Lagged { missed: 3 })
        );
        assert_eq!(listener.next().await, Some(n("1")));
        assert_eq!(listener.next().await, Some(n("2")));
        // The old connection is still open: nothing more yet, and no reconnect.
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut listener).poll_next(&mut cx).is_pending());
        drop(old_tx);
        assert_eq!(listener.next().await, Some(reconnected));
        assert_eq!(listener.next().await, Some(n("3")));
        drop((new_tx, gens_tx));
        assert_eq!(listener.next().await, None);
    }

    #[test]
    fn listener_and_copy_handles_can_move_between_tasks() {
        fn send<T: Send>() {}
        send::<Listener>();
        send::<crate::CopyInSink>();
        send::<crate::CopyOutStream>();
    }

    #[test]
    fn names_postgres_cannot_take_are_refused() {
        assert!(checked(String::new()).is_err());
        assert!(checked("a\0b".into()).is_err());
        assert!(checked("x".repeat(64)).is_err());
        assert_eq!(checked("x".repeat(63)).unwrap().len(), 63);
    }
}
