//! The testbed: a cluster of machines that run real systemd, in namespaces on this machine.
//!
//! # Background
//!
//! flotilla drives systemd, so it can only be proven on machines that run systemd as PID 1. The
//! hosts it is developed and tested on (containers, CI runners) often do not. A full systemd
//! boots nonetheless as PID 1 of a new set of namespaces (pid, mount, uts, ipc, cgroup, network),
//! with its own D-Bus system bus and journal: that is a testbed machine.
//!
//! # Design
//!
//! - Instance `K` (allocated under a lock, see [`instance`]) owns the bridge `fltbrK` with
//!   `10.213.K.1/24`; its machine `i` (1-based) is the network namespace `flt<K>n<i>` with `eth0`
//!   at `10.213.K.(10+i)`, plugged into the bridge by the host-side veth `flt<K>v<i>`, host name
//!   `node<i>`.
//! - The root file system is the host's. Each machine gets its own `/etc/machine-id`,
//!   `/etc/hostname`, `/etc/flotilla`, `/var/lib/flotilla` and `/var/log` (bind mounts of its
//!   directory under `/var/lib/flotilla-testbed/K/`) and tmpfs on `/run`, `/tmp` and `/var/tmp`,
//!   all inside its own mount namespace: nothing is mounted on the host.
//! - Each machine's systemd runs in its own cgroup (below the caller's, in every hierarchy) and
//!   boots `flotilla-testbed.target` (basic.target + dbus.socket), never the host's default
//!   target; units that would change the host (sysctl, binfmt, remount, timers that run apt, ...)
//!   are masked. See `testbed/boot.sh` and [`machine`].
//! - With an agent, each machine has `/etc/flotilla/flotilla.toml` (every machine in
//!   `initial_cluster`) and `flotillad.service` (`Type=notify`) in `/run/systemd/system`.
//! - Every resource is recorded in the state file before it is created; teardown removes exactly
//!   what is recorded, on [`Drop`] (also while panicking, after printing every machine's journal),
//!   in `testbed down`, and for a crashed owner in the next [`Testbed::up`].
//!
//! # Current limitations
//!
//! - Root only; Linux with iproute2, util-linux (`unshare`, `nsenter`) and systemd installed.
//! - The mount points `/etc/flotilla` and `/var/lib/flotilla` are created on the host if missing
//!   (empty directories, left in place).
//! - [`Node::slow_link`] needs the kernel's `sch_netem`.
//! - A machine's processes are killed, never asked to stop, at teardown.
//! - Machines share the host's kernel: its boot id is replaced per boot, but `dmesg`, sysctls
//!   outside the network namespace and the clock are the host's.
//! - A `testbed up` that is interrupted finishes building before it takes everything down again.
//! - A testbed from [`Testbed::shared`] prints no journals when one of its tests fails.
//!
//! # Example usage
//!
//! ```no_run
//! use flotilla_tests::testbed::{Options, Testbed};
//!
//! let tb = Testbed::up(Options::new(3))?;
//! let out = tb.node(2).exec(&["systemctl", "is-system-running"])?;
//! println!("{}: {}", tb.node(2).name(), String::from_utf8_lossy(&out.stdout));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod agent;
pub mod instance;
pub mod machine;
pub mod network;
pub mod wait;

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

pub use machine::{MachineError, Node};
pub use wait::{WaitError, terminate, wait_for, wait_for_async, wait_until};

use instance::{InstanceError, Lock, MachineRecord, ProcessId, Record};
use network::NetworkError;

/// Directories every machine has its own (tmpfs) of: the host's files there are invisible inside,
/// except the paths [`shared_paths`] names.
const PRIVATE_DIRS: &[&str] = &["/tmp", "/var/tmp", "/run"];

/// Host paths below [`PRIVATE_DIRS`] that machines must still see, at the same path: the build's
/// target directory (test binaries, the agent, `CARGO_TARGET_TMPDIR`) and the agent's directory,
/// when a checkout lives in /tmp, as CI's may. The boot script binds them back over the tmpfs.
pub(crate) fn shared_paths(agent: Option<&Path>) -> Vec<PathBuf> {
    let exe = std::env::current_exe().ok();
    // target/PROFILE/deps/test-HASH or target/PROFILE/BIN -> target
    let target = exe.as_deref().and_then(Path::parent).map(|dir| {
        let profile = if dir.ends_with("deps") {
            dir.parent().unwrap_or(dir)
        } else {
            dir
        };
        profile.parent().unwrap_or(profile).to_path_buf()
    });
    let mut paths: Vec<PathBuf> = Vec::new();
    for p in target
        .into_iter()
        .chain(agent.and_then(Path::parent).map(Path::to_path_buf))
    {
        let private = PRIVATE_DIRS.iter().any(|d| p.starts_with(d));
        if private && p.is_dir() && !paths.iter().any(|q| p.starts_with(q)) {
            paths.push(p);
        }
    }
    paths
}

