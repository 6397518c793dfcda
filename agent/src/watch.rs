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
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Hub {
    /// Publishes an applied event (no receiver is fine).
    pub(crate) fn publish(&self, ev: Arc<Event>) {
        let _ = self.tx.send(ev);
    }

    /// A new subscription to the events applied from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}
