//! The periodic role probe, until the health checker takes it over: one task per manager that
//! calls [`Router::refresh_topology`] every health-check interval and ends with the manager.

use std::sync::Weak;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::Router;

/// Spawns the probe loop. It holds only a weak reference, so it ends when the manager is
/// dropped, and stops probing once the primary pool is closed.
pub(crate) fn spawn(router: Weak<Router>, interval: Duration) -> JoinHandle<()> {
    let interval = interval.max(Duration::from_secs(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick completes at once; the manager probes at start-up itself.
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(router) = router.upgrade() else {
                return;
            };
            if router.primary().is_closed() {
                return;
            }
            router.refresh_topology().await;
        }
    })
}
