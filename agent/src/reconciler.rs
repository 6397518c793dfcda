//! The reconciler: on every machine, makes this machine's systemd run the units the cluster
//! assigned to it, and reports their state back.
//!
//! # Design
//!
//! One task. It wakes when units or machines changed (the watch hub), when systemd finishes a
//! job (`JobRemoved`) and when a unit object's properties change (`PropertiesChanged` under
//! `/org/freedesktop/systemd1/unit`); it never polls. A pass:
//!
//! 1. reads the units assigned to this machine (by its name) from the applied state;
//! 2. writes the unit files that are missing or differ to `/run/systemd/system/NAME`, each
//!    opening with [`MANAGED`] (a file without that line is never written nor removed), and
//!    stops then removes the managed files of units that left this machine;
//! 3. one `Reload` if any file changed;
//! 4. `StartUnit` / `StopUnit` / `RestartUnit` (mode `replace`) for what differs from the
//!    desired state (a running unit whose file is unchanged is left alone: after an agent
//!    restart it is adopted as it is);
//! 5. reads (load, active, sub, main pid, result) without a cache and proposes
//!    `units::Change::ReportState` only for a unit whose state differs from the one the
//!    cluster holds.
//!
//! # Current limitations
//!
//! - A pass runs every step for every assigned unit; fine for tens of units per machine.
//! - Without a system bus (or as non-root) the reconciler logs once and does nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_dbus::systemd1::{ManagerProxy, Mode, ServiceProxy};
use flotilla_state::units::{Desired, Reported};
use flotilla_state::{Command, units};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use zbus::proxy::CacheProperties;

use crate::cluster::Cluster;

/// The first line of every unit file flotilla writes; files without it are not flotilla's.
pub(crate) const MANAGED: &str = "# Managed by flotilla: changes are overwritten\n";
/// Where unit files go (runtime: the cluster re-asserts them after a reboot).
const UNIT_DIR: &str = "/run/systemd/system";
/// How long to wait after a failed pass before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a reconcile pass failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A D-Bus call to systemd failed.
    #[error("systemd: {0}")]
    Systemd(#[from] zbus::Error),
    /// A unit file could not be written, read or removed.
    #[error("unit file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A report could not be committed.
    #[error("report of unit '{name}': {source}")]
    Report {
        /// The unit.
        name: String,
        /// The cluster error.
        source: crate::cluster::Error,
    },
}

/// What this machine should run of one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    text: String,
    desired: Desired,
    restart_generation: u64,
    reported: Option<Reported>,
}

