//! Counters of this member's Raft traffic, kept as etcd keeps them for `/v2/stats/self` and
//! `/v2/stats/leader`: append requests sent and received (counts, and etcd's packet and byte
//! rates over the last 200 in the last second), each follower's append round trips as the
//! leader measured them (latency in milliseconds: current, average, minimum, maximum, standard
//! deviation; successes and failures), and since when this member follows (or is) the leader.
//!
//! As etcd counts `MsgApp` and not heartbeats, only append requests that carry entries count.
//! [`Measured`] wraps the peer network client to measure the leader's side; the peer server
//! reports what it receives through [`PeerStats::received_append`]. As in etcd, the leader
//! (and since when) is taken from the append requests sent and received, not from a watch of
//! Raft's metrics (they change on every write: a watcher would wake on each); the
//! `/v2/stats/self` handler corrects it from the metrics when it is out of date.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use openraft::Vote;
use openraft::error::{InstallSnapshotError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::{Member, NodeId, TypeConfig};

/// How many recent requests the rates are computed over (etcd's `queueCapacity`).
const RATE_WINDOW: usize = 200;

/// The shared counters (cloned into the network factory, the cluster handle and the API).
#[derive(Clone)]
pub(crate) struct PeerStats {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    sent: Traffic,
    received: Traffic,
    followers: BTreeMap<NodeId, Follower>,
    /// The leader this member follows (or is) and its term, and since when.
    leader: Option<(NodeId, u64)>,
    leader_since: SystemTime,
}

/// Append requests one way: how many, and the sizes and times of the last [`RATE_WINDOW`].
#[derive(Default)]
struct Traffic {
    count: u64,
    recent: VecDeque<(Instant, usize)>,
}

impl Traffic {
    fn add(&mut self, at: Instant, bytes: usize) {
        self.count += 1;
        if self.recent.len() == RATE_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back((at, bytes));
    }

    /// Requests and bytes per second over the recent ones, as etcd's `statsQueue.Rate`: zero
    /// when the newest is more than a second old.
    fn rates(&self, now: Instant) -> (f64, f64) {
        let (Some(front), Some(back)) = (self.recent.front(), self.recent.back()) else {
            return (0.0, 0.0);
        };
        if now.duration_since(back.0) > Duration::from_secs(1) {
            return (0.0, 0.0);
        }
        let span = back.0.duration_since(front.0).as_secs_f64();
        if span <= 0.0 {
            return (0.0, 0.0);
        }
        let bytes: usize = self.recent.iter().map(|(_, b)| b).sum();
        (self.recent.len() as f64 / span, bytes as f64 / span)
    }
}

/// One follower's append round trips, as etcd's `FollowerStats` (milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Follower {
    pub(crate) success: u64,
    pub(crate) fail: u64,
    pub(crate) current: f64,
    pub(crate) average: f64,
    average_square: f64,
    pub(crate) standard_deviation: f64,
    /// etcd starts it at 2^63 and shows that until the first success.
    pub(crate) minimum: f64,
    pub(crate) maximum: f64,
}

impl Default for Follower {
    fn default() -> Self {
        Follower {
            success: 0,
            fail: 0,
            current: 0.0,
            average: 0.0,
            average_square: 0.0,
            standard_deviation: 0.0,
            minimum: (1u64 << 63) as f64,
            maximum: 0.0,
        }
    }
}

impl Follower {
    /// A successful round trip of `took` (etcd's `FollowerStats.Succ`).
    fn succeeded(&mut self, took: Duration) {
        let n = self.success as f64;
        let (total, total_square) = (n * self.average, n * self.average_square);
        self.success += 1;
        let ms = took.as_secs_f64() * 1000.0;
        self.current = ms;
        self.maximum = self.maximum.max(ms);
        self.minimum = self.minimum.min(ms);
        let n = self.success as f64;
        self.average = (total + ms) / n;
        self.average_square = (total_square + ms * ms) / n;
        self.standard_deviation = (self.average_square - self.average * self.average)
            .max(0.0)
            .sqrt();
    }
}

/// `/v2/stats/self`'s counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SelfStats {
    pub(crate) leader: Option<NodeId>,
    pub(crate) leader_since: SystemTime,
    pub(crate) recv_append: u64,
    pub(crate) recv_rates: (f64, f64),
    pub(crate) send_append: u64,
    pub(crate) send_rates: (f64, f64),
}

impl Default for PeerStats {
    fn default() -> Self {
        let now = SystemTime::now();
        PeerStats {
            inner: Arc::new(Mutex::new(Inner {
                sent: Traffic::default(),
                received: Traffic::default(),
                followers: BTreeMap::new(),
                leader: None,
                leader_since: now,
            })),
        }
    }
}

impl PeerStats {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An append request with entries sent to `target` (`bytes` long) as the leader of
    /// `vote`, and how it went.
    pub(crate) fn sent_append(
        &self,
        vote: &Vote<NodeId>,
        target: NodeId,
        bytes: usize,
        took: Duration,
        ok: bool,
    ) {
        let mut inner = self.lock();
        inner.leader_is(leader_of(vote));
        inner.sent.add(Instant::now(), bytes);
        let f = inner.followers.entry(target).or_default();
        if ok {
            f.succeeded(took);
        } else {
            f.fail += 1;
        }
    }

    /// An append request sent as the leader of `vote` without entries (a heartbeat).
    pub(crate) fn sent_heartbeat(&self, vote: &Vote<NodeId>) {
        self.lock().leader_is(leader_of(vote));
    }

