//! The raft log's files: an append-only write-ahead log in numbered segments under
//! `data_dir/raft-log/`, written by one thread ([`Writer`]) and read back by `pread`.
//!
//! # Format
//!
//! A segment `{seq:016x}.wal` is a run of records, each
//!
//! ```text
//! len: u32 LE (of kind + body) | xxh64(kind + body): u64 LE | kind: u8 | body
//! ```
//!
//! The first record of every segment is [`Kind::Format`] (`flotilla-wal-1`), followed by the
//! log's state when the segment was started (vote, committed id, purge point), then what the
//! log did, in order: entries, votes, committed ids, truncations, purges. So every segment
//! carries the state the ones before it established, and a segment whose entries are all
//! purged can be deleted with the segments before it. A zero length ends a segment (its rest
//! is preallocated zeros). An entry's body is its log id's length (one byte), the log id and
//! the entry (postcard both).
//!
//! # Durability
//!
//! A batch of records is one `pwrite` at the end of the current segment and one `fdatasync`.
//! Space is reserved ahead with `fallocate` (1 MiB at a time), so an append rarely changes
//! the file's size; a new segment's directory entry is made durable (`fsync` of the
//! directory) before anything written to it counts. A segment is started when a batch would
//! take the current one over 64 MiB (a batch is never split: a batch larger than that gets a
//! segment of its own).
//!
//! # Replay
//!
//! Opening reads every segment in order. In the last segment, the first record that is torn
//! (short, or its hash does not match) ends the log: it was being written when the machine
//! stopped, so its batch was never fsynced or acknowledged; what follows it is cut off, so a
//! later record cannot be read after it. A torn record anywhere else is corruption, and
//! opening fails naming the file and offset (every batch is fsynced before the next segment
//! is started, so only the last one can end in a torn write). Limit: a record damaged in place
//! in the last segment (a bad sector, not a crash) looks like a torn write, and the log is cut
//! there; the member then gets those entries from the leader again, as any follower that is
//! behind (it loses them for good only if a quorum loses them at once).
//!
//! # Why not a database
//!
//! The first log store was a redb table. Committing one small entry wrote about 8 pages
//! (34 KB, in 8 `pwrite` calls) and its `fdatasync` took 315 µs at the median on the CI
//! machine's disk, where `fdatasync` of one appended record takes 130 µs; its writer thread
//! used about 240 µs of CPU per commit. A log is only ever appended to, cut at its end, and
//! purged at its start: it needs none of a B-tree's work.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{LogId, Vote};

use super::NodeId;

/// Segments are started once the current one would grow past this.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;
/// Space reserved ahead at the end of the current segment.
const PREALLOCATE_BYTES: u64 = 1 << 20;
/// `len` + hash + kind.
const HEADER_BYTES: usize = 4 + 8 + 1;
/// The body of every segment's first record.
const FORMAT: &[u8] = b"flotilla-wal-1";
/// The hash's seed.
const SEED: u64 = 0x666c_6f74_696c_6c61;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Format = 1,
    Entry = 2,
    Vote = 3,
    Committed = 4,
    Truncate = 5,
    Purge = 6,
}

impl Kind {
    fn of(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Format,
            2 => Kind::Entry,
            3 => Kind::Vote,
            4 => Kind::Committed,
            5 => Kind::Truncate,
            6 => Kind::Purge,
            _ => return None,
        })
    }
}

/// A record to write.
#[derive(Debug)]
pub(crate) enum Rec<'a> {
    /// An entry (postcard), which replaces every entry from its index on.
    Entry(LogId<NodeId>, &'a [u8]),
    /// The vote.
    Vote(Vote<NodeId>),
    /// The last committed log id openraft reported.
    Committed(Option<LogId<NodeId>>),
    /// Removes the entries from this index on.
    Truncate(u64),
    /// Removes the entries up to this one (a snapshot covers them).
    Purge(LogId<NodeId>),
}

