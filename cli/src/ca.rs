//! `flotctl ca init|issue|revoke|token`: a cluster CA, certificates and their revocation list
//! for people without a PKI, and tokens for the client API's users; also the trust options (`--ca-file`, `--cert-file`,
//! `--key-file`, `--token`) every HTTP call to an agent is built with.
//!
//! Keys are ECDSA P-256 (rcgen over aws-lc-rs, the crypto library the rest of the build uses).
//! The CA's subject is `O=flotilla, CN=flotilla CA <id>`, where the id comes from the CA key, so
//! `issue` rebuilds the issuer from `ca.key` alone and checks that `ca.crt` belongs to it.
//! Certificates carry both the server and the client authentication purposes: one certificate
//! per member serves the peer port and the client API, and presents itself to peers.
//!
//! `revoke` adds a certificate (DIR/NAME.crt's serial, or one given) to DIR/ca.crl, a PEM CRL
//! signed by the CA (valid for `--days`; earlier entries are kept with their dates): agents
//! with `tls_crl` pointing at it refuse that certificate after `systemctl reload flotillad`.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::Output;

/// `flotctl ca COMMAND`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Create a cluster CA, certificates for members and clients, and API tokens",
    long_about = "Create a cluster CA and certificates for members and clients (for \
                  [cluster] and [api] tls_ca, tls_cert, tls_key), and tokens for the client \
                  API's users ([[api.users]]). Works offline on files only; refuses to overwrite \
                  a file without --force. Private keys are written with mode 0600."
)]
pub(crate) struct Args {
    /// The command.
    #[command(subcommand)]
    command: CaCommand,
}

