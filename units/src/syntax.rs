//! The lossless layer: a unit file as the lines it was written in, so that serializing gives
//! back the exact bytes that were parsed, plus the logical meaning systemd gives each line.
//!
//! The rules are systemd.syntax(7) as systemd 252 implements them (`src/shared/conf-parser.c`):
//!
//! - a line ends at `\n`, `\r\n`, `\r` or NUL (systemd's `read_line`); a UTF-8 byte-order mark
//!   at the start of the file is skipped (after the test for a comment, as systemd does);
//! - a line whose first non-whitespace character is `#` or `;` is a comment, also between the
//!   lines of a continuation;
//! - a line ending in an odd number of backslashes continues on the next line: the last
//!   backslash becomes a space and the next line is appended as it is (leading whitespace
//!   kept); a blank line ends the continuation; a continuation open at the end of the file is
//!   parsed as it stands;
//! - a logical line is stripped of whitespace (space, tab, CR, LF) at both ends;
//! - `[Name]` opens a section (the name is taken verbatim, it must not contain control
//!   characters, quotes or backslashes); anything else is `Key=Value`, key and value stripped
//!   of whitespace around them.

use std::sync::Arc;

use crate::diagnostic::{Diagnostic, Location};

/// systemd's `WHITESPACE`.
pub(crate) const WHITESPACE: &[char] = &[' ', '\t', '\n', '\r'];

/// What a logical line means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineKind {
    /// Empty or whitespace only.
    Blank,
    /// `#` or `;` comment.
    Comment,
    /// `[Name]`.
    Section {
        /// The name between the brackets.
        name: String,
    },
    /// `Key=Value` inside a section.
    Assignment {
        /// The key, stripped of surrounding whitespace.
        key: String,
        /// The value, continuation lines joined as systemd joins them, stripped.
        value: String,
        /// 1-based column of the first character of the value on the line of the key
        /// (the column just after `=` when the value is empty).
        value_column: u32,
    },
    /// A line systemd ignores: an assignment outside any section, a line without `=`, a
    /// broken section header. A diagnostic says why.
    Ignored,
}

/// One logical line: one or more physical lines (a continuation, with any comment lines
/// interleaved in it), kept byte for byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The exact source text, line terminators included.
    pub raw: String,
    /// 1-based number of the first physical line.
    pub line: u32,
    /// 1-based column of the first non-whitespace character.
    pub column: u32,
    /// What the line means.
    pub kind: LineKind,
}

/// A unit file as written: its lines, losslessly. `serialize()` returns the parsed text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitFile {
    file: Arc<str>,
    lines: Vec<Line>,
}

/// The result of parsing: the file (always, whatever was wrong) and every problem found.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// The parsed file.
    pub file: UnitFile,
    /// Every problem, in line order.
    pub diagnostics: Vec<Diagnostic>,
}

impl UnitFile {
    /// The file name used in diagnostics.
    pub fn file_name(&self) -> &Arc<str> {
        &self.file
    }

    /// The logical lines, in order.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// The exact text that was parsed.
    pub fn serialize(&self) -> String {
        let mut out = String::with_capacity(self.lines.iter().map(|l| l.raw.len()).sum());
        for line in &self.lines {
            out.push_str(&line.raw);
        }
        out
    }
}

/// Whether systemd's `string_is_safe` accepts a section name.
fn section_name_is_safe(name: &str) -> bool {
    !name
        .chars()
        .any(|c| (c as u32) < 0x20 || c == '\x7f' || matches!(c, '\\' | '"' | '\''))
}

/// Whether `s` ends in an odd number of backslashes (systemd's continuation test).
pub(crate) fn ends_escaped(s: &str) -> bool {
    s.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1
}

/// 1-based character column of byte offset `at` in `s`.
fn column_of(s: &str, at: usize) -> u32 {
    u32::try_from(s[..at].chars().count() + 1).unwrap_or(u32::MAX)
}

/// Splits `text` into physical lines: (content without terminator, content with terminator).
fn physical_lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let bytes = text.as_bytes();
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= bytes.len() {
            return None;
        }
        let mut i = start;
        while i < bytes.len() && !matches!(bytes[i], b'\n' | b'\r' | 0) {
            i += 1;
        }
        let content_end = i;
        if i < bytes.len() {
            i += if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
        }
        let line = (&text[start..content_end], &text[start..i]);
        start = i;
        Some(line)
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    /// No section header seen yet.
    NoneYet,
    /// Inside a section.
    Open,
    /// After a broken section header: lines are ignored without further noise.
    Broken,
}

struct Parser<'a> {
    file: Arc<str>,
    lines: Vec<Line>,
    diagnostics: Vec<Diagnostic>,
    section: Section,
    /// The first physical line of the logical line being assembled.
    first: &'a str,
    pending: Option<Pending>,
}

struct Pending {
    raw: String,
    joined: String,
    line: u32,
}

