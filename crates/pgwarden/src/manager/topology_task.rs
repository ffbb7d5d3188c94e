//! The periodic role probe, until the health checker takes it over: one task per manager that
//! calls [`Router::refresh_topology`] every health-check interval and ends with the manager.
//! While the primary is down or refuses writes it probes every [`DEGRADED_PERIOD`] instead, so
//! a promoted standby takes writes soon after its promotion, not up to an interval later.

use std::sync::Weak;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::Router;

/// The probe period while the primary is down or read-only (when shorter than the interval).
pub(crate) const DEGRADED_PERIOD: Duration = Duration::from_millis(250);

/// Spawns the probe loop. It holds only a weak reference, so it ends when the manager is
/// dropped, and stops probing once the primary pool is closed.
pub(crate) fn spawn(router: Weak<Router>, interval: Duration) -> JoinHandle<()> {
    let interval = interval.max(Duration::from_secs(1));
    tokio::spawn(async move {
        // The manager probes at start-up itself.
        let mut next = interval;
        loop {
            tokio::time::sleep(next).await;
            let Some(router) = router.upgrade() else {
                return;
            };
            if router.primary().is_closed() {
                return;
            }
            router.refresh_topology().await;
            next = if router.primary_degraded() {
                interval.min(DEGRADED_PERIOD)
            } else {
                interval
            };
        }
    })
}
