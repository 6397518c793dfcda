//! The semantic view of a unit: sections, each an ordered list of `Key=value` entries, with
//! drop-ins merged, the normalized text form and the content hash.
//!
//! **Normalized form** (what `flotctl cat` prints and what the content hash covers): comments,
//! blank lines and ignored lines dropped; continuations joined as systemd joins them; one
//! `Key=value` per line, exactly as systemd sees key and value (stripped of surrounding
//! whitespace); a section that appears several times is written once, where it first
//! appears, holding all its entries in their original order; sections in order of first
//! appearance, separated by one blank line; a newline after the last line. A value ending in an
//! odd number of backslashes is followed by one space, so that it does not read as a
//! continuation. Empty assignments
//! (`Key=`) are kept: they reset a list, also across drop-ins. The normalized form parses to
//! the same `Unit` and is its own normalized form.
//!
//! **Content hash**: SHA-256 of the normalized form's UTF-8 bytes, as 64 lowercase hex digits.
//! Two files that differ only in comments, layout or continuations hash the same; any change
//! systemd would see changes the hash (fleet told unit versions apart by a SHA-1 of its own
//! serialization in the same way).

use sha2::{Digest, Sha256};

use crate::diagnostic::Location;
use crate::syntax::{LineKind, UnitFile};

/// One `Key=value` assignment, with where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key (case-sensitive, as systemd treats it).
    pub key: String,
    /// The value; empty for a reset (`Key=`).
    pub value: String,
    /// The file, line and column of the key.
    pub at: Location,
    /// 1-based column of the value on the key's line.
    pub value_column: u32,
}

impl Entry {
    /// Where the value starts.
    pub fn value_at(&self) -> Location {
        Location {
            column: self.value_column,
            ..self.at.clone()
        }
    }
}

/// A section and its entries in order (repeated keys kept, resets kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// The name between the brackets.
    pub name: String,
    /// Where the section first appears.
    pub at: Location,
    /// The entries, in the order systemd applies them.
    pub entries: Vec<Entry>,
}

impl Section {
    /// The effective values of a list setting: every value of `key` in order, an empty value
    /// clearing what came before (systemd's reset rule).
    pub fn values(&self, key: &str) -> Vec<&str> {
        let mut out = Vec::new();
        for entry in self.entries.iter().filter(|e| e.key == key) {
            if entry.value.is_empty() {
                out.clear();
            } else {
                out.push(entry.value.as_str());
            }
        }
        out
    }

    /// The entries of a list setting after resets (like [`Section::values`], keeping locations).
    pub fn effective_entries(&self, key: &str) -> Vec<&Entry> {
        let mut out = Vec::new();
        for entry in self.entries.iter().filter(|e| e.key == key) {
            if entry.value.is_empty() {
                out.clear();
            } else {
                out.push(entry);
            }
        }
        out
    }

    /// The effective value of a single-valued setting: the last assignment wins; `None` when
    /// unset or reset by an empty assignment.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.last(key)
            .map(|e| e.value.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The last entry of `key`, reset or not.
    pub fn last(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.key == key)
    }
}

/// A unit as systemd sees it: sections in order of first appearance, drop-ins merged in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unit {
    /// The sections, each once.
    pub sections: Vec<Section>,
}

impl Unit {
    /// The semantic view of a parsed file: ignored lines dropped, repeated sections merged.
    pub fn from_file(file: &UnitFile) -> Self {
        let mut unit = Unit::default();
        let mut current: Option<usize> = None;
        for line in file.lines() {
            let at = Location {
                file: file.file_name().clone(),
                line: line.line,
                column: line.column,
            };
            match &line.kind {
                LineKind::Section { name } => current = Some(unit.section_index(name, at)),
                LineKind::Assignment {
                    key,
                    value,
                    value_column,
                } => {
                    if let Some(i) = current {
                        unit.sections[i].entries.push(Entry {
                            key: key.clone(),
                            value: value.clone(),
                            at,
                            value_column: *value_column,
                        });
                    }
                }
                // A broken header ends the previous section: what follows is ignored.
                LineKind::Ignored if line.raw.trim_start().starts_with('[') => current = None,
                LineKind::Blank | LineKind::Comment | LineKind::Ignored => {}
            }
        }
        unit
    }

