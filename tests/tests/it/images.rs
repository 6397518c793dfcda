//! Images: built here, pushed with skopeo to a real `docker-registry` on loopback, pulled and
//! unpacked by flotilla-images, refused when the registry lies, run by systemd in a machine.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_images::{Credentials, LayerState, Progress, PullError, PullOptions, Puller, Store};
use flotilla_tests::registry::{
    self, CuttingProxy, Entry, Format, ImageSpec, Layer, Registry, Scratch,
};
use flotilla_tests::testbed::{Node, Options, Testbed, wait_until};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn puller(registry: &Registry) -> Puller {
    Puller::new(PullOptions {
        insecure_registries: vec![registry.host()],
        ..PullOptions::default()
    })
    .unwrap()
}

/// Builds `specs` (one image, or an index of several) and pushes them as `repo:tag`.
fn push(registry: &Registry, repo: &str, specs: &[ImageSpec], format: Format) -> String {
    let layout = Scratch::new("layout").unwrap();
    let digest = registry::write_layout(layout.path(), "v1", specs).unwrap();
    registry.push(layout.path(), "v1", repo, format).unwrap();
    digest
}

/// Every path under `dir` with its type, mode, size and link target: what "unchanged" means.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let md = fs::symlink_metadata(&path).unwrap();
            if md.is_dir() {
                todo.push(path.clone());
            }
            let link = fs::read_link(&path)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            let key = path.strip_prefix(dir).unwrap().display().to_string();
            out.insert(key, format!("{:o} {} {link}", md.mode(), md.len()));
        }
    }
    out
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Waits until the last lines of `unit`'s journal, read through `flotctl journal` on `node`,
/// contain `needle`.
fn wait_journal(node: &Node<'_>, unit: &str, needle: &str) {
    flotilla_tests::testbed::wait_for(
        TESTBED_DEADLINE,
        &format!("{needle} in the journal of {unit}"),
        || {
            let out = flotctl(node, &["journal", "-n", "5", unit]);
            let shown = text(&out);
            if shown.contains(needle) {
                Ok(())
            } else {
                Err(Some(shown))
            }
        },
    )
    .unwrap();
}

/// The digest of layer `i` of the first image of the OCI layout at `layout`.
fn layer_digest(layout: &Path, i: usize) -> String {
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
    };
    let index = read(layout.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = read(layout.join("blobs/sha256").join(&manifest_digest[7..]));
    manifest["layers"][i]["digest"].as_str().unwrap().to_owned()
}

/// Flips a byte in the middle of `blob` (a registry that serves a wrong digest); returns the
/// original bytes, to repair it with.
fn corrupt_middle(blob: &Path) -> Vec<u8> {
    let original = fs::read(blob).unwrap();
    let mut corrupt = original.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    fs::write(blob, &corrupt).unwrap();
    original
}

