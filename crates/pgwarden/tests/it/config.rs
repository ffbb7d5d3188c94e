//! Configuration as the manager sees it: settings that have no effect yet are named in one
//! warning when the user set them, never for a profile's defaults.

use std::time::Duration;

use pgwarden::{Config, PoolManager};

use crate::common::{shared_db, LogCapture};

/// Builds a manager from `vars` (plus the URL) and returns the WARN log it wrote.
async fn warnings_of_from_config(url: &str, vars: &[(&str, &str)]) -> String {
    let log = LogCapture::start(tracing::Level::WARN);
    let mut all = vec![("DATABASE_URL", url), ("DB_POOL_MIN", "1")];
    all.extend_from_slice(vars);
    let config = Config::from_vars(all).unwrap();
    let m = PoolManager::from_config(&config).await.unwrap();
    m.close(Duration::from_secs(1)).await;
    log.text()
}

#[tokio::test(flavor = "current_thread")]
async fn from_config_warns_about_no_setting_once_every_setting_has_effect() {
    let (server, db) = shared_db();
    let url = server.url(&db);
    let log = warnings_of_from_config(
        &url,
        &[
            ("DB_HEALTH_CHECK_INTERVAL", "10s"),
            ("DB_FAILOVER_THRESHOLD", "70"),
        ],
    )
    .await;
    assert_eq!(log.matches("no effect yet").count(), 0, "{log}");
    // The router and the health checker landed: these settings have effect.
    assert!(!log.contains("DB_HEALTH_CHECK_INTERVAL"), "{log}");
    assert!(!log.contains("DB_FAILOVER_THRESHOLD"), "{log}");
    assert!(!log.contains("DB_ENABLE_FAILOVER"), "{log}");

    // Production's defaults enable failover, but the user set nothing: no warning.
    let log = warnings_of_from_config(&url, &[("DB_PROFILE", "production")]).await;
    assert!(!log.contains("no effect yet"), "{log}");
}
