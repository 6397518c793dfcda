//! Unit names: validation, the type suffixes, templates and instances, and escaping as
//! `systemd-escape` does it (systemd's `src/basic/unit-name.c`).

use std::fmt;
use std::str::FromStr;

/// systemd's `UNIT_NAME_MAX` (256, including the terminating NUL).
pub const UNIT_NAME_MAX: usize = 255;

/// Why a unit name is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("unit name is empty")]
    Empty,
    /// Longer than systemd allows.
    #[error("unit name '{0}' is longer than {UNIT_NAME_MAX} bytes")]
    TooLong(String),
    /// No `.type` suffix.
    #[error("unit name '{0}' has no type suffix: add one such as '.service'")]
    NoSuffix(String),
    /// The suffix is not a unit type.
    #[error(
        "unit name '{name}' has unknown type '.{suffix}': expected one of {}",
        UnitType::SUFFIXES
    )]
    UnknownType {
        /// The whole name.
        name: String,
        /// The suffix after the last dot.
        suffix: String,
    },
    /// A character systemd does not allow.
    #[error(
        "unit name '{name}' contains '{ch}': only ASCII letters, digits and ':-_.\\' are allowed (and one '@')"
    )]
    BadCharacter {
        /// The whole name.
        name: String,
        /// The offending character.
        ch: char,
    },
    /// Nothing before the `@` or the suffix.
    #[error("unit name '{0}' has an empty prefix")]
    EmptyPrefix(String),
}

/// The unit types systemd knows, by suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnitType {
    /// `.service`
    Service,
    /// `.socket`
    Socket,
    /// `.target`
    Target,
    /// `.device`
    Device,
    /// `.mount`
    Mount,
    /// `.automount`
    Automount,
    /// `.swap`
    Swap,
    /// `.timer`
    Timer,
    /// `.path`
    Path,
    /// `.slice`
    Slice,
    /// `.scope`
    Scope,
}

impl UnitType {
    /// Every type, in systemd's order.
    pub const ALL: [UnitType; 11] = [
        UnitType::Service,
        UnitType::Socket,
        UnitType::Target,
        UnitType::Device,
        UnitType::Mount,
        UnitType::Automount,
        UnitType::Swap,
        UnitType::Timer,
        UnitType::Path,
        UnitType::Slice,
        UnitType::Scope,
    ];

    const SUFFIXES: &'static str =
        "service, socket, target, device, mount, automount, swap, timer, path, slice, scope";

    /// The suffix without the dot.
    pub fn suffix(self) -> &'static str {
        match self {
            UnitType::Service => "service",
            UnitType::Socket => "socket",
            UnitType::Target => "target",
            UnitType::Device => "device",
            UnitType::Mount => "mount",
            UnitType::Automount => "automount",
            UnitType::Swap => "swap",
            UnitType::Timer => "timer",
            UnitType::Path => "path",
            UnitType::Slice => "slice",
            UnitType::Scope => "scope",
        }
    }

    /// The type for a suffix (without the dot).
    pub fn from_suffix(suffix: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.suffix() == suffix)
    }

    /// The type-specific section (`Service` for services); `None` for targets and devices,
    /// which have only `[Unit]` and `[Install]`.
    pub fn section(self) -> Option<&'static str> {
        match self {
            UnitType::Service => Some("Service"),
            UnitType::Socket => Some("Socket"),
            UnitType::Mount => Some("Mount"),
            UnitType::Automount => Some("Automount"),
            UnitType::Swap => Some("Swap"),
            UnitType::Timer => Some("Timer"),
            UnitType::Path => Some("Path"),
            UnitType::Slice => Some("Slice"),
            UnitType::Scope => Some("Scope"),
            UnitType::Target | UnitType::Device => None,
        }
    }
}

impl fmt::Display for UnitType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// A valid unit name, split into its parts: `prefix[@instance].type`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnitName {
    full: String,
    /// Byte offset of the `@`, if any.
    at: Option<usize>,
    /// Byte offset of the dot before the suffix.
    dot: usize,
    unit_type: UnitType,
}

/// Characters systemd allows in a unit name prefix (`VALID_CHARS` in unit-name.h).
fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\')
}

