//! The agent's D-Bus interface `org.flotilla.Agent1` on the system bus (the contract, names and
//! wire types are `flotilla_dbus::agent1`'s): keys, machines and the cluster over
//! [`Cluster`], units over [`crate::units`] (the functions the HTTP API calls too),
//! `KeyChanged` and `UnitStateChanged` from the [`crate::watch::Hub`], `LeaderChanged` and
//! `PropertiesChanged` from Raft's metrics.
//!
//! # Design
//!
//! [`start`] connects to the system bus, serves the object and requests the name last (callers
//! then send READY=1), and spawns one task that emits the signals until cancellation. Methods
//! that change state check the caller themselves ([`authorize`]): root, or a member of the
//! `flotilla` group, whatever the bus policy lets through.
//!
//! # Current limitations
//!
//! - A watch is live events only (no `waitIndex` history: that stays the HTTP API's).
//! - The `flotilla` group is looked up in `/etc/group` (not through NSS).
//! - `UnitStateChanged` compares the reported states after each applied batch with the last
//!   ones seen: a state that changed and changed back within one batch is not signalled.
//! - Images methods are not there yet.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use flotilla_dbus::agent1::{
    self, Error, Health, ImageRecord, KeyNode, MachineRecord, MemberRecord, UnitFile, UnitOutput,
    UnitState,
};
use flotilla_state::kv::{self, ErrorCode, Event, Node};
use flotilla_state::machines::{Machine, Status};
use flotilla_state::units::Transition;
use flotilla_state::{Command, Response};
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use zbus::message::Header;
use zbus::object_server::{InterfaceRef, SignalEmitter};
use zbus::{Connection, OwnedVariant, interface};

use crate::cluster::{self, Cluster, MemberInfo};
use crate::images::Images;
use crate::liveness::now_ms;
use crate::raft::network::Peers;
use crate::raft::{Member, id_hex};
use crate::units::{self, UnitView};

/// The agent's version, as the `Version` property reports it.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The most key prefixes watched over the bus by all connections together.
const MAX_WATCHES: usize = 4096;

/// Key prefixes watched, by the unique bus name of the connection that watches them.
type Watches = Arc<Mutex<HashMap<String, BTreeSet<String>>>>;

/// The object at `/org/flotilla/Agent1`.
pub(crate) struct Agent1 {
    cluster: Cluster,
    machine_name: String,
    machine_id: String,
    limits: kv::v2::Limits,
    watches: Watches,
    /// This machine's image store (none: image methods answer Failed).
    images: Option<Images>,
}

/// Connects to the system bus, serves `org.flotilla.Agent1` and requests its name, and spawns
/// the task that emits its signals. Without a system bus (or when the name is taken) it says
/// so and the agent runs without the interface.
pub(crate) async fn start(
    cluster: Cluster,
    images: Option<Images>,
    machine_name: String,
    machine_id: String,
    cancel: CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    let watches = Watches::default();
    let object = Agent1 {
        cluster: cluster.clone(),
        machine_name,
        machine_id,
        limits: kv::v2::Limits::default(),
        watches: watches.clone(),
        images,
    };
    // Subscribe before serving: no event applied after the first WatchKeys is missed.
    let events = cluster.hub().subscribe();
    let built = async {
        zbus::connection::Builder::system()
            .serve_at(agent1::PATH, object)
            .build()
            .await
    }
    .await;
    let conn = match built {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                "cannot connect to the system bus: {e}; serving no D-Bus interface, ignoring"
            );
            return;
        }
    };
    // The name last: a client that sees it finds the object served.
    let flags = zbus::fdo::RequestNameFlags::DO_NOT_QUEUE;
    match conn.request_name_with_flags(agent1::NAME, flags).await {
        Ok(
            zbus::fdo::RequestNameReply::PrimaryOwner | zbus::fdo::RequestNameReply::AlreadyOwner,
        ) => tracing::info!(name = agent1::NAME, "serving on the system bus"),
        Ok(reply) => {
            tracing::warn!(
                "cannot own {} on the system bus ({reply:?}: another agent has it); serving no D-Bus interface, ignoring",
                agent1::NAME
            );
            return;
        }
        Err(e) => {
            tracing::warn!(
                "cannot own {} on the system bus: {e}; serving no D-Bus interface, ignoring",
                agent1::NAME
            );
            return;
        }
    }
    let iface = match conn
        .object_server()
        .interface::<_, Agent1>(agent1::PATH)
        .await
    {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!("the D-Bus object is gone: {e}, ignoring");
            return;
        }
    };
    tasks.spawn(signals(conn, iface, cluster, watches, events, cancel));
}

