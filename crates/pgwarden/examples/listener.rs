//! A LISTEN/NOTIFY listener: prints every notification on the given channels, and each
//! reconnect with the gap during which notifications were lost.
//!
//! ```text
//! DATABASE_URL=postgres://app@localhost/app cargo run -p pgwarden --example listener -- orders jobs
//! ```
//!
//! Without `DATABASE_URL` it starts a throwaway PostgreSQL server. It sends itself one
//! notification to show the round trip, then prints until a notification with the payload
//! `stop` arrives (`SELECT pg_notify('orders', 'stop')` from psql) — or, against a
//! throwaway server, stops right after its own notification. Kill the listener's backend
//! (`SELECT pg_terminate_backend(<pid it printed>)`) to watch it reconnect.

use futures_util::StreamExt;
use pgwarden::listen::ListenerEvent;
use pgwarden::{Config, PoolManager};

type AnyErr = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), AnyErr> {
    let mut channels: Vec<String> = std::env::args().skip(1).collect();
    if channels.is_empty() {
        channels.push(String::from("orders"));
    }
    // Held for the whole run: a throwaway server stops when dropped.
    let (_server, db, throwaway) = match std::env::var("DATABASE_URL") {
        Ok(_) => (None, PoolManager::from_env().await?, false),
        Err(_) => {
            let server = pgwarden_testdb::PgServer::start()?;
            let url = server.url("postgres");
            let config = Config::from_vars([("DATABASE_URL", url.as_str()), ("DB_POOL_MIN", "1")])?;
            (Some(server), PoolManager::from_config(&config).await?, true)
        }
    };

    let mut listener = db.listener(channels.iter().cloned()).await?;
    println!(
        "listening on {channels:?} (backend pid {:?})",
        listener.backend_pid()
    );
    db.execute(
        "SELECT pg_notify($1, 'hello from the example')",
        &[&channels[0]],
    )
    .await?;

    while let Some(event) = listener.next().await {
        match event {
            ListenerEvent::Notification(n) => {
                println!("{}: {:?} (from pid {})", n.channel, n.payload, n.process_id);
                if n.payload == "stop" || throwaway {
                    break;
                }
            }
            ListenerEvent::Reconnected {
                gap,
                attempts,
                reason,
            } => println!(
                "reconnected after {gap:?} ({attempts} attempts; {reason}); notifications sent \
                 meanwhile are lost — now pid {:?}",
                listener.backend_pid()
            ),
            ListenerEvent::Lagged { missed } => {
                println!("fell behind: {missed} notifications dropped")
            }
            other => println!("{other:?}"),
        }
    }
    drop(listener);
    db.close(std::time::Duration::from_secs(1)).await;
    Ok(())
}
