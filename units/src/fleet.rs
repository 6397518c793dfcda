//! The `[X-Fleet]` section with fleet's meaning, so existing fleet unit files schedule as they
//! did under fleet. The rules mirror fleet (github.com/coreos/fleet): the keys and their
//! deprecated names are `validRequirements` in `job/job.go`; specifiers `%n %N %p %i` are
//! expanded in every value (`unitPrintf`); a value that starts and ends with `"` holds several
//! quoted values (`parseMultivalueLine` in `unit/unit.go`); the combinations fleet refuses are
//! those of `ValidateOptions` in `api/units.go`.

use crate::diagnostic::{Diagnostic, Location};
use crate::name::UnitName;
use crate::unit::{Entry, Unit};

/// The section holding fleet's options.
pub const SECTION: &str = "X-Fleet";

/// fleet's scheduling options of one unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FleetOptions {
    /// `MachineID=` (old names `X-ConditionMachineID=`, `X-ConditionMachineBootID=`): run only
    /// on this machine. fleet uses the first value found, `MachineID` before the old names
    /// (`Job.RequiredTarget`).
    pub machine_id: Option<String>,
    /// `MachineOf=` (old: `X-ConditionMachineOf=`): run on the machine that runs each of these
    /// units (fleet calls them peers).
    pub machine_of: Vec<String>,
    /// `MachineMetadata=key=value` (old: `X-ConditionMachineMetadata=`): values of the same key
    /// are OR-ed, different keys AND-ed (`Job.RequiredTargetMetadata`). Keys in order of first
    /// appearance, values in order, no duplicates.
    pub machine_metadata: Vec<(String, Vec<String>)>,
    /// `Conflicts=` (old: `X-Conflicts=`): never on a machine running a unit whose name
    /// matches one of these globs (Go `path.Match` syntax: `*`, `?`, `[…]`, `\`).
    pub conflicts: Vec<String>,
    /// `Global=`: run on every machine (that matches `MachineMetadata`). The last value wins;
    /// true is `true`, `yes`, `1`, `on` or `t`, any case (`isTruthyValue`).
    pub global: bool,
    /// `Replaces=`: move the named units off the machine this unit is scheduled to.
    pub replaces: Vec<String>,
}

impl FleetOptions {
    /// Whether `metadata` (a machine's key/value pairs) satisfies `MachineMetadata`: for every
    /// key required, the machine has that key with one of the listed values.
    pub fn metadata_matches(&self, metadata: &[(String, String)]) -> bool {
        self.machine_metadata.iter().all(|(key, values)| {
            metadata
                .iter()
                .any(|(k, v)| k == key && values.iter().any(|want| want == v))
        })
    }

    /// Whether unit name `other` matches one of the `Conflicts` globs.
    pub fn conflicts_with(&self, other: &str) -> bool {
        self.conflicts
            .iter()
            .any(|g| glob_match(g, other) == Some(true))
    }
}

/// The keys fleet knows and what each becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    MachineId,
    MachineIdOld,
    MachineBootIdOld,
    MachineOf,
    MachineMetadata,
    Conflicts,
    Global,
    Replaces,
}

fn key(name: &str) -> Option<Key> {
    Some(match name {
        "MachineID" => Key::MachineId,
        "X-ConditionMachineID" => Key::MachineIdOld,
        "X-ConditionMachineBootID" => Key::MachineBootIdOld,
        "MachineOf" | "X-ConditionMachineOf" => Key::MachineOf,
        "MachineMetadata" | "X-ConditionMachineMetadata" => Key::MachineMetadata,
        "Conflicts" | "X-Conflicts" => Key::Conflicts,
        "Global" => Key::Global,
        "Replaces" => Key::Replaces,
        _ => return None,
    })
}

/// fleet's `parseMultivalueLine`: `"a=b" "c=d"` is two values; anything not both starting and
/// ending with `"` is one value, as written.
fn multivalue(line: &str) -> Vec<String> {
    if line.len() < 2 || !line.starts_with('"') || !line.ends_with('"') {
        return vec![line.to_owned()];
    }
    let mut values = Vec::new();
    let mut value = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => values.push(std::mem::take(&mut value)),
            c => value.push(c),
        }
    }
    values.push(value);
    values
}

/// fleet's `unitPrintf`: `%n %N %p %i` replaced, nothing else (fleet leaves other `%x` alone).
fn unit_printf(value: &str, name: Option<&UnitName>) -> String {
    let Some(name) = name else {
        return value.to_owned();
    };
    value
        .replace("%n", name.as_str())
        .replace("%N", name.without_suffix())
        .replace("%p", name.prefix())
        .replace("%i", name.instance().unwrap_or(""))
}