/// Emits `KeyChanged`, `UnitStateChanged`, `LeaderChanged` and `PropertiesChanged`, and
/// forgets the watches of connections that left the bus, until `cancel`.
async fn signals(
    conn: Connection,
    iface: InterfaceRef<Agent1>,
    cluster: Cluster,
    watches: Watches,
    mut events: broadcast::Receiver<Arc<Event>>,
    cancel: CancellationToken,
) {
    let emitter = iface.signal_emitter().clone();
    // Leadership from Raft's server metrics (they change with the vote, the leader and the
    // membership, not with every write); member names from the applied membership.
    let mut metrics = cluster.raft().server_metrics();
    let mut applied_members = cluster.hub().watch_members();
    let mut leader = cluster.leader();
    let mut members = member_names(&cluster);
    let mut unit_changes = cluster.hub().watch_units();
    let mut reported = units::reported_states(&cluster.applied().state.units);
    let gone = match zbus::fdo::DBusProxy::new(&conn).await {
        Ok(p) => p.receive_name_owner_changed().await.ok(),
        Err(_) => None,
    };
    let Some(mut gone) = gone else {
        tracing::warn!("cannot follow clients leaving the bus; no signals, ignoring");
        return;
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            ev = events.recv() => match ev {
                Ok(ev) => key_changed(&emitter, &watches, &ev).await,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("the bus fell {n} key events behind; watchers miss them, ignoring");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                let (now, term) = {
                    let m = metrics.borrow_and_update();
                    (m.current_leader, m.vote.leader_id().term)
                };
                if now != leader {
                    leader = now;
                    let name = now.and_then(|id| member_name(&cluster, id)).unwrap_or_default();
                    let id = now.map(id_hex).unwrap_or_default();
                    let object = iface.get().await;
                    if let Err(e) = Agent1::leader_change(&emitter, &name, &id, term).await {
                        tracing::debug!("cannot emit LeaderChanged: {e}");
                    }
                    if let Err(e) = object.leader_changed(&emitter).await {
                        tracing::debug!("cannot emit PropertiesChanged for Leader: {e}");
                    }
                }
            },
            changed = applied_members.changed() => {
                if changed.is_err() {
                    return;
                }
                let names = member_names(&cluster);
                if names != members {
                    members = names;
                    if let Err(e) = iface.get().await.members_changed(&emitter).await {
                        tracing::debug!("cannot emit PropertiesChanged for Members: {e}");
                    }
                }
            },
            changed = unit_changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = units::reported_states(&cluster.applied().state.units);
                for c in units::state_changes(&reported, &now) {
                    let sent = Agent1::unit_state_changed(
                        &emitter, &c.name, &c.machine, &c.load, &c.active, &c.sub,
                    )
                    .await;
                    if let Err(e) = sent {
                        tracing::debug!("cannot emit UnitStateChanged: {e}");
                    }
                }
                reported = now;
            },
            Some(change) = gone.next() => {
                if let Ok(args) = change.args()
                    && args.new_owner().is_none()
                {
                    let mut w = watches.lock().unwrap_or_else(|p| p.into_inner());
                    w.remove(args.name().as_str());
                }
            },
        }
    }
}

/// Emits `KeyChanged` once for `ev` if any connection watches a prefix it falls under.
async fn key_changed(emitter: &SignalEmitter<'static>, watches: &Watches, ev: &Event) {
    let watched = {
        let w = watches.lock().unwrap_or_else(|p| p.into_inner());
        w.values().flatten().any(|prefix| ev.matches(prefix, true))
    };
    if !watched {
        return;
    }
    let node = key_node(&ev.node, now_ms());
    if let Err(e) = Agent1::key_changed(emitter, &ev.node.key, ev.action.as_str(), node).await {
        tracing::debug!("cannot emit KeyChanged: {e}");
    }
}

fn member_name(cluster: &Cluster, id: u64) -> Option<String> {
    cluster
        .members()
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| m.member.name)
}

fn member_names(cluster: &Cluster) -> Vec<String> {
    cluster
        .members()
        .into_iter()
        .map(|m| m.member.name)
        .collect()
}

#[interface(name = "org.flotilla.Agent1")]
impl Agent1 {
    /// A key or directory (without its children); `quorum`: a linearizable read through the
    /// leader.
    #[zbus(out_args("node"))]
    async fn get_key(&self, key: &str, quorum: bool) -> Result<(KeyNode,), Error> {
        let ev = self.read(key, false, quorum).await?;
        Ok((key_node(&ev.node, now_ms()),))
    }

    /// What is under a directory (pre-order, sorted by key), or the key itself.
    #[zbus(out_args("nodes"))]
    async fn list_keys(
        &self,
        key: &str,
        recursive: bool,
        quorum: bool,
    ) -> Result<Vec<KeyNode>, Error> {
        let ev = self.read(key, recursive, quorum).await?;
        let now = now_ms();
        let mut out = Vec::new();
        match &ev.node.nodes {
            Some(children) if ev.node.dir => flatten(children, now, &mut out),
            _ if ev.node.dir => {}
            _ => out.push(key_node(&ev.node, now)),
        }
        Ok(out)
    }

