//! Applying a layer (a tar, plain, gzip or zstd) to a root file system, whiteouts included,
//! without ever writing outside it.
//!
//! Paths in the archive are relative to the root; `..` is refused. Directories on the way are
//! resolved inside the root: a symbolic link met on the way is followed as if the root were `/`
//! (an absolute target starts again at the root, `..` stops at it), so a layer cannot reach
//! outside through a link planted by an earlier layer. The last component is never followed: it
//! is replaced.

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};

/// Symbolic links followed while resolving one path, as Linux's own limit.
const MAX_LINK_HOPS: usize = 40;

/// A layer that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Reading the layer (or decompressing it) failed.
    #[error("reading layer {layer}: {source}")]
    Read {
        /// The blob.
        layer: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Writing into the root file system failed.
    #[error("unpacking {entry} into {path}: {source}")]
    Write {
        /// The archive entry.
        entry: String,
        /// The path written.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// An entry's path or link would leave the root.
    #[error("layer entry {entry} escapes the root file system ({why}): refusing the layer")]
    Escape {
        /// The archive entry.
        entry: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A path resolves through something that is not a directory.
    #[error("layer entry {entry}: {path} is not a directory")]
    NotADirectory {
        /// The archive entry.
        entry: String,
        /// The path met.
        path: PathBuf,
    },
    /// Too many symbolic links on the way.
    #[error("layer entry {entry}: more than {MAX_LINK_HOPS} symbolic links on the way")]
    LinkLoop {
        /// The archive entry.
        entry: String,
    },
    /// A hard link to nothing.
    #[error(
        "layer entry {entry} is a hard link to {target}, which does not exist or is a directory"
    )]
    BadHardLink {
        /// The archive entry.
        entry: String,
        /// The link's target.
        target: String,
    },
    /// An entry kind this unpacker does not handle (e.g. GNU sparse files).
    #[error("layer entry {entry} has unsupported tar entry type {kind:?}")]
    Unsupported {
        /// The archive entry.
        entry: String,
        /// The tar type byte.
        kind: u8,
    },
}

/// Applies the layer blob at `layer` onto `root`, an existing directory.
pub(crate) fn apply_layer(layer: &Path, root: &Path) -> Result<(), UnpackError> {
    let read_err = |source| UnpackError::Read {
        layer: layer.to_owned(),
        source,
    };
    let mut file = File::open(layer).map_err(read_err)?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic).map_err(read_err)?;
    file.rewind().map_err(read_err)?;
    let buffered = BufReader::with_capacity(256 * 1024, file);
    let reader: Box<dyn Read> = match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(
            ruzstd::decoding::StreamingDecoder::new(buffered)
                .map_err(|e| read_err(io::Error::new(io::ErrorKind::InvalidData, e)))?,
        ),
        _ => Box::new(buffered),
    };
    let mut archive = tar::Archive::new(reader);
    let mut written = HashSet::new();
    for entry in archive.entries().map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        apply_entry(entry, root, &mut written, layer)?;
    }
    Ok(())
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Splits an archive path into its names; `.` and empty names go, `..` is refused.
fn components<'a>(raw: &'a [u8], entry: &str) -> Result<Vec<&'a OsStr>, UnpackError> {
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(UnpackError::Escape {
                    entry: entry.to_owned(),
                    why: "a '..' in its path",
                });
            }
            name => out.push(OsStr::from_bytes(name)),
        }
    }
    Ok(out)
}

