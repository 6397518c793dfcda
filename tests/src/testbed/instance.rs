//! One testbed instance as recorded on the host: its id, the state file that lists everything
//! it created, and the removal of exactly that.
//!
//! # Layout
//!
//! - `/run/flotilla-testbed/lock`: held (flock) while an id is allocated or leftovers removed;
//! - `/run/flotilla-testbed/K.json`: the state of instance `K` (0..=254), written before each
//!   resource is created, so a crash leaves a record of everything that may exist;
//! - `/var/lib/flotilla-testbed/K/`: the machines' directories (journals, `/var/lib/flotilla`),
//!   on disk rather than in `/run` because journals grow.
//!
//! # Owners
//!
//! An instance is owned by the process that created it (pid and start time, so a reused pid is
//! not mistaken for it), or by nobody once `testbed up` returned and left it running. An instance
//! whose owner died is a leftover: the next [`crate::testbed::Testbed::up`] and `testbed down
//! --all` remove it. Instances with a live owner are never touched by another process.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::network::{self, NetworkError};
use super::wait::{WaitError, wait_until};

/// Where locks and state files live.
pub const RUN_DIR: &str = "/run/flotilla-testbed";
/// Where the machines' directories live.
pub const DATA_DIR: &str = "/var/lib/flotilla-testbed";
/// Instance ids are the third octet of `10.213.K.0/24`.
const MAX_ID: u8 = 254;