/// The CA commands.
#[derive(Debug, clap::Subcommand)]
enum CaCommand {
    /// Create DIR/ca.crt and DIR/ca.key (a new CA).
    Init {
        /// The directory (created if missing).
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Overwrite an existing CA (every certificate it issued stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Create DIR/NAME.crt and DIR/NAME.key, signed by DIR's CA, for a member (give the
    /// addresses peers and clients reach it at) or a client (NAME is the user).
    Issue {
        /// The directory holding ca.crt and ca.key.
        dir: PathBuf,
        /// The member or user name: the certificate's common name.
        name: String,
        /// An IP address the certificate is valid for (repeatable).
        #[arg(long = "ip", value_name = "ADDR")]
        ips: Vec<IpAddr>,
        /// A DNS name the certificate is valid for (repeatable; default: NAME when it is one
        /// and no --ip is given).
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Overwrite an existing NAME.crt / NAME.key.
        #[arg(long)]
        force: bool,
        /// A member's certificate (OU=flotilla-member): only those are let onto the peer port
        /// (Raft); without it the certificate is a client's (the API only).
        #[arg(long)]
        member: bool,
    },
    /// Add a certificate to DIR/ca.crl, the CA's revocation list (point [cluster] and [api]
    /// tls_crl at it, then systemctl reload flotillad): DIR/NAME.crt's, or --serial's.
    Revoke {
        /// The directory holding ca.crt and ca.key.
        dir: PathBuf,
        /// The member or user whose certificate DIR/NAME.crt is revoked.
        #[arg(required_unless_present = "serial", conflicts_with = "serial")]
        name: Option<String>,
        /// The serial number (hex, as openssl x509 -serial prints it) of the certificate.
        #[arg(long, value_name = "HEX")]
        serial: Option<String>,
        /// Days until the list must be re-signed (any `flotctl ca revoke` re-signs it).
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Print a new random token for NAME and the [[api.users]] entry that accepts it (only its
    /// SHA-256 is stored in the config).
    Token {
        /// The user's name.
        name: String,
        /// What the user may do: read (GET) or write (everything).
        #[arg(long, value_parser = ["read", "write"], default_value = "read")]
        role: String,
    },
}

/// Runs a `flotctl ca` command.
pub(crate) fn run(global: &crate::Global, args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        CaCommand::Init { dir, days, force } => init(&dir, days, force)?,
        CaCommand::Issue {
            dir,
            name,
            ips,
            dns,
            days,
            force,
            member,
        } => issue(&dir, &name, &ips, &dns, days, force, member)?,
        CaCommand::Revoke {
            dir,
            name,
            serial,
            days,
        } => revoke(&dir, name.as_deref(), serial.as_deref(), days)?,
        CaCommand::Token { name, role } => token(global, &name, &role)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The CA's subject, derived from its key.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let id: String = Sha256::digest(key.public_key_raw())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "flotilla");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("flotilla CA {id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// From an hour ago (clocks differ) to `days` from now.
fn validity(params: &mut CertificateParams, days: u32) -> anyhow::Result<()> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + Duration::from_secs(u64::from(days) * 86_400);
    Ok(())
}

fn init(dir: &Path, days: u32, force: bool) -> anyhow::Result<()> {
    let (crt, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    refuse_overwrite(&[&crt, &key_path], force)?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = KeyPair::generate().context("cannot generate the CA key")?;
    let mut params = ca_params(&key);
    validity(&mut params, days)?;
    let cert = params
        .self_signed(&key)
        .context("cannot sign the CA certificate")?;
    write(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write(&crt, cert.pem().as_bytes(), 0o644)?;
    eprintln!("wrote {} and {}", crt.display(), key_path.display());
    Ok(())
}

/// The organizational unit of a member's certificate; the agent's peer port admits only those.
const MEMBER_OU: &str = "flotilla-member";

/// DIR's CA as an issuer: ca.key, checked against ca.crt.
fn load_issuer(dir: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let ca_key_pem = fs::read_to_string(&ca_key).with_context(|| {
        format!(
            "cannot read {} (create the CA with flotctl ca init {})",
            ca_key.display(),
            dir.display()
        )
    })?;
    let ca_key_pair =
        KeyPair::from_pem(&ca_key_pem).with_context(|| format!("{}", ca_key.display()))?;
    let ca_der = CertificateDer::from_pem_file(&ca_crt)
        .with_context(|| format!("cannot read a certificate from {}", ca_crt.display()))?;
    let params = ca_params(&ca_key_pair);
    if !contains(&ca_der, ca_key_pair.public_key_raw()) {
        bail!(
            "{} was not made with {}: they do not belong together",
            ca_crt.display(),
            ca_key.display()
        );
    }
    Ok(Issuer::new(params, ca_key_pair))
}

fn issue(
    dir: &Path,
    name: &str,
    ips: &[IpAddr],
    dns: &[String],
    days: u32,
    force: bool,
    member: bool,
) -> anyhow::Result<()> {
    if name.is_empty()
        || name == "ca"
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        bail!(
            "{name:?} is not a usable name: letters, digits, '.', '-', '_', not \"ca\" \
             (it names the files NAME.crt and NAME.key)"
        );
    }
    let issuer = load_issuer(dir)?;

    let (crt, key_path) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    refuse_overwrite(&[&crt, &key_path], force)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "flotilla");
    if member {
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, MEMBER_OU);
    }
    params.distinguished_name.push(DnType::CommonName, name);
    let mut names = dns.to_vec();
    if names.is_empty() && ips.is_empty() && name.contains(|c: char| c.is_ascii_alphabetic()) {
        names.push(name.to_string());
    }
    for n in &names {
        let ia5 = n
            .clone()
            .try_into()
            .with_context(|| format!("--dns {n:?} is not a DNS name"))?;
        params.subject_alt_names.push(SanType::DnsName(ia5));
    }
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days)?;
    let key = KeyPair::generate().context("cannot generate a key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign the certificate")?;
    write(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write(&crt, cert.pem().as_bytes(), 0o644)?;
    eprintln!("wrote {} and {}", crt.display(), key_path.display());
    Ok(())
}

/// The content octets of a DER INTEGER serial, from hex as openssl prints it (`serial=` and
/// colons allowed).
fn parse_serial(hex: &str) -> anyhow::Result<Vec<u8>> {
    let digits: String = hex
        .trim()
        .trim_start_matches("serial=")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("--serial {hex:?} is not a hexadecimal serial number");
    }
    let digits = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).context("hex"))
        .collect()
}

