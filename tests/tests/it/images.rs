//! Images: built here, pushed with skopeo to a real `docker-registry` on loopback, pulled and
//! unpacked by flotilla-images, refused when the registry lies, run by systemd in a machine.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_images::{Credentials, LayerState, Progress, PullError, PullOptions, Puller, Store};
use flotilla_tests::registry::{
    self, CuttingProxy, Entry, Format, ImageSpec, Layer, Registry, Scratch,
};
use flotilla_tests::testbed::{Options, Testbed, wait_until};

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
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.path().join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(
            layout
                .path()
                .join("blobs/sha256")
                .join(&manifest_digest[7..]),
        )
        .unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let blob = registry.blob_file(&layer);
    let original = fs::read(&blob).unwrap();

    let mut corrupt = original.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    fs::write(&blob, &corrupt).unwrap();
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
