//! Run names: `<schedule>-<unix time of the tick>`, a valid DNS label.
//!
//! The name is a function of the schedule and the tick alone, so a controller that
//! restarts between creating a run and recording it finds the run already there
//! (AlreadyExists) instead of firing the tick twice.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Longest run name: a DNS label, so the name also fits labels and the names of Pods
/// or Jobs a run's controller may derive from it.
pub const MAX_NAME: usize = 63;
const HASH_LEN: usize = 8;

/// The name of the run of `schedule` for `tick`. A schedule name that is too long, or
/// holds characters a DNS label may not (dots), is shortened and given a hash of the
/// full name so two schedules never share run names.
pub fn run_name(schedule: &str, tick: DateTime<Utc>) -> String {
    with_suffix(schedule, &format!("-{}", tick.timestamp()))
}

/// The name of the run a manual trigger `value` creates at `now`: the tick's name plus a
/// hash of the value, so two triggers within one second (or a trigger in the second of a
/// tick) are two runs, and the same value never makes a second one.
pub fn manual_run_name(schedule: &str, now: DateTime<Utc>, value: &str) -> String {
    let hash = hex::encode(Sha256::digest(value.as_bytes()));
    with_suffix(schedule, &format!("-{}-{}", now.timestamp(), &hash[..6]))
}

fn with_suffix(schedule: &str, suffix: &str) -> String {
    let clean: String = schedule
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    if clean == schedule && clean.len() + suffix.len() <= MAX_NAME {
        return format!("{clean}{suffix}");
    }
    let hash = hex::encode(Sha256::digest(schedule.as_bytes()));
    let room = MAX_NAME - suffix.len() - HASH_LEN - 1;
    let stem = clean[..clean.len().min(room)].trim_end_matches('-');
    let stem = if stem.is_empty() { "run" } else { stem };
    format!("{stem}-{}{suffix}", &hash[..HASH_LEN])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tick() -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_000_000, 0).unwrap()
    }

    fn is_dns_label(name: &str) -> bool {
        name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    #[test]
    fn manual_runs_in_one_second_get_distinct_names() {
        let first = manual_run_name("nightly", tick(), "first");
        let second = manual_run_name("nightly", tick(), "second");
        assert_ne!(first, second);
        assert_ne!(first, run_name("nightly", tick()));
        assert_eq!(first, manual_run_name("nightly", tick(), "first"));
        assert!(first.starts_with("nightly-1795000000-"), "{first}");
        let long = manual_run_name(&"x".repeat(80), tick(), "first");
        assert!(is_dns_label(&long), "{long}");
    }

    #[test]
    fn short_names_are_the_schedule_and_the_unix_time() {
        assert_eq!(run_name("nightly", tick()), "nightly-1795000000");
    }

    #[test]
    fn long_or_dotted_names_are_shortened_with_a_hash_and_stay_distinct() {
        let long = "a".repeat(60);
        let other = format!("{}b", "a".repeat(59));
        let (a, b) = (run_name(&long, tick()), run_name(&other, tick()));
        assert!(is_dns_label(&a) && is_dns_label(&b), "{a} {b}");
        assert_eq!(a.len(), 63);
        assert_ne!(a, b);
        assert!(a.ends_with("-1795000000"));
        let dotted = run_name("db.prod", tick());
        assert!(is_dns_label(&dotted) && dotted.starts_with("db-prod-"), "{dotted}");
        assert_ne!(dotted, run_name("db-prod", tick()));
        let edge = run_name(&format!("{}-{}", "x".repeat(42), "y".repeat(30)), tick());
        assert!(is_dns_label(&edge), "{edge}");
    }
}
