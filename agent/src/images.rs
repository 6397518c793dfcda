//! The agent's image service: one [`Store`] under `data_dir/images`, pulls deduplicated per
//! reference (every caller of a pull in flight waits for the same one and sees its progress),
//! and [`ServiceSpec`], how systemd runs a service in an image: shared by the reconciler's
//! drop-ins and `flotctl run` (through the HTTP API), so both run an image the same way.
//!
//! # Design
//!
//! - [`Images`] is a cheap handle (`Arc` inside): `pull(reference, progress)`, `list`, `find`,
//!   `remove`, `service`. A pull runs in a task of its own: a caller that goes away (an HTTP
//!   client that disconnects, a reconcile pass) does not cancel it, and the next caller of the
//!   same reference joins it.
//! - After a pull, the root file system gets the mount points systemd needs inside
//!   `RootDirectory=` (`proc`, `sys`, `dev`, `tmp`, `run`, `var/tmp`, `etc/resolv.conf`), so
//!   that systemd never has to create them in the shared tree while it sets up a service. A
//!   path whose parent is a symbolic link is left alone (never followed out of the root).
//! - The sandbox ([`SANDBOX`]) keeps the shared root file system read-only for every service
//!   (`ProtectSystem=strict`), with private `/tmp` and `/dev`, the kernel's API file systems,
//!   and the host's `/etc/resolv.conf` bound read-only.
//!
//! # Current limitations
//!
//! - Nothing collects images automatically: `flotctl rmi` removes one and what only it used.
//! - `User=` names of an image are resolved in its `/etc/passwd` and `/etc/group` only.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use flotilla_images::{
    AuthError, Credentials, Image, ImageConfig, Progress, ProgressFn, PullError, PullOptions,
    Puller, Store, StoreError,
};
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::config::ImagesConfig;

/// The search path for a command that is not absolute, when the image sets no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The sandbox every service in an image runs with (systemd.exec(5)); a unit that sets one of
/// these keys itself keeps its own value.
pub(crate) const SANDBOX: &[(&str, &str)] = &[
    // /proc, /sys and /dev inside the image's root.
    ("MountAPIVFS", "yes"),
    // The image's root is shared by every service of the image: read-only for all of them.
    ("ProtectSystem", "strict"),
    // Writable /tmp and /var/tmp of the service's own.
    ("PrivateTmp", "yes"),
    // A /dev with only the pseudo devices (null, zero, random, tty, pts...).
    ("PrivateDevices", "yes"),
    // Name resolution as the machine does it, read-only ('-': fine if the host has none).
    ("BindReadOnlyPaths", "-/etc/resolv.conf"),
    ("NoNewPrivileges", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("RestrictRealtime", "yes"),
    ("LockPersonality", "yes"),
];

/// A reference's repository and tag, as `docker images` shows them (`<none>` for a digest).
pub(crate) fn repository_and_tag(reference: &str) -> (&str, &str) {
    let name = reference.split('@').next().unwrap_or(reference);
    // The tag's colon comes after the last '/' (a registry's port is before it).
    let slash = name.rfind('/').map_or(0, |s| s + 1);
    match name[slash..].rfind(':') {
        Some(c) => (&name[..slash + c], &name[slash + c + 1..]),
        None => (name, "<none>"),
    }
}

/// A layer state's name, as the HTTP API and the bus give it.
pub(crate) fn layer_state_name(state: flotilla_images::LayerState) -> &'static str {
    use flotilla_images::LayerState;
    match state {
        LayerState::Cached => "cached",
        LayerState::Downloading => "downloading",
        LayerState::Downloaded => "downloaded",
        LayerState::Unpacked => "unpacked",
    }
}

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The pull failed (the registry's error, a refused digest...); the store is as it was.
    #[error(transparent)]
    Pull(Arc<PullError>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `[images] auth_file` could not be read.
    #[error("[images] auth_file: {0}")]
    Auth(#[from] AuthError),
    /// No such image in this machine's store.
    #[error("image {0} is not in this machine's store: pull it first")]
    NotFound(String),
    /// The image gives no command and none was given.
    #[error("image {0} has no command (no Entrypoint nor Cmd): give one (ExecStart=)")]
    NoCommand(String),
    /// A command that is not absolute is not in the image's `PATH`.
    #[error("command {command:?} is not found in image {image} (PATH={path})")]
    CommandNotFound {
        /// The image.
        image: String,
        /// The command.
        command: String,
        /// Where it was looked for.
        path: String,
    },
    /// The image's `User` names a user or group its `/etc/passwd` or `/etc/group` lacks.
    #[error("image {image}: user {user:?} is not in its /etc/passwd or /etc/group")]
    UnknownUser {
        /// The image.
        image: String,
        /// The `User` value.
        user: String,
    },
    /// A unit assigned to this machine uses the image.
    #[error(
        "image {image} is used by {} on this machine: destroy or unload {} first",
        units.join(", "),
        if units.len() == 1 { "it" } else { "them" }
    )]
    InUse {
        /// The image.
        image: String,
        /// The units that use it.
        units: Vec<String>,
    },
    /// A pull task ended without an answer (it panicked).
    #[error("the pull of {0} ended without a result")]
    Lost(String),
    /// A blocking task of the store could not finish.
    #[error("image store task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The result of a pull, shared by everyone waiting for it.
type Outcome = Option<Result<Image, Arc<PullError>>>;

/// A pull in flight.
#[derive(Clone)]
struct InFlight {
    progress: broadcast::Sender<Progress>,
    done: watch::Receiver<Outcome>,
}

struct Inner {
    store: Store,
    puller: Puller,
    /// Pulls in flight, by normalized reference.
    pulls: Mutex<HashMap<String, InFlight>>,
}

/// The image service of this agent. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Images {
    inner: Arc<Inner>,
}

