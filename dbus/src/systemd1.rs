//! Typed proxies for systemd's D-Bus API (`org.freedesktop.systemd1`): the manager, units,
//! services and jobs.
//!
//! # Background
//!
//! flotilla drives systemd only through its D-Bus API: the reconciler writes unit files, calls
//! [`ManagerProxy::reload`] once, then queues `StartUnit`/`StopUnit` jobs and follows
//! [`ManagerProxy::receive_job_removed`] and `PropertiesChanged` instead of polling. The method,
//! signal and property names and signatures below are systemd's (see `org.freedesktop.systemd1(5)`);
//! only the Rust names are snake case.
//!
//! # Example usage
//!
//! ```no_run
//! # async fn run() -> zbus::Result<()> {
//! use flotilla_dbus::systemd1::{ManagerProxy, Mode, UnitProxy};
//!
//! let bus = zbus::Connection::system().await?;
//! let manager = ManagerProxy::new(&bus).await?;
//! let _job = manager.start_unit("hello.service", Mode::Replace.as_str()).await?;
//! let unit = UnitProxy::builder(&bus).path(manager.get_unit("hello.service").await?).build().await?;
//! println!("{}", unit.active_state().await?);
//! # Ok(()) }
//! ```
//!
//! # Current limitations
//!
//! Only the members flotilla uses or is about to use are declared; the rest of systemd's API
//! (unit files, snapshots, dynamic users, ...) is not.

use serde::{Deserialize, Serialize};
use zbus::{OwnedObjectPath, Type, Variant, proxy};

/// systemd's well-known bus name.
pub const DESTINATION: &str = "org.freedesktop.systemd1";
/// The manager's object path.
pub const MANAGER_PATH: &str = "/org/freedesktop/systemd1";

/// How a job is queued when it meets other jobs (the `mode` argument of `StartUnit` and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Replace a conflicting queued job.
    Replace,
    /// Fail if a conflicting job is queued.
    Fail,
    /// Stop every other unit (for targets with `AllowIsolate=yes`).
    Isolate,
    /// Ignore the unit's dependencies.
    IgnoreDependencies,
    /// Ignore the unit's requirement dependencies, keep ordering.
    IgnoreRequirements,
}

impl Mode {
    /// The string systemd expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Replace => "replace",
            Mode::Fail => "fail",
            Mode::Isolate => "isolate",
            Mode::IgnoreDependencies => "ignore-dependencies",
            Mode::IgnoreRequirements => "ignore-requirements",
        }
    }
}

/// One row of `ListUnits`, `ListUnitsByNames` and `ListUnitsFiltered` (signature
/// `(ssssssouso)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct UnitStatus {
    /// The unit name, e.g. `hello.service`.
    pub name: String,
    /// The human-readable description.
    pub description: String,
    /// `loaded`, `not-found`, `bad-setting`, `error`, `masked`.
    pub load_state: String,
    /// `active`, `reloading`, `inactive`, `failed`, `activating`, `deactivating`.
    pub active_state: String,
    /// The type-specific state, e.g. `running`, `exited`, `dead`.
    pub sub_state: String,
    /// The unit this one follows in state, or empty.
    pub followed: String,
    /// The unit's object path.
    pub unit_path: OwnedObjectPath,
    /// The id of the job queued for the unit, or 0.
    pub job_id: u32,
    /// The type of the queued job, or empty.
    pub job_type: String,
    /// The queued job's object path, or `/`.
    pub job_path: OwnedObjectPath,
}

/// A property of a transient unit: a name and its value (an element of `a(sv)`).
pub type Property<'a> = (&'a str, Variant<'a>);

/// An auxiliary unit of `StartTransientUnit`: a name and its properties (an element of
/// `a(sa(sv))`).
pub type AuxUnit<'a> = (&'a str, Vec<Property<'a>>);

/// One command of the `ExecStart=` property of a transient service (signature `(sasb)`): the
/// path, the argument vector (starting with argv\[0\]) and whether a failure is ignored.
pub type ExecCommand = (String, Vec<String>, bool);

/// The `ExecStart` property for `StartTransientUnit`: runs `argv[0]` with `argv`.
pub fn exec_start<'a>(argv: &[&str]) -> Property<'a> {
    let path = argv.first().copied().unwrap_or_default().to_owned();
    let args = argv.iter().map(|a| (*a).to_owned()).collect();
    let commands: Vec<ExecCommand> = vec![(path, args, false)];
    ("ExecStart", Variant::from(commands))
}

