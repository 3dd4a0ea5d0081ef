//! The lexer: splits a template into text and actions and an action into tokens, following Go's
//! `text/template/parse/lex.go` (delimiters `{{ }}`, trim markers `{{- ` and ` -}}`, comments
//! `{{/* */}}`, Go string, raw string and integer literals).

use super::Problem;

/// Go's space characters: the ones trim markers remove and that separate operands.
const SPACE: [char; 4] = [' ', '\t', '\r', '\n'];

/// A piece of the template: literal text (already trimmed by neighbouring trim markers) or an action.
#[derive(Debug)]
pub(super) enum Segment {
    Text(String),
    Action(Action),
}

/// One `{{ … }}` action: its tokens and where it sits in the source.
#[derive(Debug)]
pub(super) struct Action {
    pub start: usize,
    pub end: usize,
    pub tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Token {
    pub kind: TokenKind,
    /// Byte offset of the token in the template.
    pub pos: usize,
    /// Whether space separates this token from the previous one.
    pub spaced: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum TokenKind {
    Pipe,
    Open,
    Close,
    /// `.Name`; a chain like `.A.B` is kept whole so the parser can refuse it by name.
    Field(String),
    Ident(String),
    Str(String),
    Int(i64),
}

/// Splits `src` into segments, applying trim markers to the neighbouring text.
pub(super) fn segments(src: &str) -> Result<Vec<Segment>, Problem> {
    let mut out = Vec::new();
    let mut rest_start = 0;
    let mut trim_next_text = false;
    while let Some(found) = src[rest_start..].find("{{") {
        let start = rest_start + found;
        let after = start + 2;
        let trim_left = has_left_trim(&src[after..]);
        let mut text = &src[rest_start..start];
        if trim_next_text {
            text = text.trim_start_matches(SPACE);
        }
        if trim_left {
            text = text.trim_end_matches(SPACE);
        }
        if !text.is_empty() {
            out.push(Segment::Text(text.to_string()));
        }
        let body = if trim_left { after + 2 } else { after };
        let (end, trim_right, tokens) = if src[body..].starts_with("/*") {
            let (end, trim_right) = comment(src, start, body)?;
            (end, trim_right, None)
        } else {
            let (end, trim_right, tokens) = action(src, start, body)?;
            (end, trim_right, Some(tokens))
        };
        if let Some(tokens) = tokens {
            out.push(Segment::Action(Action { start, end, tokens }));
        }
        trim_next_text = trim_right;
        rest_start = end;
    }
    let mut text = &src[rest_start..];
    if trim_next_text {
        text = text.trim_start_matches(SPACE);
    }
    if !text.is_empty() {
        out.push(Segment::Text(text.to_string()));
    }
    Ok(out)
}

/// `-` followed by a space right after `{{`.
fn has_left_trim(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next() == Some('-') && chars.next().is_some_and(|c| SPACE.contains(&c))
}

/// At a right delimiter: `}}` or a space then `-}}`. Returns its length and whether it trims.
fn right_delim(s: &str) -> Option<(usize, bool)> {
    if s.starts_with("}}") {
        return Some((2, false));
    }
    let mut chars = s.chars();
    let space = chars.next().filter(|c| SPACE.contains(c))?;
    s[space.len_utf8()..]
        .starts_with("-}}")
        .then_some((space.len_utf8() + 3, true))
}

/// A comment runs from `/*` to `*/`, which must be followed directly by the right delimiter.
fn comment(src: &str, start: usize, body: usize) -> Result<(usize, bool), Problem> {
    let Some(close) = src[body + 2..].find("*/") else {
        return Err(Problem::new(start, body, "unclosed comment: expected \"*/\""));
    };
    let after = body + 2 + close + 2;
    match right_delim(&src[after..]) {
        Some((len, trim)) => Ok((after + len, trim)),
        None => Err(Problem::new(
            start,
            after,
            "comment ends before closing delimiter: write \"*/}}\"",
        )),
    }
}

/// Tokens of one action, up to and including its right delimiter.
fn action(src: &str, start: usize, body: usize) -> Result<(usize, bool, Vec<Token>), Problem> {
    let mut tokens = Vec::new();
    let mut pos = body;
    let mut spaced = true;
    loop {
        let rest = &src[pos..];
        if let Some((len, trim)) = right_delim(rest) {
            return Ok((pos + len, trim, tokens));
        }
        let Some(c) = rest.chars().next() else {
            return Err(Problem::new(start, start, "unclosed action: expected \"}}\""));
        };
        if SPACE.contains(&c) {
            pos += 1;
            spaced = true;
            continue;
        }
        let (kind, len) = token(src, start, pos, c)?;
        tokens.push(Token { kind, pos, spaced });
        pos += len;
        spaced = false;
    }
}

/// One token starting with `c` at `pos`: its kind and byte length.
fn token(src: &str, start: usize, pos: usize, c: char) -> Result<(TokenKind, usize), Problem> {
    let rest = &src[pos..];
    let refuse = |message: String| Err(Problem::new(start, pos, message));
    match c {
        '|' => Ok((TokenKind::Pipe, 1)),
        '(' => Ok((TokenKind::Open, 1)),
        ')' => Ok((TokenKind::Close, 1)),
        '"' => quoted(src, start, pos),
        '`' => match rest[1..].find('`') {
            // Go's strconv.Unquote drops carriage returns from raw strings.
            Some(close) => Ok((TokenKind::Str(rest[1..1 + close].replace('\r', "")), close + 2)),
            None => refuse("unterminated raw quoted string".into()),
        },
        '0'..='9' | '+' | '-' => number(rest).map_err(|message| Problem::new(start, pos, message)),
        '.' => {
            let len = word_len(&rest[1..], true);
            if len == 0 {
                return refuse(
                    "the dot alone is not supported in path templates: use a field such as .Name, .Namespace, .Kind or .ScheduleName".into(),
                );
            }
            Ok((TokenKind::Field(rest[1..1 + len].to_string()), len + 1))
        }
        c if c.is_alphabetic() || c == '_' => {
            let len = word_len(rest, false);
            Ok((TokenKind::Ident(rest[..len].to_string()), len))
        }
        '$' => refuse("variables ($x) are not supported in path templates".into()),
        '\'' => refuse("character constants are not supported in path templates: use a \"string\"".into()),
        ':' | '=' => refuse("variable assignments are not supported in path templates".into()),
        ',' => refuse(
            "unexpected \",\": arguments are separated by spaces, as in {{ printf \"%s-%s\" .Namespace .Name }}".into(),
        ),
        other => refuse(format!("unexpected {other:?} in action")),
    }
}

/// Length of an identifier (`A1_b`), or of a field chain (`Name.Foo`) when `chain`.
fn word_len(s: &str, chain: bool) -> usize {
    s.char_indices()
        .find(|&(_, c)| !(c.is_alphanumeric() || c == '_' || (chain && c == '.')))
        .map_or(s.len(), |(i, _)| i)
}

/// A double-quoted Go string with its escapes.
fn quoted(src: &str, start: usize, pos: usize) -> Result<(TokenKind, usize), Problem> {
    let mut out = String::new();
    let mut chars = src[pos + 1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((TokenKind::Str(out), i + 2)),
            '\n' => break,
            '\\' => {
                let at = pos + 1 + i;
                let escaped = escape(&mut chars).map_err(|message| Problem::new(start, at, message))?;
                out.push(escaped);
            }
            c => out.push(c),
        }
    }
    Err(Problem::new(start, pos, "unterminated quoted string"))
}

/// The character a backslash escape stands for (the backslash is already consumed).
fn escape(chars: &mut std::str::CharIndices<'_>) -> Result<char, String> {
    let Some((_, c)) = chars.next() else {
        return Err("unterminated quoted string".into());
    };
    let mut hex = |digits: usize| -> Result<u32, String> {
        let text: String = chars.by_ref().take(digits).map(|(_, c)| c).collect();
        if text.len() != digits || !text.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "bad escape \"\\{c}{text}\" in string: expected {digits} hex digits"
            ));
        }
        u32::from_str_radix(&text, 16).map_err(|err| err.to_string())
    };
    let code = match c {
        'a' => 0x07,
        'b' => 0x08,
        'f' => 0x0c,
        'n' => 0x0a,
        'r' => 0x0d,
        't' => 0x09,
        'v' => 0x0b,
        '\\' => 0x5c,
        '"' => 0x22,
        'x' => hex(2)?,
        'u' => hex(4)?,
        'U' => hex(8)?,
        '0'..='7' => {
            let rest: String = chars.by_ref().take(2).map(|(_, c)| c).collect();
            let text = format!("{c}{rest}");
            match u32::from_str_radix(&text, 8) {
                Ok(code) if text.len() == 3 && code <= 0xff => code,
                _ => {
                    return Err(format!(
                        "bad escape \"\\{text}\" in string: expected 3 octal digits up to \\377"
                    ));
                }
            }
        }
        other => return Err(format!("bad escape \"\\{other}\" in string")),
    };
    // Go strings may hold arbitrary bytes; object keys are UTF-8, so \x and octal stay ASCII.
    if matches!(c, 'x' | '0'..='7') && code > 0x7f {
        return Err(format!(
            "escape for byte {code:#04x} is not UTF-8: write the character itself or use \\u"
        ));
    }
    char::from_u32(code).ok_or_else(|| format!("escape for U+{code:04X} is not a valid character"))
}

