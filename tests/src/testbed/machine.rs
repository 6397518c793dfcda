//! One machine of a testbed: its files, its boot, commands and D-Bus inside it, its journal, and
//! the faults a test can inject into it.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use super::Testbed;
use super::agent;
use super::instance::{InstanceError, MachineRecord, ProcessId};
use super::network::{self, NetworkError};
use super::wait::{WaitError, wait_for};

/// The target every machine boots into.
pub const TARGET: &str = "flotilla-testbed.target";

/// Units masked in every machine: they would change the host (kernel settings, file systems,
/// users, caches on the shared root), or fail without a machine of their own. Timers are off:
/// apt, man-db and friends must not run on the shared root.
const MASKED: &[&str] = &[
    "timers.target",
    "systemd-machine-id-commit.service",
    "systemd-sysctl.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "systemd-modules-load.service",
    "systemd-remount-fs.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    "systemd-journald-audit.socket",
    "systemd-pstore.service",
    "systemd-timesyncd.service",
    "systemd-random-seed.service",
    "ldconfig.service",
    "systemd-journal-catalog-update.service",
    "systemd-update-done.service",
    "systemd-sysusers.service",
    "systemd-firstboot.service",
    "systemd-hwdb-update.service",
];

const TARGET_UNIT: &str = "\
# Written by the flotilla testbed: what a testbed machine boots into, instead of the host's
# default target (whose services, e.g. a packaged etcd, must not start in every machine).
[Unit]
Description=flotilla testbed machine
Requires=basic.target dbus.socket
After=basic.target dbus.socket
AllowIsolate=yes
";

const JOURNALD_CONF: &str = "\
# Written by the flotilla testbed.
[Journal]
# In the machine's own /var/log/journal, readable from the host with journalctl -D.
Storage=persistent
# The kernel's ring buffer is the host's, not the machine's.
ReadKMsg=no
SystemMaxUse=32M
";

/// A failure inside or around one machine.
#[derive(thiserror::Error)]
pub enum MachineError {
    /// A file of the machine could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The machine is powered off.
    #[error("machine {node} is powered off; power it on first")]
    PoweredOff {
        /// The machine.
        node: String,
    },
    /// systemd did not start, or stopped while booting.
    #[error("machine {node} did not boot: {reason}\n--- console of {node} ---\n{console}")]
    Boot {
        /// The machine.
        node: String,
        /// What went wrong.
        reason: String,
        /// The tail of its console (the boot script's and systemd's output).
        console: String,
    },
    /// A condition in the machine did not hold in time.
    #[error("machine {node}: {source}\n--- journal of {node} ---\n{journal}")]
    Wait {
        /// The machine.
        node: String,
        /// What was waited for.
        source: WaitError,
        /// The tail of its journal.
        journal: String,
    },
    /// A unit failed.
    #[error("machine {node}: {unit} failed\n--- journal of {unit} on {node} ---\n{journal}")]
    UnitFailed {
        /// The machine.
        node: String,
        /// The unit.
        unit: String,
        /// Its journal.
        journal: String,
    },
    /// The testbed runs no agent.
    #[error(
        "the testbed runs no agent (started with --no-agent): there is no {} on {node}",
        agent::UNIT
    )]
    NoAgent {
        /// The machine.
        node: String,
    },
    /// The machine's bus could not be reached.
    #[error("machine {node}: cannot connect to its system bus at {address}: {source}")]
    Bus {
        /// The machine.
        node: String,
        /// The bus address.
        address: String,
        /// Why.
        source: zbus::Error,
    },
    /// A network change failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The instance record could not be updated.
    #[error(transparent)]
    Instance(#[from] InstanceError),
}

// Debug is Display: a test's `unwrap()` then shows the journal that comes with an error as text.
impl std::fmt::Debug for MachineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MachineError + '_ {
    move |source| MachineError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a machine's directory: its identity, the agent's config and the units its boot copies
