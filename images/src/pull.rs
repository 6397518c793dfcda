//! Pulling an image by the distribution protocol into the [`Store`]: manifests resolved for this
//! platform, layers downloaded in parallel and verified while they stream, unpacked in order as
//! they arrive, committed all at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::auth::Credentials;
use crate::digest::{Digest, DigestError};
use crate::manifest::{self, Descriptor, Manifest};
use crate::platform::{self, Platform};
use crate::store::{Image, Store, StoreError};
use crate::unpack::{self, UnpackError};

/// The largest manifest or config accepted, in bytes.
const MAX_DOCUMENT: u64 = 4 << 20;
/// The default of [`PullOptions::max_image_bytes`]: 16 GiB.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 16 << 30;
/// Progress is reported at most once per this many bytes of a layer.
const PROGRESS_STEP: u64 = 1 << 20;

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Registries (`host:port`) spoken to over plain HTTP (`[images] insecure_registries`).
    pub insecure_registries: Vec<String>,
    /// Mirrors to try, in order, before a registry itself: registry (`docker.io`) -> mirror
    /// hosts (`host:port`).
    pub mirrors: HashMap<String, Vec<String>>,
    /// Credentials per registry; anonymous for the others.
    pub credentials: Credentials,
    /// The platform chosen from multi-arch indexes.
    pub platform: Platform,
    /// Layers downloaded at once.
    pub max_concurrent_downloads: usize,
    /// A registry that sends nothing for this long fails the pull.
    pub read_timeout: Duration,
    /// The most bytes an image's layers may add up to (as its manifest gives them, compressed);
    /// a larger image is refused before anything is downloaded.
    pub max_image_bytes: u64,
}

impl Default for PullOptions {
    fn default() -> PullOptions {
        PullOptions {
            insecure_registries: Vec::new(),
            mirrors: HashMap::new(),
            credentials: Credentials::anonymous(),
            platform: Platform::host(),
            max_concurrent_downloads: 4,
            read_timeout: Duration::from_secs(60),
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
        }
    }
}

/// Where a layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerState {
    /// The store had it: not downloaded.
    Cached,
    /// Bytes are arriving.
    Downloading,
    /// Downloaded and verified.
    Downloaded,
    /// Applied to the root file system.
    Unpacked,
}

/// One progress event of one layer.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The layer.
    pub digest: Digest,
    /// Its state.
    pub state: LayerState,
    /// Bytes downloaded (or the size, once downloaded or cached).
    pub done: u64,
    /// Its size.
    pub total: u64,
}

