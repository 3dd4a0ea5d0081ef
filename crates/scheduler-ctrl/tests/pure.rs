//! The scheduler's decisions, from the YAML fixtures in tests/fixtures: next ticks in time
//! zones across DST changes, refused schedules, missed-tick planning, and cleanup plans
//! (history limits and GFS retention).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use stowage_api::Retention;
use stowage_scheduler_ctrl::retention::{self, Outcome, Policy, Rules, RunRecord};
use stowage_scheduler_ctrl::{Due, Schedule};

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> Vec<T> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TickCase {
    name: String,
    schedule: String,
    time_zone: Option<String>,
    after: DateTime<Utc>,
    next: Vec<DateTime<Utc>>,
}

#[test]
fn next_ticks_match_the_fixtures() {
    let cases: Vec<TickCase> = fixture("ticks.yaml");
    assert!(cases.len() >= 15);
    for case in cases {
        let schedule = Schedule::parse(&case.schedule, case.time_zone.as_deref())
            .unwrap_or_else(|err| panic!("{}: {err}", case.name));
        let mut at = case.after;
        let mut got = Vec::new();
        for _ in &case.next {
            at = schedule
                .next_after(at)
                .unwrap_or_else(|| panic!("{}: no next tick", case.name));
            got.push(at);
        }
        assert_eq!(got, case.next, "{}", case.name);
        // Backwards agrees with forwards: the latest tick at or before each tick is itself.
        for tick in &case.next {
            assert_eq!(
                schedule.latest_at_or_before(*tick),
                Some(*tick),
                "{}: back to {tick}",
                case.name
            );
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvalidCase {
    schedule: String,
    time_zone: Option<String>,
    says: String,
}

#[test]
fn invalid_schedules_are_refused_with_a_clear_message() {
    for case in fixture::<InvalidCase>("invalid.yaml") {
        let error = Schedule::parse(&case.schedule, case.time_zone.as_deref())
            .err()
            .unwrap_or_else(|| panic!("'{}' was accepted", case.schedule));
        assert_eq!(error.reason(), "InvalidSchedule");
        assert!(
            error.to_string().contains(&case.says),
            "'{}': '{error}' does not say '{}'",
            case.schedule,
            case.says
        );
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlanCase {
    name: String,
    schedule: String,
    time_zone: Option<String>,
    now: DateTime<Utc>,
    handled_until: DateTime<Utc>,
    starting_deadline_seconds: Option<i64>,
    due: Option<ExpectedDue>,
    next: DateTime<Utc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExpectedDue {
    run: Option<DateTime<Utc>>,
    too_late: Option<DateTime<Utc>>,
    missed_earlier: bool,
}

#[test]
fn missed_tick_planning_matches_the_fixtures() {
    for case in fixture::<PlanCase>("plans.yaml") {
        let schedule = Schedule::parse(&case.schedule, case.time_zone.as_deref()).unwrap();
        let deadline = case.starting_deadline_seconds.map(Duration::seconds);
        let plan = schedule.plan(case.now, case.handled_until, deadline);
        assert_eq!(plan.next, Some(case.next), "{}: next", case.name);
        match (plan.due, case.due) {
            (None, None) => {}
            (Some(Due::Run { tick, missed_earlier }), Some(want)) if want.run.is_some() => {
                assert_eq!(
                    (Some(tick), missed_earlier),
                    (want.run, want.missed_earlier),
                    "{}",
                    case.name
                );
            }
            (
                Some(Due::TooLate {
                    tick,
                    late_by,
                    missed_earlier,
                }),
                Some(want),
            ) if want.too_late.is_some() => {
                assert_eq!(
                    (Some(tick), missed_earlier),
                    (want.too_late, want.missed_earlier),
                    "{}",
                    case.name
                );
                assert_eq!(late_by, case.now - tick);
            }
            (got, _) => panic!("{}: planned {got:?}", case.name),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CleanupCase {
    name: String,
    zone: Option<String>,
    retention: Option<Retention>,
    #[serde(default = "three")]
    successful_limit: usize,
    #[serde(default = "one")]
    failed_limit: usize,
    series: Option<Series>,
    #[serde(default)]
    runs: Vec<FixtureRun>,
    kept: BTreeMap<String, Vec<String>>,
}

fn three() -> usize {
    3
}

fn one() -> usize {
    1
}

#[derive(Deserialize)]
struct Series {
    from: DateTime<Utc>,
    every: i64,
    count: i64,
}

#[derive(Deserialize)]
struct FixtureRun {
    name: String,
    time: DateTime<Utc>,
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    pinned: bool,
}

#[test]
fn cleanup_plans_match_the_fixtures() {
    let cases: Vec<CleanupCase> = fixture("retention.yaml");
    for case in cases {
        let mut runs: Vec<RunRecord> = case
            .runs
            .iter()
            .map(|run| RunRecord {
                name: run.name.clone(),
                time: run.time,
                outcome: match run.outcome.as_deref() {
                    None | Some("Succeeded") => Outcome::Succeeded,
                    Some("Failed") => Outcome::Failed,
                    Some("Active") => Outcome::Active,
                    Some(other) => panic!("{}: outcome {other}", case.name),
                },
                pinned: run.pinned,
            })
            .collect();
        if let Some(series) = &case.series {
            for index in 0..series.count {
                let time = series.from + Duration::seconds(series.every * index);
                runs.push(RunRecord {
                    name: time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    time,
                    outcome: Outcome::Succeeded,
                    pinned: false,
                });
            }
        }
        let policy = Policy {
            successful_limit: case.successful_limit,
            failed_limit: case.failed_limit,
            retention: case.retention.as_ref().map(|r| Rules::from_api(r).unwrap()),
            zone: case.zone.as_deref().unwrap_or("UTC").parse::<Tz>().unwrap(),
        };
        let cleanup = retention::plan(&runs, &policy);
        assert_eq!(cleanup.kept, case.kept, "{}: kept", case.name);
        let mut expected_delete: Vec<&RunRecord> = runs.iter().filter(|r| !case.kept.contains_key(&r.name)).collect();
        expected_delete.sort_by_key(|r| r.time);
        let expected_delete: Vec<String> = expected_delete.iter().map(|r| r.name.clone()).collect();
        assert_eq!(cleanup.delete, expected_delete, "{}: deleted (oldest first)", case.name);
    }
}
