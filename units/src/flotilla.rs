//! The `[X-Flotilla]` section: flotilla's own options, typed and validated.
//!
//! - `Image=REF`: run the service inside this OCI image. `REF` is a reference as `docker pull`
//!   takes it: `[HOST[:PORT]/]PATH[:TAG][@DIGEST]` (distribution's `reference` grammar).
//!   Single-valued: the last assignment wins, an empty one unsets it.
//! - `Advertise=[NAME:]PORT[/tcp|/udp]` (repeatable, an empty assignment resets the list):
//!   publish the unit in DNS while it is active. `NAME` is a DNS label (default: the unit's
//!   prefix, see [`Advertise::service_name`]), `PORT` 1–65535, the protocol `tcp` by default.
//!
//! - `Args=ARGS`: with `Image=` and no `ExecStart=`, run the image's entrypoint with these
//!   arguments in place of its `Cmd` (what `docker run IMAGE ARGS` and Podman's `Exec=` do;
//!   an image without an entrypoint runs `ARGS` as its command). Split as systemd splits a
//!   command line (quotes, C escapes), then taken literally: no `$VAR` or `%` specifier
//!   expansion. An empty assignment resets it.
//!
//! Any other key in `[X-Flotilla]` is an error: the section is ours, a typo must not pass.

use crate::diagnostic::Diagnostic;
use crate::name::UnitName;
use crate::unit::Unit;

/// The section holding flotilla's options.
pub const SECTION: &str = "X-Flotilla";

/// Why an option value is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// A malformed image reference.
    #[error("invalid image reference '{reference}': {why}")]
    Image {
        /// The value.
        reference: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A malformed `Advertise=` value.
    #[error("invalid Advertise= value '{value}': {why}; expected [NAME:]PORT[/tcp|/udp]")]
    Advertise {
        /// The value.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// A validated OCI image reference, kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ImageRef(String);

impl ImageRef {
    /// Validates `reference` against the distribution reference grammar.
    pub fn parse(reference: &str) -> Result<Self, OptionError> {
        let err = |why| OptionError::Image {
            reference: reference.to_owned(),
            why,
        };
        if reference.is_empty() {
            return Err(err("it is empty"));
        }
        if reference.len() > 255 + 7 + 64 + 128 {
            return Err(err("it is too long"));
        }
        let (name_tag, digest) = match reference.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (reference, None),
        };
        if let Some(d) = digest {
            let (algo, hex) = d
                .split_once(':')
                .ok_or_else(|| err("the digest has no 'algorithm:' part"))?;
            let algo_ok = !algo.is_empty()
                && algo.split(['+', '.', '_', '-']).all(|c| {
                    !c.is_empty()
                        && c.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                });
            if !algo_ok {
                return Err(err("the digest algorithm is malformed"));
            }
            if hex.len() < 32
                || !hex
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '=' | '_' | '-'))
            {
                return Err(err("the digest is malformed"));
            }
            if algo == "sha256"
                && (hex.len() != 64
                    || !hex
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
            {
                return Err(err("a sha256 digest is 64 lowercase hex digits"));
            }
        }
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        if let Some(tag) = tag {
            let mut chars = tag.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if !first_ok
                || tag.len() > 128
                || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            {
                return Err(err(
                    "the tag must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
                ));
            }
        }
        if name.is_empty() {
            return Err(err("the repository name is empty"));
        }
        if name.len() > 255 {
            return Err(err("the repository name is longer than 255 characters"));
        }
        let mut components: Vec<&str> = name.split('/').collect();
        // The first component is a registry host when it has a '.' or ':' or is "localhost".
        if components.len() > 1 {
            let host = components[0];
            if host.contains(['.', ':']) || host == "localhost" {
                let (h, port) = match host.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (host, None),
                };
                let host_ok = !h.is_empty()
                    && (h.split('.').all(|l| {
                        !l.is_empty()
                            && !l.starts_with('-')
                            && !l.ends_with('-')
                            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    }) || (h.starts_with('[') && h.ends_with(']')));
                if !host_ok {
                    return Err(err("the registry host is malformed"));
                }
                if port.is_some_and(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit())) {
                    return Err(err("the registry port is not a number"));
                }
                components.remove(0);
            }
        }
        for c in components {
            // path-component: [a-z0-9]+ (separator [a-z0-9]+)*, separator: '.', '_', '__', '-'+
            let ok = !c.is_empty()
                && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.chars().all(|ch| {
                    ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
                })
                && !c.contains("..")
                && !c.contains("___")
                && !c.contains("._")
                && !c.contains("_.")
                && !c.contains(".-")
                && !c.contains("-.")
                && !c.contains("_-")
                && !c.contains("-_");
            if !ok {
                return Err(err(
                    "repository path components are lowercase letters and digits, separated by '.', '_', '__' or dashes",
                ));
            }
        }
        Ok(Self(reference.to_owned()))
    }

    /// The reference as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A transport protocol for `Advertise=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// One `Advertise=` value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Advertise {
    /// The service name in DNS; `None`: the unit's prefix.
    pub name: Option<String>,
    /// The port.
    pub port: u16,
    /// The protocol.
    pub proto: Protocol,
}

