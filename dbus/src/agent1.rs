//! The agent's own D-Bus interface, `org.flotilla.Agent1` at `/org/flotilla/Agent1` on the system
//! bus: names, error names, the wire types, the bus policy, the introspection XML and the client
//! proxy [`Agent1Proxy`] that `flotctl` uses.
//!
//! # Design
//!
//! The server (`flotillad`'s `bus` module) implements exactly what [`INTROSPECTION`] declares; a
//! test compares the live object's introspection with that file. Methods are grouped by
//! subsystem and named `VerbNoun` (`GetKey`, `ListMembers`, `StartUnit`); the images methods
//! slot in the same way (`PullImage`, ...) with their own error names under [`ERROR_PREFIX`].
//!
//! - Keys: `GetKey`, `ListKeys`, `SetKey`, `DeleteKey`, and `WatchKeys` / `UnwatchKeys`: a watch is
//!   a subscription of the calling connection to a key prefix; the agent emits `KeyChanged` for
//!   every applied change under a watched prefix, and forgets a connection's watches when it
//!   leaves the bus.
//! - Machines: `ListMachines`, `GetMachine` (`""`: this machine), property `MachineId`.
//! - Units (fleet's verbs): `SubmitUnit`, `LoadUnit`, `StartUnit`, `StopUnit`, `UnloadUnit`,
//!   `DestroyUnit`, `RestartUnit` (rolling: one machine after the other), `ListUnits` (fleetctl
//!   list-units' rows: [`UnitState`]), `ListUnitFiles` ([`UnitFile`]), and `UnitStatus` /
//!   `JournalLines` ([`UnitOutput`]: `systemctl status` / `journalctl`, run on the machine that
//!   runs the unit). Every agent emits `UnitStateChanged` when the state a machine reports for
//!   a unit changes in the replicated state (empty states: the machine no longer has it).
//! - Cluster: `ListMembers`, `AddMember`, `RemoveMember`, `Health`; properties `Leader`,
//!   `Members`, `Version` (with `PropertiesChanged`) and the signal `LeaderChanged`.
//!
//! Access: everyone may read the cluster's state; units' journals (`JournalLines`,
//! `JournalAfter`, the log lines of `UnitStatus`) only root, [`GROUP`] and
//! [`JOURNAL_GROUPS`], as journalctl allows; the methods in [`MUTATING_METHODS`] are for root
//! and the [`GROUP`] group only. The bus policy ([`POLICY`]) says so, and the agent checks the caller's
//! uid and groups itself, so a permissive bus configuration does not open them.
//!
//! # Example usage
//!
//! ```no_run
//! # async fn run() -> Result<(), flotilla_dbus::agent1::Error> {
//! use flotilla_dbus::agent1::Agent1Proxy;
//!
//! let bus = zbus::Connection::system().await?;
//! let agent = Agent1Proxy::new(&bus).await?;
//! let node = agent.get_key("/message", false).await?;
//! println!("{}", node.value);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use zbus::{Type, Variant, proxy};

/// The agent's well-known bus name.
pub const NAME: &str = "org.flotilla.Agent1";
/// The agent's object path.
pub const PATH: &str = "/org/flotilla/Agent1";
/// The interface name.
pub const INTERFACE: &str = "org.flotilla.Agent1";
/// The prefix of every error name the agent returns.
pub const ERROR_PREFIX: &str = "org.flotilla.Agent1.Error";
/// The group whose members may call the methods that change state (besides root).
pub const GROUP: &str = "flotilla";
/// Groups that may read the whole journal with journalctl, and so units' journals through the
/// agent (`JournalLines`, `JournalAfter`, the log lines of `UnitStatus`), besides root and
/// [`GROUP`].
pub const JOURNAL_GROUPS: &[&str] = &["systemd-journal", "adm"];
/// The methods that change state: root and [`GROUP`] only.
pub const MUTATING_METHODS: &[&str] = &[
    "SetKey",
    "DeleteKey",
    "AddMember",
    "RemoveMember",
    "SubmitUnit",
    "LoadUnit",
    "StartUnit",
    "StopUnit",
    "UnloadUnit",
    "DestroyUnit",
    "RestartUnit",
    "PullImage",
    "RemoveImage",
    "PruneImages",
];
/// The most key prefixes one connection may watch at once.
pub const MAX_WATCHES_PER_CONNECTION: usize = 64;

