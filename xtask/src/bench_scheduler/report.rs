//! The scheduler bench's report: lag distributions and the scheduler's CPU and RSS as a
//! Markdown table.

use std::fmt::Write as _;

use super::Samples;

/// Sorted lags in seconds.
pub(super) struct Distribution(Vec<f64>);

impl Distribution {
    pub(super) fn new(mut lags: Vec<f64>) -> Distribution {
        lags.sort_by(f64::total_cmp);
        Distribution(lags)
    }

    /// The nearest-rank quantile.
    pub(super) fn quantile(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1]
    }

    fn row(&self, label: &str) -> String {
        format!(
            "| {label} | {} | {:.3} s | {:.3} s | {:.3} s | {:.3} s |",
            self.0.len(),
            self.quantile(0.5),
            self.quantile(0.9),
            self.quantile(0.99),
            self.0.last().copied().unwrap_or(f64::NAN)
        )
    }
}

pub(super) struct Report {
    pub(super) schedules: usize,
    pub(super) ticks: i64,
    pub(super) expected: usize,
    pub(super) created: Distribution,
    pub(super) seen: Distribution,
    pub(super) floor: Distribution,
    pub(super) config_map_floor: Distribution,
    pub(super) samples: Samples,
    pub(super) metrics: String,
    pub(super) load: (String, String),
}

impl Report {
    pub(super) fn render(self) -> anyhow::Result<String> {
        let (cpu, apiserver_cpu, cpu_seconds) = self.samples.average_cpu();
        let mut rss = self.samples.rss_kib.clone();
        rss.sort_unstable();
        let mib = |kib: u64| kib as f64 / 1024.0;
        // `+ 0.0`: an empty f64 sum is -0.0.
        let created_total = metric_sum(&self.metrics, "stowage_schedule_runs_created_total{") + 0.0;
        let skipped = metric_sum(&self.metrics, "stowage_schedule_ticks_skipped_total{") + 0.0;
        let mut out = String::new();
        writeln!(
            out,
            "Stowage scheduler benchmark: {} BackupSchedules `* * * * *` (ExecBackup runs completed at once, \
             successfulRunsHistoryLimit 1), {} measured tick(s), release scheduler-ctrl on the test bed, {} cores, \
             load average {} before and {} after",
            self.schedules,
            self.ticks,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            self.load.0,
            self.load.1
        )?;
        writeln!(
            out,
            "\n| lag from tick | runs (expected {}) | p50 | p90 | p99 (target < 1 s) | max |\n|---|---:|---:|---:|---:|---:|",
            self.expected
        )?;
        writeln!(
            out,
            "{}",
            self.created
                .row("to the run's creation (scheduler-ctrl's clock, each run from its log)")
        )?;
        writeln!(
            out,
            "{}",
            self.seen.row("to the run seen by a watch in the bench (upper bound)")
        )?;
        writeln!(
            out,
            "{}",
            self.floor.row(
                "the bed alone, for comparison: as many runs created at once by the bench, no scheduler \
                 (from the first request to each answer)"
            )
        )?;
        writeln!(
            out,
            "{}",
            self.config_map_floor
                .row("the bed alone, as many ConfigMaps created at once: the same calls for a built-in type")
        )?;
        writeln!(out, "\n| scheduler-ctrl (release) | value |\n|---|---:|")?;
        writeln!(
            out,
            "| CPU, average over the measured ticks | {:.1}% of a core ({cpu_seconds:.1} CPU s, {:.2} CPU s per tick) |",
            cpu * 100.0,
            cpu_seconds / self.ticks.max(1) as f64
        )?;
        writeln!(
            out,
            "| CPU, busiest second | {:.0}% of a core |",
            self.samples.peak_cpu * 100.0
        )?;
        writeln!(
            out,
            "| RSS, median / peak (VmHWM) | {:.1} MiB / {:.1} MiB |",
            mib(rss.get(rss.len() / 2).copied().unwrap_or(0)),
            mib(self.samples.hwm_kib)
        )?;
        writeln!(
            out,
            "| runs created in its lifetime / ticks skipped | {created_total:.0} / {skipped:.0} |"
        )?;
        writeln!(
            out,
            "| kube-apiserver CPU over the same window, for context | {:.1}% of a core |",
            apiserver_cpu * 100.0
        )?;
        let met = self.created.quantile(0.99) < 1.0 && self.created.0.len() == self.expected;
        let verdict = if met { "met" } else { "NOT met" };
        writeln!(
            out,
            "\nTarget p99 < 1 s from tick to creation, every run created: {verdict}."
        )?;
        Ok(out)
    }
}

/// The sum of a metric's samples whose line starts with `prefix` (name and labels).
fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
