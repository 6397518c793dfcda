//! Layers built in memory and applied to a temporary root: whiteouts, links, devices, escapes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::*;

/// A tar being built, entry by entry.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_000_000);
        h.set_size(0);
        h
    }

    /// An entry whose name is written as given (even `..`, which the builder refuses).
    fn raw(mut self, mut h: tar::Header, name: &str, data: &[u8]) -> Layer {
        let bytes = name.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn dir(self, name: &str, mode: u32) -> Layer {
        self.raw(Layer::header(tar::EntryType::Directory, mode, 0), name, b"")
    }

    fn file(self, name: &str, mode: u32, uid: u64, data: &[u8]) -> Layer {
        self.raw(
            Layer::header(tar::EntryType::Regular, mode, uid),
            name,
            data,
        )
    }

    fn link(mut self, kind: tar::EntryType, name: &str, target: &str) -> Layer {
        let mut h = Layer::header(kind, 0o777, 0);
        h.set_link_name_literal(target).unwrap();
        self = self.raw(h, name, b"");
        self
    }

    fn device(self, kind: tar::EntryType, name: &str, major: u32, minor: u32) -> Layer {
        let mut h = Layer::header(kind, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.raw(h, name, b"")
    }

    fn write(self, dir: &Path, name: &str, compress: &str) -> std::path::PathBuf {
        let tar = self.0.into_inner().unwrap();
        let bytes = match compress {
            "gzip" => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&tar).unwrap();
                gz.finish().unwrap()
            }
            "zstd" => ruzstd::encoding::compress_to_vec(
                &tar[..],
                ruzstd::encoding::CompressionLevel::Fastest,
            ),
            _ => tar,
        };
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        path
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn applies_layers_with_whiteouts_links_and_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let base = Layer::new()
        .dir("bin/", 0o755)
        .file("bin/tool", 0o4755, 1000, b"#!tool")
        .link(tar::EntryType::Symlink, "bin/alias", "tool")
        .link(tar::EntryType::Link, "bin/hard", "bin/tool")
        .file("./etc/conf", 0o640, 0, b"a=1")
        .device(tar::EntryType::Char, "dev/null", 1, 3)
        .device(tar::EntryType::Fifo, "run/pipe", 0, 0)
        .dir("opq/", 0o750)
        .file("opq/old", 0o644, 0, b"old")
        .dir("opq/olddir/", 0o755)
        .file("gone", 0o644, 0, b"x")
        .dir("gonedir/", 0o755)
        .file("gonedir/inner", 0o644, 0, b"x")
        .file("replaced", 0o644, 0, b"file first")
        .write(tmp.path(), "base", "plain");
    // Entries of the same layer before the opaque marker stay (OCI: it hides lower layers only).
    let top = Layer::new()
        .file("opq/new", 0o600, 0, b"new")
        .file("opq/.wh..wh..opq", 0o644, 0, b"")
        .file(".wh.gone", 0o644, 0, b"")
        .file(".wh.gonedir", 0o644, 0, b"")
        .file(".wh.never-existed", 0o644, 0, b"")
        .dir("replaced/", 0o711)
        .file("etc/conf", 0o600, 5, b"a=2")
        .write(tmp.path(), "top", "gzip");
    let third = Layer::new()
        .file("zst/file", 0o644, 0, b"zstd")
        .write(tmp.path(), "third", "zstd");
    for layer in [&base, &top, &third] {
        apply_layer(layer, &root).unwrap();
    }
    add_mount_points(&root).unwrap();

    let tool = root.join("bin/tool");
    assert_eq!(fs::read(&tool).unwrap(), b"#!tool");
    assert_eq!(mode(&tool), 0o4755, "set-uid bit kept after chown");
    assert_eq!(fs::metadata(&tool).unwrap().uid(), 1000);
    assert_eq!(fs::metadata(&tool).unwrap().mtime(), 1_000_000);
    assert_eq!(
        fs::read_link(root.join("bin/alias")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        fs::metadata(root.join("bin/hard")).unwrap().ino(),
        fs::metadata(&tool).unwrap().ino()
    );
    assert_eq!(fs::read(root.join("etc/conf")).unwrap(), b"a=2");
    assert_eq!(mode(&root.join("etc/conf")), 0o600);
    assert_eq!(fs::metadata(root.join("etc/conf")).unwrap().gid(), 5);
    let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), makedev(1, 3));
    assert!(
        fs::symlink_metadata(root.join("run/pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let mut opq: Vec<_> = fs::read_dir(root.join("opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    opq.sort();
    assert_eq!(opq, ["new"]);
    assert_eq!(mode(&root.join("opq")), 0o750);
    assert!(!root.join("gone").exists());
    assert!(!root.join("gonedir").exists());
    assert!(root.join("replaced").is_dir());
    assert_eq!(mode(&root.join("replaced")), 0o711);
    assert_eq!(fs::read(root.join("zst/file")).unwrap(), b"zstd");
    for d in ["proc", "dev", "sys", "tmp", "run"] {
        assert!(root.join(d).is_dir(), "{d} missing");
    }
    assert_eq!(mode(&root.join("tmp")), 0o1777);
}

#[test]
fn refuses_dot_dot() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let layer = Layer::new()
        .file("a/../../evil", 0o644, 0, b"x")
        .write(tmp.path(), "l", "plain");
    let err = apply_layer(&layer, &root).unwrap_err();
    assert!(matches!(err, UnpackError::Escape { .. }), "{err}");
    assert!(!tmp.path().join("evil").exists());
    let layer = Layer::new()
        .file("x", 0o644, 0, b"x")
        .link(tar::EntryType::Link, "h", "../outside")
        .write(tmp.path(), "h", "plain");
    let err = apply_layer(&layer, &root).unwrap_err();
    assert_eq!(
        err.to_string(),
        "layer entry h escapes the root file system (a '..' in its path): refusing the layer"
    );
    for name in ["sub/.wh...", ".wh...", ".wh..", "sub/.wh."] {
        let layer = Layer::new()
            .dir("sub/", 0o755)
            .file(name, 0o644, 0, b"")
            .write(tmp.path(), "wh", "plain");
        let err = apply_layer(&layer, &root).unwrap_err();
        assert!(matches!(err, UnpackError::Escape { .. }), "{name}: {err}");
        assert!(
            root.join("sub").is_dir() && tmp.path().join("l").exists(),
            "{name}"
        );
    }
}

#[test]
fn links_are_resolved_inside_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    // A link planted by one layer, written through by the next: it must stay in the root.
    let plant = Layer::new()
        .link(tar::EntryType::Symlink, "abs", "/")
        .link(tar::EntryType::Symlink, "up", "../../../..")
        .link(tar::EntryType::Symlink, "out", outside.to_str().unwrap())
        .link(tar::EntryType::Symlink, "loop", "loop")
        .write(tmp.path(), "plant", "plain");
    apply_layer(&plant, &root).unwrap();
    let through = Layer::new()
        .file("abs/via-abs", 0o644, 0, b"1")
        .file("up/via-up", 0o644, 0, b"2")
        .file("out/via-out", 0o644, 0, b"3")
        .file(".wh.out", 0o644, 0, b"")
        .write(tmp.path(), "through", "plain");
    apply_layer(&through, &root).unwrap();
    assert_eq!(fs::read(root.join("via-abs")).unwrap(), b"1");
    assert_eq!(fs::read(root.join("via-up")).unwrap(), b"2");
    let inside = root
        .join(outside.strip_prefix("/").unwrap())
        .join("via-out");
    assert_eq!(fs::read(inside).unwrap(), b"3");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote outside the root"
    );
    assert!(
        tmp.path().join("outside").exists(),
        "whiteout of a link removed its target"
    );
    let looping = Layer::new()
        .file("loop/x", 0o644, 0, b"")
        .write(tmp.path(), "loop", "plain");
    let err = apply_layer(&looping, &root).unwrap_err();
    assert!(matches!(err, UnpackError::LinkLoop { .. }), "{err}");
}

#[test]
fn refuses_garbage() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let path = tmp.path().join("bad");
    fs::write(&path, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
    let err = apply_layer(&path, &root).unwrap_err();
    assert!(err.to_string().starts_with("reading layer "), "{err}");
}
