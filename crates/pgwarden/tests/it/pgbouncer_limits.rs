//! What breaks or is refused behind PgBouncer 1.18 in transaction mode, each with the message a
//! user sees: the statement cache left on, session state, the `options` startup parameter,
//! LISTEN.

use std::time::Duration;

use pgwarden::Error;

use super::*;

/// A raw client through PgBouncer (not a pool's: it plays another application instance).
async fn raw_client(b: &PgBouncer, db: &str) -> tokio_postgres::Client {
    let (client, conn) = b
        .pg_config(db)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("raw client through PgBouncer");
    tokio::spawn(conn);
    client
}

/// With the statement cache on, a statement prepared on one server connection is executed on
/// another: PgBouncer hands a client whichever server connection is free at each transaction.
/// Here it is forced: another client holds server connection X while the pool prepares (and
/// caches) on Y; X is then released last, so the pool's next transaction gets X, where the
/// cached statement does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_statement_cache_left_on_fails_with_26000_behind_pgbouncer() {
    let (b, db) = bouncer(2);
    let (m, app) = manager_via(&b, &db, "bouncer-cache-on", 1, 1000).await;
    let other = raw_client(&b, &db).await;
    other.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let sql = "SELECT $1::int4 + 1";
    let v: i32 = m.query_one(sql, &[&1i32]).await.unwrap().get(0);
    assert_eq!(v, 2);
    assert_eq!(m.metrics().statement_cache.misses, 1);
    other.batch_execute("COMMIT").await.unwrap();
    let err = m
        .transaction(|tx| async move { tx.query_one(sql, &[&1i32]).await })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("26000"), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("prepared statement") && text.contains("does not exist"),
        "{text}"
    );
    eprintln!("statement cache on behind PgBouncer: {text}");
    drop(other);
    assert_bouncer_invariants(&b, &m, &app, 2).await;
}

/// Session state belongs to the server connection, not to the client: a `SET` on one pool
/// connection is seen by another client that PgBouncer gives the same server connection
/// (here the only one), and stays there after both are returned. `SET LOCAL` inside a
/// transaction ends with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_leaks_between_clients_behind_pgbouncer() {
    let (b, db) = bouncer(1);
    let (m, app) = manager_via(&b, &db, "bouncer-session", 2, 0).await;
    let read = "SELECT coalesce(current_setting('pgwarden_test.tenant', true), '')";
    {
        let a = m.get().await.unwrap();
        let c = m.get().await.unwrap();
        a.batch_execute("SET pgwarden_test.tenant = 'acme'")
            .await
            .unwrap();
        let seen: String = c.query_one(read, &[]).await.unwrap().get(0);
        assert_eq!(seen, "acme", "another client sees the first one's SET");
    }
    let seen: String = m.query_one(read, &[]).await.unwrap().get(0);
    assert_eq!(seen, "acme", "the SET outlives both checkouts");
    let local: String = m
        .transaction(|tx| async move {
            tx.execute("SET LOCAL pgwarden_test.tenant = 'local'", &[])
                .await?;
            Ok(tx.query_one(read, &[]).await?.get(0))
        })
        .await
        .unwrap();
    assert_eq!(local, "local");
    let seen: String = m.query_one(read, &[]).await.unwrap().get(0);
    assert_eq!(seen, "acme", "SET LOCAL ended with its transaction");
    assert_bouncer_invariants(&b, &m, &app, 1).await;
}

/// PgBouncer 1.18 refuses a connection whose URL carries `options` (`-c name=value`): the
/// connect fails on the first attempt with its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_refuses_the_options_startup_parameter() {
    let (b, db) = bouncer(1);
    let app = app_name("bouncer-options");
    let url = format!("{}?options=-c%20statement_timeout%3D5s", b.url(&db));
    let vars = [
        ("DATABASE_URL", url),
        ("DB_STATEMENT_CACHE_SIZE", "0".to_string()),
        ("DB_POOL_MIN", "0".into()),
        ("DB_ACQUIRE_TIMEOUT", "2s".into()),
        ("DB_RETRY_ATTEMPTS", "0".into()),
        ("DB_APPLICATION_NAME", app),
    ];
    let config = Config::from_vars(vars.iter().map(|(k, v)| (*k, v.as_str()))).expect("config");
    let m = PoolManager::from_config(&config).await.expect("manager");
    let err = m.query_one("SELECT 1", &[]).await.unwrap_err();
    let text = format!("{err}");
    eprintln!("options behind PgBouncer: {text}");
    assert!(
        text.contains("unsupported startup parameter: options"),
        "{text}"
    );
    assert!(!matches!(err, Error::QueryTimeout { .. }));
}

/// LISTEN on a client of `config`, NOTIFY from the server's own admin session, then a few
/// statements on the client; returns the notifications it received.
async fn notifications_after_listen(
    config: tokio_postgres::Config,
    server: Arc<PgServer>,
    db: &str,
) -> usize {
    let (client, mut conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut messages).await {
            if matches!(m, tokio_postgres::AsyncMessage::Notification(_)) {
                let _ = tx.send(());
            }
        }
    });
    client.batch_execute("LISTEN pgwarden_ch").await.unwrap();
    let db = db.to_owned();
    blocking(move || server.psql(&db, "NOTIFY pgwarden_ch, 'hello'").unwrap()).await;
    // Keep the client busy a while: a delivered notification arrives meanwhile.
    for _ in 0..5 {
        client.batch_execute("SELECT 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(client);
    let _ = driver.await;
    let mut got = 0;
    while rx.try_recv().is_ok() {
        got += 1;
    }
    got
}

/// LISTEN through PgBouncer in transaction mode: the LISTEN runs on whichever server
/// connection serves that transaction, which goes back to PgBouncer's pool right after; the
/// notification reaches that server connection while no client is linked to it, and the
/// client that asked never sees it. The same client code connected directly does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_delivers_no_notification_behind_pgbouncer() {
    let (b, db) = bouncer(2);
    let server = Arc::clone(b.server());
    let direct = notifications_after_listen(server.pg_config(&db), Arc::clone(&server), &db).await;
    assert_eq!(direct, 1, "directly, the notification arrives");
    let through = notifications_after_listen(b.pg_config(&db), server, &db).await;
    assert_eq!(through, 0, "through PgBouncer it never does");
}