impl Advertise {
    /// Parses `[NAME:]PORT[/tcp|/udp]`.
    pub fn parse(value: &str) -> Result<Self, OptionError> {
        let err = |why| OptionError::Advertise {
            value: value.to_owned(),
            why,
        };
        let (rest, proto) = match value.rsplit_once('/') {
            Some((r, "tcp")) => (r, Protocol::Tcp),
            Some((r, "udp")) => (r, Protocol::Udp),
            Some(_) => return Err(err("the protocol must be tcp or udp")),
            None => (value, Protocol::Tcp),
        };
        let (name, port) = match rest.rsplit_once(':') {
            Some((n, p)) => (Some(n), p),
            None => (None, rest),
        };
        if name.is_some_and(|n| !is_dns_label(n)) {
            return Err(err(
                "the name must be a DNS label: 1-63 of [a-z0-9-], not starting or ending with '-'",
            ));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| err("the port must be a number from 1 to 65535"))?;
        Ok(Self {
            name: name.map(str::to_owned),
            port,
            proto,
        })
    }

    /// The name to publish: the one given, else the prefix of `unit` (`hello` for
    /// `hello@1.service`), lowercased.
    pub fn service_name(&self, unit: &UnitName) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| unit.prefix().to_ascii_lowercase())
    }
}

/// Whether `s` is a DNS label as flotilla publishes them (lowercase LDH, 1–63 bytes).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// flotilla's options of one unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlotillaOptions {
    /// `Image=`.
    pub image: Option<ImageRef>,
    /// `Advertise=`, in order.
    pub advertise: Vec<Advertise>,
    /// `Args=`, split into words.
    pub args: Option<Vec<String>>,
}

/// Reads `[X-Flotilla]` of `unit`; every invalid value and unknown key is an error.
pub fn options(unit: &Unit) -> (FlotillaOptions, Vec<Diagnostic>) {
    let mut opts = FlotillaOptions::default();
    let mut diags = Vec::new();
    let Some(section) = unit.section(SECTION) else {
        return (opts, diags);
    };
    for entry in &section.entries {
        match entry.key.as_str() {
            "Image" if entry.value.is_empty() => opts.image = None,
            "Image" => match ImageRef::parse(&entry.value) {
                Ok(image) => opts.image = Some(image),
                Err(e) => diags.push(Diagnostic::error(&entry.value_at(), e.to_string())),
            },
            "Advertise" if entry.value.is_empty() => opts.advertise.clear(),
            "Advertise" => match Advertise::parse(&entry.value) {
                Ok(a) => opts.advertise.push(a),
                Err(e) => diags.push(Diagnostic::error(&entry.value_at(), e.to_string())),
            },
            "Args" if entry.value.is_empty() => opts.args = None,
            "Args" => match crate::exec::words(&entry.value) {
                Ok(words) => opts.args = Some(words),
                Err(e) => diags.push(Diagnostic::error(
                    &entry.value_at(),
                    format!("invalid Args= value: {e}"),
                )),
            },
            other => diags.push(Diagnostic::error(
                &entry.at,
                format!("unknown key '{other}' in [X-Flotilla]: expected Image, Advertise or Args"),
            )),
        }
    }
    (opts, diags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for ok in [
            "busybox",
            "library/busybox:1.36",
            "localhost:5000/hello-world",
            "registry.example.com/a/b_c__d/e-f:v1.0-rc_1",
            "127.0.0.1:5000/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(ImageRef::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Busybox",
            "a//b",
            "a:",
            "a:-x",
            "-a",
            "a@sha256:12",
            "host:port/x",
            "a/b_.c",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn advertise_values() {
        assert_eq!(
            Advertise::parse("web:8080/tcp").unwrap(),
            Advertise {
                name: Some("web".into()),
                port: 8080,
                proto: Protocol::Tcp
            }
        );
        assert_eq!(Advertise::parse("53/udp").unwrap().proto, Protocol::Udp);
        assert_eq!(Advertise::parse("80").unwrap().name, None);
        for bad in ["0", "65536", "web:", "Web:80", "80/sctp", "-a:80", ":80"] {
            assert!(Advertise::parse(bad).is_err(), "{bad}");
        }
    }
}