/// to `/run/systemd/system`.
pub(crate) fn prepare(
    machine: &MachineRecord,
    config: &str,
    agent_path: Option<&Path>,
) -> Result<(), MachineError> {
    let dir = &machine.dir;
    for sub in ["etc-flotilla", "var-lib-flotilla", "log/journal", "units"] {
        let path = dir.join(sub);
        fs::create_dir_all(&path).map_err(io(&path))?;
    }
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        fs::write(&path, text).map_err(io(&path))
    };
    write("machine-id", &format!("{}\n", random_machine_id()))?;
    write("hostname", &format!("{}\n", machine.name))?;
    write("etc-flotilla/flotilla.toml", config)?;
    write("journald.conf", JOURNALD_CONF)?;
    write(&format!("units/{TARGET}"), TARGET_UNIT)?;
    if let Some(agent_path) = agent_path {
        write(&format!("units/{}", agent::UNIT), &agent::unit(agent_path))?;
        // The agent's bus policy, as the package installs it (see boot.sh).
        let policies = dir.join("dbus-system.d");
        fs::create_dir_all(&policies).map_err(io(&policies))?;
        write(
            &format!("dbus-system.d/{}", flotilla_dbus::agent1::POLICY_FILE),
            flotilla_dbus::agent1::POLICY,
        )?;
    }
    for unit in MASKED {
        let path = dir.join("units").join(unit);
        if !path.exists() {
            symlink("/dev/null", &path).map_err(io(&path))?;
        }
    }
    // The mount points of the machine's own directories must exist on the shared root.
    for point in ["/etc/flotilla", "/var/lib/flotilla"] {
        fs::create_dir_all(point).map_err(io(Path::new(point)))?;
    }
    for cgroup in &machine.cgroups {
        fs::create_dir_all(cgroup).map_err(io(cgroup))?;
    }
    Ok(())
}

fn random_machine_id() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cgroups a machine gets: a child of the caller's cgroup in every hierarchy, so that each
/// machine's systemd manages a subtree of its own (and stays within the caller's limits). The
/// v1 `cpuset` hierarchy is left out: a new cpuset is empty until configured, and systemd does
/// not use it.
pub(crate) fn cgroups_for(name: &str) -> Vec<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut dirs = Vec::new();
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (root, point) = (fields[3], fields[4]);
        let fstype = fields.get(dash + 1).copied().unwrap_or_default();
        let options = fields.get(dash + 3).copied().unwrap_or_default();
        let key: Option<String> = match fstype {
            "cgroup2" => Some(String::new()),
            "cgroup" => {
                let mut names: Vec<&str> = options
                    .split(',')
                    .filter(|o| o.starts_with("name=") || V1_CONTROLLERS.contains(o))
                    .collect();
                names.sort_unstable();
                Some(names.join(","))
            }
            _ => None,
        };
        let Some(key) = key else { continue };
        if key.split(',').any(|c| c == "cpuset") {
            continue;
        }
        let path = own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let mut names: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
            names.sort_unstable();
            (names.join(",") == key).then(|| path.to_owned())
        });
        let Some(path) = path else { continue };
        let Some(relative) = path.strip_prefix(root) else {
            continue;
        };
        let mut dir = PathBuf::from(point);
        dir.extend(relative.split('/').filter(|p| !p.is_empty()));
        dirs.push(dir.join(format!("flotilla-testbed-{name}")));
    }
    dirs
}

