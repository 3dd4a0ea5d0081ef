//! Go's `time.Format` reference-time layouts ("2006-01-02T15:04:05Z07:00").
//!
//! Users bring path templates from Go tools (`{{ now | date "20060102-150405" }}`), so the layout
//! language is ported element for element from Go's `src/time/format.go`: the same scan order
//! (`nextStdChunk`), the same padding, the same quirks (`1` is the month, `_2006` is a literal `_`
//! then the year, `Month` is literal because `Mon` must not be followed by a lower-case letter).
//! Anything that is not a layout element is copied through verbatim, as in Go.

use std::fmt::Display;

use chrono::{DateTime, Datelike, Offset, TimeZone, Timelike};

/// One layout element, named as in Go's `std*` constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Std {
    LongMonth,            // January
    Month,                // Jan
    NumMonth,             // 1
    ZeroMonth,            // 01
    LongWeekDay,          // Monday
    WeekDay,              // Mon
    Day,                  // 2
    UnderDay,             // _2
    ZeroDay,              // 02
    UnderYearDay,         // __2
    ZeroYearDay,          // 002
    Hour,                 // 15
    Hour12,               // 3
    ZeroHour12,           // 03
    Minute,               // 4
    ZeroMinute,           // 04
    Second,               // 5
    ZeroSecond,           // 05
    LongYear,             // 2006
    Year,                 // 06
    UpperPm,              // PM
    LowerPm,              // pm
    ZoneName,             // MST
    Iso8601,              // Z0700
    Iso8601Seconds,       // Z070000
    Iso8601Short,         // Z07
    Iso8601Colon,         // Z07:00
    Iso8601ColonSeconds,  // Z07:00:00
    NumZone,              // -0700
    NumZoneSeconds,       // -070000
    NumZoneShort,         // -07
    NumZoneColon,         // -07:00
    NumZoneColonSeconds,  // -07:00:00
    FracZeros(u8, usize), // .000 or ,000: separator, digits; trailing zeros kept
    FracNines(u8, usize), // .999 or ,999: separator, digits; trailing zeros removed
}

/// `01`..`06` in Go's `std0x` order.
const STD_0X: [Std; 6] = [
    Std::ZeroMonth,
    Std::ZeroDay,
    Std::ZeroHour12,
    Std::ZeroMinute,
    Std::ZeroSecond,
    Std::Year,
];

/// Formats `t` with a Go reference-time layout, exactly as Go's `t.Format(layout)` would.
///
/// `MST` prints the zone's abbreviation as the offset type displays it (`UTC` for [`chrono::Utc`],
/// the tz abbreviation for `chrono_tz` zones); a [`chrono::FixedOffset`] has no name, so it prints
/// `-0700` style, like a Go `time.FixedZone("", …)`.
pub fn format<Tz: TimeZone>(t: &DateTime<Tz>, layout: &str) -> String
where
    Tz::Offset: Display,
{
    let offset_seconds = t.offset().fix().local_minus_utc();
    let zone_name = zone_name(&t.offset().to_string());
    let mut out = String::with_capacity(layout.len() + 10);
    let mut rest = layout;
    while !rest.is_empty() {
        let (prefix_len, found) = next_std_chunk(rest);
        out.push_str(&rest[..prefix_len]);
        let Some((std, len)) = found else { break };
        rest = &rest[prefix_len + len..];
        append_std(&mut out, t, std, offset_seconds, zone_name.as_deref());
    }
    out
}

/// The zone's name for `MST`, or None when the offset has no name (a bare `+05:30`).
fn zone_name(displayed: &str) -> Option<String> {
    let bytes = displayed.as_bytes();
    let numeric = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
    let bare_offset = matches!(bytes.first(), Some(b'+' | b'-'))
        && (bytes.len() == 6 || bytes.len() == 9)
        && numeric(1..3)
        && bytes[3] == b':'
        && numeric(4..6)
        && (bytes.len() == 6 || (bytes[6] == b':' && numeric(7..9)));
    if bare_offset || displayed.is_empty() {
        None
    } else {
        Some(displayed.to_string())
    }
}

