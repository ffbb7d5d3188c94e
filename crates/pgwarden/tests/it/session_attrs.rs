//! libpq's six `target_session_attrs` values against a real primary and a streaming standby:
//! each picks the host libpq would, in either host order; `prefer-standby` falls back to the
//! primary when no host is a standby; a manager whose URL lists the standby first sends its
//! writes to the primary.

use std::time::Duration;

use pgwarden::config::{Config, DbTarget, SessionAttrs};
use pgwarden::{ConnectOptions, Connector, PgConnector, PoolManager, SslMode};
use pgwarden_testdb::PgServer;

use crate::common::*;

fn url(hosts: &[&PgServer], db: &str, attrs: SessionAttrs) -> String {
    let list: Vec<String> = hosts
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port()))
        .collect();
    format!(
        "postgres://{}@{}/{db}?target_session_attrs={attrs}",
        hosts[0].superuser(),
        list.join(",")
    )
}

/// Connects once through pgwarden's connector for `url`; the port of the server it reached,
/// or the connect error's text.
async fn reached(url: &str) -> Result<u16, String> {
    let t = DbTarget::parse(url).expect("url");
    let mut co = ConnectOptions::default();
    co.connect_timeout = Duration::from_secs(3);
    co.target_session_attrs = Some(t.session_attrs());
    let c = PgConnector::new(t.pg_config(), SslMode::Disable, None, co).expect("connector");
    let conn = c.connect().await.map_err(|e| e.to_string())?;
    let port: String = conn
        .query_one("SELECT current_setting('port')", &[])
        .await
        .expect("port")
        .get(0);
    Ok(port.parse().expect("a port"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_value_picks_the_host_libpq_would() {
    let (primary, standby, db) = primary_with_standby().await;
    let (p, s) = (primary.port(), standby.port());
    use SessionAttrs as A;
    // (value, host reached with [standby, primary], with [primary, standby]).
    let table = [
        (A::Any, s, p),
        (A::ReadWrite, p, p),
        (A::ReadOnly, s, s),
        (A::Primary, p, p),
        (A::Standby, s, s),
        (A::PreferStandby, s, s),
    ];
    for (attrs, standby_first, primary_first) in table {
        let got = reached(&url(&[&standby, &primary], &db, attrs)).await;
        assert_eq!(got, Ok(standby_first), "{attrs}, standby listed first");
        let got = reached(&url(&[&primary, &standby], &db, attrs)).await;
        assert_eq!(got, Ok(primary_first), "{attrs}, primary listed first");
    }
    // No standby among the hosts: prefer-standby takes any host, standby and read-only none.
    assert_eq!(
        reached(&url(&[&primary], &db, A::PreferStandby)).await,
        Ok(p)
    );
    for attrs in [A::Standby, A::ReadOnly] {
        let e = reached(&url(&[&primary], &db, attrs)).await.unwrap_err();
        assert!(e.contains(&format!("target_session_attrs={attrs}")), "{e}");
    }
    // Only a standby: primary and read-write refuse it.
    for attrs in [A::Primary, A::ReadWrite] {
        let e = reached(&url(&[&standby], &db, attrs)).await.unwrap_err();
        assert!(e.contains("standby"), "{e}");
    }

    // A manager from DATABASE_URL listing the standby first: writes land on the primary.
    let app = app_name("tsa-primary");
    let vars = [
        ("DATABASE_URL", url(&[&standby, &primary], &db, A::Primary)),
        ("DB_POOL_MAX", "2".to_owned()),
        ("DB_POOL_MIN", "1".to_owned()),
        ("DB_APPLICATION_NAME", app.clone()),
    ];
    let config = Config::from_vars(vars.iter().map(|(k, v)| (*k, v.as_str()))).expect("config");
    let m = PoolManager::from_config(&config).await.expect("manager");
    for id in 1..=3_i64 {
        m.execute("INSERT INTO ledger VALUES ($1)", &[&id])
            .await
            .expect("write on the second host");
    }
    assert!(
        standby.sessions(&app).expect("sessions").is_empty(),
        "no pooled session on the standby"
    );
    m.close(Duration::from_secs(5)).await;
    let n = primary
        .psql(&db, "SELECT count(*) FROM ledger")
        .expect("count");
    assert_eq!(n.trim(), "3");

    // target_session_attrs=standby with the primary listed first: the pool's sessions are on
    // the standby (the router steers to it rather than to the read-write host), reads run
    // there, and the target is known read-only.
    let app = app_name("tsa-standby");
    let vars = [
        ("DATABASE_URL", url(&[&primary, &standby], &db, A::Standby)),
        ("DB_POOL_MAX", "2".to_owned()),
        ("DB_POOL_MIN", "1".to_owned()),
        ("DB_ACQUIRE_TIMEOUT", "1s".to_owned()),
        ("DB_RETRY_BUDGET", "1s".to_owned()),
        ("DB_APPLICATION_NAME", app.clone()),
    ];
    let config = Config::from_vars(vars.iter().map(|(k, v)| (*k, v.as_str()))).expect("config");
    let m = PoolManager::from_config(&config).await.expect("manager");
    use pgwarden::manager::route::PoolId;
    assert_eq!(m.router().writable(PoolId::Primary), Some(false));
    eventually(
        Duration::from_secs(10),
        "the standby replayed the rows",
        || {
            let m = &m;
            async move {
                let n: i64 = m
                    .query_one("SELECT count(*) FROM ledger", &[])
                    .read_only()
                    .await
                    .expect("a read on the standby")
                    .get(0);
                n == 3
            }
        },
    )
    .await;
    // Without a failover pool there is nowhere else to go: the standby refuses the write.
    let e = m
        .execute("INSERT INTO ledger VALUES (4)", &[])
        .await
        .expect_err("a standby-only target serves no writes");
    assert_eq!(e.code(), Some("25006"), "{e}");
    let n = primary
        .psql(&db, "SELECT count(*) FROM ledger WHERE id = 4")
        .expect("count");
    assert_eq!(n.trim(), "0", "the write did not reach the primary");
    assert!(
        primary.sessions(&app).expect("sessions").is_empty(),
        "no pooled session on the primary"
    );
    assert!(!standby.sessions(&app).expect("sessions").is_empty());
    m.close(Duration::from_secs(5)).await;
}
