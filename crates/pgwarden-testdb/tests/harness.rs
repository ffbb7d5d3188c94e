//! Integration tests against real PostgreSQL servers started by the harness.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwarden_testdb::{find_pg_bin_from, HarnessError, PgServer, StopMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// Polls `cond` until true or `timeout`; returns whether it became true.
fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// True when the pid exists and is not a zombie.
fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.chars().next()))
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

async fn connect(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

mod basics {
    use super::*;

    #[tokio::test]
    async fn starts_and_serves_server_version_over_tcp() {
        let server = PgServer::shared().unwrap();
        let db = server.create_database(None).unwrap();
        let client = connect(&server.pg_config(&db)).await.unwrap();
        let row = client.query_one("SHOW server_version", &[]).await.unwrap();
        let version: String = row.get(0);
        assert!(version.starts_with(char::is_numeric), "{version}");
        assert_eq!(server.host(), "127.0.0.1");
        assert_eq!(server.superuser(), "postgres");
        assert!(server
            .url(&db)
            .ends_with(&format!(":{}/{db}", server.port())));
        assert!(server
            .socket_dir()
            .join(format!(".s.PGSQL.{}", server.port()))
            .exists());
        assert!(server.log_path().is_file());
        assert!(server.data_dir().join("PG_VERSION").is_file());
        assert!(server.postmaster_pid().is_some());
        assert!(server.startup_timing().total > Duration::ZERO);
    }

    #[tokio::test]
    async fn password_user_logs_in_over_tcp_and_wrong_password_is_28p01() {
        let server = PgServer::shared().unwrap();
        let db = server.create_database(None).unwrap();
        let user = format!("u_{db}");
        server.create_user(&user, "s3cret'pw").unwrap();
        let mut config = server.pg_config(&db);
        config.user(&user).password("s3cret'pw");
        let client = connect(&config).await.unwrap();
        let row = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user);
        let method = server
            .psql(
                "postgres",
                &format!("SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = '{user}'"),
            )
            .unwrap();
        assert_eq!(method, "SCRAM-SHA-256$");

        config.password("wrong");
        let err = connect(&config).await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    }

    #[test]
    fn create_database_rejects_unsafe_names() {
        let server = PgServer::shared().unwrap();
        let err = server.create_database(Some("x\"; DROP")).unwrap_err();
        assert!(matches!(err, HarnessError::InvalidName { .. }), "{err}");
    }

    #[tokio::test]
    async fn terminate_backends_by_application_name_and_sessions_list_them() {
        let server = PgServer::shared().unwrap();
        let db = server.create_database(None).unwrap();
        let app = format!("term-{db}");
        let mut config = server.pg_config(&db);
        config.application_name(&app);
        let a = connect(&config).await.unwrap();
        let b = connect(&config).await.unwrap();
        a.batch_execute("BEGIN; SELECT 1").await.unwrap();
        let sessions = server.sessions(&app).unwrap();
        assert_eq!(sessions.len(), 2, "{sessions:?}");
        assert!(sessions
            .iter()
            .all(|s| s.datname == db && s.backend_type == "client backend"));
        assert_eq!(
            sessions
                .iter()
                .filter(|s| s.state == "idle in transaction")
                .count(),
            1
        );
        assert_eq!(sessions.iter().filter(|s| s.in_transaction).count(), 1);

        assert_eq!(server.terminate_backends(&app).unwrap(), 2);
        assert!(server.sessions(&app).unwrap().is_empty());
        let err = b.simple_query("SELECT 1").await.unwrap_err();
        assert!(
            b.is_closed() || err.code() == Some(&SqlState::ADMIN_SHUTDOWN),
            "{err}"
        );
        assert!(a.simple_query("SELECT 1").await.is_err());
    }
}

mod faults {
    use super::*;

