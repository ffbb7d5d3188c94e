//! LISTEN/NOTIFY: notifications delivered with their channel and payload, channels changed at
//! run time, a backend kill followed by a reconnect that re-listens and says so, and a slow
//! consumer told how many notifications it missed.

use std::time::Duration;

use futures_util::StreamExt;
use pgwarden::listen::{ListenError, ListenerEvent, Notification, BUFFER};
use pgwarden::{Listener, ManagerOptions, PoolManager};

use crate::common::*;

fn manager(tag: &str) -> (PoolManager, String) {
    let (server, db) = shared_db();
    let (pool, app) = pool(&server, &db, tag, test_opts(2, 0));
    (PoolManager::new(pool, ManagerOptions::default()), app)
}

/// The next event, failing the test after 10 s.
async fn next(listener: &mut Listener) -> ListenerEvent {
    tokio::time::timeout(Duration::from_secs(10), listener.next())
        .await
        .expect("an event within 10 s")
        .expect("the listener stream does not end")
}

/// The next event, which must be a notification.
async fn next_note(listener: &mut Listener) -> Notification {
    match next(listener).await {
        ListenerEvent::Notification(n) => n,
        other => panic!("expected a notification, got {other:?}"),
    }
}

async fn notify(db: &PoolManager, channel: &str, payload: &str) {
    db.execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
        .await
        .expect("notify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_delivered_with_channel_and_payload() {
    let (db, _app) = manager("listen");
    // A name that would break out of an unquoted LISTEN is taken literally.
    let odd = r#"x"; SELECT 1; --"#;
    let mut listener = db.listener(["chan_a", "Chan B", odd]).await.unwrap();
    let pid = listener.backend_pid().expect("connected");

    notify(&db, "chan_a", "first").await;
    notify(&db, "Chan B", "").await;
    notify(&db, odd, "odd").await;
    let a = next_note(&mut listener).await;
    assert_eq!(
        (a.channel.as_str(), a.payload.as_str()),
        ("chan_a", "first")
    );
    assert_ne!(
        a.process_id, pid,
        "the sender's backend, not the listener's"
    );
    let b = next_note(&mut listener).await;
    assert_eq!((b.channel.as_str(), b.payload.as_str()), ("Chan B", ""));
    assert_eq!(next_note(&mut listener).await.channel, odd);

    // Channels changed at run time; one not listened to is not delivered.
    listener.listen("chan_c").await.unwrap();
    listener.unlisten("chan_a").await.unwrap();
    notify(&db, "chan_a", "unheard").await;
    notify(&db, "chan_c", "heard").await;
    let c = next_note(&mut listener).await;
    assert_eq!(
        (c.channel.as_str(), c.payload.as_str()),
        ("chan_c", "heard")
    );
    let mut channels = listener.channels().await;
    channels.sort();
    assert_eq!(channels, ["Chan B", "chan_c", odd]);

    assert!(matches!(
        db.listener([""]).await,
        Err(ListenError::InvalidChannel(_))
    ));
    assert!(matches!(
        listener.listen("x".repeat(64)).await,
        Err(ListenError::InvalidChannel(_))
    ));
    drop(listener);
    db.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_kill_reconnects_relistens_and_reports_the_gap() {
    let (db, app) = manager("listen-kill");
    let mut listener = db.listener(["jobs", "other"]).await.unwrap();
    let old_pid = listener.backend_pid().expect("connected");
    notify(&db, "jobs", "before").await;
    assert_eq!(next_note(&mut listener).await.payload, "before");

    let killed: bool = db
        .query_one("SELECT pg_terminate_backend($1)", &[&old_pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    match next(&mut listener).await {
        ListenerEvent::Reconnected {
            gap,
            attempts,
            reason,
        } => {
            assert!(attempts >= 1);
            assert!(gap < Duration::from_secs(10), "gap {gap:?}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected Reconnected, got {other:?}"),
    }
    let new_pid = listener.backend_pid().expect("reconnected");
    assert_ne!(new_pid, old_pid);

    // Re-listened on every channel: a notification sent now on either is delivered.
    notify(&db, "other", "after-1").await;
    notify(&db, "jobs", "after-2").await;
    let n = next_note(&mut listener).await;
    assert_eq!(
        (n.channel.as_str(), n.payload.as_str()),
        ("other", "after-1")
    );
    let n = next_note(&mut listener).await;
    assert_eq!(
        (n.channel.as_str(), n.payload.as_str()),
        ("jobs", "after-2")
    );

    // The listener's connection is its own, with the pool's application_name and not in the
    // pool's counts.
    let row = db
        .query_one(
            "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
            &[&new_pid],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), app);
    assert_eq!(db.pool().status().in_use, 0);
    drop(listener);
    db.close(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_told_how_many_notifications_it_missed() {
    let (db, _app) = manager("listen-lag");
    let mut listener = db.listener(["flood"]).await.unwrap();
    let total = 3 * BUFFER as u64;
    // One transaction: every notification is sent at its commit, none read meanwhile.
    db.execute(
        "SELECT pg_notify('flood', g::text) FROM generate_series(1, $1::int8) g",
        &[&(total as i64)],
    )
    .await
    .unwrap();
    let (mut received, mut missed, mut last) = (0u64, 0u64, 0u64);
    // Bounded: at most `total` notifications and a lag event before each.
    for _ in 0..(2 * total) {
        if received + missed == total {
            break;
        }
        match next(&mut listener).await {
            ListenerEvent::Notification(n) => {
                let k: u64 = n.payload.parse().unwrap();
                assert!(k > last, "in order: {k} after {last}");
                last = k;
                received += 1;
            }
            ListenerEvent::Lagged { missed: m } => {
                assert!(m > 0);
                missed += m;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Every notification was either delivered or counted as missed, the buffer bounded what
    // waited, and the listener goes on.
    assert_eq!(
        received + missed,
        total,
        "received {received}, missed {missed}"
    );
    notify(&db, "flood", "end").await;
    assert_eq!(next_note(&mut listener).await.payload, "end");
    drop(listener);
    db.close(Duration::from_secs(1)).await;
}