/// Parses `text` (the contents of the file named `file`, used in diagnostics). Never fails:
/// what systemd would ignore is kept as [`LineKind::Ignored`] with a diagnostic.
pub fn parse(file: &str, text: &str) -> Parsed {
    let mut parser = Parser {
        file: Arc::from(file),
        lines: Vec::new(),
        diagnostics: Vec::new(),
        section: Section::NoneYet,
        first: "",
        pending: None,
    };
    let mut number = 0u32;
    for (content, full) in physical_lines(text) {
        number = number.saturating_add(1);
        // systemd looks for a comment before it skips the byte-order mark: a BOM followed by
        // `#` is not a comment (it is then an assignment outside of any section).
        let trimmed = content.trim_start_matches(WHITESPACE);
        let content = if number == 1 {
            content.strip_prefix('\u{feff}').unwrap_or(content)
        } else {
            content
        };
        if let Some(pending) = parser.pending.as_mut() {
            pending.raw.push_str(full);
            if trimmed.starts_with(['#', ';']) {
                continue;
            }
            pending.joined.push_str(content);
            if ends_escaped(&pending.joined) {
                pending.joined.pop();
                pending.joined.push(' ');
                continue;
            }
            let pending = parser.pending.take().expect("pending continuation");
            parser.logical(pending);
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
            let kind = if trimmed.is_empty() {
                LineKind::Blank
            } else {
                LineKind::Comment
            };
            parser.lines.push(Line {
                raw: full.to_owned(),
                line: number,
                column: column_of(content, content.len() - trimmed.len()),
                kind,
            });
            continue;
        }
        parser.first = content;
        let mut joined = content.to_owned();
        let continued = ends_escaped(&joined);
        if continued {
            joined.pop();
            joined.push(' ');
        }
        let pending = Pending {
            raw: full.to_owned(),
            joined,
            line: number,
        };
        if continued {
            parser.pending = Some(pending);
        } else {
            parser.logical(pending);
        }
    }
    if let Some(pending) = parser.pending.take() {
        parser.logical(pending);
    }
    Parsed {
        file: UnitFile {
            file: parser.file,
            lines: parser.lines,
        },
        diagnostics: parser.diagnostics,
    }
}

impl Parser<'_> {
    fn logical(&mut self, pending: Pending) {
        let Pending { raw, joined, line } = pending;
        let lead = joined.len() - joined.trim_start_matches(WHITESPACE).len();
        let l = joined.trim_matches(WHITESPACE);
        let first = self.first;
        let col = |byte: usize| {
            // Columns are counted on the first physical line; past its end, clamp to its end.
            let at = byte.min(first.len());
            let at = (0..=at)
                .rev()
                .find(|&i| first.is_char_boundary(i))
                .unwrap_or(0);
            column_of(first, at)
        };
        let column = col(lead);
        let at = Location {
            file: self.file.clone(),
            line,
            column,
        };
        let kind = if l.is_empty() {
            LineKind::Blank
        } else if l.starts_with('[') {
            if !l.ends_with(']') || l.len() < 2 {
                self.diagnostics.push(Diagnostic::error(
                    &at,
                    format!("invalid section header '{l}': it must end with ']'"),
                ));
                self.section = Section::Broken;
                LineKind::Ignored
            } else {
                let name = &l[1..l.len() - 1];
                if section_name_is_safe(name) {
                    self.section = Section::Open;
                    LineKind::Section {
                        name: name.to_owned(),
                    }
                } else {
                    self.diagnostics.push(Diagnostic::error(
                        &at,
                        format!(
                            "bad characters in section header '{l}': control characters, quotes and backslashes are not allowed"
                        ),
                    ));
                    self.section = Section::Broken;
                    LineKind::Ignored
                }
            }
        } else {
            match self.section {
                Section::Broken => LineKind::Ignored,
                Section::NoneYet => {
                    self.diagnostics.push(Diagnostic::warning(
                        &at,
                        format!("assignment outside of any section, ignoring: {l}"),
                    ));
                    LineKind::Ignored
                }
                Section::Open => match l.find('=') {
                    None => {
                        self.diagnostics.push(Diagnostic::warning(
                            &at,
                            format!("missing '=' in '{l}', ignoring line"),
                        ));
                        LineKind::Ignored
                    }
                    Some(0) => {
                        self.diagnostics.push(Diagnostic::warning(
                            &at,
                            format!("missing key name before '=' in '{l}', ignoring line"),
                        ));
                        LineKind::Ignored
                    }
                    Some(eq) => {
                        let key = l[..eq].trim_end_matches(WHITESPACE);
                        let rest = &l[eq + 1..];
                        let value = rest.trim_matches(WHITESPACE);
                        let value_at = lead
                            + eq
                            + 1
                            + (rest.len() - rest.trim_start_matches(WHITESPACE).len());
                        LineKind::Assignment {
                            key: key.to_owned(),
                            value: value.to_owned(),
                            value_column: col(value_at),
                        }
                    }
                },
            }
        };
        self.lines.push(Line {
            raw,
            line,
            column,
            kind,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignments(text: &str) -> Vec<(String, String, u32, u32)> {
        parse("t.service", text)
            .file
            .lines()
            .iter()
            .filter_map(|l| match &l.kind {
                LineKind::Assignment { key, value, .. } => {
                    Some((key.clone(), value.clone(), l.line, l.column))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn continuation_joins_as_systemd_does() {
        let got = assignments("[S]\n  A = x \\\n# skipped\n; skipped\n   y\\\\\nB=1\\\n\nC=2 \\");
        assert_eq!(
            got,
            [
                ("A".into(), "x     y\\\\".into(), 2, 3),
                ("B".into(), "1".into(), 6, 1),
                ("C".into(), "2".into(), 8, 1),
            ]
        );
    }

    #[test]
    fn line_terminators_and_bom() {
        let text = "\u{feff}[S]\r\nA=1\rB=2\0C=3\r\n";
        let got = assignments(text);
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], ("C".into(), "3".into(), 4, 1));
        assert_eq!(parse("t", text).file.serialize(), text);
    }

    #[test]
    fn diagnostics_with_columns() {
        let parsed = parse("t.service", "A=1\n[S]\n  garbage\n  =x\n [bad\n");
        let shown: Vec<String> = parsed.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            shown,
            [
                "t.service:1:1: warning: assignment outside of any section, ignoring: A=1",
                "t.service:3:3: warning: missing '=' in 'garbage', ignoring line",
                "t.service:4:3: warning: missing key name before '=' in '=x', ignoring line",
                "t.service:5:2: invalid section header '[bad': it must end with ']'",
            ]
        );
    }
}
