//! The scheduler's own metrics, registered in the kit's registry (prefix `stowage_`).
//! Per-schedule series are keyed by namespace and schedule name, which users choose;
//! the lag histogram has no per-schedule label so it stays small with many schedules.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Counters and the lag histogram of the scheduler.
pub struct SchedulerMetrics {
    /// Runs created, by namespace, schedule and reason (Scheduled, Manual).
    pub runs_created: IntCounterVec,
    /// Ticks that created no run, by namespace, schedule and reason
    /// (ConcurrencyForbid, MissedDeadline, Suspended).
    pub ticks_skipped: IntCounterVec,
    /// Seconds from a tick to the creation of its run, by run kind.
    pub lag: HistogramVec,
    /// Runs deleted by history limits or retention, by namespace and schedule.
    pub runs_deleted: IntCounterVec,
}

impl SchedulerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<SchedulerMetrics, prometheus::Error> {
        let metrics = SchedulerMetrics {
            runs_created: IntCounterVec::new(
                Opts::new("schedule_runs_created_total", "Runs created by schedules, by reason."),
                &["namespace", "schedule", "reason"],
            )?,
            ticks_skipped: IntCounterVec::new(
                Opts::new(
                    "schedule_ticks_skipped_total",
                    "Schedule ticks that created no run, by reason.",
                ),
                &["namespace", "schedule", "reason"],
            )?,
            lag: HistogramVec::new(
                HistogramOpts::new(
                    "schedule_lag_seconds",
                    "Seconds from a schedule tick to its run's creation.",
                )
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0]),
                &["kind"],
            )?,
            runs_deleted: IntCounterVec::new(
                Opts::new(
                    "schedule_runs_deleted_total",
                    "Runs deleted by history limits or retention.",
                ),
                &["namespace", "schedule"],
            )?,
        };
        registry.register(Box::new(metrics.runs_created.clone()))?;
        registry.register(Box::new(metrics.ticks_skipped.clone()))?;
        registry.register(Box::new(metrics.lag.clone()))?;
        registry.register(Box::new(metrics.runs_deleted.clone()))?;
        Ok(metrics)
    }
}
