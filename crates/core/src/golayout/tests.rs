//! Every layout element, with the expected strings written out from Go's `time.Format` rules.

use chrono::{FixedOffset, NaiveDate, Utc};

use super::*;

/// Saturday 2026-03-07 04:05:06.123456789, seventh day of March, 66th day of the year.
fn at(hour: u32, nanos: u32) -> chrono::NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 3, 7)
        .and_then(|d| d.and_hms_nano_opt(hour, 5, 6, nanos))
        .expect("valid instant")
}

fn utc(hour: u32, nanos: u32) -> DateTime<Utc> {
    at(hour, nanos).and_utc()
}

fn fixed(seconds_east: i32, hour: u32, nanos: u32) -> DateTime<FixedOffset> {
    let offset = FixedOffset::east_opt(seconds_east).expect("valid offset");
    offset
        .from_local_datetime(&at(hour, nanos))
        .single()
        .expect("unambiguous")
}

#[track_caller]
fn check<Tz: TimeZone>(t: &DateTime<Tz>, cases: &[(&str, &str)])
where
    Tz::Offset: Display,
{
    for (layout, want) in cases {
        assert_eq!(format(t, layout), *want, "layout {layout:?}");
    }
}

#[test]
fn every_date_element() {
    check(
        &utc(4, 123_456_789),
        &[
            ("2006", "2026"),
            ("06", "26"),
            ("01", "03"),
            ("1", "3"),
            ("Jan", "Mar"),
            ("January", "March"),
            ("02", "07"),
            ("2", "7"),
            ("_2", " 7"),
            ("002", "066"),
            ("__2", " 66"),
            ("Mon", "Sat"),
            ("Monday", "Saturday"),
        ],
    );
    let late = NaiveDate::from_ymd_opt(2026, 12, 25)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("valid")
        .and_utc();
    check(
        &late,
        &[
            ("01 1 02 2 _2", "12 12 25 25 25"),
            ("002|__2", "359|359"),
            ("Jan January Mon", "Dec December Fri"),
        ],
    );
    let early = NaiveDate::from_ymd_opt(2026, 1, 5)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("valid")
        .and_utc();
    check(&early, &[("002|__2", "005|  5"), ("06", "26")]);
}

