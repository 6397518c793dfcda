//! A real OCI registry on loopback (Debian's `docker-registry`, with its own config and storage),
//! and small images built here and pushed to it (OCI layouts written in Rust, `skopeo copy`).
//!
//! The registry is the packaged binary run by hand, never its packaged service: storage in a
//! directory of its own, listening on a loopback address of its own, killed and removed on
//! [`Drop`]. Images are described by [`Layer`]s of [`Entry`]s, so a test says exactly which
//! files, links and whiteouts each layer has.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::testbed::{WaitError, wait_for};

const REGISTRY: &str = "/usr/bin/docker-registry";

/// A failure to run the registry or to build or push an image.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("starting {program}: {source} (is it installed?)")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// A program failed.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The registry did not answer in time.
    #[error("registry at {addr} did not come up: {source}; its log: {log}")]
    NotUp {
        /// Its address.
        addr: SocketAddr,
        /// The wait.
        source: WaitError,
        /// Its log.
        log: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A unique directory for this process, removed by whoever made it.
fn unique_dir(kind: &str) -> Result<PathBuf, RegistryError> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("flotilla-{kind}-{}-{n}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    Ok(dir)
}

/// A `docker-registry` serving plain HTTP on a loopback address; killed and removed on drop.
pub struct Registry {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Registry {
    /// Starts a registry with an empty storage and waits (10 s at most) until it answers `/v2/`.
    pub fn start() -> Result<Registry, RegistryError> {
        Registry::start_with(None, None, None)
    }

    /// A registry listening on `ip` (a free port), e.g. a testbed's bridge address, which the
    /// testbed's machines reach over their veth (and this host too).
    pub fn start_on(ip: Ipv4Addr) -> Result<Registry, RegistryError> {
        Registry::start_with(None, None, Some(ip))
    }

    /// A registry that wants HTTP basic auth: `htpasswd` is an htpasswd line (`user:bcrypt`).
    pub fn start_with_auth(htpasswd: &str) -> Result<Registry, RegistryError> {
        Registry::start_with(Some(htpasswd), None, None)
    }

    /// A pull-through cache of `upstream` (a registry mirror): it fetches what it lacks from
    /// there and keeps it in its own storage.
    pub fn start_mirror_of(upstream: &Registry) -> Result<Registry, RegistryError> {
        Registry::start_with(None, Some(upstream), None)
    }

    fn start_with(
        htpasswd: Option<&str>,
        upstream: Option<&Registry>,
        on: Option<Ipv4Addr>,
    ) -> Result<Registry, RegistryError> {
        let deadline = Duration::from_secs(10);
        let dir = unique_dir("registry")?;
        // A free port on an address of its own in 127/8 (the pid spreads concurrent runs apart).
        let pid = std::process::id();
        let ip = on.unwrap_or(Ipv4Addr::new(127, 73, (pid >> 8) as u8, (pid as u8).max(2)));
        let addr = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .map_err(io_err(&dir))?;
        let config = dir.join("config.yml");
        let storage = dir.join("storage");
        // No blob descriptor cache: a blob corrupted on disk by a test is served as it is.
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  \
             filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some(line) = htpasswd {
            let file = dir.join("htpasswd");
            fs::write(&file, format!("{line}\n")).map_err(io_err(&file))?;
            yaml += &format!(
                "auth:\n  htpasswd:\n    realm: flotilla-tests\n    path: {}\n",
                file.display()
            );
        }
        if let Some(up) = upstream {
            yaml += &format!("proxy:\n  remoteurl: http://{}\n", up.host());
        }
        fs::write(&config, yaml).map_err(io_err(&config))?;
        let log_path = dir.join("registry.log");
        let log = fs::File::create(&log_path).map_err(io_err(&log_path))?;
        let log2 = log.try_clone().map_err(io_err(&log_path))?;
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| RegistryError::Spawn {
                program: REGISTRY.into(),
                source,
            })?;
        let mut registry = Registry { child, dir, addr };
        let ready = if htpasswd.is_some() { 401 } else { 200 };
        let up = wait_for(deadline, &format!("registry on {addr}"), || {
            if let Ok(Some(status)) = registry.child.try_wait() {
                return Err(Some(format!("it exited: {status}")));
            }
            match http_status(addr, "/v2/") {
                Ok(code) if code == ready => Ok(()),
                Ok(code) => Err(Some(format!("HTTP {code}"))),
                Err(e) => Err(Some(e.to_string())),
            }
        });
        if let Err(source) = up {
            return Err(RegistryError::NotUp {
                addr,
                source,
                log: registry.log(),
            });
        }
        Ok(registry)
    }

    /// `host:port`, as an image reference's registry part and an `insecure_registries` entry.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// Whether its storage holds the blob `sha256:<hex>`.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_file(digest).exists()
    }

    /// Where it keeps the blob `sha256:<hex>` (to corrupt it in a test).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Pushes the image `tag` of the OCI layout `layout` as `repo:tag` (`skopeo copy`, every
    /// platform of an index), as an OCI or a Docker v2 manifest.
    pub fn push(
        &self,
        layout: &Path,
        tag: &str,
        repo: &str,
        format: Format,
    ) -> Result<(), RegistryError> {
        self.push_as(layout, tag, repo, format, None)
    }

    /// [`Registry::push`] with `user:password` credentials.
    pub fn push_as(
        &self,
        layout: &Path,
        tag: &str,
        repo: &str,
        format: Format,
        creds: Option<&str>,
    ) -> Result<(), RegistryError> {
        let src = format!("oci:{}:{tag}", layout.display());
        let dest = format!("docker://{}/{repo}:{tag}", self.host());
        let creds = creds.map(|c| format!("--dest-creds={c}"));
        let mut args = vec!["copy", "--quiet", "--all", "--dest-tls-verify=false"];
        args.extend(creds.as_deref());
        if let Format::Docker = format {
            args.extend(["--format", "v2s2"]);
        }
        args.extend([src.as_str(), dest.as_str()]);
        run("skopeo", &args)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The status code of `GET path` over HTTP/1.0.
fn http_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

/// Runs a program, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<(), RegistryError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RegistryError::Spawn {
            program: program.into(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RegistryError::Failed {
            command: format!("{program} {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The manifest format a push writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCI image manifest (and index).
    Oci,
    /// Docker v2 schema 2 manifest (and manifest list).
    Docker,
}

/// One entry of a layer.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory and its mode.
    Dir(String, u32),
    /// A file, its mode and its content.
    File(String, u32, Vec<u8>),
    /// A file, its mode, and the host file it is a copy of.
    HostFile(String, u32, PathBuf),
    /// A symbolic link and its target.
    Symlink(String, String),
    /// A hard link and the (earlier) entry it links to.
    HardLink(String, String),
    /// `.wh.NAME`: hides NAME of the layers below.
    Whiteout(String),
    /// `DIR/.wh..wh..opq`: hides everything the layers below have in DIR.
    Opaque(String),
}

/// A layer: its entries in order, gzip-compressed when pushed.
#[derive(Debug, Clone, Default)]
pub struct Layer(pub Vec<Entry>);

/// An image for one platform: layers bottom first, and its config.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Its layers.
    pub layers: Vec<Layer>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `amd64`, `arm64`...
    pub architecture: String,
}

impl ImageSpec {
    /// An image of these layers for linux/amd64, with no command.
    pub fn new(layers: Vec<Layer>) -> ImageSpec {
        ImageSpec {
            layers,
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: vec!["PATH=/bin".into()],
            working_dir: "/".into(),
            architecture: "amd64".into(),
        }
    }
}

/// A busybox image: busybox and its links; a whiteout, an opaque directory and a hard link over
/// three layers (the third one hides `/etc/motd` and empties `/data` of the first's files).
pub fn busybox_image() -> ImageSpec {
    use Entry::*;
    let base = Layer(vec![
        Dir("bin".into(), 0o755),
        HostFile("bin/busybox".into(), 0o755, "/bin/busybox".into()),
        Symlink("bin/sh".into(), "busybox".into()),
        Symlink("bin/echo".into(), "/bin/busybox".into()),
        Dir("etc".into(), 0o755),
        File(
            "etc/motd".into(),
            0o644,
            b"hello from the base layer\n".to_vec(),
        ),
        File(
            "etc/passwd".into(),
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        ),
        Dir("data".into(), 0o750),
        File("data/lower".into(), 0o600, b"from below".to_vec()),
    ]);
    let middle = Layer(vec![
        File("etc/hostname".into(), 0o644, b"image\n".to_vec()),
        HardLink("bin/ls".into(), "bin/busybox".into()),
    ]);
    let top = Layer(vec![
        Whiteout("etc/motd".into()),
        Opaque("data".into()),
        File("data/upper".into(), 0o640, b"from above".to_vec()),
    ]);
    ImageSpec {
        cmd: vec!["/bin/sh".into()],
        working_dir: "/data".into(),
        env: vec!["PATH=/bin".into(), "GREETING=hello".into()],
        ..ImageSpec::new(vec![base, middle, top])
    }
}

/// Writes an OCI layout at `dir` with `tag` naming the image (one spec) or an index of them
/// (several); returns the digest `tag` names.
pub fn write_layout(dir: &Path, tag: &str, specs: &[ImageSpec]) -> Result<String, RegistryError> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err(dir))?;
    let mut manifests = Vec::new();
    for spec in specs {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for layer in &spec.layers {
            let tar = layer_tar(layer)?;
            diff_ids.push(digest_of(&tar));
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).map_err(io_err(dir))?;
            let gz = gz.finish().map_err(io_err(dir))?;
            layers.push(put_blob(
                &blobs,
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &gz,
            )?);
        }
        let config = serde_json::json!({
            "architecture": spec.architecture,
            "os": "linux",
            "config": {
                "Entrypoint": spec.entrypoint,
                "Cmd": spec.cmd,
                "Env": spec.env,
                "WorkingDir": spec.working_dir,
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = put_blob(
            &blobs,
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        )?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        });
        let mut desc = put_blob(
            &blobs,
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        )?;
        desc["platform"] = serde_json::json!({"os": "linux", "architecture": spec.architecture});
        manifests.push(desc);
    }
    let mut top = if manifests.len() == 1 {
        manifests.pop().expect("one")
    } else {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        put_blob(
            &blobs,
            "application/vnd.oci.image.index.v1+json",
            index.to_string().as_bytes(),
        )?
    };
    let digest = top["digest"].as_str().expect("a digest").to_owned();
    top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [top]});
    let path = dir.join("index.json");
    fs::write(&path, index.to_string()).map_err(io_err(&path))?;
    Ok(digest)
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn put_blob(
    blobs: &Path,
    media_type: &str,
    bytes: &[u8],
) -> Result<serde_json::Value, RegistryError> {
    let digest = digest_of(bytes);
    let path = blobs.join(&digest["sha256:".len()..]);
    fs::write(&path, bytes).map_err(io_err(&path))?;
    Ok(serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()}))
}

