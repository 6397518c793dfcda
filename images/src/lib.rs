//! OCI images for flotilla: pull by the distribution protocol into a content-addressed store,
//! unpack root file systems that systemd runs services in (`RootDirectory=`).
//!
//! # Background
//!
//! A unit with `[X-Flotilla] Image=REF` runs inside an image. The agent of the machine the unit
//! is scheduled to pulls the image into its store, then runs the unit with `RootDirectory=` on
//! the image's root file system and the image's command, environment and working directory.
//! This crate knows nothing of the cluster: it pulls, stores, unpacks, lists and collects.
//!
//! # Design
//!
//! - [`Puller::pull`] resolves a reference (tag or digest) on its registry (or first on its
//!   mirrors) through oci-client: OCI and Docker v2 manifests, multi-arch indexes resolved to
//!   [`Platform::host`], anonymous, basic or token auth from a docker-style `auth.json`
//!   ([`Credentials`]), plain HTTP for `insecure_registries`.
//! - Layers the store lacks download in parallel (bounded), each streamed to a file in the
//!   pull's own `tmp/` directory while its sha256 is computed; a wrong digest, a wrong length or a
//!   broken transfer fails the pull. Layers are unpacked in order as soon as each has arrived.
//! - [`Store`]: blobs under `blobs/sha256/<hex>`, stored once whatever refers to them; one root
//!   file system per image config (`rootfs/<config hex>`), shared by every reference to that image;
//!   `index.json` maps references to images. A pull commits by renames and one atomic index write;
//!   a failed pull removes its `tmp/` directory, leaving the store as it was.
//! - Unpacking applies whiteouts (`.wh.NAME`) and opaque directories (`.wh..wh..opq`), keeps
//!   modes, owners, mtimes of files, symbolic and hard links, device nodes, FIFOs and
//!   `SCHILY.xattr` extended attributes, and never writes outside the root (see [`UnpackError`]).
//!
//! # Current limitations
//!
//! - Layers are not shared between root file systems: two images with a common base layer store
//!   that layer's blob once but unpack it into each root file system.
//! - A root file system is shared by every unit of the image: callers must run it read-only.
//! - sha256 only; no schema-1 manifests; no foreign-layer URLs; no GNU sparse files.
//! - One process per store: the lock that orders commits and collections is in memory.
//! - `diff_ids` of the config are not checked against the uncompressed layers (the compressed
//!   digests are).
//!
//! # Example usage
//!
//! ```no_run
//! use flotilla_images::{PullOptions, Puller, Store};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::open("/var/lib/flotilla/images")?;
//! let puller = Puller::new(PullOptions {
//!     insecure_registries: vec!["127.0.0.1:5000".into()],
//!     ..PullOptions::default()
//! })?;
//! let image = puller.pull(&store, "127.0.0.1:5000/busybox:latest", None).await?;
//! let config = store.config(&image)?;
//! println!("RootDirectory={} ExecStart={:?}", store.rootfs(&image).display(), config.command());
//! # Ok(()) }
//! ```

mod auth;
mod digest;
mod manifest;
mod platform;
mod pull;
mod store;
mod unpack;

pub use auth::{AuthError, Credentials};
pub use digest::{Digest, DigestError};
pub use manifest::ImageConfig;
pub use platform::Platform;
pub use pull::{
    DEFAULT_MAX_IMAGE_BYTES, LayerState, Progress, ProgressFn, PullError, PullOptions, Puller,
    normalize_reference,
};
pub use store::{GcReport, Image, Store, StoreError};
pub use unpack::UnpackError;