#[test]
fn years_are_padded_like_go() {
    let year = |y: i32| {
        NaiveDate::from_ymd_opt(y, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .expect("valid")
            .and_utc()
    };
    check(&year(7), &[("2006", "0007"), ("06", "07")]);
    check(&year(12345), &[("2006", "12345"), ("06", "45")]);
    check(&year(-5), &[("2006", "-0005"), ("06", "05")]);
}

#[test]
fn every_clock_element() {
    check(
        &utc(4, 123_456_789),
        &[
            ("15", "04"),
            ("03", "04"),
            ("3", "4"),
            ("04", "05"),
            ("4", "5"),
            ("05", "06"),
            ("5", "6"),
            ("PM", "AM"),
            ("pm", "am"),
        ],
    );
    check(&utc(16, 0), &[("15 03 3 PM pm", "16 04 4 PM pm")]);
    // Midnight and noon are both 12 on a 12-hour clock.
    check(&utc(0, 0), &[("15 03 3 PM", "00 12 12 AM")]);
    check(&utc(12, 0), &[("15 03 3 pm", "12 12 12 pm")]);
    check(&utc(23, 0), &[("3PM", "11PM")]);
}

#[test]
fn fractional_seconds() {
    let t = utc(4, 123_456_789);
    check(
        &t,
        &[
            (".0", ".1"),
            (".000", ".123"),
            (",000", ",123"),
            (".000000", ".123456"),
            (".000000000", ".123456789"),
            // Go never prints more than nine digits.
            (".000000000000", ".123456789"),
            (".9", ".1"),
            (".999", ".123"),
            (",999999999", ",123456789"),
            ("05.000", "06.123"),
        ],
    );
    let round = utc(4, 120_000_000);
    check(
        &round,
        &[(".000", ".120"), (".999", ".12"), (".9", ".1"), (".99999", ".12")],
    );
    let whole = utc(4, 0);
    check(&whole, &[(".000", ".000"), (".999", ""), ("05.999999999Z", "06Z")]);
    let tiny = utc(4, 1);
    check(&tiny, &[(".999", ""), (".000", ".000"), (".999999999", ".000000001")]);
    // A run followed by another digit is not a fractional second: ".0001" is ".00" then 01 (month).
    check(&t, &[(".0001", ".0003"), (".991", ".993")]);
}

#[test]
fn numeric_zones_in_a_fixed_offset() {
    let west = fixed(-(7 * 3600), 4, 0);
    check(
        &west,
        &[
            ("-0700", "-0700"),
            ("-07:00", "-07:00"),
            ("-07", "-07"),
            ("-070000", "-070000"),
            ("-07:00:00", "-07:00:00"),
            ("Z0700", "-0700"),
            ("Z07:00", "-07:00"),
            ("Z07", "-07"),
            ("Z070000", "-070000"),
            ("Z07:00:00", "-07:00:00"),
            // A fixed offset has no name: Go prints the -0700 form.
            ("MST", "-0700"),
        ],
    );
    let east = fixed(5 * 3600 + 30 * 60 + 15, 4, 0);
    check(
        &east,
        &[
            ("-0700", "+0530"),
            ("-07:00", "+05:30"),
            ("-07", "+05"),
            ("-070000", "+053015"),
            ("-07:00:00", "+05:30:15"),
            ("Z07:00:00", "+05:30:15"),
            ("MST", "+0530"),
        ],
    );
    let small_west = fixed(-(3600 + 2 * 60 + 3), 4, 0);
    check(&small_west, &[("-07:00:00", "-01:02:03"), ("Z0700", "-0102")]);
    // The fields are the local ones, not UTC's.
    check(&west, &[("2006-01-02T15:04:05Z07:00", "2026-03-07T04:05:06-07:00")]);
}

#[test]
fn zones_in_utc() {
    let t = utc(4, 0);
    check(
        &t,
        &[
            ("MST", "UTC"),
            ("-0700", "+0000"),
            ("-07:00", "+00:00"),
            ("-07", "+00"),
            ("-070000", "+000000"),
            ("-07:00:00", "+00:00:00"),
            ("Z0700", "Z"),
            ("Z07:00", "Z"),
            ("Z07", "Z"),
            ("Z070000", "Z"),
            ("Z07:00:00", "Z"),
        ],
    );
    // A zero fixed offset is still UTC for the Z forms, but has no name.
    check(&fixed(0, 4, 0), &[("Z07:00", "Z"), ("MST", "+0000")]);
}

#[test]
fn literal_text_and_go_quirks() {
    let t = utc(16, 123_456_789);
    check(
        &t,
        &[
            ("", ""),
            ("backup", "backup"),
            ("/mysql/", "/mysql/"),
            // "Mon" followed by a lower-case letter is text; so is "Jan" in "Janet".
            ("Month", "Month"),
            ("Janet", "Janet"),
            ("JanX", "MarX"),
            ("MonX", "SatX"),
            // "_2006" is a literal underscore followed by the year.
            ("x_2006", "x_2026"),
            ("_2_", " 7_"),
            // Lone digits are elements: 1 is the month, 3/4/5 are hour, minute, second.
            ("v1", "v3"),
            ("7 8 9 0", "7 8 9 0"),
            ("Z", "Z"),
            ("-", "-"),
            ("-08", "-08"),
            ("é2006ü", "é2026ü"),
        ],
    );
}

#[test]
fn go_predefined_layouts() {
    let t = fixed(-(7 * 3600), 16, 123_456_789);
    check(
        &t,
        &[
            ("01/02 03:04:05PM '06 -0700", "03/07 04:05:06PM '26 -0700"),
            ("Mon Jan _2 15:04:05 2006", "Sat Mar  7 16:05:06 2026"),
            ("Mon Jan 02 15:04:05 -0700 2006", "Sat Mar 07 16:05:06 -0700 2026"),
            ("02 Jan 06 15:04 -0700", "07 Mar 26 16:05 -0700"),
            ("Monday, 02-Jan-06 15:04:05 MST", "Saturday, 07-Mar-26 16:05:06 -0700"),
            (
                "2006-01-02T15:04:05.999999999Z07:00",
                "2026-03-07T16:05:06.123456789-07:00",
            ),
            ("3:04PM", "4:05PM"),
            ("Jan _2 15:04:05.000000", "Mar  7 16:05:06.123456"),
            ("2006-01-02 15:04:05", "2026-03-07 16:05:06"),
        ],
    );
    check(
        &utc(16, 0),
        &[(
            "2006-01-02 15:04:05.999999999 -0700 MST",
            "2026-03-07 16:05:06 +0000 UTC",
        )],
    );
}

#[test]
fn the_seed_layouts() {
    let t = NaiveDate::from_ymd_opt(2026, 11, 23)
        .and_then(|d| d.and_hms_opt(18, 57, 0))
        .expect("valid")
        .and_utc();
    check(
        &t,
        &[
            ("2006.01.02-15:04:05", "2026.11.23-18:57:00"),
            ("20060102-150405", "20261123-185700"),
        ],
    );
}
