//! List filters: the subset of AIP-160 every `List*` request's `filter`
//! speaks, parsed into a [`Filter`] tree. This module knows no kind and no
//! database: which fields exist, what their values mean and how they become
//! SQL is `store::search`'s.
//!
//! ```text
//! filter      = [ expression ]
//! expression  = factor { "AND" factor }
//! factor      = term { "OR" term }          (OR binds tighter than AND, as in AIP-160)
//! term        = [ "NOT" | "-" ] simple
//! simple      = "(" expression ")" | restriction
//! restriction = field comparator value | field     (a field alone: field = true)
//! comparator  = "=" | "!=" | "<" | "<=" | ">" | ">=" | ":"
//! field       = letter { letter | digit | "_" | "." }
//! value       = '"' { char | '\"' | '\\' | '\*' } '"' | bare word
//! ```
//!
//! A bare word runs to the next space or parenthesis, so RFC 3339 times and
//! booleans need no quotes (`create_time > 2026-12-07T10:00:00Z`,
//! `is_default = true`); a field alone is `= true` (`deleted`, `NOT
//! deleted`). A value ending in an unescaped `*` is a prefix
//! (`name = "support-*"`); a `*` anywhere else must be escaped (`\*`).
//! `AND`, `OR` and `NOT` are upper case.
//!
//! Limits are checked before any parsing work: at most [`MAX_BYTES`] bytes,
//! no NUL, parentheses nested at most [`MAX_DEPTH`] deep (counted in one
//! pass without recursion, so the parser's recursion is bounded by it), and
//! at most [`MAX_COMPARISONS`] comparisons. Every refusal names the byte
//! offset (from 0) and what was expected there: `at 7: expected a value
//! after '='`.

use std::fmt;

use crate::error::Error;

/// The longest filter, in bytes.
pub const MAX_BYTES: usize = 1024;
/// The deepest nesting of parentheses.
pub const MAX_DEPTH: usize = 16;
/// The most comparisons in one filter.
pub const MAX_COMPARISONS: usize = 32;

/// The request field every filter arrives in.
const FIELD: &str = "filter";

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Every one holds (`AND`).
    All(Vec<Filter>),
    /// At least one holds (`OR`).
    Any(Vec<Filter>),
    /// The inner one does not hold (`NOT`, `-`).
    Not(Box<Filter>),
    /// One restriction (`name = "x"`).
    Compare(Comparison),
}

/// `field comparator value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// The field named.
    pub field: String,
    /// Where the field's name starts (a byte offset).
    pub at: usize,
    pub op: Op,
    pub value: Literal,
    /// Written as the field alone (`deleted`): `= true`, for a boolean
    /// field only (the store refuses it for others, as a missing
    /// comparator).
    pub alone: bool,
}

/// A comparator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `:`: has (a member of a collection).
    Has,
}

impl Op {
    /// The comparator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Has => ":",
        }
    }
}

/// A value as written: its text (escapes resolved), and whether it ends in
/// the wildcard `*` (a prefix; the `*` is not in `text`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Literal {
    pub text: String,
    pub prefix: bool,
    /// Where the value starts (a byte offset).
    pub at: usize,
}

/// The INVALID_ARGUMENT answer for a filter that is wrong at byte `at`.
pub fn invalid(at: usize, what: impl fmt::Display) -> Error {
    Error::bad_field(FIELD, format!("at {at}: {what}"))
}

/// Parses `text`; `None` for an empty (or blank) filter, which matches
/// everything.
pub fn parse(text: &str) -> Result<Option<Filter>, Error> {
    check_limits(text)?;
    let mut parser = Parser {
        text,
        at: 0,
        comparisons: 0,
    };
    parser.skip_spaces();
    if parser.at == text.len() {
        return Ok(None);
    }
    let filter = parser.expression(0)?;
    parser.skip_spaces();
    if parser.at < text.len() {
        let what = if parser.peek() == Some(b')') {
            "a ')' without its '('"
        } else {
            "expected AND, OR or the end of the filter"
        };
        return Err(invalid(parser.at, what));
    }
    Ok(Some(filter))
}