/// The serial number of the certificate in `path`.
fn serial_of(path: &Path) -> anyhow::Result<Vec<u8>> {
    let der = CertificateDer::from_pem_file(path)
        .with_context(|| format!("cannot read a certificate from {}", path.display()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("{}: not a certificate: {e}", path.display()))?;
    Ok(cert.raw_serial().to_vec())
}

/// The entries of DIR/ca.crl so far (none without one); refuses one the CA did not sign.
fn revoked_so_far(dir: &Path, crl_path: &Path) -> anyhow::Result<Vec<RevokedCertParams>> {
    let pem = match fs::read(crl_path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => bail!("cannot read {}: {e}", crl_path.display()),
    };
    let der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(&pem)
        .with_context(|| format!("{}: no PEM revocation list (X509 CRL)", crl_path.display()))?;
    let (_, crl) = x509_parser::parse_x509_crl(&der)
        .map_err(|e| anyhow::anyhow!("{}: not a revocation list: {e}", crl_path.display()))?;
    let ca_path = dir.join("ca.crt");
    let ca_der = CertificateDer::from_pem_file(&ca_path)
        .with_context(|| format!("cannot read a certificate from {}", ca_path.display()))?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|e| anyhow::anyhow!("{}: not a certificate: {e}", ca_path.display()))?;
    crl.verify_signature(ca.public_key()).map_err(|e| {
        anyhow::anyhow!(
            "{} is not signed by the CA in {}: {e} (move it away to start a new list)",
            crl_path.display(),
            ca_path.display()
        )
    })?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| RevokedCertParams {
            serial_number: SerialNumber::from_slice(r.raw_serial()),
            revocation_time: r.revocation_date.to_datetime(),
            reason_code: None,
            invalidity_date: None,
        })
        .collect())
}

/// Positive INTEGER content octets without the sign byte, as rcgen takes a serial.
fn magnitude(serial: &[u8]) -> &[u8] {
    match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        s => s,
    }
}

fn revoke(dir: &Path, name: Option<&str>, serial: Option<&str>, days: u32) -> anyhow::Result<()> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let issuer = load_issuer(dir)?;
    let (serial, what) = match (name, serial) {
        (_, Some(hex)) => (parse_serial(hex)?, format!("serial {hex}")),
        (Some(name), None) => {
            let crt = dir.join(format!("{name}.crt"));
            (serial_of(&crt)?, crt.display().to_string())
        }
        (None, None) => bail!("give NAME or --serial"),
    };
    let crl_path = dir.join("ca.crl");
    let mut revoked = revoked_so_far(dir, &crl_path)?;
    let listed = revoked
        .iter()
        .any(|r| magnitude(r.serial_number.as_ref()) == magnitude(&serial));
    let now = time::OffsetDateTime::now_utc();
    if !listed {
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(magnitude(&serial)),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let count = revoked.len();
    let params = CertificateRevocationListParams {
        this_update: now - Duration::from_secs(3600),
        next_update: now + Duration::from_secs(u64::from(days) * 86_400),
        crl_number: SerialNumber::from(u64::try_from(now.unix_timestamp()).unwrap_or(0)),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&issuer)
        .context("cannot sign the revocation list")?;
    write(
        &crl_path,
        crl.pem()
            .context("cannot encode the revocation list")?
            .as_bytes(),
        0o644,
    )?;
    let hex = hex(magnitude(&serial)).to_uppercase();
    if listed {
        eprintln!(
            "{what} (serial {hex}) was revoked already; re-signed {} ({count} revoked)",
            crl_path.display()
        );
    } else {
        eprintln!(
            "revoked {what} (serial {hex}) in {} ({count} revoked); agents with tls_crl = \
             \"{}\" refuse it after systemctl reload flotillad",
            crl_path.display(),
            crl_path.display()
        );
    }
    Ok(())
}