impl UnitName {
    /// Validates `name` as systemd's `unit_name_is_valid(name, UNIT_NAME_ANY)` does.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > UNIT_NAME_MAX {
            return Err(NameError::TooLong(name.to_owned()));
        }
        let dot = name
            .rfind('.')
            .ok_or_else(|| NameError::NoSuffix(name.to_owned()))?;
        let suffix = &name[dot + 1..];
        let unit_type = UnitType::from_suffix(suffix).ok_or_else(|| NameError::UnknownType {
            name: name.to_owned(),
            suffix: suffix.to_owned(),
        })?;
        let stem = &name[..dot];
        let at = stem.find('@');
        let prefix = &stem[..at.unwrap_or(stem.len())];
        if prefix.is_empty() {
            return Err(NameError::EmptyPrefix(name.to_owned()));
        }
        let bad = |ch| NameError::BadCharacter {
            name: name.to_owned(),
            ch,
        };
        if let Some(ch) = prefix.chars().find(|&c| !valid_char(c)) {
            return Err(bad(ch));
        }
        if let Some(at) = at {
            // The instance may itself contain '@' (VALID_CHARS "@" in unit_name_is_valid).
            if let Some(ch) = stem[at + 1..].chars().find(|&c| !valid_char(c) && c != '@') {
                return Err(bad(ch));
            }
        }
        Ok(Self {
            full: name.to_owned(),
            at,
            dot,
            unit_type,
        })
    }

    /// The whole name (`%n`).
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The type given by the suffix.
    pub fn unit_type(&self) -> UnitType {
        self.unit_type
    }

    /// The name without the type suffix (`%N`): `foo@bar` for `foo@bar.service`.
    pub fn without_suffix(&self) -> &str {
        &self.full[..self.dot]
    }

    /// The prefix (`%p`): what comes before the `@`, or the name without suffix.
    pub fn prefix(&self) -> &str {
        &self.full[..self.at.unwrap_or(self.dot)]
    }

    /// The instance (`%i`): between `@` and the suffix; `None` for plain names, `Some("")` for
    /// templates.
    pub fn instance(&self) -> Option<&str> {
        self.at.map(|at| &self.full[at + 1..self.dot])
    }

    /// Whether this is a template (`foo@.service`).
    pub fn is_template(&self) -> bool {
        self.instance() == Some("")
    }

    /// Whether this is an instance of a template (`foo@bar.service`).
    pub fn is_instance(&self) -> bool {
        self.instance().is_some_and(|i| !i.is_empty())
    }

    /// The template this instance comes from (`foo@.service` for `foo@bar.service`).
    pub fn template(&self) -> Option<UnitName> {
        self.at.map(|at| UnitName {
            full: format!("{}@.{}", &self.full[..at], self.unit_type.suffix()),
            at: Some(at),
            dot: at + 1,
            unit_type: self.unit_type,
        })
    }

    /// The instance of this template named `instance` (escape it first with [`escape`] if it
    /// is free text).
    pub fn instantiate(&self, instance: &str) -> Result<UnitName, NameError> {
        UnitName::parse(&format!(
            "{}@{}.{}",
            self.prefix(),
            instance,
            self.unit_type.suffix()
        ))
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl FromStr for UnitName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Escapes a string for use in a unit name, as `systemd-escape STRING` does: `/` becomes
/// `-`; ASCII letters, digits, `:`, `_` and `.` (except a leading `.`) stay; every other
/// byte becomes `\xHH`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.') => {
                out.push(b as char)
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Escapes a file system path, as `systemd-escape --path PATH` does: the path is simplified
/// (repeated and trailing slashes dropped, `.` components removed), the leading slash
/// dropped, and the root directory becomes `-`.
pub fn escape_path(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() {
        return "-".to_owned();
    }
    escape(&parts.join("/"))
}

/// Reverses [`escape`] (systemd's `unit_name_unescape`): `-` becomes `/`, `\xHH` the byte it
/// names. Bytes that do not form UTF-8 are replaced with U+FFFD.
pub fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'-' => out.push(b'/'),
            b'\\' if bytes.get(i + 1) == Some(&b'x') => {
                let hex = s
                    .get(i + 2..i + 4)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => out.push(b'\\'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reverses [`escape_path`] (systemd's `unit_name_path_unescape`): the result starts with
/// `/`; `-` alone is the root directory.
pub fn unescape_path(s: &str) -> String {
    if s == "-" || s.is_empty() {
        return "/".to_owned();
    }
    format!("/{}", unescape(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_names() {
        let n = UnitName::parse("foo@bar-baz.service").unwrap();
        assert_eq!(n.prefix(), "foo");
        assert_eq!(n.instance(), Some("bar-baz"));
        assert_eq!(n.without_suffix(), "foo@bar-baz");
        assert!(n.is_instance());
        assert_eq!(n.template().unwrap().as_str(), "foo@.service");
        let t = UnitName::parse("foo@.service").unwrap();
        assert!(t.is_template());
        assert_eq!(t.instantiate("x").unwrap().as_str(), "foo@x.service");
        assert_eq!(UnitName::parse("a.b.timer").unwrap().prefix(), "a.b");
    }

    #[test]
    fn invalid_names() {
        assert_eq!(UnitName::parse(""), Err(NameError::Empty));
        assert!(matches!(
            UnitName::parse("foo"),
            Err(NameError::NoSuffix(_))
        ));
        assert!(matches!(
            UnitName::parse("foo.txt"),
            Err(NameError::UnknownType { .. })
        ));
        assert!(matches!(
            UnitName::parse("@x.service"),
            Err(NameError::EmptyPrefix(_))
        ));
        assert!(matches!(
            UnitName::parse("a b.service"),
            Err(NameError::BadCharacter { ch: ' ', .. })
        ));
        assert!(UnitName::parse("a@b@c.service").is_ok());
        assert!(matches!(
            UnitName::parse(&format!("{}.service", "a".repeat(250))),
            Err(NameError::TooLong(_))
        ));
    }

    #[test]
    fn escaping_matches_systemd_escape() {
        // Expected values from `systemd-escape` 252.
        assert_eq!(escape("foo/bar baz"), "foo-bar\\x20baz");
        assert_eq!(escape(".hidden"), "\\x2ehidden");
        assert_eq!(escape("a-b"), "a\\x2db");
        assert_eq!(escape("ü"), "\\xc3\\xbc");
        assert_eq!(escape_path("/dev/sda1"), "dev-sda1");
        assert_eq!(escape_path("/"), "-");
        assert_eq!(escape_path("//var//lib/"), "var-lib");
        assert_eq!(unescape("foo-bar\\x20baz"), "foo/bar baz");
        assert_eq!(unescape_path("dev-sda1"), "/dev/sda1");
        assert_eq!(unescape_path("-"), "/");
    }
}