/// The size, NUL and nesting limits, in one pass over the bytes.
fn check_limits(text: &str) -> Result<(), Error> {
    if text.len() > MAX_BYTES {
        return Err(Error::bad_field(
            FIELD,
            format!("must be at most {MAX_BYTES} bytes (got {})", text.len()),
        ));
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (at, byte) in text.bytes().enumerate() {
        match byte {
            0 => return Err(invalid(at, "NUL is not allowed")),
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            b'(' if !in_string => {
                depth += 1;
                if depth > MAX_DEPTH {
                    let limit = format!("parentheses nest deeper than {MAX_DEPTH}");
                    return Err(invalid(at, limit));
                }
            }
            b')' if !in_string => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A recursive-descent parser over the bytes of a filter whose limits
/// were checked: its recursion follows parentheses, at most [`MAX_DEPTH`].
struct Parser<'t> {
    text: &'t str,
    at: usize,
    comparisons: usize,
}

impl Parser<'_> {
    /// `factor { AND factor }`; `depth` open parentheses surround it.
    fn expression(&mut self, depth: usize) -> Result<Filter, Error> {
        let mut factors = vec![self.factor(depth)?];
        while self.keyword("AND") {
            factors.push(self.factor(depth)?);
        }
        Ok(flatten(factors, Filter::All))
    }

    /// `term { OR term }`.
    fn factor(&mut self, depth: usize) -> Result<Filter, Error> {
        let mut terms = vec![self.term(depth)?];
        while self.keyword("OR") {
            terms.push(self.term(depth)?);
        }
        Ok(flatten(terms, Filter::Any))
    }

    /// `[NOT | -] simple`.
    fn term(&mut self, depth: usize) -> Result<Filter, Error> {
        self.skip_spaces();
        let negated = if self.keyword("NOT") {
            true
        } else if self.peek() == Some(b'-') {
            self.at += 1;
            true
        } else {
            false
        };
        let simple = self.simple(depth, negated)?;
        Ok(if negated {
            Filter::Not(Box::new(simple))
        } else {
            simple
        })
    }

    /// `( expression )` or a restriction.
    fn simple(&mut self, depth: usize, negated: bool) -> Result<Filter, Error> {
        self.skip_spaces();
        match self.peek() {
            Some(b'(') => {
                self.at += 1;
                let inner = self.expression(depth + 1)?;
                self.skip_spaces();
                if self.peek() != Some(b')') {
                    return Err(invalid(self.at, "expected AND, OR or ')'"));
                }
                self.at += 1;
                Ok(inner)
            }
            None => {
                let what = if negated {
                    "expected a comparison or '(' after the negation"
                } else {
                    "expected a comparison or '('"
                };
                Err(invalid(self.at, what))
            }
            Some(_) => self.restriction().map(Filter::Compare),
        }
    }

    /// `field comparator value`.
    fn restriction(&mut self) -> Result<Comparison, Error> {
        let at = self.at;
        let field = self.field()?;
        self.comparisons += 1;
        if self.comparisons > MAX_COMPARISONS {
            let limit = format!("more than {MAX_COMPARISONS} comparisons");
            return Err(invalid(at, limit));
        }
        self.skip_spaces();
        if self.alone() {
            let value = Literal {
                text: "true".to_owned(),
                prefix: false,
                at: self.at,
            };
            return Ok(Comparison {
                field,
                at,
                op: Op::Eq,
                value,
                alone: true,
            });
        }
        let op = self.comparator(&field)?;
        self.skip_spaces();
        let value = self.value(op)?;
        Ok(Comparison {
            field,
            at,
            op,
            value,
            alone: false,
        })
    }

    /// A field name: a letter, then letters, digits, `_` and `.`.
    fn field(&mut self) -> Result<String, Error> {
        let start = self.at;
        let rest = &self.text.as_bytes()[start..];
        let length = rest
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b == b'.')
            .count();
        if length == 0 || !rest[0].is_ascii_alphabetic() {
            return Err(invalid(start, "expected a field name"));
        }
        let name = &self.text[start..start + length];
        // `NOT=x` would read as a field named NOT, and its canonical form
        // (`NOT = x`) as a negation: the keywords are never field names.
        if matches!(name, "AND" | "OR" | "NOT") {
            return Err(invalid(
                start,
                format!("expected a field name ({name} is a keyword)"),
            ));
        }
        self.at += length;
        Ok(name.to_owned())
    }

    fn comparator(&mut self, field: &str) -> Result<Op, Error> {
        let rest = &self.text.as_bytes()[self.at..];
        let (op, length) = match rest {
            [b'!', b'=', ..] => (Op::Ne, 2),
            [b'<', b'=', ..] => (Op::Le, 2),
            [b'>', b'=', ..] => (Op::Ge, 2),
            [b'=', ..] => (Op::Eq, 1),
            [b'<', ..] => (Op::Lt, 1),
            [b'>', ..] => (Op::Gt, 1),
            [b':', ..] => (Op::Has, 1),
            _ => {
                let what = format!(
                    "expected a comparator (=, !=, <, <=, >, >= or :) after {}",
                    quote(field)
                );
                return Err(invalid(self.at, what));
            }
        };
        self.at += length;
        Ok(op)
    }

    /// A quoted string or a bare word.
    fn value(&mut self, op: Op) -> Result<Literal, Error> {
        let start = self.at;
        let expected = || invalid(start, format!("expected a value after '{}'", op.as_str()));
        match self.peek() {
            None | Some(b'(' | b')') => Err(expected()),
            Some(b'"') => self.quoted(),
            Some(_) => {
                let rest = &self.text[start..];
                let end = rest
                    .find(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == '"')
                    .unwrap_or(rest.len());
                if end == 0 {
                    return Err(expected());
                }
                self.at += end;
                let word = &rest[..end];
                let (text, prefix) = match word.strip_suffix('*') {
                    Some(stem) => (stem, true),
                    None => (word, false),
                };
                if let Some(star) = text.find('*') {
                    return Err(misplaced_wildcard(start + star));
                }
                Ok(Literal {
                    text: text.to_owned(),
                    prefix,
                    at: start,
                })
            }
        }
    }

    /// `"…"` with `\"`, `\\` and `\*` escapes.
    fn quoted(&mut self) -> Result<Literal, Error> {
        let start = self.at;
        let mut text = String::new();
        let mut prefix = false;
        let mut chars = self.text[start + 1..].char_indices();
        while let Some((offset, c)) = chars.next() {
            let at = start + 1 + offset;
            if prefix {
                // Only the closing quote may follow the wildcard.
                if c != '"' {
                    return Err(misplaced_wildcard(at - 1));
                }
            }
            match c {
                '"' => {
                    self.at = at + 1;
                    return Ok(Literal {
                        text,
                        prefix,
                        at: start,
                    });
                }
                '\\' => match chars.next() {
                    Some((_, escaped @ ('"' | '\\' | '*'))) => text.push(escaped),
                    _ => {
                        return Err(invalid(at, r#"expected \", \\ or \* after '\'"#));
                    }
                },
                '*' => prefix = true,
                c => text.push(c),
            }
        }
        Err(invalid(start, "this string has no closing '\"'"))
    }

    /// Consumes `word` when it stands alone at the cursor (after spaces).
    fn keyword(&mut self, word: &str) -> bool {
        let start = self.at;
        self.skip_spaces();
        let rest = &self.text.as_bytes()[self.at..];
        let alone = rest.starts_with(word.as_bytes())
            && rest
                .get(word.len())
                .is_none_or(|b| b.is_ascii_whitespace() || *b == b'(');
        if alone {
            self.at += word.len();
        } else {
            self.at = start;
        }
        alone
    }

    /// Whether a field ends its restriction here (the end, a `)`, `AND` or
    /// `OR`): a field alone.
    fn alone(&self) -> bool {
        let rest = &self.text.as_bytes()[self.at..];
        let keyword = |word: &[u8]| {
            rest.starts_with(word)
                && rest
                    .get(word.len())
                    .is_none_or(|b| b.is_ascii_whitespace() || *b == b'(')
        };
        rest.is_empty() || rest[0] == b')' || keyword(b"AND") || keyword(b"OR")
    }

    fn skip_spaces(&mut self) {
        let rest = &self.text[self.at..];
        self.at += rest.len() - rest.trim_start().len();
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }
}

fn misplaced_wildcard(at: usize) -> Error {
    invalid(
        at,
        r"a '*' may only end a value (a prefix); write \* for the character",
    )
}

/// One item stays itself; several become `make(items)`.
fn flatten(mut items: Vec<Filter>, make: fn(Vec<Filter>) -> Filter) -> Filter {
    if items.len() == 1 {
        items.remove(0)
    } else {
        make(items)
    }
}

/// A field name or value as an error message quotes it: at most 64
/// characters.
pub fn quote(text: &str) -> String {
    const SHOWN: usize = 64;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{:?}…", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// The canonical form: every group in parentheses, values quoted and
/// escaped, one space around operators. Two filters with the same
/// canonical form select the same rows (page tokens are bound to it).
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = |f: &mut fmt::Formatter<'_>, items: &[Filter], joint: &str| {
            f.write_str("(")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, " {joint} ")?;
                }
                item.fmt(f)?;
            }
            f.write_str(")")
        };
        match self {
            Self::All(items) => group(f, items, "AND"),
            Self::Any(items) => group(f, items, "OR"),
            Self::Not(inner) => write!(f, "NOT ({inner})"),
            Self::Compare(c) if c.alone => f.write_str(&c.field),
            Self::Compare(c) => {
                let mut value = String::with_capacity(c.value.text.len() + 2);
                for ch in c.value.text.chars() {
                    if matches!(ch, '"' | '\\' | '*') {
                        value.push('\\');
                    }
                    value.push(ch);
                }
                if c.value.prefix {
                    value.push('*');
                }
                write!(f, "{} {} \"{value}\"", c.field, c.op.as_str())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Filter {
        match parse(text) {
            Ok(Some(filter)) => filter,
            other => panic!("{text:?} should parse: {other:?}"),
        }
    }

    /// The description of the one violation a refused filter gets.
    fn refusal(text: &str) -> String {
        match parse(text) {
            Err(Error::BadRequest(violations)) => {
                assert_eq!(violations.len(), 1, "{violations:?}");
                assert_eq!(violations[0].field, "filter");
                violations[0].description.clone()
            }
            other => panic!("{text:?} should be refused: {other:?}"),
        }
    }

    fn compare(field: &str, op: Op, text: &str) -> Filter {
        Filter::Compare(Comparison {
            field: field.to_owned(),
            at: 0,
            op,
            value: Literal {
                text: text.to_owned(),
                prefix: false,
                at: 0,
            },
            alone: false,
        })
    }

    /// Positions aside, the tree as written in the test.
    fn shape(filter: &Filter) -> String {
        filter.to_string()
    }

    #[test]
    fn empty_and_blank_filters_match_everything() {
        assert_eq!(parse("").ok(), Some(None));
        assert_eq!(parse("  \t ").ok(), Some(None));
    }

    #[test]
    fn every_comparator_parses() {
        for (text, op) in [
            ("a = 1", Op::Eq),
            ("a != 1", Op::Ne),
            ("a < 1", Op::Lt),
            ("a <= 1", Op::Le),
            ("a > 1", Op::Gt),
            ("a >= 1", Op::Ge),
            ("a : 1", Op::Has),
            ("a:1", Op::Has),
            ("a=1", Op::Eq),
        ] {
            assert_eq!(
                shape(&parsed(text)),
                shape(&compare("a", op, "1")),
                "{text}"
            );
        }
    }

    #[test]
    fn positions_are_byte_offsets_of_field_and_value() {
        let Filter::Compare(c) = parsed(r#"  name = "x""#) else {
            panic!("a comparison")
        };
        assert_eq!((c.at, c.value.at), (2, 9));
    }

    #[test]
    fn quoted_strings_resolve_escapes_and_bare_words_keep_times() {
        let Filter::Compare(c) = parsed(r#"name = "a \"b\" \\ c\*""#) else {
            panic!("a comparison")
        };
        assert_eq!(c.value.text, r#"a "b" \ c*"#);
        assert!(!c.value.prefix);
        let Filter::Compare(c) = parsed("create_time >= 2026-12-07T10:00:00.5+01:00") else {
            panic!("a comparison")
        };
        assert_eq!(c.value.text, "2026-12-07T10:00:00.5+01:00");
        let Filter::Compare(c) = parsed("is_default = true") else {
            panic!("a comparison")
        };
        assert_eq!(c.value.text, "true");
    }

    #[test]
    fn a_trailing_star_is_a_prefix_and_any_other_is_refused() {
        for text in [r#"name = "sup*""#, "name = sup*"] {
            let Filter::Compare(c) = parsed(text) else {
                panic!("a comparison")
            };
            assert_eq!((c.value.text.as_str(), c.value.prefix), ("sup", true));
        }
        assert_eq!(
            refusal(r#"name = "a*b""#),
            r"at 9: a '*' may only end a value (a prefix); write \* for the character"
        );
        assert_eq!(
            refusal("name = a*b"),
            r"at 8: a '*' may only end a value (a prefix); write \* for the character"
        );
    }

    #[test]
    fn or_binds_tighter_than_and_as_in_aip_160() {
        assert_eq!(
            parsed("a = 1 AND b = 2 OR c = 3").to_string(),
            r#"(a = "1" AND (b = "2" OR c = "3"))"#
        );
        assert_eq!(
            parsed("a = 1 OR b = 2 AND c = 3").to_string(),
            r#"((a = "1" OR b = "2") AND c = "3")"#
        );
        assert_eq!(
            parsed("(a = 1 AND b = 2) OR c = 3").to_string(),
            r#"((a = "1" AND b = "2") OR c = "3")"#
        );
    }

    #[test]
    fn not_and_minus_negate_one_term() {
        assert_eq!(
            parsed("NOT a = 1 AND -b:x").to_string(),
            r#"(NOT (a = "1") AND NOT (b : "x"))"#
        );
        assert_eq!(
            parsed("NOT (a = 1 OR b = 2)").to_string(),
            r#"NOT ((a = "1" OR b = "2"))"#
        );
        // A keyword needs a space or '(' after it: NOTE is a field.
        assert_eq!(parsed("NOTE = 1").to_string(), r#"NOTE = "1""#);
    }

    #[test]
    fn the_canonical_form_ignores_spacing_and_redundant_parentheses() {
        let a = parsed(r#"name="x"   AND ((tool : y))"#).to_string();
        let b = parsed(r#"( name = x AND tool:"y" )"#).to_string();
        assert_eq!(a, b);
        assert_ne!(a, parsed(r#"name = "x*" AND tool : y"#).to_string());
        assert_ne!(
            parsed(r#"name = "x\*""#).to_string(),
            parsed(r#"name = "x*""#).to_string()
        );
    }

    #[test]
    fn a_field_alone_is_equal_to_true_and_prints_alone() {
        for text in ["deleted", "  deleted ", "(deleted)"] {
            let Filter::Compare(c) = parsed(text) else {
                panic!("{text:?} is one comparison");
            };
            assert!(c.alone && c.op == Op::Eq && c.value.text == "true");
            assert_eq!(parsed(text).to_string(), "deleted");
        }
        assert_eq!(
            parsed("NOT deleted AND name = x").to_string(),
            r#"(NOT (deleted) AND name = "x")"#
        );
        assert_eq!(
            parsed("deleted OR is_default").to_string(),
            "(deleted OR is_default)"
        );
    }

    #[test]
    fn mistakes_say_where_and_what_was_expected() {
        for (text, expected) in [
            ("name =", "at 6: expected a value after '='"),
            ("name = ", "at 7: expected a value after '='"),
            ("name = )", "at 7: expected a value after '='"),
            (
                "name x",
                r#"at 5: expected a comparator (=, !=, <, <=, >, >= or :) after "name""#,
            ),
            ("= 1", "at 0: expected a field name"),
            ("9a = 1", "at 0: expected a field name"),
            ("a = 1 AND", "at 9: expected a comparison or '('"),
            ("a = 1 OR", "at 8: expected a comparison or '('"),
            (
                "NOT",
                "at 3: expected a comparison or '(' after the negation",
            ),
            // Found by the fuzzer: read as a field named NOT, whose
            // canonical form then read as a negation.
            (
                r#"NOT= "x""#,
                "at 0: expected a field name (NOT is a keyword)",
            ),
            (
                "a = 1 AND OR:x",
                "at 10: expected a field name (OR is a keyword)",
            ),
            ("(a = 1", "at 6: expected AND, OR or ')'"),
            ("a = 1)", "at 5: a ')' without its '('"),
            (
                "a = 1 b = 2",
                "at 6: expected AND, OR or the end of the filter",
            ),
            (
                "a = 1 and b = 2",
                "at 6: expected AND, OR or the end of the filter",
            ),
            (r#"a = "open"#, "at 4: this string has no closing '\"'"),
            (r#"a = "x\n""#, r#"at 6: expected \", \\ or \* after '\'"#),
        ] {
            assert_eq!(refusal(text), expected, "{text:?}");
        }
    }

    #[test]
    fn limits_are_refused_before_parsing() {
        let long = format!("name = \"{}\"", "x".repeat(MAX_BYTES));
        assert_eq!(
            refusal(&long),
            format!("must be at most 1024 bytes (got {})", long.len())
        );
        let exactly = format!("name = \"{}\"", "x".repeat(MAX_BYTES - 9));
        assert_eq!(exactly.len(), MAX_BYTES);
        assert!(parse(&exactly).is_ok());

        let deep = |n: usize| format!("{}a = 1{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&deep(MAX_DEPTH)).is_ok());
        assert_eq!(
            refusal(&deep(MAX_DEPTH + 1)),
            "at 16: parentheses nest deeper than 16"
        );
        // Parentheses inside a string do not count.
        let quoted = format!("a = \"{}\"", "(".repeat(100));
        assert!(parse(&quoted).is_ok());

        let comparisons = |n: usize| vec!["a = 1"; n].join(" OR ");
        assert!(parse(&comparisons(MAX_COMPARISONS)).is_ok());
        let too_many = comparisons(MAX_COMPARISONS + 1);
        assert_eq!(
            refusal(&too_many),
            format!("at {}: more than 32 comparisons", too_many.len() - 5)
        );
        assert_eq!(refusal("a = \"x\0\""), "at 6: NUL is not allowed");
    }

    #[test]
    fn ten_thousand_open_parentheses_are_refused_at_once() {
        let started = std::time::Instant::now();
        let opened = "(".repeat(10_000);
        assert_eq!(refusal(&opened), "must be at most 1024 bytes (got 10000)");
        let within_size = "(".repeat(MAX_BYTES);
        assert_eq!(
            refusal(&within_size),
            "at 16: parentheses nest deeper than 16"
        );
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
    }

    #[test]
    fn injection_text_is_only_a_value() {
        let Filter::Compare(c) = parsed(r#"name = "x' OR 1=1 --""#) else {
            panic!("a comparison")
        };
        assert_eq!(c.value.text, "x' OR 1=1 --");
    }
}