const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// Starts a machine's systemd (through the boot script) and records its processes; returns the
/// launcher, which the caller reaps.
pub(crate) fn launch(tb: &Testbed, index: usize) -> Result<Child, MachineError> {
    let (machine, script) = {
        let record = tb.record();
        (
            record.machines[index - 1].clone(),
            record.dir.join("boot.sh"),
        )
    };
    let console_path = machine.dir.join("console.log");
    let console = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&console_path)
        .map_err(io(&console_path))?;
    let console_err = console.try_clone().map_err(io(&console_path))?;
    let share = super::shared_paths(tb.record().agent.as_deref());
    let share: Vec<&str> = share.iter().filter_map(|p| p.to_str()).collect();
    let mut command = Command::new("sh");
    command
        .env("FLOTILLA_TESTBED_SHARE", share.join(":"))
        .arg(&script)
        .arg("host")
        .arg(&machine.dir)
        .arg(&machine.netns)
        .arg(&machine.name)
        .args(machine.cgroups.iter().map(|c| c.join("cgroup.procs")))
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console_err);
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            // A session of its own: a Ctrl-C meant for the testbed does not reach the machine.
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().map_err(|source| MachineError::Spawn {
        program: "sh".into(),
        source,
    })?;
    let launcher = ProcessId::of(child.id() as i32);
    tb.update(|r| r.machines[index - 1].launcher = launcher)?;

    // The launcher's child becomes systemd once the boot script exec()s it.
    let found = wait_for(Duration::from_secs(10), "systemd to start as PID 1", || {
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(Err(status));
        }
        let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
            .unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "systemd"
                && let Some(init) = ProcessId::of(pid)
            {
                return Ok(Ok(init));
            }
        }
        Err(None)
    });
    let boot_error = |reason: String| MachineError::Boot {
        node: machine.name.clone(),
        reason,
        console: tail(&fs::read_to_string(&console_path).unwrap_or_default(), 40),
    };
    let init = match found {
        Ok(Ok(init)) => init,
        Ok(Err(status)) => return Err(boot_error(format!("the boot script exited ({status})"))),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(boot_error(e.to_string()));
        }
    };
    tb.update(|r| r.machines[index - 1].init = Some(init))?;
    Ok(child)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A machine of a [`Testbed`], borrowed from it: `tb.node(1)` is `node1`.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    pub(crate) tb: &'a Testbed,
    /// 1-based.
    pub(crate) index: usize,
}

impl std::fmt::Debug for Node<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("name", &self.name()).finish()
    }
}

impl<'a> Node<'a> {
    fn record(&self) -> MachineRecord {
        self.tb.record().machines[self.index - 1].clone()
    }

    /// Its host name, e.g. `node1`.
    pub fn name(&self) -> String {
        self.record().name
    }

    /// Its 1-based index in the testbed.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its address on the testbed's bridge.
    pub fn addr(&self) -> std::net::Ipv4Addr {
        self.record().addr
    }

    /// Its network namespace.
    pub fn netns(&self) -> String {
        self.record().netns
    }

    /// The host end of its veth (on the testbed's bridge unless partitioned).
    pub fn veth(&self) -> String {
        self.record().veth
    }

    /// Its directory on the host (journal under `log/journal`, `/var/lib/flotilla` under
    /// `var-lib-flotilla`).
    pub fn dir(&self) -> PathBuf {
        self.record().dir
    }

    /// The host pid of its systemd (PID 1 inside), if it is powered on.
    pub fn pid(&self) -> Option<i32> {
        self.record()
            .init
            .filter(ProcessId::is_alive)
            .map(|p| p.pid)
    }

    fn running_pid(&self) -> Result<i32, MachineError> {
        self.pid()
            .ok_or_else(|| MachineError::PoweredOff { node: self.name() })
    }