/// The interface's introspection XML (`org.flotilla.Agent1.xml`), as the agent serves it.
pub const INTROSPECTION: &str = include_str!("../org.flotilla.Agent1.xml");
/// The bus policy, installed as `/usr/share/dbus-1/system.d/org.flotilla.Agent1.conf`.
pub const POLICY: &str = include_str!("../org.flotilla.Agent1.conf");
/// The file name the policy is installed under.
pub const POLICY_FILE: &str = "org.flotilla.Agent1.conf";

/// Options of `SetKey` and `DeleteKey` (`a{sv}`): etcd v2's parameters by their etcd names.
pub mod options {
    /// `t`: time to live in seconds (`SetKey`).
    pub const TTL: &str = "ttl";
    /// `b`: a directory (`SetKey`: create one; `DeleteKey`: remove an empty one).
    pub const DIR: &str = "dir";
    /// `b`: `true` = must exist (update), `false` = must not exist (create) (`SetKey`).
    pub const PREV_EXIST: &str = "prevExist";
    /// `s`: compare-and-swap / compare-and-delete on the current value.
    pub const PREV_VALUE: &str = "prevValue";
    /// `t`: compare-and-swap / compare-and-delete on the current modified index.
    pub const PREV_INDEX: &str = "prevIndex";
    /// `b`: remove a directory and everything under it (`DeleteKey`).
    pub const RECURSIVE: &str = "recursive";
}

/// A node of the key space: `(ssbttx)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct KeyNode {
    /// The full key, `/dir/key`.
    pub key: String,
    /// The value (empty for a directory).
    pub value: String,
    /// Whether it is a directory.
    pub dir: bool,
    /// The index that created it.
    pub created_index: u64,
    /// The index that last changed it.
    pub modified_index: u64,
    /// Seconds left to live; 0 for a key without a TTL.
    pub ttl: i64,
}

/// A machine of the cluster as the cluster committed it: `(sssa{ss}st)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct MachineRecord {
    /// Its `name`.
    pub name: String,
    /// Its /etc/machine-id.
    pub machine_id: String,
    /// The address it is reached at.
    pub addr: String,
    /// `[machine] metadata`.
    pub metadata: BTreeMap<String, String>,
    /// `up` or `lost`.
    pub status: String,
    /// When the status last changed (ms since the Unix epoch).
    pub since_ms: u64,
}

/// A member of the Raft group: `(sssasbb)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct MemberRecord {
    /// The member id, 16 hex digits (as etcd prints member ids).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its peer URL, `http://HOST:2380`.
    pub peer_url: String,
    /// Its client URLs.
    pub client_urls: Vec<String>,
    /// A voter (else a learner).
    pub voter: bool,
    /// The leader, as the answering agent knows it.
    pub leader: bool,
}

/// The agent's view of the cluster's health: `(bsstt)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct Health {
    /// A leader is known and confirmed its leadership with a quorum.
    pub healthy: bool,
    /// What is wrong, or `ok`.
    pub message: String,
    /// The leader's name, empty when there is none.
    pub leader: String,
    /// The Raft term.
    pub term: u64,
    /// The last log index applied on this member.
    pub applied_index: u64,
}

/// A unit on a machine it is assigned to, a row of fleetctl's `list-units`: `(ssssssssut)`.
/// A state the machine has not reported yet is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct UnitState {
    /// The unit name.
    pub unit: String,
    /// The machine's name.
    pub machine: String,
    /// fleet's desired state: `inactive`, `loaded` or `launched`.
    pub desired: String,
    /// systemd's `LoadState` there (`loaded`, `not-found`, ...).
    pub load: String,
    /// systemd's `ActiveState` there (`active`, `inactive`, `failed`, ...).
    pub active: String,
    /// systemd's `SubState` there (`running`, `dead`, ...).
    pub sub: String,
    /// The content hash of the unit file (SHA-256, hex).
    pub hash: String,
    /// systemd's `Result` there (`success`, `exit-code`, ...).
    pub result: String,
    /// The main PID there (0: none).
    pub main_pid: u32,
    /// When `active` last changed there (ms since the Unix epoch, that machine's clock).
    pub since_ms: u64,
}

