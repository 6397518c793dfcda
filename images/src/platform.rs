//! Platforms, and the choice of one manifest from a multi-arch index for this machine.

use serde::{Deserialize, Serialize};

/// An OCI platform: `os`/`architecture`/`variant` with the OCI (Go) names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, `arm`, `386`, `ppc64le`, `s390x`, `riscv64`.
    pub architecture: String,
    /// `v8` for arm64, `v7`/`v6`/`v5` for arm; none elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this machine (from the architecture this library was built for).
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// How well an image built for `candidate` runs here: `None` if it does not, higher is better.
    ///
    /// The OS and architecture must be equal. Variants: the same variant is best; no variant is
    /// next; for `arm`, an older variant (`v6` on a `v7` machine) runs too; `amd64` `v1` is plain
    /// `amd64`, higher microarchitecture levels are not assumed.
    pub(crate) fn score(&self, candidate: &Platform) -> Option<u32> {
        if candidate.os != self.os || candidate.architecture != self.architecture {
            return None;
        }
        let level = |v: &str| v.strip_prefix('v').and_then(|n| n.parse::<u32>().ok());
        match (self.variant.as_deref(), candidate.variant.as_deref()) {
            (a, b) if a == b => Some(100),
            (_, None) => Some(50),
            (None, Some("v1")) if self.architecture == "amd64" => Some(90),
            (Some("v8"), Some("v8")) => Some(100),
            (Some(mine), Some(theirs)) if self.architecture == "arm" => {
                let (mine, theirs) = (level(mine)?, level(theirs)?);
                (theirs <= mine).then_some(40 + theirs)
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The index of the best entry of `candidates` for `wanted`, if any runs here.
pub(crate) fn select(wanted: &Platform, candidates: &[Option<Platform>]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((i, wanted.score(p.as_ref()?)?)))
        // max_by_key keeps the last of equals: prefer the first entry, as registries order them.
        .fold(None, |best: Option<(usize, u32)>, (i, s)| match best {
            Some((_, b)) if b >= s => best,
            _ => Some((i, s)),
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<Platform> {
        let mut parts = s.split('/');
        Some(Platform {
            os: parts.next()?.to_owned(),
            architecture: parts.next()?.to_owned(),
            variant: parts.next().map(str::to_owned),
        })
    }

    #[test]
    fn selects_by_os_arch_and_variant() {
        let amd64 = p("linux/amd64").unwrap();
        let arm64 = p("linux/arm64/v8").unwrap();
        let armv7 = p("linux/arm/v7").unwrap();
        let list = [
            p("linux/arm/v6"),
            p("linux/arm/v7"),
            p("linux/arm64"),
            None,
            p("unknown/unknown"),
            p("linux/amd64"),
            p("windows/amd64"),
        ];
        assert_eq!(select(&amd64, &list), Some(5));
        assert_eq!(select(&arm64, &list), Some(2));
        assert_eq!(select(&armv7, &list), Some(1));
        assert_eq!(
            select(&armv7, &[p("linux/arm/v6"), p("linux/arm/v8")]),
            Some(0)
        );
        assert_eq!(
            select(&amd64, &[p("linux/amd64/v3"), p("linux/amd64/v1")]),
            Some(1)
        );
        assert_eq!(
            select(&amd64, &[p("linux/arm64"), p("windows/amd64")]),
            None
        );
        assert_eq!(
            select(&amd64, &[p("linux/amd64"), p("linux/amd64")]),
            Some(0)
        );
    }

    #[test]
    fn host_is_linux() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host.to_string(), "linux/amd64");
        }
    }
}
