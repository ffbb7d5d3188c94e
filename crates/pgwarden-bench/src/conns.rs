//! Peak server connections per library: every library connects under its own
//! `application_name`, and a monitoring client counts its backends in `pg_stat_activity`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

/// How often the count is taken: often enough to see a burst of connects, rare enough that
/// the monitoring queries cost the server well under 1% of its CPU.
const EVERY: Duration = Duration::from_millis(20);

/// Counts one library's server connections.
#[derive(Clone)]
pub(crate) struct PeakSampler {
    pub(crate) monitor: Arc<Client>,
    pub(crate) app: &'static str,
}

impl PeakSampler {
    /// Samples from now until `end`; the task yields the highest count seen.
    pub(crate) fn spawn(
        self,
        end: Instant,
    ) -> tokio::task::JoinHandle<Result<i64, Box<dyn std::error::Error + Send + Sync>>> {
        tokio::spawn(async move {
            let mut peak = 0;
            loop {
                let n: i64 = self
                    .monitor
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                        &[&self.app],
                    )
                    .await?
                    .get(0);
                peak = peak.max(n);
                if Instant::now() >= end {
                    return Ok(peak);
                }
                tokio::time::sleep(EVERY).await;
            }
        })
    }
}