/// The uncompressed tar of a layer (root-owned entries, a fixed mtime).
pub fn layer_tar(layer: &Layer) -> Result<Vec<u8>, RegistryError> {
    let mut b = tar::Builder::new(Vec::new());
    let err = |source| RegistryError::Io {
        path: PathBuf::from("<layer>"),
        source,
    };
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    };
    for entry in &layer.0 {
        match entry {
            Entry::Dir(p, mode) => {
                let mut h = header(tar::EntryType::Directory, *mode, 0);
                b.append_data(&mut h, format!("{p}/"), std::io::empty())
                    .map_err(err)?;
            }
            Entry::File(p, mode, data) => {
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                b.append_data(&mut h, p, &data[..]).map_err(err)?;
            }
            Entry::HostFile(p, mode, host) => {
                let data = fs::read(host).map_err(io_err(host))?;
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                b.append_data(&mut h, p, &data[..]).map_err(err)?;
            }
            Entry::Symlink(p, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, p, target).map_err(err)?;
            }
            Entry::HardLink(p, target) => {
                let mut h = header(tar::EntryType::Link, 0o755, 0);
                b.append_link(&mut h, p, target).map_err(err)?;
            }
            Entry::Whiteout(p) => {
                let path = Path::new(p);
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default();
                let wh = path.with_file_name(format!(".wh.{name}"));
                let mut h = header(tar::EntryType::Regular, 0o644, 0);
                b.append_data(&mut h, wh, std::io::empty()).map_err(err)?;
            }
            Entry::Opaque(dir) => {
                let mut h = header(tar::EntryType::Regular, 0o644, 0);
                b.append_data(&mut h, format!("{dir}/.wh..wh..opq"), std::io::empty())
                    .map_err(err)?;
            }
        }
    }
    b.into_inner().map_err(err)
}