/// Runs until `cancel`: reconciles this machine's systemd with its assignments.
pub(crate) async fn run(cluster: Cluster, cancel: CancellationToken) {
    let bus = match zbus::Connection::system().await {
        Ok(bus) => bus,
        Err(e) => {
            tracing::warn!("no system bus ({e}): units will not run on this machine, ignoring");
            return;
        }
    };
    let mut r = match Reconciler::new(cluster, bus, PathBuf::from(UNIT_DIR)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("cannot follow systemd ({e}): units will not run here, ignoring");
            return;
        }
    };
    let mut changed = r.cluster.hub().watch_units();
    let mut jobs = match r.manager.receive_job_removed().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot follow systemd's jobs ({e}), ignoring");
            return;
        }
    };
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.freedesktop.DBus.Properties")
        .member("PropertiesChanged")
        .path_namespace("/org/freedesktop/systemd1/unit")
        .build();
    let mut props = match rule {
        Ok(rule) => match zbus::MessageStream::for_match_rule(rule, &r.bus, None).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot follow unit properties ({e}), ignoring");
                return;
            }
        },
        Err(e) => {
            tracing::warn!("bad match rule ({e}), ignoring");
            return;
        }
    };
    // The signal streams are drained while a pass awaits systemd: zbus stops reading the
    // socket when a subscriber's queue is full, and a `Reload` emits a PropertiesChanged for
    // every unit, so an undrained stream would hold back the replies the pass waits for.
    let wake = tokio::sync::Notify::new();
    let watched = r.watched.clone();
    let drain_jobs = async {
        while let Some(job) = jobs.next().await {
            if let Ok(args) = job.args()
                && lock(&watched).names.contains(args.unit.as_str())
            {
                wake.notify_one();
            }
        }
        tracing::warn!("systemd's JobRemoved stream ended, ignoring");
        std::future::pending::<()>().await;
    };
    let drain_props = async {
        while let Some(msg) = props.next().await {
            let Ok(msg) = msg else { continue };
            let header = msg.header();
            if header
                .path()
                .is_some_and(|p| lock(&watched).paths.contains(p.as_str()))
            {
                wake.notify_one();
            }
        }
        tracing::warn!("systemd's PropertiesChanged stream ended, ignoring");
        std::future::pending::<()>().await;
    };
    let passes = async {
        loop {
            changed.borrow_and_update();
            if let Err(e) = r.pass().await {
                tracing::warn!("reconcile: {e}, retrying");
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
            tokio::select! {
                c = changed.changed() => if c.is_err() { return },
                _ = wake.notified() => {}
            }
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = passes => {}
        _ = drain_jobs => {}
        _ = drain_props => {}
    }
}

/// The units and unit objects a pass looks after: their signals wake the next pass.
#[derive(Debug, Default)]
struct Watched {
    names: BTreeSet<String>,
    paths: BTreeSet<String>,
}

fn lock(w: &std::sync::Mutex<Watched>) -> std::sync::MutexGuard<'_, Watched> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

struct Reconciler {
    cluster: Cluster,
    bus: zbus::Connection,
    manager: ManagerProxy<'static>,
    dir: PathBuf,
    /// Unit object paths by unit name, for the units this machine runs.
    paths: HashMap<String, String>,
    /// The restart generation carried out, per unit.
    restarted: HashMap<String, u64>,
    /// What the signals of systemd are filtered by (shared with the stream drains).
    watched: std::sync::Arc<std::sync::Mutex<Watched>>,
}

impl Reconciler {
    async fn new(cluster: Cluster, bus: zbus::Connection, dir: PathBuf) -> Result<Self, Error> {
        let manager = ManagerProxy::builder(&bus)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        manager.subscribe().await?;
        Ok(Reconciler {
            cluster,
            bus,
            manager,
            dir,
            paths: HashMap::new(),
            restarted: HashMap::new(),
            watched: Default::default(),
        })
    }

    fn me(&self) -> &str {
        &self.cluster.me().name
    }

    fn wanted(&self) -> BTreeMap<String, Want> {
        let me = self.me().to_owned();
        let a = self.cluster.applied();
        a.state
            .units
            .assigned_to(&me)
            .map(|u| {
                let want = Want {
                    text: u.text.clone(),
                    desired: u.desired,
                    restart_generation: u.restarts.get(&me).copied().unwrap_or(0),
                    reported: a
                        .state
                        .units
                        .reported
                        .get(&u.name)
                        .and_then(|m| m.get(&me))
                        .cloned(),
                };
                (u.name.clone(), want)
            })
            .collect()
    }

    /// Reported states this machine still holds for units no longer assigned here.
    fn stale_reports(&self, wanted: &BTreeMap<String, Want>) -> Vec<String> {
        let me = self.me();
        let a = self.cluster.applied();
        a.state
            .units
            .reported
            .iter()
            .filter(|(name, m)| m.contains_key(me) && !wanted.contains_key(*name))
            .map(|(name, _)| name.clone())
            .collect()
    }

    async fn pass(&mut self) -> Result<(), Error> {
        let wanted = self.wanted();
        lock(&self.watched).names = wanted.keys().cloned().collect();
        let mut reload = false;
        let mut rewritten = BTreeSet::new();

        // Units that left this machine: stop, then remove the file.
        for name in managed_files(&self.dir)? {
            if wanted.contains_key(&name) {
                continue;
            }
            if let Err(e) = self.manager.stop_unit(&name, Mode::Replace.as_str()).await {
                tracing::debug!(unit = %name, "stop of a unit leaving this machine: {e}, ignoring");
            }
            let path = self.dir.join(&name);
            std::fs::remove_file(&path).map_err(|source| file_error(&path, source))?;
            tracing::info!(unit = %name, "unit left this machine: stopped and removed");
            self.paths.remove(&name);
            self.restarted.remove(&name);
            reload = true;
        }

        // Units assigned here: write what is missing or differs (only flotilla's files).
        for (name, want) in &wanted {
            let path = self.dir.join(name);
            let content = format!("{MANAGED}{}", want.text);
            match std::fs::read_to_string(&path) {
                Ok(existing) if existing == content => continue,
                Ok(existing) if !existing.starts_with(MANAGED) => {
                    tracing::warn!(unit = %name, "{} exists and is not flotilla's: not touching it, ignoring", path.display());
                    continue;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(file_error(&path, e)),
            }
            write_file(&path, &content)?;
            rewritten.insert(name.clone());
            reload = true;
        }
        if reload {
            self.manager.reload().await?;
        }

        // Jobs for what differs.
        for (name, want) in &wanted {
            let status = self.manager.list_units_by_names(&[name.as_str()]).await?;
            let active = status
                .first()
                .map_or("inactive", |s| s.active_state.as_str())
                .to_owned();
            let running = matches!(active.as_str(), "active" | "activating" | "reloading");
            let done = *self.restarted.entry(name.clone()).or_insert_with(|| {
                // Adopted: a restart asked before this agent started is considered done when
                // the cluster holds a report of it.
                want.reported.as_ref().map_or(0, |r| r.restart_generation)
            });
            let mode = Mode::Replace.as_str();
            match want.desired {
                Desired::Launched if !running => {
                    self.manager.start_unit(name, mode).await?;
                }
                Desired::Launched if rewritten.contains(name) || want.restart_generation > done => {
                    self.manager.restart_unit(name, mode).await?;
                }
                Desired::Loaded | Desired::Inactive if running => {
                    self.manager.stop_unit(name, mode).await?;
                }
                _ => {}
            }
            if want.restart_generation > done {
                self.restarted.insert(name.clone(), want.restart_generation);
            }
        }

        // Reports, only what changed.
        for (name, want) in &wanted {
            let state = self.read_state(name, want).await?;
            if want.reported.as_ref() != Some(&state) {
                self.report(name, Some(state)).await?;
            }
        }
        for name in self.stale_reports(&wanted) {
            self.report(&name, None).await?;
        }
        lock(&self.watched).paths = self.paths.values().cloned().collect();
        Ok(())
    }

    /// The unit's state as systemd has it now (uncached: a cache lags the signals).
    async fn read_state(&mut self, name: &str, want: &Want) -> Result<Reported, Error> {
        let status = self.manager.list_units_by_names(&[name]).await?;
        let Some(s) = status.into_iter().next() else {
            return Ok(Reported::default());
        };
        self.paths
            .insert(name.to_owned(), s.unit_path.as_str().to_owned());
        let (main_pid, result) = if name.ends_with(".service") && s.load_state == "loaded" {
            let service = ServiceProxy::builder(&self.bus)
                .path(s.unit_path.clone())
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            (service.main_pid().await?, service.result().await?)
        } else {
            (0, String::new())
        };
        let since_ms = match &want.reported {
            Some(r) if r.active == s.active_state => r.since_ms,
            _ => crate::liveness::now_ms(),
        };
        Ok(Reported {
            load: s.load_state,
            active: s.active_state,
            sub: s.sub_state,
            since_ms,
            main_pid,
            result,
            restart_generation: self.restarted.get(name).copied().unwrap_or(0),
        })
    }

    async fn report(&self, name: &str, state: Option<Reported>) -> Result<(), Error> {
        let cmd = Command::Unit(units::Change::ReportState {
            machine: self.me().to_owned(),
            name: name.to_owned(),
            state,
        });
        self.cluster
            .propose(cmd)
            .await
            .map_err(|source| Error::Report {
                name: name.to_owned(),
                source,
            })?;
        Ok(())
    }
}

/// The names of the unit files in `dir` that flotilla wrote.
fn managed_files(dir: &Path) -> Result<Vec<String>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file_error(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".flotilla-tmp") {
            continue;
        }
        if std::fs::read_to_string(&path).is_ok_and(|t| t.starts_with(MANAGED)) {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

/// Writes `content` to `path` through a temporary file and a rename (systemd never reads a
/// half-written unit).
fn write_file(path: &Path, content: &str) -> Result<(), Error> {
    let tmp = path.with_extension("flotilla-tmp");
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))
        .map_err(|e| file_error(path, e))?;
    std::fs::write(&tmp, content).map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
}

fn file_error(path: &Path, source: std::io::Error) -> Error {
    Error::File {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_that_open_with_the_marker_are_flotillas() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.service"),
            format!("{MANAGED}[Service]\n"),
        )
        .unwrap();
        std::fs::write(dir.path().join("b.service"), "[Service]\n").unwrap();
        write_file(&dir.path().join("c.service"), &format!("{MANAGED}x")).unwrap();
        let mut names = managed_files(dir.path()).unwrap();
        names.sort();
        assert_eq!(names, ["a.service", "c.service"]);
    }
}
