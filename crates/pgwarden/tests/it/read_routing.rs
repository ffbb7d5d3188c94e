//! Read routing to a standby (`DB_READ_URL`, `DB_READ_MAX_LAG`) against a real primary and a
//! streaming standby: `.read_only()` calls go to the standby and nothing else does; a stopped
//! standby (../shared/FAULTS.md row 18) and a standby lagging past the limit send reads back to
//! the primary with no error; a read target that is not a standby gets a warning, not an error.

use std::sync::Arc;
use std::time::Duration;

use pgwarden::config::Config;
use pgwarden::PoolManager;
use pgwarden_testdb::{PgServer, StopMode};

use crate::common::*;

/// Whether the server that ran the call is in recovery, and its port.
type Where = (bool, u16);

const WHERE_SQL: &str = "SELECT pg_is_in_recovery(), current_setting('port')::int";

async fn read_where(db: &PoolManager) -> Where {
    let row = db
        .query_one(WHERE_SQL, &[])
        .read_only()
        .await
        .expect("a read never fails while the primary is up");
    (row.get(0), row.get::<_, i32>(1) as u16)
}

async fn write_where(db: &PoolManager) -> Where {
    let row = db.query_one(WHERE_SQL, &[]).await.expect("unmarked call");
    (row.get(0), row.get::<_, i32>(1) as u16)
}

/// `postgres://user:password@127.0.0.1:PORT/db`.
fn url_with_password(server: &PgServer, user: &str, password: &str, db: &str) -> String {
    format!(
        "postgres://{user}:{password}@127.0.0.1:{}/{db}",
        server.port()
    )
}

/// A manager on `primary` reading from `standby` as `user` (a password user, so the tests can
/// check the password never shows), health check every second.
async fn manager(
    primary: &PgServer,
    read_target: &PgServer,
    db: &str,
    app: &str,
    max_lag: &str,
) -> PoolManager {
    let (user, password) = ("reader", "s3cret-rr");
    let vars = [
        (
            "DATABASE_URL",
            url_with_password(primary, user, password, db),
        ),
        (
            "DB_READ_URL",
            url_with_password(read_target, user, password, db),
        ),
        ("DB_READ_MAX_LAG", max_lag.to_owned()),
        ("DB_HEALTH_CHECK_INTERVAL", "1s".into()),
        ("DB_ACQUIRE_TIMEOUT", "2s".into()),
        ("DB_CONNECT_TIMEOUT", "1s".into()),
        ("DB_POOL_MIN", "1".into()),
        ("DB_APPLICATION_NAME", app.to_owned()),
    ];
    let config = Config::from_vars(vars).expect("config");
    PoolManager::from_config(&config).await.expect("manager")
}

/// The primary and its standby, with a password user allowed to write the ledger, replicated
/// to the standby before it is used.
async fn servers() -> (Arc<PgServer>, Arc<PgServer>, String) {
    let (primary, standby, db) = primary_with_standby().await;
    let (p, d) = (Arc::clone(&primary), db.clone());
    blocking(move || {
        p.create_user("reader", "s3cret-rr").expect("user");
        p.psql(
            &d,
            "CREATE TABLE filler (id int, pad text); GRANT ALL ON ledger, filler TO reader",
        )
        .expect("grant");
    })
    .await;
    let s = Arc::clone(&standby);
    eventually(Duration::from_secs(20), "the role replicated", || {
        let s = Arc::clone(&s);
        async move {
            blocking(move || {
                s.psql(
                    "postgres",
                    "SELECT count(*) FROM pg_roles WHERE rolname = 'reader'",
                )
                .is_ok_and(|out| out.trim() == "1")
            })
            .await
        }
    })
    .await;
    (primary, standby, db)
}