    /// Sets a key, or creates a directory (option `dir`). Options (etcd v2's): `ttl` (t),
    /// `prevExist` (b), `prevValue` (s), `prevIndex` (t). Returns the node written. Root and the
    /// `flotilla` group only.
    #[zbus(out_args("node"))]
    async fn set_key(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        key: &str,
        value: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(KeyNode,), Error> {
        authorize(conn, &header, "SetKey").await?;
        let mut params = vec![("value".to_string(), value.to_string())];
        params.extend(etcd_params(
            &options,
            &[
                agent1::options::TTL,
                agent1::options::DIR,
                agent1::options::PREV_EXIST,
                agent1::options::PREV_VALUE,
                agent1::options::PREV_INDEX,
            ],
        )?);
        let ev = self.write("PUT", key, &params).await?;
        Ok((key_node(&ev.node, now_ms()),))
    }

    /// Deletes a key, or a directory (options `dir`, `recursive`); `prevValue` (s) and
    /// `prevIndex` (t) make it a compare-and-delete. Returns the node as it was. Root and the
    /// `flotilla` group only.
    #[zbus(out_args("previous"))]
    async fn delete_key(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        key: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(KeyNode,), Error> {
        authorize(conn, &header, "DeleteKey").await?;
        let params = etcd_params(
            &options,
            &[
                agent1::options::DIR,
                agent1::options::RECURSIVE,
                agent1::options::PREV_VALUE,
                agent1::options::PREV_INDEX,
            ],
        )?;
        let ev = self.write("DELETE", key, &params).await?;
        let now = now_ms();
        let mut node = ev
            .prev_node
            .as_ref()
            .map_or_else(|| key_node(&ev.node, now), |p| key_node(p, now));
        node.modified_index = ev.node.modified_index;
        Ok((node,))
    }

    /// Subscribes the calling connection to `KeyChanged` for every change under `prefix` (until
    /// it unsubscribes or leaves the bus).
    async fn watch_keys(
        &self,
        #[zbus(header)] header: Header<'_>,
        prefix: &str,
    ) -> Result<(), Error> {
        let sender = sender(&header)?;
        let prefix = kv::normalize_key(prefix);
        let mut w = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = w.values().map(BTreeSet::len).sum();
        let mine = w.entry(sender.clone()).or_default();
        if mine.contains(&prefix) {
            return Ok(());
        }
        if mine.len() >= agent1::MAX_WATCHES_PER_CONNECTION {
            return Err(Error::TooManyWatches(format!(
                "connection {sender} watches {} prefixes, the limit; unwatch one first",
                mine.len()
            )));
        }
        if total >= MAX_WATCHES {
            return Err(Error::TooManyWatches(format!(
                "the agent serves {total} watches, the limit; try again later"
            )));
        }
        mine.insert(prefix);
        Ok(())
    }

    /// Ends a subscription of `WatchKeys`.
    async fn unwatch_keys(
        &self,
        #[zbus(header)] header: Header<'_>,
        prefix: &str,
    ) -> Result<(), Error> {
        let sender = sender(&header)?;
        let prefix = kv::normalize_key(prefix);
        let mut w = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let removed = w.get_mut(&sender).is_some_and(|s| s.remove(&prefix));
        if w.get(&sender).is_some_and(BTreeSet::is_empty) {
            w.remove(&sender);
        }
        if removed {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "connection {sender} does not watch {prefix}"
            )))
        }
    }

    /// Every machine of the cluster, by name.
    #[zbus(out_args("machines"))]
    async fn list_machines(&self) -> Vec<MachineRecord> {
        let a = self.cluster.applied();
        a.state.machines.by_name.values().map(machine).collect()
    }

    /// One machine by name; `""`: the machine of this agent.
    #[zbus(out_args("machine"))]
    async fn get_machine(&self, name: &str) -> Result<(MachineRecord,), Error> {
        let name = if name.is_empty() {
            self.machine_name.as_str()
        } else {
            name
        };
        let a = self.cluster.applied();
        match a.state.machines.by_name.get(name) {
            Some(m) => Ok((machine(m),)),
            None => Err(Error::MachineNotFound(format!(
                "machine {name} is not registered in the cluster"
            ))),
        }
    }

    /// The members of the Raft group (voters and learners).
    #[zbus(out_args("members"))]
    async fn list_members(&self) -> Vec<MemberRecord> {
        let leader = self.cluster.leader();
        self.cluster
            .members()
            .iter()
            .map(|m| member(m, leader, self.cluster.peers()))
            .collect()
    }

    /// Registers a member that will start with `[cluster] join`; it joins as a learner and
    /// becomes a voter while there are fewer than five. Root and the `flotilla` group only.
    #[zbus(out_args("member"))]
    async fn add_member(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
        peer_url: &str,
    ) -> Result<(MemberRecord,), Error> {
        authorize(conn, &header, "AddMember").await?;
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "a member name is required (it determines the member id)".into(),
            ));
        }
        let peer_addr =
            crate::raft::network::peer_addr(peer_url).map_err(Error::InvalidArgument)?;
        let m = Member {
            name: name.to_string(),
            peer_addr,
            client_urls: Vec::new(),
        };
        let info = MemberInfo {
            id: crate::raft::node_id(name),
            member: m.clone(),
            voter: false,
        };
        self.cluster
            .add_learner(m)
            .await
            .map_err(|e| cluster_error(e, name))?;
        Ok((member(&info, self.cluster.leader(), self.cluster.peers()),))
    }

    /// Removes a member, by id (16 hex digits) or name. Root and the `flotilla` group only.
    async fn remove_member(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        member: &str,
    ) -> Result<(), Error> {
        authorize(conn, &header, "RemoveMember").await?;
        let found = self
            .cluster
            .members()
            .into_iter()
            .find(|m| id_hex(m.id) == member || m.member.name == member);
        let Some(m) = found else {
            return Err(Error::MemberNotFound(format!(
                "no member {member} (give its name or its id, as ListMembers shows them)"
            )));
        };
        self.cluster
            .remove(m.id)
            .await
            .map_err(|e| cluster_error(e, member))
    }

    /// Whether a leader is known and confirms its leadership with a quorum now.
    #[zbus(out_args("health"))]
    async fn health(&self) -> (Health,) {
        let (term, applied_index) = self.cluster.raft_position();
        let leader = self
            .cluster
            .leader()
            .and_then(|id| member_name(&self.cluster, id))
            .unwrap_or_default();
        let (healthy, message) = match self.cluster.read_barrier().await {
            Ok(()) => (true, "ok".to_string()),
            Err(e) => (false, e.to_string()),
        };
        (Health {
            healthy,
            message,
            leader,
            term,
            applied_index,
        },)
    }

    /// Submits a unit file (a different content under `name` needs `replace`); whether it
    /// changed anything. A malformed file is refused with one `file:line:column: message` line
    /// per problem. Root and the `flotilla` group only.
    #[zbus(out_args("changed"))]
    async fn submit_unit(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
        text: &str,
        replace: bool,
    ) -> Result<bool, Error> {
        authorize(conn, &header, "SubmitUnit").await?;
        units::submit(&self.cluster, name, text.to_owned(), replace)
            .await
            .map_err(unit_error)
    }

    /// fleetctl load: places the unit on a machine, loaded and not started. Root and the
    /// `flotilla` group only.
    #[zbus(out_args("changed"))]
    async fn load_unit(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
    ) -> Result<bool, Error> {
        authorize(conn, &header, "LoadUnit").await?;
        self.transition(name, Transition::Load).await
    }

    /// fleetctl start: places the unit on a machine and starts it. Root and the `flotilla`
    /// group only.
    #[zbus(out_args("changed"))]
    async fn start_unit(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
    ) -> Result<bool, Error> {
        authorize(conn, &header, "StartUnit").await?;
        self.transition(name, Transition::Start).await
    }

    /// fleetctl stop: stops the unit; it stays loaded on its machines. Root and the
    /// `flotilla` group only.
    #[zbus(out_args("changed"))]
    async fn stop_unit(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
    ) -> Result<bool, Error> {
        authorize(conn, &header, "StopUnit").await?;
        self.transition(name, Transition::Stop).await
    }

    /// fleetctl unload: stops the unit and takes it off its machines. Root and the `flotilla`
    /// group only.
    #[zbus(out_args("changed"))]
    async fn unload_unit(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
    ) -> Result<bool, Error> {
        authorize(conn, &header, "UnloadUnit").await?;
        self.transition(name, Transition::Unload).await
    }

    /// fleetctl destroy: stops the unit and removes it from the cluster. Root and the
    /// `flotilla` group only.
    async fn destroy_unit(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
    ) -> Result<(), Error> {
        authorize(conn, &header, "DestroyUnit").await?;
        units::destroy(&self.cluster, name)
            .await
            .map(drop)
            .map_err(unit_error)
    }

    /// Restarts a started unit (or every started instance of a template) one machine after
    /// the other, each once the previous one is active again; returns when the rollout is
    /// committed (`false`: one is already under way). Root and the `flotilla` group only.
    #[zbus(out_args("started"))]
    async fn restart_unit(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
    ) -> Result<bool, Error> {
        authorize(conn, &header, "RestartUnit").await?;
        units::restart(&self.cluster, name)
            .await
            .map_err(unit_error)
    }

    /// Every unit on every machine it is assigned to (fleetctl list-units' rows), with the
    /// state that machine reports (empty until it reports one).
    #[zbus(out_args("units"))]
    async fn list_units(&self) -> Vec<UnitState> {
        units::list(&self.cluster)
            .await
            .iter()
            .flat_map(unit_states)
            .collect()
    }

    /// Every unit file of the cluster (fleetctl list-unit-files' rows).
    #[zbus(out_args("files"))]
    async fn list_unit_files(&self) -> Vec<UnitFile> {
        units::list(&self.cluster)
            .await
            .iter()
            .map(unit_file)
            .collect()
    }

    /// `systemctl status` of the unit, run on the machine that runs it (this one if it does).
    /// Its journal lines are left out for a caller who may not read journals (as
    /// `systemctl status` leaves them out for such a user).
    #[zbus(out_args("status"))]
    async fn unit_status(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
    ) -> Result<(UnitOutput,), Error> {
        let mut out = units::status(&self.cluster, name, None)
            .await
            .map_err(unit_error)?;
        if !may_read_journals(conn, &header, "UnitStatus").await? {
            out.output = without_journal(&out.output);
        }
        Ok((unit_output(out),))
    }

    /// The last `lines` lines (at most 10000) of the unit's journal, read on the machine that
    /// runs it (this one if it does). Root, the `flotilla` group and the groups that may read
    /// the whole journal (`systemd-journal`, `adm`) only.
    #[zbus(out_args("journal"))]
    async fn journal_lines(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
        lines: u32,
    ) -> Result<(UnitOutput,), Error> {
        authorize_journal(conn, &header, "JournalLines").await?;
        let out = units::journal(&self.cluster, name, lines, None, None)
            .await
            .map_err(unit_error)?;
        Ok((unit_output(out),))
    }

    /// Follows a unit's journal: the entries after `cursor` (empty: the last `lines`), read on
    /// the machine that runs it; the output ends with journalctl's `-- cursor: C` line, the
    /// cursor to ask from next.
    #[zbus(out_args("journal"))]
    async fn journal_after(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: &str,
        cursor: &str,
        lines: u32,
    ) -> Result<(UnitOutput,), Error> {
        authorize_journal(conn, &header, "JournalAfter").await?;
        let out = units::journal(&self.cluster, name, lines, Some(cursor), None)
            .await
            .map_err(unit_error)?;
        Ok((unit_output(out),))
    }

    /// Every image of this machine's store.
    #[zbus(out_args("images"))]
    async fn list_images(&self) -> Result<(Vec<ImageRecord>,), Error> {
        let list = self.images()?.list().await.map_err(image_error)?;
        Ok((list.iter().map(image_record).collect(),))
    }

    /// Pulls an image into this machine's store (joining a pull of it under way), emitting
    /// `ImagePullProgress` as its layers move on. Root and the `flotilla` group only.
    #[zbus(out_args("image"))]
    async fn pull_image(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        reference: &str,
    ) -> Result<(ImageRecord,), Error> {
        authorize(conn, &header, "PullImage").await?;
        let images = self.images()?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let progress: flotilla_images::ProgressFn = Arc::new(move |p| {
            let _ = tx.send(p);
        });
        let emit = async |p: flotilla_images::Progress| {
            let state = crate::images::layer_state_name(p.state);
            let sent = Self::image_pull_progress(
                &emitter,
                reference,
                p.digest.as_str(),
                state,
                p.done,
                p.total,
            )
            .await;
            if let Err(e) = sent {
                tracing::debug!("ImagePullProgress: {e}, ignoring");
            }
        };
        let pull = images.pull(reference, Some(progress));
        tokio::pin!(pull);
        let pulled = loop {
            tokio::select! {
                done = &mut pull => break done,
                Some(p) = rx.recv() => emit(p).await,
            }
        };
        while let Ok(p) = rx.try_recv() {
            emit(p).await;
        }
        let image = pulled.map_err(image_error)?;
        Ok((image_record(&image),))
    }

    /// Removes an image from this machine's store unless a unit here uses it. Root and the
    /// `flotilla` group only.
    #[zbus(out_args("image"))]
    async fn remove_image(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        reference: &str,
    ) -> Result<(ImageRecord,), Error> {
        authorize(conn, &header, "RemoveImage").await?;
        let image = self
            .images()?
            .remove_unused(&self.cluster, reference)
            .await
            .map_err(image_error)?;
        Ok((image_record(&image),))
    }

    /// Removes every image no unit on this machine uses; the images removed. Root and the
    /// `flotilla` group only.
    #[zbus(out_args("removed"))]
    async fn prune_images(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(Vec<ImageRecord>,), Error> {
        authorize(conn, &header, "PruneImages").await?;
        let removed = self
            .images()?
            .prune(&self.cluster)
            .await
            .map_err(image_error)?;
        Ok((removed.iter().map(image_record).collect(),))
    }

    /// A layer of an image being pulled moved on.
    #[zbus(signal)]
    async fn image_pull_progress(
        emitter: &SignalEmitter<'_>,
        reference: &str,
        layer: &str,
        state: &str,
        done: u64,
        total: u64,
    ) -> zbus::Result<()>;

    /// A change under a watched prefix: the key, etcd's action, the node after the change.
    #[zbus(signal)]
    async fn key_changed(
        emitter: &SignalEmitter<'_>,
        key: &str,
        action: &str,
        node: KeyNode,
    ) -> zbus::Result<()>;

    /// The leader changed: its name and id (empty when there is none), and the term.
    #[zbus(signal, name = "LeaderChanged")]
    async fn leader_change(
        emitter: &SignalEmitter<'_>,
        name: &str,
        id: &str,
        term: u64,
    ) -> zbus::Result<()>;

    /// The state a machine reports for a unit changed in the replicated state: systemd's
    /// `LoadState`, `ActiveState` and `SubState` there (all three empty: the machine no longer
    /// has the unit).
    #[zbus(signal)]
    async fn unit_state_changed(
        emitter: &SignalEmitter<'_>,
        name: &str,
        machine: &str,
        load: &str,
        active: &str,
        sub: &str,
    ) -> zbus::Result<()>;

    /// This machine's /etc/machine-id.
    #[zbus(property(emits_changed_signal = "const"))]
    fn machine_id(&self) -> String {
        self.machine_id.clone()
    }

    /// The leader's name, empty when there is none.
    #[zbus(property)]
    fn leader(&self) -> String {
        self.cluster
            .leader()
            .and_then(|id| member_name(&self.cluster, id))
            .unwrap_or_default()
    }

    /// The names of the members.
    #[zbus(property)]
    fn members(&self) -> Vec<String> {
        member_names(&self.cluster)
    }

    /// The agent's version.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        VERSION.to_string()
    }
}

