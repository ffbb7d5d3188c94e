//! The confirmed cancel: a CancelRequest that returns only once the server has acted on it, so
//! it cannot hit a statement sent afterwards; and the kill switch built on a plain cancel.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::CancelToken;

use super::PgConn;
use crate::pool::KillSwitch;
use crate::tls::MakeRustls;

/// Where to send a CancelRequest for a connection: the host it was opened to.
#[derive(Debug, Clone)]
pub(crate) enum CancelTarget {
    Tcp { host: String, port: u16 },
    Unix { path: std::path::PathBuf },
}

/// A stream whose shutdown waits for the peer to close first: used for CancelRequests, so that
/// "sent" means "the server has acted on it". It never half-closes before that: PgBouncer drops
/// a cancel request whose client has closed its side before the request was forwarded (which
/// tokio-postgres's own `cancel_query`, writing then shutting down, always does).
struct UntilEof<S> {
    inner: S,
    peer_closed: bool,
}

impl<S> UntilEof<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            peer_closed: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for UntilEof<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for UntilEof<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut scratch = [0u8; 256];
        while !self.peer_closed {
            let mut rb = ReadBuf::new(&mut scratch);
            match std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb)) {
                Ok(()) if rb.filled().is_empty() => self.peer_closed = true,
                Ok(()) => {}
                // A reset after the server closed is as good as a close.
                Err(_) => self.peer_closed = true,
            }
        }
        // The peer is gone: our side's close can only fail harmlessly.
        let _ = std::task::ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
        Poll::Ready(Ok(()))
    }
}

/// After a timeout: the bound on a confirmed cancel, then on the cancelled statement ending.
pub(super) const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// What a CancelRequest for one connection needs: its key, where to send it, and the TLS
/// connector. Shared by the connection and its open transaction.
#[derive(Clone)]
pub(super) struct Canceller {
    pub(super) token: CancelToken,
    pub(super) target: CancelTarget,
    pub(super) tls: MakeRustls,
}

impl Canceller {
    /// See [`PgConn::cancel_confirmed`].
    pub(super) async fn confirmed(&self) -> std::io::Result<()> {
        let sent = match &self.target {
            CancelTarget::Tcp { host, port } => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                let tls = <MakeRustls as MakeTlsConnect<UntilEof<tokio::net::TcpStream>>>::make_tls_connect(
                    &mut self.tls.clone(),
                    host,
                )?;
                self.token
                    .cancel_query_raw(UntilEof::new(stream), tls)
                    .await
            }
            CancelTarget::Unix { path } => {
                let stream = tokio::net::UnixStream::connect(path).await?;
                self.token
                    .cancel_query_raw(UntilEof::new(stream), tokio_postgres::NoTls)
                    .await
            }
        };
        sent.map_err(std::io::Error::other)
    }
}

impl PgConn {
    /// Cancels the running statement and closes the socket, even while someone holds the
    /// connection.
    pub(crate) fn kill_switch(&self) -> KillSwitch {
        let cancel = self.cancel.clone();
        let driver = self.driver.clone();
        KillSwitch::new(move || match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    // Confirmed, not tokio-postgres's plain cancel: that one half-closes at
                    // once, and PgBouncer then drops the request.
                    let _ = tokio::time::timeout(CANCEL_GRACE, cancel.confirmed()).await;
                    driver.abort();
                });
            }
            Err(_) => driver.abort(),
        })
    }

    /// Cancels the statement running on this connection and returns only once the server has
    /// acted on the request: PostgreSQL signals the backend, then closes the cancel connection,
    /// and this waits for that close (tokio-postgres's own `cancel_query` returns as soon as the
    /// request is written). So the cancel lands on the statement running now or — if that one
    /// already ended — is ignored while the backend waits for its next command; it cannot hit a
    /// statement sent after this returns.
    ///
    /// # Errors
    /// When the cancel connection cannot be made or the request not sent.
    pub async fn cancel_confirmed(&self) -> std::io::Result<()> {
        self.cancel.confirmed().await
    }

    /// [`PgConn::cancel_confirmed`] as a future that owns what it needs, for a stream that
    /// must store it between polls.
    pub(crate) fn cancel_confirmed_owned(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send + 'static {
        let cancel = self.cancel.clone();
        async move { cancel.confirmed().await }
    }
}
