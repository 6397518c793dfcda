//! The state machine openraft applies committed entries to: flotilla's [`State`] in memory,
//! made durable by snapshots in `data_dir` (the log since the snapshot is replayed on start).
//!
//! Readers (the HTTP API, the liveness task) take the [`Shared`] read lock briefly and never
//! across an `.await`; every applied kv event is published on the watch hub. A proposal whose
//! request id was applied before is answered from the state's session table and publishes
//! nothing (see `flotilla_state::sessions`).
//!
//! A snapshot written before the session table existed still loads (with an empty table).

use std::fs;
use std::io::{Cursor, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use flotilla_state::sessions::Outcome;
use flotilla_state::{Command, Response, State, kv};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::log_store::Durable;
use super::{Member, NodeId, TypeConfig};
use crate::watch::Hub;

/// Errors loading the state machine at start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The snapshot file exists but cannot be read or decoded.
    #[error("cannot load the snapshot {path}: {reason}; move it away to rebuild from the peers")]
    Load {
        /// The snapshot file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// What has been applied: the state and the log position it corresponds to.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Applied {
    /// The replicated state.
    pub(crate) state: State,
    /// The last log entry applied.
    pub(crate) last_applied: Option<LogId<NodeId>>,
    /// The last membership applied.
    pub(crate) membership: StoredMembership<NodeId, Member>,
}

/// The applied state, shared with the readers.
pub(crate) type Shared = Arc<RwLock<Applied>>;

/// A snapshot as stored on disk and sent to peers.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, Member>,
    state: State,
}

/// A snapshot as written before `State` had its session table (postcard is not
/// self-describing: a missing trailing field is not defaulted, so the old layout is decoded
/// on its own).
#[derive(Deserialize)]
struct SnapshotFileV1 {
    meta: SnapshotMeta<NodeId, Member>,
    kv: kv::Store,
    machines: flotilla_state::machines::Machines,
    units: flotilla_state::units::Units,
}

impl SnapshotFile {
    /// Decodes a snapshot in the current layout, or else the one before.
    fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        match postcard::from_bytes::<SnapshotFile>(bytes) {
            Ok(file) => Ok(file),
            Err(e) => match postcard::from_bytes::<SnapshotFileV1>(bytes) {
                Ok(old) => Ok(SnapshotFile {
                    meta: old.meta,
                    state: State {
                        kv: old.kv,
                        machines: old.machines,
                        units: old.units,
                        sessions: Default::default(),
                    },
                }),
                Err(_) => Err(e),
            },
        }
    }
}

/// The state machine store handed to openraft.
pub(crate) struct StateMachine {
    shared: Shared,
    hub: Hub,
    dir: PathBuf,
    snapshot_seq: u64,
    /// Entries are applied only once they are durable in this log (see `log_store`).
    durable: Option<Durable>,
}

impl StateMachine {
    /// Loads the last snapshot from `dir` (if any) and publishes applied events on `hub`.
    pub(crate) fn open(dir: &Path, hub: Hub) -> Result<Self, Error> {
        let path = dir.join("snapshot.bin");
        let mut applied = Applied::default();
        if path.exists() {
            let load = || -> Result<SnapshotFile, String> {
                let bytes = fs::read(&path).map_err(|e| e.to_string())?;
                SnapshotFile::decode(&bytes).map_err(|e| e.to_string())
            };
            let file = load().map_err(|reason| Error::Load {
                path: path.display().to_string(),
                reason,
            })?;
            applied.state = file.state;
            applied.last_applied = file.meta.last_log_id;
            applied.membership = file.meta.last_membership;
        }
        Ok(StateMachine {
            shared: Arc::new(RwLock::new(applied)),
            hub,
            dir: dir.to_path_buf(),
            snapshot_seq: 0,
            durable: None,
        })
    }

    /// Applies an entry only once it is durable in `durable` (this member's Raft log). The
    /// log reports appends flushed before they are, so this gate is what keeps an entry from
    /// being applied, read or acknowledged before it is fsynced here.
    pub(crate) fn gate_on(mut self, durable: Durable) -> Self {
        self.durable = Some(durable);
        self
    }

    /// The applied state, for readers.
    pub(crate) fn shared(&self) -> Shared {
        self.shared.clone()
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot.bin")
    }
}

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync the dir.
/// A failure is never retried: the caller's error stops Raft (after a failed fsync the kernel
/// may have dropped the pages, and a second fsync would report them written).
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), AnyError> {
    write_durably_io(path, bytes)
        .map_err(|e| AnyError::error(format!("cannot write the snapshot {}: {e}", path.display())))
}