impl Agent1 {
    /// This machine's image store.
    fn images(&self) -> Result<&Images, Error> {
        self.images
            .as_ref()
            .ok_or_else(|| Error::Failed("this agent runs without an image store".into()))
    }

    async fn transition(&self, name: &str, t: Transition) -> Result<bool, Error> {
        units::transition(&self.cluster, name, t)
            .await
            .map_err(unit_error)
    }

    async fn read(&self, key: &str, recursive: bool, quorum: bool) -> Result<Event, Error> {
        let now = now_ms();
        let mut params = vec![("sorted".to_string(), "true".to_string())];
        if recursive {
            params.push(("recursive".into(), "true".into()));
        }
        let req = kv::v2::parse("GET", key, &params, now, &self.limits).map_err(kv_error)?;
        let kv::v2::V2Request::Get { key, .. } = req else {
            return Err(Error::Failed(format!("a read of {key} parsed as a write")));
        };
        if quorum {
            self.cluster
                .read_barrier()
                .await
                .map_err(|e| cluster_error(e, &key))?;
        }
        let a = self.cluster.applied();
        a.state.kv.get(&key, recursive, true).map_err(kv_error)
    }

    async fn write(
        &self,
        method: &str,
        key: &str,
        params: &[(String, String)],
    ) -> Result<Event, Error> {
        let req = kv::v2::parse(method, key, params, now_ms(), &self.limits).map_err(kv_error)?;
        let kv::v2::V2Request::Write(w) = req else {
            return Err(Error::Failed(format!("a write of {key} parsed as a read")));
        };
        match self.cluster.propose(Command::Kv(w)).await {
            Ok(Response::Kv(Ok(ev))) => Ok(ev),
            Ok(Response::Kv(Err(e))) => Err(kv_error(e)),
            Ok(other) => Err(Error::Failed(format!(
                "unexpected response to a write of {key}: {other:?}"
            ))),
            Err(e) => Err(cluster_error(e, key)),
        }
    }
}