    fn section_index(&mut self, name: &str, at: Location) -> usize {
        if let Some(i) = self.sections.iter().position(|s| s.name == name) {
            return i;
        }
        self.sections.push(Section {
            name: name.to_owned(),
            at,
            entries: Vec::new(),
        });
        self.sections.len() - 1
    }

    /// The section called `name`, if present.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The effective value of `key` in `section` (last wins, empty resets).
    pub fn value(&self, section: &str, key: &str) -> Option<&str> {
        self.section(section).and_then(|s| s.value(key))
    }

    /// The effective values of list setting `key` in `section` (empty assignment resets).
    pub fn values(&self, section: &str, key: &str) -> Vec<&str> {
        self.section(section)
            .map(|s| s.values(key))
            .unwrap_or_default()
    }

    /// Applies a drop-in the way systemd does: its entries are appended after this unit's
    /// entries of the same section (a new section is added at the end), so a later single
    /// value overrides an earlier one and an empty assignment resets a list. Apply drop-ins in
    /// the order given by [`crate::dropin::order`].
    pub fn apply_dropin(&mut self, dropin: &Unit) {
        for section in &dropin.sections {
            let i = self.section_index(&section.name, section.at.clone());
            self.sections[i]
                .entries
                .extend(section.entries.iter().cloned());
        }
    }

    /// The normalized form (see the module documentation).
    pub fn normalized(&self) -> String {
        let mut out = String::new();
        for (i, section) in self.sections.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push('[');
            out.push_str(&section.name);
            out.push_str("]\n");
            for entry in &section.entries {
                out.push_str(&entry.key);
                out.push('=');
                out.push_str(&entry.value);
                if crate::syntax::ends_escaped(&entry.value) {
                    // `a\ ` means the value `a\`; without the space the line would continue.
                    out.push(' ');
                }
                out.push('\n');
            }
        }
        out
    }

    /// SHA-256 of the normalized form, lowercase hex.
    pub fn content_hash(&self) -> String {
        hex::encode(Sha256::digest(self.normalized().as_bytes()))
    }

    /// Sections and entries without locations: what two units must share to be the same unit.
    pub fn content(&self) -> Vec<(&str, Vec<(&str, &str)>)> {
        self.sections
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.entries
                        .iter()
                        .map(|e| (e.key.as_str(), e.value.as_str()))
                        .collect(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syntax::parse;

    fn unit(text: &str) -> Unit {
        Unit::from_file(&parse("t.service", text).file)
    }

    #[test]
    fn resets_and_last_wins() {
        let u = unit("[S]\nL=a\nL=b\nL=\nL=c\nV=1\nV=2\n[T]\nV=x\n[S]\nL=d\n");
        assert_eq!(u.values("S", "L"), ["c", "d"]);
        assert_eq!(u.value("S", "V"), Some("2"));
        assert_eq!(u.sections.len(), 2, "repeated sections are merged");
        assert_eq!(unit("[S]\nV=1\nV=\n").value("S", "V"), None);
    }

    #[test]
    fn dropins_append_in_order() {
        let mut u = unit("[Service]\nExecStart=/bin/a\nRestart=no\n");
        u.apply_dropin(&unit(
            "[Service]\nExecStart=\nExecStart=/bin/b\nRestart=always\n[X-Fleet]\nGlobal=true\n",
        ));
        assert_eq!(u.values("Service", "ExecStart"), ["/bin/b"]);
        assert_eq!(u.value("Service", "Restart"), Some("always"));
        assert_eq!(u.value("X-Fleet", "Global"), Some("true"));
    }

    #[test]
    fn hash_ignores_layout_only() {
        let a = unit("# comment\n[S]\nA = 1 \\\n  2\n");
        let b = unit("[S]\nA=1    2\n");
        let c = unit("[S]\nA=1 2\n");
        assert_eq!(a.content_hash(), b.content_hash());
        assert_ne!(a.content_hash(), c.content_hash());
        assert_eq!(a.content_hash().len(), 64);
    }
}