/// Called with every progress event, from any task.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// A pull that failed; the store is as it was before it.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Not an image reference.
    #[error("{reference:?} is not an image reference: {source}")]
    BadReference {
        /// What was given.
        reference: String,
        /// Why.
        source: oci_client::ParseError,
    },
    /// The client could not be built from the options.
    #[error("building the registry client: {0}")]
    Client(OciDistributionError),
    /// The registry answered with an error, or could not be reached.
    #[error("pulling {reference} from registry {registry}: {source}")]
    Registry {
        /// The image.
        reference: String,
        /// The registry (or mirror) asked.
        registry: String,
        /// What the client reported.
        source: OciDistributionError,
    },
    /// A blob's transfer broke off.
    #[error(
        "pulling {reference}: blob {digest} from registry {registry} broke off after {received} of {size} bytes: {source}"
    )]
    Transfer {
        /// The image.
        reference: String,
        /// The registry asked.
        registry: String,
        /// The blob.
        digest: Digest,
        /// Bytes received.
        received: u64,
        /// Bytes expected.
        size: u64,
        /// Why.
        source: std::io::Error,
    },
    /// Content whose digest is not the one asked for: refused.
    #[error(
        "pulling {reference}: registry {registry} sent content with digest {actual} for {digest}: refused"
    )]
    DigestMismatch {
        /// The image.
        reference: String,
        /// The registry asked.
        registry: String,
        /// The digest asked for.
        digest: String,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// A blob of another size than its descriptor says (truncated, or too long): refused.
    #[error(
        "pulling {reference}: registry {registry} sent {received} bytes for blob {digest} of {size} bytes: refused"
    )]
    SizeMismatch {
        /// The image.
        reference: String,
        /// The registry asked.
        registry: String,
        /// The blob.
        digest: Digest,
        /// Bytes received.
        received: u64,
        /// Bytes expected.
        size: u64,
    },
    /// A manifest, index or config that cannot be parsed.
    #[error("pulling {reference}: {what} {digest} from registry {registry} is not valid: {source}")]
    BadDocument {
        /// The image.
        reference: String,
        /// The registry asked.
        registry: String,
        /// `manifest`, `index`, `config`.
        what: &'static str,
        /// Its digest.
        digest: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A digest in a manifest that is not `sha256:<hex>`.
    #[error("pulling {reference}: {source}")]
    BadDigest {
        /// The image.
        reference: String,
        /// Why.
        source: DigestError,
    },
    /// An image whose layers add up to more than [`PullOptions::max_image_bytes`].
    #[error(
        "pulling {reference}: its layers add up to {size} bytes, more than the {max} accepted ([images] max_image_bytes)"
    )]
    ImageTooLarge {
        /// The image.
        reference: String,
        /// The sum of its layers' sizes.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A manifest or config larger than accepted.
    #[error(
        "pulling {reference}: {what} {digest} is {size} bytes, more than the {MAX_DOCUMENT} accepted"
    )]
    TooLarge {
        /// The image.
        reference: String,
        /// `manifest`, `config`.
        what: &'static str,
        /// Its digest.
        digest: String,
        /// Its size.
        size: u64,
    },
    /// An index with nothing for this machine.
    #[error(
        "pulling {reference}: registry {registry} has no image for {platform} (it has: {available})"
    )]
    NoPlatform {
        /// The image.
        reference: String,
        /// The registry asked.
        registry: String,
        /// This machine's platform (`linux/amd64`).
        platform: String,
        /// The platforms the index lists.
        available: String,
    },
    /// A manifest that is not an image (no config), or an index within an index.
    #[error(
        "pulling {reference}: manifest {digest} from registry {registry} is not a runnable image"
    )]
    NotAnImage {
        /// The image.
        reference: String,
        /// The registry asked.
        registry: String,
        /// The manifest.
        digest: String,
    },
    /// A layer could not be applied.
    #[error("pulling {reference}: layer {layer}: {source}")]
    Unpack {
        /// The image.
        reference: String,
        /// The layer.
        layer: Digest,
        /// Why.
        source: UnpackError,
    },
    /// A file of the pull could not be written.
    #[error("pulling {reference}: {path}: {source}")]
    Io {
        /// The image.
        reference: String,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Pulls images. Cheap to clone; one per agent.
#[derive(Clone)]
pub struct Puller {
    client: Client,
    options: Arc<PullOptions>,
}

/// What a reference resolved to on one registry.
struct Resolved {
    reference: Reference,
    registry: String,
    auth: RegistryAuth,
    manifest: (Digest, Vec<u8>),
    config: Descriptor,
    layers: Vec<(Digest, u64)>,
}

/// What a pull task knows of where it pulls from.
#[derive(Clone)]
struct Source {
    client: Client,
    reference: Reference,
    name: String,
    registry: String,
}

impl Puller {
    /// A puller with these options.
    pub fn new(options: PullOptions) -> Result<Puller, PullError> {
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(options.insecure_registries.clone()),
            platform_resolver: None,
            read_timeout: Some(options.read_timeout),
            connect_timeout: Some(Duration::from_secs(30)),
            max_concurrent_download: options.max_concurrent_downloads.max(1),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(PullError::Client)?;
        Ok(Puller {
            client,
            options: Arc::new(options),
        })
    }

    /// Pulls `reference` (`busybox`, `host:5000/app:1`, `app@sha256:...`) into `store`, unless
    /// the store has it already (a tag is always asked again, a digest is not).
    pub async fn pull(
        &self,
        store: &Store,
        reference: &str,
        progress: Option<ProgressFn>,
    ) -> Result<Image, PullError> {
        let parsed: Reference = reference
            .parse()
            .map_err(|source| PullError::BadReference {
                reference: reference.to_owned(),
                source,
            })?;
        let name = parsed.whole();
        if parsed.digest().is_some()
            && let Some(image) = store.image(&name)?
        {
            return Ok(image);
        }
        let mut hosts: Vec<Option<String>> = self
            .options
            .mirrors
            .get(parsed.registry())
            .into_iter()
            .flatten()
            .map(|m| Some(m.clone()))
            .collect();
        hosts.push(None);
        let last = hosts.len() - 1;
        for (i, mirror) in hosts.into_iter().enumerate() {
            let mut r = parsed.clone();
            if let Some(m) = &mirror {
                r.set_mirror_registry(m.clone());
            }
            match self.resolve(r, &name).await {
                Ok(resolved) => {
                    let size = resolved
                        .layers
                        .iter()
                        .fold(0u64, |sum, (_, s)| sum.saturating_add(*s));
                    if size > self.options.max_image_bytes {
                        return Err(PullError::ImageTooLarge {
                            reference: name,
                            size,
                            max: self.options.max_image_bytes,
                        });
                    }
                    return self.fetch(store, &name, resolved, progress).await;
                }
                Err(e) if i < last => {
                    tracing::debug!("mirror {mirror:?} of {name} failed, trying the next: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the registry itself is always the last source")
    }

    /// Fetches the manifest (through an index, for this platform) and parses it.
    async fn resolve(&self, reference: Reference, name: &str) -> Result<Resolved, PullError> {
        let registry = reference.resolve_registry().to_owned();
        let auth = self.options.credentials.for_registry(&registry);
        let registry_err = |source| PullError::Registry {
            reference: name.to_owned(),
            registry: registry.clone(),
            source,
        };
        let wanted = reference.digest().map(str::to_owned);
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&reference, &auth, manifest::ACCEPTED)
            .await
            .map_err(registry_err)?;
        let mut bytes = bytes.to_vec();
        let mut digest =
            self.check_document(name, &registry, "manifest", &bytes, wanted.as_deref())?;
        let mut doc: Manifest = self.parse(name, &registry, "manifest", &digest, &bytes)?;
        let mut reference = reference;
        if doc.is_index(None) {
            let entries = doc.manifests.take().unwrap_or_default();
            let platforms: Vec<_> = entries.iter().map(|d| d.platform.clone()).collect();
            let Some(i) = platform::select(&self.options.platform, &platforms) else {
                let available = platforms
                    .iter()
                    .flatten()
                    .map(Platform::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(PullError::NoPlatform {
                    reference: name.to_owned(),
                    registry,
                    platform: self.options.platform.to_string(),
                    available,
                });
            };
            let child = entries[i].digest.clone();
            reference = reference.clone_with_digest(child.clone());
            let (child_bytes, _) = self
                .client
                .pull_manifest_raw(&reference, &auth, manifest::ACCEPTED)
                .await
                .map_err(registry_err)?;
            bytes = child_bytes.to_vec();
            digest = self.check_document(name, &registry, "manifest", &bytes, Some(&child))?;
            doc = self.parse(name, &registry, "manifest", &digest, &bytes)?;
            if doc.is_index(None) {
                return Err(PullError::NotAnImage {
                    reference: name.to_owned(),
                    registry,
                    digest: digest.to_string(),
                });
            }
        }
        let Some(config) = doc.config else {
            return Err(PullError::NotAnImage {
                reference: name.to_owned(),
                registry,
                digest: digest.to_string(),
            });
        };
        let layers = doc
            .layers
            .iter()
            .map(|l| Ok((Digest::parse(&l.digest)?, l.size)))
            .collect::<Result<Vec<_>, DigestError>>()
            .map_err(|source| PullError::BadDigest {
                reference: name.to_owned(),
                source,
            })?;
        Ok(Resolved {
            reference,
            registry,
            auth,
            manifest: (digest, bytes),
            config,
            layers,
        })
    }

    /// Checks a manifest's size and digest (against `wanted` when the reference named one).
    fn check_document(
        &self,
        name: &str,
        registry: &str,
        what: &'static str,
        bytes: &[u8],
        wanted: Option<&str>,
    ) -> Result<Digest, PullError> {
        let actual = Digest::of(bytes);
        if bytes.len() as u64 > MAX_DOCUMENT {
            return Err(PullError::TooLarge {
                reference: name.to_owned(),
                what,
                digest: actual.to_string(),
                size: bytes.len() as u64,
            });
        }
        if let Some(w) = wanted
            && w != actual.as_str()
        {
            return Err(PullError::DigestMismatch {
                reference: name.to_owned(),
                registry: registry.to_owned(),
                digest: w.to_owned(),
                actual,
            });
        }
        Ok(actual)
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        registry: &str,
        what: &'static str,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<T, PullError> {
        serde_json::from_slice(bytes).map_err(|source| PullError::BadDocument {
            reference: name.to_owned(),
            registry: registry.to_owned(),
            what,
            digest: digest.to_string(),
            source,
        })
    }

    /// Downloads what the store lacks, unpacks, commits.
    async fn fetch(
        &self,
        store: &Store,
        name: &str,
        resolved: Resolved,
        progress: Option<ProgressFn>,
    ) -> Result<Image, PullError> {
        let Resolved {
            reference,
            registry,
            auth,
            manifest: (manifest_digest, manifest_bytes),
            config,
            layers,
        } = resolved;
        self.client.store_auth_if_needed(&registry, &auth).await;
        let staging = Staging(store.staging_dir()?);
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| PullError::Io {
                reference: name.to_owned(),
                path,
                source,
            }
        };
        let source = Source {
            client: self.client.clone(),
            reference,
            name: name.to_owned(),
            registry: registry.clone(),
        };
        let mut staged = Vec::new();

        let manifest_path = staging.0.join(manifest_digest.hex());
        write_synced(&manifest_path, &manifest_bytes).map_err(io_err(&manifest_path))?;
        staged.push((manifest_digest.clone(), manifest_path));

        let config_digest =
            Digest::parse(&config.digest).map_err(|source| PullError::BadDigest {
                reference: name.to_owned(),
                source,
            })?;
        if config.size > MAX_DOCUMENT {
            return Err(PullError::TooLarge {
                reference: name.to_owned(),
                what: "config",
                digest: config.digest,
                size: config.size,
            });
        }
        let config_path = match store.blob_path(&config_digest) {
            p if p.exists() => p,
            _ => {
                let p = staging.0.join(config_digest.hex());
                let file = std::fs::File::create(&p).map_err(io_err(&p))?;
                download(&source, &config_digest, config.size, file, &p, None).await?;
                staged.push((config_digest.clone(), p.clone()));
                p
            }
        };
        let config_bytes = std::fs::read(&config_path).map_err(io_err(&config_path))?;
        self.parse::<serde_json::Value>(name, &registry, "config", &config_digest, &config_bytes)?;

        // Every missing layer downloads in its own task (bounded by the semaphore, started in
        // order); layers are unpacked in order as soon as each has arrived.
        let semaphore = Arc::new(Semaphore::new(self.options.max_concurrent_downloads.max(1)));
        let mut tasks = Tasks(HashMap::new());
        let mut ready: HashMap<Digest, PathBuf> = HashMap::new();
        for (digest, size) in &layers {
            if ready.contains_key(digest) || tasks.0.contains_key(digest) {
                continue;
            }
            let in_store = store.blob_path(digest);
            if in_store.exists() {
                report(&progress, digest, LayerState::Cached, *size, *size);
                ready.insert(digest.clone(), in_store);
                continue;
            }
            let path = staging.0.join(digest.hex());
            // Created here, not in the task: an aborted task cannot leave a file behind after
            // the staging directory is removed.
            let file = std::fs::File::create(&path).map_err(io_err(&path))?;
            staged.push((digest.clone(), path.clone()));
            let (source, digest2, size, semaphore, progress) = (
                source.clone(),
                digest.clone(),
                *size,
                semaphore.clone(),
                progress.clone(),
            );
            let task = tokio::spawn(async move {
                let _permit = semaphore.acquire_owned().await.expect("never closed");
                download(&source, &digest2, size, file, &path, progress.as_ref()).await?;
                Ok(path)
            });
            tasks.0.insert(digest.clone(), task);
        }

        let rootfs = (!store.has_rootfs(&config_digest)).then(|| staging.0.join("rootfs"));
        if let Some(root) = &rootfs {
            std::fs::create_dir(root).map_err(io_err(root))?;
        }
        for (digest, size) in &layers {
            let path = match ready.get(digest) {
                Some(p) => p.clone(),
                None => {
                    let task = tasks.0.remove(digest).expect("a task per missing layer");
                    let path = match task.await {
                        Ok(result) => result?,
                        Err(join) => std::panic::resume_unwind(join.into_panic()),
                    };
                    ready.insert(digest.clone(), path.clone());
                    path
                }
            };
            if let Some(root) = &rootfs {
                let root = root.clone();
                let applied =
                    tokio::task::spawn_blocking(move || unpack::apply_layer(&path, &root))
                        .await
                        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()));
                applied.map_err(|source| PullError::Unpack {
                    reference: name.to_owned(),
                    layer: digest.clone(),
                    source,
                })?;
                report(&progress, digest, LayerState::Unpacked, *size, *size);
            }
        }
        if let Some(root) = &rootfs {
            let root2 = root.clone();
            tokio::task::spawn_blocking(move || {
                unpack::add_mount_points(&root2)?;
                // One flush of the file system instead of an fsync per file.
                let dir = std::fs::File::open(&root2)?;
                nix::unistd::syncfs(&dir).map_err(std::io::Error::from)
            })
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
            .map_err(io_err(root))?;
        }

        let image = Image {
            reference: name.to_owned(),
            manifest: manifest_digest,
            config: config_digest,
            layers: layers.iter().map(|(d, _)| d.clone()).collect(),
            size: layers.iter().map(|(_, s)| s).sum(),
            pulled_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        store.commit(image.clone(), &staged, rootfs.as_deref())?;
        Ok(image)
    }
}

/// The normalized form of an image reference (`busybox` -> `docker.io/library/busybox:latest`),
/// as the store's index keys it; `None` when `name` is not a reference.
pub fn normalize_reference(name: &str) -> Option<String> {
    name.parse::<Reference>().ok().map(|r| r.whole())
}

fn report(
    progress: &Option<ProgressFn>,
    digest: &Digest,
    state: LayerState,
    done: u64,
    total: u64,
) {
    if let Some(p) = progress {
        p(Progress {
            digest: digest.clone(),
            state,
            done,
            total,
        });
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Streams a blob to `path`, hashing as it arrives; fails unless the digest and size match.
async fn download(
    source: &Source,
    digest: &Digest,
    size: u64,
    file: std::fs::File,
    path: &Path,
    progress: Option<&ProgressFn>,
) -> Result<(), PullError> {
    let mismatch = |received| PullError::SizeMismatch {
        reference: source.name.clone(),
        registry: source.registry.clone(),
        digest: digest.clone(),
        received,
        size,
    };
    let io_err = |source_err| PullError::Io {
        reference: source.name.clone(),
        path: path.to_owned(),
        source: source_err,
    };
    let mut stream = source
        .client
        .pull_blob_stream(&source.reference, digest.as_str())
        .await
        .map_err(|e| PullError::Registry {
            reference: source.name.clone(),
            registry: source.registry.clone(),
            source: e,
        })?;
    if let Some(len) = stream.content_length
        && len != size
    {
        return Err(mismatch(len));
    }
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut reported = 0u64;
    let progress = progress.map(|p| Some(p.clone())).unwrap_or(None);
    report(&progress, digest, LayerState::Downloading, 0, size);
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                // The client checks the digest itself at the end of the stream: say which.
                let actual = Digest::from_hasher(hasher);
                if received == size && &actual != digest {
                    return Err(PullError::DigestMismatch {
                        reference: source.name.clone(),
                        registry: source.registry.clone(),
                        digest: digest.to_string(),
                        actual,
                    });
                }
                return Err(PullError::Transfer {
                    reference: source.name.clone(),
                    registry: source.registry.clone(),
                    digest: digest.clone(),
                    received,
                    size,
                    source: e,
                });
            }
        };
        received += chunk.len() as u64;
        if received > size {
            return Err(mismatch(received));
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(io_err)?;
        if received - reported >= PROGRESS_STEP {
            reported = received;
            report(&progress, digest, LayerState::Downloading, received, size);
        }
    }
    if received != size {
        return Err(mismatch(received));
    }
    let actual = Digest::from_hasher(hasher);
    if &actual != digest {
        return Err(PullError::DigestMismatch {
            reference: source.name.clone(),
            registry: source.registry.clone(),
            digest: digest.to_string(),
            actual,
        });
    }
    out.flush().await.map_err(io_err)?;
    out.into_inner().sync_all().await.map_err(io_err)?;
    report(&progress, digest, LayerState::Downloaded, size, size);
    Ok(())
}

/// A pull's directory under the store's `tmp/`: removed with everything in it when the pull
/// ends (committed files were renamed out of it before).
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::debug!(
                "removing {}: {e}, ignoring (the next open removes it)",
                self.0.display()
            );
        }
    }
}

/// Download tasks not awaited yet: aborted when a pull fails or is dropped.
struct Tasks(HashMap<Digest, JoinHandle<Result<PathBuf, PullError>>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in self.0.values() {
            task.abort();
        }
    }
}
