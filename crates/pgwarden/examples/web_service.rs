//! A web service on axum: its own routes use the pool, and pgwarden's `/metrics`, `/health`
//! and `/status` are mounted beside them (the `http` feature).
//!
//! ```text
//! DATABASE_URL=postgres://app:secret@localhost/app cargo run -p pgwarden --example web_service
//! curl -X POST localhost:3000/visits; curl localhost:3000/visits; curl localhost:3000/status
//! ```
//!
//! `LISTEN_ADDR` sets the address (default 127.0.0.1:3000).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use pgwarden::PoolManager;

/// An error answer: the status code says what the client may do next.
fn answer(e: &pgwarden::Error) -> (StatusCode, String) {
    let code = if e.outcome_unknown() {
        // The write may have committed: the client must not blindly resend it.
        StatusCode::INTERNAL_SERVER_ERROR
    } else if e.is_timeout() {
        StatusCode::GATEWAY_TIMEOUT
    } else if e.is_retryable() {
        // A restart, a full pool: the client may try again shortly.
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    // The full error (it never holds a password) goes to the log, not to the client.
    tracing::warn!(error = %e, "request failed");
    (
        code,
        format!("{}\n", code.canonical_reason().unwrap_or("error")),
    )
}

/// `POST /visits`: a write, so it is not retried once it may have run.
async fn record_visit(State(db): State<PoolManager>) -> Result<String, (StatusCode, String)> {
    let row = db
        .query_one("INSERT INTO visits DEFAULT VALUES RETURNING id", &[])
        .await
        .map_err(|e| answer(&e))?;
    Ok(format!("visit {}\n", row.get::<_, i64>(0)))
}

/// `GET /visits`: a read, marked idempotent so a lost connection is retried.
async fn count_visits(State(db): State<PoolManager>) -> Result<String, (StatusCode, String)> {
    let row = db
        .query_one("SELECT count(*) FROM visits", &[])
        .idempotent()
        .await
        .map_err(|e| answer(&e))?;
    Ok(format!("{} visits\n", row.get::<_, i64>(0)))
}

/// The service's routes plus pgwarden's three.
pub(crate) fn app(db: PoolManager) -> Router {
    Router::new()
        .route("/visits", get(count_visits).post(record_visit))
        .with_state(db.clone())
        .merge(pgwarden::http::router(db))
}

/// The service's one table.
pub(crate) async fn setup(db: &PoolManager) -> Result<(), pgwarden::Error> {
    db.execute(
        "CREATE TABLE IF NOT EXISTS visits (id int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         at timestamptz NOT NULL DEFAULT now())",
        &[],
    )
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    // DATABASE_URL, DB_POOL_MAX, … over the profile's defaults (DB_PROFILE or APP_ENV);
    // every problem is reported at once, and the pool is prewarmed before the port opens.
    let db = PoolManager::from_env().await?;
    setup(&db).await?;
    let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(%addr, "serving /visits, /metrics, /health and /status");
    axum::serve(listener, app(db)).await?;
    Ok(())
}
