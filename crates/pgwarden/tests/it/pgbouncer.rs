//! Behind PgBouncer 1.18 in transaction mode (FAULTS row 26), with `DB_STATEMENT_CACHE_SIZE=0`:
//! every manager call, transactions and their rerun, a kill storm and the ledger pass through
//! it. The server's sessions are PgBouncer's, so the session invariant counts PgBouncer's
//! clients instead. Also what breaks there: session state, and the statement cache left on.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use pgwarden::config::Config;
use pgwarden::{Error, GenericClient, PoolManager};
use pgwarden_testdb::{PgBouncer, PgServer};
use tokio::time::Instant;

use crate::common::*;

#[path = "pgbouncer_limits.rs"]
mod limits;

/// PgBouncer (transaction mode, `pool_size` server connections) in front of the shared
/// server, and a fresh database on it.
fn bouncer(pool_size: u32) -> (Arc<PgBouncer>, String) {
    let server = PgServer::shared().expect("shared server");
    let db = server.create_database(None).expect("database");
    let b = PgBouncer::builder(server)
        .pool_size(pool_size)
        .start()
        .expect("PgBouncer (install it with: apt-get install -y pgbouncer)");
    (Arc::new(b), db)
}

/// A manager through PgBouncer, built from `DB_*` variables as an application builds it.
async fn manager_via(
    b: &PgBouncer,
    db: &str,
    tag: &str,
    max: u32,
    cache: usize,
) -> (PoolManager, String) {
    let app = app_name(tag);
    let vars = [
        ("DATABASE_URL", b.url(db)),
        ("DB_STATEMENT_CACHE_SIZE", cache.to_string()),
        ("DB_POOL_MAX", max.to_string()),
        ("DB_POOL_MIN", "0".into()),
        ("DB_ACQUIRE_TIMEOUT", "5s".into()),
        ("DB_CONNECT_TIMEOUT", "3s".into()),
        ("DB_APPLICATION_NAME", app.clone()),
    ];
    let config = Config::from_vars(vars.iter().map(|(k, v)| (*k, v.as_str()))).expect("config");
    let m = PoolManager::from_config(&config).await.expect("manager");
    (m, app)
}

