//! The content-addressed store: blobs, unpacked root file systems, and the index of references.
//!
//! Layout under the root (the agent passes `<data_dir>/images`):
//!
//! ```text
//! blobs/sha256/<hex>     manifests, configs and layers, named by their digest
//! rootfs/<config hex>/   an image's layers applied in order (shared by every reference to it)
//! index.json             reference -> image (manifest, config, layers), written atomically
//! tmp/                   what a pull has not committed yet (emptied on open)
//! ```
//!
//! A pull commits under the store's lock: its blobs are renamed in, its root file system is
//! renamed in, then the index is replaced. A pull that fails removes its `tmp/` directory, so the
//! store is as it was.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::manifest::ImageConfig;

const INDEX: &str = "index.json";

/// A failure of the store itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory of the store could not be read or written.
    #[error("image store {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The index is not valid JSON of the expected shape.
    #[error(
        "image store index {path} is corrupt: {source}; move it away to start with an empty store"
    )]
    CorruptIndex {
        /// The index file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The config blob of an image cannot be parsed.
    #[error("config blob {digest} of image {reference}: {source}")]
    BadConfig {
        /// The image.
        reference: String,
        /// The config blob.
        digest: Digest,
        /// Why.
        source: serde_json::Error,
    },
    /// A blob or root file system a pull reused was removed by a garbage collection meanwhile.
    #[error("{what} of image {reference} was garbage-collected during the pull: pull again")]
    Collected {
        /// The image.
        reference: String,
        /// The blob or root file system.
        what: String,
    },
}

/// An image in the store, under one reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The reference it was pulled as, normalized (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// The digest of its manifest (for this platform, when the reference named an index).
    pub manifest: Digest,
    /// The digest of its config blob: also the name of its root file system.
    pub config: Digest,
    /// Its layers, bottom first.
    pub layers: Vec<Digest>,
    /// The compressed size of its layers, in bytes.
    pub size: u64,
    /// When it was pulled, in seconds since the epoch.
    pub pulled_at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: BTreeMap<String, Image>,
}

/// What a garbage collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// References dropped from the index.
    pub images: Vec<String>,
    /// Blobs removed.
    pub blobs: usize,
    /// Root file systems removed.
    pub rootfs: usize,
}

/// The store under one directory. One process owns it (the agent); share it with an `Arc`.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// Serializes index updates, commits and collections.
    lock: Mutex<()>,
}

