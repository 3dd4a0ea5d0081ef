//! Cron expressions in a time zone: parsing, the next tick, and which tick (if any) is due now.
//!
//! Pure: every function takes `now` from the caller, so the planning is tested without a
//! cluster and the controller's clock stays injectable.

use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::Error;

/// A schedule ready to compute ticks: the cron expression and the zone it is read in.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
}

impl Schedule {
    /// Reads `expression` (5 fields, an optional leading seconds field, `@hourly`…`@yearly`,
    /// an optional `CRON_TZ=<zone>` or `TZ=<zone>` prefix) in `time_zone` (IANA, default UTC).
    /// A prefix and a `time_zone` naming different zones are refused rather than guessed.
    pub fn parse(expression: &str, time_zone: Option<&str>) -> Result<Schedule, Error> {
        let (prefix_zone, expression) = split_zone_prefix(expression.trim());
        let zone_name = match (prefix_zone, time_zone.map(str::trim).filter(|z| !z.is_empty())) {
            (Some(prefix), Some(field)) if prefix != field => {
                return Err(Error::InvalidSchedule(format!(
                    "schedule says CRON_TZ={prefix} but timeZone is {field}: remove one of them"
                )));
            }
            (Some(zone), _) | (None, Some(zone)) => zone,
            (None, None) => "UTC",
        };
        let zone = Tz::from_str(zone_name).map_err(|_| {
            Error::InvalidSchedule(format!(
                "unknown time zone '{zone_name}': use an IANA name such as Europe/Berlin or America/New_York"
            ))
        })?;
        if expression.is_empty() {
            return Err(Error::InvalidSchedule(
                "schedule is empty: write e.g. `0 2 * * *`".into(),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|error| {
                Error::InvalidSchedule(format!(
                    "cannot read schedule '{expression}': {error}; write 5 fields (minute hour day-of-month \
                     month day-of-week), optionally a leading seconds field, or @hourly/@daily/@weekly/@monthly/@yearly"
                ))
            })?;
        let schedule = Schedule { cron, zone };
        // A pattern like `0 0 30 2 *` (30 February) parses but never fires: say so now
        // rather than schedule nothing forever.
        let probe = DateTime::from_timestamp(1_704_067_200, 0).unwrap_or_default(); // 2024-01-01
        if schedule.next_after(probe).is_none() {
            return Err(Error::InvalidSchedule(format!(
                "schedule '{expression}' never fires: check the day-of-month and month fields"
            )));
        }
        Ok(schedule)
    }

    /// The time zone ticks are computed in.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first tick strictly after `after`, or None if there is none within croner's
    /// search horizon (a pattern that never fires).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.zone), false)
            .ok()
            .map(|tick| tick.with_timezone(&Utc))
    }

    /// The latest tick at or before `at`. One backwards search, however many ticks lie
    /// between `at` and the last run: a schedule days behind is not enumerated.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&at.with_timezone(&self.zone), true)
            .ok()
            .map(|tick| tick.with_timezone(&Utc))
    }

    /// What to do at `now`, given that every tick up to `handled_until` (the schedule's
    /// creation, its last run or its last skipped tick) is dealt with.
    pub fn plan(&self, now: DateTime<Utc>, handled_until: DateTime<Utc>, starting_deadline: Option<Duration>) -> Plan {
        let next = self.next_after(now);
        let Some(tick) = self.latest_at_or_before(now).filter(|tick| *tick > handled_until) else {
            return Plan { due: None, next };
        };
        // Were there more ticks after `handled_until` than this one? Only for the message.
        let missed_earlier = self.next_after(handled_until).is_some_and(|first| first < tick);
        let late_by = now - tick;
        let due = match starting_deadline {
            Some(deadline) if late_by > deadline => Due::TooLate {
                tick,
                late_by,
                missed_earlier,
            },
            _ => Due::Run { tick, missed_earlier },
        };
        Plan { due: Some(due), next }
    }
}

/// The outcome of planning at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The tick to act on now, if any.
    pub due: Option<Due>,
    /// The next tick after now (None for a pattern that never fires again).
    pub next: Option<DateTime<Utc>>,
}

/// A tick that has come and is not handled yet. Only the latest tick counts: missed ones
/// before it are never run, so a controller that was down causes at most one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Create a run for `tick`.
    Run {
        tick: DateTime<Utc>,
        /// Earlier ticks since the last handled one were missed.
        missed_earlier: bool,
    },
    /// `tick` is past startingDeadlineSeconds: skip it.
    TooLate {
        tick: DateTime<Utc>,
        late_by: Duration,
        missed_earlier: bool,
    },
}

/// Splits a leading `CRON_TZ=<zone>` or `TZ=<zone>` from the expression.
fn split_zone_prefix(expression: &str) -> (Option<&str>, &str) {
    for prefix in ["CRON_TZ=", "TZ="] {
        if let Some(rest) = expression.strip_prefix(prefix) {
            let (zone, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            return (Some(zone), rest.trim());
        }
    }
    (None, expression)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_zone_prefix_and_a_different_time_zone_field_are_refused() {
        let error = Schedule::parse("CRON_TZ=Europe/Berlin 0 2 * * *", Some("UTC")).unwrap_err();
        assert!(error.to_string().contains("remove one"), "{error}");
        assert!(Schedule::parse("CRON_TZ=Europe/Berlin 0 2 * * *", Some("Europe/Berlin")).is_ok());
        assert!(Schedule::parse("TZ=Asia/Tokyo @daily", None).is_ok());
    }

    #[test]
    fn a_schedule_far_behind_plans_one_run_for_the_latest_tick() {
        let every_second = Schedule::parse("* * * * * *", None).unwrap();
        let now = utc("2026-11-23T12:00:00.5Z");
        // A year behind: tens of millions of missed ticks, one backwards search.
        let plan = every_second.plan(now, utc("2025-11-23T12:00:00Z"), None);
        assert_eq!(
            plan.due,
            Some(Due::Run {
                tick: utc("2026-11-23T12:00:00Z"),
                missed_earlier: true
            })
        );
        assert_eq!(plan.next, Some(utc("2026-11-23T12:00:01Z")));
    }
}
