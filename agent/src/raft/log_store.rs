//! The durable Raft log and vote, in a redb database under `data_dir`.
//!
//! # Design
//!
//! One writer thread owns every write transaction. `append` puts the entries in an in-memory
//! table of unflushed entries (so they are readable at once, as openraft requires) and queues
//! them for the writer; the writer takes everything queued meanwhile into one transaction and
//! commits it with `Durability::Immediate` (fsync): one fsync serves every append that arrived
//! while the previous one ran (group commit). Votes, truncation and purges go through the same
//! queue, in order, and their callers wait for the commit.
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
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use tokio::sync::{oneshot, watch};

use super::{NodeId, TypeConfig};

const LOGS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const PURGED: &str = "last_purged";
const COMMITTED: &str = "committed";

/// Errors opening the log database.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The database file could not be opened or created.
    #[error("cannot open the raft log {path}: {source}")]
    Open {
        /// The database file.
        path: String,
        /// What redb said.
        source: redb::Error,
    },
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

type WriteFn = Box<dyn FnOnce(&WriteTransaction) -> Result<(), redb::Error> + Send>;

/// Work for the writer thread.
enum Op {
    /// Entries `(index, sequence, bytes)` to store, and the id of the last one.
    Append(Vec<(u64, u64, Arc<[u8]>)>, LogId<NodeId>),
    /// Any other write, whom to tell once it is durable, and what it does to the log's end.
    Write(WriteFn, oneshot::Sender<Result<(), String>>, Effect),
}

/// What a write other than an append does to the durable end of the log.
#[derive(Debug, Clone, Copy)]
enum Effect {
    /// Nothing (a vote).
    None,
    /// Removes the entries from this index on.
    Truncate(u64),
    /// Removes the entries up to this one, which a durable snapshot covers: the log counts as
    /// durable at least that far.
    Purge(LogId<NodeId>),
}

/// An appended entry not yet known to be in the database.
#[derive(Clone)]
struct Unflushed {
    seq: u64,
    bytes: Arc<[u8]>,
}

struct Inner {
    db: Database,
    /// Appended entries the writer has not committed yet, by index.
    unflushed: Mutex<BTreeMap<u64, Unflushed>>,
    /// The last committed log id openraft reported (encoded), not yet written: it rides along
    /// with the next transaction instead of costing an fsync of its own.
    committed: Mutex<Option<Vec<u8>>>,
    seq: AtomicU64,
}

/// The log store handed to openraft (and cloned as its log reader).
#[derive(Clone)]
pub(crate) struct LogStore {
    inner: Arc<Inner>,
    tx: mpsc::Sender<Op>,
    durable: Durable,
}