/// Turns `SetKey` / `DeleteKey` options into etcd v2 parameters; an option not in `allowed`, or
/// of the wrong type, is an error that names it.
fn etcd_params(
    options: &HashMap<String, OwnedVariant>,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for (name, value) in options {
        if !allowed.contains(&name.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "unknown option {name:?}; this method takes {}",
                allowed.join(", ")
            )));
        }
        let wrong = |want: &str| {
            Error::InvalidArgument(format!(
                "option {name:?} must be of type {want}, not {}",
                value.value_signature()
            ))
        };
        let text = match name.as_str() {
            agent1::options::TTL | agent1::options::PREV_INDEX => {
                u64::try_from(&**value).map_err(|_| wrong("t"))?.to_string()
            }
            agent1::options::PREV_VALUE => String::try_from(&**value).map_err(|_| wrong("s"))?,
            _ => bool::try_from(&**value)
                .map_err(|_| wrong("b"))?
                .to_string(),
        };
        out.push((name.clone(), text));
    }
    Ok(out)
}

/// Allows `method` for root and members of the `flotilla` group only.
async fn authorize(conn: &Connection, header: &Header<'_>, method: &str) -> Result<(), Error> {
    let (uid, groups) = caller(conn, header, method).await?;
    if uid == 0 || group_id(agent1::GROUP).is_some_and(|gid| groups.contains(&gid)) {
        return Ok(());
    }
    Err(Error::AccessDenied(format!(
        "{method} changes the cluster: it needs root or the group {}, and uid {uid} is neither",
        agent1::GROUP
    )))
}