/// `org.freedesktop.systemd1.Manager` on `/org/freedesktop/systemd1`.
#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
pub trait Manager {
    /// Queues a start job for `name`; returns the job's path.
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Queues a stop job for `name`; returns the job's path.
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Queues a restart job for `name` (starts it if it is not running).
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Queues a restart job for `name` only if it is running.
    fn try_restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Queues a reload job for `name`.
    fn reload_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Reloads `name` if it supports it, restarts it otherwise.
    fn reload_or_restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Sends `signal` to the processes of `name` (`whom`: `main`, `control` or `all`).
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;

    /// Resets the `failed` state of `name`.
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;

    /// Resets the `failed` state of every unit.
    fn reset_failed(&self) -> zbus::Result<()>;

    /// Creates and starts a transient unit; returns the start job's path.
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[Property<'_>],
        aux: &[AuxUnit<'_>],
    ) -> zbus::Result<OwnedObjectPath>;

    /// The path of a loaded unit; fails with `NoSuchUnit` if it is not loaded.
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    /// The path of the unit a process belongs to.
    #[zbus(name = "GetUnitByPID")]
    fn get_unit_by_pid(&self, pid: u32) -> zbus::Result<OwnedObjectPath>;

    /// The path of a unit, loading it from disk if needed.
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    /// The path of a queued job.
    fn get_job(&self, id: u32) -> zbus::Result<OwnedObjectPath>;

    /// Cancels a queued job.
    fn cancel_job(&self, id: u32) -> zbus::Result<()>;

    /// Every loaded unit.
    fn list_units(&self) -> zbus::Result<Vec<UnitStatus>>;

    /// The loaded units whose active state is one of `states`.
    fn list_units_filtered(&self, states: &[&str]) -> zbus::Result<Vec<UnitStatus>>;

    /// The named units, loading them if needed (absent ones come back as `not-found`).
    fn list_units_by_names(&self, names: &[&str]) -> zbus::Result<Vec<UnitStatus>>;

    /// Asks the manager to emit `UnitNew`, `UnitRemoved`, `JobNew`, `JobRemoved` and
    /// `PropertiesChanged` to this client.
    fn subscribe(&self) -> zbus::Result<()>;

    /// Undoes [`ManagerProxy::subscribe`].
    fn unsubscribe(&self) -> zbus::Result<()>;

    /// Reloads every unit file (`systemctl daemon-reload`).
    fn reload(&self) -> zbus::Result<()>;

    /// A unit was loaded.
    #[zbus(signal)]
    fn unit_new(&self, id: String, unit: OwnedObjectPath) -> zbus::Result<()>;

    /// A unit was unloaded.
    #[zbus(signal)]
    fn unit_removed(&self, id: String, unit: OwnedObjectPath) -> zbus::Result<()>;

    /// A job was queued.
    #[zbus(signal)]
    fn job_new(&self, id: u32, job: OwnedObjectPath, unit: String) -> zbus::Result<()>;

    /// A job finished; `result` is `done`, `canceled`, `timeout`, `failed`, `dependency` or
    /// `skipped`.
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;

    /// The manager starts (`true`) or finished (`false`) reloading.
    #[zbus(signal)]
    fn reloading(&self, active: bool) -> zbus::Result<()>;

    /// Boot finished; the times are in microseconds.
    #[zbus(signal)]
    fn startup_finished(
        &self,
        firmware: u64,
        loader: u64,
        kernel: u64,
        initrd: u64,
        userspace: u64,
        total: u64,
    ) -> zbus::Result<()>;

    /// systemd's version, e.g. `252.39-1~deb12u2`.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> zbus::Result<String>;

    /// `initializing`, `starting`, `running`, `degraded`, `maintenance` or `stopping`.
    #[zbus(property(emits_changed_signal = "false"))]
    fn system_state(&self) -> zbus::Result<String>;

    /// The detected virtualization, e.g. `container-other`, or empty.
    #[zbus(property(emits_changed_signal = "const"))]
    fn virtualization(&self) -> zbus::Result<String>;

    /// How many units are in the `failed` state.
    #[zbus(property(emits_changed_signal = "false"))]
    fn n_failed_units(&self) -> zbus::Result<u32>;
}

/// `org.freedesktop.systemd1.Unit`, on a path from [`ManagerProxy::get_unit`] or
/// [`ManagerProxy::load_unit`].
#[proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
pub trait Unit {
    /// Queues a start job.
    fn start(&self, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Queues a stop job.
    fn stop(&self, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Queues a restart job.
    fn restart(&self, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// Resets the `failed` state.
    fn reset_failed(&self) -> zbus::Result<()>;

    /// The primary name.
    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;

    /// Every name (aliases included).
    #[zbus(property)]
    fn names(&self) -> zbus::Result<Vec<String>>;

    /// The description.
    #[zbus(property)]
    fn description(&self) -> zbus::Result<String>;

    /// `loaded`, `not-found`, `bad-setting`, `error` or `masked`.
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;

    /// `active`, `reloading`, `inactive`, `failed`, `activating` or `deactivating`.
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;

    /// The type-specific state, e.g. `running`, `exited`, `dead`.
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;

    /// The unit file it was loaded from, or empty (transient units).
    #[zbus(property)]
    fn fragment_path(&self) -> zbus::Result<String>;

    /// `enabled`, `disabled`, `static`, `transient`, ...
    #[zbus(property)]
    fn unit_file_state(&self) -> zbus::Result<String>;

    /// Whether the unit file changed on disk since it was loaded.
    #[zbus(property(emits_changed_signal = "false"))]
    fn need_daemon_reload(&self) -> zbus::Result<bool>;

    /// Whether it was created with `StartTransientUnit`.
    #[zbus(property(emits_changed_signal = "const"))]
    fn transient(&self) -> zbus::Result<bool>;

    /// When it last entered `active` (microseconds since the epoch, 0 if never).
    #[zbus(property)]
    fn active_enter_timestamp(&self) -> zbus::Result<u64>;

    /// When it last left `active` (microseconds since the epoch, 0 if never).
    #[zbus(property)]
    fn active_exit_timestamp(&self) -> zbus::Result<u64>;

    /// When it last entered `inactive` (microseconds since the epoch, 0 if never).
    #[zbus(property)]
    fn inactive_enter_timestamp(&self) -> zbus::Result<u64>;

    /// The 128-bit id of its current run (empty if it never ran).
    #[zbus(property, name = "InvocationID")]
    fn invocation_id(&self) -> zbus::Result<Vec<u8>>;

    /// The job queued for it: id and path, or `(0, "/")`.
    #[zbus(property)]
    fn job(&self) -> zbus::Result<(u32, OwnedObjectPath)>;
}

/// `org.freedesktop.systemd1.Service`, on the path of a `.service` unit.
#[proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
pub trait Service {
    /// `simple`, `exec`, `forking`, `oneshot`, `dbus`, `notify` or `idle`.
    #[zbus(property(emits_changed_signal = "const"), name = "Type")]
    fn service_type(&self) -> zbus::Result<String>;

    /// The main process, or 0.
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;

    /// The control process (ExecStartPre= and friends), or 0.
    #[zbus(property, name = "ControlPID")]
    fn control_pid(&self) -> zbus::Result<u32>;

    /// `success`, `exit-code`, `signal`, `core-dump`, `timeout`, `watchdog`, ...
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;

    /// The exit code or signal number of the last main process.
    #[zbus(property)]
    fn exec_main_status(&self) -> zbus::Result<i32>;

    /// How the last main process ended (a `CLD_*` code: 1 exited, 2 killed, 3 dumped).
    #[zbus(property)]
    fn exec_main_code(&self) -> zbus::Result<i32>;

    /// The pid of the last main process.
    #[zbus(property, name = "ExecMainPID")]
    fn exec_main_pid(&self) -> zbus::Result<u32>;

    /// How many times `Restart=` restarted it.
    #[zbus(property)]
    fn n_restarts(&self) -> zbus::Result<u32>;

    /// The last `STATUS=` it sent with `sd_notify`.
    #[zbus(property)]
    fn status_text(&self) -> zbus::Result<String>;
}

/// `org.freedesktop.systemd1.Job`, on a path from `StartUnit` and friends.
#[proxy(
    interface = "org.freedesktop.systemd1.Job",
    default_service = "org.freedesktop.systemd1"
)]
pub trait Job {
    /// Cancels the job.
    fn cancel(&self) -> zbus::Result<()>;

    /// The job's id.
    #[zbus(property(emits_changed_signal = "const"))]
    fn id(&self) -> zbus::Result<u32>;

    /// The unit it acts on: name and path.
    #[zbus(property(emits_changed_signal = "const"))]
    fn unit(&self) -> zbus::Result<(String, OwnedObjectPath)>;

    /// `start`, `stop`, `restart`, `reload`, ...
    #[zbus(property(emits_changed_signal = "const"))]
    fn job_type(&self) -> zbus::Result<String>;

    /// `waiting` or `running`.
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
}
