//! Leak detection: a checkout held past `DB_LEAK_DETECTION_THRESHOLD` is logged once with the
//! caller's file and line, logged again when it comes back, and counted.

use std::time::Duration;

use pgwarden::{ManagerOptions, PoolManager};

use crate::common::*;

/// The captured lines containing `needle`.
fn lines(log: &LogCapture, needle: &str) -> Vec<String> {
    log.text()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// A transaction body that holds its connection for 500 ms.
async fn slow_body(tx: pgwarden::Tx) -> Result<u64, pgwarden::Error> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx.execute("SELECT 1", &[]).await
}

const LEAKED: &str = "possible connection leak";
const BACK: &str = "reported as leaked came back";

/// Current-thread runtime: the subscriber set for this thread sees the timer task's events.
#[tokio::test]
async fn a_checkout_held_past_the_threshold_is_logged_with_its_caller_and_counted() {
    let log = LogCapture::start(tracing::Level::INFO);

    let (server, db) = shared_db();
    let mut opts = test_opts(2, 0);
    opts.leak_detection_threshold = Some(Duration::from_millis(300));
    let (pool, app) = pool(&server, &db, "leak", opts);
    let mut mo = ManagerOptions::default();
    mo.health_check_interval = None;
    let m = PoolManager::new(pool, mo);

    // Returned in time: neither logged nor counted.
    drop(m.get().await.unwrap());

    let conn = m.get().await.unwrap();
    let here = format!("{}:{}:", file!(), line!() - 1);
    eventually(Duration::from_secs(5), "the leak reported", || async {
        !lines(&log, LEAKED).is_empty()
    })
    .await;
    // Still held well past the threshold: reported once, not again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let leaked = lines(&log, LEAKED);
    assert_eq!(leaked.len(), 1, "{leaked:?}");
    assert!(leaked[0].contains(&here), "{here} in {leaked:?}");
    assert!(leaked[0].contains("WARN"), "{leaked:?}");
    assert!(leaked[0].contains("held_ms="), "{leaked:?}");
    assert!(lines(&log, BACK).is_empty());
    assert_eq!(m.pool().counters().leaks, 1);
    assert_eq!(m.metrics().connections.leaks, 1);
    assert!(
        m.prometheus()
            .contains("\npgwarden_leaks_total{pool=\"primary\"} 1\n"),
        "{}",
        m.prometheus()
    );

    drop(conn);
    let back = lines(&log, BACK);
    assert_eq!(back.len(), 1, "{back:?}");
    assert!(back[0].contains(&here), "{here} in {back:?}");
    let held: u64 = back[0]
        .split("held_ms=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("held_ms in the line");
    assert!(held >= 700, "held {held} ms: {back:?}");

    // A transaction held past the threshold names the line that started it.
    let run = m.transaction(slow_body);
    let tx_here = format!("{}:{}:", file!(), line!() - 1);
    assert_eq!(run.await.unwrap(), 1);
    let leaked = lines(&log, LEAKED);
    assert_eq!(leaked.len(), 2, "{leaked:?}");
    assert!(leaked[1].contains(&tx_here), "{tx_here} in {leaked:?}");
    assert_eq!(lines(&log, BACK).len(), 2);
    assert_eq!(m.metrics().connections.leaks, 2);
    assert_invariants(&server, m.pool(), &app).await;
}