fn write_durably_io(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Builds snapshots from a copy of the state taken under the read lock.
pub(crate) struct Builder {
    shared: Shared,
    path: PathBuf,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (state, last_applied, membership) = {
            let a = self.shared.read().unwrap_or_else(|p| p.into_inner());
            (a.state.clone(), a.last_applied, a.membership.clone())
        };
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.seq),
            None => format!("0-0-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let file = SnapshotFile {
            meta: meta.clone(),
            state,
        };
        let path = self.path.clone();
        let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, AnyError> {
            let bytes = postcard::to_allocvec(&file).map_err(|e| AnyError::new(&e))?;
            write_durably(&path, &bytes)?;
            Ok(bytes)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?
        .map_err(|e| StorageIOError::write_snapshot(None, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>>
    {
        let a = self.shared.read().unwrap_or_else(|p| p.into_inner());
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Outcome>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if let (Some(durable), Some(last)) = (&self.durable, entries.last()) {
            let index = last.log_id.index;
            durable
                .wait_long(index)
                .await
                .map_err(|e| StorageIOError::apply(last.log_id, AnyError::new(&e)))?;
        }
        let mut replies = Vec::new();
        let mut events = Vec::new();
        let mut units_changed = false;
        let mut members_changed = false;
        {
            let mut a = self.shared.write().unwrap_or_else(|p| p.into_inner());
            for entry in entries {
                a.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => replies.push(Vec::new()),
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(entry.log_id), m);
                        members_changed = true;
                        replies.push(Vec::new());
                    }
                    EntryPayload::Normal(proposals) => {
                        let mut out = Vec::with_capacity(proposals.len());
                        for p in &proposals {
                            let outcome = a.state.apply_proposal(p);
                            if let Outcome::Applied(resp) = &outcome {
                                collect_events(&p.command, resp, &mut events);
                                units_changed |= matches!(
                                    resp,
                                    Response::Unit(Ok(true)) | Response::Machine(true)
                                );
                            }
                            out.push(outcome);
                        }
                        replies.push(out);
                    }
                }
            }
        }
        for ev in events {
            self.hub.publish(ev);
        }
        if units_changed {
            self.hub.units_changed();
        }
        if members_changed {
            self.hub.members_changed();
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        Builder {
            shared: self.shared.clone(),
            path: self.snapshot_path(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let file = SnapshotFile::decode(&bytes).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        let path = self.snapshot_path();
        tokio::task::spawn_blocking(move || write_durably(&path, &bytes))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)))?
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e))?;
        {
            let mut a = self.shared.write().unwrap_or_else(|p| p.into_inner());
            a.state = file.state;
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
        }
        self.hub.units_changed();
        self.hub.members_changed();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let path = self.snapshot_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageIOError::read_snapshot(None, AnyError::new(&e)).into()),
        };
        let file = SnapshotFile::decode(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
        Ok(Some(Snapshot {
            meta: file.meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

/// The kv events a command produced, in order, for the watchers.
/// A refresh (`refresh=true`) only resets a TTL and, as in etcd, wakes no watcher.
fn collect_events(cmd: &Command, resp: &Response, out: &mut Vec<Arc<kv::Event>>) {
    if let Command::Kv(kv::Write {
        op: kv::WriteOp::Set { refresh: true, .. },
        ..
    }) = cmd
    {
        return;
    }
    match resp {
        Response::Kv(Ok(ev)) => out.push(Arc::new(ev.clone())),
        Response::Expired(evs) => out.extend(evs.iter().cloned().map(Arc::new)),
        Response::Kv(Err(_)) | Response::Machine(_) | Response::Unit(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout of a snapshot before the session table, as it was written.
    #[derive(Serialize)]
    struct OldFile {
        meta: SnapshotMeta<NodeId, Member>,
        state: OldState,
    }

    #[derive(Serialize)]
    struct OldState {
        kv: kv::Store,
        machines: flotilla_state::machines::Machines,
        units: flotilla_state::units::Units,
    }

    #[test]
    fn a_snapshot_from_before_the_session_table_loads() {
        let mut state = State::default();
        let set = kv::WriteOp::Set {
            value: "v".into(),
            dir: false,
            ttl: None,
            refresh: false,
            prev: kv::Preconditions::default(),
        };
        state.apply(&Command::Kv(kv::Write::new("/k", set, 0)));
        let meta = SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: "1-1-1".into(),
        };
        let old = OldFile {
            meta: meta.clone(),
            state: OldState {
                kv: state.kv.clone(),
                machines: state.machines.clone(),
                units: state.units.clone(),
            },
        };
        let bytes = postcard::to_allocvec(&old).expect("encodes");
        let file = SnapshotFile::decode(&bytes).expect("the old layout decodes");
        assert_eq!(file.state, state);
        assert_eq!(file.meta, meta);

        let new = postcard::to_allocvec(&SnapshotFile { meta, state }).expect("encodes");
        assert!(SnapshotFile::decode(&new).is_ok());
        assert!(SnapshotFile::decode(&new[..new.len() / 2]).is_err());
    }
}
