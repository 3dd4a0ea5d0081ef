//! The part of Go's `fmt.Sprintf` that path templates need: verbs `%s %d %v %q %%` with the flags
//! `- + 0 space`, a width and a precision, following `fmt/print.go` and `fmt/format.go`.
//!
//! Where Go would print a marker such as `%!d(string=x)` or `%!s(MISSING)` into the result, we
//! refuse instead: a path with such a marker in it is never what the user meant.

use super::{Kind, Value};

/// A parsed format string.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Format {
    pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    Verb(Spec),
}

/// One `%…` directive.
#[derive(Clone, Debug, Default, PartialEq)]
struct Spec {
    verb: char,
    minus: bool,
    plus: bool,
    zero: bool,
    space: bool,
    width: Option<usize>,
    precision: Option<usize>,
}

impl Format {
    /// Parses a format string; unsupported verbs and flags are errors naming the directive.
    pub(super) fn parse(format: &str) -> Result<Format, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = format.char_indices().peekable();
        while let Some((start, c)) = chars.next() {
            if c != '%' {
                text.push(c);
                continue;
            }
            let mut spec = Spec::default();
            while let Some(&(_, flag)) = chars.peek() {
                match flag {
                    '-' => spec.minus = true,
                    '+' => spec.plus = true,
                    '0' => spec.zero = true,
                    ' ' => spec.space = true,
                    '#' => {
                        return Err(format!("the # flag is not supported in {}", rest(format, start)));
                    }
                    _ => break,
                }
                chars.next();
            }
            spec.width = number(&mut chars);
            if chars.peek().is_some_and(|&(_, c)| c == '.') {
                chars.next();
                spec.precision = Some(number(&mut chars).unwrap_or(0));
            }
            let Some((_, verb)) = chars.next() else {
                return Err(format!(
                    "format {format:?} ends in the middle of a directive ({})",
                    &format[start..]
                ));
            };
            match verb {
                '%' => text.push('%'),
                's' | 'd' | 'v' | 'q' => {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    spec.verb = verb;
                    pieces.push(Piece::Verb(spec));
                }
                '*' | '[' => {
                    return Err(format!(
                        "{} is not supported: write widths and argument order literally",
                        rest(format, start)
                    ));
                }
                other => {
                    return Err(format!(
                        "verb %{other} is not supported in path templates: use %s, %d, %v, %q or %%"
                    ));
                }
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Format { pieces })
    }

    fn specs(&self) -> impl Iterator<Item = &Spec> {
        self.pieces.iter().filter_map(|piece| match piece {
            Piece::Verb(spec) => Some(spec),
            Piece::Text(_) => None,
        })
    }

    /// Checks argument count and the types known before rendering (`Kind::Any` passes).
    pub(super) fn check(&self, args: &[Kind]) -> Result<(), String> {
        let verbs = self.specs().count();
        if verbs != args.len() {
            return Err(format!(
                "the format has {verbs} verb{} but {} argument{} follow{} it (a piped value counts as the last argument)",
                plural(verbs),
                args.len(),
                plural(args.len()),
                if args.len() == 1 { "s" } else { "" }
            ));
        }
        for (n, (spec, &kind)) in self.specs().zip(args).enumerate() {
            if kind != Kind::Any && !spec.accepts(kind) {
                return Err(format!(
                    "%{} cannot print argument {} ({})",
                    spec.verb,
                    n + 1,
                    kind.describe()
                ));
            }
        }
        Ok(())
    }

    /// Formats `args`, which must match the verbs (see [`Format::check`]).
    pub(super) fn apply(&self, args: &[Value]) -> Result<String, String> {
        self.check(&args.iter().map(Value::kind).collect::<Vec<_>>())?;
        let mut out = String::new();
        let mut args = args.iter();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Verb(spec) => {
                    let arg = args.next().ok_or("missing argument")?;
                    spec.print(&mut out, arg);
                }
            }
        }
        Ok(out)
    }
}

impl Spec {
    fn accepts(&self, kind: Kind) -> bool {
        match self.verb {
            's' | 'q' => matches!(kind, Kind::Str | Kind::Time),
            'd' => kind == Kind::Int,
            _ => true,
        }
    }

    fn print(&self, out: &mut String, arg: &Value) {
        match arg {
            Value::Int(n) => self.integer(out, *n),
            Value::Str(s) => self.string(out, s),
            // time.Time is a fmt.Stringer: %s, %v and %q print its String().
            Value::Time(_) => self.string(out, &arg.to_string()),
        }
    }

    fn string(&self, out: &mut String, s: &str) {
        let truncated = match self.precision {
            Some(p) => s.char_indices().nth(p).map_or(s, |(i, _)| &s[..i]),
            None => s,
        };
        let text = if self.verb == 'q' {
            quote(truncated, self.plus)
        } else {
            truncated.to_string()
        };
        // Since Go 1.23 the 0 flag is ignored for strings.
        self.pad(out, &text, false);
    }