    #[test]
    fn stop_fast_immediate_start_again_restart_and_set_setting() {
        let server = PgServer::builder().max_connections(50).start().unwrap();
        let port = server.port();
        assert_eq!(
            server.psql("postgres", "SHOW max_connections").unwrap(),
            "50"
        );
        server.psql("postgres", "CREATE TABLE t (id int)").unwrap();

        server.stop(StopMode::Fast).unwrap();
        assert!(!server.is_running());
        assert!(server.psql("postgres", "SELECT 1").is_err());
        server.start_again().unwrap();
        assert_eq!(server.port(), port);
        server.psql("postgres", "INSERT INTO t VALUES (1)").unwrap();

        server.stop(StopMode::Immediate).unwrap();
        assert!(server.postmaster_pid().is_none());
        server.start_again().unwrap();
        assert_eq!(
            server.psql("postgres", "SELECT count(*) FROM t").unwrap(),
            "1"
        );

        // The variant that returns before recovery has finished.
        server.stop(StopMode::Immediate).unwrap();
        server.start_again_no_wait().unwrap();
        assert!(poll_until(Duration::from_secs(30), || server
            .psql("postgres", "SELECT 1")
            .is_ok()));

        let before = server.postmaster_pid().unwrap();
        server.restart(StopMode::Fast).unwrap();
        let after = server.postmaster_pid().unwrap();
        assert_ne!(before, after);

        server.set_setting("statement_timeout", "1234").unwrap();
        assert_eq!(
            server.psql("postgres", "SHOW statement_timeout").unwrap(),
            "1234ms"
        );
        let err = server.set_setting("max_connections", "60").unwrap_err();
        assert!(matches!(err, HarnessError::NeedsRestart { .. }), "{err}");
        server.restart(StopMode::Fast).unwrap();
        assert_eq!(
            server.psql("postgres", "SHOW max_connections").unwrap(),
            "60"
        );
        assert!(server.set_setting("no_such_setting", "1").is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn paused_server_holds_queries_until_resumed() {
        let server = Arc::new(PgServer::start().unwrap());
        let client = connect(&server.pg_config("postgres")).await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();

        let s = server.clone();
        tokio::task::spawn_blocking(move || s.pause())
            .await
            .unwrap()
            .unwrap();
        assert!(server.is_paused());
        let stalled =
            tokio::time::timeout(Duration::from_millis(500), client.simple_query("SELECT 2")).await;
        assert!(stalled.is_err(), "query completed while paused");
        // A new connection is not served either.
        let connecting = tokio::time::timeout(
            Duration::from_millis(300),
            connect(&server.pg_config("postgres")),
        )
        .await;
        assert!(connecting.is_err(), "connected while paused");

        let s = server.clone();
        tokio::task::spawn_blocking(move || s.resume())
            .await
            .unwrap()
            .unwrap();
        let done =
            tokio::time::timeout(Duration::from_secs(10), client.simple_query("SELECT 3")).await;
        assert!(done.expect("query after resume timed out").is_ok());

        // stop() resumes a paused server first.
        server.pause().unwrap();
        let s = server.clone();
        tokio::task::spawn_blocking(move || s.stop(StopMode::Fast))
            .await
            .unwrap()
            .unwrap();
        assert!(!server.is_running());
    }
}

mod tls {
    use super::*;

    fn psql_ssl(server: &PgServer, host: &str, ca: &Path) -> std::process::Output {
        let bin = pgwarden_testdb::find_pg_bin().unwrap();
        Command::new(bin.join("psql"))
            .arg("-XAtq")
            .arg("-d")
            .arg(format!(
                "host={host} port={} sslmode=verify-full sslrootcert={} user=postgres dbname=postgres connect_timeout=10",
                server.port(),
                ca.display()
            ))
            .arg("-c")
            .arg("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .output()
            .unwrap()
    }

    #[test]
    fn tls_server_verifies_for_localhost_only_and_only_with_its_ca() {
        let server = PgServer::builder().ssl(true).start().unwrap();
        let ca = server.ca_cert_path().unwrap();

        let ok = psql_ssl(&server, "localhost", ca);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "t");

        let by_ip = psql_ssl(&server, "127.0.0.1", ca);
        assert!(!by_ip.status.success());
        assert!(
            String::from_utf8_lossy(&by_ip.stderr).contains("does not match host name"),
            "{}",
            String::from_utf8_lossy(&by_ip.stderr)
        );

        let other = tempdir("wrong-ca");
        let wrong = pgwarden_testdb::generate_ca(&other).unwrap();
        let rejected = psql_ssl(&server, "localhost", &wrong);
        assert!(!rejected.status.success());
        std::fs::remove_dir_all(&other).unwrap();
    }

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pgwarden-testdb-test-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

mod replica {
    use super::*;

    #[tokio::test]
    async fn replica_streams_rejects_writes_with_25006_and_promotes() {
        let primary = PgServer::builder().max_connections(40).start().unwrap();
        primary.psql("postgres", "CREATE TABLE r (id int)").unwrap();
        let replica = primary.start_replica().unwrap();
        assert_ne!(replica.port(), primary.port());
        assert_eq!(
            replica
                .psql("postgres", "SELECT pg_is_in_recovery()")
                .unwrap(),
            "t"
        );
        assert_eq!(
            replica.psql("postgres", "SHOW max_connections").unwrap(),
            "40"
        );

        primary
            .psql("postgres", "INSERT INTO r VALUES (42)")
            .unwrap();
        assert!(poll_until(Duration::from_secs(20), || {
            replica
                .psql("postgres", "SELECT count(*) FROM r WHERE id = 42")
                .ok()
                .as_deref()
                == Some("1")
        }));

        let client = connect(&replica.pg_config("postgres")).await.unwrap();
        let err = client
            .execute("INSERT INTO r VALUES (1)", &[])
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
            "{err}"
        );

        primary.stop(StopMode::Fast).unwrap();
        replica.promote().unwrap();
        assert_eq!(
            client
                .execute("INSERT INTO r VALUES (2)", &[])
                .await
                .unwrap(),
            1
        );
    }
}

mod cleanup {
    use super::*;

    #[test]
    fn drop_stops_the_server_and_removes_its_folder() {
        let server = PgServer::start().unwrap();
        let timing = server.startup_timing();
        eprintln!(
            "server start: {:?} (template build: {:?})",
            timing.total, timing.template_build
        );
        let pid = server.postmaster_pid().unwrap();
        let dir = server.socket_dir().to_path_buf();
        server.pause().unwrap();
        drop(server);
        assert!(!pid_alive(pid));
        assert!(!dir.exists());
    }

    #[test]
    fn a_panicking_owner_thread_still_cleans_up() {
        let (tx, rx) = std::sync::mpsc::channel();
        let joined = std::thread::spawn(move || {
            let server = PgServer::start().unwrap();
            tx.send((
                server.postmaster_pid().unwrap(),
                server.socket_dir().to_path_buf(),
            ))
            .unwrap();
            panic!("test panics while owning a server");
        })
        .join();
        assert!(joined.is_err());
        let (pid, dir) = rx.recv().unwrap();
        assert!(!pid_alive(pid));
        assert!(!dir.exists());
    }

    #[test]
    fn the_slot_cap_makes_a_second_server_wait() {
        let group = format!("cap-{}", std::process::id());
        let first = PgServer::builder().slot_group(&group, 1).start().unwrap();
        let started = Instant::now();
        let err = PgServer::builder()
            .slot_group(&group, 1)
            .slot_wait(Duration::from_millis(300))
            .start()
            .unwrap_err();
        assert!(
            matches!(err, HarnessError::SlotTimeout { max: 1, .. }),
            "{err}"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(err.to_string().contains("PGWARDEN_TEST_MAX_SERVERS"));

        // A replica shares its primary's slot instead of waiting for another.
        let replica = first.start_replica().unwrap();
        drop(replica);
        drop(first);
        let second = PgServer::builder()
            .slot_group(&group, 1)
            .slot_wait(Duration::from_secs(30))
            .start();
        assert!(second.is_ok());
    }

    #[test]
    fn pg_bin_env_without_initdb_gives_the_install_hint() {
        let empty =
            std::env::temp_dir().join(format!("pgwarden-testdb-test-nobin-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let err =
            find_pg_bin_from(Some(&empty), Path::new("/usr/lib/postgresql"), None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("PGWARDEN_PG_BIN="), "{text}");
        assert!(text.contains("apt-get install -y postgresql"), "{text}");

        // Nothing anywhere: the one clear message.
        let err = find_pg_bin_from(None, &empty, None).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("PostgreSQL server binaries (initdb) not found."));

        // Newest version wins, in numeric order.
        for v in ["9.6", "10", "15"] {
            let bin = empty.join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("initdb"), "").unwrap();
        }
        std::fs::create_dir_all(empty.join("16/bin")).unwrap(); // no initdb: skipped
        assert_eq!(
            find_pg_bin_from(None, &empty, None).unwrap(),
            empty.join("15/bin")
        );
        std::fs::remove_dir_all(&empty).unwrap();
    }
}
