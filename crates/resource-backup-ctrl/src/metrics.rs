//! The resource backup controller's own metrics, registered in the kit's registry (prefix
//! `stowage_`), counted live as objects stream so that `rate()` shows a run moving. Bytes,
//! durations and last success times are the kit's shared series.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Objects backed up and restored.
pub struct ResourceMetrics {
    /// Objects written to archives by ResourceBackups.
    pub backup_objects: IntCounter,
    /// Objects of those encrypted with an EncryptionConfiguration.
    pub backup_encrypted_objects: IntCounter,
    /// Objects restored by ResourceRestores, by outcome (Created, Updated, Unchanged, Skipped,
    /// Failed, Deleted); dry runs are not counted.
    pub restore_objects: IntCounterVec,
}

impl ResourceMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<ResourceMetrics, prometheus::Error> {
        let metrics = ResourceMetrics {
            backup_objects: IntCounter::with_opts(Opts::new(
                "resource_backup_objects_total",
                "Kubernetes objects written to archives by ResourceBackups.",
            ))?,
            backup_encrypted_objects: IntCounter::with_opts(Opts::new(
                "resource_backup_encrypted_objects_total",
                "Kubernetes objects encrypted with an EncryptionConfiguration by ResourceBackups.",
            ))?,
            restore_objects: IntCounterVec::new(
                Opts::new(
                    "resource_restore_objects_total",
                    "Kubernetes objects restored by ResourceRestores, by outcome (dry runs not counted).",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(metrics.backup_objects.clone()))?;
        registry.register(Box::new(metrics.backup_encrypted_objects.clone()))?;
        registry.register(Box::new(metrics.restore_objects.clone()))?;
        Ok(metrics)
    }
}
