//! The reconciler: on every machine, makes this machine's systemd run the units the cluster
//! assigned to it, and reports their state back.
//!
//! # Design
//!
//! One task. It wakes when units or machines changed (the watch hub), when systemd finishes a
//! job (`JobRemoved`) and when a unit object's properties change (`PropertiesChanged` under
//! `/org/freedesktop/systemd1/unit`); it never polls. The signals mark the units they name
//! dirty. A change in the cluster that leaves this machine's units (text, desired state,
//! restart generation, launch, report) as the last pass left them, with nothing dirty, costs no
//! pass: with 1000 units, every machine would otherwise redo its work on every commit of any
//! other machine. A pass:
//!
//! 1. reads the units assigned to this machine (by its name) from the applied state;
//! 2. writes the unit files that are missing or differ to `/run/systemd/system/NAME`, each
//!    opening with [`MANAGED`] (a file without that line is never written nor removed, and its
//!    unit is left alone: no drop-in, no job; it is reported `failed`/`foreign-file`), and
//!    stops then removes the managed files of units that left this machine; a unit whose text
//!    and image are those it was last written or checked with is not read again;
//! 3. one `Reload` if any file changed;
//! 4. one `ListUnitsByNames` for every unit, then `StartUnit` / `StopUnit` / `RestartUnit`
//!    (mode `replace`) for what differs from the desired state, sent together (at most
//!    [`CALLS_IN_FLIGHT`] unanswered) (a running unit whose file is unchanged is left alone:
//!    after an agent restart it is adopted as it is; a launched unit is started once per
//!    launch, see `started`);
//! 5. one `ListUnitsByNames` again; the services' main PID and result are read (without a
//!    cache) only for units that are dirty, whose summary differs from their report, or whose
//!    job was refused. A unit whose job systemd took is read when the job is done (its
//!    `JobRemoved`), not in the pass that sent it: the pass does not wait for systemd to work
//!    through the queue it just filled. Then one `units::Change::ReportStates` with the units
//!    whose state differs from the one the cluster holds.
//!
//! A unit with `[X-Flotilla] Image=REF` runs in that image. Its image is taken from the store,
//! or else pulled in a task of its own (a pass never waits for a registry): meanwhile the unit
//! is reported `stub`/`activating`/`pulling` and nothing of it is written (a running copy that
//! should not run any more is still stopped). A failed pull is
//! reported as the unit's failure (`failed`/`pull-failed`, the registry's error as its result)
//! and retried with a doubling backoff ([`RETRY_PULL`] to [`MAX_RETRY_PULL`]). Once the image is
//! there, the unit file is written with a drop-in `NAME.d/50-flotilla-image.conf` (also opening
//! with [`MANAGED`]) that holds `RootDirectory=`, the sandbox, the image's environment, working
//! directory and user, and `ExecStart=` when the unit has none: `systemctl cat NAME` shows them.
//! An option the unit sets itself is not overridden by the drop-in.
//!
//! # Current limitations
//!
//! - A pass still lists every assigned unit (two `ListUnitsByNames` calls); units assigned
//!   while a pass runs wait for the next one.
//! - A managed unit file edited by hand is put back only when its unit changes or the agent
//!   restarts.
//! - Without a system bus (or as non-root) the reconciler logs once and does nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_dbus::systemd1::{ManagerProxy, Mode, ServiceProxy};
use flotilla_state::units::{Desired, Reported};
use flotilla_state::{Command, units};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use zbus::proxy::CacheProperties;

use crate::cluster::Cluster;
use crate::images::{Images, ServiceSpec};

/// The first line of every unit file flotilla writes; files without it are not flotilla's.
pub(crate) const MANAGED: &str = "# Managed by flotilla: changes are overwritten\n";
/// Which units were started with what (runtime, as the unit files: after a reboot every
/// launched unit starts again).
const STARTED: &str = "/run/flotilla/started.json";
/// Where unit files go (runtime: the cluster re-asserts them after a reboot).
const UNIT_DIR: &str = "/run/systemd/system";
/// How long to wait after a failed pass before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// The first wait before a failed pull is tried again; it doubles with every failure.
const RETRY_PULL: Duration = Duration::from_secs(2);
/// The longest wait between two tries of a failing pull.
const MAX_RETRY_PULL: Duration = Duration::from_secs(300);
/// Calls to systemd a pass has sent and not had an answer for, at most: well under what the
/// system bus lets one connection have pending (dbus-daemon's `max_replies_per_connection`,
/// 128 by default; beyond it calls fail with `LimitsExceeded`).
const CALLS_IN_FLIGHT: usize = 64;
/// The drop-in that runs a unit in its image, in `NAME.d/`.
const IMAGE_DROPIN: &str = "50-flotilla-image.conf";

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
    /// Which launch of the unit this is (`UnitRecord::launch`).
    launch: u64,
    reported: Option<Reported>,
}

