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
//! seconds), `unixEpoch TIME`, `printf FORMAT ARGS...` (`%s %d %v %q %%`, flags, widths),
//! `lower S`, `upper S`, `trim S`, `trimPrefix PREFIX S`, `trimSuffix SUFFIX S`,
//! `replace OLD NEW S` and `default DEFAULT VALUE` (VALUE unless it is "" or 0).
//!
//! Differences from Go on purpose: `now` is the scheduled time in UTC and carries no monotonic
//! clock reading, so `{{ now }}` prints `2026-11-23 18:57:00 +0000 UTC`; Sprig's `date` silently
//! uses the current time for a value it does not understand, we refuse it; where Go's `printf`
//! would print `%!d(string=x)` or `%!s(MISSING)` into the path, we refuse the template.

mod eval;
mod lex;
mod printf;

use std::fmt;

use chrono::{DateTime, Utc};

use crate::golayout;
use lex::{Segment, Token, TokenKind};
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
                    let mut parser = Parser {
                        tokens: &action.tokens,
                        next: 0,
                        start: action.start,
                        end: action.end,
                    };
                    let typed = parser.pipeline(None).map_err(|p| p.into_error(source))?;
                    Node::Action {
                        pipeline: typed.pipeline,
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
                    let value = pipeline
                        .eval(vars)
                        .map_err(|problem| TemplateError::Render {
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
            other => Err(format!(
                "{what} must be a string, got {}",
                other.kind().describe()
            )),
        }
    }
}