/// Where an entry's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    /// The segment.
    pub(crate) seg: u64,
    /// The offset of the entry's bytes in it.
    pub(crate) off: u64,
    /// Their length.
    pub(crate) len: u32,
}

/// Errors of the log's files.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A system call on a file failed.
    #[error("{source} ({what} {})", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Another process has the log open.
    #[error("{} is in use by another process (another flotillad with this data_dir?)", .0.display())]
    Locked(PathBuf),
    /// A segment holds something that is not a record of this format.
    #[error("{} is corrupt at offset {offset}: {why}", path.display())]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What is wrong.
        why: String,
    },
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The log as replayed from its segments.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    /// The entries not purged, by index.
    pub(crate) entries: BTreeMap<u64, (LogId<NodeId>, Loc)>,
    /// The last vote saved.
    pub(crate) vote: Option<Vote<NodeId>>,
    /// The last committed log id saved.
    pub(crate) committed: Option<LogId<NodeId>>,
    /// The last purge.
    pub(crate) purged: Option<LogId<NodeId>>,
    /// Bytes of a torn write cut off the end of the last segment.
    pub(crate) torn_bytes: u64,
}

impl Replayed {
    fn apply(&mut self, kind: Kind, body: &[u8], at: Loc, path: &Path) -> Result<(), Error> {
        let corrupt = |why: String| Error::Corrupt {
            path: path.to_path_buf(),
            offset: at.off,
            why,
        };
        let decode_err = |e: postcard::Error| corrupt(format!("{kind:?} record: {e}"));
        match kind {
            Kind::Format => return Err(corrupt("a second format record".into())),
            Kind::Entry => {
                let (&n, rest) = body
                    .split_first()
                    .ok_or_else(|| corrupt("an empty entry record".into()))?;
                let n = usize::from(n);
                if rest.len() < n {
                    return Err(corrupt("an entry record shorter than its log id".into()));
                }
                let id: LogId<NodeId> = postcard::from_bytes(&rest[..n]).map_err(decode_err)?;
                self.entries.split_off(&id.index);
                let offset = 1 + n as u64;
                let loc = Loc {
                    seg: at.seg,
                    off: at.off + offset,
                    len: at.len - offset as u32,
                };
                self.entries.insert(id.index, (id, loc));
            }
            Kind::Vote => self.vote = Some(postcard::from_bytes(body).map_err(decode_err)?),
            Kind::Committed => self.committed = postcard::from_bytes(body).map_err(decode_err)?,
            Kind::Truncate => {
                let from: u64 = postcard::from_bytes(body).map_err(decode_err)?;
                self.entries.split_off(&from);
            }
            Kind::Purge => {
                let id: LogId<NodeId> = postcard::from_bytes(body).map_err(decode_err)?;
                self.entries = self.entries.split_off(&(id.index + 1));
                if self.purged.is_none_or(|p| p.index < id.index) {
                    self.purged = Some(id);
                }
            }
        }
        Ok(())
    }
}

/// One record read from a segment: its kind, and its body's offset and bytes.
type Parsed<'a> = (Kind, usize, &'a [u8]);

/// Splits a segment's bytes into records. Returns them, where the valid part ends, and
/// whether it ends in something other than zeros or the end (a torn or corrupt record).
fn parse(bytes: &[u8]) -> (Vec<Parsed<'_>>, usize, Option<String>) {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let rest = &bytes[at..];
        if rest.len() < HEADER_BYTES {
            let why = rest
                .iter()
                .any(|b| *b != 0)
                .then(|| "a record header cut short".to_string());
            return (out, at, why);
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            let why = rest
                .iter()
                .any(|b| *b != 0)
                .then(|| "data after the end marker".to_string());
            return (out, at, why);
        }
        let hash = u64::from_le_bytes(rest[4..12].try_into().expect("8 bytes"));
        let Some(record) = rest.get(12..12 + len) else {
            return (out, at, Some(format!("a record of {len} bytes cut short")));
        };
        if twox_hash::XxHash64::oneshot(SEED, record) != hash {
            return (out, at, Some("a record whose hash does not match".into()));
        }
        let Some(kind) = Kind::of(record[0]) else {
            return (
                out,
                at,
                Some(format!("an unknown record kind {}", record[0])),
            );
        };
        out.push((kind, at + HEADER_BYTES, &record[1..]));
        at += 12 + len;
    }
}