/// The invariants behind PgBouncer, once the pool is quiet: never above max; PgBouncer has
/// exactly the pool's connections as clients for its application_name; every server session
/// with that name is one of PgBouncer's server connections (none of the pool's own), none of
/// them idle in transaction or still running a statement; and PgBouncer holds at most its
/// pool size of server connections.
async fn assert_bouncer_invariants(b: &Arc<PgBouncer>, m: &PoolManager, app: &str, size: u32) {
    let pool = m.pool();
    eventually(Duration::from_secs(10), "pool quiet", || async {
        let s = pool.status();
        s.in_use == 0 && s.opening == 0 && s.size == s.idle
    })
    .await;
    let s = pool.status();
    assert!(s.size <= s.max, "size within max: {s}");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let want = pool.status().size as usize;
        let (b2, a) = (Arc::clone(b), app.to_owned());
        let (clients, server_pids, sessions) = blocking(move || {
            let clients = b2
                .show("CLIENTS")
                .unwrap()
                .into_iter()
                .filter(|c| c.get("application_name") == Some(&a))
                .count();
            let pids = b2.server_pids().unwrap();
            let sessions = b2.server().sessions(&a).unwrap();
            (clients, pids, sessions)
        })
        .await;
        let foreign: Vec<i32> = sessions
            .iter()
            .filter(|x| !server_pids.contains(&x.pid))
            .map(|x| x.pid)
            .collect();
        let busy: Vec<String> = sessions
            .iter()
            .filter(|x| x.state != "idle")
            .map(|x| format!("{} {:?} {:?}", x.pid, x.state, x.query))
            .collect();
        let ok = clients == want
            && foreign.is_empty()
            && busy.is_empty()
            && server_pids.len() <= size as usize;
        if ok {
            return;
        }
        assert!(
            Instant::now() < end,
            "invariants: pool size {want}, PgBouncer clients {clients}, server connections \
             {server_pids:?} (at most {size}), sessions not PgBouncer's {foreign:?}, not idle {busy:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One repository function run on the manager, a checked-out connection and a transaction:
/// execute, query_one, query_opt, query and a row stream, with parameters.
async fn add_and_count(
    c: &impl GenericClient,
    id: i64,
) -> Result<(i64, Option<i64>, usize), Error> {
    let n = c
        .execute(
            "INSERT INTO repo_t VALUES ($1, $2)",
            &[&id, &format!("n{id}")],
        )
        .await?;
    assert_eq!(n, 1);
    let count: i64 = c
        .query_one("SELECT count(*) FROM repo_t", &[])
        .await?
        .get(0);
    let found = c
        .query_opt(
            "SELECT id FROM repo_t WHERE id = $1 AND name = $2",
            &[&id, &format!("n{id}")],
        )
        .await?
        .map(|r| r.get::<_, i64>(0));
    let all = c.query("SELECT id FROM repo_t", &[]).await?.len();
    let streamed: Vec<i64> = c
        .query_stream("SELECT id FROM repo_t WHERE id > $1 ORDER BY id", &[&0i64])
        .await?
        .map_ok(|r| r.get::<_, i64>(0))
        .try_collect()
        .await?;
    assert_eq!(streamed.len(), all);
    Ok((count, found, all))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_manager_call_passes_through_pgbouncer_with_the_cache_off() {
    let (b, db) = bouncer(3);
    let (m, app) = manager_via(&b, &db, "bouncer-calls", 8, 0).await;
    m.execute("CREATE TABLE repo_t (id int8 PRIMARY KEY, name text)", &[])
        .await
        .unwrap();
    assert_eq!(add_and_count(&m, 1).await.unwrap(), (1, Some(1), 1));
    let conn = m.get().await.unwrap();
    assert_eq!(add_and_count(&conn, 2).await.unwrap(), (2, Some(2), 2));
    drop(conn);
    let out = m
        .transaction(|tx| async move { add_and_count(&tx, 3).await })
        .await
        .unwrap();
    assert_eq!(out, (3, Some(3), 3));
    // A failed transaction leaves nothing behind, though its statements ran on a server
    // connection that other clients use next.
    let err = m
        .transaction(|tx| async move {
            add_and_count(&tx, 4).await?;
            tx.execute("SELECT 1/0", &[]).await
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("22012"), "{err}");
    // Marked calls, and a query timeout: the CancelRequest goes through PgBouncer to the
    // server connection running the statement.
    let v: i64 = m
        .query_one("SELECT $1::int8 * 2", &[&21i64])
        .read_only()
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 42);
    let started = Instant::now();
    let err = m
        .query_one("SELECT pg_sleep(10)", &[])
        .idempotent()
        .timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::QueryTimeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Cancelled on the server, not left running behind PgBouncer.
    eventually(Duration::from_secs(3), "pg_sleep cancelled", || {
        let (server, a) = (Arc::clone(b.server()), app.clone());
        async move {
            blocking(move || {
                !server
                    .sessions(&a)
                    .unwrap()
                    .iter()
                    .any(|x| x.state == "active" && x.query.contains("pg_sleep"))
            })
            .await
        }
    })
    .await;

    // Many clients over fewer server connections: unnamed statements never straddle two.
    let pids = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for t in 0..8i64 {
        let (m, pids) = (m.clone(), Arc::clone(&pids));
        tasks.push(tokio::spawn(async move {
            for i in 0..25i64 {
                let id = 1000 + t * 100 + i;
                m.execute("INSERT INTO repo_t VALUES ($1, $2)", &[&id, &"x"])
                    .await
                    .unwrap();
                let row = m
                    .query_one(
                        "SELECT pg_backend_pid(), $1::int8 + 1, $2::text, $3::bool",
                        &[&id, &"t", &true],
                    )
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, i64>(1), id + 1);
                pids.lock().unwrap().insert(row.get::<_, i32>(0));
                let n = m
                    .query_stream("SELECT generate_series(1, $1)", &[&50i32])
                    .await
                    .unwrap()
                    .try_collect::<Vec<_>>()
                    .await
                    .unwrap()
                    .len();
                assert_eq!(n, 50);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let count: i64 = m
        .query_one("SELECT count(*) FROM repo_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3 + 200);
    // The backends that answered are PgBouncer's server connections, at most its pool size.
    let seen = pids.lock().unwrap().clone();
    let b2 = Arc::clone(&b);
    let servers: HashSet<i32> = blocking(move || b2.server_pids().unwrap())
        .await
        .into_iter()
        .collect();
    assert!(seen.is_subset(&servers), "{seen:?} ⊄ {servers:?}");
    // PgBouncer passes the pool's application_name on to the server connections it links.
    let (server, a) = (Arc::clone(b.server()), app.clone());
    let named = blocking(move || server.sessions(&a).unwrap()).await;
    assert!(
        !named.is_empty() && named.iter().all(|x| servers.contains(&x.pid)),
        "{named:?}"
    );
    assert!(servers.len() <= 3, "{servers:?}");
    assert_bouncer_invariants(&b, &m, &app, 3).await;
}

/// FAULTS row 19 behind PgBouncer: SERIALIZABLE write skew reruns one body whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serialization_failure_reruns_the_whole_body_behind_pgbouncer() {
    let (b, db) = bouncer(4);
    let (m, app) = manager_via(&b, &db, "bouncer-rerun", 4, 0).await;
    m.execute(
        "CREATE TABLE oncall (id int PRIMARY KEY, on_call bool)",
        &[],
    )
    .await
    .unwrap();
    m.execute("INSERT INTO oncall VALUES (1, true), (2, true)", &[])
        .await
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let runs = Arc::new(AtomicU32::new(0));
    let doctor = |id: i32| {
        let (m, barrier, runs) = (m.clone(), Arc::clone(&barrier), Arc::clone(&runs));
        tokio::spawn(async move {
            let first = Arc::new(AtomicBool::new(true));
            m.transaction(move |tx| {
                let (barrier, runs, first) =
                    (Arc::clone(&barrier), Arc::clone(&runs), Arc::clone(&first));
                Box::pin(async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tx.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", &[])
                        .await?;
                    let n: i64 = tx
                        .query_one("SELECT count(*) FROM oncall WHERE on_call", &[])
                        .await?
                        .get(0);
                    if first.swap(false, Ordering::SeqCst) {
                        barrier.wait().await;
                    }
                    if n >= 2 {
                        tx.execute("UPDATE oncall SET on_call = false WHERE id = $1", &[&id])
                            .await?;
                    }
                    Ok(n)
                })
            })
            .await
        })
    };
    let (x, y) = (doctor(1), doctor(2));
    let (x, y) = (x.await.unwrap().unwrap(), y.await.unwrap().unwrap());
    assert!(runs.load(Ordering::SeqCst) >= 3, "one body reran whole");
    assert_eq!(
        (x.min(y), x.max(y)),
        (1, 2),
        "the rerun saw the other's commit"
    );
    let on: i64 = m
        .query_one("SELECT count(*) FROM oncall WHERE on_call", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(on, 1, "never both off call");
    assert_bouncer_invariants(&b, &m, &app, 4).await;
}

/// Kills PgBouncer's server connections every `every`, `rounds` times, then raises `stop`
/// for the load to end; returns how many backends were terminated.
fn kill_storm(
    b: &Arc<PgBouncer>,
    stop: &Arc<AtomicBool>,
    every: Duration,
    rounds: u32,
) -> tokio::task::JoinHandle<u64> {
    let (b, stop) = (Arc::clone(b), Arc::clone(stop));
    tokio::spawn(async move {
        let mut kills = 0;
        for _ in 0..rounds {
            tokio::time::sleep(every).await;
            let b = Arc::clone(&b);
            kills += blocking(move || b.terminate_server_connections())
                .await
                .unwrap_or(0);
        }
        stop.store(true, Ordering::SeqCst);
        kills
    })
}

/// The kill storm: PgBouncer's server connections terminated again and again under load.
/// Idempotent reads either succeed or fail as a lost connection after their retries (never a
/// statement that straddled two server connections, never a wrong answer); once the storm
/// ends every call succeeds again, and the invariants hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_storm_behind_pgbouncer_fails_only_lost_connections_and_heals() {
    let (b, db) = bouncer(3);
    let (m, app) = manager_via(&b, &db, "bouncer-storm", 6, 0).await;
    let stop = Arc::new(AtomicBool::new(false));
    let killer = kill_storm(&b, &stop, Duration::from_millis(100), 20);
    let (ok, errors) = (
        Arc::new(AtomicU32::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let mut tasks = Vec::new();
    for t in 0..6i64 {
        let (m, ok, errors, stop) = (
            m.clone(),
            Arc::clone(&ok),
            Arc::clone(&errors),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            // Bounded in count as well as by the storm's end.
            for i in 0..2_000i64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let x = t * 1000 + i;
                let r = if i % 4 == 0 {
                    match m
                        .query_stream("SELECT generate_series(1, $1)", &[&20i32])
                        .await
                    {
                        Ok(s) => s.try_collect::<Vec<_>>().await.map(|rows| {
                            assert_eq!(rows.len(), 20);
                        }),
                        Err(e) => Err(e),
                    }
                } else {
                    m.query_one("SELECT $1::int8 + 1 FROM pg_sleep(0.01)", &[&x])
                        .idempotent()
                        .await
                        .map(|row| assert_eq!(row.get::<_, i64>(0), x + 1))
                };
                match r {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.lock().unwrap().push(e),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let kills = killer.await.unwrap();
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    let texts: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    for e in &errors {
        // A lost connection: no SQLSTATE, or one of the session-lost codes PgBouncer or the
        // server sends (57P01 admin shutdown, 08xxx connection failure).
        let lost = e.code().is_none_or(|c| c == "57P01" || c.starts_with("08"));
        assert!(lost, "not a lost connection: {e}");
    }
    eprintln!(
        "kill storm behind PgBouncer: {} ok, {} failed, {kills} server connections killed; {:?}",
        ok.load(Ordering::Relaxed),
        errors.len(),
        texts.iter().take(3).collect::<Vec<_>>()
    );
    assert!(kills > 0);
    assert!(ok.load(Ordering::Relaxed) > 0);
    // Healed: every call succeeds once the storm is over.
    for i in 0..20i64 {
        let v: i64 = m
            .query_one("SELECT $1::int8", &[&i])
            .idempotent()
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, i);
    }
    assert_bouncer_invariants(&b, &m, &app, 3).await;
}

/// The ledger behind PgBouncer: concurrent writes keyed by client-generated ids while
/// PgBouncer's server connections are killed. Every acknowledged id is present, every id
/// reported failed is absent, a unique violation (a write attempted twice) never occurs, and
/// "outcome unknown" is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_behind_pgbouncer_loses_and_duplicates_nothing_under_kills() {
    let (b, db) = bouncer(3);
    let (m, app) = manager_via(&b, &db, "bouncer-ledger", 6, 0).await;
    m.execute("CREATE TABLE ledger (id int8 PRIMARY KEY)", &[])
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let killer = kill_storm(&b, &stop, Duration::from_millis(150), 15);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let unknown = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..6i64 {
        let (m, acked, failed, unknown, stop) = (
            m.clone(),
            Arc::clone(&acked),
            Arc::clone(&failed),
            Arc::clone(&unknown),
            Arc::clone(&stop),
        );
        writers.push(tokio::spawn(async move {
            let mut attempted = 0usize;
            for i in 0..2_000i64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                attempted += 1;
                let id = w * 1_000_000 + i;
                let r = m
                    .execute("INSERT INTO ledger SELECT $1 FROM pg_sleep(0.005)", &[&id])
                    .await;
                match r {
                    Ok(1) => acked.lock().unwrap().push(id),
                    Ok(n) => panic!("inserted {n} rows"),
                    Err(e) => {
                        assert_ne!(e.code(), Some("23505"), "a write was attempted twice: {e}");
                        if e.outcome_unknown() {
                            unknown.lock().unwrap().push(id);
                        } else {
                            failed.lock().unwrap().push(id);
                        }
                    }
                }
            }
            attempted
        }));
    }
    let mut attempted = 0;
    for w in writers {
        attempted += w.await.unwrap();
    }
    let kills = killer.await.unwrap();
    let present: HashSet<i64> = m
        .query("SELECT id FROM ledger", &[])
        .idempotent()
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (acked, failed, unknown) = (
        acked.lock().unwrap().clone(),
        failed.lock().unwrap().clone(),
        unknown.lock().unwrap().clone(),
    );
    for id in &acked {
        assert!(present.contains(id), "acknowledged id {id} lost");
    }
    for id in &failed {
        assert!(
            !present.contains(id),
            "id {id} reported failed but committed"
        );
    }
    assert_eq!(acked.len() + failed.len() + unknown.len(), attempted);
    assert_eq!(m.metrics().queries.outcome_unknown as usize, unknown.len());
    assert!(kills > 0);
    eprintln!(
        "ledger behind PgBouncer: {} acknowledged, {} failed, {} outcome unknown, {kills} server connections killed",
        acked.len(),
        failed.len(),
        unknown.len()
    );
    assert_bouncer_invariants(&b, &m, &app, 3).await;
}
