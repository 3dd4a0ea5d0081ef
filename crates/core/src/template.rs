//! Storage path templates: the subset of Go's `text/template` and Sprig that users bring from
//! other backup tools, e.g. `{{ now | date "20060102-150405" | printf "/mysql/%s.sql.gz" }}`.
//!
//! Everything that can be checked is checked by [`PathTemplate::parse`], when a spec is
//! validated, and not when a backup runs: unknown functions and variables, argument counts,
//! argument types (every value has a type known before rendering), literals and `printf` formats.
//!
//! Grammar, as in Go: text and `{{ pipeline }}` actions, with `{{- ` and ` -}}` trimming the space
//! around them and `{{/* comments */}}`. A pipeline is commands separated by `|`; the value of
//! each command becomes the last argument of the next. Operands are the variables `.Name`,
//! `.Namespace`, `.Kind` and `.ScheduleName`, function calls, "strings" with Go escapes, `raw
//! strings`, integers and parenthesised pipelines.
//!
//! Functions: `now`, `date LAYOUT TIME` (Go reference-time layout, UTC; TIME may be unix
//! seconds), `dateInZone LAYOUT TIME ZONE` (an IANA zone such as "Europe/Berlin"), `unixEpoch TIME`, `printf FORMAT ARGS...` (`%s %d %v %q %%`, flags, widths),
//! `lower S`, `upper S`, `trim S`, `trimPrefix PREFIX S`, `trimSuffix SUFFIX S`,
//! `replace OLD NEW S` and `default DEFAULT VALUE` (VALUE unless it is "" or 0).
//!
//! Differences from Go on purpose: `now` is the scheduled time in UTC and carries no monotonic
//! clock reading, so `{{ now }}` prints `2026-11-23 18:57:00 +0000 UTC`; Sprig's `date` silently
//! uses the current time for a value it does not understand, we refuse it; where Go's `printf`
//! would print `%!d(string=x)` or `%!s(MISSING)` into the path, we refuse the template.

mod eval;
mod lex;
mod parse;
mod printf;

use std::fmt;

use chrono::{DateTime, Utc};

use crate::golayout;
use lex::Segment;
use parse::{Func, Var};
use printf::Format;

/// The values a path template can use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateVars {
    /// `now`: the time of the run (the scheduled time for scheduled runs).
    pub now: DateTime<Utc>,
    /// `.Name`: the name of the backup object.
    pub name: String,
    /// `.Namespace`: its namespace, empty for cluster-scoped kinds.
    pub namespace: String,
    /// `.Kind`: its kind, e.g. `ExecBackup`.
    pub kind: String,
    /// `.ScheduleName`: the BackupSchedule that created it, empty otherwise.
    pub schedule_name: String,
}

impl TemplateVars {
    /// Variables for a run at `now`, with every name empty.
    pub fn new(now: DateTime<Utc>) -> TemplateVars {
        TemplateVars {
            now,
            ..TemplateVars::default()
        }
    }
}

/// A path template that has been checked and can be rendered.
#[derive(Clone, Debug, PartialEq)]
pub struct PathTemplate {
    source: String,
    nodes: Vec<Node>,
}

/// What went wrong with a path template.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template is not valid; found when it is parsed.
    #[error("{problem} at line {line}, column {column} in {action}{}", help_suffix(.help))]
    Invalid {
        problem: String,
        line: usize,
        column: usize,
        action: String,
        help: Option<String>,
    },
    /// The template is valid but these variables cannot be rendered by it.
    #[error("cannot render {action}: {problem}")]
    Render { problem: String, action: String },
}

fn help_suffix(help: &Option<String>) -> String {
    help.as_ref().map(|h| format!(": {h}")).unwrap_or_default()
}

impl PathTemplate {
    /// Parses and checks a template.
    pub fn parse(source: &str) -> Result<PathTemplate, TemplateError> {
        let segments = lex::segments(source).map_err(|p| p.into_error(source))?;
        let mut nodes = Vec::with_capacity(segments.len());
        for segment in segments {
            nodes.push(match segment {
                Segment::Text(text) => Node::Text(text),
                Segment::Action(action) => {
                    let pipeline = parse::action(&action).map_err(|p| p.into_error(source))?;
                    Node::Action {
                        pipeline,
                        text: source[action.start..action.end].to_string(),
                    }
                }
            });
        }
        Ok(PathTemplate {
            source: source.to_string(),
            nodes,
        })
    }

    /// Renders the template with `vars`.
    pub fn render(&self, vars: &TemplateVars) -> Result<String, TemplateError> {
        let mut out = String::new();
        for node in &self.nodes {
            match node {
                Node::Text(text) => out.push_str(text),
                Node::Action { pipeline, text } => {
                    let value = pipeline.eval(vars).map_err(|problem| TemplateError::Render {
                        problem,
                        action: text.clone(),
                    })?;
                    out.push_str(&value.to_string());
                }
            }
        }
        Ok(out)
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl std::str::FromStr for PathTemplate {
    type Err = TemplateError;

    fn from_str(source: &str) -> Result<PathTemplate, TemplateError> {
        PathTemplate::parse(source)
    }
}

/// A problem found while parsing, before it is placed in the source.
#[derive(Debug)]
struct Problem {
    action_start: usize,
    pos: usize,
    message: String,
    help: Option<String>,
}

impl Problem {
    fn new(action_start: usize, pos: usize, message: impl Into<String>) -> Problem {
        Problem {
            action_start,
            pos,
            message: message.into(),
            help: None,
        }
    }

    fn help(mut self, help: impl Into<String>) -> Problem {
        self.help = Some(help.into());
        self
    }

    fn into_error(self, source: &str) -> TemplateError {
        let before = &source[..self.pos];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        // The action as far as its closing delimiter, shortened for long templates.
        let rest = &source[self.action_start..];
        let end = rest.find("}}").map_or(rest.len(), |i| i + 2);
        let mut action: String = rest[..end].chars().take(120).collect();
        if action.len() < end {
            action.push('…');
        }
        TemplateError::Invalid {
            problem: self.message,
            line,
            column,
            action,
            help: self.help,
        }
    }
}

/// The type of a value, known at parse time (`Any` only after `default` mixes two types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    Time,
    Any,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "an integer",
            Kind::Time => "a time",
            Kind::Any => "a value",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Str(String),
    Int(i64),
    Time(DateTime<Utc>),
}

impl Value {
    fn kind(&self) -> Kind {
        match self {
            Value::Str(_) => Kind::Str,
            Value::Int(_) => Kind::Int,
            Value::Time(_) => Kind::Time,
        }
    }

    fn into_str(self, what: &str) -> Result<String, String> {
        match self {
            Value::Str(s) => Ok(s),
            other => Err(format!("{what} must be a string, got {}", other.kind().describe())),
        }
    }
}

/// How Go's template engine prints a value: time.Time through its String method.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Int(n) => write!(f, "{n}"),
            Value::Time(t) => f.write_str(&golayout::format(t, "2006-01-02 15:04:05.999999999 -0700 MST")),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Text(String),
    Action { pipeline: Pipeline, text: String },
}

#[derive(Clone, Debug, PartialEq)]
struct Pipeline {
    first: Expr,
    /// Calls that receive the previous value as their last argument.
    then: Vec<Call>,
}

#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Var(Var),
    Str(String),
    Int(i64),
    Call(Call),
    Pipeline(Box<Pipeline>),
}

#[derive(Clone, Debug, PartialEq)]
struct Call {
    func: Func,
    args: Vec<Expr>,
    /// printf's format, parsed in advance when it is a literal.
    format: Option<Format>,
}

#[cfg(test)]
mod tests;
