//! Diagnostics: every problem found in a unit file, located as `file:line:column`.

use std::fmt;
use std::sync::Arc;

/// How bad a problem is, decided the way systemd decides it: an error is what makes systemd
/// refuse to load the unit (`systemd-analyze verify` exits non-zero), a warning is what systemd
/// logs and then ignores ("…, ignoring").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// systemd would log this and carry on.
    Warning,
    /// systemd would refuse the unit (or fleet would refuse to schedule it).
    Error,
}

/// Where a problem was found: the file name the caller passed, 1-based line and column
/// (columns count characters, not bytes).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Location {
    /// The file name given by the caller, shown as is.
    pub file: Arc<str>,
    /// 1-based line number; 0 when the problem concerns the whole file.
    pub line: u32,
    /// 1-based column; 0 when the problem concerns the whole line or file.
    pub column: u32,
}

/// One problem in a unit file. `Display` is `file:line:column: message`, with `warning: ` in
/// front of the message for warnings.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Diagnostic {
    /// The file name given by the caller.
    pub file: Arc<str>,
    /// 1-based line number (0: the whole file).
    pub line: u32,
    /// 1-based column in characters (0: the whole line).
    pub column: u32,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, lowercase, naming the key or value involved.
    pub message: String,
}

impl Diagnostic {
    /// An error at `at`.
    pub fn error(at: &Location, message: impl Into<String>) -> Self {
        Self::new(at, Severity::Error, message)
    }

    /// A warning at `at`.
    pub fn warning(at: &Location, message: impl Into<String>) -> Self {
        Self::new(at, Severity::Warning, message)
    }

    fn new(at: &Location, severity: Severity, message: impl Into<String>) -> Self {
        Self {
            file: at.file.clone(),
            line: at.line,
            column: at.column,
            severity,
            message: message.into(),
        }
    }

    /// Whether this is an error (not a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Whether any diagnostic in `diagnostics` is an error.
pub fn has_errors(diagnostics: &[Diagnostic]) -> bool {
    diagnostics.iter().any(Diagnostic::is_error)
}