impl LogStore {
    /// Opens (or creates) `DIR/raft-log.redb` and starts its writer thread.
    pub(crate) fn open(dir: &Path) -> Result<Self, Error> {
        let path = dir.join("raft-log.redb");
        let open = || -> Result<Database, redb::Error> {
            let db = Database::create(&path)?;
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.open_table(LOGS)?;
            txn.open_table(META)?;
            txn.commit()?;
            Ok(db)
        };
        let db = open().map_err(|source| Error::Open {
            path: path.display().to_string(),
            source,
        })?;
        let on_disk = last_on_disk(&db).map_err(|source| Error::Open {
            path: path.display().to_string(),
            source,
        })?;
        let (durable_tx, durable_rx) = watch::channel(on_disk);
        let inner = Arc::new(Inner {
            db,
            unflushed: Mutex::default(),
            committed: Mutex::default(),
            seq: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let writer = inner.clone();
        let failure: Arc<OnceLock<String>> = Arc::default();
        let writer_failure = failure.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(&writer, &rx, &durable_tx, &writer_failure))
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

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, redb::Error> {
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(META)?;
        let Some(v) = table.get(key)? else {
            return Ok(None);
        };
        Ok(postcard::from_bytes(v.value()).ok())
    }

    /// Queues a write (with its `effect` on the log's end) and waits until it is committed
    /// durably.
    async fn write(&self, f: WriteFn, effect: Effect) -> Result<(), AnyError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Op::Write(f, tx, effect))
            .map_err(|_| AnyError::error(self.durable.cause()))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AnyError::error(e)),
            Err(_) => Err(AnyError::error(self.durable.cause())),
        }
    }

    fn unflushed(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Unflushed>> {
        self.inner
            .unflushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// The last entry in a freshly opened database (or the last purged one): all of it is durable.
fn last_on_disk(db: &Database) -> Result<OnDisk, redb::Error> {
    let txn = db.begin_read()?;
    let last = match txn.open_table(LOGS)?.last()? {
        Some((_, v)) => decode(v.value()).ok().map(|e| e.log_id),
        None => None,
    };
    let last = match last {
        Some(l) => Some(l),
        None => match txn.open_table(META)?.get(PURGED)? {
            Some(v) => postcard::from_bytes(v.value()).ok(),
            None => None,
        },
    };
    Ok(OnDisk {
        index: last.map(|l| l.index),
        last,
        failed: false,
    })
}

/// The writer thread: one durable transaction for everything queued, then the waiters and
/// the new [`Durable`] position. The first failed transaction ends it (its error goes to
/// `failure`): nothing is retried.
fn write_loop(
    inner: &Inner,
    rx: &mpsc::Receiver<Op>,
    durable: &watch::Sender<OnDisk>,
    failure: &OnceLock<String>,
) {
    let mut on_disk = *durable.borrow();
    while let Ok(first) = rx.recv() {
        // The committed log id is taken before the queue is drained: the entries it names
        // were queued before openraft could commit them, so they are in this transaction (or
        // an earlier one), and the stored id never runs ahead of the stored log.
        let committed = inner
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut ops = vec![first];
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        let mut done = Vec::new();
        let mut appended = Vec::new();
        let mut next = on_disk;
        let result = (|| -> Result<(), redb::Error> {
            let mut txn = inner.db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            if let Some(bytes) = committed {
                put_meta(&txn, COMMITTED, &bytes)?;
            }
            for op in ops {
                match op {
                    Op::Append(entries, last) => {
                        {
                            let mut table = txn.open_table(LOGS)?;
                            for (index, _, bytes) in &entries {
                                table.insert(*index, &**bytes)?;
                            }
                        }
                        appended.extend(entries.into_iter().map(|(index, seq, _)| (index, seq)));
                        next.index = Some(last.index);
                        next.last = Some(last);
                    }
                    Op::Write(f, reply, effect) => {
                        f(&txn)?;
                        done.push(reply);
                        match effect {
                            Effect::None => {}
                            Effect::Truncate(from) => {
                                if next.index.is_some_and(|i| i >= from) {
                                    next.index = from.checked_sub(1);
                                    next.last = None;
                                }
                            }
                            Effect::Purge(upto) => {
                                if next.index < Some(upto.index) {
                                    next.index = Some(upto.index);
                                    next.last = Some(upto);
                                }
                            }
                        }
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                {
                    let mut unflushed = inner.unflushed.lock().unwrap_or_else(|p| p.into_inner());
                    for (index, seq) in appended {
                        if unflushed.get(&index).is_some_and(|u| u.seq == seq) {
                            unflushed.remove(&index);
                        }
                    }
                }
                on_disk = next;
                durable.send_replace(on_disk);
                for reply in done {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                // Entries openraft believes flushed may be lost: nothing may wait on this log
                // any more (the state machine then fails, and with it Raft). A failed fsync is
                // never retried (this thread ends, and redb refuses every later write once one
                // failed): the kernel may have dropped the dirty pages, and a second fsync
                // would report them durable.
                tracing::error!("cannot write the raft log: {e}");
                let _ = failure.set(format!("cannot write the raft log: {e}"));
                durable.send_modify(|d| d.failed = true);
                for reply in done {
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

fn put_meta(txn: &WriteTransaction, key: &str, v: &[u8]) -> Result<(), redb::Error> {
    txn.open_table(META)?.insert(key, v)?;
    Ok(())
}

fn decode(bytes: &[u8]) -> Result<Entry<TypeConfig>, AnyError> {
    postcard::from_bytes(bytes).map_err(|e| AnyError::new(&e))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let read = || -> Result<Vec<Entry<TypeConfig>>, AnyError> {
            // Unflushed entries first: the writer may move them to the database meanwhile, so
            // they are taken before the database is read, and win over it.
            let pending: BTreeMap<u64, Arc<[u8]>> = self
                .unflushed()
                .range(range.clone())
                .map(|(i, u)| (*i, u.bytes.clone()))
                .collect();
            // Replication asks for what was just appended: when the unflushed entries hold
            // the whole range, the database is not read at all.
            if covers(&range, pending.len()) && pending.keys().next() == start_of(&range).as_ref() {
                return pending.values().map(|b| decode(b)).collect();
            }
            let txn = self.inner.db.begin_read().map_err(|e| AnyError::new(&e))?;
            let table = txn.open_table(LOGS).map_err(|e| AnyError::new(&e))?;
            let mut out = BTreeMap::new();
            for item in table.range(range).map_err(|e| AnyError::new(&e))? {
                let (k, v) = item.map_err(|e| AnyError::new(&e))?;
                if !pending.contains_key(&k.value()) {
                    out.insert(k.value(), decode(v.value())?);
                }
            }
            for (i, bytes) in pending {
                out.insert(i, decode(&bytes)?);
            }
            Ok(out.into_values().collect())
        };
        read().map_err(|e| StorageIOError::read_logs(e).into())
    }
}

/// The first index of `range`, if it has a lower bound.
fn start_of<RB: RangeBounds<u64>>(range: &RB) -> Option<u64> {
    match range.start_bound() {
        Bound::Included(s) => Some(*s),
        Bound::Excluded(s) => s.checked_add(1),
        Bound::Unbounded => None,
    }
}

/// Whether `n` distinct indexes inside `range` are all of it (a bounded range of `n` indexes).
fn covers<RB: RangeBounds<u64>>(range: &RB, n: usize) -> bool {
    let Some(start) = start_of(range) else {
        return false;
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.checked_add(1),
        Bound::Excluded(e) => Some(*e),
        Bound::Unbounded => None,
    };
    end.is_some_and(|end| n > 0 && end.checked_sub(start) == Some(n as u64))
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let read = || -> Result<LogState<TypeConfig>, AnyError> {
            let last_purged: Option<LogId<NodeId>> =
                self.read_meta(PURGED).map_err(|e| AnyError::new(&e))?;
            let pending_last = self
                .unflushed()
                .values()
                .next_back()
                .map(|u| u.bytes.clone());
            let last = match pending_last {
                Some(bytes) => Some(decode(&bytes)?.log_id),
                None => {
                    let txn = self.inner.db.begin_read().map_err(|e| AnyError::new(&e))?;
                    let table = txn.open_table(LOGS).map_err(|e| AnyError::new(&e))?;
                    match table.last().map_err(|e| AnyError::new(&e))? {
                        Some((_, v)) => Some(decode(v.value())?.log_id),
                        None => None,
                    }
                }
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last.or(last_purged),
            })
        };
        read().map_err(|e| StorageIOError::read_logs(e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = encode(vote).map_err(StorageIOError::write_vote)?;
        self.write(
            Box::new(move |txn| put_meta(txn, VOTE, &bytes)),
            Effect::None,
        )
        .await
        .map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(VOTE)
            .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not written at once: it only lets a restart apply more of the log at once, so it
        // rides along with the next log write instead of costing an fsync of its own.
        let bytes = encode(&committed).map_err(StorageIOError::write)?;
        *self
            .inner
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(bytes);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let pending = self
            .inner
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(bytes) = pending {
            let v: Option<LogId<NodeId>> = postcard::from_bytes(&bytes)
                .map_err(|e| StorageIOError::read(AnyError::new(&e)))?;
            return Ok(v);
        }
        let v: Option<Option<LogId<NodeId>>> = self
            .read_meta(COMMITTED)
            .map_err(|e| StorageIOError::read(AnyError::new(&e)))?;
        Ok(v.flatten())
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
        let mut last = None;
        for e in entries {
            last = Some(e.log_id);
            let bytes: Arc<[u8]> = encode(&e).map_err(StorageIOError::write_logs)?.into();
            let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
            encoded.push((e.log_id.index, seq, bytes));
        }
        let Some(last) = last else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        {
            let mut unflushed = self.unflushed();
            for (index, seq, bytes) in &encoded {
                unflushed.insert(
                    *index,
                    Unflushed {
                        seq: *seq,
                        bytes: bytes.clone(),
                    },
                );
            }
        }
        self.tx
            .send(Op::Append(encoded, last))
            .map_err(|_| StorageIOError::write_logs(AnyError::error(self.durable.cause())))?;
        // Reported flushed now, not after the fsync: see the module documentation. What is
        // really durable is published as `Durable`, which the state machine and the peer
        // server wait for.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.durable.truncations.fetch_add(1, Ordering::SeqCst);
        self.unflushed().split_off(&log_id.index);
        self.write(
            Box::new(move |txn| {
                txn.open_table(LOGS)?
                    .retain_in(log_id.index.., |_, _| false)?;
                Ok(())
            }),
            Effect::Truncate(log_id.index),
        )
        .await
        .map_err(|e| StorageIOError::write_logs(e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        {
            let mut unflushed = self.unflushed();
            let keep = unflushed.split_off(&(log_id.index + 1));
            *unflushed = keep;
        }
        let bytes = encode(&log_id).map_err(StorageIOError::write_logs)?;
        self.write(
            Box::new(move |txn| {
                put_meta(txn, PURGED, &bytes)?;
                txn.open_table(LOGS)?
                    .retain_in(..=log_id.index, |_, _| false)?;
                Ok(())
            }),
            Effect::Purge(log_id),
        )
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
                (i, i, encode(&entry).expect("encodes").into())
            })
            .collect();
        store
            .tx
            .send(Op::Append(entries, id(to)))
            .expect("writer runs");
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
    fn a_range_is_covered_only_by_all_of_its_indexes() {
        assert!(covers(&(3..6), 3));
        assert!(covers(&(3..=5), 3));
        assert!(!covers(&(3..6), 2));
        assert!(!covers(&(3..), 3));
        assert!(!covers(&(..6), 6));
        assert!(!covers(&(3..3), 0));
        assert_eq!(start_of(&(3..6)), Some(3));
        assert_eq!(start_of(&(..6)), None);
    }
}
