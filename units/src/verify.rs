//! Everything checked about one unit file and its drop-ins, in one call: syntax, unit name,
//! systemd's load-time checks, `[X-Fleet]` and `[X-Flotilla]`.

use std::sync::Arc;

use crate::check;
use crate::diagnostic::{Diagnostic, Location};
use crate::fleet::{self, FleetOptions};
use crate::flotilla::{self, FlotillaOptions};
use crate::name::UnitName;
use crate::syntax;
use crate::unit::Unit;

/// The outcome of [`verify`].
#[derive(Debug, Clone)]
pub struct Verified {
    /// The unit name, when the file name is a valid one.
    pub name: Option<UnitName>,
    /// The unit with its drop-ins applied.
    pub unit: Unit,
    /// `[X-Fleet]`, typed.
    pub fleet: FleetOptions,
    /// `[X-Flotilla]`, typed.
    pub flotilla: FlotillaOptions,
    /// Every problem, file by file (the unit file, then the drop-ins in order), each file in
    /// line order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Verified {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        crate::diagnostic::has_errors(&self.diagnostics)
    }
}

/// The last path component of `path` (unit names are file names).
pub fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Verifies the unit file `path` (its base name is the unit name) with contents `text`, and
/// its drop-ins `(path, text)` in the order systemd applies them ([`crate::dropin::order`]).
///
/// A file whose name ends in `.conf` is a drop-in on its own: syntax, unknown keys, command
/// lines, `[X-Fleet]` and `[X-Flotilla]` are checked, nothing that needs the whole unit.
pub fn verify(path: &str, text: &str, dropins: &[(&str, &str)]) -> Verified {
    let mut diagnostics = Vec::new();
    let parsed = syntax::parse(path, text);
    let mut main = parsed.diagnostics;
    let mut unit = Unit::from_file(&parsed.file);
    let base = base_name(path);
    let is_dropin = base.ends_with(".conf");
    let name = if is_dropin {
        None
    } else {
        match UnitName::parse(base) {
            Ok(n) => Some(n),
            Err(e) => {
                let at = Location {
                    file: Arc::from(path),
                    line: 0,
                    column: 0,
                };
                main.push(Diagnostic::error(&at, e.to_string()));
                None
            }
        }
    };
    for (dropin_path, dropin_text) in dropins {
        let parsed = syntax::parse(dropin_path, dropin_text);
        diagnostics.extend(parsed.diagnostics);
        unit.apply_dropin(&Unit::from_file(&parsed.file));
    }
    if is_dropin {
        // On its own a drop-in is partial: only what holds line by line is checked.
        main.extend(check::check(&unit, None));
    } else if name.is_some() {
        main.extend(check::check(&unit, name.as_ref()));
    }
    let (fleet, d) = fleet::options(&unit, name.as_ref());
    main.extend(d);
    let (flotilla, d) = flotilla::options(&unit);
    main.extend(d);
    main.append(&mut diagnostics);
    // File by file in the order given, each in line order.
    let mut order: Vec<Arc<str>> = vec![Arc::from(path)];
    order.extend(dropins.iter().map(|(p, _)| Arc::from(*p)));
    main.sort_by_key(|d| {
        (
            order.iter().position(|f| *f == d.file).unwrap_or(0),
            d.line,
            d.column,
        )
    });
    for d in &mut main {
        if d.file.is_empty() {
            d.file = Arc::from(path);
        }
    }
    Verified {
        name,
        unit,
        fleet,
        flotilla,
        diagnostics: main,
    }
}