#[tokio::test]
async fn reads_go_to_the_standby_and_fall_back_to_the_primary_when_it_stops() {
    let log = LogCapture::start(tracing::Level::DEBUG);
    let (primary, standby, db_name) = servers().await;
    let app = app_name("read-routing");
    let db = manager(&primary, &standby, &db_name, &app, "16MB").await;
    let (p, s) = (primary.port(), standby.port());

    // Measured at start-up: the very first read goes to the standby.
    assert_eq!(read_where(&db).await, (true, s), "a read on the standby");
    for _ in 0..5 {
        assert_eq!(read_where(&db).await, (true, s));
    }
    // Unmarked and idempotent calls never go there.
    assert_eq!(write_where(&db).await, (false, p));
    let row = db
        .query_one(WHERE_SQL, &[])
        .idempotent()
        .await
        .expect("idempotent");
    assert_eq!(row.get::<_, i32>(1) as u16, p);
    let m = db.metrics();
    assert!(m.read.enabled && m.read.serving, "{:?}", m.read);
    assert_eq!((m.read.routed, m.read.fallbacks), (6, 0), "{:?}", m.read);
    assert!(m.read.lag_bytes.is_some(), "{:?}", m.read);
    let row = &m.pools["read"];
    assert!(!row.serves_checkouts, "reads only: not graded capacity");
    assert_eq!(row.acquire_wait_ms.count, 6, "the read pool's own acquires");
    assert_eq!(
        m.pools["primary"].acquire_wait_ms.count, 2,
        "the two unmarked calls"
    );
    assert!(
        db.status().contains("   Reads: STANDBY (lag "),
        "{}",
        db.status()
    );
    let prom = db.prometheus();
    assert!(prom.contains("pgwarden_reads_routed_total 6\n"), "{prom}");
    assert!(
        prom.contains("pgwarden_pool_max_connections{pool=\"read\"}"),
        "{prom}"
    );

    // Writes, acknowledged once each, on the primary.
    for id in 1..=5i64 {
        db.execute("INSERT INTO ledger VALUES ($1)", &[&id])
            .await
            .expect("write");
    }

    // Row 18: stop the standby. Reads fall back to the primary, none fails.
    let st = Arc::clone(&standby);
    blocking(move || st.stop(StopMode::Fast).expect("stop standby")).await;
    for i in 0..20 {
        let (in_recovery, port) = read_where(&db).await;
        assert_eq!((in_recovery, port), (false, p), "read {i} after the stop");
    }
    // The health check sees it down too: the read pool is out until a good probe.
    db.check_health().await;
    let m = db.metrics();
    assert!(!m.read.serving, "{:?}", m.read);
    assert_eq!(m.read.lag_bytes, None);
    let by = m.read.fallbacks_by_reason;
    assert!(by.down + by.retry >= 20, "{:?}", m.read);
    assert!(by.down >= 1, "{by:?}");
    assert_eq!(m.queries.failed, 0, "no call failed: {:?}", m.queries);
    assert!(
        db.status().contains("   Reads: PRIMARY (lag unknown"),
        "{}",
        db.status()
    );
    let rows = db
        .query_one("SELECT count(*) FROM ledger", &[])
        .read_only()
        .await
        .expect("count");
    assert_eq!(
        rows.get::<_, i64>(0),
        5,
        "every acknowledged write exactly once"
    );

    let text = log.text();
    assert!(
        text.contains("read target (DB_READ_URL) is unreachable"),
        "{text}"
    );
    assert!(
        text.contains(&format!("127.0.0.1:{s}")),
        "names the host: {text}"
    );
    assert!(
        !text.contains("s3cret-rr"),
        "the password leaked into a log line"
    );
    assert!(!format!("{db:?}").contains("s3cret-rr"));
    assert!(!db.status().contains("s3cret-rr") && !db.prometheus().contains("s3cret-rr"));

    assert_invariants(&primary, db.pool(), &app).await;
    db.close(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_standby_lagging_past_the_limit_serves_no_reads_until_it_catches_up() {
    let (primary, standby, db_name) = servers().await;
    let app = app_name("read-lag");
    let db = manager(&primary, &standby, &db_name, &app, "1kB").await;
    let (p, s) = (primary.port(), standby.port());
    let on_standby = (true, s);
    let on_primary = (false, p);
    // Idle: the standby is caught up (replay at the primary's position).
    eventually(Duration::from_secs(20), "reads on the standby", || async {
        read_where(&db).await == on_standby
    })
    .await;

    let (st, d) = (Arc::clone(&standby), db_name.clone());
    blocking(move || {
        st.psql(&d, "SELECT pg_wal_replay_pause()")
            .expect("pause replay")
    })
    .await;
    // A few MB of WAL the standby receives but does not replay.
    db.execute(
        "INSERT INTO filler SELECT g, repeat('x', 1000) FROM generate_series(1, 4000) g",
        &[],
    )
    .await
    .expect("filler");
    eventually(
        Duration::from_secs(20),
        "reads back on the primary",
        || async { read_where(&db).await == on_primary },
    )
    .await;
    let m = db.metrics();
    let lag = m.read.lag_bytes.expect("lag measured");
    assert!(lag > 1024 * 1024, "a few MB behind: {lag} bytes");
    assert!(
        !m.read.serving && m.read.fallbacks_by_reason.lagging >= 1,
        "{:?}",
        m.read
    );
    assert!(
        db.prometheus()
            .contains(&format!("pgwarden_read_lag_bytes {lag}\n")),
        "{}",
        db.prometheus()
    );
    // Still lagging: every read stays on the primary, none fails.
    for _ in 0..10 {
        assert_eq!(read_where(&db).await, on_primary);
    }

    let (st, d) = (Arc::clone(&standby), db_name.clone());
    blocking(move || {
        st.psql(&d, "SELECT pg_wal_replay_resume()")
            .expect("resume replay")
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "reads back on the standby",
        || async { read_where(&db).await == on_standby },
    )
    .await;
    assert!(db.metrics().read.lag_bytes.is_some());
    // The resumed standby has the rows written while it was paused. (Eventually: a tick may
    // catch the primary writing a little WAL of its own, autovacuum's, over this 1kB limit.)
    eventually(
        Duration::from_secs(20),
        "the rows on the standby",
        || async {
            let row = db
                .query_one("SELECT count(*), pg_is_in_recovery() FROM filler", &[])
                .read_only()
                .await
                .expect("count");
            (row.get::<_, i64>(0), row.get::<_, bool>(1)) == (4000, true)
        },
    )
    .await;
    assert_eq!(db.metrics().queries.failed, 0);
    assert_invariants(&primary, db.pool(), &app).await;
    db.close(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_read_target_that_is_not_a_standby_is_a_warning_and_reads_go_to_the_primary() {
    let log = LogCapture::start(tracing::Level::WARN);
    let (server, db_name) = shared_db();
    let app = app_name("read-not-standby");
    let vars = [
        ("DATABASE_URL", server.url(&db_name)),
        ("DB_READ_URL", server.url(&db_name)),
        ("DB_POOL_MIN", "0".into()),
        ("DB_APPLICATION_NAME", app.clone()),
    ];
    let config = Config::from_vars(vars).expect("config");
    let db = PoolManager::from_config(&config)
        .await
        .expect("not a standby: a warning, not an error");
    let text = log.text();
    assert!(text.contains("is not a standby"), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{}", server.port())),
        "{text}"
    );
    assert!(
        !text.contains("no effect yet"),
        "read routing has effect: {text}"
    );
    for _ in 0..3 {
        assert!(!read_where(&db).await.0);
    }
    let m = db.metrics();
    assert_eq!(m.read.routed, 0);
    assert_eq!(m.read.fallbacks_by_reason.not_standby, 3, "{:?}", m.read);
    db.close(Duration::from_secs(1)).await;
}
