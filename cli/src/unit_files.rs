//! Reading unit files and their drop-ins from disk for the offline commands.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use flotilla_units::dropin;

/// A unit file and the drop-ins read for it, in the order systemd applies them.
pub(crate) struct UnitFiles {
    pub(crate) path: String,
    pub(crate) text: String,
    pub(crate) dropins: Vec<(String, String)>,
}

impl UnitFiles {
    /// The drop-ins as `verify` takes them.
    pub(crate) fn dropin_refs(&self) -> Vec<(&str, &str)> {
        self.dropins
            .iter()
            .map(|(p, t)| (p.as_str(), t.as_str()))
            .collect()
    }
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| {
        anyhow::anyhow!(
            "{} is not valid UTF-8: unit files must be text",
            path.display()
        )
    })
}

/// Reads `path` and, unless `no_dropins`, the `*.conf` files of the drop-in directory next to
/// it (`PATH.d/`), sorted by file name as systemd sorts them.
pub(crate) fn read(path: &Path, no_dropins: bool) -> anyhow::Result<UnitFiles> {
    let text = read_text(path)?;
    let mut dropins = Vec::new();
    let dir = PathBuf::from(format!("{}.d", path.display()));
    if !no_dropins && dir.is_dir() {
        let names: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot list drop-in directory {}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        let dir_str = dir.display().to_string();
        let candidates: Vec<dropin::Candidate<'_>> = names
            .iter()
            .map(|n| dropin::Candidate {
                priority: 0,
                directory: &dir_str,
                file_name: n,
            })
            .collect();
        for c in dropin::order(&candidates) {
            let p = dir.join(c.file_name);
            if p.is_file() {
                dropins.push((p.display().to_string(), read_text(&p)?));
            }
        }
    }
    Ok(UnitFiles {
        path: path.display().to_string(),
        text,
        dropins,
    })
}