    /// The command that runs `args` inside (`nsenter` into every namespace of its PID 1).
    pub fn command(&self, args: &[&str]) -> Result<Command, MachineError> {
        let pid = self.running_pid()?;
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &pid.to_string(), "-a", "--"])
            .args(args)
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0");
        Ok(command)
    }

    /// Runs `args` inside and collects its output (a failing command is not an error here: look
    /// at `status`).
    pub fn exec(&self, args: &[&str]) -> Result<Output, MachineError> {
        self.command(args)?
            .stdin(Stdio::null())
            .output()
            .map_err(|source| MachineError::Spawn {
                program: "nsenter".into(),
                source,
            })
    }

    /// Runs `args` inside with the caller's stdin, stdout and stderr (interactive).
    pub fn exec_interactive(&self, args: &[&str]) -> Result<ExitStatus, MachineError> {
        self.command(args)?
            .status()
            .map_err(|source| MachineError::Spawn {
                program: "nsenter".into(),
                source,
            })
    }

    /// What `args` printed on stdout, trimmed.
    pub fn stdout(&self, args: &[&str]) -> Result<String, MachineError> {
        let output = self.exec(args)?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// `systemctl is-system-running` inside.
    pub fn system_state(&self) -> Result<String, MachineError> {
        self.stdout(&["systemctl", "is-system-running"])
    }

    /// `systemctl is-active UNIT` inside: `active`, `inactive`, `failed`, ...
    pub fn unit_state(&self, unit: &str) -> Result<String, MachineError> {
        self.stdout(&["systemctl", "is-active", unit])
    }

    /// A connection to its system bus, from the host (EXTERNAL authentication as root).
    pub async fn bus(&self) -> Result<zbus::Connection, MachineError> {
        let pid = self.running_pid()?;
        let address = format!("unix:path=/proc/{pid}/root/run/dbus/system_bus_socket");
        zbus::connection::Builder::address(address.as_str())
            .build()
            .await
            .map_err(|source| MachineError::Bus {
                node: self.name(),
                address,
                source,
            })
    }

    /// Its journal (from the host, so also after it stopped), the last `lines` lines; of one unit
    /// if given.
    pub fn journal(&self, unit: Option<&str>, lines: usize) -> String {
        let dir = self.dir().join("log/journal");
        let mut command = Command::new("journalctl");
        command
            .arg("-D")
            .arg(&dir)
            .args(["--no-pager", "-q", "-o", "short-precise", "-n"])
            .arg(lines.to_string());
        if let Some(unit) = unit {
            command.args(["-u", unit]);
        }
        match command.output() {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            Ok(out) => format!(
                "(journalctl -D {} failed: {})",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => format!("(cannot run journalctl: {e})"),
        }
    }

    fn wait_error(&self, source: WaitError, unit: Option<&str>) -> MachineError {
        MachineError::Wait {
            node: self.name(),
            source,
            journal: self.journal(unit, 60),
        }
    }

    /// Waits until systemd reached its target: `is-system-running` says `running` or `degraded`.
    /// Returns that state.
    pub fn wait_booted(&self, deadline: Duration) -> Result<String, MachineError> {
        wait_for(
            deadline,
            "systemd to reach flotilla-testbed.target",
            || match self.system_state() {
                Ok(state) if state == "running" || state == "degraded" => Ok(state),
                Ok(state) => Err(Some(state)),
                Err(e) => Err(Some(e.to_string())),
            },
        )
        .map_err(|e| self.wait_error(e, None))
    }

    /// Waits until `unit` is active; fails at once if it failed.
    pub fn wait_active(&self, unit: &str, deadline: Duration) -> Result<(), MachineError> {
        let what = format!("{unit} to be active");
        let outcome = wait_for(deadline, &what, || match self.unit_state(unit) {
            Ok(state) if state == "active" => Ok(true),
            Ok(state) if state == "failed" => Ok(false),
            Ok(state) => Err(Some(state)),
            Err(e) => Err(Some(e.to_string())),
        })
        .map_err(|e| self.wait_error(e, Some(unit)))?;
        if outcome {
            Ok(())
        } else {
            Err(MachineError::UnitFailed {
                node: self.name(),
                unit: unit.to_owned(),
                journal: self.journal(Some(unit), 60),
            })
        }
    }

    fn require_agent(&self) -> Result<(), MachineError> {
        if self.tb.record().agent.is_none() {
            return Err(MachineError::NoAgent { node: self.name() });
        }
        Ok(())
    }

    /// Starts the agent and waits until it is ready (it is `Type=notify`: `active` means it sent
    /// READY=1).
    pub fn start_agent(&self) -> Result<(), MachineError> {
        self.require_agent()?;
        self.exec(&["systemctl", "reset-failed", agent::UNIT])?;
        self.exec(&["systemctl", "start", "--no-block", agent::UNIT])?;
        self.wait_active(agent::UNIT, self.tb.deadline())
    }

    /// Stops the agent (systemd's stop: SIGTERM, then SIGKILL after its timeout) and waits until
    /// it is inactive.
    pub fn stop_agent(&self) -> Result<(), MachineError> {
        self.require_agent()?;
        self.exec(&["systemctl", "stop", agent::UNIT])?;
        let what = format!("{} to stop", agent::UNIT);
        wait_for(self.tb.deadline(), &what, || {
            match self.unit_state(agent::UNIT) {
                Ok(state) if state == "inactive" || state == "failed" => Ok(()),
                Ok(state) => Err(Some(state)),
                Err(e) => Err(Some(e.to_string())),
            }
        })
        .map_err(|e| self.wait_error(e, Some(agent::UNIT)))
    }

    /// Pulls the plug: kills the machine's whole pid namespace at once (no shutdown, like a power
    /// cut). Its network interface, `/var/lib/flotilla` and journal stay.
    pub fn power_off(&self) -> Result<(), MachineError> {
        let record = self.record();
        super::instance::stop_machine(self.tb.id(), &record)?;
        self.tb.reap(self.index);
        self.tb.update(|r| {
            let m = &mut r.machines[self.index - 1];
            m.init = None;
            m.launcher = None;
        })?;
        Ok(())
    }

    /// Shuts the machine down cleanly (`systemctl poweroff` inside) and waits until it is off;
    /// pulls the plug if it is not off by the testbed's deadline.
    pub fn shutdown(&self) -> Result<(), MachineError> {
        let record = self.record();
        self.exec(&["systemctl", "poweroff"])?;
        let processes: Vec<ProcessId> = record
            .init
            .iter()
            .chain(&record.launcher)
            .copied()
            .collect();
        let what = format!("machine {} to power off", record.name);
        let _ = wait_for(self.tb.deadline(), &what, || {
            if processes.iter().all(|p| !p.is_alive()) {
                Ok(())
            } else {
                Err(None)
            }
        });
        self.power_off()
    }

    /// Boots the machine again (same identity, network, `/var/lib/flotilla` and journal), waits
    /// until systemd reached its target and, if the testbed runs an agent, until it is ready.
    pub fn power_on(&self) -> Result<(), MachineError> {
        if self.pid().is_some() {
            return Ok(());
        }
        let child = launch(self.tb, self.index)?;
        self.tb.adopt(self.index, child);
        self.wait_booted(self.tb.deadline())?;
        if self.tb.record().agent.is_some() && self.tb.agent_autostart() {
            self.start_agent()?;
        }
        Ok(())
    }

    /// Cuts the machine off the network (its veth leaves the bridge): it reaches nothing, nothing
    /// reaches it, the host included.
    pub fn partition(&self) -> Result<(), MachineError> {
        Ok(network::unplug(&self.record().veth)?)
    }

    /// Undoes [`Node::partition`].
    pub fn heal(&self) -> Result<(), MachineError> {
        let record = self.tb.record();
        let bridge = record.bridge.clone().unwrap_or_default();
        Ok(network::plug(
            &record.machines[self.index - 1].veth,
            &bridge,
        )?)
    }

    /// Whether the machine is on the network (not partitioned).
    pub fn is_connected(&self) -> bool {
        network::is_plugged(&self.record().veth)
    }

    /// Delays the machine's traffic by `delay` ± `jitter` each way (netem on both ends of its
    /// link). Fails with [`NetworkError::NetemUnavailable`] on a kernel without `sch_netem`.
    pub fn slow_link(&self, delay: Duration, jitter: Duration) -> Result<(), MachineError> {
        let record = self.record();
        Ok(network::slow(&record.netns, &record.veth, delay, jitter)?)
    }

    /// Limits the machine's traffic to `bits_per_sec` each way (a `tbf` token bucket on both
    /// ends of its link; works without netem). Undone by [`Node::unslow_link`].
    pub fn throttle_link(&self, bits_per_sec: u64) -> Result<(), MachineError> {
        let record = self.record();
        Ok(network::throttle(
            &record.netns,
            &record.veth,
            bits_per_sec,
        )?)
    }

    /// Undoes [`Node::slow_link`] and [`Node::throttle_link`].
    pub fn unslow_link(&self) -> Result<(), MachineError> {
        let record = self.record();
        Ok(network::unslow(&record.netns, &record.veth)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_machine_gets_a_cgroup_of_its_own_below_the_callers() {
        let dirs = cgroups_for("flt9n1");
        assert!(
            !dirs.is_empty(),
            "no cgroup hierarchy found in /proc/self/mountinfo"
        );
        for dir in &dirs {
            assert!(dir.starts_with("/sys/fs/cgroup"), "{}", dir.display());
            assert!(
                dir.ends_with("flotilla-testbed-flt9n1"),
                "{}",
                dir.display()
            );
            assert!(
                !dir.to_string_lossy().contains("cpuset"),
                "{}",
                dir.display()
            );
        }
    }

    #[test]
    fn machine_ids_are_32_hex_digits_and_differ() {
        let a = random_machine_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_machine_id());
    }
}
