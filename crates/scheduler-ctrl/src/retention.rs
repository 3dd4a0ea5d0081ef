//! Which finished runs to delete: history limits for failed runs, and either the
//! successful-runs limit or grandfather-father-son retention for successful ones.
//!
//! Retention reads like restic's `forget` policy: runs are taken newest first; `keepLast`
//! keeps the N newest; each `keep<Period>` rule keeps the newest run of each of the last
//! N periods that have runs (and, while it has counts left, the oldest run too, so a
//! short history is not thinned); `keepWithin` keeps every run within a duration of the
//! newest. A run kept by any rule is kept. Periods are calendar periods in the
//! schedule's time zone. Active runs and runs labelled `stowage.io/keep` are never deleted.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, Months, Timelike, Utc};
use chrono_tz::Tz;
use stowage_api::Retention;

use crate::Error;

/// What a run looks like to the cleanup planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// The run object's name.
    pub name: String,
    /// When it finished (its creation time while active, or when it has no completionTime).
    pub time: DateTime<Utc>,
    /// Where it stands.
    pub outcome: Outcome,
    /// Labelled `stowage.io/keep: "true"`.
    pub pinned: bool,
}

/// The state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not finished: never deleted by cleanup.
    Active,
    /// Finished successfully.
    Succeeded,
    /// Finished unsuccessfully (Failed or PartiallyFailed).
    Failed,
}

/// The rules one schedule prunes by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Successful runs to keep when `retention` is None.
    pub successful_limit: usize,
    /// Failed runs to keep.
    pub failed_limit: usize,
    /// GFS rules for successful runs; replaces `successful_limit`.
    pub retention: Option<Rules>,
    /// Zone of the calendar periods.
    pub zone: Tz,
}

/// GFS rules with `keepWithin` parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub last: usize,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
    pub yearly: usize,
    pub within: Option<Within>,
}

/// A restic duration: years, months, days, hours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Within {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

/// What to delete, and why every other run stays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Runs to delete, oldest first.
    pub delete: Vec<String>,
    /// Every kept run with the reasons it is kept (e.g. "daily", "last", "active").
    pub kept: BTreeMap<String, Vec<String>>,
}

impl Rules {
    /// The rules of a schedule's `retention` field.
    pub fn from_api(retention: &Retention) -> Result<Rules, Error> {
        let count = |n: Option<u32>| n.unwrap_or(0) as usize;
        Ok(Rules {
            last: count(retention.keep_last),
            hourly: count(retention.keep_hourly),
            daily: count(retention.keep_daily),
            weekly: count(retention.keep_weekly),
            monthly: count(retention.keep_monthly),
            yearly: count(retention.keep_yearly),
            within: retention.keep_within.as_deref().map(Within::parse).transpose()?,
        })
    }
}

impl Within {
    /// Parses restic's `1y2m3d4h` form (any subset, in that order; `m` is months).
    pub fn parse(text: &str) -> Result<Within, Error> {
        let invalid = || {
            Error::InvalidRetention(format!(
                "keepWithin '{text}' is not a duration like 2y5m7d3h (years, months, days, hours)"
            ))
        };
        let mut within = Within::default();
        let mut number = String::new();
        let mut last_unit = 0;
        for c in text.trim().chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let (rank, slot) = match c {
                'y' => (1, &mut within.years),
                'm' => (2, &mut within.months),
                'd' => (3, &mut within.days),
                'h' => (4, &mut within.hours),
                _ => return Err(invalid()),
            };
            if number.is_empty() || rank <= last_unit {
                return Err(invalid());
            }
            *slot = number.parse().map_err(|_| invalid())?;
            number.clear();
            last_unit = rank;
        }
        if !number.is_empty() || last_unit == 0 {
            return Err(invalid());
        }
        Ok(within)
    }

    /// `latest` minus this duration, calendar-wise in `zone` (as restic's AddDate).
    fn before(&self, latest: DateTime<Utc>, zone: Tz) -> DateTime<Utc> {
        let local = latest.with_timezone(&zone);
        let months = self.years.saturating_mul(12).saturating_add(self.months);
        let shifted = local
            .checked_sub_months(Months::new(months))
            .and_then(|t| t.checked_sub_signed(Duration::days(i64::from(self.days))))
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        shifted - Duration::hours(i64::from(self.hours))
    }
}