/// A unit file of the cluster, a row of fleetctl's `list-unit-files`: `(ssssass)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct UnitFile {
    /// The unit name.
    pub unit: String,
    /// The content hash (SHA-256, hex).
    pub hash: String,
    /// fleet's desired state: `inactive`, `loaded` or `launched`.
    pub desired: String,
    /// fleet's current state: `launched` (active on a machine), `loaded` or `inactive`.
    pub state: String,
    /// The machines it is assigned to.
    pub machines: Vec<String>,
    /// Why the scheduler cannot place it (empty: nothing stops it).
    pub unschedulable: String,
}

/// What a command (`systemctl status`, `journalctl`) printed on the machine of a unit:
/// `(ssi)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct UnitOutput {
    /// The machine it ran on.
    pub machine: String,
    /// Its standard output, then its standard error.
    pub output: String,
    /// Its exit code (-1: killed by a signal).
    pub exit_code: i32,
}

/// An image of this machine's store: `(ssssstt)`: the reference it was pulled by, repository,
/// tag, manifest digest, config digest, size in bytes, when it was pulled (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ImageRecord {
    /// The reference it was pulled by, normalized (`registry/name:tag`).
    pub reference: String,
    /// `registry/name`.
    pub repository: String,
    /// The tag (`<none>` for a digest reference).
    pub tag: String,
    /// The manifest's digest.
    pub digest: String,
    /// The config's digest (names the unpacked root file system).
    pub config: String,
    /// Bytes of its layers.
    pub size: u64,
    /// When it was pulled, in milliseconds since the epoch.
    pub pulled_ms: u64,
}

/// The named errors the agent returns, `org.flotilla.Agent1.Error.<Variant>`, each with a message
/// for a person.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.flotilla.Agent1.Error")]
pub enum Error {
    /// Not an error of the agent: the bus, or the connection to it.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The key does not exist.
    KeyNotFound(String),
    /// The key exists and the call required that it did not.
    KeyExists(String),
    /// A compare-and-swap or compare-and-delete condition did not hold.
    CompareFailed(String),
    /// The key is a directory where a key was expected.
    NotAFile(String),
    /// The key is not a directory where one was expected.
    NotADirectory(String),
    /// The directory is not empty.
    DirectoryNotEmpty(String),
    /// An argument is invalid (a key too long, an unknown option, ...).
    InvalidArgument(String),
    /// No leader could be reached: an election is in progress, or there is no quorum.
    NoLeader(String),
    /// The caller may not call this method.
    AccessDenied(String),
    /// No such member.
    MemberNotFound(String),
    /// No such machine.
    MachineNotFound(String),
    /// The cluster refused the change (a member that exists, the last voter, ...).
    Rejected(String),
    /// No such unit (nor a template to create it from).
    UnitNotFound(String),
    /// The unit file or name is not valid; a malformed file's message has one
    /// `file:line:column: message` line per problem.
    InvalidUnit(String),
    /// A unit of different content exists under that name (submit it with `replace`).
    UnitExists(String),
    /// The unit does not run where the call needs it to (stop of an inactive unit, restart
    /// of a unit not started, status of a unit on no machine).
    UnitNotRunning(String),
    /// The machine that runs the unit could not be reached.
    MachineUnreachable(String),
    /// The calling connection watches too many prefixes.
    TooManyWatches(String),
    /// No such image in this machine's store.
    ImageNotFound(String),
    /// A unit on this machine uses the image.
    ImageInUse(String),
    /// The pull failed (the registry's error, a refused digest...); the store is as it was.
    PullFailed(String),
    /// Anything else.
    Failed(String),
}

impl Error {
    /// The message for a person (the description, without the error name).
    pub fn message(&self) -> String {
        zbus::DBusError::description(self)
            .map(str::to_string)
            .unwrap_or_else(|| self.to_string())
    }

    /// The error's D-Bus name, `org.flotilla.Agent1.Error.KeyNotFound`.
    pub fn name(&self) -> String {
        zbus::DBusError::name(self).to_string()
    }
}

/// The client side of `org.flotilla.Agent1`.
#[proxy(
    interface = "org.flotilla.Agent1",
    default_service = "org.flotilla.Agent1",
    default_path = "/org/flotilla/Agent1"
)]
pub trait Agent1 {
    /// A key or directory (no children); `quorum`: a linearizable read through the leader.
    fn get_key(&self, key: &str, quorum: bool) -> Result<KeyNode, Error>;