/// Go's `path.Match`: `None` when the pattern is malformed (`ErrBadPattern`).
pub fn glob_match(pattern: &str, name: &str) -> Option<bool> {
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, length consumed including ']').
        let mut i = 0;
        let negate = p.first() == Some(&'^');
        if negate {
            i += 1;
        }
        let mut matched = false;
        let mut first = true;
        loop {
            let lo = *p.get(i)?;
            if lo == ']' && !first {
                i += 1;
                break;
            }
            first = false;
            let lo = if lo == '\\' {
                i += 1;
                *p.get(i)?
            } else {
                lo
            };
            i += 1;
            let mut hi = lo;
            if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&c| c != ']') {
                i += 1;
                hi = if p[i] == '\\' {
                    i += 1;
                    *p.get(i)?
                } else {
                    p[i]
                };
                i += 1;
            }
            if lo <= c && c <= hi {
                matched = true;
            }
        }
        Some((matched != negate, i))
    }
    /// Memoized by the lengths of the pattern and name left (both are suffixes): the
    /// backtracking over `*` is then polynomial, not exponential in the number of stars.
    type Memo = std::collections::HashMap<(usize, usize), Option<bool>>;
    fn go(p: &[char], n: &[char], memo: &mut Memo) -> Option<bool> {
        if let Some(&known) = memo.get(&(p.len(), n.len())) {
            return known;
        }
        let result = step(p, n, memo);
        memo.insert((p.len(), n.len()), result);
        result
    }
    fn step(p: &[char], n: &[char], memo: &mut Memo) -> Option<bool> {
        match p.first() {
            None => Some(n.is_empty()),
            Some('*') => {
                let rest = &p[1..];
                for k in 0..=n.len() {
                    if n[..k].contains(&'/') {
                        break;
                    }
                    if go(rest, &n[k..], memo)? {
                        return Some(true);
                    }
                }
                // Validate the rest of the pattern even when nothing matched.
                go(rest, &[], memo).map(|_| false)
            }
            Some('?') => match n.first() {
                Some(&c) if c != '/' => go(&p[1..], &n[1..], memo),
                _ => validate(&p[1..]).map(|_| false),
            },
            Some('[') => match n.first() {
                Some(&c) if c != '/' => {
                    let (m, len) = class(&p[1..], c)?;
                    if m {
                        go(&p[1 + len..], &n[1..], memo)
                    } else {
                        validate(&p[1 + len..]).map(|_| false)
                    }
                }
                _ => {
                    let (_, len) = class(&p[1..], '\0')?;
                    validate(&p[1 + len..]).map(|_| false)
                }
            },
            Some('\\') => {
                let c = *p.get(1)?;
                if n.first() == Some(&c) {
                    go(&p[2..], &n[1..], memo)
                } else {
                    validate(&p[2..]).map(|_| false)
                }
            }
            Some(&c) => {
                if n.first() == Some(&c) {
                    go(&p[1..], &n[1..], memo)
                } else {
                    validate(&p[1..]).map(|_| false)
                }
            }
        }
    }
    fn validate(p: &[char]) -> Option<()> {
        let mut i = 0;
        while i < p.len() {
            match p[i] {
                '[' => i += 1 + class(&p[i + 1..], '\0')?.1,
                '\\' => {
                    p.get(i + 1)?;
                    i += 2;
                }
                _ => i += 1,
            }
        }
        Some(())
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    validate(&p)?;
    go(&p, &n, &mut Memo::new())
}

