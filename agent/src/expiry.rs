//! The TTL ticker: on the leader, proposes one `Command::Expire` when the earliest key
//! expiration is due (one entry removes every key due by then).

use std::time::Duration;

use flotilla_state::Command;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::liveness::now_ms;

/// How often a member checks whether it became leader, or whether a key is due.
const IDLE: Duration = Duration::from_secs(1);

/// Runs until `cancel`.
pub(crate) async fn run(cluster: Cluster, cancel: CancellationToken) {
    let mut events = cluster.hub().subscribe();
    loop {
        let wait = if cluster.is_leader() {
            let next = {
                let a = cluster.applied();
                a.state.kv.next_expiry()
            };
            match next {
                Some(at) => {
                    let now = now_ms();
                    if at <= now {
                        if let Err(e) = cluster.propose(Command::Expire { now_ms: now }).await {
                            tracing::warn!("cannot expire keys: {e}, retrying");
                            Duration::from_millis(100)
                        } else {
                            continue;
                        }
                    } else {
                        Duration::from_millis(at - now)
                    }
                }
                None => IDLE,
            }
        } else {
            IDLE
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            // A write may have set an earlier TTL.
            _ = events.recv() => {}
        }
    }
}
