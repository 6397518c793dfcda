//! TLS for the peer port (mutual: both sides present a certificate from the cluster CA) and for
//! the client API (server certificate; a client certificate is optional but, when sent, verified
//! against the same kind of CA and its common name names the user).
//!
//! One crypto library in the build: rustls with aws-lc-rs, the provider reqwest uses too.
//! Certificates and keys are PEM files (`flotctl ca init` / `flotctl ca issue` write them).
//!
//! [`Acceptor`] runs one connection's handshake (the listener, `crate::listener`, runs each in
//! the connection's own task and bounds how many and how long). A refused handshake is logged
//! once per remote address (then at debug), so a misconfigured peer retrying every second does
//! not flood the journal.
//!
//! Current limitations: no certificate revocation lists, and files are read once at start
//! (a renewed certificate takes effect on restart).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, aws_lc_rs};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

/// How many refused addresses are remembered (to log each once); forgotten all at once beyond.
const MAX_REMEMBERED_REFUSALS: usize = 4096;

/// The three PEM files of one side: `tls_ca`, `tls_cert`, `tls_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// The CA certificate(s) that peer or client certificates must chain to.
    pub(crate) ca: PathBuf,
    /// This member's certificate (chain).
    pub(crate) cert: PathBuf,
    /// Its private key.
    pub(crate) key: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A file could not be read or holds no usable PEM block.
    #[error("{key} {path}: {reason}")]
    File {
        /// The config key that names the file (`cluster.tls_cert`, ...).
        key: String,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the combination (e.g. a key that does not match the certificate).
    #[error("{what}: {reason}")]
    Config {
        /// `[cluster]` or `[api]` TLS.
        what: String,
        /// What rustls said.
        reason: String,
    },
    /// The HTTP client could not be built with these files.
    #[error("cannot build the peer client with {path}: {source}")]
    Client {
        /// The file involved.
        path: PathBuf,
        /// What reqwest said.
        source: reqwest::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

fn file_error(section: &str, key: &str, path: &Path, reason: impl ToString) -> Error {
    Error::File {
        key: format!("{section}.{key}"),
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read(section: &str, key: &str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| file_error(section, key, path, e))
}

fn certificates(
    section: &str,
    key: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(section, key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(section, key, path, e))?;
    if certs.is_empty() {
        return Err(file_error(
            section,
            key,
            path,
            "holds no PEM certificate (BEGIN CERTIFICATE)",
        ));
    }
    Ok(certs)
}

fn roots(section: &str, files: &TlsFiles) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    for c in certificates(section, "tls_ca", &files.ca)? {
        roots
            .add(c)
            .map_err(|e| file_error(section, "tls_ca", &files.ca, e))?;
    }
    Ok(Arc::new(roots))
}

fn server_config(section: &str, files: &TlsFiles, require: bool) -> Result<ServerConfig, Error> {
    let roots = roots(section, files)?;
    let certs = certificates(section, "tls_cert", &files.cert)?;
    let key_pem = read(section, "tls_key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| file_error(section, "tls_key", &files.key, e))?;
    let config_error = |reason: String| Error::Config {
        what: format!("[{section}] TLS"),
        reason,
    };
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
    let verifier = if require {
        verifier
    } else {
        verifier.allow_unauthenticated()
    }
    .build()
    .map_err(|e| config_error(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| {
            config_error(format!(
                "{} and {} do not make a usable certificate and key: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The peer server's TLS: a client certificate from the cluster CA is required.
pub(crate) fn peer_server(files: &TlsFiles) -> Result<Arc<ServerConfig>, Error> {
    server_config("cluster", files, true).map(Arc::new)
}

/// The client API's TLS: client certificates are optional, verified when sent.
pub(crate) fn api_server(files: &TlsFiles) -> Result<Arc<ServerConfig>, Error> {
    server_config("api", files, false).map(Arc::new)
}

/// Adds to `builder` what the peer client needs: only the cluster CA is trusted, and this
/// member's certificate is presented.
pub(crate) fn peer_client(
    builder: reqwest::ClientBuilder,
    files: &TlsFiles,
) -> Result<reqwest::ClientBuilder, Error> {
    // Read and checked as the server side reads them, so errors name the key.
    let ca = read("cluster", "tls_ca", &files.ca)?;
    certificates("cluster", "tls_ca", &files.ca)?;
    let roots = reqwest::Certificate::from_pem_bundle(&ca).map_err(|source| Error::Client {
        path: files.ca.clone(),
        source,
    })?;
    let mut identity = read("cluster", "tls_cert", &files.cert)?;
    identity.push(b'\n');
    identity.extend(read("cluster", "tls_key", &files.key)?);
    let identity = reqwest::Identity::from_pem(&identity).map_err(|source| Error::Client {
        path: files.cert.clone(),
        source,
    })?;
    Ok(builder
        .tls_backend_rustls()
        .tls_certs_only(roots)
        .identity(identity))
}

/// Who is on the other end of a connection: its address and, when it presented a verified
/// client certificate, that certificate's common name.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    /// The remote address.
    pub(crate) addr: SocketAddr,
    /// The verified client certificate's common name.
    pub(crate) user: Option<String>,
}

/// Addresses whose refused handshakes were already logged.
#[derive(Debug, Default)]
struct Refusals {
    seen: Mutex<HashSet<IpAddr>>,
}

impl Refusals {
    fn note(&self, what: &str, addr: SocketAddr, error: &std::io::Error) {
        // rustls reports a refused certificate or a broken handshake as invalid data; a reset,
        // an end of file or a timeout is a connection that went away (e.g. a peer stopping).
        if error.kind() != std::io::ErrorKind::InvalidData {
            return tracing::debug!(remote = %addr, "{what}: a TLS handshake did not complete: {error}");
        }
        let first = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() >= MAX_REMEMBERED_REFUSALS {
                seen.clear();
            }
            seen.insert(addr.ip())
        };
        if first {
            tracing::warn!(
                remote = %addr,
                "{what}: refused a TLS connection from {}: {error} \
                 (further refusals from this address are logged at debug level)",
                addr.ip()
            );
        } else {
            tracing::debug!(remote = %addr, "{what}: refused a TLS connection: {error}");
        }
    }
}

/// Runs the server side of TLS handshakes for one listener, and logs the refused ones.
pub(crate) struct Acceptor {
    acceptor: TlsAcceptor,
    members_only: bool,
    what: &'static str,
    refusals: Refusals,
}

impl Acceptor {
    /// Handshakes with `config`; `what` names the listener in log lines (`client API`).
    pub(crate) fn new(config: Arc<ServerConfig>, what: &'static str) -> Self {
        Acceptor {
            acceptor: TlsAcceptor::from(config),
            members_only: false,
            what,
            refusals: Refusals::default(),
        }
    }

    /// As [`Acceptor::new`], admitting only members' certificates ([`MEMBER_OU`]): the peer
    /// port's.
    pub(crate) fn members_only(config: Arc<ServerConfig>, what: &'static str) -> Self {
        Acceptor {
            members_only: true,
            ..Acceptor::new(config, what)
        }
    }

    /// Completes the handshake of the connection from `addr` within `deadline`; `None` (logged
    /// here) when it fails, times out or, on the peer port, the certificate is not a member's.
    pub(crate) async fn accept(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        deadline: Duration,
    ) -> Option<(TlsStream<TcpStream>, Remote)> {
        let what = self.what;
        let tls = match tokio::time::timeout(deadline, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.refusals.note(what, addr, &e);
                return None;
            }
            Err(_) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no handshake within {deadline:?}"),
                );
                self.refusals.note(what, addr, &e);
                return None;
            }
        };
        let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        let user = cert.and_then(|c| common_name(c));
        if self.members_only && !cert.is_some_and(|c| is_member(c)) {
            let e = std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the certificate of {} is not a member's (OU={MEMBER_OU}: flotctl ca issue --member)",
                    user.as_deref().unwrap_or("an unnamed client")
                ),
            );
            self.refusals.note(what, addr, &e);
            return None;
        }
        Some((tls, Remote { addr, user }))
    }
}

/// The organizational unit of a member's certificate (`flotctl ca issue --member`): the peer
/// port admits only certificates with it, so a client's certificate from the same CA cannot
/// speak Raft.
pub(crate) const MEMBER_OU: &str = "flotilla-member";

/// The subject's common name of a DER certificate (the first CN; UTF8String, PrintableString
/// or IA5String). The certificate was verified already: this only walks its structure.
pub(crate) fn common_name(der: &[u8]) -> Option<String> {
    subject_attribute(der, &[0x55, 0x04, 0x03])
}

/// Whether a DER certificate's subject has the organizational unit [`MEMBER_OU`].
pub(crate) fn is_member(der: &[u8]) -> bool {
    subject_attribute(der, &[0x55, 0x04, 0x0b]).as_deref() == Some(MEMBER_OU)
}

/// The first value of the subject attribute `oid` of a DER certificate, as text.
fn subject_attribute(der: &[u8], wanted: &[u8]) -> Option<String> {
    let (_, cert, _) = element(der)?;
    let (_, mut tbs, _) = element(cert)?;
    // version [0] (optional), serialNumber, signature, issuer, validity, subject
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs)?.2;
    }
    for _ in 0..4 {
        tbs = element(tbs)?.2;
    }
    let (tag, mut subject, _) = element(tbs)?;
    if tag != 0x30 {
        return None;
    }
    while !subject.is_empty() {
        let (_, mut set, rest) = element(subject)?;
        subject = rest;
        while !set.is_empty() {
            let (_, attribute, rest) = element(set)?;
            set = rest;
            let (oid_tag, oid, value) = element(attribute)?;
            let (value_tag, value, _) = element(value)?;
            if oid_tag == 0x06 && oid == wanted && matches!(value_tag, 0x0c | 0x13 | 0x16) {
                return String::from_utf8(value.to_vec()).ok();
            }
        }
    }
    None
}

/// One DER element at the start of `bytes`: (tag, contents, the bytes after it).
fn element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_cn(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "flotilla");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_is_read_from_a_certificate() {
        assert_eq!(
            common_name(&cert_with_cn("alice")).as_deref(),
            Some("alice")
        );
        let long = "n".repeat(300);
        assert_eq!(common_name(&cert_with_cn(&long)), Some(long));
    }

    #[test]
    fn garbage_has_no_common_name() {
        assert_eq!(common_name(b""), None);
        assert_eq!(common_name(&[0x30, 0x82, 0xff]), None);
        let cert = cert_with_cn("bob");
        assert_eq!(common_name(&cert[..cert.len() / 2]), None);
    }
}
