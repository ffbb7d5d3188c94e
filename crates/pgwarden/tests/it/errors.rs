//! The error model against real servers: a TLS hiccup is not permanent, an exhausted pool is
//! not retried like a lost connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwarden::config::SslMode;
use pgwarden::{Error, ManagerOptions, Pool, PoolManager, TimeoutPhase};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::common::*;
use crate::tls::{cfg, tls_server};

/// A loopback proxy to a TLS server that, while `broken`, answers the SSLRequest with 'S' and
/// closes: the client's TLS handshake meets an EOF, as when a server restarts under it.
async fn flaky_tls_proxy(
    upstream: u16,
    broken: Arc<AtomicBool>,
) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let broken = Arc::clone(&broken);
            tokio::spawn(async move {
                if broken.load(Ordering::SeqCst) {
                    let mut request = [0u8; 8];
                    if client.read_exact(&mut request).await.is_ok() {
                        let _ = client.write_all(b"S").await;
                    }
                    return; // dropped: closed in the middle of the handshake
                }
                if let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_reset_during_the_tls_handshake_is_transient_and_heals() {
    let s = tls_server();
    let broken = Arc::new(AtomicBool::new(true));
    let (port, proxy) = flaky_tls_proxy(s.port(), Arc::clone(&broken)).await;
    let mut opts = test_opts(2, 0);
    opts.acquire_timeout = Duration::from_millis(500);
    opts.connect_timeout = Duration::from_millis(400);
    let pool = Pool::new(
        connector_for(
            &cfg("127.0.0.1", port),
            SslMode::Require,
            None,
            &app_name("tlsflaky"),
        ),
        opts,
    );

    // While handshakes fail: a timeout naming the connect error, never "retrying will not help".
    let err = pool.get().await.unwrap_err();
    let text = err.to_string();
    assert!(!text.contains("retrying will not help"), "{text}");
    assert!(err.is_timeout() && err.is_retryable(), "{text}");
    let cause = err.connect_error().expect("the connect error");
    assert!(!cause.is_permanent(), "{cause}");

    // Handshakes work again: the pool recovers, and no error on the way says retrying is
    // pointless.
    broken.store(false, Ordering::SeqCst);
    let started = Instant::now();
    let mut errors = Vec::new();
    let conn = loop {
        match pool.get().await {
            Ok(c) => break c,
            Err(e) => errors.push(e.to_string()),
        }
        assert!(
            started.elapsed() < Duration::from_secs(15) && errors.len() < 50,
            "no recovery: {errors:?}"
        );
    };
    assert!(
        errors.iter().all(|e| !e.contains("retrying will not help")),
        "{errors:?}"
    );
    let ssl: bool = conn
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    drop(conn);
    pool.close(Duration::from_secs(1)).await;
    proxy.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_an_exhausted_pool_fails_fast_instead_of_retrying() {
    let (server, db) = shared_db();
    let mut opts = test_opts(1, 0);
    opts.acquire_timeout = Duration::from_millis(200);
    opts.connect_timeout = Duration::from_millis(200);
    let (pool, _app) = pool(&server, &db, "exhausted", opts);
    let manager = PoolManager::new(pool, ManagerOptions::default());
    let held = manager.get().await.unwrap();

    let started = Instant::now();
    let err = manager
        .query_one("SELECT 1", &[])
        .idempotent()
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    let text = err.to_string();
    // One acquire timeout (200 ms), not four inside the retry budget (2.9–3.9 s before).
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}: {text}");
    assert!(matches!(err, Error::Acquire(_)), "{err:?}");
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Acquire), "{text}");
    assert!(!err.is_retryable(), "{text}");
    assert!(text.contains("DB_ACQUIRE_TIMEOUT"), "{text}");
    assert!(
        text.contains("exhausted") && text.contains("in use 1"),
        "{text}"
    );
    assert_eq!(manager.metrics().queries.retries, 0);

    drop(held);
    let row = manager
        .query_one("SELECT 1", &[])
        .idempotent()
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    manager.close(Duration::from_secs(1)).await;
}