fn push(buf: &mut Vec<u8>, kind: Kind, parts: &[&[u8]]) -> usize {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let start = buf.len();
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 8]);
    buf.push(kind as u8);
    for p in parts {
        buf.extend_from_slice(p);
    }
    let hash = twox_hash::XxHash64::oneshot(SEED, &buf[start + 12..]);
    buf[start + 4..start + 12].copy_from_slice(&hash.to_le_bytes());
    start + HEADER_BYTES
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("log ids and votes encode")
}

/// Appends `rec` to `buf`; for an entry, returns the offset of its bytes.
fn push_rec(buf: &mut Vec<u8>, rec: &Rec<'_>) -> Option<usize> {
    match rec {
        Rec::Entry(id, bytes) => {
            let id = encode(id);
            let n = u8::try_from(id.len()).expect("a log id is under 256 bytes");
            let body = push(buf, Kind::Entry, &[&[n], &id, bytes]);
            return Some(body + 1 + id.len());
        }
        Rec::Vote(v) => push(buf, Kind::Vote, &[&encode(v)]),
        Rec::Committed(c) => push(buf, Kind::Committed, &[&encode(c)]),
        Rec::Truncate(from) => push(buf, Kind::Truncate, &[&encode(from)]),
        Rec::Purge(id) => push(buf, Kind::Purge, &[&encode(id)]),
    };
    None
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync", dir))
}

/// What a durable [`Writer::write`] did.
#[derive(Debug)]
pub(crate) struct Written {
    /// Where each entry's bytes are, in the order of the records.
    pub(crate) entries: Vec<Loc>,
    /// A segment the batch started.
    pub(crate) new_segment: Option<(u64, Arc<File>)>,
}

/// The writing end: the current segment, and what a new segment must start with.
#[derive(Debug)]
pub(crate) struct Writer {
    /// Held while the writer lives: one process writes the log.
    _lock: nix::fcntl::Flock<File>,
    dir: PathBuf,
    seq: u64,
    /// The current segment (`None` only while [`open`] starts the first one).
    file: Option<Arc<File>>,
    /// Where the next record goes.
    offset: u64,
    /// The file's length (what is written and what is reserved).
    allocated: u64,
    /// Whether `fallocate` works here.
    preallocate: bool,
    /// Per segment, the highest entry index written to it.
    highest: BTreeMap<u64, Option<u64>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
}

/// Every segment's file, by sequence number.
pub(crate) type Files = BTreeMap<u64, Arc<File>>;