    /// What is under a directory (pre-order, sorted), or the key itself.
    fn list_keys(&self, key: &str, recursive: bool, quorum: bool) -> Result<Vec<KeyNode>, Error>;

    /// Sets a key (or creates a directory); see [`options`]. Returns the node written.
    fn set_key(
        &self,
        key: &str,
        value: &str,
        options: HashMap<&str, Variant<'_>>,
    ) -> Result<KeyNode, Error>;

    /// Deletes a key or directory; see [`options`]. Returns the node as it was.
    fn delete_key(&self, key: &str, options: HashMap<&str, Variant<'_>>) -> Result<KeyNode, Error>;

    /// Subscribes the calling connection to `KeyChanged` for everything under `prefix`.
    fn watch_keys(&self, prefix: &str) -> Result<(), Error>;

    /// Ends a subscription of [`Agent1Proxy::watch_keys`].
    fn unwatch_keys(&self, prefix: &str) -> Result<(), Error>;

    /// Every machine of the cluster.
    fn list_machines(&self) -> Result<Vec<MachineRecord>, Error>;

    /// One machine by name; `""` is the machine of the agent answering.
    fn get_machine(&self, name: &str) -> Result<MachineRecord, Error>;

    /// The members of the Raft group.
    fn list_members(&self) -> Result<Vec<MemberRecord>, Error>;

    /// Registers a member that will start with `[cluster] join` (a learner until promoted).
    fn add_member(&self, name: &str, peer_url: &str) -> Result<MemberRecord, Error>;

    /// Removes a member, by id (hex) or name.
    fn remove_member(&self, member: &str) -> Result<(), Error>;

    /// Whether a leader is known and holds a quorum.
    fn health(&self) -> Result<Health, Error>;

    /// Submits a unit file (a different content under `name` needs `replace`); whether it
    /// changed anything.
    fn submit_unit(&self, name: &str, text: &str, replace: bool) -> Result<bool, Error>;

    /// fleetctl load: places the unit on a machine, loaded and not started.
    fn load_unit(&self, name: &str) -> Result<bool, Error>;

    /// fleetctl start: places the unit on a machine and starts it.
    fn start_unit(&self, name: &str) -> Result<bool, Error>;

    /// fleetctl stop: stops the unit; it stays loaded on its machines.
    fn stop_unit(&self, name: &str) -> Result<bool, Error>;

    /// fleetctl unload: stops the unit and takes it off its machines.
    fn unload_unit(&self, name: &str) -> Result<bool, Error>;

    /// fleetctl destroy: stops the unit and removes it from the cluster.
    fn destroy_unit(&self, name: &str) -> Result<(), Error>;

    /// Restarts a started unit (or every started instance of a template) one machine after
    /// the other; `false`: a rolling restart of it is already under way.
    fn restart_unit(&self, name: &str) -> Result<bool, Error>;

    /// Every unit on every machine it is assigned to, with the state that machine reports.
    fn list_units(&self) -> Result<Vec<UnitState>, Error>;

    /// Every unit file of the cluster.
    fn list_unit_files(&self) -> Result<Vec<UnitFile>, Error>;

    /// `systemctl status` of the unit, run on the machine that runs it.
    fn unit_status(&self, name: &str) -> Result<UnitOutput, Error>;

    /// The last `lines` lines of the unit's journal, read on the machine that runs it.
    fn journal_lines(&self, name: &str, lines: u32) -> Result<UnitOutput, Error>;

    /// The unit's journal entries after `cursor` (empty: the last `lines`), read on the machine
    /// that runs it; the output ends with a `-- cursor: C` line to ask from next.
    fn journal_after(&self, name: &str, cursor: &str, lines: u32) -> Result<UnitOutput, Error>;

    /// Every image of this machine's store.
    fn list_images(&self) -> Result<Vec<ImageRecord>, Error>;

    /// Pulls an image into this machine's store (joining a pull of it already under way);
    /// `ImagePullProgress` signals tell how its layers go. Root and the `flotilla` group only.
    fn pull_image(&self, reference: &str) -> Result<ImageRecord, Error>;

    /// Removes an image from this machine's store, unless a unit here uses it. Root and the
    /// `flotilla` group only.
    fn remove_image(&self, reference: &str) -> Result<ImageRecord, Error>;

    /// Removes every image no unit on this machine uses; the images removed. Root and the
    /// `flotilla` group only.
    fn prune_images(&self) -> Result<Vec<ImageRecord>, Error>;

    /// A layer of an image being pulled moved on: the reference asked for, the layer's
    /// digest, its state (`cached`, `downloading`, `downloaded`, `unpacked`), bytes done and
    /// its size.
    #[zbus(signal)]
    fn image_pull_progress(
        &self,
        reference: &str,
        layer: &str,
        state: &str,
        done: u64,
        total: u64,
    ) -> zbus::Result<()>;

    /// The state a machine reports for a unit changed (all three empty: the machine no longer
    /// has the unit).
    #[zbus(signal)]
    fn unit_state_changed(
        &self,
        name: &str,
        machine: &str,
        load: &str,
        active: &str,
        sub: &str,
    ) -> zbus::Result<()>;

    /// A change under a watched prefix: the key, etcd's action (`set`, `delete`, `expire`, ...),
    /// the node after the change (for a deletion: the key with an empty value) and the index.
    #[zbus(signal)]
    fn key_changed(&self, key: &str, action: &str, node: KeyNode) -> zbus::Result<()>;

    /// The leader changed: its name and id (empty when there is none), and the term.
    /// (`receive_leader_change`: `receive_leader_changed` follows the `Leader` property.)
    #[zbus(signal, name = "LeaderChanged")]
    fn leader_change(&self, name: &str, id: &str, term: u64) -> zbus::Result<()>;

    /// This machine's /etc/machine-id.
    #[zbus(property)]
    fn machine_id(&self) -> zbus::Result<String>;

    /// The leader's name, empty when there is none.
    #[zbus(property)]
    fn leader(&self) -> zbus::Result<String>;

    /// The names of the members.
    #[zbus(property)]
    fn members(&self) -> zbus::Result<Vec<String>>;

    /// The agent's version.
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_types_have_the_documented_signatures() {
        assert_eq!(KeyNode::SIGNATURE.to_string(), "(ssbttx)");
        assert_eq!(MachineRecord::SIGNATURE.to_string(), "(sssa{ss}st)");
        assert_eq!(MemberRecord::SIGNATURE.to_string(), "(sssasbb)");
        assert_eq!(Health::SIGNATURE.to_string(), "(bsstt)");
        assert_eq!(UnitState::SIGNATURE.to_string(), "(ssssssssut)");
        assert_eq!(UnitFile::SIGNATURE.to_string(), "(ssssass)");
        assert_eq!(UnitOutput::SIGNATURE.to_string(), "(ssi)");
        assert_eq!(ImageRecord::SIGNATURE.to_string(), "(ssssstt)");
    }

    #[test]
    fn error_names_are_under_the_prefix_and_keep_the_message() {
        let e = Error::KeyNotFound("key /message not found".into());
        assert_eq!(e.name(), "org.flotilla.Agent1.Error.KeyNotFound");
        assert_eq!(e.message(), "key /message not found");
        assert!(e.name().starts_with(ERROR_PREFIX));
    }

    #[test]
    fn introspection_declares_every_mutating_method_and_the_policy_guards_them() {
        for m in MUTATING_METHODS {
            assert!(
                INTROSPECTION.contains(&format!("<method name=\"{m}\">")),
                "{m} missing from the XML"
            );
        }
        // Everything the default context may call is a read: no mutating method is allowed there.
        let default = POLICY
            .split("<policy context=\"default\">")
            .nth(1)
            .and_then(|s| s.split("</policy>").next())
            .expect("the policy has a default context");
        for m in MUTATING_METHODS {
            assert!(
                !default.contains(&format!("send_member=\"{m}\"")),
                "{m} allowed to everyone"
            );
        }
        // Every read method of the XML is allowed to everyone.
        for line in INTROSPECTION.lines() {
            if let Some(rest) = line.trim().strip_prefix("<method name=\"") {
                let name = rest.split('"').next().unwrap_or_default();
                if !MUTATING_METHODS.contains(&name) && INTROSPECTION.contains(INTERFACE) {
                    assert!(
                        default.contains(&format!("send_member=\"{name}\"")),
                        "{name} not readable by everyone"
                    );
                }
            }
        }
    }
}
