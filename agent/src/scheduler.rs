//! The leader's scheduler task: after every applied unit or machine change it runs the pure
//! [`flotilla_state::scheduler::plan`] over the applied state and proposes the plan's
//! `Unassign` / `Assign` / `SetUnschedulable` commands, in the plan's order.
//!
//! Only the leader plans (a follower's task sleeps on the same signal and checks again). A
//! plan proposed against a state that moved on is corrected by the next plan: every commit of
//! the plan's own commands wakes this task again, and the plan of a settled state is empty.
//!
//! # Current limitations
//!
//! - The commands of one plan are proposed one after another (the proposer batches what is
//!   queued, but a plan is not one atomic entry).
//! - Leadership is read from openraft's metrics: a deposed leader may propose one stale plan,
//!   which the state machine applies harmlessly and the new leader's next plan corrects.

use std::time::Duration;

use flotilla_state::scheduler::{SchedulerConfig, plan};
use flotilla_state::{Command, Response};
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
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
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
            continue;
        }
        let commands = {
            let a = cluster.applied();
            plan(&a.state, &config).commands
        };
        if commands.is_empty() {
            continue;
        }
        tracing::debug!(commands = commands.len(), "proposing the scheduler's plan");
        if let Err(e) = propose_all(&cluster, commands, &cancel).await {
            tracing::warn!("the scheduler's plan was not committed: {e}, planning again");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RETRY_AFTER) => {}
            }
            cluster.hub().units_changed();
        }
    }
}

/// Proposes `commands` in order; a command the state refuses (the state moved on) is logged
/// and skipped, the next plan corrects it.
async fn propose_all(
    cluster: &Cluster,
    commands: Vec<Command>,
    cancel: &CancellationToken,
) -> Result<(), crate::cluster::Error> {
    for cmd in commands {
        if cancel.is_cancelled() || !cluster.is_leader() {
            return Ok(());
        }
        if let Response::Unit(Err(e)) = cluster.propose(cmd).await? {
            tracing::debug!("a planned command was refused: {e}, ignoring");
        }
    }
    Ok(())
}