#[test]
fn pulls_busybox_with_whiteouts_and_links() {
    let registry = Registry::start().unwrap();
    let pushed = push(
        &registry,
        "busybox",
        &[registry::busybox_image()],
        Format::Oci,
    );
    let dir = Scratch::new("store").unwrap();
    let store = Store::open(dir.path()).unwrap();
    let events = Arc::new(Mutex::new(Vec::<Progress>::new()));
    let sink = events.clone();
    let reference = format!("{}/busybox:v1", registry.host());
    let image = runtime()
        .block_on(puller(&registry).pull(
            &store,
            &reference,
            Some(Arc::new(move |p| sink.lock().unwrap().push(p))),
        ))
        .unwrap();
    assert_eq!(image.manifest.as_str(), pushed);
    assert_eq!(image.layers.len(), 3);
    assert_eq!(image.reference, reference);

    let root = store.rootfs(&image);
    let busybox = root.join("bin/busybox");
    assert_eq!(
        fs::read(&busybox).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(mode(&busybox), 0o755);
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_link(root.join("bin/echo")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        fs::metadata(root.join("bin/ls")).unwrap().ino(),
        fs::metadata(&busybox).unwrap().ino(),
        "bin/ls is a hard link to bin/busybox"
    );
    assert!(!root.join("etc/motd").exists(), "whiteout not applied");
    assert!(root.join("etc/passwd").exists());
    assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"image\n");
    let data: Vec<_> = fs::read_dir(root.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(data, ["upper"], "opaque directory not applied");
    assert_eq!(mode(&root.join("data")), 0o750);
    assert_eq!(mode(&root.join("data/upper")), 0o640);
    for d in ["proc", "dev", "sys", "tmp", "run"] {
        assert!(root.join(d).is_dir(), "{d} is missing");
    }

    let config = store.config(&image).unwrap();
    assert_eq!(config.command(), ["/bin/sh"]);
    assert_eq!(config.env, ["PATH=/bin", "GREETING=hello"]);
    assert_eq!(config.working_dir.as_deref(), Some("/data"));
    assert_eq!(config.architecture, "amd64");

    let events = std::mem::take(&mut *events.lock().unwrap());
    for layer in &image.layers {
        let states: Vec<_> = events
            .iter()
            .filter(|e| &e.digest == layer)
            .map(|e| e.state)
            .collect();
        assert_eq!(
            states.first(),
            Some(&LayerState::Downloading),
            "{layer}: {states:?}"
        );
        assert_eq!(
            states.last(),
            Some(&LayerState::Unpacked),
            "{layer}: {states:?}"
        );
        assert!(
            states.contains(&LayerState::Downloaded),
            "{layer}: {states:?}"
        );
    }

    // By digest: the same image, found in the store, nothing pulled again.
    let by_digest = format!("{}/busybox@{pushed}", registry.host());
    let before = snapshot(dir.path());
    let again = runtime()
        .block_on(puller(&registry).pull(&store, &by_digest, None))
        .unwrap();
    assert_eq!(again.manifest, image.manifest);
    assert_eq!(store.rootfs(&again), root);
    let listed: Vec<_> = store
        .images()
        .unwrap()
        .into_iter()
        .map(|i| i.reference)
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let after = snapshot(dir.path());
    let new: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    assert!(new.is_empty(), "pulling a stored image wrote {new:?}");
}

#[test]
fn pulls_docker_v2_manifests_and_resolves_indexes() {
    let registry = Registry::start().unwrap();
    let arch = |a: &str| {
        let mut spec = ImageSpec::new(vec![Layer(vec![Entry::File(
            "arch".into(),
            0o644,
            a.as_bytes().to_vec(),
        )])]);
        spec.architecture = a.into();
        spec
    };
    let store_dir = Scratch::new("store").unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let rt = runtime();
    for (repo, format) in [("multi-oci", Format::Oci), ("multi-docker", Format::Docker)] {
        let index = push(
            &registry,
            repo,
            &[arch("arm64"), arch("amd64"), arch("s390x")],
            format,
        );
        let reference = format!("{}/{repo}:v1", registry.host());
        let image = rt
            .block_on(puller(&registry).pull(&store, &reference, None))
            .unwrap();
        assert_ne!(
            image.manifest.as_str(),
            index,
            "the index itself, not its amd64 manifest"
        );
        let arch = fs::read_to_string(store.rootfs(&image).join("arch")).unwrap();
        assert_eq!(arch, "amd64", "{repo}");
        assert_eq!(store.config(&image).unwrap().architecture, "amd64");
    }
    let single = push(
        &registry,
        "docker-single",
        &[registry::busybox_image()],
        Format::Docker,
    );
    let reference = format!("{}/docker-single:v1", registry.host());
    let image = rt
        .block_on(puller(&registry).pull(&store, &reference, None))
        .unwrap();
    assert_ne!(
        image.manifest.as_str(),
        single,
        "skopeo converted it to a Docker manifest"
    );
    assert!(store.rootfs(&image).join("bin/busybox").exists());

    let none = push(
        &registry,
        "arm-only",
        &[arch("arm64"), arch("ppc64le")],
        Format::Oci,
    );
    let reference = format!("{}/arm-only:v1", registry.host());
    let before = snapshot(store_dir.path());
    let err = rt
        .block_on(puller(&registry).pull(&store, &reference, None))
        .unwrap_err();
    assert!(matches!(err, PullError::NoPlatform { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("linux/amd64") && msg.contains("linux/arm64, linux/ppc64le"),
        "{msg} ({none})"
    );
    assert_eq!(snapshot(store_dir.path()), before);
}

/// The registry serves a layer whose bytes are not those of its digest, then a truncated one:
/// both pulls are refused and the store is left exactly as it was.
#[test]
fn refuses_wrong_digest_and_truncated_layer() {
    let registry = Registry::start().unwrap();
    push(
        &registry,
        "busybox",
        &[registry::busybox_image()],
        Format::Oci,
    );
    let dir = Scratch::new("store").unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rt = runtime();
    // One image already in the store: it must survive the refused pulls untouched.
    let small = ImageSpec::new(vec![Layer(vec![Entry::File(
        "x".into(),
        0o644,
        b"x".to_vec(),
    )])]);
    push(&registry, "small", &[small], Format::Oci);
    let ok = rt
        .block_on(puller(&registry).pull(&store, &format!("{}/small:v1", registry.host()), None))
        .unwrap();
    let before = snapshot(dir.path());

    let reference = format!("{}/busybox:v1", registry.host());
    let layout = Scratch::new("layout").unwrap();
    registry::write_layout(layout.path(), "v1", &[registry::busybox_image()]).unwrap();
    let layer = layer_digest(layout.path(), 0);
    let blob = registry.blob_file(&layer);
    let original = corrupt_middle(&blob);
    let err = rt
        .block_on(puller(&registry).pull(&store, &reference, None))
        .unwrap_err();
    match &err {
        PullError::DigestMismatch {
            digest,
            registry: r,
            ..
        } => {
            assert_eq!(digest, &layer);
            assert_eq!(r, &registry.host());
        }
        other => panic!("expected a digest mismatch, got: {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&layer) && msg.contains(&reference) && msg.ends_with("refused"),
        "{msg}"
    );
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a refused pull changed the store"
    );

    fs::write(&blob, &original[..original.len() / 3]).unwrap();
    let err = rt
        .block_on(puller(&registry).pull(&store, &reference, None))
        .unwrap_err();
    match &err {
        PullError::SizeMismatch {
            digest,
            received,
            size,
            ..
        } => {
            assert_eq!(digest.as_str(), layer);
            assert_eq!(*size, original.len() as u64);
            assert!(received < size);
        }
        other => panic!("expected a size mismatch, got: {other}"),
    }
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a refused pull changed the store"
    );
    assert_eq!(store.images().unwrap(), [ok]);

    // Repaired, the same pull goes through.
    fs::write(&blob, &original).unwrap();
    rt.block_on(puller(&registry).pull(&store, &reference, None))
        .unwrap();
}

#[test]
fn shares_layers_removes_and_collects() {
    let registry = Registry::start().unwrap();
    let base = registry::busybox_image();
    let mut derived = base.clone();
    derived.layers.push(Layer(vec![Entry::File(
        "app".into(),
        0o755,
        b"#!/bin/sh\n".to_vec(),
    )]));
    push(&registry, "base", &[base], Format::Oci);
    push(&registry, "derived", &[derived], Format::Oci);
    let dir = Scratch::new("store").unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rt = runtime();
    let p = puller(&registry);
    let base = rt
        .block_on(p.pull(&store, &format!("{}/base:v1", registry.host()), None))
        .unwrap();
    let cached = Arc::new(Mutex::new(0));
    let count = cached.clone();
    let on_progress = Arc::new(move |e: Progress| {
        if e.state == LayerState::Cached {
            *count.lock().unwrap() += 1;
        }
    });
    let derived = rt
        .block_on(p.pull(
            &store,
            &format!("{}/derived:v1", registry.host()),
            Some(on_progress),
        ))
        .unwrap();
    assert_eq!(
        *cached.lock().unwrap(),
        3,
        "the base layers are not downloaded again"
    );
    assert_eq!(&derived.layers[..3], &base.layers[..]);
    let blobs = |store: &Store| {
        fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count()
    };
    // 2 manifests + 2 configs + 4 distinct layers.
    assert_eq!(blobs(&store), 8);

    let removed = store.remove(&base.reference).unwrap().unwrap();
    assert_eq!(removed, base);
    assert!(!store.rootfs(&base).exists());
    assert!(store.rootfs(&derived).join("app").exists());
    assert_eq!(blobs(&store), 6, "only the base's manifest and config go");
    assert!(store.remove(&base.reference).unwrap().is_none());

    let report = store.gc(&[derived.manifest.as_str()]).unwrap();
    assert_eq!(report.images, Vec::<String>::new());
    assert_eq!((report.blobs, report.rootfs), (0, 0));
    let report = store.gc(&[]).unwrap();
    assert_eq!(report.images, std::slice::from_ref(&derived.reference));
    assert_eq!((report.blobs, report.rootfs), (6, 1));
    assert_eq!(blobs(&store), 0);
    assert!(store.images().unwrap().is_empty());
}

#[test]
fn falls_back_from_an_unreachable_mirror() {
    let registry = Registry::start().unwrap();
    push(
        &registry,
        "busybox",
        &[registry::busybox_image()],
        Format::Oci,
    );
    // Nothing listens on port 1 of this loopback address: the mirror is down.
    let mirror = "127.0.0.1:1".to_owned();
    let puller = Puller::new(PullOptions {
        insecure_registries: vec![registry.host(), mirror.clone()],
        mirrors: [(registry.host(), vec![mirror])].into(),
        read_timeout: Duration::from_secs(10),
        ..PullOptions::default()
    })
    .unwrap();
    let dir = Scratch::new("store").unwrap();
    let store = Store::open(dir.path()).unwrap();
    let image = runtime()
        .block_on(puller.pull(&store, &format!("{}/busybox:v1", registry.host()), None))
        .unwrap();
    assert!(store.rootfs(&image).join("bin/busybox").exists());
}

/// Through a working mirror (a pull-through cache): the image comes from the mirror, which
/// keeps its layers.
#[test]
fn pulls_through_a_mirror() {
    let origin = Registry::start().unwrap();
    push(
        &origin,
        "busybox",
        &[registry::busybox_image()],
        Format::Oci,
    );
    let mirror = Registry::start_mirror_of(&origin).unwrap();
    let puller = Puller::new(PullOptions {
        insecure_registries: vec![origin.host(), mirror.host()],
        mirrors: [(origin.host(), vec![mirror.host()])].into(),
        ..PullOptions::default()
    })
    .unwrap();
    let dir = Scratch::new("store").unwrap();
    let store = Store::open(dir.path()).unwrap();
    let image = runtime()
        .block_on(puller.pull(&store, &format!("{}/busybox:v1", origin.host()), None))
        .unwrap();
    assert!(store.rootfs(&image).join("bin/busybox").exists());
    // The mirror stores what it served in the background: wait for it.
    for layer in &image.layers {
        wait_until(
            Duration::from_secs(10),
            &format!("{layer} stored by the mirror"),
            || mirror.has_blob(layer.as_str()),
        )
        .unwrap();
    }
}

#[test]
fn reports_a_missing_image_clearly() {
    let registry = Registry::start().unwrap();
    let dir = Scratch::new("store").unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = format!("{}/nothing:here", registry.host());
    let err = runtime()
        .block_on(puller(&registry).pull(&store, &reference, None))
        .unwrap_err();
    assert!(matches!(err, PullError::Registry { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "pulling {reference} from registry {}",
            registry.host()
        )),
        "{msg}"
    );
    assert!(store.images().unwrap().is_empty());
}

#[test]
fn refuses_an_image_larger_than_allowed_before_downloading_it() {
    let registry = Registry::start().unwrap();
    push(
        &registry,
        "busybox",
        &[registry::busybox_image()],
        Format::Oci,
    );
    let dir = Scratch::new("store").unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = format!("{}/busybox:v1", registry.host());
    let small = Puller::new(PullOptions {
        insecure_registries: vec![registry.host()],
        max_image_bytes: 1024,
        ..PullOptions::default()
    })
    .unwrap();
    let err = runtime()
        .block_on(small.pull(&store, &reference, None))
        .unwrap_err();
    assert!(matches!(err, PullError::ImageTooLarge { .. }), "{err}");
    assert!(
        err.to_string().contains("more than the 1024 accepted"),
        "{err}"
    );
    assert!(store.images().unwrap().is_empty());
    // Nothing was downloaded: no blob in the store.
    let blobs = dir.path().join("blobs/sha256");
    let count = fs::read_dir(&blobs).map_or(0, |d| d.count());
    assert_eq!(count, 0, "blobs were downloaded");
    // The default lets it through.
    runtime()
        .block_on(puller(&registry).pull(&store, &reference, None))
        .unwrap();
}

/// The unpacked busybox runs as a real systemd service with `RootDirectory=` in a machine.
#[test]
fn runs_the_unpacked_rootfs_under_systemd() {
    let registry = Registry::start().unwrap();
    push(
        &registry,
        "busybox",
        &[registry::busybox_image()],
        Format::Oci,
    );
    // Machines share the host's root file system except /tmp, /var/tmp and /run.
    let parent = Path::new("/var/lib/flotilla-tests");
    fs::create_dir_all(parent).unwrap();
    let dir = Scratch::under(parent, "images").unwrap();
    let store = Store::open(dir.path()).unwrap();
    let image = runtime()
        .block_on(puller(&registry).pull(&store, &format!("{}/busybox:v1", registry.host()), None))
        .unwrap();
    let root = store.rootfs(&image);
    let config = store.config(&image).unwrap();

    let tb = Testbed::up(Options::new(1)).unwrap();
    let node = tb.node(1);
    let root_arg = format!("RootDirectory={}", root.display());
    let workdir = format!(
        "WorkingDirectory={}",
        config.working_dir.as_deref().unwrap_or("/")
    );
    let mut args = vec![
        "systemd-run",
        "--wait",
        "--pipe",
        "--quiet",
        "-p",
        &root_arg,
        "-p",
        &workdir,
        "-p",
        "ProtectSystem=strict",
        "-p",
        "PrivateTmp=yes",
    ];
    let env: Vec<String> = config.env.iter().map(|e| format!("--setenv={e}")).collect();
    args.extend(env.iter().map(String::as_str));
    args.extend(["/bin/sh", "-c", "echo $GREETING from $(pwd); ls /data"]);
    let out = node.exec(&args).unwrap();
    assert!(
        out.status.success(),
        "systemd-run failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.journal(None, 50)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from /data\nupper\n"
    );
}

/// A transfer that breaks off mid-layer (the registry announced the whole length) is refused.
#[test]
fn refuses_a_transfer_that_breaks_off() {
    let registry = Registry::start().unwrap();
    let layout = Scratch::new("layout").unwrap();
    registry::write_layout(layout.path(), "v1", &[registry::busybox_image()]).unwrap();
    registry
        .push(layout.path(), "v1", "busybox", Format::Oci)
        .unwrap();
    // The busybox layer: the largest blob of the layout.
    let layer = fs::read_dir(layout.path().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap())
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    let proxy = CuttingProxy::start(registry.addr(), &layer, 1000).unwrap();
    let dir = Scratch::new("store").unwrap();
    let store = Store::open(dir.path()).unwrap();
    let before = snapshot(dir.path());
    let puller = Puller::new(PullOptions {
        insecure_registries: vec![proxy.host()],
        ..PullOptions::default()
    })
    .unwrap();
    let reference = format!("{}/busybox:v1", proxy.host());
    let err = runtime()
        .block_on(puller.pull(&store, &reference, None))
        .unwrap_err();
    match &err {
        PullError::Transfer {
            digest, received, ..
        } => {
            assert_eq!(digest.hex(), layer);
            assert_eq!(*received, 1000);
        }
        other => panic!("expected a broken transfer, got: {other}"),
    }
    assert!(err.to_string().contains("broke off after 1000 of"), "{err}");
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a refused pull changed the store"
    );
}

/// A registry that wants basic auth: refused anonymously, pulled with an auth.json.
#[test]
fn pulls_with_credentials_from_an_auth_file() {
    // bcrypt of "s3cret" (the only hash docker-registry's htpasswd accepts).
    let htpasswd = "flotilla:$2a$12$FlaEzeasy7mis766B1xlfekNGv6Vvd.oWrr/qguVsPA2S.FdBTlf2";
    let registry = Registry::start_with_auth(htpasswd).unwrap();
    let layout = Scratch::new("layout").unwrap();
    registry::write_layout(layout.path(), "v1", &[registry::busybox_image()]).unwrap();
    registry
        .push_as(
            layout.path(),
            "v1",
            "private",
            Format::Oci,
            Some("flotilla:s3cret"),
        )
        .unwrap();
    let dir = Scratch::new("store").unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = format!("{}/private:v1", registry.host());
    let rt = runtime();
    let err = rt
        .block_on(puller(&registry).pull(&store, &reference, None))
        .unwrap_err();
    assert!(matches!(err, PullError::Registry { .. }), "{err}");

    let auth_json = dir.path().join("auth.json");
    fs::write(
        &auth_json,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "ZmxvdGlsbGE6czNjcmV0"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let puller = Puller::new(PullOptions {
        insecure_registries: vec![registry.host()],
        credentials: Credentials::from_file(&auth_json).unwrap(),
        ..PullOptions::default()
    })
    .unwrap();
    let image = rt.block_on(puller.pull(&store, &reference, None)).unwrap();
    assert!(store.rootfs(&image).join("bin/busybox").exists());
}

/// `flotctl ARGS` inside `node` (its own agent), with no standard input.
fn flotctl(node: &flotilla_tests::testbed::Node<'_>, args: &[&str]) -> std::process::Output {
    let path = Options::default_agent().with_file_name("flotctl");
    let mut argv = vec![path.to_str().unwrap()];
    argv.extend_from_slice(args);
    node.command(&argv)
        .unwrap()
        .env_remove("FLOTCTL_ENDPOINT")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `content` to `path` inside `node` (`append`: at its end).
fn write_in(node: &flotilla_tests::testbed::Node<'_>, path: &str, content: &str, append: bool) {
    use std::io::Write as _;
    let tee = if append {
        vec!["tee", "-a", path]
    } else {
        vec!["tee", path]
    };
    let mut child = node
        .command(&tee)
        .unwrap()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(content.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "cannot write {path}");
}

/// The row of `unit` in `flotctl list-units` (unit, machine, active, sub, result), once it
/// satisfies `ok`.
fn wait_unit(
    node: &flotilla_tests::testbed::Node<'_>,
    unit: &str,
    ok: impl Fn(&[&str]) -> bool,
) -> Vec<String> {
    flotilla_tests::testbed::wait_for(TESTBED_DEADLINE, &format!("{unit} in list-units"), || {
        let out = flotctl(
            node,
            &[
                "list-units",
                "--no-legend",
                "--fields",
                "unit,machine,active,sub,result",
            ],
        );
        let shown = text(&out);
        for line in shown.lines() {
            let cols: Vec<&str> = line.split('\t').map(str::trim).collect();
            if cols.first() == Some(&unit) && ok(&cols) {
                return Ok(cols.iter().map(|c| (*c).to_owned()).collect());
            }
        }
        Err(Some(shown))
    })
    .unwrap()
}

const TESTBED_DEADLINE: Duration = Duration::from_secs(90);

/// The images of the store on `node`, without what a pull in flight may have in `tmp/`.
fn store_of(node: &flotilla_tests::testbed::Node<'_>) -> String {
    node.stdout(&[
        "sh",
        "-c",
        "cd /var/lib/flotilla/images && find . -path ./tmp -prune -o -print | sort && cat index.json",
    ])
    .unwrap()
}

/// The seed's walk-through with images, on machines that run real systemd: an image built here
/// (busybox over three layers with a whiteout), pushed to a registry the machines reach over
/// their bridge; a hello-world unit and a busybox service run in it (`[X-Flotilla] Image=`),
/// their output read with `flotctl journal`; `flotctl pull`, `images`, `rmi` (refused while a
/// unit uses the image) and `run`; a registry that serves a wrong digest fails its unit with the
/// reason and leaves the store as it was.
#[test]
fn runs_image_units_and_flotctl_run_on_the_testbed() {
    let tb = Testbed::up(
        Options::new(2)
            .agent(Options::default_agent())
            .agent_stopped(),
    )
    .unwrap();
    let registry = Registry::start_on(tb.host_addr()).unwrap();
    let host = registry.host();
    for n in tb.nodes() {
        write_in(
            &n,
            "/etc/flotilla/flotilla.toml",
            &format!("\n[images]\ninsecure_registries = [\"{host}\"]\n"),
            true,
        );
        n.start_agent().unwrap();
    }
    let mut spec = registry::busybox_image();
    spec.cmd = vec![
        "/bin/sh".into(),
        "-c".into(),
        "echo $GREETING from the image command".into(),
    ];
    push(&registry, "busybox", &[spec], Format::Oci);
    // An image with an entrypoint: arguments go after it, in place of its cmd.
    let mut entry = registry::busybox_image();
    entry.entrypoint = vec!["/bin/echo".into(), "entrypoint-says".into()];
    entry.cmd = vec!["from-cmd".into()];
    push(&registry, "entry", &[entry], Format::Oci);
    let entry_image = format!("{host}/entry:v1");
    // The busybox base layer and a layer of its own, which the registry will corrupt.
    let bad = ImageSpec::new(vec![
        registry::busybox_image().layers[0].clone(),
        Layer(vec![Entry::File(
            "bin/marker".into(),
            0o644,
            b"only in this image".to_vec(),
        )]),
    ]);
    let layout = Scratch::new("layout").unwrap();
    registry::write_layout(layout.path(), "v1", &[bad]).unwrap();
    registry
        .push(layout.path(), "v1", "bad", Format::Oci)
        .unwrap();
    let image = format!("{host}/busybox:v1");
    let n1 = tb.node(1);

    // flotctl pull: a line per layer state (not a terminal), then the image.
    let out = flotctl(&n1, &["pull", &image]);
    assert!(out.status.success(), "pull failed: {}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains(": downloading") && shown.contains(&format!("Pulled {image} (sha256:")),
        "{shown}"
    );
    let out = flotctl(&n1, &["images", "--no-legend"]);
    // The same table over HTTP (--endpoint) as over D-Bus (the default).
    let endpoint = format!("http://{}:2379", n1.addr());
    let over_http = flotctl(&n1, &["--endpoint", &endpoint, "images", "--no-legend"]);
    assert_eq!(text(&over_http), text(&out), "images over HTTP and D-Bus");
    let row: Vec<String> = text(&out)
        .split('\t')
        .map(|c| c.trim().to_owned())
        .collect();
    assert_eq!(
        row[..2],
        [format!("{host}/busybox"), "v1".to_owned()],
        "{row:?}"
    );

    // The same over D-Bus with busctl: a pull on another machine answers with the image, and
    // its store lists it.
    let n2 = tb.node(2);
    let busctl = |node: &Node<'_>, args: &[&str]| {
        let mut argv = vec![
            "busctl",
            "--system",
            "--json=short",
            "call",
            "org.flotilla.Agent1",
            "/org/flotilla/Agent1",
            "org.flotilla.Agent1",
        ];
        argv.extend_from_slice(args);
        node.exec(&argv).unwrap()
    };
    // busctl monitor sees the pull's ImagePullProgress signals (once it sees a call, it is
    // listening).
    let (mut monitor, messages) = crate::bus::monitor(&n2);
    let mut seen = Vec::new();
    flotilla_tests::testbed::wait_for(TESTBED_DEADLINE, "busctl monitor to listen", || {
        busctl(&n2, &["ListImages"]);
        seen.extend(messages.try_iter());
        if seen.iter().any(|m| m["member"] == "ListImages") {
            Ok(())
        } else {
            Err(None)
        }
    })
    .unwrap();
    let out = busctl(&n2, &["PullImage", "s", &image]);
    assert!(out.status.success(), "PullImage: {}", text(&out));
    let progress = flotilla_tests::testbed::wait_for(TESTBED_DEADLINE, "ImagePullProgress", || {
        seen.extend(messages.try_iter());
        let states: Vec<String> = seen
            .iter()
            .filter(|m| m["member"] == "ImagePullProgress")
            .map(|m| m["payload"]["data"][2].as_str().unwrap_or("").to_owned())
            .collect();
        if states.iter().any(|s| s == "unpacked") {
            Ok(states)
        } else {
            Err(Some(format!("{states:?}")))
        }
    });
    let _ = monitor.kill();
    let _ = monitor.wait();
    let states = progress.unwrap();
    assert!(states.iter().any(|s| s == "downloading"), "{states:?}");
    let pulled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pulled["data"][0][1], format!("{host}/busybox"), "{pulled}");
    assert_eq!(pulled["data"][0][2], "v1", "{pulled}");
    let out = busctl(&n2, &["ListImages"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["data"][0][0][3], pulled["data"][0][3], "{listed}");

    // flotctl run: the command's output on this terminal; the image's command by default.
    let out = flotctl(
        &n1,
        &[
            "run",
            "--rm",
            &image,
            "/bin/sh",
            "-c",
            "echo $GREETING from $(pwd); ls /data; (echo x > /data/x) 2>/dev/null && echo writable || echo read-only",
        ],
    );
    assert!(out.status.success(), "run failed: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from /data\nupper\nread-only\n",
        "{}",
        text(&out)
    );
    let out = flotctl(&n1, &["run", "--rm", &image]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the image command\n",
        "{}",
        text(&out)
    );
    // As `docker run`: the arguments follow the image's entrypoint, in place of its cmd.
    for (args, said) in [
        (&["from-run"][..], "entrypoint-says from-run\n"),
        (&[][..], "entrypoint-says from-cmd\n"),
    ] {
        let mut argv = vec!["run", "--rm", &entry_image];
        argv.extend(args);
        let out = flotctl(&n1, &argv);
        assert!(out.status.success(), "run failed: {}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), said, "{}", text(&out));
    }

    // run --machine: once on the other machine, its journal printed, the unit gone after.
    let out = flotctl(
        &n1,
        &[
            "run",
            "--machine",
            "node2",
            &image,
            "/bin/sh",
            "-c",
            "echo remote-$(cat /etc/hostname 2>/dev/null || echo image)",
        ],
    );
    assert!(out.status.success(), "run --machine failed: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" node2 ")
            && String::from_utf8_lossy(&out.stdout).contains("remote-"),
        "{}",
        text(&out)
    );
    let listed = flotctl(&n1, &["list-unit-files", "--no-legend"]);
    assert!(!text(&listed).contains("run-"), "{}", text(&listed));
    let failed = flotctl(&n1, &["run", "--machine", "node2", &image, "/bin/false"]);
    assert!(!failed.status.success(), "{}", text(&failed));

    // -it: an interactive shell on a terminal (`script` gives flotctl one here).
    let flotctl_path = Options::default_agent().with_file_name("flotctl");
    let command = format!("{} run -it --rm {image} /bin/sh", flotctl_path.display());
    let mut child = n1
        .command(&["script", "-qec", &command, "/dev/null"])
        .unwrap()
        .env_remove("FLOTCTL_ENDPOINT")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Type only once the shell shows its prompt: what is typed earlier may reach the terminal
    // before the shell reads it, and the end of input then ends the shell first.
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut shown = Vec::new();
    let prompt = flotilla_tests::testbed::wait_for(TESTBED_DEADLINE, "the shell's prompt", || {
        shown.extend(rx.try_iter().flatten());
        if String::from_utf8_lossy(&shown).contains("# ") {
            Ok(())
        } else {
            Err(Some(String::from_utf8_lossy(&shown).into_owned()))
        }
    });
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"test -t 0 && echo typed-$((40 + 2)) on a tty; exit 7\n")
            .unwrap();
    }
    let status = child.wait().unwrap();
    prompt.unwrap();
    // The reader ends with the output.
    let deadline = std::time::Instant::now() + TESTBED_DEADLINE;
    while let Ok(chunk) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        shown.extend(chunk);
    }
    let shown = String::from_utf8_lossy(&shown);
    assert!(
        shown.contains("typed-42 on a tty") && status.code() == Some(7),
        "{status:?}: {shown}"
    );

    // A hello-world unit in the image, wherever the scheduler puts it; its output in the journal.
    let hello = format!(
        "[Unit]\nDescription=hello from an image\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\n\
         ExecStart=/bin/sh -c \"echo $$GREETING from the image; ls /data\"\n\n\
         [X-Flotilla]\nImage={image}\n"
    );
    write_in(&n1, "/tmp/hello-image.service", &hello, false);
    let out = flotctl(
        &n1,
        &["start", "--block-timeout", "90", "/tmp/hello-image.service"],
    );
    assert!(out.status.success(), "start failed: {}", text(&out));
    let row = wait_unit(&n1, "hello-image.service", |c| c.get(2) == Some(&"active"));
    let runner = tb.node_named(&row[1]).unwrap();
    flotilla_tests::testbed::wait_for(TESTBED_DEADLINE, "hello in the journal", || {
        let out = flotctl(&n1, &["journal", "-n", "20", "hello-image.service"]);
        let shown = text(&out);
        if shown.contains("hello from the image") && shown.contains("upper") {
            Ok(())
        } else {
            Err(Some(shown))
        }
    })
    .unwrap();
    // What systemd runs is in plain sight: the unit and flotilla's drop-in.
    let cat = runner
        .stdout(&["systemctl", "cat", "hello-image.service"])
        .unwrap();
    assert!(
        cat.contains("50-flotilla-image.conf")
            && cat.contains("RootDirectory=/var/lib/flotilla/images/rootfs/")
            && cat.contains("ProtectSystem=strict")
            && cat.contains("Environment=\"GREETING=hello\""),
        "{cat}"
    );

    // A busybox service: it keeps running in the image.
    let service = format!(
        "[Unit]\nDescription=busybox service\n\n[Service]\n\
         ExecStart=/bin/sh -c \"while true; do echo tick; /bin/busybox sleep 1; done\"\n\n\
         [X-Flotilla]\nImage={image}\n"
    );
    write_in(&n1, "/tmp/busybox-image.service", &service, false);
    let out = flotctl(
        &n1,
        &[
            "start",
            "--block-timeout",
            "90",
            "/tmp/busybox-image.service",
        ],
    );
    assert!(out.status.success(), "start failed: {}", text(&out));
    let row = wait_unit(&n1, "busybox-image.service", |c| {
        c.get(2) == Some(&"active") && c.get(3) == Some(&"running")
    });
    wait_journal(&n1, "busybox-image.service", "tick");

    // A Podman Quadlet file: ticker.container runs as ticker.service in the image.
    let quadlet = format!(
        "[Unit]\nDescription=a quadlet container\n\n[Container]\nImage={image}\n\
         Exec=/bin/sh -c \"while true; do echo quadlet-tick; /bin/busybox sleep 1; done\"\n\
         PublishPort=8080:8080\n\n[Service]\nRestart=always\n"
    );
    write_in(&n1, "/tmp/ticker.container", &quadlet, false);
    let out = flotctl(
        &n1,
        &["start", "--block-timeout", "90", "/tmp/ticker.container"],
    );
    assert!(out.status.success(), "start failed: {}", text(&out));
    assert!(
        text(&out).contains("PublishPort= means something to podman only"),
        "{}",
        text(&out)
    );
    wait_journal(&n1, "ticker.service", "quadlet-tick");
    // Exec= alone: the image's entrypoint runs with it, as in podman.
    let quadlet = format!(
        "[Container]\nImage={entry_image}\nExec=from-quadlet \"two words\"\n\n\
         [Service]\nType=oneshot\nRemainAfterExit=yes\n"
    );
    write_in(&n1, "/tmp/greeter.container", &quadlet, false);
    let out = flotctl(
        &n1,
        &["start", "--block-timeout", "90", "/tmp/greeter.container"],
    );
    assert!(out.status.success(), "start failed: {}", text(&out));
    wait_journal(
        &n1,
        "greeter.service",
        "entrypoint-says from-quadlet two words",
    );

    // rmi is refused where a unit uses the image, and goes through once none does.
    let runner = tb.node_named(&row[1]).unwrap();
    let out = flotctl(&runner, &["rmi", &image]);
    assert!(!out.status.success(), "rmi of an image in use went through");
    assert!(
        text(&out).contains("busybox-image.service"),
        "{}",
        text(&out)
    );
    let out = busctl(&runner, &["RemoveImage", "s", &image]);
    assert!(
        !out.status.success(),
        "RemoveImage of an image in use went through"
    );
    assert!(
        text(&out).contains("busybox-image.service"),
        "{}",
        text(&out)
    );
    let before_bad: Vec<String> = tb.nodes().map(|n| store_of(&n)).collect();

    // A registry that serves a wrong digest: the unit fails with the reason, the store is kept.
    let layer = layer_digest(layout.path(), 1);
    let blob = registry.blob_file(&layer);
    let original = corrupt_middle(&blob);
    let broken = format!(
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c \"test -f /bin/marker\"\n\n\
         [X-Flotilla]\nImage={host}/bad:v1\n"
    );
    write_in(&n1, "/tmp/bad-image.service", &broken, false);
    let out = flotctl(&n1, &["start", "--no-block", "/tmp/bad-image.service"]);
    assert!(out.status.success(), "submit failed: {}", text(&out));
    let row = wait_unit(&n1, "bad-image.service", |c| {
        c.get(2) == Some(&"failed") && c.get(3) == Some(&"pull-failed")
    });
    assert!(
        row[4].contains(&layer) && row[4].ends_with("refused"),
        "{row:?}"
    );
    let node = tb.node_named(&row[1]).unwrap();
    assert_eq!(
        store_of(&node),
        before_bad[node.index() - 1],
        "a refused pull changed the store"
    );
    assert!(
        !node
            .stdout(&[
                "systemctl",
                "list-units",
                "--all",
                "--plain",
                "bad-image.service"
            ])
            .unwrap()
            .contains("bad-image.service"),
        "a unit whose image is missing was given to systemd"
    );
    // The pull is tried again (with a backoff): once the registry is repaired, the unit runs.
    fs::write(&blob, &original).unwrap();
    wait_unit(&n1, "bad-image.service", |c| c.get(2) == Some(&"active"));

    for unit in [
        "busybox-image.service",
        "hello-image.service",
        "bad-image.service",
        "ticker.service",
        "greeter.service",
    ] {
        let out = flotctl(&n1, &["destroy", unit]);
        assert!(out.status.success(), "destroy failed: {}", text(&out));
    }
    flotilla_tests::testbed::wait_for(TESTBED_DEADLINE, "rmi once no unit uses it", || {
        let out = flotctl(&runner, &["rmi", &image]);
        if out.status.success() {
            Ok(())
        } else {
            Err(Some(text(&out)))
        }
    })
    .unwrap();
    // Garbage collection: rmi --unused on node2 removes every image no unit there uses.
    flotilla_tests::testbed::wait_for(TESTBED_DEADLINE, "rmi --unused empties node2", || {
        let out = flotctl(&n2, &["rmi", "--unused"]);
        let left = flotctl(&n2, &["images", "--no-legend"]);
        if out.status.success() && text(&left).trim().is_empty() {
            Ok(())
        } else {
            Err(Some(format!("{}{}", text(&out), text(&left))))
        }
    })
    .unwrap();
    // The broken image's unit may have run there too (placement is the scheduler's).
    let bad = format!("{host}/bad:v1");
    flotilla_tests::testbed::wait_for(TESTBED_DEADLINE, "rmi of the broken image", || {
        let out = flotctl(&runner, &["rmi", &bad]);
        if out.status.success() || text(&out).contains("is not in this machine's store") {
            Ok(())
        } else {
            Err(Some(text(&out)))
        }
    })
    .unwrap();
    let out = flotctl(&runner, &["images", "--no-legend"]);
    assert_eq!(text(&out).trim(), "", "images after rmi");
}
