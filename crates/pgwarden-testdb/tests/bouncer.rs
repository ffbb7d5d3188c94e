//! PgBouncer in front of a throwaway server: start, admin console, faults, cleanup.

use std::path::Path;
use std::sync::Arc;

use pgwarden_testdb::{find_pgbouncer_from, PgBouncer, PgServer};
use tokio_postgres::NoTls;

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.chars().next()))
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bouncer_forwards_in_transaction_mode_and_is_removed_on_drop() {
    let server = PgServer::shared().unwrap();
    let db = server.create_database(None).unwrap();
    let bouncer = PgBouncer::builder(Arc::clone(&server))
        .pool_size(2)
        .start()
        .unwrap();
    let (client, conn) = bouncer.pg_config(&db).connect(NoTls).await.unwrap();
    let driver = tokio::spawn(conn);
    let pid: i32 = client
        .simple_query("SELECT pg_backend_pid()")
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
            _ => None,
        })
        .unwrap();
    // The backend that answered is one of PgBouncer's server connections, which the
    // console lists with its pid.
    assert!(bouncer.server_pids().unwrap().contains(&pid));
    let clients = bouncer.show("CLIENTS").unwrap();
    assert!(
        clients.iter().any(|c| c.get("database") == Some(&db)),
        "{clients:?}"
    );
    assert_eq!(bouncer.terminate_server_connections().unwrap(), 1);

    let (dir, bpid) = (
        bouncer.log_path().parent().unwrap().to_path_buf(),
        bouncer.pid().unwrap(),
    );
    // The watchdog and the sweep find PgBouncer through its pid file.
    let pidfile = std::fs::read_to_string(dir.join("pgbouncer.pid")).unwrap();
    assert_eq!(pidfile.trim().parse::<i32>().unwrap(), bpid);
    drop(client);
    driver.abort();
    drop(bouncer);
    assert!(!pid_alive(bpid), "PgBouncer stopped");
    assert!(!dir.exists(), "its folder removed");
}

#[test]
fn a_missing_pgbouncer_gives_the_install_command() {
    let nowhere = Path::new("/nonexistent/pgbouncer");
    let err = find_pgbouncer_from(None, nowhere, Some("/nonexistent".as_ref())).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("PgBouncer not found. Install it with: apt-get install -y pgbouncer"),
        "{text}"
    );
    let err = find_pgbouncer_from(Some(nowhere), nowhere, None).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("PGWARDEN_PGBOUNCER=/nonexistent/pgbouncer is not a file."),
        "{err}"
    );
}