/// Plans the cleanup of `runs` under `policy`.
pub fn plan(runs: &[RunRecord], policy: &Policy) -> Cleanup {
    let mut cleanup = Cleanup::default();
    let keep = |cleanup: &mut Cleanup, name: &str, reason: &str| {
        cleanup
            .kept
            .entry(name.to_string())
            .or_default()
            .push(reason.to_string());
    };
    let mut newest_first: Vec<&RunRecord> = runs.iter().collect();
    newest_first.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.name.cmp(&a.name)));

    for run in &newest_first {
        if run.outcome == Outcome::Active {
            keep(&mut cleanup, &run.name, "active");
        }
        if run.pinned {
            keep(&mut cleanup, &run.name, "pinned");
        }
    }
    let failed: Vec<&RunRecord> = newest_first
        .iter()
        .copied()
        .filter(|r| r.outcome == Outcome::Failed)
        .collect();
    for run in failed.iter().take(policy.failed_limit) {
        keep(&mut cleanup, &run.name, "failed history");
    }
    let succeeded: Vec<&RunRecord> = newest_first
        .iter()
        .copied()
        .filter(|r| r.outcome == Outcome::Succeeded)
        .collect();
    match &policy.retention {
        None => {
            for run in succeeded.iter().take(policy.successful_limit) {
                keep(&mut cleanup, &run.name, "successful history");
            }
        }
        Some(rules) => {
            for (name, reason) in gfs(&succeeded, rules, policy.zone) {
                keep(&mut cleanup, name, reason);
            }
        }
    }
    let mut delete: Vec<&RunRecord> = newest_first
        .into_iter()
        .filter(|run| !cleanup.kept.contains_key(&run.name))
        .collect();
    delete.reverse();
    cleanup.delete = delete.into_iter().map(|run| run.name.clone()).collect();
    cleanup
}

/// A calendar period a run falls into, for one rule.
type Bucket = fn(DateTime<Tz>) -> (i32, u32, u32, u32);

/// Restic's bucket walk over successful runs, newest first: (name, reason) per keep.
fn gfs<'a>(newest_first: &[&'a RunRecord], rules: &Rules, zone: Tz) -> Vec<(&'a str, &'static str)> {
    let periods: [(usize, &'static str, &'static str, Bucket); 5] = [
        (rules.hourly, "hourly", "oldest hourly", |t| {
            (t.year(), t.month(), t.day(), t.hour())
        }),
        (rules.daily, "daily", "oldest daily", |t| {
            (t.year(), t.month(), t.day(), 0)
        }),
        (rules.weekly, "weekly", "oldest weekly", |t| {
            let week = t.iso_week();
            (week.year(), week.week(), 0, 0)
        }),
        (rules.monthly, "monthly", "oldest monthly", |t| {
            (t.year(), t.month(), 0, 0)
        }),
        (rules.yearly, "yearly", "oldest yearly", |t| (t.year(), 0, 0, 0)),
    ];
    let mut left: Vec<usize> = periods.iter().map(|p| p.0).collect();
    let mut last_bucket: Vec<Option<(i32, u32, u32, u32)>> = vec![None; periods.len()];
    let within_cutoff = rules
        .within
        .zip(newest_first.first())
        .map(|(within, newest)| within.before(newest.time, zone));

    let mut kept = Vec::new();
    for (index, run) in newest_first.iter().enumerate() {
        if index < rules.last {
            kept.push((run.name.as_str(), "last"));
        }
        if within_cutoff.is_some_and(|cutoff| run.time > cutoff) {
            kept.push((run.name.as_str(), "within"));
        }
        let is_oldest = index + 1 == newest_first.len();
        let local = run.time.with_timezone(&zone);
        for (rule, (_, reason, oldest_reason, bucket)) in periods.iter().enumerate() {
            if left[rule] == 0 {
                continue;
            }
            let key = bucket(local);
            if last_bucket[rule] != Some(key) {
                kept.push((run.name.as_str(), *reason));
            } else if is_oldest {
                kept.push((run.name.as_str(), *oldest_reason));
            } else {
                continue;
            }
            last_bucket[rule] = Some(key);
            left[rule] -= 1;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn within_parses_restic_durations_and_refuses_others() {
        assert_eq!(
            Within::parse("2y5m7d3h").unwrap(),
            Within {
                years: 2,
                months: 5,
                days: 7,
                hours: 3
            }
        );
        assert_eq!(Within::parse("36h").unwrap().hours, 36);
        for bad in ["", "5", "3h2d", "1w", "1y1y", "d"] {
            assert!(Within::parse(bad).is_err(), "{bad}");
        }
    }
}