/// Resolves the directory `dirs` inside `root`, following links inside the root and creating
/// missing directories (0755, root-owned) when `create`. `None`: it does not exist.
fn resolve_dir(
    root: &Path,
    dirs: &[&OsStr],
    create: bool,
    entry: &str,
) -> Result<Option<PathBuf>, UnpackError> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut todo: Vec<OsString> = dirs.iter().rev().map(|c| c.to_os_string()).collect();
    let mut hops = 0;
    let path_of = |resolved: &[OsString]| {
        let mut p = root.to_path_buf();
        p.extend(resolved);
        p
    };
    while let Some(name) = todo.pop() {
        match name.as_bytes() {
            b"" | b"." => continue,
            b".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let mut next = path_of(&resolved);
        next.push(&name);
        match fs::symlink_metadata(&next) {
            Ok(md) if md.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return Err(UnpackError::LinkLoop {
                        entry: entry.to_owned(),
                    });
                }
                let target =
                    fs::read_link(&next).map_err(|source| write_err(entry, &next, source))?;
                let bytes = target.as_os_str().as_bytes();
                if bytes.starts_with(b"/") {
                    resolved.clear();
                }
                for c in bytes.split(|&b| b == b'/').rev() {
                    todo.push(OsStr::from_bytes(c).to_os_string());
                }
            }
            Ok(md) if md.is_dir() => resolved.push(name),
            Ok(_) => {
                return Err(UnpackError::NotADirectory {
                    entry: entry.to_owned(),
                    path: next,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&next)
                    .map_err(|source| write_err(entry, &next, source))?;
                resolved.push(name);
            }
            Err(source) => return Err(write_err(entry, &next, source)),
        }
    }
    Ok(Some(path_of(&resolved)))
}

fn write_err(entry: &str, path: &Path, source: io::Error) -> UnpackError {
    UnpackError::Write {
        entry: entry.to_owned(),
        path: path.to_owned(),
        source,
    }
}