    /// Go's `fmt.integer` for base 10. %v takes the + flag as "+v" and so prints no sign.
    fn integer(&self, out: &mut String, n: i64) {
        let plus = self.plus && self.verb == 'd';
        // Precision 0 and value 0 print nothing at all, not even padding.
        if self.precision == Some(0) && n == 0 {
            return;
        }
        let sign = if n < 0 {
            "-"
        } else if plus {
            "+"
        } else if self.space {
            " "
        } else {
            ""
        };
        let digits = n.unsigned_abs().to_string();
        // Two ways to ask for leading zeros: a precision, or the 0 flag with a width; the first wins.
        let min_digits = match (self.precision, self.width) {
            (Some(p), _) => p,
            (None, Some(w)) if self.zero && !self.minus => w.saturating_sub(sign.len()),
            _ => 0,
        };
        let zeros = "0".repeat(min_digits.saturating_sub(digits.len()));
        self.pad(out, &format!("{sign}{zeros}{digits}"), false);
    }

    /// Pads to the width, counting characters; zeros only ever go on the left.
    fn pad(&self, out: &mut String, text: &str, zero: bool) {
        let fill = self.width.unwrap_or(0).saturating_sub(text.chars().count());
        if self.minus {
            out.push_str(text);
            out.push_str(&" ".repeat(fill));
        } else {
            out.push_str(&(if zero { "0" } else { " " }).repeat(fill));
            out.push_str(text);
        }
    }
}

/// Go's `strconv.Quote` (or `QuoteToASCII` when `ascii`), for the characters paths contain.
fn quote(s: &str, ascii: bool) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if c < ' ' || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() || (ascii && !c.is_ascii()) => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn number(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> Option<usize> {
    let mut value: Option<usize> = None;
    while let Some(digit) = chars.peek().and_then(|&(_, c)| c.to_digit(10)) {
        chars.next();
        value = Some(value.unwrap_or(0).saturating_mul(10).saturating_add(digit as usize));
    }
    value
}

fn rest(format: &str, start: usize) -> String {
    let directive: String = format[start..].chars().take(4).collect();
    format!("{directive:?}")
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sprintf(format: &str, args: &[Value]) -> String {
        Format::parse(format)
            .and_then(|f| f.apply(args))
            .unwrap_or_else(|err| panic!("{format:?}: {err}"))
    }

    fn s(text: &str) -> Value {
        Value::Str(text.to_string())
    }

    #[test]
    fn verbs_flags_widths_like_go() {
        let cases: &[(&str, Value, &str)] = &[
            ("%s", s("abc"), "abc"),
            ("%v", s("abc"), "abc"),
            ("%q", s("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\""),
            ("%q", s("é\u{1}"), "\"é\\x01\""),
            ("%+q", s("é"), "\"\\u00e9\""),
            ("%5s", s("ab"), "   ab"),
            ("%-5s|", s("ab"), "ab   |"),
            ("%05s", s("ab"), "   ab"),
            ("%-05s|", s("ab"), "ab   |"),
            ("%.2s", s("héllo"), "hé"),
            ("%5.1s", s("xyz"), "    x"),
            ("%3s", s("long"), "long"),
            ("%d", Value::Int(42), "42"),
            ("%v", Value::Int(-42), "-42"),
            ("%02d", Value::Int(7), "07"),
            ("%02d", Value::Int(123), "123"),
            ("%05d", Value::Int(-42), "-0042"),
            ("%+d", Value::Int(5), "+5"),
            ("%+v", Value::Int(5), "5"),
            ("% d", Value::Int(5), " 5"),
            ("%+05d", Value::Int(5), "+0005"),
            ("%5d", Value::Int(42), "   42"),
            ("%-5d|", Value::Int(42), "42   |"),
            ("%-05d|", Value::Int(42), "42   |"),
            ("%.3d", Value::Int(7), "007"),
            ("%6.3d", Value::Int(7), "   007"),
            ("%06.3d", Value::Int(7), "   007"),
            ("%.0d", Value::Int(0), ""),
            ("%3.0d|", Value::Int(0), "|"),
            ("%d", Value::Int(i64::MIN), "-9223372036854775808"),
            ("100%% %s", s("x"), "100% x"),
            // %% takes no argument and ignores width.
            ("%5%%s", s("x"), "%x"),
        ];
        for (format, arg, want) in cases {
            assert_eq!(&sprintf(format, std::slice::from_ref(arg)), want, "format {format:?}");
        }
    }

    #[test]
    fn several_arguments_in_order() {
        assert_eq!(
            sprintf("/%s/%s-%03d.sql", &[s("ns"), s("db"), Value::Int(9)]),
            "/ns/db-009.sql"
        );
        assert_eq!(sprintf("no verbs", &[]), "no verbs");
    }

    #[test]
    fn refuses_what_go_would_print_as_garbage() {
        let refuse = |format: &str, args: &[Kind], want: &str| {
            let err = Format::parse(format).and_then(|f| f.check(args)).expect_err(format);
            assert!(err.contains(want), "{format:?}: {err:?} should contain {want:?}");
        };
        refuse("%s %s", &[Kind::Str], "2 verbs but 1 argument follows");
        refuse("%s", &[Kind::Str, Kind::Str], "1 verb but 2 arguments follow");
        refuse("%d", &[Kind::Str], "%d cannot print argument 1 (a string)");
        refuse("%s", &[Kind::Int], "%s cannot print argument 1 (an integer)");
        refuse("%q", &[Kind::Int], "%q cannot print argument 1");
        refuse("%x", &[Kind::Int], "verb %x is not supported");
        refuse("%#v", &[Kind::Int], "the # flag is not supported");
        refuse("%*d", &[Kind::Int], "is not supported");
        refuse("%[1]s", &[Kind::Str], "is not supported");
        refuse("abc%", &[], "ends in the middle of a directive");
        refuse("%-", &[], "ends in the middle of a directive");
    }
}
