//! Command lines as `ExecStart=` and the other `Exec*=` settings take them (systemd.service(5)
//! "Command lines"; systemd 252 `config_parse_exec` and `extract_first_word`): prefixes
//! (`-@:+!` and `!!`), words split on whitespace, double and single quotes, C escapes, and a
//! lone `;` separating several commands on one line.

use crate::specifier;

/// What is wrong with a command line. Each variant that systemd treats as fatal makes the
/// unit fail to load unless the command has the `-` prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// A quote is opened and never closed.
    #[error("unbalanced quoting in command line '{0}'")]
    UnbalancedQuoting(String),
    /// Only prefixes, no path.
    #[error("empty executable path in command line '{0}'")]
    EmptyPath(String),
    /// `@` given but no argv\[0\] after the path.
    #[error(
        "empty executable name or zeroeth argument in command line '{0}': '@' needs the path and then argv[0]"
    )]
    EmptyArgv0(String),
    /// Neither an absolute path nor a plain file name.
    #[error("'{0}' is neither a valid executable name nor an absolute path")]
    BadPath(String),
    /// The path names a directory.
    #[error("executable path '{0}' specifies a directory")]
    Directory(String),
    /// An unknown `%x`.
    #[error("{0} in command line")]
    Specifier(#[from] specifier::SpecifierError),
}

/// The prefixes of one command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecFlags {
    /// `-`: a failure exit code is recorded but ignored (and so is an invalid command line).
    pub ignore_failure: bool,
    /// `@`: the second word is argv\[0\].
    pub argv0: bool,
    /// `:`: no environment variable substitution.
    pub no_env_expand: bool,
    /// `+`: run with full privileges.
    pub full_privileges: bool,
    /// `!`: no user/group credential change.
    pub no_setuid: bool,
    /// `!!`: like `!`, only where ambient capabilities are missing.
    pub ambient_magic: bool,
}

/// One command: path and argv, after unquoting and unescaping (specifiers not expanded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCommand {
    /// The prefixes.
    pub flags: ExecFlags,
    /// The executable: an absolute path, or a file name looked up in the fixed search path.
    pub path: String,
    /// The arguments, argv\[0\] first.
    pub argv: Vec<String>,
}

/// A warning that systemd logs and ignores (unknown escape sequences).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecWarning(pub String);

/// The outcome of splitting one word.
enum Word {
    /// A word, and whether it was exactly an unquoted, unescaped `;`.
    Word(String, bool),
    /// No more words.
    End,
}

/// Splits the next word off `s` as systemd's `extract_first_word(…, EXTRACT_UNQUOTE |
/// EXTRACT_CUNESCAPE | EXTRACT_CUNESCAPE_RELAX)` does.
fn next_word(s: &mut &str, warnings: &mut Vec<ExecWarning>, line: &str) -> Result<Word, ExecError> {
    let rest = s.trim_start_matches([' ', '\t', '\n', '\r']);
    if rest.is_empty() {
        *s = rest;
        return Ok(Word::End);
    }
    let mut out = String::new();
    let mut chars = rest.char_indices().peekable();
    let mut quote: Option<char> = None;
    let mut plain_semicolon = true;
    let mut end = rest.len();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (None, ' ' | '\t' | '\n' | '\r') => {
                end = i;
                break;
            }
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => {
                plain_semicolon = false;
                quote = Some(c);
            }
            (_, '\\') => {
                plain_semicolon = false;
                let Some((_, e)) = chars.next() else {
                    // Cannot happen in a unit file (a trailing backslash continues the line);
                    // systemd keeps it in relaxed mode.
                    out.push('\\');
                    break;
                };
                match e {
                    'a' => out.push('\x07'),
                    'b' => out.push('\x08'),
                    'f' => out.push('\x0c'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'v' => out.push('\x0b'),
                    's' => out.push(' '),
                    '\\' | '"' | '\'' | ' ' | ';' => out.push(e),
                    'x' => {
                        let hex: String = (0..2)
                            .filter_map(|_| {
                                chars
                                    .next_if(|(_, c)| c.is_ascii_hexdigit())
                                    .map(|(_, c)| c)
                            })
                            .collect();
                        match u8::from_str_radix(&hex, 16) {
                            Ok(b) if hex.len() == 2 && b != 0 => out.push(char::from(b)),
                            _ => {
                                warnings.push(ExecWarning(format!(
                                    "ignoring invalid escape sequence '\\x{hex}' in '{line}'"
                                )));
                                out.push_str("\\x");
                                out.push_str(&hex);
                            }
                        }
                    }
                    'u' | 'U' => {
                        let n = if e == 'u' { 4 } else { 8 };
                        let hex: String = (0..n)
                            .filter_map(|_| {
                                chars
                                    .next_if(|(_, c)| c.is_ascii_hexdigit())
                                    .map(|(_, c)| c)
                            })
                            .collect();
                        match u32::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| hex.len() == n)
                            .and_then(char::from_u32)
                            .filter(|&c| c != '\0')
                        {
                            Some(c) => out.push(c),
                            None => {
                                warnings.push(ExecWarning(format!(
                                    "ignoring invalid escape sequence '\\{e}{hex}' in '{line}'"
                                )));
                                out.push('\\');
                                out.push(e);
                                out.push_str(&hex);
                            }
                        }
                    }
                    '0'..='7' => {
                        let mut digits = String::from(e);
                        for _ in 0..2 {
                            if let Some((_, d)) = chars.next_if(|(_, c)| ('0'..='7').contains(c)) {
                                digits.push(d);
                            }
                        }
                        match u8::from_str_radix(&digits, 8) {
                            Ok(b) if digits.len() == 3 && b != 0 => out.push(char::from(b)),
                            _ => {
                                warnings.push(ExecWarning(format!(
                                    "ignoring invalid escape sequence '\\{digits}' in '{line}'"
                                )));
                                out.push('\\');
                                out.push_str(&digits);
                            }
                        }
                    }
                    other => {
                        warnings.push(ExecWarning(format!(
                            "ignoring unknown escape sequence '\\{other}' in '{line}'"
                        )));
                        out.push('\\');
                        out.push(other);
                    }
                }
            }
            (_, c) => out.push(c),
        }
    }
    if quote.is_some() {
        return Err(ExecError::UnbalancedQuoting(line.to_owned()));
    }
    *s = &rest[end..];
    let semicolon = plain_semicolon && out == ";";
    Ok(Word::Word(out, semicolon))
}

