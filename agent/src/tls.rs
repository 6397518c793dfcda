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
//! Rotation and revocation: [`ServerTls`] holds a listener's current `ServerConfig` (and the
//! serials its CRL revokes) behind a `watch` channel; [`Reloadable::reload`] (SIGHUP) reads the
//! files again, checks them as at start and swaps them in for new handshakes, or keeps the old
//! ones. Established connections go on, except one whose client certificate the new CRL
//! revokes: the listener closes it ([`Acceptor::revocation`]). The peer client
//! (`raft::network::Peers`) is rebuilt from the same files the same way. A reload checks what
//! start checks, and more: this member's own certificate must chain to the cluster CA, be
//! unexpired and unrevoked (at start that is only a warning), and a CRL must be the CA's.
//!
//! Current limitations: the CRL is a file each member is given (no OCSP, no distribution
//! through the cluster) and is used past its nextUpdate; turning TLS on or off takes a restart.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{CryptoProvider, aws_lc_rs};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime,
};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::{
    CertRevocationListError, CertificateError, ClientConfig, RootCertStore, ServerConfig,
};
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
    /// The CA's certificate revocation list (PEM), when there is one (`tls_crl`).
    pub(crate) crl: Option<PathBuf>,
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

/// The CRLs of `tls_crl` (none without it).
fn crls(
    section: &str,
    files: &TlsFiles,
) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    let Some(path) = &files.crl else {
        return Ok(Vec::new());
    };
    let pem = read(section, "tls_crl", path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(section, "tls_crl", path, e))?;
    if crls.is_empty() {
        return Err(file_error(
            section,
            "tls_crl",
            path,
            "holds no PEM certificate revocation list (BEGIN X509 CRL)",
        ));
    }
    Ok(crls)
}

/// This side's certificate chain (`tls_cert`) and key (`tls_key`).
fn identity(
    section: &str,
    files: &TlsFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let certs = certificates(section, "tls_cert", &files.cert)?;
    let key_pem = read(section, "tls_key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| file_error(section, "tls_key", &files.key, e))?;
    Ok((certs, key))
}

/// rustls refused `tls_cert` with `tls_key`.
fn unusable_identity(section: &str, files: &TlsFiles, e: impl std::fmt::Display) -> Error {
    Error::Config {
        what: format!("[{section}] TLS"),
        reason: format!(
            "{} and {} do not make a usable certificate and key: {e}",
            files.cert.display(),
            files.key.display()
        ),
    }
}

/// One listener's TLS as loaded from its files: the config and the serials its CRL revokes.
struct Loaded {
    config: Arc<ServerConfig>,
    revoked: HashSet<Vec<u8>>,
}

/// Loads one listener's TLS from `files`; `reloading`: this member's own certificate must pass
/// [`check_own`] (at start a failure there is only a warning: there is nothing to fall back to,
/// and the peers decide).
fn server_config(
    section: &str,
    files: &TlsFiles,
    require: bool,
    reloading: bool,
) -> Result<Loaded, Error> {
    let roots = roots(section, files)?;
    let (certs, key) = identity(section, files)?;
    let crls = crls(section, files)?;
    let mut revoked = HashSet::new();
    for crl in &crls {
        let serials = revoked_serials(crl.as_ref()).ok_or_else(|| {
            file_error(
                section,
                "tls_crl",
                files.crl.as_deref().unwrap_or(Path::new("")),
                "is not a well-formed certificate revocation list",
            )
        })?;
        revoked.extend(serials);
    }
    let config_error = |reason: String| Error::Config {
        what: format!("[{section}] TLS"),
        reason,
    };
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider()).with_crls(crls);
    let verifier = if require {
        verifier
    } else {
        verifier.allow_unauthenticated()
    }
    .build()
    .map_err(|e| config_error(e.to_string()))?;
    match check_own(section, files, &certs, verifier.as_ref()) {
        Err((e, true)) if !reloading => tracing::warn!(
            "{e}; starting anyway, but peers and clients that check it will refuse it"
        ),
        Err((e, _)) => return Err(e),
        Ok(()) => {}
    }
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| unusable_identity(section, files, e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        revoked,
    })
}