/// Finds the first layout element in `layout`: returns the length of the literal text before it
/// and the element with its length, or None when the rest is all literal. A port of Go's
/// `nextStdChunk`; the order of the checks matters and follows Go.
fn next_std_chunk(layout: &str) -> (usize, Option<(Std, usize)>) {
    let b = layout.as_bytes();
    let has = |i: usize, s: &str| b.len() >= i + s.len() && &b[i..i + s.len()] == s.as_bytes();
    let lower_at = |i: usize| b.get(i).is_some_and(u8::is_ascii_lowercase);
    for i in 0..b.len() {
        let found = match b[i] {
            b'J' if has(i, "Jan") => {
                if has(i, "January") {
                    Some((Std::LongMonth, 7))
                } else if !lower_at(i + 3) {
                    Some((Std::Month, 3))
                } else {
                    None
                }
            }
            b'M' if has(i, "Mon") => {
                if has(i, "Monday") {
                    Some((Std::LongWeekDay, 6))
                } else if !lower_at(i + 3) {
                    Some((Std::WeekDay, 3))
                } else {
                    None
                }
            }
            b'M' if has(i, "MST") => Some((Std::ZoneName, 3)),
            b'0' if b.get(i + 1).is_some_and(|c| (b'1'..=b'6').contains(c)) => {
                Some((STD_0X[usize::from(b[i + 1] - b'1')], 2))
            }
            b'0' if has(i, "002") => Some((Std::ZeroYearDay, 3)),
            b'1' if has(i, "15") => Some((Std::Hour, 2)),
            b'1' => Some((Std::NumMonth, 1)),
            b'2' if has(i, "2006") => Some((Std::LongYear, 4)),
            b'2' => Some((Std::Day, 1)),
            // "_2006" is a literal underscore followed by the year.
            b'_' if has(i, "_2006") => return (i + 1, Some((Std::LongYear, 4))),
            b'_' if has(i, "_2") => Some((Std::UnderDay, 2)),
            b'_' if has(i, "__2") => Some((Std::UnderYearDay, 3)),
            b'3' => Some((Std::Hour12, 1)),
            b'4' => Some((Std::Minute, 1)),
            b'5' => Some((Std::Second, 1)),
            b'P' if has(i, "PM") => Some((Std::UpperPm, 2)),
            b'p' if has(i, "pm") => Some((Std::LowerPm, 2)),
            b'-' => first_zone(
                &has,
                i,
                "-",
                [
                    Std::NumZoneSeconds,
                    Std::NumZoneColonSeconds,
                    Std::NumZone,
                    Std::NumZoneColon,
                    Std::NumZoneShort,
                ],
            ),
            b'Z' => first_zone(
                &has,
                i,
                "Z",
                [
                    Std::Iso8601Seconds,
                    Std::Iso8601ColonSeconds,
                    Std::Iso8601,
                    Std::Iso8601Colon,
                    Std::Iso8601Short,
                ],
            ),
            sep @ (b'.' | b',') if matches!(b.get(i + 1), Some(b'0' | b'9')) => {
                let digit = b[i + 1];
                let run = b[i + 1..].iter().take_while(|&&c| c == digit).count();
                // The run must end the number: ".0001" is not a fractional second.
                if b.get(i + 1 + run).is_some_and(u8::is_ascii_digit) {
                    None
                } else if digit == b'0' {
                    Some((Std::FracZeros(sep, run), run + 1))
                } else {
                    Some((Std::FracNines(sep, run), run + 1))
                }
            }
            _ => None,
        };
        if let Some(found) = found {
            return (i, Some(found));
        }
    }
    (b.len(), None)
}

/// The zone elements after a `-` or `Z`, longest first in Go's order: 070000, 07:00:00, 0700, 07:00, 07.
fn first_zone(has: &dyn Fn(usize, &str) -> bool, i: usize, lead: &str, stds: [Std; 5]) -> Option<(Std, usize)> {
    ["070000", "07:00:00", "0700", "07:00", "07"]
        .iter()
        .zip(stds)
        .find(|(tail, _)| has(i, &format!("{lead}{tail}")))
        .map(|(tail, std)| (std, tail.len() + 1))
}

