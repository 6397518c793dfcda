//! The durable Raft log and vote, in a redb database under `data_dir`.
//!
//! # Design
//!
//! One writer thread owns every write transaction. `append` puts the entries in an in-memory
//! table of unflushed entries (so they are readable at once, as openraft requires) and queues
//! them for the writer; the writer takes everything queued meanwhile into one transaction,
//! commits it with `Durability::Immediate` (fsync), and only then tells openraft the entries
//! are flushed. So the leader's fsync overlaps the replication to the followers, and one fsync
//! serves every append that arrived while the previous one ran (group commit). An entry this
//! member acknowledged survives `kill -9`. Votes, truncation and purges go through the same
//! queue, in order, and their callers wait for the commit.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use tokio::sync::oneshot;

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
}

type WriteFn = Box<dyn FnOnce(&WriteTransaction) -> Result<(), redb::Error> + Send>;

/// Work for the writer thread.
enum Op {
    /// Entries `(index, sequence, bytes)` to store, and whom to tell once they are durable.
    Append(Vec<(u64, u64, Arc<[u8]>)>, LogFlushed<TypeConfig>),
    /// Any other write, and whom to tell once it is durable (if anyone).
    Write(WriteFn, Option<oneshot::Sender<Result<(), String>>>),
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
    seq: AtomicU64,
}

/// The log store handed to openraft (and cloned as its log reader).
#[derive(Clone)]
pub(crate) struct LogStore {
    inner: Arc<Inner>,
    tx: mpsc::Sender<Op>,
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
        let inner = Arc::new(Inner {
            db,
            unflushed: Mutex::default(),
            seq: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let writer = inner.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(&writer, &rx))
            .map_err(Error::Thread)?;
        Ok(LogStore { inner, tx })
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

    /// Queues a write and waits until it is committed durably.
    async fn write(&self, f: WriteFn) -> Result<(), AnyError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Op::Write(f, Some(tx)))
            .map_err(|_| AnyError::error("the raft log writer stopped"))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AnyError::error(e)),
            Err(_) => Err(AnyError::error("the raft log writer stopped")),
        }
    }

    fn unflushed(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Unflushed>> {
        self.inner
            .unflushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer thread: one durable transaction for everything queued, then the callbacks.
fn write_loop(inner: &Inner, rx: &mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        let mut flushed = Vec::new();
        let mut done = Vec::new();
        let mut appended = Vec::new();
        let result = (|| -> Result<(), redb::Error> {
            let mut txn = inner.db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            for op in ops {
                match op {
                    Op::Append(entries, callback) => {
                        {
                            let mut table = txn.open_table(LOGS)?;
                            for (index, _, bytes) in &entries {
                                table.insert(*index, &**bytes)?;
                            }
                        }
                        appended.extend(entries.into_iter().map(|(index, seq, _)| (index, seq)));
                        flushed.push(callback);
                    }
                    Op::Write(f, reply) => {
                        f(&txn)?;
                        done.extend(reply);
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
                for cb in flushed {
                    cb.log_io_completed(Ok(()));
                }
                for reply in done {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!("cannot write the raft log: {e}");
                for cb in flushed {
                    cb.log_io_completed(Err(std::io::Error::other(e.to_string())));
                }
                for reply in done {
                    let _ = reply.send(Err(e.to_string()));
                }
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
        self.write(Box::new(move |txn| put_meta(txn, VOTE, &bytes)))
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
        // Not waited for: it only lets a restart apply more of the log at once, and it rides
        // along with the next log write.
        let bytes = encode(&committed).map_err(StorageIOError::write)?;
        self.tx
            .send(Op::Write(
                Box::new(move |txn| put_meta(txn, COMMITTED, &bytes)),
                None,
            ))
            .map_err(|_| {
                StorageIOError::write(AnyError::error("the raft log writer stopped")).into()
            })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
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
        for e in entries {
            let bytes: Arc<[u8]> = encode(&e).map_err(StorageIOError::write_logs)?.into();
            let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
            encoded.push((e.log_id.index, seq, bytes));
        }
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
        self.tx.send(Op::Append(encoded, callback)).map_err(|_| {
            StorageIOError::write_logs(AnyError::error("the raft log writer stopped")).into()
        })
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.unflushed().split_off(&log_id.index);
        self.write(Box::new(move |txn| {
            txn.open_table(LOGS)?
                .retain_in(log_id.index.., |_, _| false)?;
            Ok(())
        }))
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
        self.write(Box::new(move |txn| {
            put_meta(txn, PURGED, &bytes)?;
            txn.open_table(LOGS)?
                .retain_in(..=log_id.index, |_, _| false)?;
            Ok(())
        }))
        .await
        .map_err(|e| StorageIOError::write_logs(e).into())
    }
}
