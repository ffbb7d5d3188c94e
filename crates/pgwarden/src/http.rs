//! The `/metrics`, `/health` and `/status` endpoints (cargo feature `http`).
//!
//! - `GET /metrics`: the Prometheus text ([`PoolManager::prometheus`]).
//! - `GET /health`: 200 when the grade is good or warning, 503 when critical; a JSON body with
//!   the grade, the figure that drove it, the windowed figures and each figure's grade
//!   (`health.*` of [`PoolManager::metrics`]).
//! - `GET /status`: the status text block ([`PoolManager::status`]).
//!
//! Mount [`router`] in the application's own axum server, or start [`serve`] on a port of its
//! own.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::health::Grade;
use crate::PoolManager;

/// The three endpoints as an axum [`Router`], ready to merge into an application's router
/// (`app.merge(pgwarden::http::router(db.clone()))`) or to nest under a prefix.
pub fn router(db: PoolManager) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/status", get(status))
        .with_state(db)
}

async fn metrics(State(db): State<PoolManager>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            crate::metrics::PROMETHEUS_CONTENT_TYPE,
        )],
        db.prometheus(),
    )
        .into_response()
}

async fn health(State(db): State<PoolManager>) -> Response {
    let h = db.metrics().health;
    let code = match h.grade {
        Grade::Good | Grade::Warning => StatusCode::OK,
        Grade::Critical => StatusCode::SERVICE_UNAVAILABLE,
    };
    // Serializing plain figures cannot fail; keep a body anyway if it ever did.
    let body = serde_json::to_string(&h)
        .unwrap_or_else(|_| format!(r#"{{"grade":"{}"}}"#, h.grade.label().to_ascii_lowercase()));
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn status(State(db): State<PoolManager>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        db.status(),
    )
        .into_response()
}

/// The endpoints served on a port of their own, started by [`serve`]. Dropping the handle
/// stops the server too (without waiting); [`Server::stop`] waits for it.
#[derive(Debug)]
#[must_use = "dropping the handle stops the server"]
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl Server {
    /// The address the server listens on (the real port when `serve` was given port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in progress finish, and waits for the server to end.
    ///
    /// # Errors
    /// The server's I/O error, if it failed while running.
    pub async fn stop(mut self) -> io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves [`router`] on `addr` (e.g. `0.0.0.0:9187`, or port 0 for any free port) in a task of
/// its own. Must be called inside a Tokio runtime.
///
/// # Errors
/// When `addr` cannot be bound.
pub async fn serve(db: PoolManager, addr: SocketAddr) -> io::Result<Server> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let task = tokio::spawn(run(listener, router(db), shutdown));
    tracing::info!(%addr, "serving /metrics, /health and /status");
    Ok(Server {
        addr,
        stop: Some(tx),
        task: Some(task),
    })
}

async fn run(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