/// Appends one element, as Go's `appendFormat` does.
fn append_std<Tz: TimeZone>(out: &mut String, t: &DateTime<Tz>, std: Std, offset: i32, zone_name: Option<&str>) {
    let hour = t.hour();
    let hour12 = match hour % 12 {
        0 => 12,
        h => h,
    };
    // chrono keeps a leap second as nanoseconds >= 1e9; Go has no leap seconds.
    let nanos = t.nanosecond() % 1_000_000_000;
    match std {
        Std::LongYear => append_int(out, i64::from(t.year()), 4),
        Std::Year => append_int(out, i64::from(t.year().unsigned_abs() % 100), 2),
        Std::LongMonth => out.push_str(MONTHS[t.month0() as usize]),
        Std::Month => out.push_str(&MONTHS[t.month0() as usize][..3]),
        Std::NumMonth => append_int(out, i64::from(t.month()), 0),
        Std::ZeroMonth => append_int(out, i64::from(t.month()), 2),
        Std::LongWeekDay => out.push_str(WEEKDAYS[t.weekday().num_days_from_sunday() as usize]),
        Std::WeekDay => out.push_str(&WEEKDAYS[t.weekday().num_days_from_sunday() as usize][..3]),
        Std::Day => append_int(out, i64::from(t.day()), 0),
        Std::UnderDay => {
            if t.day() < 10 {
                out.push(' ');
            }
            append_int(out, i64::from(t.day()), 0);
        }
        Std::ZeroDay => append_int(out, i64::from(t.day()), 2),
        Std::UnderYearDay => {
            let yday = t.ordinal();
            if yday < 100 {
                out.push(' ');
            }
            if yday < 10 {
                out.push(' ');
            }
            append_int(out, i64::from(yday), 0);
        }
        Std::ZeroYearDay => append_int(out, i64::from(t.ordinal()), 3),
        Std::Hour => append_int(out, i64::from(hour), 2),
        Std::Hour12 => append_int(out, i64::from(hour12), 0),
        Std::ZeroHour12 => append_int(out, i64::from(hour12), 2),
        Std::Minute => append_int(out, i64::from(t.minute()), 0),
        Std::ZeroMinute => append_int(out, i64::from(t.minute()), 2),
        Std::Second => append_int(out, i64::from(t.second()), 0),
        Std::ZeroSecond => append_int(out, i64::from(t.second()), 2),
        Std::UpperPm => out.push_str(if hour >= 12 { "PM" } else { "AM" }),
        Std::LowerPm => out.push_str(if hour >= 12 { "pm" } else { "am" }),
        Std::ZoneName => match zone_name {
            Some(name) => out.push_str(name),
            // No name known for this zone, but one must be printed: Go uses the -0700 form.
            None => append_offset(out, offset, false, false, true),
        },
        Std::Iso8601 | Std::Iso8601Seconds | Std::Iso8601Short | Std::Iso8601Colon | Std::Iso8601ColonSeconds
            if offset == 0 =>
        {
            out.push('Z');
        }
        Std::Iso8601 | Std::NumZone => append_offset(out, offset, false, false, true),
        Std::Iso8601Seconds | Std::NumZoneSeconds => append_offset(out, offset, false, true, true),
        Std::Iso8601Short | Std::NumZoneShort => append_offset(out, offset, false, false, false),
        Std::Iso8601Colon | Std::NumZoneColon => append_offset(out, offset, true, false, true),
        Std::Iso8601ColonSeconds | Std::NumZoneColonSeconds => append_offset(out, offset, true, true, true),
        Std::FracZeros(sep, digits) => append_fraction(out, nanos, sep, digits, false),
        Std::FracNines(sep, digits) => append_fraction(out, nanos, sep, digits, true),
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// `±hh[:]mm[[:]ss]`; Go drops the minutes for the short forms and adds seconds only when asked.
fn append_offset(out: &mut String, offset: i32, colon: bool, seconds: bool, minutes: bool) {
    out.push(if offset < 0 { '-' } else { '+' });
    let abs = i64::from(offset).abs();
    append_int(out, abs / 3600, 2);
    if colon {
        out.push(':');
    }
    if minutes {
        append_int(out, abs / 60 % 60, 2);
    }
    if seconds {
        if colon {
            out.push(':');
        }
        append_int(out, abs % 60, 2);
    }
}

/// A fractional second with `digits` places (Go prints at most nine); with `trim`, trailing zeros
/// and then a bare separator are removed, and nothing at all is printed for a whole second.
fn append_fraction(out: &mut String, nanos: u32, separator: u8, digits: usize, trim: bool) {
    if trim && (digits == 0 || nanos == 0) {
        return;
    }
    let all = format!("{nanos:09}");
    let mut fraction = &all[..digits.min(9)];
    if trim {
        fraction = fraction.trim_end_matches('0');
    }
    if !fraction.is_empty() || !trim {
        out.push(char::from(separator));
        out.push_str(fraction);
    }
}

/// Go's `appendInt`: a minus sign for negatives, then the digits zero-padded to `width`.
fn append_int(out: &mut String, value: i64, width: usize) {
    if value < 0 {
        out.push('-');
    }
    out.push_str(&format!("{:0width$}", value.unsigned_abs()));
}

#[cfg(test)]
mod tests {
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
}