/// Reads `[X-Fleet]` of `unit` named `name` (`None`: name unknown, specifiers left as they
/// are). Returns the options and every problem: unknown keys and refused combinations are
/// errors (fleet refuses such units), values fleet would silently skip are warnings.
///
/// An empty assignment resets the list before it (systemd's rule, so drop-ins can clear a
/// fleet option); fleet itself had no drop-ins.
pub fn options(unit: &Unit, name: Option<&UnitName>) -> (FleetOptions, Vec<Diagnostic>) {
    let mut opts = FleetOptions::default();
    let mut diags = Vec::new();
    let Some(section) = unit.section(SECTION) else {
        return (opts, diags);
    };
    let mut machine_ids: [Vec<String>; 3] = Default::default();
    let mut global: Option<(bool, &Entry)> = None;
    let mut first: [Option<&Entry>; 4] = [None; 4]; // machine id, machine of, conflicts, replaces
    for entry in &section.entries {
        let Some(k) = key(&entry.key) else {
            diags.push(Diagnostic::error(
                &entry.at,
                format!(
                    "unrecognized requirement '{}' in [X-Fleet]: expected MachineID, MachineOf, MachineMetadata, Conflicts, Global or Replaces",
                    entry.key
                ),
            ));
            continue;
        };
        let reset = entry.value.is_empty();
        let values: Vec<String> = multivalue(&entry.value)
            .iter()
            .map(|v| unit_printf(v, name))
            .collect();
        let list = match k {
            Key::MachineId => Some((&mut machine_ids[0], 0)),
            Key::MachineIdOld => Some((&mut machine_ids[1], 0)),
            Key::MachineBootIdOld => Some((&mut machine_ids[2], 0)),
            Key::MachineOf => Some((&mut opts.machine_of, 1)),
            Key::Conflicts => Some((&mut opts.conflicts, 2)),
            Key::Replaces => Some((&mut opts.replaces, 3)),
            Key::MachineMetadata | Key::Global => None,
        };
        if let Some((list, slot)) = list {
            if reset {
                list.clear();
                first[slot] = None;
            } else {
                list.extend(values.iter().filter(|v| !v.is_empty()).cloned());
                first[slot].get_or_insert(entry);
            }
            if k == Key::Conflicts {
                for v in &values {
                    if glob_match(v, "").is_none() {
                        diags.push(Diagnostic::warning(
                            &entry.value_at(),
                            format!("malformed glob '{v}' in Conflicts=: it never matches"),
                        ));
                    }
                }
            }
            continue;
        }
        match k {
            Key::Global => {
                global = if reset {
                    None
                } else {
                    let v = entry.value.to_ascii_lowercase();
                    Some((
                        matches!(v.as_str(), "true" | "yes" | "1" | "on" | "t"),
                        entry,
                    ))
                };
            }
            Key::MachineMetadata if reset => opts.machine_metadata.clear(),
            Key::MachineMetadata => {
                for v in values {
                    let parts: Vec<&str> = v.split('=').collect();
                    match parts.as_slice() {
                        [k, val] if !k.is_empty() && !val.is_empty() => {
                            match opts.machine_metadata.iter_mut().find(|(key, _)| key == k) {
                                Some((_, vals)) => {
                                    if !vals.iter().any(|x| x == val) {
                                        vals.push((*val).to_owned());
                                    }
                                }
                                None => opts
                                    .machine_metadata
                                    .push(((*k).to_owned(), vec![(*val).to_owned()])),
                            }
                        }
                        // fleet skips such values silently: say so.
                        _ => diags.push(Diagnostic::warning(
                            &entry.value_at(),
                            format!("MachineMetadata value '{v}' is not key=value, ignoring"),
                        )),
                    }
                }
            }
            _ => {}
        }
    }
    opts.machine_id = machine_ids
        .into_iter()
        .find_map(|ids| ids.into_iter().next());
    opts.global = global.is_some_and(|(g, _)| g);
    let whole = section.at.clone();
    let at = |e: Option<&Entry>| e.map_or_else(|| whole.clone(), |e| e.at.clone());
    let global_at = global.filter(|(g, _)| *g).map(|(_, e)| e);
    // fleet's ValidateOptions, in its order.
    for peer in &opts.machine_of {
        for conflict in &opts.conflicts {
            if glob_match(conflict, peer) == Some(true) {
                diags.push(Diagnostic::error(
                    &at(first[1]),
                    format!("unresolvable requirements: MachineOf '{peer}' matches Conflicts '{conflict}'"),
                ));
            }
        }
    }
    let refuse = |diags: &mut Vec<Diagnostic>, loc: Location, a: &str, b: &str| {
        diags.push(Diagnostic::error(
            &loc,
            format!("{a} cannot be used with {b}"),
        ));
    };
    let has_id = opts.machine_id.is_some();
    if has_id && !opts.machine_of.is_empty() {
        refuse(&mut diags, at(first[1]), "MachineID", "MachineOf");
    }
    if has_id && !opts.conflicts.is_empty() {
        refuse(&mut diags, at(first[2]), "MachineID", "Conflicts");
    }
    if has_id && opts.global {
        refuse(&mut diags, at(global_at), "MachineID", "Global");
    }
    if opts.global && !opts.machine_of.is_empty() {
        refuse(&mut diags, at(first[1]), "Global", "MachineOf");
    }
    if opts.global && !opts.conflicts.is_empty() {
        refuse(&mut diags, at(first[2]), "Global", "Conflicts");
    }
    // Not in fleet's ValidateOptions, but fleet's documentation says a global unit takes no
    // option other than MachineMetadata; Replaces has no meaning for a unit on every machine.
    if opts.global && !opts.replaces.is_empty() {
        refuse(&mut diags, at(first[3]), "Global", "Replaces");
    }
    (opts, diags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_path_match() {
        assert_eq!(glob_match("monitor*", "monitor@1.service"), Some(true));
        assert_eq!(glob_match("a?c", "abc"), Some(true));
        assert_eq!(glob_match("*", "a/b"), Some(false));
        assert_eq!(glob_match("[a-c]x", "bx"), Some(true));
        assert_eq!(glob_match("[^a-c]x", "bx"), Some(false));
        assert_eq!(glob_match("\\*", "*"), Some(true));
        assert_eq!(glob_match("[a-", "a"), None);
        assert_eq!(glob_match("x[", "y"), None);
    }

    #[test]
    fn many_stars_match_in_polynomial_time() {
        // Found by fuzz/ (unit_file): `X-Conflicts=********%p@*.service` took 40 s to verify.
        let name = format!("{}.service", "a".repeat(200));
        assert_eq!(glob_match(&"*a".repeat(40), &name), Some(false));
        assert_eq!(
            glob_match(&format!("{}b", "*".repeat(40)), &name),
            Some(false)
        );
        assert_eq!(glob_match(&"*a*".repeat(20), &name), Some(true));
    }

    #[test]
    fn multivalue_lines() {
        assert_eq!(
            multivalue(r#""region=us" "disk=ssd""#),
            ["region=us", "disk=ssd"]
        );
        assert_eq!(multivalue("region=us"), ["region=us"]);
    }
}
