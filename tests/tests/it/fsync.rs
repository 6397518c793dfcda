//! A failed fsync loses nothing: every member of a loopback cluster runs under `fiu-run -x`
//! (libfiu's POSIX wrappers, preloaded), and while clients write, `fiu-ctrl` makes one
//! member's next `fdatasync` and `fsync` fail with EIO: a follower, the leader, and a
//! follower whose snapshot's `fsync` fails (its raft log keeps working).
//!
//! The raft log is a write-ahead log whose batches are made durable with `fdatasync`
//! (`File::sync_data`; `strace -f -e trace=fsync,fdatasync,sync_file_range` on a running agent
//! shows only `fdatasync`: the log's `fsync` of its directory happens only when it starts a
//! segment, every 64 MiB); snapshots use `fsync` (`File::sync_all`). Each failpoint fails
//! once (`onetime`): an agent that retried the fsync would see it succeed and carry on over
//! pages the kernel may have dropped (PostgreSQL's "fsyncgate"), so carrying on is the bug
//! this catches.
//!
//! Checked, as for a full disk (`disk.rs`, whose helpers these tests share): the failing
//! member's log names the I/O error (the failpoint fired); its log writer stops, its Raft core
//! quits and the agent exits with an error that names the I/O error, without a panic; a write
//! is refused only with a 5xx status or no answer, never acknowledged and then lost; with a
//! failing follower, the healthy members acknowledge every write throughout; with a failing
//! leader, they acknowledge writes again once another member leads. Restarted (the failpoints
//! are off in a new process), the member opens its store, catches up, serves every
//! acknowledged key and takes new writes. Printed: the writes acknowledged through the failing
//! member after its log failed (committed and applied by the others; see the report in
//! `describe_failed`).
//!
//! Not covered: libfiu fails the call without touching the page cache, so the pages of the
//! failed transaction stay readable and reach the disk later; a real device error may drop
//! them. Nothing the agent answered depends on them (no entry of a failed transaction was
//! applied, acknowledged to a leader or counted durable), and a restarted member catches up
//! from the leader. A batch torn by a crash (a record whose hash does not match) is cut off the
//! log's end when it is opened; the log's own tests cover that.

use std::net::SocketAddr;
use std::process::Command;

use flotilla_tests::agents::Cluster;

use crate::disk::{addr, describe_failed, recover, wait_for_other_leader, write_until_failed};

/// What every agent is run through: libfiu's POSIX wrappers, remote-controlled through the
/// named pipes `fiu-PID.in` / `fiu-PID.out` in the cluster's directory.
const WRAPPER: &[&str] = &["fiu-run", "-x", "-f", "fiu"];
/// The failpoints turned on: the next `fdatasync` (the raft log's commit) and the next `fsync`
/// (a snapshot) fail once with EIO (errno 5).
const FAILPOINTS: &[&str] = &[
    "enable name=posix/io/sync/fdatasync,failinfo=5,onetime=1",
    "enable name=posix/io/sync/fsync,failinfo=5,onetime=1",
];
/// What the agent logs when the log writer's fsync failed with EIO.
const EIO: &str = "cannot write the raft log: Input/output error (os error 5)";
/// What the agent logs when a snapshot's fsync failed with EIO.
const SNAPSHOT_EIO: &str = "snapshot.bin: Input/output error (os error 5)";

/// Starts 3 agents under `fiu-run -x`.
fn start() -> Cluster {
    let found = Command::new("fiu-run").arg("-h").output();
    assert!(
        found.is_ok(),
        "fiu-run is missing: install fiu-utils (scripts/deps)"
    );
    Cluster::start_wrapped(3, "", WRAPPER).expect("3 agents start under fiu-run")
}

/// Turns `failpoints` on in agent `i`; returns its process id.
fn fail(cluster: &Cluster, i: usize, failpoints: &[&str]) -> u32 {
    let pid = cluster.agents()[i].pid().expect("running");
    let mut cmd = Command::new("fiu-ctrl");
    cmd.arg("-f").arg(cluster.dir().join("fiu"));
    for failpoint in failpoints {
        cmd.args(["-c", failpoint]);
    }
    let out = cmd
        .arg(pid.to_string())
        .output()
        .expect("run fiu-ctrl (install fiu-utils)");
    assert!(
        out.status.success(),
        "fiu-ctrl on {pid}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    pid
}

/// The check beyond `describe_failed`'s: the agent's exit names the I/O error.
fn check_exit(cluster: &Cluster, i: usize) {
    let log = cluster.agents()[i].log();
    assert!(
        log.lines()
            .any(|l| l.contains("the raft core stopped") && l.contains("Input/output error")),
        "the agent's exit does not name the I/O error:\n{log}"
    );
}

#[test]
fn a_failed_fsync_on_a_follower_stops_it_and_loses_nothing() {
    let mut cluster = start();
    let leader = cluster.wait_leader().expect("a leader");
    let failing = (0..3).find(|&i| i != leader).unwrap();
    let healthy = addr(&cluster.agents()[leader].client_url());
    let failing_addr = addr(&cluster.agents()[failing].client_url());
    let pid = fail(&cluster, failing, FAILPOINTS);

    // Through the failing member and a healthy one in turn: the healthy one never refuses.
    let seen = write_until_failed(
        &cluster,
        failing,
        &[healthy, failing_addr],
        healthy,
        true,
        EIO,
    );
    eprintln!(
        "follower's fsync failed: {}",
        describe_failed(&cluster, failing, pid, &seen)
    );
    check_exit(&cluster, failing);
    recover(&mut cluster, failing, healthy, &seen);
}

#[test]
fn a_failed_fsync_on_the_leader_fails_over_and_loses_nothing() {
    let mut cluster = start();
    let failing = cluster.wait_leader().expect("a leader");
    let healthy: SocketAddr = addr(&cluster.agents()[(failing + 1) % 3].client_url());
    let pid = fail(&cluster, failing, FAILPOINTS);

    // Through a healthy member: refused (5xx or unanswered) while the leader fails, then
    // acknowledged again once another member leads.
    let seen = write_until_failed(&cluster, failing, &[healthy], healthy, false, EIO);
    eprintln!(
        "leader's fsync failed: {}",
        describe_failed(&cluster, failing, pid, &seen)
    );
    check_exit(&cluster, failing);
    wait_for_other_leader(&cluster, failing);
    recover(&mut cluster, failing, healthy, &seen);
}

#[test]
fn a_failed_fsync_of_a_snapshot_stops_the_member_and_loses_nothing() {
    // Snapshots every 20 entries: the follower's own snapshot comes within the writes.
    let mut cluster =
        Cluster::start_wrapped(3, "snapshot_entries = 20", WRAPPER).expect("3 agents start");
    let leader = cluster.wait_leader().expect("a leader");
    let failing = (0..3).find(|&i| i != leader).unwrap();
    let healthy = addr(&cluster.agents()[leader].client_url());
    let failing_addr = addr(&cluster.agents()[failing].client_url());
    // Only the snapshot's fsync: the raft log keeps working.
    let pid = fail(&cluster, failing, &[FAILPOINTS[1]]);

    let seen = write_until_failed(
        &cluster,
        failing,
        &[healthy, failing_addr],
        healthy,
        true,
        SNAPSHOT_EIO,
    );
    eprintln!(
        "follower's snapshot fsync failed: {}",
        describe_failed(&cluster, failing, pid, &seen)
    );
    check_exit(&cluster, failing);
    recover(&mut cluster, failing, healthy, &seen);
}