/// Checks this member's own certificate as a peer would: on the peer port it must chain to the
/// cluster CA, be unexpired and not revoked; on both sides a CRL must be the CA's (one from
/// another CA would refuse every client). The client API's certificate may come from another
/// CA than the client certificates (`[api] tls_ca`), so only the CRL is checked there. The
/// error says whether it is about the certificate (true) rather than the CRL.
fn check_own(
    section: &str,
    files: &TlsFiles,
    certs: &[CertificateDer<'static>],
    verifier: &dyn ClientCertVerifier,
) -> Result<(), (Error, bool)> {
    let Some((own, intermediates)) = certs.split_first() else {
        return Ok(());
    };
    let peer = section == "cluster";
    let crl = files.crl.as_deref().unwrap_or(Path::new(""));
    let Err(e) = verifier.verify_client_cert(own, intermediates, UnixTime::now()) else {
        return Ok(());
    };
    use tokio_rustls::rustls::Error as Tls;
    let (key, path, reason) = match e {
        Tls::InvalidCertRevocationList(CertRevocationListError::BadSignature) => (
            "tls_crl",
            crl,
            format!("is not signed by the CA in {}", files.ca.display()),
        ),
        e @ Tls::InvalidCertRevocationList(_) => ("tls_crl", crl, format!("is not usable: {e}")),
        Tls::InvalidCertificate(CertificateError::Revoked) if peer => (
            "tls_cert",
            files.cert.as_path(),
            format!("is revoked by {}", crl.display()),
        ),
        Tls::InvalidCertificate(CertificateError::UnknownRevocationStatus) => (
            "tls_crl",
            crl,
            format!(
                "is not a revocation list of the CA in {}",
                files.ca.display()
            ),
        ),
        Tls::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) if peer => (
            "tls_cert",
            files.cert.as_path(),
            format!("is not signed by the CA in {}", files.ca.display()),
        ),
        Tls::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) if peer => ("tls_cert", files.cert.as_path(), "has expired".to_string()),
        _ => return Ok(()),
    };
    Err((file_error(section, key, path, reason), key == "tls_cert"))
}

/// A listener's current TLS, swapped by [`Reloadable::reload`]; clones share it.
#[derive(Clone)]
pub(crate) struct ServerTls {
    section: &'static str,
    require: bool,
    current: Arc<watch::Sender<Arc<Loaded>>>,
}

impl ServerTls {
    fn load(section: &'static str, require: bool, files: &TlsFiles) -> Result<Self, Error> {
        let loaded = server_config(section, files, require, false)?;
        Ok(ServerTls {
            section,
            require,
            current: Arc::new(watch::Sender::new(Arc::new(loaded))),
        })
    }

    /// The peer server's TLS: a client certificate from the cluster CA is required.
    pub(crate) fn peer(files: &TlsFiles) -> Result<Self, Error> {
        ServerTls::load("cluster", true, files)
    }

    /// The client API's TLS: client certificates are optional, verified when sent.
    pub(crate) fn api(files: &TlsFiles) -> Result<Self, Error> {
        ServerTls::load("api", false, files)
    }

    /// Reads and checks `files` as at start, without using them yet.
    fn prepare(&self, files: &TlsFiles) -> Result<Prepared, Error> {
        Ok(Prepared {
            tls: self.clone(),
            loaded: server_config(self.section, files, self.require, true)?,
        })
    }

    fn config(&self) -> Arc<ServerConfig> {
        self.current.borrow().config.clone()
    }
}

/// A listener's TLS read and checked, to be used from the next handshake on.
struct Prepared {
    tls: ServerTls,
    loaded: Loaded,
}

impl Prepared {
    /// New handshakes use it; established connections whose client certificate its CRL
    /// revokes are closed.
    fn install(self) {
        self.tls.current.send_replace(Arc::new(self.loaded));
    }
}

/// The TLS that SIGHUP reloads: both listeners' and the peer client's.
pub(crate) struct Reloadable {
    /// The peer server's (`[cluster]`).
    pub(crate) peer: Option<ServerTls>,
    /// The client API's (`[api]`), shared by its listeners.
    pub(crate) api: Option<ServerTls>,
    /// The peer client (`[cluster]` too).
    pub(crate) client: crate::raft::network::Peers,
}

impl Reloadable {
    /// Reads the files of `peer` and `api` again and, for each side whose files load and
    /// check as at start, uses them from the next handshake on (logged); a side whose files do
    /// not keeps its running TLS and one error names the file and why. A side that runs
    /// without TLS, or whose TLS the new config turns off, is left as it is (a restart).
    pub(crate) fn reload(&self, peer: Option<&TlsFiles>, api: Option<&TlsFiles>) {
        if let (Some(tls), Some(files)) = (&self.peer, peer) {
            let done = tls.prepare(files).and_then(|prepared| {
                self.client.reload(files)?;
                prepared.install();
                Ok(())
            });
            report("[cluster]", files, done);
        }
        if let (Some(tls), Some(files)) = (&self.api, api) {
            report("[api]", files, tls.prepare(files).map(Prepared::install));
        }
    }
}