/// A directory for an OCI layout or a store, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A new empty directory under the temporary directory.
    pub fn new(kind: &str) -> Result<Scratch, RegistryError> {
        unique_dir(kind).map(Scratch)
    }

    /// A new empty directory under `parent` (e.g. one that testbed machines see).
    pub fn under(parent: &Path, kind: &str) -> Result<Scratch, RegistryError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("{kind}-{}-{n}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Scratch(dir))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// An HTTP proxy in front of a registry that cuts off the body of every response to a path
/// containing `cut` after `keep` bytes (the headers still announce the whole length): a
/// registry whose transfer breaks off. One request per connection; stopped on drop.
pub struct CuttingProxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CuttingProxy {
    /// Listens on a free loopback port in front of `upstream`.
    pub fn start(
        upstream: SocketAddr,
        cut: &str,
        keep: usize,
    ) -> Result<CuttingProxy, RegistryError> {
        let listener = TcpListener::bind((upstream.ip(), 0)).map_err(io_err(Path::new("proxy")))?;
        let addr = listener.local_addr().map_err(io_err(Path::new("proxy")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let cut = cut.to_owned();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let cut = cut.clone();
                std::thread::spawn(move || {
                    let _ = relay(conn, upstream, &cut, keep);
                });
            }
        });
        Ok(CuttingProxy {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// `host:port` of the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Relays one request (forcing `Connection: close`) and its response, cut when asked.
fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    cut: &str,
    keep: usize,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
    let mut request: String = head
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    request += "Connection: close\r\n\r\n";
    let mut up = TcpStream::connect(upstream)?;
    up.set_read_timeout(Some(Duration::from_secs(10)))?;
    up.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    let body_at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |p| p + 4);
    if path.contains(cut) && response.starts_with(b"HTTP/1.1 200") {
        let end = (body_at + keep).min(response.len());
        client.write_all(&response[..end])?;
    } else {
        client.write_all(&response)?;
    }
    client.shutdown(std::net::Shutdown::Both)
}