    /// An append request received (`bytes` long); for the peer server. Counted when it
    /// carries entries.
    pub(crate) fn received_append(&self, req: &AppendEntriesRequest<TypeConfig>, bytes: usize) {
        let mut inner = self.lock();
        inner.leader_is(leader_of(&req.vote));
        if !req.entries.is_empty() {
            inner.received.add(Instant::now(), bytes);
        }
    }

    /// The counters of `/v2/stats/self`; `current` is the leader and term Raft knows now,
    /// which corrects the recorded one if no append told of a change yet.
    pub(crate) fn this(&self, current: Option<(NodeId, u64)>) -> SelfStats {
        let mut inner = self.lock();
        if current.is_none_or(|(_, term)| inner.leader.is_none_or(|(_, t)| t < term)) {
            inner.leader_is(current);
        }
        let now = Instant::now();
        SelfStats {
            leader: inner.leader.map(|(l, _)| l),
            leader_since: inner.leader_since,
            recv_append: inner.received.count,
            recv_rates: inner.received.rates(now),
            send_append: inner.sent.count,
            send_rates: inner.sent.rates(now),
        }
    }

    /// Each follower's round trips as this member measured them while it led.
    pub(crate) fn followers(&self) -> BTreeMap<NodeId, Follower> {
        self.lock().followers.clone()
    }
}

impl Inner {
    /// Records the leader (and its term); a change restarts the clock of
    /// `leaderInfo.startTime`.
    fn leader_is(&mut self, leader: Option<(NodeId, u64)>) {
        if self.leader != leader {
            self.leader = leader;
            self.leader_since = SystemTime::now();
        }
    }
}

/// The leader a committed vote names, with its term.
fn leader_of(vote: &Vote<NodeId>) -> Option<(NodeId, u64)> {
    let id = vote.leader_id();
    id.voted_for().map(|l| (l, id.get_term()))
}

/// A network factory whose connections count what they send into [`PeerStats`].
pub(crate) struct Measured<F> {
    inner: F,
    stats: PeerStats,
}

impl<F> Measured<F> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: F, stats: PeerStats) -> Self {
        Measured { inner, stats }
    }
}

impl<F: RaftNetworkFactory<TypeConfig>> RaftNetworkFactory<TypeConfig> for Measured<F> {
    type Network = MeasuredConnection<F::Network>;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Self::Network {
        MeasuredConnection {
            inner: self.inner.new_client(target, node).await,
            target,
            stats: self.stats.clone(),
        }
    }
}

/// One peer's connection, measured.
pub(crate) struct MeasuredConnection<N> {
    inner: N,
    target: NodeId,
    stats: PeerStats,
}

impl<N: RaftNetwork<TypeConfig>> RaftNetwork<TypeConfig> for MeasuredConnection<N> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        if rpc.entries.is_empty() {
            self.stats.sent_heartbeat(&rpc.vote);
            return self.inner.append_entries(rpc, option).await;
        }
        let vote = rpc.vote;
        let bytes = postcard::experimental::serialized_size(&rpc).unwrap_or(0);
        let start = Instant::now();
        let reply = self.inner.append_entries(rpc, option).await;
        self.stats
            .sent_append(&vote, self.target, bytes, start.elapsed(), reply.is_ok());
        reply
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.inner.install_snapshot(rpc, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.inner.vote(rpc, option).await
    }
}

/// A duration as Go prints one (`time.Duration.String`): `1h2m3.5s`, `12.5ms`, `0s`.
pub(crate) fn go_duration(d: Duration) -> String {
    fn trim(x: String) -> String {
        if x.contains('.') {
            x.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            x
        }
    }
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return trim(format!("{:.3}", nanos as f64 / 1e3)) + "µs";
    }
    if nanos < 1_000_000_000 {
        return trim(format!("{}.{:06}", nanos / 1_000_000, nanos % 1_000_000)) + "ms";
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let frac = trim(format!("{s}.{:09}", d.subsec_nanos())) + "s";
    match (h, m) {
        (0, 0) => frac,
        (0, m) => format!("{m}m{frac}"),
        (h, m) => format!("{h}h{m}m{frac}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follower_latency_is_etcds_running_statistics() {
        let mut f = Follower::default();
        assert_eq!(f.minimum, 9.223372036854776e18);
        for ms in [1, 3] {
            f.succeeded(Duration::from_millis(ms));
        }
        assert_eq!(f.success, 2);
        assert_eq!(f.current, 3.0);
        assert_eq!((f.minimum, f.maximum), (1.0, 3.0));
        assert!((f.average - 2.0).abs() < 1e-9, "{f:?}");
        assert!((f.standard_deviation - 1.0).abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn rates_cover_the_recent_requests_of_the_last_second() {
        let mut t = Traffic::default();
        let start = Instant::now();
        for i in 0..=10u64 {
            t.add(start + Duration::from_millis(100 * i), 50);
        }
        let (pkg, bytes) = t.rates(start + Duration::from_secs(1));
        assert!((pkg - 11.0).abs() < 1e-9, "{pkg}");
        assert!((bytes - 550.0).abs() < 1e-9, "{bytes}");
        assert_eq!(t.rates(start + Duration::from_secs(3)), (0.0, 0.0));
        for _ in 0..500 {
            t.add(start, 1);
        }
        assert_eq!((t.count, t.recent.len()), (511, RATE_WINDOW));
    }

    #[test]
    fn durations_print_as_go_prints_them() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1_500), "1.5µs"),
            (Duration::from_micros(12_500), "12.5ms"),
            (Duration::from_millis(1_900), "1.9s"),
            (
                Duration::from_secs(659) + Duration::from_nanos(322_358_947),
                "10m59.322358947s",
            ),
            (Duration::from_secs(3723), "1h2m3s"),
        ];
        for (d, want) in cases {
            assert_eq!(go_duration(d), want, "{d:?}");
        }
    }
}
