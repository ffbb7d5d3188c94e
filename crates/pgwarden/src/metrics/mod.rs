//! Metrics: the recorder on the hot path, the snapshot (`metrics()`), the status block
//! (`status()`) and the Prometheus text.

mod exposition;
mod prometheus;
mod read;
mod recorder;
mod snapshot;
mod status;

pub(crate) use prometheus::render as prometheus_text;
pub use prometheus::CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE;
pub use read::{ReadFallbackCounts, ReadSnapshot};
pub(crate) use recorder::{ErrorClass, Figures, Outcome, Recorder, RetryReason};
pub(crate) use snapshot::{build, checkout_utilization_pct, PoolInput};
pub use snapshot::{
    AcquireCounts, ConnectionCounters, ErrorCounts, FailoverSnapshot, Latency, PoolSnapshot,
    QueryCounters, RetryCounts, Snapshot,
};
pub(crate) use status::render as status_text;
