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
mod tests;