const BOOT_SCRIPT: &str = include_str!("testbed/boot.sh");

/// A failure to bring a testbed up, find it or take it down.
#[derive(thiserror::Error)]
pub enum TestbedError {
    /// Recording or removing the instance failed.
    #[error(transparent)]
    Instance(#[from] InstanceError),
    /// A machine failed.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The network could not be built.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// A file of the testbed could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Not root.
    #[error("the testbed needs root (network namespaces, mounts, cgroups); run it with sudo")]
    NotRoot,
    /// No machines asked for.
    #[error("a testbed needs 1 to 200 machines, not {0}")]
    BadSize(usize),
    /// The agent binary does not exist.
    #[error(
        "agent binary {0} not found: build it (cargo build -p flotilla-agent) or pass --agent PATH or --no-agent"
    )]
    NoAgentBinary(PathBuf),
    /// No testbed with this id.
    #[error("no testbed {0} is up (see `testbed status`)")]
    NoSuchInstance(u8),
    /// Several testbeds are up and none was named.
    #[error("{0} testbeds are up ({1}): name one with --id")]
    Ambiguous(usize, String),
    /// No testbed is up.
    #[error("no testbed is up: start one with `testbed up --nodes 3`")]
    NoneUp,
    /// No machine of this name.
    #[error("testbed {id} has no machine {name} (it has node1 to node{len})")]
    NoSuchNode {
        /// The testbed.
        id: u8,
        /// The name asked for.
        name: String,
        /// How many machines it has.
        len: usize,
    },
}

// Debug is Display: a test's `unwrap()` then shows the journal that comes with an error as text.
impl std::fmt::Debug for TestbedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// How to build a testbed.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many machines.
    pub nodes: usize,
    /// The agent binary each machine runs as `flotillad.service`; none: no agent at all.
    pub agent: Option<PathBuf>,
    /// Whether the agent is started at boot (and waited for); otherwise [`Node::start_agent`].
    pub start_agent: bool,
    /// The deadline of each wait: boot, agent ready, agent stopped.
    pub deadline: Duration,
}

impl Options {
    /// `nodes` machines, no agent, 30 s deadlines.
    pub fn new(nodes: usize) -> Options {
        Options {
            nodes,
            agent: None,
            start_agent: true,
            deadline: Duration::from_secs(30),
        }
    }

    /// Runs `agent` as `flotillad.service` in every machine.
    pub fn agent(mut self, agent: impl Into<PathBuf>) -> Options {
        self.agent = Some(agent.into());
        self
    }

    /// Installs the agent's unit but does not start it.
    pub fn agent_stopped(mut self) -> Options {
        self.start_agent = false;
        self
    }

    /// The `flotillad` built next to the running executable: `target/debug/flotillad` for the
    /// `testbed` binary and for test binaries (which live one level down, in `deps/`).
    pub fn default_agent() -> PathBuf {
        let exe = std::env::current_exe().unwrap_or_default();
        let dir = exe.parent().unwrap_or(Path::new("."));
        let candidates = [dir.join("flotillad"), dir.join("../flotillad")];
        candidates
            .iter()
            .find(|p| p.exists())
            .cloned()
            .unwrap_or_else(|| candidates[0].clone())
    }
}

/// A running testbed. Dropping it removes everything it created, unless it was
/// [detached](Testbed::detach) or [opened](Testbed::open) from another process.
pub struct Testbed {
    record: Mutex<Record>,
    /// The launcher of each machine, to reap (none for a testbed opened from its state file).
    children: Mutex<Vec<Option<Child>>>,
    /// Whether dropping it leaves it running.
    detached: bool,
    start_agent: bool,
    deadline: Duration,
}

impl std::fmt::Debug for Testbed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Testbed").field("id", &self.id()).finish()
    }
}