/// Opens the log in `dir` (creating it): replays every segment, cuts a torn write off the
/// last one. Returns the replayed log, every segment's file (for reads) and the writer.
pub(crate) fn open(dir: &Path) -> Result<(Replayed, Files, Writer), Error> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
    }
    let lock_path = dir.join("LOCK");
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io_error("open", &lock_path))?;
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => Error::Locked(dir.to_path_buf()),
            e => Error::Io {
                what: "lock",
                path: lock_path.clone(),
                source: e.into(),
            },
        },
    )?;
    let mut seqs = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_error("read", dir))? {
        let e = e.map_err(io_error("read", dir))?;
        let name = e.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .filter(|n| n.len() == 16)
            .and_then(|n| u64::from_str_radix(n, 16).ok())
        else {
            continue;
        };
        seqs.push(seq);
    }
    seqs.sort_unstable();
    let mut log = Replayed::default();
    let mut files = BTreeMap::new();
    let mut highest = BTreeMap::new();
    let mut end = 0;
    let mut end_len = 0;
    for (i, &seq) in seqs.iter().enumerate() {
        let last = i + 1 == seqs.len();
        let path = dir.join(segment_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error("open", &path))?;
        let mut bytes = Vec::new();
        (&file)
            .read_to_end(&mut bytes)
            .map_err(io_error("read", &path))?;
        let (records, valid, bad) = parse(&bytes);
        if let Some(why) = &bad
            && !last
        {
            return Err(Error::Corrupt {
                path,
                offset: valid as u64,
                why: why.clone(),
            });
        }
        let mut records = records.into_iter();
        match records.next() {
            Some((Kind::Format, _, body)) if body == FORMAT => {}
            Some((Kind::Format, off, body)) => {
                return Err(Error::Corrupt {
                    path,
                    offset: off as u64,
                    why: format!(
                        "format {:?}, not {:?} (a newer flotilla's log?)",
                        String::from_utf8_lossy(body),
                        String::from_utf8_lossy(FORMAT)
                    ),
                });
            }
            Some((_, off, _)) => {
                return Err(Error::Corrupt {
                    path,
                    offset: off as u64,
                    why: "no format record at the start".into(),
                });
            }
            None if last => {}
            None => {
                return Err(Error::Corrupt {
                    path,
                    offset: 0,
                    why: "an empty segment before the last one".into(),
                });
            }
        }
        let mut top = None;
        for (kind, off, body) in records {
            let at = Loc {
                seg: seq,
                off: off as u64,
                len: body.len() as u32,
            };
            log.apply(kind, body, at, &path)?;
            if kind == Kind::Entry {
                top = log.entries.keys().next_back().copied().max(top);
            }
        }
        highest.insert(seq, top);
        if last {
            end = valid as u64;
            end_len = bytes.len() as u64;
            if bad.is_some() || valid == 0 {
                log.torn_bytes = (bytes.len() - valid) as u64;
                file.set_len(valid as u64)
                    .map_err(io_error("truncate", &path))?;
                file.sync_all().map_err(io_error("fsync", &path))?;
                end_len = end;
            }
        }
        files.insert(seq, Arc::new(file));
    }
    if let Some(entries) = check_contiguous(&log) {
        return Err(Error::Corrupt {
            path: dir.to_path_buf(),
            offset: 0,
            why: entries,
        });
    }
    let mut writer = Writer {
        _lock: lock,
        dir: dir.to_path_buf(),
        seq: 0,
        file: None,
        offset: 0,
        allocated: 0,
        preallocate: true,
        highest,
        vote: log.vote,
        committed: log.committed,
        purged: log.purged,
    };
    match seqs.last() {
        Some(&seq) if end > 0 => {
            writer.seq = seq;
            writer.file = Some(files[&seq].clone());
            writer.offset = end;
            writer.allocated = end.max(end_len);
        }
        // No segment, or a last one without a single whole record (it was being started):
        // (re)start it.
        last => {
            let seq = last.copied().unwrap_or(1);
            let (file, header) = writer.start_segment(seq)?;
            file.write_all_at(&header, 0)
                .and_then(|()| file.sync_data())
                .map_err(io_error("write", &writer.path()))?;
            sync_dir(dir)?;
            writer.offset = header.len() as u64;
            writer.allocated = writer.offset;
            files.insert(seq, file);
        }
    }
    Ok((log, files, writer))
}

/// Why the replayed entries are not one run without gaps, if they are not.
fn check_contiguous(log: &Replayed) -> Option<String> {
    let mut expected = log.purged.map(|p| p.index + 1);
    for &index in log.entries.keys() {
        if let Some(e) = expected
            && e != index
        {
            return Some(format!(
                "the log has no entry {e} but has entry {index} (entries lost)"
            ));
        }
        expected = Some(index + 1);
    }
    None
}