/// How systemd runs a service in an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ServiceSpec {
    /// The image, as pulled.
    pub(crate) image: String,
    /// `RootDirectory=`: the image's unpacked root file system.
    pub(crate) root_directory: PathBuf,
    /// The sandbox: `(key, value)` as in a unit file.
    pub(crate) sandbox: Vec<(String, String)>,
    /// `NAME=value` of the image's `Env`.
    pub(crate) environment: Vec<String>,
    /// `WorkingDirectory=` (the image's `WorkingDir`, else `/`).
    pub(crate) working_directory: String,
    /// `User=` (numeric), from the image's `User`.
    pub(crate) user: Option<String>,
    /// `Group=` (numeric), from the image's `User`.
    pub(crate) group: Option<String>,
    /// The command line: the one asked for, else the image's entrypoint + cmd; the program is an
    /// absolute path inside the image.
    pub(crate) command: Vec<String>,
}

impl Images {
    /// Opens the store at `root` (creating it) with the registry settings of `config`.
    pub(crate) fn open(root: &Path, config: &ImagesConfig) -> Result<Images, Error> {
        let store = Store::open(root)?;
        let credentials = match &config.auth_file {
            Some(path) => Credentials::from_file(path)?,
            None => Credentials::anonymous(),
        };
        let puller = Puller::new(PullOptions {
            insecure_registries: config.insecure_registries.clone(),
            mirrors: config
                .mirrors
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            credentials,
            max_concurrent_downloads: config.max_concurrent_downloads.max(1),
            max_image_bytes: config.max_image_bytes,
            ..PullOptions::default()
        })
        .map_err(|e| Error::Pull(Arc::new(e)))?;
        Ok(Images {
            inner: Arc::new(Inner {
                store,
                puller,
                pulls: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Pulls `reference` (joining a pull of it already in flight); `progress` sees every layer
    /// event from the moment it joined.
    pub(crate) async fn pull(
        &self,
        reference: &str,
        progress: Option<ProgressFn>,
    ) -> Result<Image, Error> {
        let key =
            flotilla_images::normalize_reference(reference).unwrap_or_else(|| reference.to_owned());
        let (mut events, mut done) = {
            let mut pulls = lock(&self.inner.pulls);
            match pulls.get(&key) {
                Some(f) => (f.progress.subscribe(), f.done.clone()),
                None => {
                    let (ptx, prx) = broadcast::channel(1024);
                    let (dtx, drx) = watch::channel(None);
                    pulls.insert(
                        key.clone(),
                        InFlight {
                            progress: ptx.clone(),
                            done: drx.clone(),
                        },
                    );
                    tokio::spawn(run_pull(
                        self.inner.clone(),
                        key.clone(),
                        reference.to_owned(),
                        ptx,
                        dtx,
                    ));
                    (prx, drx)
                }
            }
        };
        let forward = |p: Progress| {
            if let Some(f) = &progress {
                f(p);
            }
        };
        loop {
            tokio::select! {
                biased;
                e = events.recv() => match e {
                    Ok(p) => forward(p),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    // The sender lives in the map until the result is out: wait for it.
                    Err(broadcast::error::RecvError::Closed) => {
                        if done.wait_for(Option::is_some).await.is_err() {
                            return Err(self.lost(key));
                        }
                        break;
                    }
                },
                c = done.changed() => {
                    if c.is_err() && done.borrow().is_none() {
                        return Err(self.lost(key));
                    }
                    if done.borrow().is_some() {
                        break;
                    }
                }
            }
        }
        while let Ok(p) = events.try_recv() {
            forward(p);
        }
        let outcome = done.borrow().clone();
        match outcome {
            Some(Ok(image)) => Ok(image),
            Some(Err(e)) => Err(Error::Pull(e)),
            None => Err(self.lost(key)),
        }
    }

    /// A pull task that ended without a result (it panicked): forgotten, so the next caller
    /// pulls anew instead of joining it.
    fn lost(&self, key: String) -> Error {
        let mut pulls = lock(&self.inner.pulls);
        if pulls
            .get(&key)
            .is_some_and(|f| f.done.has_changed().is_err())
        {
            pulls.remove(&key);
        }
        Error::Lost(key)
    }

    /// Every image of the store.
    pub(crate) async fn list(&self) -> Result<Vec<Image>, Error> {
        let inner = self.inner.clone();
        Ok(tokio::task::spawn_blocking(move || inner.store.images()).await??)
    }

    /// The image `name` (a reference, a digest or a unique prefix of one).
    pub(crate) async fn find(&self, name: &str) -> Result<Option<Image>, Error> {
        let inner = self.inner.clone();
        let name = name.to_owned();
        Ok(tokio::task::spawn_blocking(move || inner.store.image(&name)).await??)
    }

    /// Removes the image `name` and what only it used; `None`: there is no such image.
    pub(crate) async fn remove(&self, name: &str) -> Result<Option<Image>, Error> {
        let inner = self.inner.clone();
        let name = name.to_owned();
        Ok(tokio::task::spawn_blocking(move || inner.store.remove(&name)).await??)
    }

    /// Removes the image `name` and what only it used, unless a unit assigned to this machine
    /// (`cluster.me()`) uses it.
    pub(crate) async fn remove_unused(
        &self,
        cluster: &crate::cluster::Cluster,
        name: &str,
    ) -> Result<Image, Error> {
        let not_found = || Error::NotFound(name.to_owned());
        let image = self.find(name).await?.ok_or_else(not_found)?;
        let me = cluster.me().name.clone();
        let wanted: Vec<(String, String)> = {
            let a = cluster.applied();
            a.state
                .units
                .assigned_to(&me)
                .filter_map(|u| {
                    crate::reconciler::image_of(&u.name, &u.text).map(|r| (u.name.clone(), r))
                })
                .collect()
        };
        let mut units = Vec::new();
        for (unit, reference) in wanted {
            if self
                .find(&reference)
                .await?
                .is_some_and(|i| i.reference == image.reference)
            {
                units.push(unit);
            }
        }
        if !units.is_empty() {
            return Err(Error::InUse {
                image: image.reference,
                units,
            });
        }
        self.remove(&image.reference).await?.ok_or_else(not_found)
    }

    /// Removes every image no unit assigned to this machine uses (and what only they used);
    /// the images removed.
    pub(crate) async fn prune(
        &self,
        cluster: &crate::cluster::Cluster,
    ) -> Result<Vec<Image>, Error> {
        let mut removed = Vec::new();
        for image in self.list().await? {
            match self.remove_unused(cluster, &image.reference).await {
                Ok(i) => removed.push(i),
                Err(Error::InUse { .. } | Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// How to run `image` with `command` (empty: the image's own; `None`: the caller has its
    /// own, the spec's command is left empty).
    pub(crate) async fn service(
        &self,
        image: &Image,
        command: Option<&[String]>,
    ) -> Result<ServiceSpec, Error> {
        let inner = self.inner.clone();
        let image = image.clone();
        let command = command.map(<[String]>::to_vec);
        tokio::task::spawn_blocking(move || {
            let config = inner.store.config(&image)?;
            let root = inner.store.rootfs(&image);
            service_spec(&image.reference, &root, &config, command.as_deref())
        })
        .await?
    }
}

/// One pull, in a task of its own: the store is prepared and the result published to every
/// waiter; the pull leaves the map before its result is out, so a later caller pulls anew.
async fn run_pull(
    inner: Arc<Inner>,
    key: String,
    reference: String,
    progress: broadcast::Sender<Progress>,
    done: watch::Sender<Outcome>,
) {
    let tx = progress.clone();
    let report: ProgressFn = Arc::new(move |p| {
        let _ = tx.send(p);
    });
    let result = inner
        .puller
        .pull(&inner.store, &reference, Some(report))
        .await
        .map_err(Arc::new);
    if let Ok(image) = &result {
        let root = inner.store.rootfs(image);
        let prepared = tokio::task::spawn_blocking(move || prepare_root(&root)).await;
        if let Ok(Err(e)) | Err(e) = prepared.map_err(std::io::Error::other) {
            tracing::warn!(image = %image.reference, "cannot add mount points to its root file system: {e}, ignoring");
        }
    }
    if let Err(e) = &result {
        tracing::debug!(image = %reference, "pull failed: {e}");
    }
    lock(&inner.pulls).remove(&key);
    drop(progress);
    if done.send(Some(result)).is_err() {
        tracing::debug!(image = %reference, "pull finished with nobody waiting");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds the mount points systemd needs in `root` (directories and the files bound over), never
/// through a symbolic link.
fn prepare_root(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    for (path, dir, mode) in [
        ("proc", true, 0o555),
        ("sys", true, 0o555),
        ("dev", true, 0o755),
        ("run", true, 0o755),
        ("tmp", true, 0o1777),
        ("var", true, 0o755),
        ("var/tmp", true, 0o1777),
        ("etc", true, 0o755),
        ("etc/resolv.conf", false, 0o644),
    ] {
        let full = root.join(path);
        let Some(parent) = full.parent() else {
            continue;
        };
        // The parent must be a real directory of the root, not a link out of it.
        if !parent.starts_with(root)
            || ancestors_within(root, parent)
                .any(|p| std::fs::symlink_metadata(p).map_or(true, |m| !m.file_type().is_dir()))
        {
            continue;
        }
        match std::fs::symlink_metadata(&full) {
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if dir {
            std::fs::DirBuilder::new().mode(mode).create(&full)?;
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode))?;
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&full)?;
        }
    }
    Ok(())
}

/// `dir` and its ancestors up to (and without) `root`.
fn ancestors_within<'a>(root: &'a Path, dir: &'a Path) -> impl Iterator<Item = &'a Path> + 'a {
    dir.ancestors().take_while(move |p| *p != root)
}

/// How to run an image: pure but for reading its root file system (to resolve the command and
/// the user). `command` empty: the image's entrypoint + cmd; other arguments: the image's
/// entrypoint + them, in place of its cmd (`docker run IMAGE ARGS`, Podman's `Exec=`); `None`:
/// no command.
pub(crate) fn service_spec(
    image: &str,
    root: &Path,
    config: &ImageConfig,
    command: Option<&[String]>,
) -> Result<ServiceSpec, Error> {
    let wanted = command.is_some();
    let mut command = match command {
        None => Vec::new(),
        Some([]) => config.command(),
        Some(args) => config.entrypoint.iter().chain(args).cloned().collect(),
    };
    if wanted && command.is_empty() {
        return Err(Error::NoCommand(image.to_owned()));
    }
    let path = config
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    if let Some(program) = command.first_mut() {
        *program = resolve(root, program, path).ok_or_else(|| Error::CommandNotFound {
            image: image.to_owned(),
            command: program.clone(),
            path: path.to_owned(),
        })?;
    }
    let (user, group) = match &config.user {
        None => (None, None),
        Some(u) => {
            let (user, group) = match u.split_once(':') {
                Some((u, g)) => (u, Some(g)),
                None => (u.as_str(), None),
            };
            let unknown = || Error::UnknownUser {
                image: image.to_owned(),
                user: u.clone(),
            };
            let (uid, primary) = lookup(root, "etc/passwd", user).ok_or_else(unknown)?;
            let gid = match group {
                Some(g) => lookup(root, "etc/group", g).ok_or_else(unknown)?.0,
                None => primary.unwrap_or(uid),
            };
            (Some(uid.to_string()), Some(gid.to_string()))
        }
    };
    Ok(ServiceSpec {
        image: image.to_owned(),
        root_directory: root.to_owned(),
        sandbox: SANDBOX
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        environment: config.env.clone(),
        working_directory: config
            .working_dir
            .clone()
            .filter(|w| w.starts_with('/'))
            .unwrap_or_else(|| "/".to_owned()),
        user,
        group,
        command,
    })
}

/// `program` as an absolute path inside `root`: as it is when absolute, else the first entry of
/// `path` that has it.
fn resolve(root: &Path, program: &str, path: &str) -> Option<String> {
    if program.starts_with('/') {
        return Some(program.to_owned());
    }
    if program.contains('/') {
        return None;
    }
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
        .find(|p| std::fs::symlink_metadata(within(root, p)).is_ok())
}

/// `p` (absolute, inside the image) as a path under `root`, without `..`.
fn within(root: &Path, p: &str) -> PathBuf {
    let mut out = root.to_owned();
    for c in Path::new(p).components() {
        if let Component::Normal(c) = c {
            out.push(c);
        }
    }
    out
}

/// A numeric id, or the id (and the primary group, for passwd) of `name` in the image's `file`.
fn lookup(root: &Path, file: &str, name: &str) -> Option<(u32, Option<u32>)> {
    if let Ok(id) = name.parse::<u32>() {
        return Some((id, None));
    }
    let path = within(root, file);
    if std::fs::symlink_metadata(&path)
        .ok()?
        .file_type()
        .is_symlink()
    {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| {
            let id = f[2].parse().ok()?;
            Some((id, f.get(3).and_then(|g| g.parse().ok())))
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ImageConfig {
        ImageConfig {
            entrypoint: vec![],
            cmd: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "GREETING=hello".into()],
            working_dir: Some("/data".into()),
            user: Some("app".into()),
            ..ImageConfig::default()
        }
    }

    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("busybox", dir.path().join("bin/sh")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        dir
    }

    #[test]
    fn spec_resolves_the_command_in_the_image_and_the_user_in_its_passwd() {
        let dir = root();
        let spec = service_spec("r", dir.path(), &config(), Some(&[])).unwrap();
        assert_eq!(spec.command, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(spec.working_directory, "/data");
        assert_eq!(
            (spec.user.as_deref(), spec.group.as_deref()),
            (Some("1000"), Some("1001"))
        );
        assert_eq!(spec.root_directory, dir.path());
        assert!(
            spec.sandbox
                .contains(&("ProtectSystem".into(), "strict".into()))
        );

        let mut c = config();
        c.user = Some("app:staff".into());
        let spec = service_spec("r", dir.path(), &c, Some(&["/bin/true".into()])).unwrap();
        assert_eq!(spec.command, ["/bin/true"]);
        assert_eq!(spec.group.as_deref(), Some("50"));

        // Arguments go after the entrypoint, in place of the cmd (`docker run IMAGE ARGS`).
        c.entrypoint = vec!["/bin/sh".into(), "-c".into()];
        let spec = service_spec("r", dir.path(), &c, Some(&["echo $0".into()])).unwrap();
        assert_eq!(spec.command, ["/bin/sh", "-c", "echo $0"]);
        c.entrypoint = vec![];

        let err = service_spec("r", dir.path(), &c, Some(&["nope".into()])).unwrap_err();
        assert!(err.to_string().contains("\"nope\" is not found"), "{err}");
        c.user = Some("ghost".into());
        assert!(matches!(
            service_spec("r", dir.path(), &c, None),
            Err(Error::UnknownUser { .. })
        ));
        let empty = ImageConfig::default();
        assert!(matches!(
            service_spec("r", dir.path(), &empty, Some(&[])),
            Err(Error::NoCommand(_))
        ));
    }

    #[test]
    fn mount_points_are_added_but_never_through_a_link() {
        let dir = root();
        let outside = tempfile::tempdir().unwrap();
        std::fs::remove_dir_all(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("etc")).unwrap();
        prepare_root(dir.path()).unwrap();
        for d in ["proc", "sys", "dev", "run", "tmp", "var/tmp"] {
            assert!(dir.path().join(d).is_dir(), "{d}");
        }
        assert!(
            !outside.path().join("resolv.conf").exists(),
            "a link out of the root was followed"
        );
        prepare_root(dir.path()).unwrap();
    }
}