/// Whether the caller may read units' journals: root, the [`agent1::GROUP`] group, or a group
/// that may read the whole journal with journalctl ([`agent1::JOURNAL_GROUPS`]).
async fn may_read_journals(
    conn: &Connection,
    header: &Header<'_>,
    method: &str,
) -> Result<bool, Error> {
    let (uid, groups) = caller(conn, header, method).await?;
    Ok(uid == 0
        || std::iter::once(agent1::GROUP)
            .chain(agent1::JOURNAL_GROUPS.iter().copied())
            .filter_map(group_id)
            .any(|gid| groups.contains(&gid)))
}

/// The caller's uid and groups, as the bus vouches for them.
async fn caller(
    conn: &Connection,
    header: &Header<'_>,
    method: &str,
) -> Result<(u32, Vec<u32>), Error> {
    let sender = sender(header)?;
    let bus = zbus::fdo::DBusProxy::new(conn)
        .await
        .map_err(|e| Error::Failed(format!("cannot ask the bus who called {method}: {e}")))?;
    let name = zbus::names::BusName::try_from(sender.as_str())
        .map_err(|e| Error::Failed(format!("caller {sender}: {e}")))?;
    let creds = bus
        .get_connection_credentials(name)
        .await
        .map_err(|e| Error::Failed(format!("cannot get the credentials of {sender}: {e}")))?;
    let Some(uid) = creds.unix_user_id() else {
        return Err(Error::AccessDenied(format!(
            "{method} needs to know who calls; the bus does not say who {sender} is"
        )));
    };
    let groups = match creds.unix_group_ids() {
        Some(g) => g.clone(),
        None => creds.process_id().map(process_groups).unwrap_or_default(),
    };
    Ok((uid, groups))
}

/// Refuses a caller who may not read journals (see [`may_read_journals`]).
async fn authorize_journal(
    conn: &Connection,
    header: &Header<'_>,
    method: &str,
) -> Result<(), Error> {
    if may_read_journals(conn, header, method).await? {
        return Ok(());
    }
    Err(Error::AccessDenied(format!(
        "{method} reads a unit's journal: it needs root or the group {}, {} (as journalctl does)",
        agent1::GROUP,
        agent1::JOURNAL_GROUPS.join(" or ")
    )))
}

/// `systemctl status` output without its journal lines (everything after the first blank line),
/// saying so.
fn without_journal(status: &str) -> String {
    let head = status.split("\n\n").next().unwrap_or_default();
    format!(
        "{head}\n\nJournal lines left out: reading them needs root or the group {}, {}.\n",
        agent1::GROUP,
        agent1::JOURNAL_GROUPS.join(" or ")
    )
}

fn sender(header: &Header<'_>) -> Result<String, Error> {
    header
        .sender()
        .map(|s| s.to_string())
        .ok_or_else(|| Error::Failed("the call carries no sender".into()))
}

/// The gid of `group` in /etc/group.
fn group_id(group: &str) -> Option<u32> {
    group_id_in(&std::fs::read_to_string("/etc/group").ok()?, group)
}

/// The gid of `group` in the text of an /etc/group file.
fn group_id_in(text: &str, group: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == group).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// The primary and supplementary groups of process `pid` (`Gid:` and `Groups:` of its status).
fn process_groups(pid: u32) -> Vec<u32> {
    status_groups(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default())
}

/// The groups of a `/proc/PID/status` text: the real gid and the supplementary groups.
fn status_groups(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Groups:") {
            out.extend(
                rest.split_whitespace()
                    .filter_map(|g| g.parse::<u32>().ok()),
            );
        } else if let Some(rest) = line.strip_prefix("Gid:") {
            out.extend(
                rest.split_whitespace()
                    .take(1)
                    .filter_map(|g| g.parse::<u32>().ok()),
            );
        }
    }
    out
}

fn flatten(nodes: &[Node], now: u64, out: &mut Vec<KeyNode>) {
    for n in nodes {
        out.push(key_node(n, now));
        if let Some(children) = &n.nodes {
            flatten(children, now, out);
        }
    }
}

fn key_node(n: &Node, now: u64) -> KeyNode {
    KeyNode {
        key: n.key.clone(),
        value: n.value.clone().unwrap_or_default(),
        dir: n.dir,
        created_index: n.created_index,
        modified_index: n.modified_index,
        ttl: n
            .expiration_ms
            .map_or(0, |e| kv::json::ttl_seconds(e, now).max(1)),
    }
}