/// systemd's `filename_is_valid`.
fn filename_is_valid(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && s.len() <= 255
}

/// The result of parsing one `Exec*=` value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecLine {
    /// The commands, in order (several when `;` separates them).
    pub commands: Vec<ExecCommand>,
    /// Errors. With the `-` prefix systemd logs them and drops the command (the unit still
    /// loads); without it they make the unit fail to load: see [`ExecLine::fatal`].
    pub errors: Vec<(ExecError, bool)>,
    /// Problems systemd logs and ignores.
    pub warnings: Vec<ExecWarning>,
}

impl ExecLine {
    /// The errors that make systemd refuse the unit (those on commands without `-`).
    pub fn fatal(&self) -> impl Iterator<Item = &ExecError> {
        self.errors
            .iter()
            .filter(|(_, ignored)| !ignored)
            .map(|(e, _)| e)
    }
}

/// Splits `value` into words as systemd splits a command line (quotes, C escapes), without
/// prefixes or `;` separators: every word, `;` included, is an argument.
pub fn words(value: &str) -> Result<Vec<String>, ExecError> {
    let mut rest = value;
    let mut warnings = Vec::new();
    let mut out = Vec::new();
    loop {
        match next_word(&mut rest, &mut warnings, value)? {
            Word::End => return Ok(out),
            Word::Word(w, _) => out.push(w),
        }
    }
}