/// Runs until `cancel`: reconciles this machine's systemd with its assignments; units with
/// `Image=` run in images of `images` (without it, they are reported failed).
pub(crate) async fn run(cluster: Cluster, images: Option<Images>, cancel: CancellationToken) {
    let bus = match zbus::Connection::system().await {
        Ok(bus) => bus,
        Err(e) => {
            tracing::warn!("no system bus ({e}): units will not run on this machine, ignoring");
            return;
        }
    };
    let mut r = match Reconciler::new(cluster, images, bus, PathBuf::from(UNIT_DIR)).await {
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
    let wake = r.wake.clone();
    let watched = r.watched.clone();
    let drain_jobs = async {
        while let Some(job) = jobs.next().await {
            if let Ok(args) = job.args() {
                let mut w = lock(&watched);
                if w.names.contains(args.unit.as_str()) {
                    w.dirty.insert(args.unit.to_string());
                    drop(w);
                    wake.notify_one();
                }
            }
        }
        tracing::warn!("systemd's JobRemoved stream ended, ignoring");
        std::future::pending::<()>().await;
    };
    let drain_props = async {
        while let Some(msg) = props.next().await {
            let Ok(msg) = msg else { continue };
            let header = msg.header();
            let Some(path) = header.path() else { continue };
            let mut w = lock(&watched);
            if let Some(name) = w.paths.get(path.as_str()).cloned() {
                w.dirty.insert(name);
                drop(w);
                wake.notify_one();
            }
        }
        tracing::warn!("systemd's PropertiesChanged stream ended, ignoring");
        std::future::pending::<()>().await;
    };
    let passes = async {
        // Only a change in the cluster's state may find nothing to do for this machine;
        // a signal, a finished pull or a retry always runs a pass.
        let mut woken_by_cluster = false;
        loop {
            changed.borrow_and_update();
            if let Err(e) = r.pass(woken_by_cluster).await {
                tracing::warn!("reconcile: {e}, retrying");
                tokio::time::sleep(RETRY_AFTER).await;
                woken_by_cluster = false;
                continue;
            }
            let retry = r.next_retry();
            woken_by_cluster = tokio::select! {
                c = changed.changed() => if c.is_err() { return } else { true },
                _ = wake.notified() => false,
                _ = tokio::time::sleep_until(retry.unwrap_or_else(Instant::now).into()), if retry.is_some() => false,
            };
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = passes => {}
        _ = drain_jobs => {}
        _ = drain_props => {}
    }
}

/// The units and unit objects a pass looks after: their signals wake the next pass, which
/// reads the state of the units they name again.
#[derive(Debug, Default)]
struct Watched {
    names: BTreeSet<String>,
    /// Unit names by unit object path.
    paths: HashMap<String, String>,
    /// Units systemd signalled something about since the last pass began.
    dirty: BTreeSet<String>,
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
    /// Units started since they were last desired launched, with the fingerprint of what they
    /// were started with. A unit that then stops by itself (a oneshot that finished, a service
    /// that failed for good) is not started again until its files, its restart generation or
    /// its desired state change: as with `systemctl start`, restarting a unit that exits is
    /// its own `Restart=`'s business. Kept in [`STARTED`] (runtime, like the unit files), so
    /// a restarted agent adopts it too.
    started: BTreeMap<String, String>,
    /// What [`STARTED`] holds.
    started_saved: BTreeMap<String, String>,
    /// A unit file changed since systemd last reloaded (kept across a pass that failed).
    needs_reload: bool,
    /// Units whose files were rewritten and that have not been (re)started with them yet
    /// (kept across a pass that failed).
    rewritten: BTreeSet<String>,
    /// Units whose last job systemd refused, with why: reported as their result until a job
    /// of theirs goes through.
    refused: HashMap<String, String>,
    /// What the signals of systemd are filtered by (shared with the stream drains).
    watched: std::sync::Arc<std::sync::Mutex<Watched>>,
    /// What this machine's units looked like at the end of the last pass that succeeded,
    /// with the states it reported: while the cluster's view equals it and systemd signalled
    /// nothing, a change elsewhere in the cluster needs no pass here.
    settled: Option<BTreeMap<String, Want>>,
    /// Units whose file is not flotilla's, already warned about.
    foreign: BTreeSet<String>,
    /// The unit file and drop-in each unit was last written or checked with, so a pass reads
    /// only the files of units whose text or image changed (a file edited by hand is put back
    /// when its unit changes, or when the agent restarts).
    verified: HashMap<String, (String, Option<String>)>,
    /// The image service (none: units with `Image=` cannot run here).
    images: Option<Images>,
    /// Images of units, by reference as the units write it.
    pulls: HashMap<String, Pull>,
    /// Finished pulls, handed over by their tasks.
    pulled: Arc<std::sync::Mutex<Vec<PullResult>>>,
    /// Wakes a pass (a finished pull, a signal of systemd).
    wake: Arc<tokio::sync::Notify>,
}

/// A finished pull: the reference and the image or the error.
type PullResult = (String, Result<flotilla_images::Image, String>);

/// Where the image of units is.
#[derive(Debug, Clone)]
enum Pull {
    /// A first pull is in flight.
    Pulling,
    /// In the store.
    Ready(flotilla_images::Image),
    /// The last pull failed; tried again at `retry_at` (or in flight again).
    Failed {
        error: String,
        failures: u32,
        retry_at: Instant,
        in_flight: bool,
    },
}

/// What one pass did, for its debug log line.
#[derive(Debug, Default)]
struct PassStats {
    units: usize,
    written: usize,
    reload_ms: u128,
    jobs: usize,
    jobs_ms: u128,
    read: usize,
    read_ms: u128,
    reports: usize,
    report_ms: u128,
}

/// The job a pass asks of systemd for one unit.
#[derive(Debug, Clone, Copy)]
enum JobKind {
    Start,
    Restart,
    Stop,
}

/// What a pass does with one unit.
enum Prep {
    /// No image: the unit file as it is.
    Plain,
    /// Its image is there: the unit file and this drop-in.
    Image(String),
    /// Its image is not there yet (or failed): report this and write nothing (a running one
    /// that should not run any more is stopped).
    Waiting(Reported),
    /// Its file in the unit directory is not flotilla's: report this and touch nothing.
    Foreign(Reported),
}

impl Reconciler {
    async fn new(
        cluster: Cluster,
        images: Option<Images>,
        bus: zbus::Connection,
        dir: PathBuf,
    ) -> Result<Self, Error> {
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
            started: load_started(),
            started_saved: load_started(),
            needs_reload: false,
            rewritten: BTreeSet::new(),
            refused: HashMap::new(),
            watched: Default::default(),
            settled: None,
            foreign: BTreeSet::new(),
            verified: HashMap::new(),
            images,
            pulls: HashMap::new(),
            pulled: Default::default(),
            wake: Default::default(),
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
                    launch: u.launch,
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

    /// One pass; `woken_by_cluster`: only the cluster's state changed since the last one, so
    /// the pass is skipped when this machine's part of it is as the last pass left it.
    async fn pass(&mut self, woken_by_cluster: bool) -> Result<(), Error> {
        let wanted = self.wanted();
        let dirty = std::mem::take(&mut lock(&self.watched).dirty);
        if woken_by_cluster
            && dirty.is_empty()
            && !self.needs_reload
            && self.rewritten.is_empty()
            && self.settled.as_ref() == Some(&wanted)
        {
            return Ok(());
        }
        self.settled = None;
        let began = Instant::now();
        let mut stats = PassStats {
            units: wanted.len(),
            ..PassStats::default()
        };
        let done = self.pass_inner(wanted, dirty, &mut stats).await;
        tracing::debug!(
            "reconcile pass: {} units, {} files written, reload {} ms, {} jobs {} ms, {} states read {} ms, {} reports committed {} ms; {} ms in all",
            stats.units,
            stats.written,
            stats.reload_ms,
            stats.jobs,
            stats.jobs_ms,
            stats.read,
            stats.read_ms,
            stats.reports,
            stats.report_ms,
            began.elapsed().as_millis()
        );
        // What was started is recorded even when the pass failed later on.
        if self.started != self.started_saved {
            save_started(&self.started)?;
            self.started_saved = self.started.clone();
        }
        done
    }

    async fn pass_inner(
        &mut self,
        wanted: BTreeMap<String, Want>,
        dirty: BTreeSet<String>,
        stats: &mut PassStats,
    ) -> Result<(), Error> {
        lock(&self.watched).names = wanted.keys().cloned().collect();
        let mut preps = HashMap::new();
        for (name, want) in &wanted {
            preps.insert(name.clone(), self.prepare(name, want).await);
        }
        // Forget images no unit here uses (a later unit looks in the store again: the image may
        // have been removed meanwhile); pulls in flight stay until they report.
        let used: BTreeSet<String> = wanted
            .iter()
            .filter_map(|(name, want)| image_of(name, &want.text))
            .collect();
        self.pulls.retain(|reference, p| {
            used.contains(reference)
                || matches!(
                    p,
                    Pull::Pulling
                        | Pull::Failed {
                            in_flight: true,
                            ..
                        }
                )
        });

        // Units that left this machine: stop, then remove the file.
        for name in managed_files(&self.dir)? {
            if wanted.contains_key(&name) {
                continue;
            }
            match self.manager.stop_unit(&name, Mode::Replace.as_str()).await {
                Ok(_) => {}
                Err(e) if refused_as(&e, "org.freedesktop.systemd1.NoSuchUnit") => {}
                // Its file stays until it is stopped: the next pass tries again.
                Err(e) => {
                    tracing::warn!(unit = %name, "cannot stop a unit leaving this machine: {e}; trying again on the next pass");
                    continue;
                }
            }
            self.needs_reload = true;
            remove_dropin(&self.dir, &name)?;
            let path = self.dir.join(&name);
            std::fs::remove_file(&path).map_err(|source| file_error(&path, source))?;
            tracing::info!(unit = %name, "unit left this machine: stopped and removed");
            self.paths.remove(&name);
            self.verified.remove(&name);
            self.restarted.remove(&name);
            self.started.remove(&name);
        }

        // Units assigned here: write what is missing or differs (only flotilla's files).
        self.verified.retain(|name, _| wanted.contains_key(name));
        let mut foreign = Vec::new();
        for (name, want) in &wanted {
            let files = match &preps[name] {
                Prep::Waiting(_) | Prep::Foreign(_) => continue,
                Prep::Plain => (want.text.clone(), None),
                Prep::Image(dropin) => (want.text.clone(), Some(dropin.clone())),
            };
            if self.verified.get(name) == Some(&files) {
                continue;
            }
            // A file that is not flotilla's is left alone, and so is its unit (no drop-in, no
            // job): it is reported failed, saying why, until the file goes.
            let path = self.dir.join(name);
            let content = format!("{MANAGED}{}", want.text);
            let existing = match std::fs::read_to_string(&path) {
                Ok(existing) => Some(existing),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(file_error(&path, e)),
            };
            if existing.as_ref().is_some_and(|e| !e.starts_with(MANAGED)) {
                foreign.push((name.clone(), path));
                continue;
            }
            match &preps[name] {
                Prep::Waiting(_) | Prep::Foreign(_) => continue,
                Prep::Plain => {
                    if remove_dropin(&self.dir, name)? {
                        self.rewritten.insert(name.clone());
                        self.needs_reload = true;
                    }
                }
                Prep::Image(dropin) => {
                    let path = dropin_path(&self.dir, name);
                    if write_managed(&path, &format!("{MANAGED}{dropin}"))? {
                        self.rewritten.insert(name.clone());
                        self.needs_reload = true;
                    }
                }
            }
            if existing.as_ref() == Some(&content) {
                self.verified.insert(name.clone(), files);
                continue;
            }
            self.needs_reload = true;
            write_file(&path, &content)?;
            stats.written += 1;
            self.rewritten.insert(name.clone());
            self.verified.insert(name.clone(), files);
        }
        self.foreign
            .retain(|name| foreign.iter().any(|(n, _)| n == name));
        for (name, path) in foreign {
            if self.foreign.insert(name.clone()) {
                tracing::warn!(unit = %name, "{} exists and is not flotilla's: leaving the unit alone and reporting it failed", path.display());
            }
            let state = Reported {
                load: "stub".into(),
                active: "failed".into(),
                sub: "foreign-file".into(),
                result: format!(
                    "refused: {} exists and is not flotilla's (it has no '{}' line)",
                    path.display(),
                    MANAGED.trim_end()
                ),
                ..Reported::default()
            };
            preps.insert(name.clone(), Prep::Foreign(state));
        }
        if self.needs_reload {
            let t = Instant::now();
            self.manager.reload().await?;
            stats.reload_ms = t.elapsed().as_millis();
            self.needs_reload = false;
        }

        // Jobs for what differs (the states of every unit in one call).
        let ready: Vec<&str> = wanted
            .keys()
            .filter(|n| !matches!(preps[n.as_str()], Prep::Waiting(_) | Prep::Foreign(_)))
            .map(String::as_str)
            .collect();
        // A unit waiting for its image that should not run any more is still stopped.
        let waiting_to_stop: Vec<&str> = wanted
            .iter()
            .filter(|(n, w)| {
                matches!(preps[n.as_str()], Prep::Waiting(_)) && w.desired != Desired::Launched
            })
            .map(|(n, _)| n.as_str())
            .collect();
        let listed: Vec<&str> = ready.iter().chain(&waiting_to_stop).copied().collect();
        let before = self.unit_states(&listed).await?;
        self.refused.retain(|name, _| wanted.contains_key(name));
        self.rewritten.retain(|name| wanted.contains_key(name));
        // What each unit needs, decided first; then the jobs are sent together (systemd
        // queues them in order, and a pass does not wait a round trip per unit).
        let mut decided: Vec<(&String, Option<JobKind>)> = Vec::new();
        for (name, want) in &wanted {
            let waiting = matches!(preps[name], Prep::Waiting(_));
            if matches!(preps[name], Prep::Foreign(_))
                || (waiting && !waiting_to_stop.contains(&name.as_str()))
            {
                continue;
            }
            let active = before
                .get(name.as_str())
                .map_or("inactive", |s| s.active_state.as_str())
                .to_owned();
            let running = matches!(active.as_str(), "active" | "activating" | "reloading");
            let done = *self.restarted.entry(name.clone()).or_insert_with(|| {
                // Adopted: a restart asked before this agent started is considered done when
                // the cluster holds a report of it.
                want.reported.as_ref().map_or(0, |r| r.restart_generation)
            });
            let print = fingerprint(want, &preps[name]);
            // Rewritten in this pass, or in one that failed before its restart.
            let restart = self.rewritten.contains(name) || want.restart_generation > done;
            let job = match want.desired {
                Desired::Launched if !running => {
                    let start = self.started.get(name) != Some(&print) || restart;
                    self.started.insert(name.clone(), print);
                    start.then_some(JobKind::Start)
                }
                Desired::Launched => {
                    self.started.insert(name.clone(), print);
                    restart.then_some(JobKind::Restart)
                }
                Desired::Loaded | Desired::Inactive => {
                    self.started.remove(name);
                    running.then_some(JobKind::Stop)
                }
            };
            decided.push((name, job));
        }
        let mode = Mode::Replace.as_str();
        let manager = &self.manager;
        let mut calls: Vec<futures::future::BoxFuture<'_, Result<Option<_>, zbus::Error>>> =
            Vec::with_capacity(decided.len());
        for (name, job) in &decided {
            let name = name.as_str();
            calls.push(match job {
                None => Box::pin(async { Ok(None) }),
                Some(JobKind::Start) => {
                    Box::pin(async move { manager.start_unit(name, mode).await.map(Some) })
                }
                Some(JobKind::Restart) => {
                    Box::pin(async move { manager.restart_unit(name, mode).await.map(Some) })
                }
                Some(JobKind::Stop) => {
                    Box::pin(async move { manager.stop_unit(name, mode).await.map(Some) })
                }
            });
        }
        let t = Instant::now();
        stats.jobs = decided.iter().filter(|(_, job)| job.is_some()).count();
        let sent = futures::stream::iter(calls)
            .buffered(CALLS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        // Units whose job systemd took in this pass: their state is read once systemd says
        // the job is done (`JobRemoved` marks them dirty and wakes the next pass), not now,
        // so a pass does not wait for systemd to work through the queue it just filled.
        let mut pending = BTreeSet::new();
        for ((name, _), job) in decided.into_iter().zip(sent) {
            let want = &wanted[name];
            // Done with its new files (or refused for good); a lost connection tries again.
            if matches!(job, Ok(_) | Err(zbus::Error::MethodError(..))) {
                self.rewritten.remove(name);
            }
            if matches!(job, Ok(Some(_))) {
                pending.insert(name.as_str());
            }
            // systemd refusing a job for one unit (a missing dependency, RefuseManualStart=,
            // a masked unit) is that unit's failure, reported with it; the others go on.
            match job {
                Ok(None) => {}
                Ok(Some(_)) => {
                    self.refused.remove(name);
                }
                Err(zbus::Error::MethodError(error, detail, _)) => {
                    let why = detail.unwrap_or_else(|| error.to_string());
                    tracing::warn!(unit = %name, "systemd refused its job: {why}");
                    self.refused.insert(name.clone(), why);
                }
                Err(e) => return Err(e.into()),
            }
            if want.restart_generation > self.restarted.get(name).copied().unwrap_or(0) {
                self.restarted.insert(name.clone(), want.restart_generation);
            }
        }
        self.started.retain(|name, _| wanted.contains_key(name));
        if self.started != self.started_saved {
            save_started(&self.started)?;
            self.started_saved = self.started.clone();
        }

        // Reports, only what changed, in one command. A unit's state is read in full (main
        // PID, result) only when something may have changed it: a signal of systemd about it
        // (its job done, its properties changed), a refused job, or a state in
        // `ListUnitsByNames` that differs from its report.
        stats.jobs_ms = t.elapsed().as_millis();
        let t = Instant::now();
        let after = self.unit_states(&ready).await?;
        let mut reports = Vec::new();
        let mut reads = Vec::new();
        let mut settled = wanted.clone();
        for (name, want) in &wanted {
            match preps.remove(name) {
                Some(Prep::Waiting(mut state) | Prep::Foreign(mut state)) => {
                    state.since_ms = match &want.reported {
                        Some(r) if r.active == state.active => r.since_ms,
                        _ => crate::liveness::now_ms(),
                    };
                    state.restart_generation = self.restarted.get(name).copied().unwrap_or(0);
                    if want.reported.as_ref() != Some(&state) {
                        reports.push((name.clone(), Some(state.clone())));
                    }
                    settled.get_mut(name).expect("a wanted unit").reported = Some(state);
                }
                // Read when its job is done.
                _ if pending.contains(name.as_str()) => {}
                _ if dirty.contains(name)
                    || !self.paths.contains_key(name)
                    || self.differs(name, want, after.get(name.as_str())) =>
                {
                    reads.push((name, want))
                }
                // As reported, and nothing happened to it.
                _ => {}
            }
        }
        stats.read = reads.len();
        let mut calls: Vec<futures::future::BoxFuture<'_, Result<Reported, Error>>> =
            Vec::with_capacity(reads.len());
        for (name, want) in &reads {
            calls.push(Box::pin(self.read_state(
                name,
                want,
                after.get(name.as_str()),
            )));
        }
        let read = futures::stream::iter(calls)
            .buffered(CALLS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        for ((name, want), state) in reads.into_iter().zip(read) {
            let mut state = state?;
            if let Some(why) = self.refused.get(name.as_str()) {
                state.result = format!("refused: {why}");
            }
            if let Some(path) = after.get(name.as_str()).map(|s| s.unit_path.as_str()) {
                self.paths.insert(name.clone(), path.to_owned());
            }
            if want.reported.as_ref() != Some(&state) {
                reports.push((name.clone(), Some(state.clone())));
            }
            settled
                .get_mut(name.as_str())
                .expect("a wanted unit")
                .reported = Some(state);
        }
        for name in self.stale_reports(&wanted) {
            reports.push((name, None));
        }
        stats.read_ms = t.elapsed().as_millis();
        let t = Instant::now();
        stats.reports = reports.len();
        self.report(reports).await?;
        stats.report_ms = t.elapsed().as_millis();
        lock(&self.watched).paths = self
            .paths
            .iter()
            .map(|(name, path)| (path.clone(), name.clone()))
            .collect();
        self.settled = Some(settled);
        Ok(())
    }

    /// Whether systemd's summary of `name` differs from what the cluster holds of it.
    fn differs(
        &self,
        name: &str,
        want: &Want,
        status: Option<&flotilla_dbus::systemd1::UnitStatus>,
    ) -> bool {
        let (Some(r), Some(s)) = (&want.reported, status) else {
            return true;
        };
        let refused = self.refused.get(name).map(|why| format!("refused: {why}"));
        r.load != s.load_state
            || r.active != s.active_state
            || r.sub != s.sub_state
            || r.restart_generation != self.restarted.get(name).copied().unwrap_or(0)
            || match refused {
                Some(result) => r.result != result,
                None => r.result.starts_with("refused: "),
            }
    }

    /// Whether `name` runs in an image, and if so whether that image is there: starts a pull
    /// when it is not (never waiting for it).
    async fn prepare(&mut self, name: &str, want: &Want) -> Prep {
        let Some(reference) = image_of(name, &want.text) else {
            return Prep::Plain;
        };
        let v = flotilla_units::verify(name, &want.text, &[]);
        let Some(images) = self.images.clone() else {
            return waiting_failed("this agent runs without an image store".into());
        };
        self.collect_pulls();
        let now = Instant::now();
        let image = match self.pulls.get(&reference) {
            Some(Pull::Ready(image)) => image.clone(),
            Some(Pull::Pulling) => return waiting_pull(),
            Some(Pull::Failed {
                error,
                retry_at,
                in_flight,
                ..
            }) => {
                let error = error.clone();
                if !*in_flight && *retry_at <= now {
                    self.start_pull(&images, &reference);
                }
                return waiting_failed(error);
            }
            None => match images.find(&reference).await {
                Ok(Some(image)) => {
                    self.pulls
                        .insert(reference.clone(), Pull::Ready(image.clone()));
                    image
                }
                _ => {
                    self.pulls.insert(reference.clone(), Pull::Pulling);
                    self.start_pull(&images, &reference);
                    return waiting_pull();
                }
            },
        };
        let has_exec = v
            .unit
            .section("Service")
            .is_some_and(|s| !s.values("ExecStart").is_empty());
        // The image's command is resolved only when the unit gives none: its entrypoint and
        // cmd, or its entrypoint and `[X-Flotilla] Args=`.
        let args = v.flotilla.args.clone().unwrap_or_default();
        let spec = images
            .service(&image, if has_exec { None } else { Some(&args) })
            .await;
        match spec {
            Ok(spec) => Prep::Image(dropin(&spec, &v.unit, !has_exec)),
            Err(e) => waiting_failed(format!("image {reference}: {e}")),
        }
    }

    /// Pulls `reference` in a task of its own; its result wakes a pass.
    fn start_pull(&mut self, images: &Images, reference: &str) {
        if let Some(Pull::Failed { in_flight, .. }) = self.pulls.get_mut(reference) {
            *in_flight = true;
        }
        tracing::info!(image = %reference, "pulling");
        let (images, reference) = (images.clone(), reference.to_owned());
        let (pulled, wake) = (self.pulled.clone(), self.wake.clone());
        tokio::spawn(async move {
            let result = images
                .pull(&reference, None)
                .await
                .map_err(|e| e.to_string());
            match &result {
                Ok(_) => tracing::info!(image = %reference, "pulled"),
                Err(e) => tracing::warn!(image = %reference, "{e}, retrying later"),
            }
            pulled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((reference, result));
            wake.notify_one();
        });
    }

    /// Takes in the results of finished pulls.
    fn collect_pulls(&mut self) {
        let done = std::mem::take(&mut *self.pulled.lock().unwrap_or_else(|p| p.into_inner()));
        for (reference, result) in done {
            let next = match result {
                Ok(image) => Pull::Ready(image),
                Err(error) => {
                    let failures = match self.pulls.get(&reference) {
                        Some(Pull::Failed { failures, .. }) => failures + 1,
                        _ => 1,
                    };
                    let wait = RETRY_PULL
                        .saturating_mul(1 << (failures - 1).min(16))
                        .min(MAX_RETRY_PULL);
                    Pull::Failed {
                        error,
                        failures,
                        retry_at: Instant::now() + wait,
                        in_flight: false,
                    }
                }
            };
            self.pulls.insert(reference, next);
        }
    }

    /// When the next failed pull is due to be tried again.
    fn next_retry(&self) -> Option<Instant> {
        self.pulls
            .values()
            .filter_map(|p| match p {
                Pull::Failed {
                    retry_at,
                    in_flight: false,
                    ..
                } => Some(*retry_at),
                _ => None,
            })
            .min()
    }

    /// The unit's state as systemd has it now (uncached: a cache lags the signals).
    /// The states systemd holds of `names` (loading those not loaded yet), by name.
    async fn unit_states(
        &self,
        names: &[&str],
    ) -> Result<HashMap<String, flotilla_dbus::systemd1::UnitStatus>, Error> {
        if names.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(self
            .manager
            .list_units_by_names(names)
            .await?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect())
    }

    /// The state to report of `name`, from systemd's `status` of it (read without a cache),
    /// with its service's main PID and result.
    async fn read_state(
        &self,
        name: &str,
        want: &Want,
        status: Option<&flotilla_dbus::systemd1::UnitStatus>,
    ) -> Result<Reported, Error> {
        let Some(s) = status else {
            return Ok(Reported::default());
        };
        let (mut active, mut sub) = (s.active_state.clone(), s.sub_state.clone());
        let (main_pid, result) = if name.ends_with(".service") && s.load_state == "loaded" {
            let service = ServiceProxy::builder(&self.bus)
                .path(s.unit_path.clone())
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            let main_pid = service.main_pid().await?;
            let result = service.result().await?;
            // The state read after the main PID: "active" then means active with that process
            // or a later one, never a stale "active" beside a process still starting.
            let unit = flotilla_dbus::systemd1::UnitProxy::builder(&self.bus)
                .path(s.unit_path.clone())
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            active = unit.active_state().await?;
            sub = unit.sub_state().await?;
            (main_pid, result)
        } else {
            (0, String::new())
        };
        let since_ms = match &want.reported {
            Some(r) if r.active == active => r.since_ms,
            _ => crate::liveness::now_ms(),
        };
        Ok(Reported {
            load: s.load_state.clone(),
            active,
            sub,
            since_ms,
            main_pid,
            result,
            restart_generation: self.restarted.get(name).copied().unwrap_or(0),
        })
    }

    /// Commits this machine's reports of a pass, in one command.
    async fn report(&self, states: Vec<(String, Option<Reported>)>) -> Result<(), Error> {
        let Some((first, _)) = states.first() else {
            return Ok(());
        };
        let name = if states.len() == 1 {
            first.clone()
        } else {
            format!("{first} and {} more", states.len() - 1)
        };
        let cmd = Command::Unit(units::Change::ReportStates {
            machine: self.me().to_owned(),
            states,
        });
        self.cluster
            .propose(cmd)
            .await
            .map_err(|source| Error::Report { name, source })?;
        Ok(())
    }
}

/// Whether `e` is systemd's error `name` (e.g. `org.freedesktop.systemd1.NoSuchUnit`).
fn refused_as(e: &zbus::Error, name: &str) -> bool {
    matches!(e, zbus::Error::MethodError(n, _, _) if n.as_str() == name)
}

/// What a unit was started with: its file, its image drop-in, its restart generation and
/// which launch it is.
fn fingerprint(want: &Want, prep: &Prep) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(want.text.as_bytes());
    h.update(want.restart_generation.to_le_bytes());
    h.update(want.launch.to_le_bytes());
    if let Prep::Image(dropin) = prep {
        h.update(dropin.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The units started as [`STARTED`] records them (none if it is missing or unreadable: then
/// units that are not running are started once more).
fn load_started() -> BTreeMap<String, String> {
    match std::fs::read(STARTED) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!("{STARTED}: {e}, starting afresh");
            BTreeMap::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => {
            tracing::warn!("{STARTED}: {e}, starting afresh");
            BTreeMap::new()
        }
    }
}

/// Records `started` in [`STARTED`] (written aside, then renamed).
fn save_started(started: &BTreeMap<String, String>) -> Result<(), Error> {
    let path = Path::new(STARTED);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| file_error(dir, source))?;
    }
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(started).unwrap_or_default();
    std::fs::write(&tmp, bytes).map_err(|source| file_error(&tmp, source))?;
    std::fs::rename(&tmp, path).map_err(|source| file_error(path, source))
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

/// The image reference of a unit's `[X-Flotilla] Image=`, if it has a valid one.
pub(crate) fn image_of(name: &str, text: &str) -> Option<String> {
    // Most units have none: no need to parse them (every pass asks of every unit).
    if !text.contains("Image") {
        return None;
    }
    let v = flotilla_units::verify(name, text, &[]);
    v.flotilla.image.as_ref()?;
    v.unit
        .section(flotilla_units::flotilla::SECTION)
        .and_then(|s| s.last("Image"))
        .map(|e| e.value.clone())
}

fn waiting_pull() -> Prep {
    Prep::Waiting(Reported {
        load: "stub".into(),
        active: "activating".into(),
        sub: "pulling".into(),
        ..Reported::default()
    })
}

fn waiting_failed(error: String) -> Prep {
    Prep::Waiting(Reported {
        load: "stub".into(),
        active: "failed".into(),
        sub: "pull-failed".into(),
        result: error,
        ..Reported::default()
    })
}

/// The drop-in that runs `unit` in the image of `spec`: `[Service]` with `RootDirectory=`, the
/// sandbox, the image's environment, working directory and user (each unless the unit sets it
/// itself) and, with `exec`, the image's command as `ExecStart=`.
fn dropin(spec: &ServiceSpec, unit: &flotilla_units::Unit, exec: bool) -> String {
    let service = unit.section("Service");
    let sets = |key: &str| service.is_some_and(|s| s.last(key).is_some());
    let mut out = format!(
        "# Runs {} in image {}.\n[Service]\n",
        unit_label(unit),
        spec.image
    );
    let mut line = |k: &str, v: &str| {
        out.push_str(k);
        out.push('=');
        out.push_str(v);
        out.push('\n');
    };
    line(
        "RootDirectory",
        &escape_value(&spec.root_directory.to_string_lossy()),
    );
    for (k, v) in &spec.sandbox {
        if !sets(k) {
            line(k, v);
        }
    }
    let unit_env: Vec<&str> = service.map(|s| s.values("Environment")).unwrap_or_default();
    for e in &spec.environment {
        let var = e.split('=').next().unwrap_or_default();
        let set_by_unit = unit_env.iter().any(|u| {
            u.split_whitespace()
                .any(|w| w.trim_start_matches('"').starts_with(&format!("{var}=")))
        });
        if !set_by_unit {
            line("Environment", &quote(e, false));
        }
    }
    if !sets("WorkingDirectory") {
        line("WorkingDirectory", &escape_value(&spec.working_directory));
    }
    if !sets("User")
        && let Some(u) = &spec.user
    {
        line("User", u);
    }
    if !sets("Group")
        && let Some(g) = &spec.group
    {
        line("Group", g);
    }
    if exec {
        let argv: Vec<String> = spec.command.iter().map(|a| quote(a, true)).collect();
        line("ExecStart", &argv.join(" "));
    }
    out
}

fn unit_label(unit: &flotilla_units::Unit) -> String {
    unit.value("Unit", "Description").map_or_else(
        || "this unit".to_owned(),
        |d| format!("'{}'", d.replace('\n', " ")),
    )
}

/// A value with systemd's specifiers escaped (`%` -> `%%`).
fn escape_value(v: &str) -> String {
    v.replace('%', "%%")
}

/// One word in double quotes as systemd.syntax(7) reads it back; `exec`: also `$` escaped (no
/// variable expansion in `ExecStart=`).
fn quote(word: &str, exec: bool) -> String {
    let mut out = String::from("\"");
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '%' => out.push_str("%%"),
            '$' if exec => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn dropin_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.d")).join(IMAGE_DROPIN)
}

/// Writes a managed file if its content differs (never a file that is not flotilla's);
/// whether it wrote.
fn write_managed(path: &Path, content: &str) -> Result<bool, Error> {
    match std::fs::read_to_string(path) {
        Ok(existing) if existing == content => return Ok(false),
        Ok(existing) if !existing.starts_with(MANAGED) => {
            tracing::warn!(
                "{} exists and is not flotilla's: not touching it, ignoring",
                path.display()
            );
            return Ok(false);
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_error(path, e)),
    }
    write_file(path, content)?;
    Ok(true)
}

/// Removes the image drop-in of `name` (if flotilla's) and its directory once empty; whether
/// there was one.
fn remove_dropin(dir: &Path, name: &str) -> Result<bool, Error> {
    let path = dropin_path(dir, name);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.starts_with(MANAGED) => {
            std::fs::remove_file(&path).map_err(|e| file_error(&path, e))?;
            if let Some(d) = path.parent() {
                // Only when empty: the unit may have drop-ins that are not flotilla's.
                let _ = std::fs::remove_dir(d);
            }
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(file_error(&path, e)),
    }
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

    fn spec() -> ServiceSpec {
        ServiceSpec {
            image: "10.0.0.1:5000/busybox:v1".into(),
            root_directory: "/var/lib/flotilla/images/rootfs/abc".into(),
            sandbox: vec![
                ("ProtectSystem".into(), "strict".into()),
                ("PrivateTmp".into(), "yes".into()),
            ],
            environment: vec!["PATH=/bin".into(), "GREETING=say \"hi\" 100%".into()],
            working_directory: "/data".into(),
            user: Some("1000".into()),
            group: Some("1000".into()),
            command: vec!["/bin/sh".into(), "-c".into(), "echo $GREETING".into()],
        }
    }

    fn unit(text: &str) -> flotilla_units::Unit {
        flotilla_units::verify("x.service", text, &[]).unit
    }

    #[test]
    fn dropin_runs_the_image_and_leaves_what_the_unit_sets() {
        let u = unit("[Unit]\nDescription=Hello\n[Service]\nExecStart=/bin/true\n");
        assert_eq!(
            dropin(&spec(), &u, true),
            "# Runs 'Hello' in image 10.0.0.1:5000/busybox:v1.\n\
             [Service]\n\
             RootDirectory=/var/lib/flotilla/images/rootfs/abc\n\
             ProtectSystem=strict\n\
             PrivateTmp=yes\n\
             Environment=\"PATH=/bin\"\n\
             Environment=\"GREETING=say \\\"hi\\\" 100%%\"\n\
             WorkingDirectory=/data\n\
             User=1000\n\
             Group=1000\n\
             ExecStart=\"/bin/sh\" \"-c\" \"echo $$GREETING\"\n"
        );
        let u = unit(
            "[Service]\nExecStart=/bin/true\nPrivateTmp=no\nEnvironment=GREETING=mine\n\
             WorkingDirectory=/\nUser=2000\n",
        );
        let d = dropin(&spec(), &u, false);
        assert!(!d.contains("PrivateTmp") && !d.contains("GREETING"), "{d}");
        assert!(
            !d.contains("WorkingDirectory") && !d.contains("User="),
            "{d}"
        );
        assert!(
            !d.contains("ExecStart") && d.contains("Group=1000\n"),
            "{d}"
        );
    }

    #[test]
    fn image_of_reads_x_flotilla() {
        let text = "[Service]\nExecStart=/bin/true\n[X-Flotilla]\nImage=busybox:1.36\n";
        assert_eq!(image_of("a.service", text).as_deref(), Some("busybox:1.36"));
        assert_eq!(
            image_of("a.service", "[Service]\nExecStart=/bin/true\n"),
            None
        );
    }

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