impl Writer {
    /// Creates segment `seq` as the current one; returns it and its first records (the
    /// format and the log's state), to be written with the next batch.
    fn start_segment(&mut self, seq: u64) -> Result<(Arc<File>, Vec<u8>), Error> {
        let path = self.dir.join(segment_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_error("create", &path))?;
        let mut header = Vec::new();
        push(&mut header, Kind::Format, &[FORMAT]);
        if let Some(v) = self.vote {
            push_rec(&mut header, &Rec::Vote(v));
        }
        if self.committed.is_some() {
            push_rec(&mut header, &Rec::Committed(self.committed));
        }
        if let Some(p) = self.purged {
            push_rec(&mut header, &Rec::Purge(p));
        }
        let file = Arc::new(file);
        self.seq = seq;
        self.file = Some(file.clone());
        self.offset = 0;
        self.allocated = 0;
        self.highest.insert(seq, None);
        Ok((file, header))
    }

    fn current(&self) -> &File {
        self.file.as_deref().expect("open starts a segment")
    }

    /// The path of the segment a write goes to.
    fn path(&self) -> PathBuf {
        self.dir.join(segment_name(self.seq))
    }

    /// Reserves space up to `need` bytes of the current segment.
    fn reserve(&mut self, need: u64) -> Result<(), Error> {
        if !self.preallocate || need <= self.allocated {
            return Ok(());
        }
        let ahead = (self.allocated + PREALLOCATE_BYTES).min(SEGMENT_BYTES.max(need));
        let mut target = need.max(ahead);
        loop {
            let r = nix::fcntl::fallocate(
                self.current(),
                nix::fcntl::FallocateFlags::empty(),
                self.allocated as i64,
                (target - self.allocated) as i64,
            );
            match r {
                Ok(()) => {
                    self.allocated = target;
                    return Ok(());
                }
                Err(nix::errno::Errno::EOPNOTSUPP) => {
                    self.preallocate = false;
                    return Ok(());
                }
                // Not room for the reserve: room for what is written now is enough.
                Err(nix::errno::Errno::ENOSPC) if target > need => target = need,
                Err(e) => {
                    return Err(Error::Io {
                        what: "fallocate",
                        path: self.path(),
                        source: e.into(),
                    });
                }
            }
        }
    }

    /// Writes `recs` durably, in order, in one `pwrite` and one `fdatasync` (starting a
    /// segment first if they would take the current one past its size).
    pub(crate) fn write(&mut self, recs: &[Rec<'_>]) -> Result<Written, Error> {
        let mut buf = Vec::new();
        let mut entry_offsets = Vec::new();
        for r in recs {
            if let Some(off) = push_rec(&mut buf, r) {
                entry_offsets.push(off);
            }
        }
        let mut new_segment = None;
        let mut header = Vec::new();
        if self.offset + buf.len() as u64 > SEGMENT_BYTES {
            let (file, h) = self.start_segment(self.seq + 1)?;
            new_segment = Some((self.seq, file));
            header = h;
        }
        let start = self.offset + header.len() as u64;
        self.reserve(start + buf.len() as u64)?;
        let file = self.current();
        if !header.is_empty() {
            file.write_all_at(&header, 0)
                .map_err(io_error("write", &self.path()))?;
        }
        file.write_all_at(&buf, start)
            .map_err(io_error("write", &self.path()))?;
        file.sync_data()
            .map_err(io_error("fdatasync", &self.path()))?;
        if new_segment.is_some() {
            sync_dir(&self.dir)?;
        }
        self.offset = start + buf.len() as u64;
        self.allocated = self.allocated.max(self.offset);
        let mut entries = Vec::with_capacity(entry_offsets.len());
        let mut offsets = entry_offsets.into_iter();
        for r in recs {
            match r {
                Rec::Entry(id, bytes) => {
                    let off = offsets.next().expect("one offset per entry");
                    entries.push(Loc {
                        seg: self.seq,
                        off: start + off as u64,
                        len: bytes.len() as u32,
                    });
                    let top = self.highest.entry(self.seq).or_default();
                    *top = (*top).max(Some(id.index));
                }
                Rec::Vote(v) => self.vote = Some(*v),
                Rec::Committed(c) => self.committed = *c,
                Rec::Truncate(_) => {}
                Rec::Purge(p) => {
                    if self.purged.is_none_or(|q| q.index < p.index) {
                        self.purged = Some(*p);
                    }
                }
            }
        }
        Ok(Written {
            entries,
            new_segment,
        })
    }

    /// Deletes the oldest segments (never the current one) while every entry in them is
    /// purged; returns the segments deleted. A segment that cannot be deleted is kept (and
    /// logged): replaying it again is harmless.
    pub(crate) fn remove_purged(&mut self) -> Vec<u64> {
        let Some(purged) = self.purged else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        while let Some((&seq, &top)) = self.highest.first_key_value() {
            if seq >= self.seq || top.is_some_and(|t| t > purged.index) {
                break;
            }
            let path = self.dir.join(segment_name(seq));
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(
                    "cannot remove the purged raft log segment {}: {e}",
                    path.display()
                );
                break;
            }
            self.highest.remove(&seq);
            removed.push(seq);
        }
        removed
    }
}