fn report(section: &str, files: &TlsFiles, done: Result<(), Error>) {
    let crl = files
        .crl
        .as_ref()
        .map(|c| format!(", revocation list {}", c.display()))
        .unwrap_or_default();
    match done {
        Ok(()) => tracing::info!(
            "reload: {section} TLS: new connections use {} (key {}, CA {}{crl})",
            files.cert.display(),
            files.key.display(),
            files.ca.display()
        ),
        Err(e) => tracing::error!("reload: {section} TLS: {e}; keeping the running certificates"),
    }
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
    let mut builder = builder
        .tls_backend_rustls()
        .tls_certs_only(roots)
        .identity(identity);
    if let Some(path) = &files.crl {
        crls("cluster", files)?;
        let pem = read("cluster", "tls_crl", path)?;
        let crls =
            reqwest::tls::CertificateRevocationList::from_pem_bundle(&pem).map_err(|source| {
                Error::Client {
                    path: path.clone(),
                    source,
                }
            })?;
        builder = builder.tls_crls_only(crls);
    }
    Ok(builder)
}

/// The rustls client config of the peer channel's own connections (`raft::network`'s
/// replication links): the cluster CA as the only root, this member's certificate presented,
/// the peer's certificate checked against `tls_crl`; the same files and checks as
/// [`peer_client`].
pub(crate) fn peer_client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, Error> {
    let section = "cluster";
    let roots = roots(section, files)?;
    let (certs, key) = identity(section, files)?;
    let config_error = |reason: String| Error::Config {
        what: format!("[{section}] TLS"),
        reason,
    };
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .with_crls(crls(section, files)?)
        .build()
        .map_err(|e| config_error(e.to_string()))?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(certs, key)
        .map_err(|e| unusable_identity(section, files, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
    tls: ServerTls,
    members_only: bool,
    what: &'static str,
    refusals: Refusals,
}

impl Acceptor {
    /// Handshakes with `tls` (as it is at each handshake); `what` names the listener in log
    /// lines (`client API`).
    pub(crate) fn new(tls: ServerTls, what: &'static str) -> Self {
        Acceptor {
            tls,
            members_only: false,
            what,
            refusals: Refusals::default(),
        }
    }

    /// As [`Acceptor::new`], admitting only members' certificates ([`MEMBER_OU`]): the peer
    /// port's.
    pub(crate) fn members_only(tls: ServerTls, what: &'static str) -> Self {
        Acceptor {
            members_only: true,
            ..Acceptor::new(tls, what)
        }
    }

    /// Resolves once a CRL loaded after the handshake of `tls` revokes the client certificate
    /// it presented (never without one): the listener then closes the connection.
    pub(crate) fn revocation(
        &self,
        tls: &TlsStream<TcpStream>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let serial = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| serial(c))
            .map(<[u8]>::to_vec);
        let mut current = self.tls.current.subscribe();
        async move {
            let Some(serial) = serial else {
                return std::future::pending().await;
            };
            loop {
                if current.borrow_and_update().revoked.contains(&serial) {
                    return;
                }
                if current.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
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
        let acceptor = TlsAcceptor::from(self.tls.config());
        let tls = match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
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

/// The serial number of a DER certificate (the INTEGER's content octets, as a CRL lists them).
pub(crate) fn serial(der: &[u8]) -> Option<&[u8]> {
    let (_, cert, _) = element(der)?;
    let (_, mut tbs, _) = element(cert)?;
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs)?.2;
    }
    let (tag, serial, _) = element(tbs)?;
    (tag == 0x02).then_some(serial)
}

/// The serial numbers a DER certificate revocation list revokes (RFC 5280 5.1; its signature
/// is the verifier's business); `None` when it is not one.
fn revoked_serials(der: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (tag, list, _) = element(der)?;
    let (tbs_tag, mut tbs, _) = element(list)?;
    if tag != 0x30 || tbs_tag != 0x30 {
        return None;
    }
    // version (optional), signature, issuer, thisUpdate, nextUpdate (optional),
    // revokedCertificates (optional), crlExtensions [0] (optional)
    if tbs.first() == Some(&0x02) {
        tbs = element(tbs)?.2;
    }
    for _ in 0..3 {
        tbs = element(tbs)?.2;
    }
    if matches!(tbs.first(), Some(0x17 | 0x18)) {
        tbs = element(tbs)?.2;
    }
    let mut serials = Vec::new();
    if tbs.first() == Some(&0x30) {
        let (_, mut entries, _) = element(tbs)?;
        while !entries.is_empty() {
            let (_, entry, rest) = element(entries)?;
            entries = rest;
            let (tag, serial, _) = element(entry)?;
            if tag != 0x02 {
                return None;
            }
            serials.push(serial.to_vec());
        }
    }
    Some(serials)
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

    /// A CA in `dir` (ca.crt, and its issuer), as `flotctl ca init` makes one.
    fn ca(dir: &Path, name: &str) -> rcgen::Issuer<'static, rcgen::KeyPair> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.crt"), cert.pem()).unwrap();
        rcgen::Issuer::new(params, key)
    }

    /// A member certificate NAME.crt / NAME.key from `issuer`; returns its DER.
    fn member(dir: &Path, issuer: &rcgen::Issuer<'static, rcgen::KeyPair>, name: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    /// DIR/ca.crl from `issuer`, revoking `serials`.
    fn crl(dir: &Path, issuer: &rcgen::Issuer<'static, rcgen::KeyPair>, serials: &[&[u8]]) {
        let now = rcgen::date_time_ymd(2025, 1, 1);
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(s),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(issuer).unwrap();
        std::fs::write(dir.join("ca.crl"), crl.pem().unwrap()).unwrap();
    }

    fn files(dir: &Path, name: &str, crl: bool) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            crl: crl.then(|| dir.join("ca.crl")),
        }
    }

    #[test]
    fn a_crl_lists_serials_and_a_revoked_or_foreign_setup_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let issuer = ca(dir, "test CA");
        let n1 = member(dir, &issuer, "n1");
        let n2 = member(dir, &issuer, "n2");
        let s1 = serial(&n1).unwrap().to_vec();
        let s2 = serial(&n2).unwrap().to_vec();
        assert_ne!(s1, s2);
        crl(dir, &issuer, &[&s2]);

        let tls = ServerTls::peer(&files(dir, "n1", true)).expect("n1 is not revoked");
        assert!(tls.current.borrow().revoked.contains(&s2));
        assert!(!tls.current.borrow().revoked.contains(&s1));
        // n2's own certificate is revoked: a reload to it is refused, naming the file (at start
        // it is only a warning).
        ServerTls::peer(&files(dir, "n2", true)).expect("starts with a warning");
        let err = tls
            .prepare(&files(dir, "n2", true))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("n2.crt") && err.contains("revoked"), "{err}");
        // A reload with bad files keeps the running TLS.
        std::fs::write(dir.join("bad.crt"), "not pem").unwrap();
        let mut bad = files(dir, "n1", true);
        bad.cert = dir.join("bad.crt");
        let err = tls.prepare(&bad).err().unwrap().to_string();
        assert!(
            err.contains("cluster.tls_cert") && err.contains("bad.crt"),
            "{err}"
        );
        // A certificate from another CA, and a CRL from another CA, are named.
        let other = tempfile::tempdir().unwrap();
        let foreign = ca(other.path(), "another CA");
        member(other.path(), &foreign, "n1");
        crl(other.path(), &foreign, &[]);
        let mut wrong_cert = files(dir, "n1", false);
        wrong_cert.cert = other.path().join("n1.crt");
        wrong_cert.key = other.path().join("n1.key");
        ServerTls::peer(&wrong_cert).expect("starts with a warning");
        let err = tls.prepare(&wrong_cert).err().unwrap().to_string();
        assert!(err.contains("not signed by the CA"), "{err}");
        let mut wrong_crl = files(dir, "n1", true);
        wrong_crl.crl = Some(other.path().join("ca.crl"));
        let err = ServerTls::peer(&wrong_crl).err().unwrap().to_string();
        assert!(
            err.contains("cluster.tls_crl") && err.contains("not a revocation list of the CA"),
            "{err}"
        );
        // A list in the CA's name but signed by another key.
        let forged = tempfile::tempdir().unwrap();
        let forger = ca(forged.path(), "test CA");
        crl(forged.path(), &forger, &[]);
        wrong_crl.crl = Some(forged.path().join("ca.crl"));
        let err = ServerTls::peer(&wrong_crl).err().unwrap().to_string();
        assert!(
            err.contains("cluster.tls_crl") && err.contains("is not signed by the CA"),
            "{err}"
        );
    }

    #[test]
    fn garbage_has_no_common_name() {
        assert_eq!(common_name(b""), None);
        assert_eq!(common_name(&[0x30, 0x82, 0xff]), None);
        let cert = cert_with_cn("bob");
        assert_eq!(common_name(&cert[..cert.len() / 2]), None);
    }
}
