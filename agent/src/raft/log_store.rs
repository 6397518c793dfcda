//! The durable Raft log and vote, in an append-only write-ahead log under
//! `data_dir/raft-log/` ([`wal`](super::wal)).
//!
//! # Design
//!
//! One writer thread owns the files. `append` puts the entries in the in-memory index (so
//! they are readable at once, as openraft requires) and queues them for the writer; the
//! writer takes everything queued meanwhile into one batch, written with one `pwrite` and
//! made durable with one `fdatasync` (group commit: one fsync serves every append that arrived
//! while the previous one ran). Votes, truncation and purges go through the same queue, in
//! order, and their callers wait for the fsync. The index holds every entry's log id, and its
//! bytes until they are on disk; after that, where they are in which segment (reads are
//! `pread`s of the page cache).
//!
//! # Durability is tracked here, not by openraft's flush callback
//!
//! openraft 0.9 waits for an append's flush callback inside its core task, before it sends the
//! entries to the followers and before it handles anything else: the leader's fsync and the
//! followers' would run one after the other, and one append at a time. So `append` reports the
//! entries flushed at once, and what is really on disk is published as [`Durable`], which the
//! three places that need durability wait for:
//!
//! - the state machine applies an entry only once it is durable here
//!   ([`StateMachine::gate_on`](super::state_machine::StateMachine::gate_on)): nothing is
//!   applied, read or acknowledged before it is fsynced on the leader and (by the next rule) on
//!   enough followers for a quorum;
//! - a follower answers an `AppendEntries` successfully only once the entries it matched are
//!   durable here (`peer.rs`), so the leader counts only fsynced followers;
//! - the leader never tells followers a commit index beyond its own durable log
//!   ([`network`](super::network)), so a follower never applies an entry the leader could
//!   still lose.
//!
//! So the leader's fsync overlaps the replication round trip, as in etcd, and an acknowledged
//! write is fsynced on a quorum and survives `kill -9` of any member.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use tokio::sync::{oneshot, watch};

use super::wal::{self, Loc, Rec};
use super::{NodeId, TypeConfig};

/// The log's directory under `data_dir`.
const DIR: &str = "raft-log";
/// Where flotilla before 0.1's write-ahead log kept its log (a redb database).
const LEGACY: &str = "raft-log.redb";

/// Errors opening the log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The log's files could not be read or set up.
    #[error("cannot open the raft log: {0}")]
    Open(#[from] wal::Error),
    /// The data directory holds a log of an earlier format.
    #[error(
        "{} is a raft log in the format of an earlier flotilla (a redb database), which this \
         version does not read; its log is {}/. Remove this member's data directory and let it \
         join the cluster again (`flotctl member remove`, then `[cluster] join`): it catches up \
         from the others",
        .0.display(),
        .0.with_file_name(DIR).display()
    )]
    Legacy(PathBuf),
    /// The writer thread could not be started.
    #[error("cannot start the raft log writer: {0}")]
    Thread(std::io::Error),
    /// The log could not be made durable: the writer failed (the cause is its error) or
    /// stopped.
    #[error("the raft log was not made durable up to index {index}: {cause}")]
    Stopped {
        /// The index waited for.
        index: u64,
        /// The writer's error, or that it stopped.
        cause: String,
    },
    /// The log was not durable up to the index in time.
    #[error("raft log index {0} was not durable within {1:?}")]
    Timeout(u64, Duration),
}

/// What the writer has committed to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct OnDisk {
    /// Every entry up to this index is durable (`None`: no entry is).
    index: Option<u64>,
    /// The id of the entry at `index`, when known (unknown right after a truncation).
    last: Option<LogId<NodeId>>,
    /// The writer failed: nothing more becomes durable.
    failed: bool,
}

/// How far this member's log is on disk; cloned into the state machine, the peer server and
/// the network client.
#[derive(Clone)]
pub(crate) struct Durable {
    rx: watch::Receiver<OnDisk>,
    truncations: Arc<AtomicU64>,
    /// The writer's error, set once before it publishes `failed`.
    failure: Arc<OnceLock<String>>,
}

