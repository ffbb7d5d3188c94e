//! Metrics: the recorder on the hot path, the snapshot (`metrics()`), the status block
//! (`status()`) and the Prometheus text.

// Wired into the manager once the shape pass lands.
#![allow(dead_code)]

mod prometheus;
mod recorder;
mod snapshot;
mod status;

pub use prometheus::CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE;
pub use snapshot::{
    AcquireCounts, ConnectionCounters, ErrorCounts, FailoverSnapshot, Latency, PoolSnapshot,
    QueryCounters, RetryCounts, Snapshot,
};