fn token(global: &crate::Global, name: &str, role: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.contains([':', ' ', '"']) {
        bail!("{name:?} is not a usable user name: no ':', spaces or quotes");
    }
    let mut random = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .context("cannot read /dev/urandom")?;
    let token = hex(&random);
    let digest = hex(&Sha256::digest(token.as_bytes()));
    match global.output {
        Output::Json => println!(
            "{}",
            json!({"name": name, "role": role, "token": token, "token_sha256": digest})
        ),
        Output::Text => {
            println!("{token}");
            eprintln!(
                "give the token above to {name}; accept it with this in flotilla.toml's [api] \
                 section (or in its tokens_file, as [[users]]):\n\n\
                 [[api.users]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken_sha256 = \"{digest}\""
            );
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn refuse_overwrite(paths: &[&Path], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        bail!(
            "{} exists: refusing to overwrite it (give --force to replace it)",
            p.display()
        );
    }
    Ok(())
}

/// Writes `bytes` to `path` with `mode` (also when it replaces a file).
fn write(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The options an HTTP client to an agent is built with: the CA that verifies the agent's
/// certificate, the client certificate presented, and the bearer token sent.
pub(crate) fn trust(
    builder: reqwest::ClientBuilder,
    global: &crate::Global,
) -> Result<reqwest::ClientBuilder, String> {
    let read =
        |flag: &str, p: &Path| fs::read(p).map_err(|e| format!("{flag} {}: {e}", p.display()));
    let mut builder = builder;
    if let Some(ca) = &global.ca_file {
        let certs = reqwest::Certificate::from_pem_bundle(&read("--ca-file", ca)?)
            .map_err(|e| format!("--ca-file {}: {e}", ca.display()))?;
        builder = builder.tls_certs_only(certs);
    }
    match (&global.cert_file, &global.key_file) {
        (Some(cert), Some(key)) => {
            let mut pem = read("--cert-file", cert)?;
            pem.push(b'\n');
            pem.extend(read("--key-file", key)?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| format!("--cert-file {}: {e}", cert.display()))?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => return Err("--cert-file and --key-file go together".into()),
    }
    if let Some(token) = &global.token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "--token must be printable text".to_string())?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_subject_follows_from_its_key() {
        let key = KeyPair::generate().unwrap();
        let a = ca_params(&key);
        let b = ca_params(&KeyPair::from_pem(&key.serialize_pem()).unwrap());
        assert_eq!(a.distinguished_name, b.distinguished_name);
        let other = ca_params(&KeyPair::generate().unwrap());
        assert_ne!(a.distinguished_name, other.distinguished_name);
    }

    /// The serials DIR/ca.crl lists, after checking that DIR's CA signed it.
    fn listed(dir: &Path) -> Vec<Vec<u8>> {
        let pem = fs::read(dir.join("ca.crl")).unwrap();
        let der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(&pem).unwrap();
        let (rest, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        assert!(rest.is_empty());
        let ca_der = CertificateDer::from_pem_file(dir.join("ca.crt")).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        crl.verify_signature(ca.public_key())
            .expect("the CA signed the list");
        assert_eq!(crl.issuer(), ca.subject());
        crl.iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect()
    }

    #[test]
    fn revoke_lists_the_serial_in_a_crl_the_ca_signed() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), 10, false).unwrap();
        for n in ["n1", "n2", "n3"] {
            issue(dir.path(), n, &[], &[], 10, false, true).unwrap();
        }
        let serial = |n: &str| serial_of(&dir.path().join(format!("{n}.crt"))).unwrap();
        assert_ne!(serial("n1"), serial("n2"));

        revoke(dir.path(), Some("n1"), None, 30).unwrap();
        assert_eq!(listed(dir.path()), vec![serial("n1")]);
        // By serial, as openssl prints it; earlier entries stay; a second revoke of the same
        // certificate adds nothing.
        let hex2 = format!("serial={}", hex(&serial("n2")).to_uppercase());
        revoke(dir.path(), None, Some(&hex2), 30).unwrap();
        revoke(dir.path(), Some("n1"), None, 30).unwrap();
        let serials = listed(dir.path());
        assert_eq!(serials.len(), 2, "{serials:?}");
        for n in ["n1", "n2"] {
            assert!(
                serials
                    .iter()
                    .any(|s| magnitude(s) == magnitude(&serial(n))),
                "{n} missing"
            );
        }
        assert!(
            !serials
                .iter()
                .any(|s| magnitude(s) == magnitude(&serial("n3")))
        );

        assert!(revoke(dir.path(), Some("nobody"), None, 30).is_err());
        assert!(revoke(dir.path(), None, Some("xyz"), 30).is_err());
        // A list from another CA is not extended.
        let other = tempfile::tempdir().unwrap();
        init(other.path(), 10, false).unwrap();
        issue(other.path(), "x", &[], &[], 10, false, false).unwrap();
        revoke(other.path(), Some("x"), None, 30).unwrap();
        fs::copy(other.path().join("ca.crl"), dir.path().join("ca.crl")).unwrap();
        let err = revoke(dir.path(), Some("n3"), None, 30)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not signed by the CA"), "{err}");
    }

    #[test]
    fn init_then_issue_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), 10, false).unwrap();
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = init(dir.path(), 10, false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        issue(
            dir.path(),
            "n1",
            &["127.0.0.1".parse().unwrap()],
            &[],
            10,
            false,
            true,
        )
        .unwrap();
        let err = issue(dir.path(), "n1", &[], &[], 10, false, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("n1.crt") && err.contains("--force"), "{err}");
        issue(dir.path(), "n1", &[], &[], 10, true, false).unwrap();
        assert!(issue(dir.path(), "../x", &[], &[], 10, false, false).is_err());
        // A CA certificate from another key is noticed.
        let other = tempfile::tempdir().unwrap();
        init(other.path(), 10, false).unwrap();
        fs::copy(other.path().join("ca.crt"), dir.path().join("ca.crt")).unwrap();
        let err = issue(dir.path(), "n2", &[], &[], 10, false, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("do not belong together"), "{err}");
    }
}