impl Durable {
    /// The id of the last durable entry, when known.
    pub(crate) fn last(&self) -> Option<LogId<NodeId>> {
        self.rx.borrow().last
    }

    /// How many truncations this log has seen: an answer that waited for durability is only
    /// true if no truncation replaced the entries meanwhile.
    pub(crate) fn truncations(&self) -> u64 {
        self.truncations.load(Ordering::SeqCst)
    }

    /// Waits until every entry up to `index` is durable, at most `timeout`.
    pub(crate) async fn wait(&self, index: u64, timeout: Duration) -> Result<(), Error> {
        tokio::time::timeout(timeout, self.wait_long(index))
            .await
            .map_err(|_| Error::Timeout(index, timeout))?
    }

    /// Waits until every entry up to `index` is durable, however long the disk takes.
    pub(crate) async fn wait_long(&self, index: u64) -> Result<(), Error> {
        let mut rx = self.rx.clone();
        let d = *rx
            .wait_for(|d| d.failed || d.index.is_some_and(|i| i >= index))
            .await
            .map_err(|_| self.stopped(index))?;
        if d.failed {
            Err(self.stopped(index))
        } else {
            Ok(())
        }
    }

    /// Why nothing more becomes durable: the writer's error, or that it stopped.
    fn cause(&self) -> String {
        self.failure
            .get()
            .cloned()
            .unwrap_or_else(|| "the raft log writer stopped".to_owned())
    }

    fn stopped(&self, index: u64) -> Error {
        Error::Stopped {
            index,
            cause: self.cause(),
        }
    }
}

type Reply = oneshot::Sender<Result<(), String>>;

/// Work for the writer thread.
enum Op {
    /// Entries `(id, sequence, bytes)` to store.
    Append(Vec<(LogId<NodeId>, u64, Arc<[u8]>)>),
    /// A vote to store.
    Vote(Vote<NodeId>, Reply),
    /// Removes the entries from this index on.
    Truncate(u64, Reply),
    /// Removes the entries up to this one, which a durable snapshot covers: the log counts as
    /// durable at least that far.
    Purge(LogId<NodeId>, Reply),
}

/// Where an entry's bytes are.
#[derive(Clone)]
enum Data {
    /// In memory, not yet known to be on disk; `seq` tells this append from a later one at
    /// the same index.
    Unflushed { seq: u64, bytes: Arc<[u8]> },
    /// On disk.
    Flushed(Loc),
}

#[derive(Clone)]
struct Slot {
    id: LogId<NodeId>,
    data: Data,
}

/// What the store holds in memory.
#[derive(Default)]
struct Index {
    /// Every entry not purged, by index.
    slots: BTreeMap<u64, Slot>,
    /// Every segment's file, for reads.
    files: BTreeMap<u64, Arc<File>>,
    /// The last purge.
    purged: Option<LogId<NodeId>>,
    /// The last vote saved.
    vote: Option<Vote<NodeId>>,
    /// The last committed log id openraft reported.
    committed: Option<LogId<NodeId>>,
    /// Whether `committed` is still to be written: it rides along with the next batch instead
    /// of costing an fsync of its own.
    committed_unwritten: bool,
}

struct Inner {
    index: Mutex<Index>,
    seq: AtomicU64,
}

