//! The JSON documents of an image: index, manifest (OCI and Docker v2), config.

use serde::{Deserialize, Serialize};

use crate::platform::Platform;

/// OCI image index.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 manifest list.
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker v2 schema 2 manifest.
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Every manifest type asked for, in order of preference.
pub(crate) const ACCEPTED: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// A reference to a blob or manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub(crate) digest: String,
    pub(crate) size: u64,
    #[serde(default)]
    pub(crate) platform: Option<Platform>,
}

/// An index, a manifest list, or an image manifest (told apart by `manifests` / `config`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    #[serde(default)]
    pub(crate) media_type: Option<String>,
    #[serde(default)]
    pub(crate) manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub(crate) config: Option<Descriptor>,
    #[serde(default)]
    pub(crate) layers: Vec<Descriptor>,
}

impl Manifest {
    /// Whether this is an index / manifest list, by its media type (the header's or its own).
    pub(crate) fn is_index(&self, content_type: Option<&str>) -> bool {
        let t = self.media_type.as_deref().or(content_type);
        matches!(t, Some(OCI_INDEX | DOCKER_LIST))
            || (self.manifests.is_some() && self.config.is_none())
    }
}

/// What an image says about how to run it: the `config` of its config blob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`: the arguments after the entrypoint (or the command when there is none).
    pub cmd: Vec<String>,
    /// `Env`: `NAME=value` strings.
    pub env: Vec<String>,
    /// `WorkingDir`; none: `/`.
    pub working_dir: Option<String>,
    /// `User`: `user`, `uid`, `user:group` or `uid:gid`; none: root.
    pub user: Option<String>,
    /// The platform the image was built for.
    pub os: String,
    /// The architecture the image was built for.
    pub architecture: String,
}

impl ImageConfig {
    /// The command line the image runs with no command given: entrypoint then cmd.
    pub fn command(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }

    /// Parses the config blob (OCI or Docker: the same fields).
    pub(crate) fn parse(bytes: &[u8]) -> Result<ImageConfig, serde_json::Error> {
        #[derive(Deserialize)]
        struct Blob {
            #[serde(default)]
            os: String,
            #[serde(default)]
            architecture: String,
            #[serde(default)]
            config: Option<Inner>,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "PascalCase")]
        struct Inner {
            entrypoint: Option<Vec<String>>,
            cmd: Option<Vec<String>>,
            env: Option<Vec<String>>,
            working_dir: Option<String>,
            user: Option<String>,
        }
        let blob: Blob = serde_json::from_slice(bytes)?;
        let inner = blob.config.unwrap_or_default();
        Ok(ImageConfig {
            entrypoint: inner.entrypoint.unwrap_or_default(),
            cmd: inner.cmd.unwrap_or_default(),
            env: inner.env.unwrap_or_default(),
            working_dir: inner.working_dir.filter(|w| !w.is_empty()),
            user: inner.user.filter(|u| !u.is_empty()),
            os: blob.os,
            architecture: blob.architecture,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_config_with_nulls() {
        let c = ImageConfig::parse(
            br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":null,
            "Cmd":["sh"],"Env":["PATH=/bin"],"WorkingDir":"","User":"1000:1000"},
            "rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        assert_eq!(c.command(), ["sh"]);
        assert_eq!(c.env, ["PATH=/bin"]);
        assert_eq!(c.working_dir, None);
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(ImageConfig::parse(b"{}").unwrap(), ImageConfig::default());
    }

    #[test]
    fn tells_index_from_manifest() {
        let idx: Manifest =
            serde_json::from_str(r#"{"schemaVersion":2,"manifests":[{"digest":"d","size":1}]}"#)
                .unwrap();
        assert!(idx.is_index(None));
        let m: Manifest = serde_json::from_str(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{"mediaType":"x","digest":"d","size":1},"layers":[]}"#,
        )
        .unwrap();
        assert!(!m.is_index(Some(OCI_INDEX)));
    }
}
