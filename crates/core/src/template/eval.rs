//! Rendering: evaluates a checked pipeline. Only values whose type was unknown at parse time
//! (after `default` mixed two types, or a `printf` format that is not a literal) can fail here.

use chrono::DateTime;
use chrono_tz::Tz;

use super::printf::Format;
use super::{Call, Expr, Func, Pipeline, TemplateVars, Value, Var};
use crate::golayout;

impl Pipeline {
    pub(super) fn eval(&self, vars: &TemplateVars) -> Result<Value, String> {
        let mut value = self.first.eval(vars)?;
        for call in &self.then {
            value = call.eval(vars, Some(value))?;
        }
        Ok(value)
    }
}

impl Expr {
    fn eval(&self, vars: &TemplateVars) -> Result<Value, String> {
        Ok(match self {
            Expr::Var(Var::Name) => Value::Str(vars.name.clone()),
            Expr::Var(Var::Namespace) => Value::Str(vars.namespace.clone()),
            Expr::Var(Var::Kind) => Value::Str(vars.kind.clone()),
            Expr::Var(Var::ScheduleName) => Value::Str(vars.schedule_name.clone()),
            Expr::Str(s) => Value::Str(s.clone()),
            Expr::Int(n) => Value::Int(*n),
            Expr::Call(call) => call.eval(vars, None)?,
            Expr::Pipeline(pipeline) => pipeline.eval(vars)?,
        })
    }
}

impl Call {
    fn eval(&self, vars: &TemplateVars, piped: Option<Value>) -> Result<Value, String> {
        let mut args = self
            .args
            .iter()
            .map(|arg| arg.eval(vars))
            .collect::<Result<Vec<_>, _>>()?;
        args.extend(piped);
        let mut args = args.into_iter();
        let value = match self.func {
            Func::Now => Value::Time(vars.now),
            Func::Date | Func::DateInZone => {
                let layout = next_str(&mut args, "the layout of date")?;
                let time = match args.next() {
                    Some(Value::Time(t)) => t,
                    Some(Value::Int(seconds)) => DateTime::from_timestamp(seconds, 0)
                        .ok_or_else(|| format!("date: unix time {seconds} is out of range"))?,
                    other => {
                        return Err(format!(
                            "date needs a time or unix seconds, got {}",
                            describe(other.as_ref())
                        ));
                    }
                };
                if self.func == Func::Date {
                    Value::Str(golayout::format(&time, &layout))
                } else {
                    let zone = time_zone(&next_str(&mut args, "the zone of dateInZone")?)?;
                    Value::Str(golayout::format(&time.with_timezone(&zone), &layout))
                }
            }
            Func::UnixEpoch => match args.next() {
                Some(Value::Time(t)) => Value::Str(t.timestamp().to_string()),
                other => {
                    return Err(format!("unixEpoch needs a time, got {}", describe(other.as_ref())));
                }
            },
            Func::Printf => {
                let format = next_str(&mut args, "the format of printf")?;
                let rest: Vec<Value> = args.collect();
                let formatted = match &self.format {
                    Some(parsed) => parsed.apply(&rest),
                    None => Format::parse(&format).and_then(|parsed| parsed.apply(&rest)),
                };
                Value::Str(formatted.map_err(|err| format!("printf: {err}"))?)
            }
            Func::Lower => Value::Str(simple_case(
                &next_str(&mut args, "the argument of lower")?,
                char::to_lowercase,
            )),
            Func::Upper => Value::Str(simple_case(
                &next_str(&mut args, "the argument of upper")?,
                char::to_uppercase,
            )),
            Func::Trim => Value::Str(next_str(&mut args, "the argument of trim")?.trim().to_string()),
            Func::TrimPrefix => {
                let (prefix, s) = (
                    next_str(&mut args, "the prefix of trimPrefix")?,
                    next_str(&mut args, "the string of trimPrefix")?,
                );
                Value::Str(s.strip_prefix(prefix.as_str()).unwrap_or(&s).to_string())
            }
            Func::TrimSuffix => {
                let (suffix, s) = (
                    next_str(&mut args, "the suffix of trimSuffix")?,
                    next_str(&mut args, "the string of trimSuffix")?,
                );
                Value::Str(s.strip_suffix(suffix.as_str()).unwrap_or(&s).to_string())
            }
            Func::Replace => {
                let (old, new) = (
                    next_str(&mut args, "the old text of replace")?,
                    next_str(&mut args, "the new text of replace")?,
                );
                Value::Str(next_str(&mut args, "the string of replace")?.replace(&old, &new))
            }
            Func::Default => {
                let fallback = args.next().ok_or("missing argument")?;
                match args.next() {
                    // Sprig's empty: "" and 0 are empty; a time never is.
                    Some(Value::Str(s)) if s.is_empty() => fallback,
                    Some(Value::Int(0)) | None => fallback,
                    Some(given) => given,
                }
            }
        };
        Ok(value)
    }
}

/// Go's `strings.ToLower`/`ToUpper` map each character on its own and only to one character:
/// "ß" stays "ß" in upper case (Rust's full mapping would make it "SS").
fn simple_case<I: Iterator<Item = char>>(s: &str, map: fn(char) -> I) -> String {
    s.chars()
        .map(|c| {
            let mut mapped = map(c);
            match (mapped.next(), mapped.next()) {
                (Some(single), None) => single,
                _ => c,
            }
        })
        .collect()
}

/// A time zone by its IANA name; "" and "UTC" are UTC, as for Go's `time.LoadLocation`.
pub(super) fn time_zone(name: &str) -> Result<Tz, String> {
    match name {
        "" | "UTC" => Ok(chrono_tz::UTC),
        // Sprig's `date` uses Go's Local zone; ours is UTC, so "Local" would mislead.
        "Local" => {
            Err("time zone \"Local\" is not supported: name the zone, such as \"Europe/Berlin\" or \"UTC\"".to_string())
        }
        _ => name
            .parse::<Tz>()
            .map_err(|_| format!("unknown time zone {name:?}: use an IANA name such as \"Europe/Berlin\" or \"UTC\"")),
    }
}

fn next_str(args: &mut impl Iterator<Item = Value>, what: &str) -> Result<String, String> {
    args.next().ok_or("missing argument")?.into_str(what)
}

fn describe(value: Option<&Value>) -> &'static str {
    value.map_or("nothing", |v| v.kind().describe())
}