impl Inner {
    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The log store handed to openraft (and cloned as its log reader).
#[derive(Clone)]
pub(crate) struct LogStore {
    inner: Arc<Inner>,
    tx: mpsc::Sender<Op>,
    durable: Durable,
}

impl LogStore {
    /// Opens (or creates) the log in `DIR/raft-log/` and starts its writer thread.
    pub(crate) fn open(dir: &Path) -> Result<Self, Error> {
        let legacy = dir.join(LEGACY);
        if legacy.exists() && !dir.join(DIR).exists() {
            return Err(Error::Legacy(legacy));
        }
        let (log, files, writer) = wal::open(&dir.join(DIR))?;
        if log.torn_bytes > 0 {
            tracing::warn!(
                "raft log: cut {} bytes of a write that was never completed off its end",
                log.torn_bytes
            );
        }
        let slots: BTreeMap<u64, Slot> = log
            .entries
            .iter()
            .map(|(&i, &(id, loc))| {
                (
                    i,
                    Slot {
                        id,
                        data: Data::Flushed(loc),
                    },
                )
            })
            .collect();
        let last = slots.values().next_back().map(|s| s.id).or(log.purged);
        let on_disk = OnDisk {
            index: last.map(|l| l.index),
            last,
            failed: false,
        };
        let (durable_tx, durable_rx) = watch::channel(on_disk);
        let inner = Arc::new(Inner {
            index: Mutex::new(Index {
                slots,
                files,
                purged: log.purged,
                vote: log.vote,
                committed: log.committed,
                committed_unwritten: false,
            }),
            seq: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let shared = inner.clone();
        let failure: Arc<OnceLock<String>> = Arc::default();
        let writer_failure = failure.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(writer, &shared, &rx, &durable_tx, &writer_failure))
            .map_err(Error::Thread)?;
        let durable = Durable {
            rx: durable_rx,
            truncations: Arc::default(),
            failure,
        };
        Ok(LogStore { inner, tx, durable })
    }

    /// How far this log is on disk.
    pub(crate) fn durable(&self) -> Durable {
        self.durable.clone()
    }

    /// Queues `op` (built around its reply channel) and waits until it is durable.
    async fn write(&self, op: impl FnOnce(Reply) -> Op) -> Result<(), AnyError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(op(tx))
            .map_err(|_| AnyError::error(self.durable.cause()))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AnyError::error(e)),
            Err(_) => Err(AnyError::error(self.durable.cause())),
        }
    }
}

