//! The etcd backup controller's own metrics, registered in the kit's registry (prefix
//! `stowage_`). Per-backup series are keyed by the schedule that created the EtcdBackup (or
//! its name when no schedule did), which users choose, so cardinality stays bounded.

use prometheus::{GaugeVec, Histogram, HistogramOpts, IntGaugeVec, Opts, Registry};

/// Gauges of the last successful snapshot and a histogram of snapshot durations.
pub struct EtcdMetrics {
    /// Size of the last successful snapshot as etcd sent it (plaintext bytes), by schedule.
    pub snapshot_bytes: IntGaugeVec,
    /// Size of the last successful snapshot as stored (compressed, encrypted), by schedule.
    pub snapshot_stored_bytes: IntGaugeVec,
    /// etcd revision of the last successful snapshot, by schedule.
    pub snapshot_revision: IntGaugeVec,
    /// Unix time of the last successful snapshot, by schedule.
    pub last_success: GaugeVec,
    /// Seconds from the start of a snapshot to its committed manifest.
    pub snapshot_duration: Histogram,
}

impl EtcdMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<EtcdMetrics, prometheus::Error> {
        let metrics = EtcdMetrics {
            snapshot_bytes: IntGaugeVec::new(
                Opts::new(
                    "etcd_snapshot_bytes",
                    "Size of the last successful etcd snapshot, as etcd sent it.",
                ),
                &["schedule"],
            )?,
            snapshot_stored_bytes: IntGaugeVec::new(
                Opts::new(
                    "etcd_snapshot_stored_bytes",
                    "Size of the last successful etcd snapshot in storage (compressed and encrypted).",
                ),
                &["schedule"],
            )?,
            snapshot_revision: IntGaugeVec::new(
                Opts::new(
                    "etcd_snapshot_revision",
                    "etcd revision of the last successful snapshot.",
                ),
                &["schedule"],
            )?,
            last_success: GaugeVec::new(
                Opts::new(
                    "etcd_snapshot_last_success_timestamp_seconds",
                    "Unix time of the last successful etcd snapshot.",
                ),
                &["schedule"],
            )?,
            snapshot_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "etcd_snapshot_duration_seconds",
                    "Seconds from the start of an etcd snapshot to its committed manifest.",
                )
                .buckets(vec![0.5, 1.0, 2.5, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0]),
            )?,
        };
        registry.register(Box::new(metrics.snapshot_bytes.clone()))?;
        registry.register(Box::new(metrics.snapshot_stored_bytes.clone()))?;
        registry.register(Box::new(metrics.snapshot_revision.clone()))?;
        registry.register(Box::new(metrics.last_success.clone()))?;
        registry.register(Box::new(metrics.snapshot_duration.clone()))?;
        Ok(metrics)
    }
}