impl Store {
    /// Opens (creating) the store at `root`, and removes what interrupted pulls left in `tmp/`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let store = Store {
            root: root.into(),
            lock: Mutex::new(()),
        };
        for dir in [store.blob_dir(), store.rootfs_dir()] {
            fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir, source })?;
        }
        let tmp = store.tmp_dir();
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|source| StoreError::Io {
                path: tmp.clone(),
                source,
            })?;
        }
        fs::create_dir_all(&tmp).map_err(|source| StoreError::Io { path: tmp, source })?;
        Ok(store)
    }

    /// The directory of the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob is (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    /// The unpacked root file system of an image: what `RootDirectory=` points at. Callers must
    /// not write into it (every reference to the same image shares it): run with a read-only root
    /// (e.g. `ProtectSystem=strict` or `ReadOnlyPaths=/`) and give the service writable mounts.
    pub fn rootfs(&self, image: &Image) -> PathBuf {
        self.rootfs_dir().join(image.config.hex())
    }

    /// Every image, by reference.
    pub fn images(&self) -> Result<Vec<Image>, StoreError> {
        Ok(self.read_index()?.images.into_values().collect())
    }

    /// The image named `name`: a reference as pulled (normalized or as typed, e.g. `busybox`), a
    /// manifest digest, or a unique prefix of its hex.
    pub fn image(&self, name: &str) -> Result<Option<Image>, StoreError> {
        let index = self.read_index()?;
        Ok(find(&index, name).cloned())
    }

    /// How the image says to run it (from its config blob).
    pub fn config(&self, image: &Image) -> Result<ImageConfig, StoreError> {
        let path = self.blob_path(&image.config);
        let bytes = fs::read(&path).map_err(|source| StoreError::Io { path, source })?;
        ImageConfig::parse(&bytes).map_err(|source| StoreError::BadConfig {
            reference: image.reference.clone(),
            digest: image.config.clone(),
            source,
        })
    }

    /// Drops the reference `name` (as [`Store::image`] finds it), then removes the blobs and root
    /// file system nothing else refers to. `None`: there is no such image.
    pub fn remove(&self, name: &str) -> Result<Option<Image>, StoreError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut index = self.read_index()?;
        let Some(image) = find(&index, name).cloned() else {
            return Ok(None);
        };
        index.images.remove(&image.reference);
        self.write_index(&index)?;
        self.sweep(&index)?;
        Ok(Some(image))
    }

    /// Garbage collection: drops every image that `in_use` names by none of its reference (as
    /// pulled or as typed), manifest digest or config digest, then removes every blob and root
    /// file system no remaining image refers to.
    pub fn gc(&self, in_use: &[&str]) -> Result<GcReport, StoreError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut index = self.read_index()?;
        let keep: HashSet<String> = in_use
            .iter()
            .filter_map(|n| find(&index, n).map(|i| i.reference.clone()))
            .collect();
        let dropped: Vec<String> = index
            .images
            .keys()
            .filter(|r| !keep.contains(*r))
            .cloned()
            .collect();
        for r in &dropped {
            index.images.remove(r);
        }
        if !dropped.is_empty() {
            self.write_index(&index)?;
        }
        let (blobs, rootfs) = self.sweep(&index)?;
        Ok(GcReport {
            images: dropped,
            blobs,
            rootfs,
        })
    }

    /// Removes blobs and root file systems that no image of `index` refers to. Caller holds the
    /// lock.
    fn sweep(&self, index: &Index) -> Result<(usize, usize), StoreError> {
        let mut blobs_in_use = HashSet::new();
        let mut rootfs_in_use = HashSet::new();
        for image in index.images.values() {
            blobs_in_use.insert(image.manifest.hex().to_owned());
            blobs_in_use.insert(image.config.hex().to_owned());
            blobs_in_use.extend(image.layers.iter().map(|l| l.hex().to_owned()));
            rootfs_in_use.insert(image.config.hex().to_owned());
        }
        let mut counts = [0, 0];
        for (n, (dir, in_use)) in [
            (self.blob_dir(), &blobs_in_use),
            (self.rootfs_dir(), &rootfs_in_use),
        ]
        .into_iter()
        .enumerate()
        {
            let io_err = |path: &Path| {
                let path = path.to_owned();
                move |source| StoreError::Io { path, source }
            };
            for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let entry = entry.map_err(io_err(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if in_use.contains(&name) {
                    continue;
                }
                let path = entry.path();
                // A root file system goes first to tmp/ (one rename), then is deleted: an
                // interrupted removal is finished by the next open, never seen half-gone.
                if entry.file_type().map_err(io_err(&path))?.is_dir() {
                    let doomed = self.tmp_dir().join(format!("gc-{name}"));
                    fs::rename(&path, &doomed).map_err(io_err(&path))?;
                    fs::remove_dir_all(&doomed).map_err(io_err(&doomed))?;
                } else {
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
                counts[n] += 1;
            }
        }
        Ok((counts[0], counts[1]))
    }

    /// Commits a pull: renames the staged blobs and root file system in and records the image.
    /// `staged_blobs` are files (named by hex) in a directory of `tmp/`; `rootfs` is the staged
    /// root file system, or `None` when the store has it already.
    pub(crate) fn commit(
        &self,
        image: Image,
        staged_blobs: &[(Digest, PathBuf)],
        rootfs: Option<&Path>,
    ) -> Result<(), StoreError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        for (digest, staged) in staged_blobs {
            let dest = self.blob_path(digest);
            if !dest.exists() {
                fs::rename(staged, &dest)
                    .map_err(|source| StoreError::Io { path: dest, source })?;
            }
        }
        let dest = self.rootfs(&image);
        if let Some(staged) = rootfs
            && !dest.exists()
        {
            fs::rename(staged, &dest).map_err(|source| StoreError::Io {
                path: dest.clone(),
                source,
            })?;
        }
        let all_blobs = [&image.manifest, &image.config]
            .into_iter()
            .chain(&image.layers);
        for digest in all_blobs {
            if !self.blob_path(digest).exists() {
                return Err(StoreError::Collected {
                    reference: image.reference.clone(),
                    what: format!("blob {digest}"),
                });
            }
        }
        if !dest.exists() {
            return Err(StoreError::Collected {
                reference: image.reference.clone(),
                what: format!("root file system {}", dest.display()),
            });
        }
        for dir in [self.blob_dir(), self.rootfs_dir()] {
            sync_dir(&dir)?;
        }
        let mut index = self.read_index()?;
        index.images.insert(image.reference.clone(), image);
        self.write_index(&index)
    }

    /// A new private directory under `tmp/` for one pull.
    pub(crate) fn staging_dir(&self) -> Result<PathBuf, StoreError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .tmp_dir()
            .join(format!("pull-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Whether the store has this image's root file system already.
    pub(crate) fn has_rootfs(&self, config: &Digest) -> bool {
        self.rootfs_dir().join(config.hex()).is_dir()
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn rootfs_dir(&self) -> PathBuf {
        self.root.join("rootfs")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn read_index(&self) -> Result<Index, StoreError> {
        let path = self.root.join(INDEX);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::CorruptIndex { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Replaces the index: a new file, fsynced, renamed over the old one, directory fsynced.
    fn write_index(&self, index: &Index) -> Result<(), StoreError> {
        let path = self.root.join(INDEX);
        let tmp = self.root.join(format!("{INDEX}.tmp"));
        let io_err = |p: &Path| {
            let p = p.to_owned();
            move |source| StoreError::Io { path: p, source }
        };
        let bytes = serde_json::to_vec_pretty(index).expect("the index serializes");
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.root)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Finds an image by reference (normalized, or as typed), manifest or config digest, or a unique
/// prefix of a manifest digest's hex (as `docker images` shows them).
fn find<'a>(index: &'a Index, name: &str) -> Option<&'a Image> {
    if let Some(image) = index.images.get(name) {
        return Some(image);
    }
    if let Some(normalized) = crate::pull::normalize_reference(name)
        && let Some(image) = index.images.get(&normalized)
    {
        return Some(image);
    }
    if let Some(image) = index
        .images
        .values()
        .find(|i| i.manifest.as_str() == name || i.config.as_str() == name)
    {
        return Some(image);
    }
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    if hex.len() >= 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut found = index
            .images
            .values()
            .filter(|i| i.manifest.hex().starts_with(hex));
        if let (Some(one), None) = (found.next(), found.next()) {
            return Some(one);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(reference: &str, seed: &[u8]) -> Image {
        Image {
            reference: reference.to_owned(),
            manifest: Digest::of(seed),
            config: Digest::of(&[seed, b"config"].concat()),
            layers: vec![Digest::of(b"shared layer")],
            size: 1,
            pulled_at: 0,
        }
    }

    #[test]
    fn finds_images_by_reference_digest_and_prefix() {
        let mut index = Index::default();
        for (r, seed) in [
            ("docker.io/library/busybox:latest", &b"a"[..]),
            ("127.0.0.1:5000/app:1", b"b"),
        ] {
            index.images.insert(r.to_owned(), image(r, seed));
        }
        let busybox = &index.images["docker.io/library/busybox:latest"];
        assert_eq!(find(&index, "busybox"), Some(busybox));
        assert_eq!(find(&index, "busybox:latest"), Some(busybox));
        assert_eq!(find(&index, busybox.manifest.as_str()), Some(busybox));
        assert_eq!(find(&index, busybox.config.as_str()), Some(busybox));
        assert_eq!(find(&index, &busybox.manifest.hex()[..12]), Some(busybox));
        assert_eq!(
            find(&index, "127.0.0.1:5000/app:1").map(|i| &i.reference[..]),
            Some("127.0.0.1:5000/app:1")
        );
        assert_eq!(find(&index, "busybox:1.36"), None);
        assert_eq!(
            find(&index, "abc"),
            None,
            "prefixes shorter than 6 are not looked up"
        );
    }

    #[test]
    fn index_survives_reopen_and_tmp_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let leftover = store.staging_dir().unwrap();
        fs::write(leftover.join("partial"), b"half a blob").unwrap();
        let mut index = Index::default();
        index.images.insert("r:1".into(), image("r:1", b"x"));
        store.write_index(&index).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.images().unwrap(), [image("r:1", b"x")]);
        assert!(
            !leftover.exists(),
            "an interrupted pull's files are removed on open"
        );
        assert!(!dir.path().join("index.json.tmp").exists());
        fs::write(dir.path().join(INDEX), b"{").unwrap();
        let err = store.images().unwrap_err();
        assert!(err.to_string().contains("is corrupt"), "{err}");
    }
}
