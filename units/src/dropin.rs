//! Drop-ins (`foo.service.d/*.conf`): which files apply, and in which order.
//!
//! systemd (`unit_file_find_dropin_paths`, `conf_files_list`) looks for `*.conf` files in
//! the drop-in directories of a unit: for `foo-bar@baz.service` in every unit search path
//! (`/etc/systemd/system` before `/run/systemd/system` before `/usr/lib/systemd/system`, …),
//! the directories `service.d/`, `foo-.service.d/`, `foo-bar-.service.d/`,
//! `foo-bar@.service.d/` and `foo-bar@baz.service.d/`. All the `*.conf` files found are
//! applied **sorted by file name** (not by directory); when two directories hold a file of the
//! same name, only the one in the directory of highest priority (earliest search path) is
//! used, so `/etc/…/override.conf` masks `/usr/lib/…/override.conf`. Later files override
//! earlier ones (single values: last wins; lists: appended, an empty assignment resets).
//!
//! This crate does no I/O: the caller lists the directories, calls [`order`] with what it
//! found, reads the files in the order returned, parses each and applies them with
//! [`crate::Unit::apply_dropin`]. [`directories`] names the drop-in directories for a unit.

use crate::name::UnitName;

/// A drop-in file found by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// Priority of the directory it was found in: lower wins (its index in the search path).
    pub priority: usize,
    /// The directory, as the caller wants it back.
    pub directory: &'a str,
    /// The file name within the directory.
    pub file_name: &'a str,
}

/// The drop-ins that apply, in the order systemd applies them: only `*.conf` files; of those
/// with the same file name, the one of lowest `priority` value (ties: the first given); sorted
/// by file name (byte order).
pub fn order<'a>(candidates: &[Candidate<'a>]) -> Vec<Candidate<'a>> {
    let mut chosen: Vec<Candidate<'a>> = Vec::new();
    for c in candidates {
        if !c.file_name.ends_with(".conf") || c.file_name.starts_with('.') {
            continue;
        }
        match chosen.iter_mut().find(|x| x.file_name == c.file_name) {
            Some(existing) if existing.priority <= c.priority => {}
            Some(existing) => *existing = c.clone(),
            None => chosen.push(c.clone()),
        }
    }
    chosen.sort_by(|a, b| a.file_name.as_bytes().cmp(b.file_name.as_bytes()));
    chosen
}

/// The names of the drop-in directories of `unit` within one search path directory, most
/// general first: `service.d`, then one per dash-separated prefix (`foo-.service.d`), then the
/// template's (`foo@.service.d`), then the unit's own (`foo@bar.service.d`).
pub fn directories(unit: &UnitName) -> Vec<String> {
    let suffix = unit.unit_type().suffix();
    let mut out = vec![format!("{suffix}.d")];
    let prefix = unit.prefix();
    for (i, _) in prefix.match_indices('-') {
        out.push(format!("{}-.{suffix}.d", &prefix[..i]));
    }
    if let Some(template) = unit.template() {
        out.push(format!("{template}.d"));
    }
    out.push(format!("{unit}.d"));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_masks_and_sorts() {
        let c = |priority, directory, file_name| Candidate {
            priority,
            directory,
            file_name,
        };
        let got = order(&[
            c(2, "/usr/lib/systemd/system/foo.service.d", "override.conf"),
            c(2, "/usr/lib/systemd/system/foo.service.d", "10-a.conf"),
            c(0, "/etc/systemd/system/foo.service.d", "override.conf"),
            c(1, "/run/systemd/system/service.d", "50-b.conf"),
            c(1, "/run/systemd/system/service.d", "README"),
        ]);
        let names: Vec<_> = got.iter().map(|c| (c.directory, c.file_name)).collect();
        assert_eq!(
            names,
            [
                ("/usr/lib/systemd/system/foo.service.d", "10-a.conf"),
                ("/run/systemd/system/service.d", "50-b.conf"),
                ("/etc/systemd/system/foo.service.d", "override.conf"),
            ]
        );
    }

    #[test]
    fn directories_of_an_instance() {
        let n = UnitName::parse("foo-bar@baz.service").unwrap();
        assert_eq!(
            directories(&n),
            [
                "service.d",
                "foo-.service.d",
                "foo-bar@.service.d",
                "foo-bar@baz.service.d"
            ]
        );
    }
}