/// Parses the value of an `Exec*=` setting. An empty value is a reset (no commands).
pub fn parse(value: &str) -> ExecLine {
    let mut line = ExecLine::default();
    let mut rest = value;
    loop {
        // The first word, with its prefixes.
        let first = match next_word(&mut rest, &mut line.warnings, value) {
            Ok(Word::End) => break,
            Ok(Word::Word(w, _)) => w,
            Err(e) => {
                // The prefixes come first, in any order: is `-` among them?
                let word = rest.trim_start_matches([' ', '\t', '\n', '\r']);
                let prefixes = word.trim_start_matches(['-', '@', ':', '+', '!']);
                let ignored = word[..word.len() - prefixes.len()].contains('-');
                line.errors.push((e, ignored));
                break;
            }
        };
        let mut flags = ExecFlags::default();
        let mut path = first.as_str();
        loop {
            let mut chars = path.chars();
            match chars.next() {
                Some('-') if !flags.ignore_failure => flags.ignore_failure = true,
                Some('@') if !flags.argv0 => flags.argv0 = true,
                Some(':') if !flags.no_env_expand => flags.no_env_expand = true,
                Some('+') if !(flags.full_privileges || flags.no_setuid || flags.ambient_magic) => {
                    flags.full_privileges = true
                }
                Some('!')
                    if path.starts_with("!!")
                        && !(flags.full_privileges || flags.no_setuid || flags.ambient_magic) =>
                {
                    flags.ambient_magic = true;
                    path = &path[1..];
                }
                Some('!') if !(flags.full_privileges || flags.no_setuid || flags.ambient_magic) => {
                    flags.no_setuid = true
                }
                _ => break,
            }
            path = &path[1..];
        }
        let ignore = flags.ignore_failure;
        let path = path.to_owned();
        let mut argv = Vec::new();
        let mut error = None;
        if path.is_empty() {
            error = Some(ExecError::EmptyPath(value.to_owned()));
        } else if !path.starts_with('/') && !filename_is_valid(&path) {
            error = Some(ExecError::BadPath(path.clone()));
        } else if path.ends_with('/') {
            error = Some(ExecError::Directory(path.clone()));
        } else if let Err((_, e)) = specifier::check(&path) {
            error = Some(e.into());
        }
        // The remaining words up to a lone `;`.
        let mut more = false;
        loop {
            match next_word(&mut rest, &mut line.warnings, value) {
                Ok(Word::End) => break,
                Ok(Word::Word(_, true)) => {
                    more = true;
                    break;
                }
                Ok(Word::Word(w, false)) => {
                    if error.is_none()
                        && let Err((_, e)) = specifier::check(&w)
                    {
                        error = Some(e.into());
                    }
                    argv.push(w);
                }
                Err(e) => {
                    error.get_or_insert(e);
                    rest = "";
                    break;
                }
            }
        }
        if flags.argv0 {
            if argv.is_empty() && error.is_none() {
                error = Some(ExecError::EmptyArgv0(value.to_owned()));
            }
        } else {
            argv.insert(0, path.clone());
        }
        match error {
            Some(e) => line.errors.push((e, ignore)),
            None => line.commands.push(ExecCommand { flags, path, argv }),
        }
        if !more {
            break;
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(v: &str) -> Vec<Vec<String>> {
        let line = parse(v);
        assert!(line.errors.is_empty(), "{v}: {:?}", line.errors);
        line.commands.into_iter().map(|c| c.argv).collect()
    }

    #[test]
    fn quoting_and_escapes() {
        assert_eq!(
            argv(r#"/bin/echo "a b" 'c d' e\ f"#),
            [["/bin/echo", "a b", "c d", "e f"]]
        );
        assert_eq!(
            argv(r#"/bin/echo a"b c"d \x41 \101 \u00e9 \t"#),
            [["/bin/echo", "ab cd", "A", "A", "é", "\t"]]
        );
        assert_eq!(
            argv("/bin/a x ; /bin/b ; /bin/c \\;"),
            [vec!["/bin/a", "x"], vec!["/bin/b"], vec!["/bin/c", ";"]]
        );
        assert_eq!(argv("/bin/a ';'"), [["/bin/a", ";"]]);
        assert_eq!(argv("@/bin/sh sh -c true"), [["sh", "-c", "true"]]);
        assert_eq!(argv("true"), [["true"]]);
    }

    #[test]
    fn prefixes() {
        let line = parse("-!!:/bin/x");
        let flags = line.commands[0].flags;
        assert!(
            flags.ignore_failure && flags.ambient_magic && flags.no_env_expand && !flags.no_setuid
        );
        assert_eq!(line.commands[0].path, "/bin/x");
    }

    #[test]
    fn errors() {
        assert_eq!(parse("/bin/echo \"x").fatal().count(), 1);
        assert_eq!(parse("-/bin/echo \"x").fatal().count(), 0);
        assert_eq!(parse("-/bin/echo \"x").errors.len(), 1);
        assert_eq!(parse("@-/bin/echo \"x").fatal().count(), 0);
        assert!(matches!(
            parse("@/bin/true").errors[0].0,
            ExecError::EmptyArgv0(_)
        ));
        assert!(matches!(
            parse("|/bin/true").errors[0].0,
            ExecError::BadPath(_)
        ));
        assert!(matches!(
            parse("/bin/echo %z").errors[0].0,
            ExecError::Specifier(_)
        ));
        assert!(matches!(
            parse("-").errors[0],
            (ExecError::EmptyPath(_), true)
        ));
        assert!(parse("").commands.is_empty());
        assert_eq!(parse("/bin/echo \\q").warnings.len(), 1);
    }
}