/// The writer thread: one durable batch for everything queued, then the index, the waiters
/// and the new [`Durable`] position. The first failed write ends it (its error goes to
/// `failure`): nothing is retried.
fn write_loop(
    mut writer: wal::Writer,
    inner: &Inner,
    rx: &mpsc::Receiver<Op>,
    durable: &watch::Sender<OnDisk>,
    failure: &OnceLock<String>,
) {
    let mut on_disk = *durable.borrow();
    while let Ok(first) = rx.recv() {
        // The committed log id is taken before the queue is drained: the entries it names
        // were queued before openraft could commit them, so they are in this batch (or an
        // earlier one), and the stored id never runs ahead of the stored log.
        let committed = {
            let mut index = inner.index();
            let unwritten = std::mem::take(&mut index.committed_unwritten);
            unwritten.then_some(index.committed)
        };
        let mut ops = vec![first];
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        let mut next = on_disk;
        let mut recs = Vec::with_capacity(ops.len() + 1);
        let mut purged = false;
        for op in &ops {
            match op {
                Op::Append(entries) => {
                    for (id, _, bytes) in entries {
                        recs.push(Rec::Entry(*id, bytes));
                        next.index = Some(id.index);
                        next.last = Some(*id);
                    }
                }
                Op::Vote(v, _) => recs.push(Rec::Vote(*v)),
                Op::Truncate(from, _) => {
                    recs.push(Rec::Truncate(*from));
                    if next.index.is_some_and(|i| i >= *from) {
                        next.index = from.checked_sub(1);
                        next.last = None;
                    }
                }
                Op::Purge(upto, _) => {
                    recs.push(Rec::Purge(*upto));
                    purged = true;
                    if next.index < Some(upto.index) {
                        next.index = Some(upto.index);
                        next.last = Some(*upto);
                    }
                }
            }
        }
        // Last: replay stops at a torn record, so a committed id that survives a torn batch
        // never names entries of it that did not.
        if let Some(c) = committed {
            recs.push(Rec::Committed(c));
        }
        let result = writer.write(&recs);
        drop(recs);
        let mut replies = Vec::new();
        let mut appended = Vec::new();
        for op in ops {
            match op {
                Op::Append(entries) => {
                    appended.extend(entries.into_iter().map(|(id, seq, _)| (id.index, seq)));
                }
                Op::Vote(_, r) | Op::Truncate(_, r) | Op::Purge(_, r) => replies.push(r),
            }
        }
        match result {
            Ok(written) => {
                let removed = if purged {
                    writer.remove_purged()
                } else {
                    Vec::new()
                };
                {
                    let mut index = inner.index();
                    if let Some((seq, file)) = written.new_segment {
                        index.files.insert(seq, file);
                    }
                    for seq in removed {
                        index.files.remove(&seq);
                    }
                    for ((i, seq), loc) in appended.into_iter().zip(written.entries) {
                        if let Some(slot) = index.slots.get_mut(&i)
                            && matches!(slot.data, Data::Unflushed { seq: s, .. } if s == seq)
                        {
                            slot.data = Data::Flushed(loc);
                        }
                    }
                }
                on_disk = next;
                durable.send_replace(on_disk);
                for reply in replies {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                // Entries openraft believes flushed may be lost: nothing may wait on this log
                // any more (the state machine then fails, and with it Raft). A failed fsync is
                // never retried (this thread ends): the kernel may have dropped the dirty
                // pages, and a second fsync would report them durable.
                tracing::error!("cannot write the raft log: {e}");
                let _ = failure.set(format!("cannot write the raft log: {e}"));
                durable.send_modify(|d| d.failed = true);
                for reply in replies {
                    let _ = reply.send(Err(e.to_string()));
                }
                return;
            }
        }
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, AnyError> {
    postcard::to_allocvec(v).map_err(|e| AnyError::new(&e))
}

fn decode(bytes: &[u8]) -> Result<Entry<TypeConfig>, AnyError> {
    postcard::from_bytes(bytes).map_err(|e| AnyError::new(&e))
}

/// Where to get one entry's bytes, taken under the lock and read outside it.
enum Source {
    Memory(Arc<[u8]>),
    File(Arc<File>, Loc),
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let sources: Vec<Source> = {
            let index = self.inner.index();
            let mut out = Vec::new();
            for slot in index.slots.range(range).map(|(_, s)| s) {
                out.push(match &slot.data {
                    Data::Unflushed { bytes, .. } => Source::Memory(bytes.clone()),
                    Data::Flushed(loc) => {
                        let Some(file) = index.files.get(&loc.seg) else {
                            let e = AnyError::error(format!(
                                "raft log entry {} is in segment {}, which is gone",
                                slot.id.index, loc.seg
                            ));
                            return Err(StorageIOError::read_logs(e).into());
                        };
                        Source::File(file.clone(), *loc)
                    }
                });
            }
            out
        };
        let read = |s: Source| -> Result<Entry<TypeConfig>, AnyError> {
            match s {
                Source::Memory(bytes) => decode(&bytes),
                Source::File(file, loc) => {
                    let bytes = wal::read(&file, loc).map_err(|e| AnyError::new(&e))?;
                    decode(&bytes)
                }
            }
        };
        sources
            .into_iter()
            .map(read)
            .collect::<Result<_, _>>()
            .map_err(|e| StorageIOError::read_logs(e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let index = self.inner.index();
        let last = index.slots.values().next_back().map(|s| s.id);
        Ok(LogState {
            last_purged_log_id: index.purged,
            last_log_id: last.or(index.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.write(|r| Op::Vote(vote, r))
            .await
            .map_err(StorageIOError::write_vote)?;
        self.inner.index().vote = Some(vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.index().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not written at once: it only lets a restart apply more of the log at once, so it
        // rides along with the next log write instead of costing an fsync of its own.
        let mut index = self.inner.index();
        index.committed = committed;
        index.committed_unwritten = true;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.index().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for e in entries {
            let bytes: Arc<[u8]> = encode(&e).map_err(StorageIOError::write_logs)?.into();
            let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
            encoded.push((e.log_id, seq, bytes));
        }
        let Some(&(first, _, _)) = encoded.first() else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        {
            let mut index = self.inner.index();
            // An append replaces whatever was at and after its first index.
            index.slots.split_off(&first.index);
            for (id, seq, bytes) in &encoded {
                index.slots.insert(
                    id.index,
                    Slot {
                        id: *id,
                        data: Data::Unflushed {
                            seq: *seq,
                            bytes: bytes.clone(),
                        },
                    },
                );
            }
        }
        self.tx
            .send(Op::Append(encoded))
            .map_err(|_| StorageIOError::write_logs(AnyError::error(self.durable.cause())))?;
        // Reported flushed now, not after the fsync: see the module documentation. What is
        // really durable is published as `Durable`, which the state machine and the peer
        // server wait for.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.durable.truncations.fetch_add(1, Ordering::SeqCst);
        self.inner.index().slots.split_off(&log_id.index);
        self.write(|r| Op::Truncate(log_id.index, r))
            .await
            .map_err(|e| StorageIOError::write_logs(e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        {
            let mut index = self.inner.index();
            let keep = index.slots.split_off(&(log_id.index + 1));
            index.slots = keep;
            if index.purged.is_none_or(|p| p.index < log_id.index) {
                index.purged = Some(log_id);
            }
        }
        self.write(|r| Op::Purge(log_id, r))
            .await
            .map_err(|e| StorageIOError::write_logs(e).into())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    /// Queues entries `from..=to` for the writer, as `append` does.
    fn queue(store: &LogStore, from: u64, to: u64) {
        let entries = (from..=to)
            .map(|i| {
                let entry = Entry::<TypeConfig> {
                    log_id: id(i),
                    payload: EntryPayload::Blank,
                };
                (id(i), i, encode(&entry).expect("encodes").into())
            })
            .collect();
        store.tx.send(Op::Append(entries)).expect("writer runs");
    }

    fn on_disk(store: &LogStore) -> OnDisk {
        *store.durable.rx.borrow()
    }

    #[tokio::test]
    async fn durability_follows_appends_truncations_and_purges() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = LogStore::open(dir.path()).expect("opens");
        let durable = store.durable();
        assert_eq!(on_disk(&store).index, None);

        queue(&store, 0, 5);
        durable
            .wait(5, Duration::from_secs(10))
            .await
            .expect("durable");
        assert_eq!(durable.last(), Some(id(5)));

        let before = durable.truncations();
        store.truncate(id(3)).await.expect("truncates");
        assert_eq!(durable.truncations(), before + 1);
        assert_eq!(on_disk(&store).index, Some(2));
        assert_eq!(durable.last(), None);

        store.purge(id(8)).await.expect("purges");
        assert_eq!(on_disk(&store).index, Some(8));
        assert_eq!(durable.last(), Some(id(8)));
        assert!(matches!(
            durable.wait(9, Duration::from_millis(1)).await,
            Err(Error::Timeout(9, _))
        ));

        // The writer thread lets go of the database once the store is gone.
        drop(store);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let reopened = loop {
            match LogStore::open(dir.path()) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() > deadline => panic!("reopens: {e}"),
                Err(_) => tokio::task::yield_now().await,
            }
        };
        assert_eq!(on_disk(&reopened).index, Some(8));
    }

    #[test]
    fn one_process_at_a_time_and_no_silent_upgrade_of_an_old_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = LogStore::open(dir.path()).expect("opens");
        let again = LogStore::open(dir.path())
            .err()
            .expect("refused while open");
        assert!(
            again.to_string().contains("in use by another process"),
            "{again}"
        );
        drop(store);

        let old = tempfile::tempdir().expect("temp dir");
        std::fs::write(old.path().join(LEGACY), b"redb").expect("writes");
        let e = LogStore::open(old.path()).err().expect("refused");
        let text = e.to_string();
        assert!(
            text.contains("raft-log.redb is a raft log in the format of an earlier"),
            "{text}"
        );
        assert!(!old.path().join(DIR).exists(), "nothing created beside it");
    }
}