/// A failure to record, find or remove an instance.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// A file or directory of the instance could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A state file is not valid.
    #[error(
        "state file {path} is not valid, remove it after checking `ip link` and `ip netns`: {source}"
    )]
    BadState {
        /// The state file.
        path: PathBuf,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// Every id from 0 to 254 is in use.
    #[error("all 255 testbed ids are in use (see {RUN_DIR}); run `testbed down --all`")]
    NoFreeId,
    /// A network resource could not be removed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// A process or cgroup did not go away.
    #[error("instance {id}: {source}")]
    Lingering {
        /// The instance.
        id: u8,
        /// What was waited for.
        source: WaitError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstanceError + '_ {
    move |source| InstanceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A process the testbed started: its pid and its start time (clock ticks after boot), which
/// together name it even after the pid is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// The pid on the host.
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`.
    pub start_time: u64,
}

impl ProcessId {
    /// The process `pid`, if it exists and is not a zombie.
    pub fn of(pid: i32) -> Option<ProcessId> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is in parentheses and may hold spaces: fields follow the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        // `rest` starts at field 3 (state); field 22 (starttime) is at index 19.
        if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
            return None;
        }
        Some(ProcessId {
            pid,
            start_time: fields.get(19)?.parse().ok()?,
        })
    }

    /// The calling process.
    pub fn current() -> ProcessId {
        let pid = std::process::id() as i32;
        ProcessId::of(pid).unwrap_or(ProcessId { pid, start_time: 0 })
    }

    /// Whether this very process is still running (not a zombie, pid not reused).
    pub fn is_alive(&self) -> bool {
        ProcessId::of(self.pid) == Some(*self)
    }

    /// Sends SIGKILL, only if this very process is still running.
    pub fn kill(&self) {
        if self.is_alive() {
            // It may exit between the check and the signal: ESRCH is the goal state.
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

/// What the testbed created for one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    /// 1-based index in the testbed.
    pub index: usize,
    /// Host name inside the machine, e.g. `node1`.
    pub name: String,
    /// Network namespace, `flt<K>n<i>`.
    pub netns: String,
    /// Host end of its veth, `flt<K>v<i>`.
    pub veth: String,
    /// Its address on the bridge.
    pub addr: Ipv4Addr,
    /// Its directory on the host.
    pub dir: PathBuf,
    /// Its cgroup in every hierarchy (directories under `/sys/fs/cgroup`).
    pub cgroups: Vec<PathBuf>,
    /// `unshare`, the process that holds the machine's namespaces, while it runs.
    pub launcher: Option<ProcessId>,
    /// The machine's systemd (PID 1 inside), while it runs.
    pub init: Option<ProcessId>,
}

/// What the testbed created: the content of `K.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The instance id `K`.
    pub id: u8,
    /// The process that owns it, or none (left running by `testbed up`).
    pub owner: Option<ProcessId>,
    /// The bridge, `fltbr<K>`, once it was asked for.
    pub bridge: Option<String>,
    /// The agent binary the machines run, if any.
    pub agent: Option<PathBuf>,
    /// The instance's directory on the host.
    pub dir: PathBuf,
    /// Its machines, in order.
    pub machines: Vec<MachineRecord>,
}

impl Record {
    /// The state file of instance `id`.
    pub fn path_of(id: u8) -> PathBuf {
        Path::new(RUN_DIR).join(format!("{id}.json"))
    }

    /// Writes the state file (atomically: a reader sees the old or the new record).
    pub fn save(&self) -> Result<(), InstanceError> {
        let path = Record::path_of(self.id);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("a record serializes");
        let mut file = File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(text.as_bytes()).map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Reads the state file of instance `id`, if there is one.
    pub fn load(id: u8) -> Result<Option<Record>, InstanceError> {
        let path = Record::path_of(id);
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|source| InstanceError::BadState { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every recorded instance, in id order.
    pub fn load_all() -> Result<Vec<Record>, InstanceError> {
        let mut records = Vec::new();
        for id in 0..=MAX_ID {
            if let Some(record) = Record::load(id)? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Whether its owner died (a crashed run): detached instances are not leftovers.
    pub fn is_leftover(&self) -> bool {
        self.owner.is_some_and(|owner| !owner.is_alive())
    }

    /// The network of the instance: `10.213.K.0/24`.
    pub fn bridge_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.id, 1)
    }

    /// Removes everything recorded, in reverse order of creation, then the state file. Safe to
    /// repeat; stops at the first failure, leaving the state file for another attempt.
    pub fn destroy(&self) -> Result<(), InstanceError> {
        for machine in &self.machines {
            stop_machine(self.id, machine)?;
        }
        for machine in &self.machines {
            remove_cgroups(self.id, machine)?;
            network::remove_netns(&machine.netns)?;
            network::remove_link(&machine.veth)?;
        }
        if let Some(bridge) = &self.bridge {
            network::remove_link(bridge)?;
        }
        remove_dir(&self.dir)?;
        let path = Record::path_of(self.id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }
}

/// Kills a machine's processes (its PID 1 takes its whole pid namespace along) and waits until
/// they are gone. Only processes recorded as started by the testbed are signalled.
pub fn stop_machine(id: u8, machine: &MachineRecord) -> Result<(), InstanceError> {
    let recorded: Vec<ProcessId> = machine
        .init
        .iter()
        .chain(&machine.launcher)
        .copied()
        .collect();
    let all_gone = || recorded.iter().all(|p| !p.is_alive());
    // Killing PID 1 ends the pid namespace; the launcher then reaps it and exits by itself
    // (killing both at once would leave PID 1 a zombie for the host's init to collect).
    match machine.init {
        Some(init) => init.kill(),
        None => machine.launcher.iter().for_each(ProcessId::kill),
    }
    if wait_until(Duration::from_secs(5), "the launcher to exit", all_gone).is_err() {
        // `unshare --kill-child` takes what is left of the machine along.
        machine.launcher.iter().for_each(ProcessId::kill);
    }
    let what = format!("the processes of machine {} to exit", machine.name);
    wait_until(Duration::from_secs(10), &what, || {
        all_gone() && machine.cgroups.iter().all(|cg| cgroup_is_empty(cg))
    })
    .map_err(|source| InstanceError::Lingering { id, source })
}

fn cgroup_is_empty(cgroup: &Path) -> bool {
    fn walk(dir: &Path) -> bool {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if !procs.trim().is_empty() {
            return false;
        }
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .all(|e| walk(&e.path()))
            })
            .unwrap_or(true)
    }
    walk(cgroup)
}

/// Removes a machine's cgroups and the sub-cgroups its systemd made, deepest first.
fn remove_cgroups(id: u8, machine: &MachineRecord) -> Result<(), InstanceError> {
    fn remove_tree(dir: &Path) -> std::io::Result<()> {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&entry.path())?;
                }
            }
        }
        match fs::remove_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
    for cgroup in &machine.cgroups {
        // A cgroup whose last process just exited can be busy for a moment.
        let what = format!("cgroup {} to be removable", cgroup.display());
        wait_until(Duration::from_secs(5), &what, || {
            remove_tree(cgroup).is_ok()
        })
        .map_err(|source| InstanceError::Lingering { id, source })?;
    }
    Ok(())
}

