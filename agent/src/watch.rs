//! Live watchers: every kv event the state machine applies is published here, in log order.
//!
//! A watcher subscribes *before* it looks at the store's history, so an event is either in the
//! history it read or arrives on its subscription (it may see it twice; it keeps the first with
//! an index at or past the one it waits for).

use std::sync::Arc;

use flotilla_state::kv::Event;
use tokio::sync::broadcast;

/// How many events a slow watcher may fall behind before it re-reads the store's history.
const CAPACITY: usize = 4096;

/// The publisher side, cloned into the state machine and the API.
#[derive(Clone)]
pub(crate) struct Hub {
    tx: broadcast::Sender<Arc<Event>>,
    /// Bumped after every applied batch that changed units or machines (or a snapshot was
    /// installed): the scheduler and the reconciler wake on it and read the state.
    units: Arc<tokio::sync::watch::Sender<u64>>,
    /// Bumped after every applied membership (or installed snapshot): what reads the applied
    /// membership wakes on it, not on Raft's metrics, which change several times per write.
    members: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: broadcast::channel(CAPACITY).0,
            units: Arc::new(tokio::sync::watch::channel(0).0),
            members: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl Hub {
    /// Publishes an applied event (no receiver is fine).
    pub(crate) fn publish(&self, ev: Arc<Event>) {
        let _ = self.tx.send(ev);
    }

    /// Says that units or machines changed (coalesced: a slow reader sees the latest only).
    pub(crate) fn units_changed(&self) {
        self.units.send_modify(|g| *g += 1);
    }

    /// Wakes whenever units or machines changed after the last look.
    pub(crate) fn watch_units(&self) -> tokio::sync::watch::Receiver<u64> {
        self.units.subscribe()
    }

    /// Says that the applied membership changed.
    pub(crate) fn members_changed(&self) {
        self.members.send_modify(|g| *g += 1);
    }

    /// Wakes whenever the applied membership changed after the last look.
    pub(crate) fn watch_members(&self) -> tokio::sync::watch::Receiver<u64> {
        self.members.subscribe()
    }

    /// A new subscription to the events applied from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}