/// An integer literal as Go's `strconv.ParseInt(s, 0, 64)` reads it (0x, 0o, 0b, leading-0 octal,
/// underscores); floats and complex numbers are refused by name.
fn number(rest: &str) -> Result<(TokenKind, usize), String> {
    let bytes = rest.as_bytes();
    let mut len = usize::from(matches!(bytes[0], b'+' | b'-'));
    while let Some(&b) = bytes.get(len) {
        let exponent_sign = matches!(b, b'+' | b'-') && matches!(bytes[len - 1], b'e' | b'E' | b'p' | b'P');
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || exponent_sign {
            len += 1;
        } else {
            break;
        }
    }
    // A multi-byte letter right after digits is still part of a bad number.
    let tail = rest[len..]
        .chars()
        .next()
        .filter(|c| c.is_alphanumeric())
        .map_or(0, char::len_utf8);
    let text = &rest[..len + tail];
    let (negative, unsigned) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = unsigned.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1 && lower.starts_with('0') && lower.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    let digits = digits.replace('_', "");
    let float = radix == 10 && (lower.contains('.') || lower.contains('e')) || radix == 16 && lower.contains('p');
    if float && !lower.ends_with('i') && digits.chars().next().is_some_and(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "floating-point number {text:?} is not supported: path templates use integers"
        ));
    }
    let magnitude = (!digits.is_empty())
        .then(|| i128::from_str_radix(&digits, radix).ok())
        .flatten()
        .ok_or_else(|| format!("bad number syntax: {text:?}"))?;
    let value = if negative { -magnitude } else { magnitude };
    let value = i64::try_from(value).map_err(|_| format!("number {text:?} does not fit in 64 bits"))?;
    Ok((TokenKind::Int(value), len + tail))
}
