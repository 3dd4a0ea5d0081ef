//! The parser: recursive descent over one action's tokens, checking every name, argument count
//! and argument type as it goes, so that a template that parses can only fail to render on values
//! whose type depends on the variables.

use super::lex::{Action, Token, TokenKind};
use super::printf::Format;
use super::{Call, Expr, Kind, Pipeline, Problem};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Var {
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
pub(super) enum Func {
    Now,
    Date,
    DateInZone,
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

const FUNCS: [FuncSpec; 12] = [
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
        func: Func::DateInZone,
        name: "dateInZone",
        params: &[Param::Str, Param::TimeOrUnix, Param::Str],
        variadic: false,
        usage: "dateInZone LAYOUT TIME ZONE",
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
    "if", "else", "end", "range", "with", "define", "template", "block", "break", "continue", "true", "false", "nil",
];

/// Parses and checks the pipeline of one action.
pub(super) fn action(action: &Action) -> Result<Pipeline, Problem> {
    let mut parser = Parser {
        tokens: &action.tokens,
        next: 0,
        start: action.start,
        end: action.end,
    };
    parser.pipeline(None).map(|typed| typed.pipeline)
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
            return Err(self.problem(extra.pos, format!("{what} is not a function and cannot take arguments")));
        }
        Ok((expr, kind))
    }

    /// operand := .Field | "string" | integer | function (called without arguments) | '(' pipeline ')'
    fn operand(&mut self) -> Result<(Expr, Kind), Problem> {
        let Some(token) = self.peek().cloned() else {
            return Err(self.problem(self.here(), "missing value for command"));
        };
        // Operands are separated by space, as in Go: `printf"%s"` is a mistake, `(now)` and `a|b` are not.
        let after_operand =
            self.next > 0 && !matches!(self.tokens[self.next - 1].kind, TokenKind::Open | TokenKind::Pipe);
        if !token.spaced && after_operand {
            return Err(self.problem(
                token.pos,
                format!("missing space before {}", describe_operand(&token.kind)),
            ));
        }
        self.next += 1;
        match token.kind {
            TokenKind::Field(path) => self.field(&path, token.pos).map(|var| (Expr::Var(var), Kind::Str)),
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
            TokenKind::Pipe | TokenKind::Close => Err(self.problem(token.pos, "missing value for command")),
        }
    }

    fn field(&self, path: &str, pos: usize) -> Result<Var, Problem> {
        let (head, tail) = path.split_once('.').map_or((path, None), |(h, t)| (h, Some(t)));
        let known = VARS
            .iter()
            .map(|(name, _)| format!(".{name}"))
            .collect::<Vec<_>>()
            .join(", ");
        let Some(&(name, var)) = VARS.iter().find(|(name, _)| *name == head) else {
            let problem = self.problem(pos, format!("unknown variable \".{head}\""));
            return Err(match VARS.iter().find(|(name, _)| name.eq_ignore_ascii_case(head)) {
                Some((name, _)) => problem.help(format!("did you mean .{name}? (names are case-sensitive)")),
                None => problem.help(format!("known variables are {known}")),
            });
        };
        match tail {
            Some(tail) => Err(self.problem(pos, format!(".{name} is a string and has no field \"{tail}\""))),
            None => Ok(var),
        }
    }

    fn function(&self, name: &str, pos: usize) -> Result<&'static FuncSpec, Problem> {
        if let Some(spec) = FUNCS.iter().find(|f| f.name == name) {
            return Ok(spec);
        }
        if KEYWORDS.contains(&name) {
            return Err(self
                .problem(pos, format!("\"{name}\" is not supported in path templates"))
                .help("path templates have no control structures, booleans or nil: use functions such as default"));
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
                .help(format!("usage: {} (a piped value is the last argument)", spec.usage)));
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
        if let (Func::DateInZone, Some(Expr::Str(zone))) = (spec.func, args.get(2)) {
            super::eval::time_zone(zone).map_err(|message| self.problem(pos, message))?;
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