/// How Go's template engine prints a value: time.Time through its String method.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Int(n) => write!(f, "{n}"),
            Value::Time(t) => f.write_str(&golayout::format(
                t,
                "2006-01-02 15:04:05.999999999 -0700 MST",
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Text(String),
    Action { pipeline: Pipeline, text: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    Name,
    Namespace,
    Kind,
    ScheduleName,
}

const VARS: [(&str, Var); 4] = [
    ("Name", Var::Name),
    ("Namespace", Var::Namespace),
    ("Kind", Var::Kind),
    ("ScheduleName", Var::ScheduleName),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Func {
    Now,
    Date,
    UnixEpoch,
    Printf,
    Lower,
    Upper,
    Trim,
    TrimPrefix,
    TrimSuffix,
    Replace,
    Default,
}

/// What a parameter accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Param {
    Str,
    Time,
    TimeOrUnix,
    Any,
}

impl Param {
    fn accepts(self, kind: Kind) -> bool {
        match self {
            Param::Str => kind == Kind::Str,
            Param::Time => kind == Kind::Time,
            Param::TimeOrUnix => matches!(kind, Kind::Time | Kind::Int),
            Param::Any => true,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Param::Str => "a string",
            Param::Time => "a time (such as now)",
            Param::TimeOrUnix => "a time (such as now) or unix seconds",
            Param::Any => "a value",
        }
    }
}

struct FuncSpec {
    func: Func,
    name: &'static str,
    params: &'static [Param],
    /// printf takes any number of values after its format.
    variadic: bool,
    usage: &'static str,
}

const FUNCS: [FuncSpec; 11] = [
    FuncSpec {
        func: Func::Now,
        name: "now",
        params: &[],
        variadic: false,
        usage: "now",
    },
    FuncSpec {
        func: Func::Date,
        name: "date",
        params: &[Param::Str, Param::TimeOrUnix],
        variadic: false,
        usage: "date LAYOUT TIME",
    },
    FuncSpec {
        func: Func::UnixEpoch,
        name: "unixEpoch",
        params: &[Param::Time],
        variadic: false,
        usage: "unixEpoch TIME",
    },
    FuncSpec {
        func: Func::Printf,
        name: "printf",
        params: &[Param::Str],
        variadic: true,
        usage: "printf FORMAT ARGS...",
    },
    FuncSpec {
        func: Func::Lower,
        name: "lower",
        params: &[Param::Str],
        variadic: false,
        usage: "lower STRING",
    },
    FuncSpec {
        func: Func::Upper,
        name: "upper",
        params: &[Param::Str],
        variadic: false,
        usage: "upper STRING",
    },
    FuncSpec {
        func: Func::Trim,
        name: "trim",
        params: &[Param::Str],
        variadic: false,
        usage: "trim STRING",
    },
    FuncSpec {
        func: Func::TrimPrefix,
        name: "trimPrefix",
        params: &[Param::Str, Param::Str],
        variadic: false,
        usage: "trimPrefix PREFIX STRING",
    },
    FuncSpec {
        func: Func::TrimSuffix,
        name: "trimSuffix",
        params: &[Param::Str, Param::Str],
        variadic: false,
        usage: "trimSuffix SUFFIX STRING",
    },
    FuncSpec {
        func: Func::Replace,
        name: "replace",
        params: &[Param::Str, Param::Str, Param::Str],
        variadic: false,
        usage: "replace OLD NEW STRING",
    },
    FuncSpec {
        func: Func::Default,
        name: "default",
        params: &[Param::Any, Param::Any],
        variadic: false,
        usage: "default DEFAULT VALUE",
    },
];

/// Go template keywords we do not support, refused by name rather than as unknown functions.
const KEYWORDS: [&str; 13] = [
    "if", "else", "end", "range", "with", "define", "template", "block", "break", "continue",
    "true", "false", "nil",
];

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

struct Typed {
    pipeline: Pipeline,
    kind: Kind,
}

/// Recursive descent over the tokens of one action.
struct Parser<'a> {
    tokens: &'a [Token],
    next: usize,
    start: usize,
    /// Offset just past the action's closing delimiter.
    end: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next)
    }

    /// Where the next token is, or the closing delimiter when there is none.
    fn here(&self) -> usize {
        self.peek().map_or(self.end.saturating_sub(2), |t| t.pos)
    }

    fn problem(&self, pos: usize, message: impl Into<String>) -> Problem {
        Problem::new(self.start, pos, message)
    }

    /// pipeline := command ('|' command)*, ended by the action's end or, when `open` (the
    /// position of a '(') is given, by ')'.
    fn pipeline(&mut self, open: Option<usize>) -> Result<Typed, Problem> {
        let (first, mut kind) = self.command(None)?;
        let mut then = Vec::new();
        loop {
            let Some(token) = self.peek() else {
                if let Some(open) = open {
                    return Err(self.problem(open, "unclosed parenthesis: expected \")\""));
                }
                break;
            };
            match token.kind {
                TokenKind::Pipe => {
                    self.next += 1;
                    let pos = self.here();
                    let (expr, next_kind) = self.command(Some(kind))?;
                    let Expr::Call(call) = expr else {
                        return Err(self.problem(pos, "expected a function after \"|\""));
                    };
                    then.push(call);
                    kind = next_kind;
                }
                TokenKind::Close if open.is_some() => {
                    self.next += 1;
                    break;
                }
                TokenKind::Close => {
                    return Err(self.problem(token.pos, "unexpected \")\": no parenthesis is open"));
                }
                _ => return Err(self.problem(token.pos, "unexpected token after command")),
            }
        }
        Ok(Typed {
            pipeline: Pipeline { first, then },
            kind,
        })
    }

    /// command := function operand* | operand. `piped` is the type of the value a '|' hands in.
    fn command(&mut self, piped: Option<Kind>) -> Result<(Expr, Kind), Problem> {
        let Some(head) = self.peek().cloned() else {
            return Err(self.problem(self.here(), "missing value for command"));
        };
        if let TokenKind::Ident(name) = &head.kind {
            let spec = self.function(name, head.pos)?;
            self.next += 1;
            let mut args = Vec::new();
            let mut kinds = Vec::new();
            while let Some(token) = self.peek() {
                if matches!(token.kind, TokenKind::Pipe | TokenKind::Close) {
                    break;
                }
                let (arg, kind) = self.operand()?;
                args.push(arg);
                kinds.push(kind);
            }
            kinds.extend(piped);
            let (call, kind) = self.check_call(spec, head.pos, args, &kinds)?;
            return Ok((Expr::Call(call), kind));
        }
        if matches!(head.kind, TokenKind::Pipe | TokenKind::Close) {
            return Err(self.problem(head.pos, "missing value for command"));
        }
        let (expr, kind) = self.operand()?;
        let what = describe_operand(&head.kind);
        if piped.is_some() {
            return Err(self.problem(
                head.pos,
                format!("cannot pipe a value into {what}: only a function can receive one"),
            ));
        }
        if let Some(extra) = self
            .peek()
            .filter(|t| !matches!(t.kind, TokenKind::Pipe | TokenKind::Close))
        {
            return Err(self.problem(
                extra.pos,
                format!("{what} is not a function and cannot take arguments"),
            ));
        }
        Ok((expr, kind))
    }

    /// operand := .Field | "string" | integer | function (called without arguments) | '(' pipeline ')'
    fn operand(&mut self) -> Result<(Expr, Kind), Problem> {
        let Some(token) = self.peek().cloned() else {
            return Err(self.problem(self.here(), "missing value for command"));
        };
        // Operands are separated by space, as in Go: `printf"%s"` is a mistake, `(now)` and `a|b` are not.
        let after_operand = self.next > 0
            && !matches!(
                self.tokens[self.next - 1].kind,
                TokenKind::Open | TokenKind::Pipe
            );
        if !token.spaced && after_operand {
            return Err(self.problem(
                token.pos,
                format!("missing space before {}", describe_operand(&token.kind)),
            ));
        }
        self.next += 1;
        match token.kind {
            TokenKind::Field(path) => self
                .field(&path, token.pos)
                .map(|var| (Expr::Var(var), Kind::Str)),
            TokenKind::Str(s) => Ok((Expr::Str(s), Kind::Str)),
            TokenKind::Int(n) => Ok((Expr::Int(n), Kind::Int)),
            TokenKind::Ident(name) => {
                let spec = self.function(&name, token.pos)?;
                let (call, kind) = self.check_call(spec, token.pos, Vec::new(), &[])?;
                Ok((Expr::Call(call), kind))
            }
            TokenKind::Open => {
                let typed = self.pipeline(Some(token.pos))?;
                Ok((Expr::Pipeline(Box::new(typed.pipeline)), typed.kind))
            }
            TokenKind::Pipe | TokenKind::Close => {
                Err(self.problem(token.pos, "missing value for command"))
            }
        }
    }

    fn field(&self, path: &str, pos: usize) -> Result<Var, Problem> {
        let (head, tail) = path
            .split_once('.')
            .map_or((path, None), |(h, t)| (h, Some(t)));
        let known = VARS
            .iter()
            .map(|(name, _)| format!(".{name}"))
            .collect::<Vec<_>>()
            .join(", ");
        let Some(&(name, var)) = VARS.iter().find(|(name, _)| *name == head) else {
            let problem = self.problem(pos, format!("unknown variable \".{head}\""));
            return Err(
                match VARS
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(head))
                {
                    Some((name, _)) => {
                        problem.help(format!("did you mean .{name}? (names are case-sensitive)"))
                    }
                    None => problem.help(format!("known variables are {known}")),
                },
            );
        };
        match tail {
            Some(tail) => Err(self.problem(
                pos,
                format!(".{name} is a string and has no field \"{tail}\""),
            )),
            None => Ok(var),
        }
    }

    fn function(&self, name: &str, pos: usize) -> Result<&'static FuncSpec, Problem> {
        if let Some(spec) = FUNCS.iter().find(|f| f.name == name) {
            return Ok(spec);
        }
        if KEYWORDS.contains(&name) {
            return Err(self.problem(pos, format!("\"{name}\" is not supported in path templates")).help(
                "path templates have no control structures, booleans or nil: use functions such as default",
            ));
        }
        let known = FUNCS.iter().map(|f| f.name).collect::<Vec<_>>().join(", ");
        Err(self
            .problem(pos, format!("unknown function \"{name}\""))
            .help(format!("known functions are {known}")))
    }

    /// Checks argument count and types (the piped value, if any, is the last of `kinds`).
    fn check_call(
        &self,
        spec: &FuncSpec,
        pos: usize,
        args: Vec<Expr>,
        kinds: &[Kind],
    ) -> Result<(Call, Kind), Problem> {
        let want = spec.params.len();
        if kinds.len() != want && !(spec.variadic && kinds.len() > want) {
            let want = if spec.variadic {
                format!("at least {want}")
            } else {
                want.to_string()
            };
            return Err(self
                .problem(
                    pos,
                    format!(
                        "wrong number of arguments for {}: want {want}, got {}",
                        spec.name,
                        kinds.len()
                    ),
                )
                .help(format!(
                    "usage: {} (a piped value is the last argument)",
                    spec.usage
                )));
        }
        for (n, (param, kind)) in spec.params.iter().zip(kinds).enumerate() {
            if *kind != Kind::Any && !param.accepts(*kind) {
                return Err(self.problem(
                    pos,
                    format!(
                        "argument {} of {} must be {}, got {}",
                        n + 1,
                        spec.name,
                        param.describe(),
                        kind.describe()
                    ),
                ));
            }
        }
        let mut format = None;
        if let (Func::Printf, Some(Expr::Str(text))) = (spec.func, args.first()) {
            let parsed = Format::parse(text)
                .and_then(|f| f.check(&kinds[1..]).map(|()| f))
                .map_err(|message| self.problem(pos, format!("printf: {message}")))?;
            format = Some(parsed);
        }
        let kind = match spec.func {
            Func::Now => Kind::Time,
            Func::Default if kinds[0] == kinds[1] => kinds[0],
            Func::Default => Kind::Any,
            _ => Kind::Str,
        };
        Ok((
            Call {
                func: spec.func,
                args,
                format,
            },
            kind,
        ))
    }
}

fn describe_operand(kind: &TokenKind) -> String {
    match kind {
        TokenKind::Field(path) => format!(".{path}"),
        TokenKind::Str(s) => format!("the string {s:?}"),
        TokenKind::Int(n) => format!("the number {n}"),
        TokenKind::Ident(name) => format!("function {name}"),
        TokenKind::Open => "a parenthesised pipeline".to_string(),
        TokenKind::Pipe => "\"|\"".to_string(),
        TokenKind::Close => "\")\"".to_string(),
    }
}

#[cfg(test)]
mod tests;
