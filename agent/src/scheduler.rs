//! The leader's scheduler task: after every applied unit or machine change it runs the pure
//! [`flotilla_state::scheduler::plan`] over the applied state and proposes the plan as one
//! command ([`flotilla_state::scheduler::Plan::command`]).
//!
//! Only the leader plans (a follower's task sleeps on the same signal and checks again), and
//! only when something a plan reads changed since its last empty plan
//! ([`flotilla_state::scheduler::needs_plan`]): the machines' reports, most of the commits of
//! a busy cluster, do not cost a plan each.
//!
//! # Fencing
//!
//! A plan is one `units::Change::Plan` entry that carries the placement revision of the
//! state it was made from; the state machine applies it whole, and only if that revision is
//! still current. So a plan never lands on a state it was not made for: not when this agent
//! lost its leadership between planning and proposing (the new leader's first plan bumps the
//! revision, and a deposed leader's plan forwarded or committed later is refused), not when a
//! machine was lost meanwhile. A refused plan is simply made again from the newer state.
//! Units submitted or started after a plan was made do not make it stale: the plan is still
//! right for the units it covers and the next plan places the new ones, so a stream of
//! submissions cannot starve placement.
//!
//! # Current limitations
//!
//! - Leadership is read from openraft's metrics before planning; a deposed leader may still
//!   propose, but its plan is refused as stale (above) unless nothing it depends on changed,
//!   in which case it is exactly the plan the new leader would make of the same state (with
//!   the same `[scheduler]` settings: give every machine the same ones).

use std::time::Duration;

use flotilla_state::Response;
use flotilla_state::scheduler::{SchedulerConfig, needs_plan, plan};
use flotilla_state::units::Error as UnitError;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;

/// How often a follower checks whether it became the leader (leadership changes without a
/// unit or machine change).
const LEADER_CHECK: Duration = Duration::from_secs(1);
/// How long to wait after a failed proposal before planning again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Runs until `cancel`: plans and proposes on the leader after each unit or machine change.
pub(crate) async fn run(cluster: Cluster, config: SchedulerConfig, cancel: CancellationToken) {
    let mut changed = cluster.hub().watch_units();
    let mut tick = tokio::time::interval(LEADER_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_leader = false;
    // `Units::inputs` of the last plan that left nothing to do: reports alone do not re-plan.
    let mut settled: Option<u64> = None;
    // Plan again without waiting for a change (a proposal failed).
    let mut again = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = std::future::ready(()), if again => again = false,
            r = changed.changed() => if r.is_err() { return },
            _ = tick.tick() => {
                // Only a fresh leadership needs a plan without a change.
                let leader = cluster.is_leader();
                let fresh = leader && !was_leader;
                was_leader = leader;
                if !fresh {
                    continue;
                }
            }
        }
        changed.borrow_and_update();
        if !cluster.is_leader() {
            settled = None;
            continue;
        }
        let command = {
            let a = cluster.applied();
            if !needs_plan(&a.state, settled) {
                continue;
            }
            let command = plan(&a.state, &config).command();
            if command.is_none() {
                settled = Some(a.state.units.inputs);
            }
            command
        };
        let Some(command) = command else {
            continue;
        };
        let failure = match cluster.propose(command).await {
            Ok(Response::Unit(Err(UnitError::StalePlan { base, current }))) => {
                // The state moved on under the plan; the change that did it woke this task
                // already (and every other watcher: nothing to announce).
                tracing::debug!(
                    base,
                    current,
                    "the scheduler's plan was stale, planning again"
                );
                continue;
            }
            Ok(Response::Unit(Err(e))) => format!("was refused: {e}"),
            Ok(_) => continue,
            Err(e) => format!("was not committed: {e}"),
        };
        tracing::warn!("the scheduler's plan {failure}, planning again");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RETRY_AFTER) => {}
        }
        again = true;
    }
}