/// Removes the instance's directory, after checking that nothing is mounted below it (the
/// machines mount only inside their own mount namespaces).
fn remove_dir(dir: &Path) -> Result<(), InstanceError> {
    if !dir.starts_with(DATA_DIR) || dir == Path::new(DATA_DIR) {
        // A record edited by hand must not make the testbed delete other directories.
        return Ok(());
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().into_owned();
    for line in mounts.lines() {
        if let Some(target) = line.split(' ').nth(4)
            && target.starts_with(&prefix)
        {
            let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(dir)(e)),
        _ => Ok(()),
    }
}

/// The allocation lock: held while ids are allocated and leftovers removed.
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Takes the lock, waiting for another process that holds it.
    pub fn take() -> Result<Lock, InstanceError> {
        fs::create_dir_all(RUN_DIR).map_err(io(Path::new(RUN_DIR)))?;
        let path = Path::new(RUN_DIR).join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        file.lock().map_err(io(&path))?;
        Ok(Lock { _file: file })
    }

    /// Records a new instance owned by `owner` under the first free id (the lock proves that no
    /// other process allocates at the same time).
    pub fn allocate(&self, owner: Option<ProcessId>) -> Result<Record, InstanceError> {
        for id in 0..=MAX_ID {
            let bridge = format!("fltbr{id}");
            if Record::path_of(id).exists() || network::link_exists(&bridge) {
                continue;
            }
            let dir = Path::new(DATA_DIR).join(id.to_string());
            let record = Record {
                id,
                owner,
                bridge: None,
                agent: None,
                dir,
                machines: Vec::new(),
            };
            record.save()?;
            return Ok(record);
        }
        Err(InstanceError::NoFreeId)
    }

    /// Removes every leftover (instances whose owner died) and machine directories that no
    /// state file records (a host reboot empties `/run`); with `detached`, also instances left
    /// running by `testbed up`. Returns the ids removed.
    pub fn remove_leftovers(&self, detached: bool) -> Result<Vec<u8>, InstanceError> {
        let mut removed = Vec::new();
        for record in Record::load_all()? {
            if record.is_leftover() || (detached && record.owner.is_none()) {
                record.destroy()?;
                removed.push(record.id);
            }
        }
        if let Ok(entries) = fs::read_dir(DATA_DIR) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                if let Some(id) = name.to_str().and_then(|n| n.parse::<u8>().ok())
                    && !Record::path_of(id).exists()
                {
                    remove_dir(&entry.path())?;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessId::current();
        assert!(me.is_alive());
        let other = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
    }

    #[test]
    fn a_record_without_owner_is_not_a_leftover() {
        let record = Record {
            id: 3,
            owner: None,
            bridge: None,
            agent: None,
            dir: PathBuf::from("/var/lib/flotilla-testbed/3"),
            machines: Vec::new(),
        };
        assert!(!record.is_leftover());
        let dead = Record {
            owner: Some(ProcessId {
                pid: i32::MAX,
                start_time: 1,
            }),
            ..record
        };
        assert!(dead.is_leftover());
    }
}