impl Testbed {
    /// Builds a testbed: removes leftovers of crashed runs, allocates an id, builds the network,
    /// boots every machine and waits until each reached its target (and its agent is ready, if
    /// it runs one). On failure, everything built so far is removed.
    pub fn up(options: Options) -> Result<Testbed, TestbedError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(TestbedError::NotRoot);
        }
        if options.nodes == 0 || options.nodes > 200 {
            return Err(TestbedError::BadSize(options.nodes));
        }
        let mut options = options;
        if let Some(agent) = &options.agent {
            let agent =
                fs::canonicalize(agent).map_err(|_| TestbedError::NoAgentBinary(agent.clone()))?;
            options.agent = Some(agent);
        }
        let record = {
            let lock = Lock::take()?;
            lock.remove_leftovers(false)?;
            lock.allocate(Some(ProcessId::current()))?
        };
        let tb = Testbed {
            record: Mutex::new(record),
            children: Mutex::new(Vec::new()),
            detached: false,
            start_agent: options.start_agent,
            deadline: options.deadline,
        };
        tb.build(&options)?;
        Ok(tb)
    }

    fn build(&self, options: &Options) -> Result<(), TestbedError> {
        let id = self.id();
        let dir = self.record().dir.clone();
        fs::create_dir_all(&dir).map_err(|source| TestbedError::Io {
            path: dir.clone(),
            source,
        })?;
        let script = dir.join("boot.sh");
        fs::write(&script, BOOT_SCRIPT).map_err(|source| TestbedError::Io {
            path: script,
            source,
        })?;

        let bridge = format!("fltbr{id}");
        self.update(|r| {
            r.bridge = Some(bridge.clone());
            r.agent = options.agent.clone();
        })?;
        network::add_bridge(&bridge, Ipv4Addr::new(10, 213, id, 1))?;

        let members: Vec<agent::Member> = (1..=options.nodes)
            .map(|i| agent::Member {
                name: format!("node{i}"),
                addr: Ipv4Addr::new(10, 213, id, 10 + i as u8),
            })
            .collect();
        for (i, member) in (1..).zip(&members) {
            let netns = format!("flt{id}n{i}");
            let machine = MachineRecord {
                index: i,
                name: member.name.clone(),
                veth: format!("flt{id}v{i}"),
                addr: member.addr,
                dir: dir.join(&member.name),
                cgroups: machine::cgroups_for(&netns),
                netns,
                launcher: None,
                init: None,
            };
            self.update(|r| r.machines.push(machine.clone()))?;
            network::add_machine_link(&machine.netns, &machine.veth, &bridge, machine.addr)?;
            machine::prepare(
                &machine,
                &agent::config(member, &members),
                options.agent.as_deref(),
            )?;
        }

        // Boot them all, then wait for each: the boots overlap.
        for i in 1..=options.nodes {
            let child = machine::launch(self, i)?;
            self.adopt(i, child);
        }
        for node in self.nodes() {
            node.wait_booted(self.deadline)?;
        }
        if options.agent.is_some() && options.start_agent {
            // Start every agent before waiting for any: an agent may be ready only once it has
            // met its peers.
            for node in self.nodes() {
                node.exec(&["systemctl", "start", "--no-block", agent::UNIT])?;
            }
            for node in self.nodes() {
                node.wait_active(agent::UNIT, self.deadline)?;
            }
        }
        Ok(())
    }

    /// The testbed shared by the tests of one area (`key`) in this process, built by the first
    /// caller from `options()`. It is taken down when the process exits (an `atexit` handler: the
    /// test harness exits normally also when tests failed); if the process is killed instead, the
    /// next run removes it as a leftover. Share only where tests cannot disturb each other:
    /// distinct unit names, no faults.
    pub fn shared(
        key: &'static str,
        options: impl FnOnce() -> Options,
    ) -> Result<&'static Testbed, TestbedError> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, tb)) = shared.iter().find(|(k, _)| *k == key) {
            return Ok(tb);
        }
        let tb: &'static Testbed = Box::leak(Box::new(Testbed::up(options())?));
        if shared.is_empty() {
            // SAFETY: `remove_shared` is a plain function with no arguments, as atexit(3) wants.
            unsafe { libc::atexit(remove_shared) };
        }
        shared.push((key, tb));
        Ok(tb)
    }

    /// A testbed left running by `testbed up` (or by another process): `id`, or the only one up.
    /// Dropping the handle leaves it running; [`Testbed::down`] removes it.
    pub fn open(id: Option<u8>) -> Result<Testbed, TestbedError> {
        let record = match id {
            Some(id) => Record::load(id)?.ok_or(TestbedError::NoSuchInstance(id))?,
            None => {
                let mut all = Record::load_all()?;
                match all.len() {
                    0 => return Err(TestbedError::NoneUp),
                    1 => all.remove(0),
                    n => {
                        let ids: Vec<String> = all.iter().map(|r| r.id.to_string()).collect();
                        return Err(TestbedError::Ambiguous(n, ids.join(", ")));
                    }
                }
            }
        };
        Ok(Testbed {
            record: Mutex::new(record),
            children: Mutex::new(Vec::new()),
            detached: true,
            start_agent: true,
            deadline: Duration::from_secs(30),
        })
    }

    /// Every testbed recorded on this host.
    pub fn list() -> Result<Vec<Record>, TestbedError> {
        Ok(Record::load_all()?)
    }

    /// Removes every testbed whose owner died, and with `detached` every testbed left running by
    /// `testbed up`; testbeds of live processes (running tests) are left alone. Returns the ids
    /// removed.
    pub fn remove_all(detached: bool) -> Result<Vec<u8>, TestbedError> {
        let lock = Lock::take()?;
        Ok(lock.remove_leftovers(detached)?)
    }

    /// Leaves the testbed running after this handle is gone (and after this process exits):
    /// `testbed down` or [`Testbed::remove_all`] removes it.
    pub fn detach(mut self) -> Result<(), TestbedError> {
        self.update(|r| r.owner = None)?;
        self.detached = true;
        Ok(())
    }

    /// Removes the testbed now, reporting failures (dropping it does the same, printing them).
    pub fn down(mut self) -> Result<(), TestbedError> {
        self.detached = true;
        self.teardown()
    }

    fn teardown(&self) -> Result<(), TestbedError> {
        let record = self.record().clone();
        for machine in &record.machines {
            instance::stop_machine(record.id, machine)?;
            self.reap(machine.index);
        }
        record.destroy()?;
        Ok(())
    }

    /// The instance id `K`.
    pub fn id(&self) -> u8 {
        self.record().id
    }

    /// How many machines.
    pub fn len(&self) -> usize {
        self.record().machines.len()
    }

    /// Whether it has no machines (never, once up).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Machine `index`, 1-based: `node(1)` is `node1`.
    ///
    /// # Panics
    ///
    /// If there is no such machine.
    pub fn node(&self, index: usize) -> Node<'_> {
        assert!(
            (1..=self.len()).contains(&index),
            "testbed {} has node1 to node{}, not node{index}",
            self.id(),
            self.len()
        );
        Node { tb: self, index }
    }

    /// The machine called `name` (`node2`).
    pub fn node_named(&self, name: &str) -> Result<Node<'_>, TestbedError> {
        let record = self.record();
        let found = record.machines.iter().find(|m| m.name == name);
        match found {
            Some(m) => Ok(Node {
                tb: self,
                index: m.index,
            }),
            None => Err(TestbedError::NoSuchNode {
                id: record.id,
                name: name.to_owned(),
                len: record.machines.len(),
            }),
        }
    }

    /// Every machine, in order.
    pub fn nodes(&self) -> impl Iterator<Item = Node<'_>> {
        (1..=self.len()).map(move |index| Node { tb: self, index })
    }

    /// The bridge's address (the host's address on the testbed's network).
    pub fn host_addr(&self) -> Ipv4Addr {
        self.record().bridge_addr()
    }

    /// Whether it runs an agent in every machine.
    pub fn has_agent(&self) -> bool {
        self.record().agent.is_some()
    }

    /// What was recorded about it.
    pub fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Prints the last lines of every machine's journal to stderr.
    pub fn dump_journals(&self, lines: usize) {
        for node in self.nodes() {
            eprintln!(
                "--- journal of {} ({}) ---\n{}",
                node.name(),
                node.addr(),
                node.journal(None, lines)
            );
        }
    }

    pub(crate) fn update(&self, change: impl FnOnce(&mut Record)) -> Result<(), InstanceError> {
        let mut record = self.record();
        change(&mut record);
        record.save()
    }

    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    pub(crate) fn agent_autostart(&self) -> bool {
        self.start_agent
    }

    pub(crate) fn adopt(&self, index: usize, child: Child) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        if children.len() < index {
            children.resize_with(index, || None);
        }
        children[index - 1] = Some(child);
    }

    pub(crate) fn reap(&self, index: usize) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = children.get_mut(index - 1).and_then(Option::take) {
            // Its processes were killed already: this only collects the exit status.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The testbeds of [`Testbed::shared`], by key.
static SHARED: Mutex<Vec<(&'static str, &'static Testbed)>> = Mutex::new(Vec::new());

extern "C" fn remove_shared() {
    let shared = std::mem::take(&mut *SHARED.lock().unwrap_or_else(|e| e.into_inner()));
    for (key, tb) in shared {
        if let Err(e) = tb.teardown() {
            eprintln!(
                "testbed {} (shared by {key}): teardown failed: {e}; `testbed down --all` retries",
                tb.id()
            );
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "testbed {}: a test failed; the machines' journals follow",
                self.id()
            );
            self.dump_journals(80);
        }
        if let Err(e) = self.teardown() {
            eprintln!(
                "testbed {}: teardown failed: {e}; `testbed down --all` retries",
                self.id()
            );
        }
    }
}
