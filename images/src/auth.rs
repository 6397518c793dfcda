//! Registry credentials from a docker-style `auth.json` (`{"auths": {"HOST": {"auth": "BASE64"}}}`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// A credentials file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("reading credentials {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not an auth.json.
    #[error("parsing credentials {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// An `auth` value is not base64 of `user:password`.
    #[error("credentials {path}: the auth of registry {registry} is not base64 of user:password")]
    BadAuth {
        /// The file.
        path: PathBuf,
        /// The registry whose entry is bad.
        registry: String,
    },
}

/// Credentials per registry host (`host[:port]`); registries not named are used anonymously.
#[derive(Clone, Default)]
pub struct Credentials {
    by_registry: HashMap<String, RegistryAuth>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_set().entries(self.by_registry.keys()).finish()
    }
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

impl Credentials {
    /// No credentials: every registry anonymously.
    pub fn anonymous() -> Credentials {
        Credentials::default()
    }

    /// Reads a docker-style `auth.json` (`config.json` of docker, `auth.json` of podman/skopeo).
    pub fn from_file(path: &Path) -> Result<Credentials, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        Credentials::parse(&text, path)
    }

    /// Parses the text of an `auth.json`; `path` is only named in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Credentials, AuthError> {
        let file: AuthFile = serde_json::from_str(text).map_err(|source| AuthError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let mut creds = Credentials::default();
        for (key, entry) in file.auths {
            let registry = normalize_registry(&key);
            let auth = if let Some(token) = entry.registrytoken {
                RegistryAuth::Bearer(token)
            } else if let Some(b64) = entry.auth.filter(|a| !a.is_empty()) {
                let bad = || AuthError::BadAuth {
                    path: path.to_owned(),
                    registry: registry.clone(),
                };
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|_| bad())?;
                let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
                let (user, pass) = decoded.split_once(':').ok_or_else(bad)?;
                RegistryAuth::Basic(user.to_owned(), pass.to_owned())
            } else if let (Some(u), Some(p)) = (entry.username, entry.password) {
                RegistryAuth::Basic(u, p)
            } else if let Some(token) = entry.identitytoken {
                RegistryAuth::Bearer(token)
            } else {
                continue;
            };
            creds.by_registry.insert(registry, auth);
        }
        Ok(creds)
    }

    /// Adds (or replaces) a user and password for `registry`.
    pub fn insert(&mut self, registry: &str, user: &str, password: &str) {
        self.by_registry.insert(
            normalize_registry(registry),
            RegistryAuth::Basic(user.to_owned(), password.to_owned()),
        );
    }

    /// The registries that have credentials.
    pub fn registries(&self) -> impl Iterator<Item = &str> {
        self.by_registry.keys().map(String::as_str)
    }

    /// What to present to `registry` (anonymous when it has no entry).
    pub(crate) fn for_registry(&self, registry: &str) -> RegistryAuth {
        self.by_registry
            .get(&normalize_registry(registry))
            .cloned()
            .unwrap_or(RegistryAuth::Anonymous)
    }
}

/// `https://index.docker.io/v1/` and `index.docker.io` are `docker.io`; a scheme and path go.
fn normalize_registry(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        h => h.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_auth_json() {
        let json = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYTpzcw=="},
            "127.0.0.1:5000": {"username": "u", "password": "p"},
            "ghcr.io": {"registrytoken": "tok"},
            "empty.example": {}
        }}"#;
        let c = Credentials::parse(json, Path::new("auth.json")).unwrap();
        let basic = |u: &str, p: &str| format!("{:?}", RegistryAuth::Basic(u.into(), p.into()));
        assert_eq!(
            format!("{:?}", c.for_registry("docker.io")),
            basic("user", "pa:ss")
        );
        assert_eq!(
            format!("{:?}", c.for_registry("index.docker.io")),
            basic("user", "pa:ss")
        );
        assert_eq!(
            format!("{:?}", c.for_registry("127.0.0.1:5000")),
            basic("u", "p")
        );
        assert!(matches!(c.for_registry("ghcr.io"), RegistryAuth::Bearer(t) if t == "tok"));
        assert!(matches!(
            c.for_registry("empty.example"),
            RegistryAuth::Anonymous
        ));
        assert!(matches!(c.for_registry("quay.io"), RegistryAuth::Anonymous));
        assert!(!format!("{c:?}").contains("pa:ss"));
    }

    #[test]
    fn refuses_bad_auth() {
        let err = Credentials::parse(
            r#"{"auths": {"r:1": {"auth": "bm9jb2xvbg=="}}}"#,
            Path::new("a.json"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "credentials a.json: the auth of registry r:1 is not base64 of user:password"
        );
        assert!(Credentials::parse("{", Path::new("a.json")).is_err());
    }
}