/// Reads the entry bytes at `loc` of `file`.
pub(crate) fn read(file: &File, loc: Loc) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; loc.len as usize];
    file.read_exact_at(&mut buf, loc.off)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry_bytes(index: u64) -> Vec<u8> {
        format!("entry {index}").into_bytes()
    }

    fn append(w: &mut Writer, term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Loc> {
        let bytes: Vec<_> = range.clone().map(entry_bytes).collect();
        let recs: Vec<_> = range
            .zip(&bytes)
            .map(|(i, b)| Rec::Entry(id(term, i), b))
            .collect();
        w.write(&recs).expect("writes").entries
    }

    fn reopen(dir: &Path) -> (Replayed, Files, Writer) {
        open(dir).expect("opens")
    }

    fn indexes(log: &Replayed) -> Vec<u64> {
        log.entries.keys().copied().collect()
    }

    #[test]
    fn entries_votes_truncations_and_purges_replay() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, _, mut w) = reopen(dir.path());
        assert!(log.entries.is_empty() && log.vote.is_none());
        let locs = append(&mut w, 1, 1..=5);
        let vote = Vote::new(2, 7);
        w.write(&[Rec::Vote(vote), Rec::Committed(Some(id(1, 3)))])
            .expect("writes");
        w.write(&[Rec::Truncate(4)]).expect("truncates");
        append(&mut w, 2, 4..=6);
        w.write(&[Rec::Purge(id(1, 2))]).expect("purges");
        drop(w);

        let (log, files, _) = reopen(dir.path());
        assert_eq!(indexes(&log), [3, 4, 5, 6]);
        assert_eq!(log.entries[&3].0, id(1, 3));
        assert_eq!(log.entries[&4].0, id(2, 4));
        assert_eq!(log.vote, Some(vote));
        assert_eq!(log.committed, Some(id(1, 3)));
        assert_eq!(log.purged, Some(id(1, 2)));
        assert_eq!(log.torn_bytes, 0);
        let (_, loc) = log.entries[&3];
        assert_eq!(loc, locs[2]);
        assert_eq!(read(&files[&loc.seg], loc).expect("reads"), entry_bytes(3));
        let (_, loc) = log.entries[&6];
        assert_eq!(read(&files[&loc.seg], loc).expect("reads"), entry_bytes(6));
    }

    #[test]
    fn an_entry_replaces_the_entries_from_its_index_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_, _, mut w) = reopen(dir.path());
        append(&mut w, 1, 1..=5);
        append(&mut w, 2, 3..=3);
        drop(w);
        let (log, _, _) = reopen(dir.path());
        assert_eq!(indexes(&log), [1, 2, 3]);
        assert_eq!(log.entries[&3].0, id(2, 3));
    }

    #[test]
    fn a_torn_write_at_the_end_is_cut_off_and_the_log_goes_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_, _, mut w) = reopen(dir.path());
        append(&mut w, 1, 1..=3);
        let path = w.path();
        let good = w.offset;
        append(&mut w, 1, 4..=4);
        drop(w);
        // The last record half written, and a stale but whole record after it: it must not
        // be read once the torn one is gone.
        let f = OpenOptions::new().write(true).open(&path).expect("opens");
        let mut later = Vec::new();
        push_rec(&mut later, &Rec::Entry(id(1, 9), b"stale"));
        f.write_all_at(&[0xff; 7], good + 5).expect("tears");
        f.write_all_at(&later, good + 200).expect("writes");
        drop(f);

        let (log, _, mut w) = reopen(dir.path());
        assert_eq!(indexes(&log), [1, 2, 3]);
        assert!(log.torn_bytes > 0);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), good);
        append(&mut w, 1, 4..=5);
        drop(w);
        let (log, files, _) = reopen(dir.path());
        assert_eq!(indexes(&log), [1, 2, 3, 4, 5]);
        let (_, loc) = log.entries[&5];
        assert_eq!(read(&files[&loc.seg], loc).expect("reads"), entry_bytes(5));
    }

    #[test]
    fn corruption_before_the_last_segment_is_an_error_that_names_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_, _, mut w) = reopen(dir.path());
        append(&mut w, 1, 1..=3);
        let first = w.path();
        let (file, header) = w.start_segment(2).expect("starts");
        file.write_all_at(&header, 0).expect("writes");
        w.offset = header.len() as u64;
        append(&mut w, 1, 4..=4);
        drop(w);
        let f = OpenOptions::new().write(true).open(&first).expect("opens");
        f.write_all_at(&[0xaa], 30).expect("corrupts");
        drop(f);
        let e = open(dir.path()).expect_err("refuses");
        let text = e.to_string();
        assert!(text.contains("0000000000000001.wal is corrupt"), "{text}");
    }

    #[test]
    fn segments_roll_over_and_purged_ones_are_deleted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_, _, mut w) = reopen(dir.path());
        w.write(&[Rec::Vote(Vote::new(3, 1))]).expect("votes");
        let big = vec![7u8; (SEGMENT_BYTES / 3) as usize];
        for i in 1..=7u64 {
            w.write(&[Rec::Entry(id(1, i), &big)]).expect("writes");
        }
        assert!(w.seq >= 3, "segment {}", w.seq);
        w.write(&[Rec::Purge(id(1, 5))]).expect("purges");
        let removed = w.remove_purged();
        assert!(!removed.is_empty());
        assert!(!removed.contains(&w.seq));
        drop(w);
        let (log, files, _) = reopen(dir.path());
        assert_eq!(indexes(&log), [6, 7]);
        assert_eq!(
            log.vote,
            Some(Vote::new(3, 1)),
            "carried into every segment"
        );
        assert_eq!(log.purged, Some(id(1, 5)));
        for r in removed {
            assert!(!files.contains_key(&r));
        }
        let (_, loc) = log.entries[&7];
        assert_eq!(read(&files[&loc.seg], loc).expect("reads"), big);
    }

    #[test]
    fn parse_stops_at_zeros_and_reports_garbage() {
        let mut buf = Vec::new();
        push(&mut buf, Kind::Format, &[FORMAT]);
        let end = buf.len();
        buf.extend_from_slice(&[0; 64]);
        let (recs, valid, bad) = parse(&buf);
        assert_eq!((recs.len(), valid, bad), (1, end, None));
        buf[end + 20] = 1;
        let (_, valid, bad) = parse(&buf);
        assert_eq!(valid, end);
        assert!(bad.is_some());
    }
}