/// Removes whatever is at `path` (a directory with everything in it); nothing there is fine.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn apply_entry<R: Read>(
    mut entry: tar::Entry<'_, R>,
    root: &Path,
    written: &mut HashSet<PathBuf>,
    layer: &Path,
) -> Result<(), UnpackError> {
    let raw = entry.path_bytes().into_owned();
    let name = String::from_utf8_lossy(&raw).into_owned();
    let parts = components(&raw, &name)?;
    let Some((&last, dirs)) = parts.split_last() else {
        return Ok(()); // the root itself: it keeps 0755 root:root
    };
    let last_bytes = last.as_bytes();

    // Whiteouts: `.wh..wh..opq` empties the directory of what lower layers put there;
    // `.wh.NAME` removes NAME.
    if last_bytes == b".wh..wh..opq" {
        let Some(dir) = resolve_dir(root, dirs, true, &name)? else {
            return Ok(());
        };
        let read = fs::read_dir(&dir).map_err(|e| write_err(&name, &dir, e))?;
        for child in read {
            let child = child.map_err(|e| write_err(&name, &dir, e))?.path();
            if !written.contains(&child) {
                remove_any(&child).map_err(|e| write_err(&name, &child, e))?;
            }
        }
        return Ok(());
    }
    if let Some(hidden) = last_bytes.strip_prefix(b".wh.") {
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(UnpackError::Escape {
                entry: name,
                why: "a whiteout of '.' or '..'",
            });
        }
        if let Some(dir) = resolve_dir(root, dirs, false, &name)? {
            let victim = dir.join(OsStr::from_bytes(hidden));
            remove_any(&victim).map_err(|e| write_err(&name, &victim, e))?;
        }
        return Ok(());
    }

    let dir = resolve_dir(root, dirs, true, &name)?.expect("created");
    let path = dir.join(last);
    let header = entry.header();
    let kind = header.entry_type();
    let mode = header.mode().map_err(|e| read_err(layer, e))? & 0o7777;
    let uid = header.uid().map_err(|e| read_err(layer, e))?;
    let gid = header.gid().map_err(|e| read_err(layer, e))?;
    let mtime = header.mtime().unwrap_or(0);
    let wr = |e| write_err(&name, &path, e);

    // Whatever was there goes, except a directory that stays a directory (it keeps its content).
    let existing = fs::symlink_metadata(&path).ok();
    if !(kind.is_dir() && existing.as_ref().is_some_and(|m| m.is_dir())) && existing.is_some() {
        remove_any(&path).map_err(wr)?;
    }

    let xattrs = xattrs_of(&mut entry).map_err(|e| read_err(layer, e))?;
    match kind {
        tar::EntryType::Directory => {
            if !path.is_dir() {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(wr)?;
            }
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(wr)?;
            io::copy(&mut entry, &mut file).map_err(|e| read_err(layer, e))?;
            file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime))
                .map_err(wr)?;
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| read_err(layer, io::Error::other("symlink without a target")))?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).map_err(wr)?;
        }
        tar::EntryType::Link => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| read_err(layer, io::Error::other("hard link without a target")))?
                .into_owned();
            let target_name = String::from_utf8_lossy(&target).into_owned();
            let tparts = components(&target, &name)?;
            let bad = || UnpackError::BadHardLink {
                entry: name.clone(),
                target: target_name.clone(),
            };
            let (&tlast, tdirs) = tparts.split_last().ok_or_else(bad)?;
            let tdir = resolve_dir(root, tdirs, false, &name)?.ok_or_else(bad)?;
            let source = tdir.join(tlast);
            match fs::symlink_metadata(&source) {
                Ok(md) if !md.is_dir() => {}
                _ => return Err(bad()),
            }
            fs::hard_link(&source, &path).map_err(wr)?;
            written.insert(path);
            return Ok(()); // the inode keeps its owner and mode
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            let (flag, dev) = match kind {
                tar::EntryType::Char => (SFlag::S_IFCHR, device(&entry, layer)?),
                tar::EntryType::Block => (SFlag::S_IFBLK, device(&entry, layer)?),
                _ => (SFlag::S_IFIFO, 0),
            };
            mknod(&path, flag, Mode::from_bits_truncate(0o600), dev)
                .map_err(|e| wr(io::Error::from(e)))?;
        }
        other => {
            return Err(UnpackError::Unsupported {
                entry: name,
                kind: other.as_byte(),
            });
        }
    }
    std::os::unix::fs::lchown(&path, Some(uid as u32), Some(gid as u32)).map_err(wr)?;
    if !kind.is_symlink() {
        // After chown, which clears set-id bits.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(wr)?;
    }
    for (key, value) in xattrs {
        set_xattr(&path, &key, &value).map_err(wr)?;
    }
    written.insert(path);
    Ok(())
}

fn read_err(layer: &Path, source: io::Error) -> UnpackError {
    UnpackError::Read {
        layer: layer.to_owned(),
        source,
    }
}

fn device<R: Read>(entry: &tar::Entry<'_, R>, layer: &Path) -> Result<u64, UnpackError> {
    let h = entry.header();
    let major = h
        .device_major()
        .map_err(|e| read_err(layer, e))?
        .unwrap_or(0);
    let minor = h
        .device_minor()
        .map_err(|e| read_err(layer, e))?
        .unwrap_or(0);
    Ok(makedev(major.into(), minor.into()))
}

/// The `SCHILY.xattr.*` PAX records of an entry (file capabilities, SELinux labels, ...).
fn xattrs_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(CString, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.")
                && let Ok(key) = CString::new(key)
            {
                out.push((key, ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

fn set_xattr(path: &Path, key: &CString, value: &[u8]) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both strings are NUL-terminated and live across the call; value is a valid slice.
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Creates the directories systemd's `RootDirectory=` mounts over (`proc dev sys tmp run`).
pub(crate) fn add_mount_points(root: &Path) -> io::Result<()> {
    for (dir, mode) in [
        ("proc", 0o555),
        ("dev", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("run", 0o755),
    ] {
        let path = root.join(dir);
        match fs::symlink_metadata(&path) {
            Ok(md) if md.is_dir() => continue,
            Ok(_) => remove_any(&path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::create_dir(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
