//! The Prometheus metrics every controller shares. Labels are stable PascalCase
//! reasons (the same strings as Event reasons), never object data with unbounded
//! cardinality: per-object series are keyed by the schedule (or the object when
//! it has none), which users name themselves.

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use stowage_core::Artifact;

/// Shared metrics, registered in one registry served on `/metrics`.
pub struct Metrics {
    /// The registry: controllers may register their own metrics in it.
    pub registry: Registry,
    /// Reconciles by kind and result (`Ok` or the error reason).
    pub reconciles: IntCounterVec,
    /// Events published, by kind, type and reason.
    pub events: IntCounterVec,
    /// Finished backups and restores by kind, operation and result reason.
    pub runs: IntCounterVec,
    /// Runs in progress by kind and operation.
    pub runs_in_progress: IntGaugeVec,
    /// Stored (compressed, encrypted) bytes written by backups, by kind.
    pub stored_bytes: IntCounterVec,
    /// Plaintext bytes read by backups, by kind.
    pub plaintext_bytes: IntCounterVec,
    /// Duration of finished runs by kind and operation.
    pub run_duration: HistogramVec,
    /// Unix time of the last successful backup per kind, namespace and schedule (or object).
    pub last_success: GaugeVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
}

impl Metrics {
    /// Metrics with every shared series registered, prefixed `stowage_`.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("stowage".into()), None)?;
        let metrics = Metrics {
            reconciles: IntCounterVec::new(
                Opts::new(
                    "reconciles_total",
                    "Reconciles by kind and result (Ok or the error reason).",
                ),
                &["kind", "result"],
            )?,
            events: IntCounterVec::new(
                Opts::new("events_total", "Events published, by kind, type and reason."),
                &["kind", "type", "reason"],
            )?,
            runs: IntCounterVec::new(
                Opts::new(
                    "runs_total",
                    "Finished backup and restore runs by kind, operation and result reason.",
                ),
                &["kind", "operation", "result"],
            )?,
            runs_in_progress: IntGaugeVec::new(
                Opts::new("runs_in_progress", "Backup and restore runs in progress."),
                &["kind", "operation"],
            )?,
            stored_bytes: IntCounterVec::new(
                Opts::new("backup_stored_bytes_total", "Bytes written to storage by backups."),
                &["kind"],
            )?,
            plaintext_bytes: IntCounterVec::new(
                Opts::new("backup_plaintext_bytes_total", "Plaintext bytes read by backups."),
                &["kind"],
            )?,
            run_duration: HistogramVec::new(
                HistogramOpts::new("run_duration_seconds", "Duration of finished backup and restore runs.").buckets(
                    vec![1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 12.0 * 3600.0],
                ),
                &["kind", "operation"],
            )?,
            last_success: GaugeVec::new(
                Opts::new(
                    "last_success_timestamp_seconds",
                    "Unix time of the last successful backup, by kind, namespace and schedule (or object name).",
                ),
                &["kind", "namespace", "schedule"],
            )?,
            leader: IntGauge::new("leader", "1 while this replica holds the leader Lease.")?,
            registry,
        };
        metrics.registry.register(Box::new(metrics.reconciles.clone()))?;
        metrics.registry.register(Box::new(metrics.events.clone()))?;
        metrics.registry.register(Box::new(metrics.runs.clone()))?;
        metrics.registry.register(Box::new(metrics.runs_in_progress.clone()))?;
        metrics.registry.register(Box::new(metrics.stored_bytes.clone()))?;
        metrics.registry.register(Box::new(metrics.plaintext_bytes.clone()))?;
        metrics.registry.register(Box::new(metrics.run_duration.clone()))?;
        metrics.registry.register(Box::new(metrics.last_success.clone()))?;
        metrics.registry.register(Box::new(metrics.leader.clone()))?;
        Ok(metrics)
    }

    /// Records a finished backup that produced `artifact`.
    pub fn backup_succeeded(&self, kind: &str, namespace: &str, schedule: &str, artifact: &Artifact, seconds: f64) {
        self.runs.with_label_values(&[kind, "Backup", "Succeeded"]).inc();
        self.stored_bytes
            .with_label_values(&[kind])
            .inc_by(artifact.stored_bytes);
        self.plaintext_bytes
            .with_label_values(&[kind])
            .inc_by(artifact.plaintext_bytes);
        self.run_duration.with_label_values(&[kind, "Backup"]).observe(seconds);
        self.last_success
            .with_label_values(&[kind, namespace, schedule])
            .set(chrono::Utc::now().timestamp() as f64);
    }

    /// Records a finished run (`operation` Backup or Restore) that failed with `reason`,
    /// or a restore that succeeded (`reason` Succeeded).
    pub fn run_finished(&self, kind: &str, operation: &str, reason: &str, seconds: f64) {
        self.runs.with_label_values(&[kind, operation, reason]).inc();
        self.run_duration.with_label_values(&[kind, operation]).observe(seconds);
    }

    /// The registry's metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text) {
            tracing::warn!(%error, "encoding metrics failed");
        }
        text
    }
}
