//! TLS against a real server with a certificate from the harness's throwaway CA.

use std::sync::{Arc, OnceLock};

use pgwarden::config::SslMode;
use pgwarden::{AcquireError, Error, Pool, PoolOptions};
use pgwarden_testdb::PgServer;

use crate::common::*;

pub(crate) fn tls_server() -> Arc<PgServer> {
    static S: OnceLock<Arc<PgServer>> = OnceLock::new();
    Arc::clone(S.get_or_init(|| Arc::new(PgServer::builder().ssl(true).start().unwrap())))
}

pub(crate) fn cfg(host: &str, port: u16) -> tokio_postgres::Config {
    format!("host={host} port={port} user=postgres dbname=postgres")
        .parse()
        .unwrap()
}

async fn ssl_in_use(pool: &pgwarden::PgPool) -> Result<bool, Error> {
    let c = pool.get().await?;
    Ok(c.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get(0))
}

fn opts() -> PoolOptions {
    test_opts(2, 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_against_the_harness_ca_succeeds() {
    let s = tls_server();
    let ca = s.ca_cert_path().unwrap().to_owned();
    let pool = Pool::new(
        connector_for(
            &cfg("localhost", s.port()),
            SslMode::VerifyFull,
            Some(&ca),
            "tls",
        ),
        opts(),
    );
    assert!(ssl_in_use(&pool).await.unwrap());
    for mode in [SslMode::VerifyCa, SslMode::Require, SslMode::Prefer] {
        let pool = Pool::new(
            connector_for(&cfg("127.0.0.1", s.port()), mode, Some(&ca), "tls"),
            opts(),
        );
        assert!(ssl_in_use(&pool).await.unwrap(), "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_rejects_a_wrong_host_name_and_a_wrong_ca() {
    let s = tls_server();
    let ca = s.ca_cert_path().unwrap().to_owned();
    // The certificate names only "localhost".
    let pool = Pool::new(
        connector_for(
            &cfg("127.0.0.1", s.port()),
            SslMode::VerifyFull,
            Some(&ca),
            "tls",
        ),
        opts(),
    );
    let err = ssl_in_use(&pool).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, Error::Acquire(AcquireError::Connect(_))),
        "{text}"
    );
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");

    let dir = tempfile_dir();
    let other_ca = pgwarden_testdb::generate_ca(&dir).unwrap();
    for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
        let pool = Pool::new(
            connector_for(&cfg("localhost", s.port()), mode, Some(&other_ca), "tls"),
            opts(),
        );
        let err = ssl_in_use(&pool).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.to_lowercase().contains("certificate"),
            "{mode:?}: {text}"
        );
        assert!(!err.is_retryable(), "{text}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_never_falls_back_to_plaintext() {
    let (plain, db) = shared_db();
    let pool = Pool::new(
        connector_for(&plain.pg_config(&db), SslMode::Require, None, "tls"),
        opts(),
    );
    let err = ssl_in_use(&pool).await.unwrap_err();
    assert!(err.to_string().contains("does not support TLS"), "{err}");
    // prefer does fall back, by definition.
    let pool = Pool::new(
        connector_for(&plain.pg_config(&db), SslMode::Prefer, None, "tls"),
        opts(),
    );
    assert!(!ssl_in_use(&pool).await.unwrap());
}

#[test]
fn verify_modes_without_a_root_certificate_are_refused_up_front() {
    let pg: tokio_postgres::Config = "host=localhost".parse().unwrap();
    let connector = |mode, root: Option<&std::path::Path>| {
        pgwarden::PgConnector::new(&pg, mode, root, pgwarden::ConnectOptions::default())
    };
    for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
        let err = connector(mode, None).unwrap_err();
        assert!(err.to_string().contains("root certificate"), "{err}");
    }
    let err = connector(
        SslMode::VerifyFull,
        Some(std::path::Path::new("/nonexistent/ca.pem")),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "pgwarden-it-ca-{}-{}",
        std::process::id(),
        app_name("ca")
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