fn machine(m: &Machine) -> MachineRecord {
    MachineRecord {
        name: m.name.clone(),
        machine_id: m.machine_id.clone(),
        addr: m.addr.clone(),
        metadata: m.metadata.clone(),
        status: match m.status {
            Status::Up => "up",
            Status::Lost => "lost",
        }
        .to_string(),
        since_ms: m.since_ms,
    }
}

fn member(m: &MemberInfo, leader: Option<u64>, peers: &Peers) -> MemberRecord {
    MemberRecord {
        id: id_hex(m.id),
        name: m.member.name.clone(),
        peer_url: peers.url(&m.member.peer_addr),
        client_urls: m.member.client_urls.clone(),
        voter: m.voter,
        leader: Some(m.id) == leader,
    }
}

/// An etcd error as a named error with a message that names the key.
fn kv_error(e: kv::Error) -> Error {
    let cause = e.cause;
    match e.code {
        ErrorCode::KeyNotFound => Error::KeyNotFound(format!("key {cause} not found")),
        ErrorCode::NodeExist => Error::KeyExists(format!("key {cause} already exists")),
        ErrorCode::TestFailed => Error::CompareFailed(format!("compare failed: {cause}")),
        ErrorCode::NotFile => Error::NotAFile(format!("{cause} is a directory, not a key")),
        ErrorCode::NotDir => Error::NotADirectory(format!("{cause} is not a directory")),
        ErrorCode::DirNotEmpty => Error::DirectoryNotEmpty(format!(
            "directory {cause} is not empty; delete it with the option recursive"
        )),
        ErrorCode::RaftInternal | ErrorCode::LeaderElect => Error::NoLeader(cause),
        code => Error::InvalidArgument(format!("{}: {cause}", code.message().to_lowercase())),
    }
}

/// The rows of fleetctl list-units for one unit: one per machine it is assigned to.
fn unit_states(v: &UnitView) -> Vec<UnitState> {
    v.machines
        .iter()
        .map(|m| {
            let s = v.state_on(m).cloned().unwrap_or_default();
            UnitState {
                unit: v.name.clone(),
                machine: m.clone(),
                desired: v.desired.as_str().to_owned(),
                load: s.load,
                active: s.active,
                sub: s.sub,
                hash: v.hash.clone(),
                result: s.result,
                main_pid: s.main_pid,
                since_ms: s.since_ms,
            }
        })
        .collect()
}

fn unit_file(v: &UnitView) -> UnitFile {
    UnitFile {
        unit: v.name.clone(),
        hash: v.hash.clone(),
        desired: v.desired.as_str().to_owned(),
        state: v.current().to_owned(),
        machines: v.machines.clone(),
        unschedulable: v.unschedulable.clone().unwrap_or_default(),
    }
}

fn unit_output(o: units::Output) -> UnitOutput {
    UnitOutput {
        machine: o.machine,
        output: o.output,
        exit_code: o.exit_code.unwrap_or(-1),
    }
}

/// A unit operation's error as a named error; the message is the one the HTTP API gives.
/// This machine's image store as a wire record.
fn image_record(i: &flotilla_images::Image) -> ImageRecord {
    let (repository, tag) = crate::images::repository_and_tag(&i.reference);
    ImageRecord {
        reference: i.reference.clone(),
        repository: repository.to_owned(),
        tag: tag.to_owned(),
        digest: i.manifest.as_str().to_owned(),
        config: i.config.as_str().to_owned(),
        size: i.size,
        pulled_ms: i.pulled_at,
    }
}

fn image_error(e: crate::images::Error) -> Error {
    use crate::images::Error as I;
    let message = e.to_string();
    match e {
        I::NotFound(_) => Error::ImageNotFound(message),
        I::InUse { .. } => Error::ImageInUse(message),
        I::Pull(_) | I::Auth(_) => Error::PullFailed(message),
        I::NoCommand(_) | I::CommandNotFound { .. } | I::UnknownUser { .. } => {
            Error::InvalidArgument(message)
        }
        I::Store(_) | I::Lost(_) | I::Task(_) => Error::Failed(message),
    }
}

fn unit_error(e: units::Error) -> Error {
    use flotilla_state::units::Error as R;
    let message = e.to_string();
    match e {
        units::Error::Unit(R::NotFound(_) | R::NoTemplate { .. }) => Error::UnitNotFound(message),
        units::Error::Unit(
            R::Malformed { .. } | R::BadName(_) | R::NoText(_) | R::Template(..),
        ) => Error::InvalidUnit(message),
        units::Error::Unit(R::Exists { .. }) => Error::UnitExists(message),
        units::Error::Unit(R::NotLoaded(_) | R::NotLaunched(_) | R::NotPlaced(_))
        | units::Error::NotScheduled(_)
        | units::Error::Unschedulable { .. } => Error::UnitNotRunning(message),
        units::Error::Unit(R::NotAssigned { .. } | R::UnknownMachine(_))
        | units::Error::NotAssigned { .. } => Error::MachineNotFound(message),
        units::Error::Unit(_) => Error::InvalidArgument(message),
        units::Error::Cluster(e) => cluster_error(e, "unit change"),
        units::Error::NoPeer(_) | units::Error::Unreachable { .. } => {
            Error::MachineUnreachable(message)
        }
        units::Error::Remote { status: 404, .. } => Error::UnitNotFound(message),
        units::Error::Remote { status: 409, .. } => Error::UnitNotRunning(message),
        units::Error::Remote { .. }
        | units::Error::Run { .. }
        | units::Error::Unexpected { .. } => Error::Failed(message),
    }
}

fn cluster_error(e: cluster::Error, what: &str) -> Error {
    match e {
        cluster::Error::NoLeader(m) => Error::NoLeader(format!("{what}: no leader: {m}")),
        cluster::Error::Rejected(m) => Error::Rejected(m),
        cluster::Error::Raft(m) => Error::Failed(format!("{what}: {m}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::Variant;

    fn options(pairs: &[(&str, Variant<'static>)]) -> HashMap<String, OwnedVariant> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OwnedVariant::try_from(v.clone()).unwrap()))
            .collect()
    }

    #[test]
    fn options_become_etcd_parameters_and_mistakes_are_named() {
        let allowed = [
            agent1::options::TTL,
            agent1::options::PREV_VALUE,
            agent1::options::DIR,
        ];
        let mut got = etcd_params(
            &options(&[
                ("ttl", Variant::from(30u64)),
                ("prevValue", Variant::from("old")),
                ("dir", Variant::from(true)),
            ]),
            &allowed,
        )
        .unwrap();
        got.sort();
        let want: Vec<(String, String)> = [("dir", "true"), ("prevValue", "old"), ("ttl", "30")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);

        let unknown = etcd_params(&options(&[("colour", Variant::from("red"))]), &allowed);
        assert_eq!(
            unknown.unwrap_err().message(),
            "unknown option \"colour\"; this method takes ttl, prevValue, dir"
        );
        let wrong = etcd_params(&options(&[("ttl", Variant::from("soon"))]), &allowed);
        assert_eq!(
            wrong.unwrap_err().message(),
            "option \"ttl\" must be of type t, not s"
        );
    }

    #[test]
    fn etcd_errors_become_named_errors_that_name_the_key() {
        let e = kv_error(kv::Error::new(ErrorCode::KeyNotFound, "/message", 7));
        assert_eq!(e.name(), "org.flotilla.Agent1.Error.KeyNotFound");
        assert_eq!(e.message(), "key /message not found");
        let e = kv_error(kv::Error::new(ErrorCode::NodeExist, "/message", 7));
        assert_eq!(e.name(), "org.flotilla.Agent1.Error.KeyExists");
        let e = kv_error(kv::Error::new(ErrorCode::TtlNaN, "ttl", 0));
        assert_eq!(e.name(), "org.flotilla.Agent1.Error.InvalidArgument");
        assert_eq!(
            e.message(),
            "the given ttl in post form is not a number: ttl"
        );
    }

    #[test]
    fn unit_errors_become_named_errors_with_the_http_api_message() {
        use flotilla_state::units::Error as R;
        let e = unit_error(units::Error::Unit(R::NotFound("x.service".into())));
        assert_eq!(e.name(), "org.flotilla.Agent1.Error.UnitNotFound");
        assert_eq!(
            e.message(),
            "unit 'x.service' does not exist: submit it first"
        );
        let e = unit_error(units::Error::Unit(R::Malformed {
            name: "x.service".into(),
            diagnostics: vec!["x.service:4:11: ExecStart=: not absolute".into()],
        }));
        assert_eq!(e.name(), "org.flotilla.Agent1.Error.InvalidUnit");
        assert_eq!(
            e.message(),
            "unit 'x.service' is malformed:\nx.service:4:11: ExecStart=: not absolute"
        );
        let e = unit_error(units::Error::Unit(R::NotLoaded("x.service".into())));
        assert_eq!(e.name(), "org.flotilla.Agent1.Error.UnitNotRunning");
        let e = unit_error(units::Error::Unreachable {
            machine: "node2".into(),
            addr: "10.0.0.2:2380".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(e.name(), "org.flotilla.Agent1.Error.MachineUnreachable");
        assert_eq!(
            e.message(),
            "cannot reach machine 'node2' at 10.0.0.2:2380: connection refused"
        );
        let e = unit_error(units::Error::Remote {
            machine: "node2".into(),
            status: 404,
            body: serde_json::json!({ "error": "unit 'x.service' does not exist: submit it first" }),
        });
        assert_eq!(e.name(), "org.flotilla.Agent1.Error.UnitNotFound");
        assert_eq!(
            e.message(),
            "machine 'node2' answered 404: unit 'x.service' does not exist: submit it first"
        );
    }

    #[test]
    fn groups_come_from_etc_group_and_proc_status() {
        let group = "root:x:0:\nflotilla:x:996:alice,bob\nnogroup:x:65534:\n";
        assert_eq!(group_id_in(group, "flotilla"), Some(996));
        assert_eq!(group_id_in(group, "flot"), None);
        let status = "Name:\tbusctl\nUid:\t1000\t1000\t1000\t1000\n\
                      Gid:\t1000\t1000\t1000\t1000\nGroups:\t24 996 \n";
        assert_eq!(status_groups(status), [1000, 24, 996]);
    }

    #[test]
    fn nodes_are_listed_in_pre_order_with_ttls_left() {
        let leaf = |key: &str, exp: Option<u64>| Node {
            key: key.into(),
            value: Some("v".into()),
            dir: false,
            expiration_ms: exp,
            modified_index: 2,
            created_index: 1,
            nodes: None,
        };
        let dir = Node {
            key: "/d/s".into(),
            value: None,
            dir: true,
            expiration_ms: None,
            modified_index: 1,
            created_index: 1,
            nodes: Some(vec![leaf("/d/s/x", Some(10_500))]),
        };
        let mut out = Vec::new();
        flatten(&[leaf("/d/a", None), dir], 1_000, &mut out);
        let keys: Vec<(&str, i64)> = out.iter().map(|n| (n.key.as_str(), n.ttl)).collect();
        assert_eq!(keys, [("/d/a", 0), ("/d/s", 0), ("/d/s/x", 10)]);
    }
}
